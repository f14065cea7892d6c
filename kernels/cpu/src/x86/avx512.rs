//! AVX-512 kernels (the `avx512` tier): AVX-512 F, BW, VL and VNNI on top of the AVX2 tier's
//! features. Only the kernels that AVX-512 makes faster live here; every other entry of the
//! tier is the best 256-bit one the CPU has (see [`crate::dispatch`]).
//!
//! TQ1_0 is the one type whose 256-bit kernels are bound by the vector multiply ports rather
//! than by memory: decoding base-3 digits takes one `vpmaddubsw` per 16 digits
//! (`super::ternary::tq1_block`). Here each 512-bit vector holds the same 256-bit layout for
//! two rows at once (row `r` in the low half, row `r + 1` in the high half), so every decode
//! and product instruction does the work of two: the digit vectors, lane order, activation
//! arrangement (`SPLIT`, as the AVX-VNNI kernel) and float steps are those of the 256-bit
//! kernels, each half of a vector reproducing one row of the specification bit for bit. The
//! products are `vpdpbusd` (two `trit·a` per i32 lane), and the eight group sums of each half
//! come out of a 4x4 transpose-and-add of 32-bit words within each 128-bit lane, in the TQ2_0
//! lane order `0 2 4 6 1 3 5 7`.
//!
//! T2 takes the same two-rows-per-vector layout: each half holds one row's 2-bit codes of a
//! window, cut out by the AVX-VNNI kernel's shifts and masks, and the window's arranged
//! activations, negated sums and scales are used in both halves, so that every shift, mask,
//! `vpdpbusd` and float step covers two rows. TQ2_0 does the same with the AVX-VNNI kernel's
//! TQ2_0 steps (word rotations within each 128-bit lane, masks, the shift by `2k` of lane `k`,
//! the lane order `0 2 4 6 1 3 5 7`), each row's block scale in its half.
//!
//! Every kernel is a `#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,
//! avx512vnni")] unsafe fn` whose only safety condition is that the CPU has those features.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::ternary::{
    launder, load_window_tq1, reduce8, Tq1Window, Window, GEMM_PANEL, GEMM_ROWS, GEMM_TOKENS,
    PREFETCH_PASSES, ROWS, T2, TQ1_PANEL, TQ2_0, WIN,
};
use super::vnni::{window, PanelBuf, Panels, PANEL};
use crate::acts::ActsQ8;
use crate::scalar::ternary::{
    check_gemv_ternary, QK_K, T2_BLOCK, T2_BYTES, TQ1_0_BYTES, TQ2_0_BYTES,
};

/// `lo` in the low 256 bits, `hi` in the high ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn halves(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// The 256-bit vector at `p` in both halves (a load).
///
/// # Safety
///
/// `p` must be valid for reading 32 bytes; the CPU must have AVX-512 F.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn both(p: *const __m256i) -> __m512i {
    // SAFETY: the caller guarantees 32 readable bytes.
    _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(p) })
}

/// A window's arranged operands (activations, negated sums, scales) in both halves of 512-bit
/// vectors, for two rows at once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn both_window(wv: &Window) -> ([__m512i; 4], __m512i, __m512) {
    // SAFETY: `wv`'s fields are readable 256-bit vectors.
    unsafe {
        (
            [0, 1, 2, 3].map(|k| both(&wv.a[k])),
            both(&wv.sums),
            _mm512_castsi512_ps(both((&raw const wv.d).cast::<__m256i>())),
        )
    }
}

