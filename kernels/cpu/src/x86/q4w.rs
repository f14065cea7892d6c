//! x86 kernels of Q4W (layout and specification in [`crate::scalar::q4w`]), bit-exact:
//! AVX2 (`avx2_gemv_q4w`), AVX-VNNI (`avxvnni_gemv_q4w`) and AVX-512 (`avx512_gemv_q4w`, and the
//! batched `avx512_gemm_q4w` for prefill).
//!
//! The activations of each block are arranged once per call (per panel of `PANEL` blocks for
//! longer rows) into the block's operands (`Ops`): the bytes of lane `j`'s low and high
//! nibbles (`al`, `ah`: 32-bit words `4k + 2h` and `4k + 2h + 1` of the block's 64 activations,
//! `k` the lane's group and `h` its half), `−8` times each lane's activation sum (`ns`: a code
//! `q` stands for `q − 8`, so the integer chain starts there) and each lane's activation scale
//! (`da`). Per row and block: one 32-byte load, a mask and a shift with mask for the two code
//! vectors, two `vpdpbusd` (AVX2: two `vpmaddubsw`, an i16 add, at most `2 * 2 * 15 * 127`, and
//! one `vpmaddwd` by ones) leaving the eight lane sums, and the float steps of the
//! specification; the block's two f16 scales, broadcast as one 32-bit word, convert to the lane
//! order `d0 d1 d0 d1 ..` the layout was made for. No horizontal adds until the row's end.
//!
//! AVX2 and AVX-VNNI: one row per 256-bit register, eight rows per pass, the eight running-sum
//! registers reduced together at the end of the pass (the specification's tree, per row).
//! AVX-512: two rows per register (the AVX-512 T2 kernel's layout: row `2i` in the low half,
//! `2i + 1` in the high one, the block operands in both halves), eight rows per pass.
//! A row count that is not a multiple of eight repeats the last row and drops the extra results.
//!
//! The 256-bit drivers prefetch the lines of the pass at least `PREFETCH_BYTES` ahead into L2,
//! in address order, a few per block, and past the matrix's end near its end (the next matrix
//! of an image in decode order). Before, each row's block two passes ahead went into L1 (5 KiB
//! ahead on SmolLM2's rows of 324 bytes): `bench bandwidth` 6912 x 2560, ten alternating runs,
//! median 77% → 91% of a 1-thread read; SmolLM2's q4 image decodes 1.31x as fast at 1 thread
//! (six paired rounds, 1.23x-1.46x), 1.15x at 2.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::ternary::reduce8_pair;
use crate::acts::ActsQ8;
use crate::scalar::q4w::{Q4W_BLOCK, Q4W_BYTES};
use crate::scalar::ternary::check_gemv_ternary;

/// Rows per pass.
const R: usize = 8;
/// Blocks whose operands a panel holds (4096 columns; 8 KiB of stack).
const PANEL: usize = 64;
/// How many passes ahead the rows are prefetched.
const PREFETCH_PASSES: usize = 2;
/// The least distance, in bytes of rows, at which the 256-bit gemvs prefetch (more than
/// [`PREFETCH_PASSES`] when rows are short).
const PREFETCH_BYTES: usize = 16384;

/// One block's activation operands (module docs).
#[derive(Clone, Copy)]
struct Ops {
    al: __m256i,
    ah: __m256i,
    ns: __m256i,
    da: __m256,
}