/// The TQ1_0 blocks at `a` (row `r`) and `b` (row `r + 1`) as eight pairs of digit vectors:
/// each half is [`super::ternary::tq1_block`]`::<true>` of its block.
///
/// # Safety
///
/// `a` and `b` must each be valid for reading bytes `0..52` of one TQ1_0 block; the CPU must
/// have the features of this module.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tq1_blocks(a: *const u8, b: *const u8) -> [[__m512i; 2]; 8] {
    // SAFETY: bytes 0..32 (qs[0..32]) and 20..52 (qs[20..48] and qh) of each block.
    let (q, v) = unsafe {
        (
            halves(_mm256_loadu_si256(a.cast()), _mm256_loadu_si256(b.cast())),
            halves(
                _mm256_loadu_si256(a.add(20).cast()),
                _mm256_loadu_si256(b.add(20).cast()),
            ),
        )
    };
    // 32-bit words 3..7 of each half of `v` are qs[32..48] and qh: `r` holds qs[32..48] in both
    // 128-bit lanes of each half, `t` qs[32..48] in the low lane and qh in the four words of the
    // high one.
    let r = _mm512_permutexvar_epi32(
        _mm512_setr_epi32(3, 4, 5, 6, 3, 4, 5, 6, 11, 12, 13, 14, 11, 12, 13, 14),
        v,
    );
    let t = _mm512_permutexvar_epi32(
        _mm512_setr_epi32(3, 4, 5, 6, 7, 7, 7, 7, 11, 12, 13, 14, 15, 15, 15, 15),
        v,
    );
    // Multipliers of the low (`e`) or high (`o`) byte of each 16-bit lane, alike in both halves.
    let e = |c: [i16; 8], d: [i16; 8]| {
        _mm512_broadcast_i64x4(_mm256_setr_epi16(
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ))
    };
    let o = |c: [i16; 8], d: [i16; 8]| _mm512_slli_epi16::<8>(e(c, d));
    let mul = |v: __m512i, c: __m512i| _mm512_maddubs_epi16(v, c);
    let (e3, o3) = (_mm512_set1_epi16(3), _mm512_set1_epi16(3 << 8));
    let mut x = [[e3; 2]; 8];
    x[0] = [mul(q, e3), mul(q, o3)];
    for n in 1..5 {
        x[n] = [mul(x[n - 1][0], e3), mul(x[n - 1][1], e3)];
    }
    // qs[32..48]: digits 0 | 2, then 1 | 3 (`SPLIT`).
    let p = [mul(r, e([1; 8], [9; 8])), mul(r, o([1; 8], [9; 8]))];
    x[5] = [mul(p[0], e3), mul(p[1], e3)];
    x[6] = [mul(x[5][0], e3), mul(x[5][1], e3)];
    // Digit 4 of qs[32..48] in the low 128 bits of each half, qh in the high ones.
    let (lo, hi) = ([81; 8], [1, 1, 3, 3, 9, 9, 27, 27]);
    x[7] = [mul(mul(t, e(lo, hi)), e3), mul(mul(t, o(lo, hi)), e3)];
    x
}

/// The exact `isum` of one TQ1_0 window of two rows (four pairs of [`tq1_blocks`], the window's
/// arranged activations `a` and negated sums `sums` in the TQ2_0 lane order (see
/// [`tq1_window`]), as 256-bit operands used in both halves): per pair two `vpdpbusd`, then the
/// four results' 32-bit words added within each 128-bit lane by `vpackssdw` and `vpmaddwd` (the
/// last `vpmaddwd` as a `vpdpwssd` onto `-sums`).
///
/// # Safety
///
/// The CPU must have the features of this module.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tq1_isum2(x: &[[__m512i; 2]], wv: &Tq1Window) -> __m512i {
    let p: [__m512i; 4] = core::array::from_fn(|k| {
        // SAFETY: `wv.a[k]` are two readable 256-bit vectors.
        let (a0, a1) = unsafe { (both(&wv.a[k][0]), both(&wv.a[k][1])) };
        let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), x[k][0], a0);
        _mm512_dpbusd_epi32(s, x[k][1], a1)
    });
    // Each i32 lane holds at most four products (|sum| <= 4 * 2 * 127), so the saturating
    // packs are exact: two rounds of `vpackssdw` and `vpmaddwd` by ones add the four lanes of
    // each 128-bit lane, in the order p[0], p[1], p[2], p[3].
    let ones = _mm512_set1_epi16(1);
    let h = |a: __m512i, b: __m512i| _mm512_madd_epi16(_mm512_packs_epi32(a, b), ones);
    let s = _mm512_packs_epi32(h(p[0], p[1]), h(p[2], p[3]));
    // The last round's pair sums added to `-sums` by `vpdpwssd`.
    // SAFETY: `wv.sums` is a readable 256-bit vector.
    _mm512_dpwssd_epi32(unsafe { both(&wv.sums) }, s, ones)
}

/// The f16 scales at `a` and `b` as f32, each in eight lanes of its half.
///
/// # Safety
///
/// `a` and `b` must be valid for reading 2 bytes; the CPU must have the features of this module.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tq_scales(a: *const u8, b: *const u8) -> __m512 {
    // SAFETY: the caller guarantees the bytes.
    let (a, b) = unsafe {
        (
            u16::from_le(a.cast::<u16>().read_unaligned()),
            u16::from_le(b.cast::<u16>().read_unaligned()),
        )
    };
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(a as i32 | (b as i32) << 16));
    let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
}

/// [`load_window_tq1`]`::<true>` with `sums` negated, as [`tq1_isum2`] takes them.
///
/// # Safety
///
/// As [`load_window_tq1`]; the CPU must have the features of this module.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tq1_window(acts: &ActsQ8<'_>, win: usize) -> Tq1Window {
    // SAFETY: as the caller's.
    let mut wv = unsafe { load_window_tq1::<true>(acts, win) };
    wv.sums = _mm256_sub_epi32(_mm256_setzero_si256(), wv.sums);
    wv
}

/// AVX-512 [`crate::scalar::ternary::gemv_tq1_0`], bit-exact: the AVX-VNNI kernel's steps on
/// two rows per vector (module docs), four rows per pass, a whole block per row at a time, the
/// window operands made once per panel of `TQ1_PANEL` windows.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI (the features of the
/// `avx512` tier).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn avx512_gemv_tq1_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    const PAIRS: usize = ROWS / 2;
    let bb = TQ1_0_BYTES;
    let row_bytes = check_gemv_ternary(w, acts, out.len(), QK_K, bb, "TQ1_0");
    let rows = out.len();
    if rows == 0 || row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    let nwin = acts.qs.len() / WIN;
    let last = rows - 1;
    let mut buf = [const { MaybeUninit::<Tq1Window>::uninit() }; TQ1_PANEL];
    let single = nwin <= TQ1_PANEL;
    if single {
        for (win, b) in buf[..nwin].iter_mut().enumerate() {
            // SAFETY: `win < nwin`.
            b.write(unsafe { tq1_window(acts, win) });
        }
    }
    // Swaps i32 lanes 2 and 5 of each half (`super::ternary::tq1_swap`, twice).
    let swap = _mm512_setr_epi32(0, 1, 5, 3, 4, 2, 6, 7, 8, 9, 13, 11, 12, 10, 14, 15);
    let mut r = 0;
    while r < rows {
        let p: [*const u8; ROWS] = super::row_ptrs(w, r, last, row_bytes);
        // The rows PREFETCH_PASSES passes ahead, clamped to the last row.
        let pf: [*const u8; ROWS] = super::row_ptrs(w, r + ROWS * PREFETCH_PASSES, last, row_bytes);
        let mut acc = [_mm512_setzero_ps(); PAIRS];
        for w0 in (0..nwin).step_by(TQ1_PANEL) {
            let wn = (nwin - w0).min(TQ1_PANEL);
            if !single {
                for (j, b) in buf[..wn].iter_mut().enumerate() {
                    // SAFETY: `w0 + j < nwin`.
                    b.write(unsafe { tq1_window(acts, w0 + j) });
                }
            }
            let wins = {
                let b = buf.as_ptr().cast::<Tq1Window>();
                // SAFETY: entries `..wn` were written above (or before the row loop when
                // `single`).
                unsafe { core::slice::from_raw_parts(b, wn) }
            };
            // Whole blocks: two windows each (`TQ1_PANEL` and `nwin` are even).
            for (j, pair) in wins.chunks_exact(2).enumerate() {
                let off = (w0 / 2 + j) * bb;
                for &q in &pf {
                    // SAFETY: `off` is inside the row.
                    _mm_prefetch::<_MM_HINT_T0>(unsafe { q.add(off) }.cast());
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let pair = launder(pair);
                    // SAFETY: both blocks (with their f16 scales in bytes 52..54) are inside
                    // their rows.
                    let (x, dw) = unsafe {
                        let (a, b) = (p[2 * i].add(off), p[2 * i + 1].add(off));
                        (tq1_blocks(a, b), tq_scales(a.add(bb - 2), b.add(bb - 2)))
                    };
                    for (h, wv) in pair.iter().enumerate() {
                        // SAFETY: the CPU has this module's features.
                        let mut isum = unsafe { tq1_isum2(&x[4 * h..4 * h + 4], wv) };
                        if h == 1 {
                            isum = _mm512_permutexvar_epi32(swap, isum);
                        }
                        // SAFETY: `wv.d` is a readable 256-bit vector.
                        let d = _mm512_castsi512_ps(unsafe {
                            both((&raw const wv.d).cast::<__m256i>())
                        });
                        let t = _mm512_mul_ps(_mm512_mul_ps(dw, d), _mm512_cvtepi32_ps(isum));
                        *acc = _mm512_add_ps(*acc, t);
                    }
                }
            }
        }
        let n = (rows - r).min(ROWS);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for i in 0..n {
            let a = acc[i / 2];
            let half = if i % 2 == 0 {
                _mm512_castps512_ps256(a)
            } else {
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)))
            };
            out[r + i] = reduce8(_mm256_permutevar8x32_ps(half, order));
        }
        r += ROWS;
    }
}