/// The operands of block `b`.
///
/// # Safety
///
/// Block `b` (columns `64 b .. 64 b + 64`, groups `4 b .. 4 b + 4`) must lie inside `acts`; the
/// CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ops(acts: &ActsQ8<'_>, b: usize) -> Ops {
    // SAFETY: the caller guarantees the block's 64 activations and 4 scales.
    let (x0, x1, d) = unsafe {
        let q = acts.qs.as_ptr().add(Q4W_BLOCK * b);
        (
            _mm256_loadu_si256(q.cast()),
            _mm256_loadu_si256(q.add(32).cast()),
            _mm_loadu_ps(acts.d.as_ptr().add(4 * b)),
        )
    };
    // Lane j: word 4k + 2h (+ 1 for `ah`) of the 16, k = [0, 2, 1, 3][j % 4], h = j / 4. Words
    // 0..8 are in x0 and 8..16 in x1: the odd lanes (groups 2 and 3) come from x1.
    let lo = _mm256_setr_epi32(0, 0, 4, 4, 2, 2, 6, 6);
    let hi = _mm256_add_epi32(lo, _mm256_set1_epi32(1));
    let pick = |idx: __m256i| {
        _mm256_blend_epi32::<0b1010_1010>(
            _mm256_permutevar8x32_epi32(x0, idx),
            _mm256_permutevar8x32_epi32(x1, idx),
        )
    };
    let (al, ah) = (pick(lo), pick(hi));
    // Lane sums of the eight activations, exact in i16 pairs and then i32.
    let ones8 = _mm256_set1_epi8(1);
    let pairs = _mm256_add_epi16(
        _mm256_maddubs_epi16(ones8, al),
        _mm256_maddubs_epi16(ones8, ah),
    );
    let sums = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
    Ops {
        al,
        ah,
        ns: _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<3>(sums)),
        da: _mm256_permutevar8x32_ps(
            _mm256_castps128_ps256(d),
            _mm256_setr_epi32(0, 2, 1, 3, 0, 2, 1, 3),
        ),
    }
}

/// The operands of a row's blocks, one panel of up to [`PANEL`] at a time (as the ternary
/// kernels' `Panels`): made once when the row fits in one panel, else per pass and panel.
struct Panel<'a, 'b> {
    acts: &'a ActsQ8<'b>,
    nb: usize,
    buf: &'a mut [MaybeUninit<Ops>; PANEL],
}

impl<'a, 'b> Panel<'a, 'b> {
    /// # Safety
    ///
    /// `acts` must have passed the gemv's shape check; the CPU must have AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn new(acts: &'a ActsQ8<'b>, buf: &'a mut [MaybeUninit<Ops>; PANEL]) -> Self {
        let nb = acts.qs.len() / Q4W_BLOCK;
        if nb <= PANEL {
            for (b, o) in buf[..nb].iter_mut().enumerate() {
                // SAFETY: `b < nb`.
                o.write(unsafe { ops(acts, b) });
            }
        }
        Panel { acts, nb, buf }
    }

    /// The operands of blocks `b0 .. b0 + PANEL` (fewer in the last panel).
    ///
    /// # Safety
    ///
    /// `b0 < nb`, a multiple of [`PANEL`]; the CPU must have AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn get(&mut self, b0: usize) -> &[Ops] {
        let n = (self.nb - b0).min(PANEL);
        if self.nb > PANEL {
            for (j, o) in self.buf[..n].iter_mut().enumerate() {
                // SAFETY: `b0 + j < nb`.
                o.write(unsafe { ops(self.acts, b0 + j) });
            }
        }
        // SAFETY: entries `..n` were written above, or in `new` when there is one panel.
        unsafe { core::slice::from_raw_parts(self.buf.as_ptr().cast::<Ops>(), n) }
    }
}

/// The two code vectors of the 32 bytes at `p`: low nibbles and high nibbles.
///
/// # Safety
///
/// `p` must be valid for reading 32 bytes; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn codes(p: *const u8) -> (__m256i, __m256i) {
    // SAFETY: the caller guarantees the bytes.
    let v = unsafe { _mm256_loadu_si256(p.cast()) };
    let m = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(v, m),
        _mm256_and_si256(_mm256_srli_epi16::<4>(v), m),
    )
}

/// The block's two f16 scales at `p` as f32 in the lane order `d0 d1 d0 d1 d0 d1 d0 d1`.
///
/// # Safety
///
/// `p` must be valid for reading 4 bytes; the CPU must have AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees the bytes.
    let w = unsafe { p.cast::<i32>().read_unaligned() };
    _mm256_cvtph_ps(_mm_set1_epi32(w))
}