/// The 2-bit codes of one T2 window of two rows (`a` in the low half, `b` in the high one), as
/// [`super::ternary::codes2`] gives them for each: code vector `s` holds the codes at bit `2s`
/// of every byte.
///
/// # Safety
///
/// `a` and `b` must be valid for reading 32 bytes (16 when `half`); the CPU must have the
/// features of this module.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn codes2x2(a: *const u8, b: *const u8, half: bool) -> [__m512i; 4] {
    // SAFETY: the caller guarantees the bytes.
    let v = unsafe {
        if half {
            let lo = |p: *const u8| _mm256_castsi128_si256(_mm_loadu_si128(p.cast()));
            // The upper 128 bits of each half are zero: no codes.
            _mm512_maskz_mov_epi64(0x33, halves(lo(a), lo(b)))
        } else {
            halves(_mm256_loadu_si256(a.cast()), _mm256_loadu_si256(b.cast()))
        }
    };
    let m = _mm512_set1_epi8(3);
    [
        _mm512_and_si512(v, m),
        _mm512_and_si512(_mm512_srli_epi16::<2>(v), m),
        _mm512_and_si512(_mm512_srli_epi16::<4>(v), m),
        _mm512_and_si512(_mm512_srli_epi16::<6>(v), m),
    ]
}

/// AVX-512 [`crate::scalar::ternary::gemv_t2`] (unscaled T2 product), bit-exact: the AVX-VNNI
/// kernel's steps on two rows per vector (module docs), eight rows per pass, the window operands
/// made once per panel of `PANEL` windows.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI (the features of the
/// `avx512` tier).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn avx512_gemv_t2(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    const PAIRS: usize = 4;
    const R: usize = 2 * PAIRS;
    let row_bytes = check_gemv_ternary(w, acts, out.len(), T2_BLOCK, T2_BYTES, "T2");
    let rows = out.len();
    if rows == 0 || row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    let cols = acts.qs.len();
    let nwin = cols.div_ceil(WIN);
    let last = rows - 1;
    let mut buf: PanelBuf = [const { MaybeUninit::uninit() }; PANEL];
    // SAFETY: the CPU has this function's features.
    let mut panels = unsafe { Panels::<T2>::new(acts, &mut buf) };
    let mut r = 0;
    while r < rows {
        let p: [*const u8; R] = super::row_ptrs(w, r, last, row_bytes);
        // The rows PREFETCH_PASSES passes ahead, clamped to the last row.
        let pf: [*const u8; R] = super::row_ptrs(w, r + R * PREFETCH_PASSES, last, row_bytes);
        let mut acc = [_mm512_setzero_ps(); PAIRS];
        for w0 in (0..nwin).step_by(PANEL) {
            // SAFETY: the CPU has this function's features.
            let wins = unsafe { panels.get(w0) };
            for (j, wv) in wins.iter().enumerate() {
                let win = w0 + j;
                let half = (win + 1) * WIN > cols;
                if win % 2 == 0 {
                    // One 64-byte line covers two windows.
                    for &q in &pf {
                        // SAFETY: bytes `32 win ..` of a row are inside it.
                        _mm_prefetch::<_MM_HINT_T0>(unsafe { q.add(32 * win) }.cast());
                    }
                }
                let (a, sums, d) = both_window(wv);
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: window `win` of a row is bytes `32 win .. 32 win + 32` (16 when
                    // `half`), inside the row.
                    let c = unsafe {
                        codes2x2(p[2 * i].add(32 * win), p[2 * i + 1].add(32 * win), half)
                    };
                    let s = _mm512_dpbusd_epi32(sums, c[0], a[0]);
                    let s = _mm512_dpbusd_epi32(s, c[1], a[1]);
                    let s = _mm512_dpbusd_epi32(s, c[2], a[2]);
                    let isum = _mm512_dpbusd_epi32(s, c[3], a[3]);
                    let t = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), d);
                    *acc = _mm512_add_ps(*acc, t);
                }
            }
        }
        super::store8(out, r, reduce8x8(acc));
        r += R;
    }
}

/// The TQ2_0 codes of one block half (32 bytes) of two rows (`a` in the low half, `b` in the
/// high one), each half arranged as [`super::vnni`]'s `codes_tq2` arranges them: code vector `q`
/// holds the bytes with their 32-bit words rotated by `q` within each 128-bit lane, keeping bits
/// `2k .. 2k + 2` of word `k` of each lane (`4^k c`).
///
/// # Safety
///
/// `a` and `b` must be valid for reading 32 bytes; the CPU must have the features of this
/// module.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn codes_tq2x2(a: *const u8, b: *const u8) -> [__m512i; 4] {
    // SAFETY: the caller guarantees the bytes.
    let v = unsafe { halves(_mm256_loadu_si256(a.cast()), _mm256_loadu_si256(b.cast())) };
    let (m0, m1, m2, m3) = (
        0x0303_0303,
        0x0C0C_0C0C,
        0x3030_3030,
        0xC0C0_C0C0_u32 as i32,
    );
    let m = _mm512_setr_epi32(
        m0, m1, m2, m3, m0, m1, m2, m3, m0, m1, m2, m3, m0, m1, m2, m3,
    );
    let f = |r: __m512i| _mm512_and_si512(r, m);
    [
        f(v),
        f(_mm512_shuffle_epi32::<0b00_11_10_01>(v)),
        f(_mm512_shuffle_epi32::<0b01_00_11_10>(v)),
        f(_mm512_shuffle_epi32::<0b10_01_00_11>(v)),
    ]
}