/// The specification's reduction of each of eight rows' running sums, lane `i` for row `i`:
/// the same additions in the same order as `reduce8` on each.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce8x8(acc: &[__m256; R]) -> __m256 {
    let t01 = reduce8_pair(acc[0], acc[1]);
    let t23 = reduce8_pair(acc[2], acc[3]);
    let t45 = reduce8_pair(acc[4], acc[5]);
    let t67 = reduce8_pair(acc[6], acc[7]);
    // [r0 r2 r0 r2 | r1 r3 r1 r3] and [r4 r6 .. | r5 r7 ..], then [r0 r2 r4 r6 | r1 r3 r5 r7].
    let u = _mm256_unpacklo_ps(t01, t23);
    let v = _mm256_unpacklo_ps(t45, t67);
    let w = _mm256_shuffle_ps::<0b01_00_01_00>(u, v);
    _mm256_permutevar8x32_ps(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Defines a 256-bit Q4W gemv driver `$name` for `$features`, with `$lanes(ns, lo, hi, ops)`
/// giving the eight exact lane sums of a row's block.
macro_rules! gemv_q4w_256 {
    ($(#[$m:meta])* $name:ident, $features:literal, $lanes:ident) => {
        $(#[$m])*
        #[target_feature(enable = $features)]
        pub unsafe fn $name(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
            let row_bytes =
                check_gemv_ternary(w, acts, out.len(), Q4W_BLOCK, Q4W_BYTES, "Q4W");
            let rows = out.len();
            if rows == 0 || row_bytes == 0 {
                out.fill(0.0);
                return;
            }
            let nb = acts.qs.len() / Q4W_BLOCK;
            let last = rows - 1;
            let mut buf = [const { MaybeUninit::uninit() }; PANEL];
            // SAFETY: the shape check passed; the CPU has this function's features.
            let mut panel = unsafe { Panel::new(acts, &mut buf) };
            // The prefetched pass: `ahead` rows on; its lines, `pf_per` per block (module docs).
            let ahead = R * PREFETCH_PASSES.max(PREFETCH_BYTES.div_ceil(R * row_bytes));
            let pf_lines = (R * row_bytes).div_ceil(64);
            let pf_per = pf_lines.div_ceil(nb);
            let mut r = 0;
            while r < rows {
                let p: [*const u8; R] = super::row_ptrs(w, r, last, row_bytes);
                let pfb = super::prefetch_ptrs::<1>(w, r + ahead, row_bytes)[0];
                let mut acc = [_mm256_setzero_ps(); R];
                for b0 in (0..nb).step_by(PANEL) {
                    // SAFETY: `b0 < nb`, a multiple of PANEL.
                    let blocks = unsafe { panel.get(b0) };
                    for (j, o) in blocks.iter().enumerate() {
                        let off = (b0 + j) * Q4W_BYTES;
                        super::prefetch_step(pfb, b0 + j, pf_per, pf_lines);
                        for (i, acc) in acc.iter_mut().enumerate() {
                            // SAFETY: block `b0 + j` of row `p[i]` is bytes `off .. off + 36`.
                            let (lo, hi, dw) = unsafe {
                                let blk = p[i].add(off);
                                let (lo, hi) = codes(blk.add(4));
                                (lo, hi, scales(blk))
                            };
                            let s = $lanes(lo, hi, o);
                            let t = _mm256_mul_ps(_mm256_mul_ps(dw, o.da), _mm256_cvtepi32_ps(s));
                            *acc = _mm256_add_ps(*acc, t);
                        }
                    }
                }
                super::store8(out, r, reduce8x8(&acc));
                r += R;
            }
        }
    };
}

/// The lane sums of one block with AVX2: `vpmaddubsw` of each code vector, an i16 add, one
/// `vpmaddwd` by ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes_avx2(lo: __m256i, hi: __m256i, o: &Ops) -> __m256i {
    let pairs = _mm256_add_epi16(
        _mm256_maddubs_epi16(lo, o.al),
        _mm256_maddubs_epi16(hi, o.ah),
    );
    _mm256_add_epi32(o.ns, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// The lane sums of one block with AVX-VNNI: two chained `vpdpbusd` from `ns`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn lanes_vnni(lo: __m256i, hi: __m256i, o: &Ops) -> __m256i {
    _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(o.ns, lo, o.al), hi, o.ah)
}

gemv_q4w_256! {
    /// AVX2 [`crate::scalar::q4w::gemv_q4w`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2, FMA and F16C.
    avx2_gemv_q4w, "avx2,fma,f16c", lanes_avx2
}

gemv_q4w_256! {
    /// AVX-VNNI [`crate::scalar::q4w::gemv_q4w`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2, FMA, F16C and AVX-VNNI.
    avxvnni_gemv_q4w, "avx2,fma,f16c,avxvnni", lanes_vnni
}

/// AVX-512 [`crate::scalar::q4w::gemv_q4w`], bit-exact: two rows per 512-bit register (module
/// docs), eight rows per pass.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn avx512_gemv_q4w(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    const PAIRS: usize = R / 2;
    let row_bytes = check_gemv_ternary(w, acts, out.len(), Q4W_BLOCK, Q4W_BYTES, "Q4W");
    let rows = out.len();
    if rows == 0 || row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    let nb = acts.qs.len() / Q4W_BLOCK;
    let last = rows - 1;
    let mut buf = [const { MaybeUninit::uninit() }; PANEL];
    // SAFETY: the shape check passed; the CPU has this function's features.
    let mut panel = unsafe { Panel::new(acts, &mut buf) };
    let both = |v: __m256i| _mm512_broadcast_i64x4(v);
    let m = _mm512_set1_epi8(0x0F);
    let mut r = 0;
    while r < rows {
        let p: [*const u8; R] = super::row_ptrs(w, r, last, row_bytes);
        let pf: [*const u8; R] = super::row_ptrs(w, r + R * PREFETCH_PASSES, last, row_bytes);
        let mut acc = [_mm512_setzero_ps(); PAIRS];
        for b0 in (0..nb).step_by(PANEL) {
            // SAFETY: `b0 < nb`, a multiple of PANEL.
            let blocks = unsafe { panel.get(b0) };
            for (j, o) in blocks.iter().enumerate() {
                let off = (b0 + j) * Q4W_BYTES;
                for &q in &pf {
                    // SAFETY: the block is inside its row.
                    _mm_prefetch::<_MM_HINT_T0>(unsafe { q.add(off) }.cast());
                }
                let (al, ah, ns) = (both(o.al), both(o.ah), both(o.ns));
                let da = _mm512_castsi512_ps(both(_mm256_castps_si256(o.da)));
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: block `b0 + j` of rows `p[2i]` and `p[2i + 1]` is bytes
                    // `off .. off + 36` of each.
                    let (v, dw) = unsafe {
                        let (a, b) = (p[2 * i].add(off), p[2 * i + 1].add(off));
                        let v = _mm512_inserti64x4::<1>(
                            _mm512_castsi256_si512(_mm256_loadu_si256(a.add(4).cast())),
                            _mm256_loadu_si256(b.add(4).cast()),
                        );
                        let wa = a.cast::<i32>().read_unaligned();
                        let wb = b.cast::<i32>().read_unaligned();
                        let h = _mm256_blend_epi32::<0b1111_0000>(
                            _mm256_set1_epi32(wa),
                            _mm256_set1_epi32(wb),
                        );
                        (v, _mm512_cvtph_ps(h))
                    };
                    let lo = _mm512_and_si512(v, m);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m);
                    let s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(ns, lo, al), hi, ah);
                    let t = _mm512_mul_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(s));
                    *acc = _mm512_add_ps(*acc, t);
                }
            }
        }
        super::store8(out, r, super::avx512::reduce8x8(acc));
        r += R;
    }
}