/// AVX-512 [`crate::scalar::ternary::gemv_tq2_0`], bit-exact: the AVX-VNNI kernel's steps (its
/// code and activation arrangement, lane order `0 2 4 6 1 3 5 7` and float steps) on two rows
/// per vector (module docs), eight rows per pass, a whole block per row at a time, the window
/// operands made once per panel of `PANEL` windows.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI (the features of the
/// `avx512` tier).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn avx512_gemv_tq2_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    const PAIRS: usize = 4;
    const R: usize = 2 * PAIRS;
    let bb = TQ2_0_BYTES;
    let row_bytes = check_gemv_ternary(w, acts, out.len(), QK_K, bb, "TQ2_0");
    let rows = out.len();
    if rows == 0 || row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    let nwin = acts.qs.len().div_ceil(WIN);
    let last = rows - 1;
    let mut buf: PanelBuf = [const { MaybeUninit::uninit() }; PANEL];
    // SAFETY: the CPU has this function's features.
    let mut panels = unsafe { Panels::<TQ2_0>::new(acts, &mut buf) };
    // The bit shift of the codes in i32 lane `k` of each 128-bit lane (`4^k`).
    let shifts = _mm512_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6);
    let mut r = 0;
    while r < rows {
        let p: [*const u8; R] = super::row_ptrs(w, r, last, row_bytes);
        // The rows PREFETCH_PASSES passes ahead, clamped to the last row.
        let pf: [*const u8; R] = super::row_ptrs(w, r + R * PREFETCH_PASSES, last, row_bytes);
        let mut acc = [_mm512_setzero_ps(); PAIRS];
        for w0 in (0..nwin).step_by(PANEL) {
            // SAFETY: the CPU has this function's features.
            let wins = unsafe { panels.get(w0) };
            // Whole blocks: two windows each (`PANEL` is even, a TQ2_0 row whole blocks).
            for (j, pair) in wins.chunks_exact(2).enumerate() {
                let off = (w0 / 2 + j) * bb;
                for &q in &pf {
                    // The two 64-byte lines the block spans (it starts at an even offset in
                    // its line, so `off + 64` is in the second).
                    // SAFETY: `off` and `off + 64 < off + bb` are inside the block, inside the
                    // row.
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T0>(q.add(off).cast());
                        _mm_prefetch::<_MM_HINT_T0>(q.add(off + 64).cast());
                    }
                }
                // Each row pair's block scales, in the eight lanes of its row's half.
                let dw: [__m512; PAIRS] = core::array::from_fn(|i| {
                    // SAFETY: the f16 scale is the last two bytes of each block, inside its row.
                    unsafe { tq_scales(p[2 * i].add(off + bb - 2), p[2 * i + 1].add(off + bb - 2)) }
                });
                for (h, wv) in pair.iter().enumerate() {
                    let (a, sums, d) = both_window(wv);
                    for (i, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: half `h` of the block is its bytes `32 h .. 32 h + 32`.
                        let c = unsafe {
                            let o = off + 32 * h;
                            codes_tq2x2(p[2 * i].add(o), p[2 * i + 1].add(o))
                        };
                        let s = _mm512_dpbusd_epi32(sums, c[0], a[0]);
                        let s = _mm512_dpbusd_epi32(s, c[1], a[1]);
                        let s = _mm512_dpbusd_epi32(s, c[2], a[2]);
                        let isum = _mm512_srav_epi32(_mm512_dpbusd_epi32(s, c[3], a[3]), shifts);
                        let t = _mm512_mul_ps(_mm512_mul_ps(dw[i], d), _mm512_cvtepi32_ps(isum));
                        *acc = _mm512_add_ps(*acc, t);
                    }
                }
            }
        }
        // Back to the natural group order in each half, then the reduction of `reduce8`.
        let order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
        let acc = acc.map(|a| _mm512_permutexvar_ps(order, a));
        super::store8(out, r, reduce8x8(acc));
        r += R;
    }
}

/// [`reduce8`] of each 256-bit half of four accumulators at once: lane `i` of the result is the
/// reduction of half `i % 2` of `acc[i / 2]`, with the same additions in the same order
/// (`((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`), so bit for bit the same.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) fn reduce8x8(acc: [__m512; 4]) -> __m256 {
    // Per 256-bit half h of a pair of accumulators: its 128-bit lanes 0 and 1 (elements 0..4
    // and 4..8), four halves side by side; their sum holds s_j = a_j + a_{j + 4}.
    let s = |x: __m512, y: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
        )
    };
    // Within each 128-bit lane: [s0 + s2, s1 + s3, ..], then (s0 + s2) + (s1 + s3) in word 0.
    let t = |v: __m512| {
        let v = _mm512_add_ps(v, _mm512_permute_ps::<0b01_00_11_10>(v));
        _mm512_add_ps(v, _mm512_permute_ps::<0b10_11_00_01>(v))
    };
    let lo = t(s(acc[0], acc[1]));
    let hi = t(s(acc[2], acc[3]));
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castps512_ps256(_mm512_permutex2var_ps(lo, idx, hi))
}

/// The 2-bit codes of one TQ2_0 window half (32 bytes) of two rows (`a` in the low half, `b` in
/// the high one), each half as [`super::ternary::codes_tq2_grouped`] gives them: in the T2
/// arrangement, one group per 32-bit lane.
///
/// # Safety
///
/// `a` and `b` must be valid for reading 32 bytes; the CPU must have the features of this
/// module.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn codes_tq2_grouped2(a: *const u8, b: *const u8) -> [__m512i; 4] {
    // SAFETY: the caller guarantees the bytes.
    let v = unsafe { halves(_mm256_loadu_si256(a.cast()), _mm256_loadu_si256(b.cast())) };
    let m = _mm512_set1_epi8(3);
    let shifts = _mm512_setr_epi32(0, 0, 2, 2, 4, 4, 6, 6, 0, 0, 2, 2, 4, 4, 6, 6);
    core::array::from_fn(|q| {
        let q = q as i32;
        let (x, y) = (q, 4 + q);
        let (z, u) = (8 + q, 12 + q);
        let idx = _mm512_setr_epi32(x, y, x, y, x, y, x, y, z, u, z, u, z, u, z, u);
        _mm512_and_si512(
            _mm512_srlv_epi32(_mm512_permutexvar_epi32(idx, v), shifts),
            m,
        )
    })
}

/// Tokens per inner pass of the 512-bit gemms (running sums in registers): each window of two
/// rows is unpacked once for all eight, which the 32 vector registers of AVX-512 hold (the
/// 256-bit tiers, with 16, take four).
pub(crate) const GEMM_SUB: usize = GEMM_TOKENS;

/// The shared 512-bit gemm driver for T2 and TQ2_0: the AVX-VNNI gemm's blocking (tokens
/// [`GEMM_TOKENS`] at a time with their window operands in a stack buffer, rows
/// [`GEMM_ROWS`] at a time, [`GEMM_SUB`] tokens' running sums in registers) with the gemv's
/// two rows per vector: each window of two rows is unpacked once and multiplied with each
/// token's operands broadcast to both halves. Bit-exact with one gemv per token.
///
/// # Safety
///
/// The CPU must have the features of this module.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemm_ternary<const K: u8>(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    use crate::scalar::ternary::{check_gemm, token_acts};
    const PAIRS: usize = GEMM_ROWS / 2;
    let (bl, bb, name) = match K {
        T2 => (T2_BLOCK, T2_BYTES, "T2"),
        _ => (QK_K, TQ2_0_BYTES, "TQ2_0"),
    };
    let (cols, rows) = check_gemm(acts, nb, out.len(), name);
    for t in 0..nb {
        check_gemv_ternary(w, &token_acts(acts, cols, t), rows, bl, bb, name);
    }
    if rows == 0 || cols == 0 {
        out.fill(0.0);
        return;
    }
    let row_bytes = cols / bl * bb;
    let nwin = cols.div_ceil(WIN);
    let last = rows - 1;
    let zero = Window {
        a: [_mm256_setzero_si256(); 4],
        sums: _mm256_setzero_si256(),
        d: _mm256_setzero_ps(),
    };
    let mut buf = [[zero; GEMM_PANEL]; GEMM_TOKENS];
    let mut acc = [[_mm512_setzero_ps(); GEMM_TOKENS]; PAIRS];
    for t0 in (0..nb).step_by(GEMM_TOKENS) {
        let tn = (nb - t0).min(GEMM_TOKENS);
        for r0 in (0..rows).step_by(GEMM_ROWS) {
            let rn = (rows - r0).min(GEMM_ROWS);
            let pairs = rn.div_ceil(2);
            for a in acc[..pairs].iter_mut() {
                a[..tn].fill(_mm512_setzero_ps());
            }
            for w0 in (0..nwin).step_by(GEMM_PANEL) {
                let wn = (nwin - w0).min(GEMM_PANEL);
                for (t, bt) in buf[..tn].iter_mut().enumerate() {
                    let at = token_acts(acts, cols, t0 + t);
                    for (j, b) in bt[..wn].iter_mut().enumerate() {
                        // SAFETY: `w0 + j < nwin` for the token's activations, whose shape was
                        // checked above.
                        *b = unsafe { window::<T2>(&at, w0 + j) };
                    }
                }
                for (pr, acc_p) in acc[..pairs].iter_mut().enumerate() {
                    // Rows `r0 + 2 pr` and the next one (the last row again past the end: its
                    // results are dropped).
                    let [pa, pb]: [*const u8; 2] = super::row_ptrs(w, r0 + 2 * pr, last, row_bytes);
                    // Eight tokens at a time, their running sums in registers (a short last group
                    // computes stale buffer entries whose sums are never written out).
                    for s0 in (0..tn).step_by(GEMM_SUB) {
                        let mut a: [__m512; GEMM_SUB] = core::array::from_fn(|u| acc_p[s0 + u]);
                        #[allow(clippy::needless_range_loop)]
                        for j in 0..wn {
                            let win = w0 + j;
                            // SAFETY: window `win` of both rows is inside them: T2 bytes `32 win
                            // ..` (16 when the row ends with half a window), TQ2_0 half
                            // `win % 2` of block `win / 2` with its scale in the block's last
                            // two bytes.
                            let (c, dw) = unsafe {
                                if K == T2 {
                                    let half = (win + 1) * WIN > cols;
                                    (codes2x2(pa.add(32 * win), pb.add(32 * win), half), None)
                                } else {
                                    let (qa, qb) = (pa.add((win / 2) * bb), pb.add((win / 2) * bb));
                                    let h = 32 * (win % 2);
                                    (
                                        codes_tq2_grouped2(qa.add(h), qb.add(h)),
                                        Some(tq_scales(qa.add(bb - 2), qb.add(bb - 2))),
                                    )
                                }
                            };
                            for (u, au) in a.iter_mut().enumerate() {
                                let wv = &buf[s0 + u][j];
                                let (ops, sums, d) = both_window(wv);
                                let s = _mm512_dpbusd_epi32(sums, c[0], ops[0]);
                                let s = _mm512_dpbusd_epi32(s, c[1], ops[1]);
                                let s = _mm512_dpbusd_epi32(s, c[2], ops[2]);
                                let isum = _mm512_dpbusd_epi32(s, c[3], ops[3]);
                                let t = match dw {
                                    None => _mm512_mul_ps(_mm512_cvtepi32_ps(isum), d),
                                    Some(dw) => _mm512_mul_ps(
                                        _mm512_mul_ps(dw, d),
                                        _mm512_cvtepi32_ps(isum),
                                    ),
                                };
                                *au = _mm512_add_ps(*au, t);
                            }
                        }
                        acc_p[s0..s0 + GEMM_SUB].copy_from_slice(&a);
                    }
                }
            }
            store_tile(out, rows, (t0, tn), (r0, rn), &acc);
        }
    }
}