/// Tokens per block of the gemm (their block operands live in a stack buffer).
const GEMM_TOKENS: usize = 8;
/// Rows per block of the gemm (their running sums live in a stack buffer).
const GEMM_ROWS: usize = 32;
/// Blocks per column panel of the gemm (1024 columns).
const GEMM_PANEL: usize = 16;
const _: () = assert!(GEMM_TOKENS.is_multiple_of(super::avx512::GEMM_SUB));

/// AVX-512 gemm of Q4W ([`crate::scalar::ternary`]'s gemm contract: `nb` token rows of
/// activations, `out[t * rows + r]`), bit-exact with one [`avx512_gemv_q4w`] per token: tokens
/// eight at a time with their block operands in a stack buffer, rows 32 at a time, two rows per
/// vector; each block of two rows is unpacked once (codes and scales) and multiplied with the
/// operands of eight tokens at a time (`super::avx512::GEMM_SUB`), broadcast to both halves,
/// their running sums in registers.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn avx512_gemm_q4w(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    use crate::scalar::ternary::{check_gemm, token_acts};
    const PAIRS: usize = GEMM_ROWS / 2;
    let (cols, rows) = check_gemm(acts, nb, out.len(), "Q4W");
    for t in 0..nb {
        check_gemv_ternary(
            w,
            &token_acts(acts, cols, t),
            rows,
            Q4W_BLOCK,
            Q4W_BYTES,
            "Q4W",
        );
    }
    if rows == 0 || cols == 0 {
        out.fill(0.0);
        return;
    }
    let row_bytes = cols / Q4W_BLOCK * Q4W_BYTES;
    let nblk = cols / Q4W_BLOCK;
    let last = rows - 1;
    let zero = Ops {
        al: _mm256_setzero_si256(),
        ah: _mm256_setzero_si256(),
        ns: _mm256_setzero_si256(),
        da: _mm256_setzero_ps(),
    };
    let mut buf = [[zero; GEMM_PANEL]; GEMM_TOKENS];
    let mut acc = [[_mm512_setzero_ps(); GEMM_TOKENS]; PAIRS];
    let both = |v: __m256i| _mm512_broadcast_i64x4(v);
    let m = _mm512_set1_epi8(0x0F);
    for t0 in (0..nb).step_by(GEMM_TOKENS) {
        let tn = (nb - t0).min(GEMM_TOKENS);
        for r0 in (0..rows).step_by(GEMM_ROWS) {
            let rn = (rows - r0).min(GEMM_ROWS);
            let pairs = rn.div_ceil(2);
            for a in acc[..pairs].iter_mut() {
                a[..tn].fill(_mm512_setzero_ps());
            }
            for b0 in (0..nblk).step_by(GEMM_PANEL) {
                let bn = (nblk - b0).min(GEMM_PANEL);
                for (t, bt) in buf[..tn].iter_mut().enumerate() {
                    let at = token_acts(acts, cols, t0 + t);
                    for (j, o) in bt[..bn].iter_mut().enumerate() {
                        // SAFETY: block `b0 + j` lies inside the token's activations (checked).
                        *o = unsafe { ops(&at, b0 + j) };
                    }
                }
                for (pr, acc_p) in acc[..pairs].iter_mut().enumerate() {
                    // Rows `r0 + 2 pr` and the next (the last row again past the end: its
                    // results are dropped).
                    let [pa, pb]: [*const u8; 2] = super::row_ptrs(w, r0 + 2 * pr, last, row_bytes);
                    for s0 in (0..tn).step_by(super::avx512::GEMM_SUB) {
                        // A short last group computes stale buffer entries whose sums are never
                        // written out.
                        let mut a: [__m512; super::avx512::GEMM_SUB] =
                            core::array::from_fn(|u| acc_p[s0 + u]);
                        #[allow(clippy::needless_range_loop)]
                        for j in 0..bn {
                            let off = (b0 + j) * Q4W_BYTES;
                            // SAFETY: block `b0 + j` of both rows is bytes `off .. off + 36`.
                            let (lo, hi, dw) = unsafe {
                                let (x, y) = (pa.add(off), pb.add(off));
                                let v = _mm512_inserti64x4::<1>(
                                    _mm512_castsi256_si512(_mm256_loadu_si256(x.add(4).cast())),
                                    _mm256_loadu_si256(y.add(4).cast()),
                                );
                                let h = _mm256_blend_epi32::<0b1111_0000>(
                                    _mm256_set1_epi32(x.cast::<i32>().read_unaligned()),
                                    _mm256_set1_epi32(y.cast::<i32>().read_unaligned()),
                                );
                                (
                                    _mm512_and_si512(v, m),
                                    _mm512_and_si512(_mm512_srli_epi16::<4>(v), m),
                                    _mm512_cvtph_ps(h),
                                )
                            };
                            for (u, au) in a.iter_mut().enumerate() {
                                let o = &buf[s0 + u][j];
                                let s = _mm512_dpbusd_epi32(
                                    _mm512_dpbusd_epi32(both(o.ns), lo, both(o.al)),
                                    hi,
                                    both(o.ah),
                                );
                                let da = _mm512_castsi512_ps(both(_mm256_castps_si256(o.da)));
                                let t = _mm512_mul_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(s));
                                *au = _mm512_add_ps(*au, t);
                            }
                        }
                        acc_p[s0..s0 + super::avx512::GEMM_SUB].copy_from_slice(&a);
                    }
                }
            }
            super::avx512::store_tile(out, rows, (t0, tn), (r0, rn), &acc);
        }
    }
}