/// Writes a gemm tile's results: tokens `t0 .. t0 + tn`, rows `r0 .. r0 + rn` of `out` (`rows`
/// results per token), from the running sums `acc[pair][token]` of rows `r0 + 2 pair` (low half)
/// and the next (high half), each reduced as the specification does ([`reduce8x8`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) fn store_tile<const T: usize>(
    out: &mut [f32],
    rows: usize,
    (t0, tn): (usize, usize),
    (r0, rn): (usize, usize),
    acc: &[[__m512; T]],
) {
    let pairs = rn.div_ceil(2);
    for t in 0..tn {
        let o = &mut out[(t0 + t) * rows..(t0 + t + 1) * rows];
        for p4 in (0..pairs).step_by(4) {
            let v: [__m512; 4] = core::array::from_fn(|i| {
                if p4 + i < pairs {
                    acc[p4 + i][t]
                } else {
                    _mm512_setzero_ps()
                }
            });
            let r = r0 + 2 * p4;
            super::store8(&mut o[..r0 + rn], r, reduce8x8(v));
        }
    }
}

/// AVX-512 [`crate::scalar::ternary::gemm_t2`], bit-exact with one [`avx512_gemv_t2`] per token.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI (the features of the
/// `avx512` tier).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn avx512_gemm_t2(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm_ternary::<T2>(w, acts, nb, out) }
}

/// AVX-512 [`crate::scalar::ternary::gemm_tq2_0`], bit-exact with one gemv per token.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI (the features of the
/// `avx512` tier).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn avx512_gemm_tq2_0(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm_ternary::<TQ2_0>(w, acts, nb, out) }
}
