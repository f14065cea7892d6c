//! AVX-VNNI kernels for x86-64 (AVX2 + FMA + F16C + AVX-VNNI), bit-exact with [`crate::scalar`].
//!
//! `vpdpbusd` (VEX encoding, `_mm256_dpbusd_avx_epi32`) multiplies unsigned bytes with signed
//! bytes and adds each four adjacent products to an i32 lane, without saturation: one instruction
//! where AVX2 needs `vpmaddubsw` (u8·i8 pairs into i16) and `vpmaddwd` by ones (i16 pairs into
//! i32), with no i16 intermediate to bound. Every kernel here is a
//! `#[target_feature(enable = "avx2,fma,f16c,avxvnni")] unsafe fn` whose only safety condition is
//! that the CPU has those features; the `avx-vnni` dispatch tier calls them after checking. They
//! check slice shapes themselves (panicking like the scalar kernels), so any slices are sound.
//!
//! # Ternary (T2, TQ2_0, TQ1_0)
//!
//! The AVX2 ternary kernels' structure (see [`super::ternary`]): windows of 128 columns (eight
//! activation groups of 16), four rows per pass sharing the window's operands, the 2-bit codes
//! `c` (0..=3, unsigned) cut out of 32 weight bytes by shifts and masks. Here the four code
//! vectors of a window are arranged so that i32 lane `n` of every one holds four codes of the
//! same group, against activations arranged alike (once per call, into a stack buffer of up to 64
//! windows; once per pass of rows for longer rows); a chain of four `vpdpbusd`
//! starting from `−sums` then leaves `isum = Σ c·a − Σ a = Σ (c − 1)·a` of the eight groups in the
//! eight lanes, exact (at most `16 * 3 * 127` in magnitude), with no horizontal adds.
//!
//! - T2: the codes at shift `2s` of two blocks already hold, in lane `n`, elements `4s .. 4s + 4`
//!   of group `n`; the activations are the AVX2 kernel's transposed window.
//! - TQ2_0: in one 32-byte half of a block the codes at shift `2l` hold group `2l` in the low
//!   128-bit lane and `2l + 1` in the high one (four i32 words of four codes each). Code vector
//!   `q` takes the bytes with their words rotated by `q` within each 128-bit lane (`vpshufd`) and
//!   keeps bits `2k .. 2k + 2` of word `k` of each lane: lane `k` holds `4^k c` for elements
//!   `4 ((k + q) % 4) ..` of group `2k` (low lane) or `2k + 1` (high lane). The chain starts from
//!   `−4^k sums` in lane `k` and one arithmetic shift right by `2k` (exact: every term is a
//!   multiple of `4^k`, and `4^k |isum|` stays below `2^20`) gives `isum`. The activations get
//!   the matching arrangement once per window (each 32-column vector `k` rotated by `k`, then a
//!   4x4 word transpose), so the group sums come out in the lane order `0 2 4 6 1 3 5 7`, the
//!   order of the AVX2 TQ2_0 kernel: sums and scales are permuted alike and the eight running sums
//!   are put back in order before the final reduction.
//! - TQ1_0: the AVX2 kernel (its driver `gemv_tq1!`, its digit vectors and arranged
//!   activations: digits and activations in the odd bytes, zeros in the even ones) with
//!   `vpdpbusd`: the even and the odd elements of 32 columns go into one accumulator, whose
//!   128-bit lanes then hold four partial sums of the two groups of those columns (each at most
//!   `4 * 2 * 127` in magnitude); the window's four accumulators are packed to i16 in pairs
//!   (`vpackssdw`, exact), and one `vphaddw` and one `vpmaddwd` by ones leave the eight group
//!   sums in the TQ2_0 lane order, minus `sums`. The decoding (one `vpmaddubsw` per 16 digits) is
//!   the AVX2 kernel's, with `qs[32..48]` as digits 0 | 2 and 1 | 3 (`tq1_block` with `SPLIT`:
//!   two `vpmaddubsw` fewer per block for one `vpermd`), so this gains less over AVX2 than the
//!   2-bit types do.
//!
//! The float steps are the specification's, as in the AVX2 kernels; rows that are not a multiple
//! of four repeat the last row in the final pass and drop the extra results. The gemm is the AVX2
//! one with these group sums (TQ2_0 codes in the T2 arrangement there, as in the AVX2 gemm).
//!
//! # Legacy types (Q4_0, Q4_1, Q5_0, Q5_1)
//!
//! The AVX2 driver of [`super::legacy`] (eight rows per pass, the same horizontal reduction and
//! float steps) with one `vpdpbusd` per row and block. Q8_0 gained nothing measurable this way and
//! keeps its AVX2 kernel.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::legacy::{
    block_bytes, high_bits, hsum8_groups, nibbles, scales8, type_name, PREFETCH_GROUPS, Q4_0, Q4_1,
    Q5_0, Q5_1,
};
use super::ternary::{
    codes2, codes_tq2_grouped, gemv_tq1, load_window, reduce8, reduce8_pair, tq_scale, transpose4,
    Tq1Window, Window, GEMM_PANEL, GEMM_ROWS, GEMM_SUB, GEMM_TOKENS, PREFETCH_PASSES, ROWS, T2,
    TQ2_0, WIN,
};
use crate::acts::{ActsQ8, QK};
use crate::scalar::legacy::check_gemv;
use crate::scalar::ternary::{check_gemv_ternary, QK_K, T2_BLOCK, T2_BYTES, TQ2_0_BYTES};

/// `s + Σ_l dpbusd(c[l], a[l])`: four chained `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn dot4(s: __m256i, c: [__m256i; 4], a: &[__m256i; 4]) -> __m256i {
    let s = _mm256_dpbusd_avx_epi32(s, c[0], a[0]);
    let s = _mm256_dpbusd_avx_epi32(s, c[1], a[1]);
    let s = _mm256_dpbusd_avx_epi32(s, c[2], a[2]);
    _mm256_dpbusd_avx_epi32(s, c[3], a[3])
}

/// Word `k` of each 128-bit lane of the result is word `(k + Q) % 4` of the same lane of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn rotate<const Q: i32>(v: __m256i) -> __m256i {
    match Q {
        0 => v,
        1 => _mm256_shuffle_epi32::<0b00_11_10_01>(v),
        2 => _mm256_shuffle_epi32::<0b01_00_11_10>(v),
        _ => _mm256_shuffle_epi32::<0b10_01_00_11>(v),
    }
}

/// The operands of TQ2_0 window `win` (columns `128 win ..`) in the arrangement of the module
/// docs, with `sums` negated.
///
/// # Safety
///
/// `acts` must hold the columns of the window (checked by the caller's shape check); the CPU
/// must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_window_tq2(acts: &ActsQ8<'_>, win: usize) -> Window {
    let (c0, g0) = (win * WIN, win * 8);
    let perm = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    // SAFETY: the caller guarantees the window's columns, and with them its groups, lie inside
    // `acts`.
    unsafe {
        let qa = acts.qs.as_ptr();
        let a: [__m256i; 4] =
            core::array::from_fn(|k| _mm256_loadu_si256(qa.add(c0 + 32 * k).cast()));
        let sums = _mm256_loadu_si256(acts.sums.as_ptr().add(g0).cast());
        Window {
            a: transpose4([
                a[0],
                rotate::<1>(a[1]),
                rotate::<2>(a[2]),
                rotate::<3>(a[3]),
            ]),
            // Scaled like the codes: lane k (of each 128-bit lane) by 4^k.
            sums: _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_sllv_epi32(_mm256_permutevar8x32_epi32(sums, perm), tq2_shifts()),
            ),
            d: _mm256_permutevar8x32_ps(_mm256_loadu_ps(acts.d.as_ptr().add(g0)), perm),
        }
    }
}

/// The TQ2_0 codes of the 32 bytes at `p` (one half of a block) in the arrangement of the module
/// docs.
///
/// # Safety
///
/// `p` must be valid for reading 32 bytes; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn codes_tq2(p: *const u8) -> [__m256i; 4] {
    // SAFETY: the caller guarantees the bytes.
    let v = unsafe { _mm256_loadu_si256(p.cast()) };
    // Word k of each 128-bit lane keeps the codes at bits 2k: `4^k c`, at most 192 (unsigned).
    let (m0, m1, m2, m3) = (
        0x0303_0303,
        0x0C0C_0C0C,
        0x3030_3030,
        0xC0C0_C0C0_u32 as i32,
    );
    let m = _mm256_setr_epi32(m0, m1, m2, m3, m0, m1, m2, m3);
    let f = |r: __m256i| _mm256_and_si256(r, m);
    [
        f(v),
        f(rotate::<1>(v)),
        f(rotate::<2>(v)),
        f(rotate::<3>(v)),
    ]
}

/// The bit shift of the codes that i32 lane `k` of each 128-bit lane holds (TQ2_0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tq2_shifts() -> __m256i {
    _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)
}

/// Windows per column panel of the gemv (8192 columns): their arranged operands are kept in a
/// stack buffer (192 bytes each), made once per call when the row fits in one panel, once per
/// pass of rows otherwise.
pub(crate) const PANEL: usize = 64;

/// The operands of window `win` for type `K`, arranged as in the module docs, `sums` negated.
///
/// # Safety
///
/// `win < cols.div_ceil(WIN)` for the `cols = acts.qs.len()` the caller's shape check accepted;
/// the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn window<const K: u8>(acts: &ActsQ8<'_>, win: usize) -> Window {
    // SAFETY: the window's columns are inside `acts` (only T2 rows end with half a window).
    unsafe {
        if K == T2 {
            let mut wv = load_window::<T2>(acts, win, (win + 1) * WIN > acts.qs.len());
            wv.sums = _mm256_sub_epi32(_mm256_setzero_si256(), wv.sums);
            wv
        } else {
            load_window_tq2(acts, win)
        }
    }
}

/// The arranged operands ([`window`]) of a gemv's activation windows, one panel of up to
/// [`PANEL`] windows at a time in a stack buffer: made once, at [`Self::new`], when the row fits
/// in one panel, else each time [`Self::get`] is asked for a panel (once per pass of rows).
/// The buffer is the caller's ([`PanelBuf`]), so that making a `Panels` moves no windows.
pub(crate) struct Panels<'a, 'b, const K: u8> {
    acts: &'a ActsQ8<'b>,
    nwin: usize,
    buf: &'a mut PanelBuf,
}

/// The stack buffer behind [`Panels`]: `[const { MaybeUninit::uninit() }; PANEL]`.
pub(crate) type PanelBuf = [MaybeUninit<Window>; PANEL];

impl<'a, 'b, const K: u8> Panels<'a, 'b, K> {
    /// The panels of `acts`, whose length the caller's shape check accepted.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn new(acts: &'a ActsQ8<'b>, buf: &'a mut PanelBuf) -> Self {
        let nwin = acts.qs.len().div_ceil(WIN);
        let p = Panels { acts, nwin, buf };
        if nwin <= PANEL {
            for (win, b) in p.buf[..nwin].iter_mut().enumerate() {
                // SAFETY: `win < nwin`.
                b.write(unsafe { window::<K>(acts, win) });
            }
        }
        p
    }

    /// The operands of windows `w0 .. w0 + PANEL` (fewer in the last panel), `w0` a multiple
    /// of [`PANEL`] below the window count.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn get(&mut self, w0: usize) -> &[Window] {
        let wn = (self.nwin - w0).min(PANEL);
        if self.nwin > PANEL {
            for (j, b) in self.buf[..wn].iter_mut().enumerate() {
                // SAFETY: `w0 + j < nwin`.
                b.write(unsafe { window::<K>(self.acts, w0 + j) });
            }
        }
        // SAFETY: entries `..wn` were written above, or in `new` when there is one panel.
        unsafe { core::slice::from_raw_parts(self.buf.as_ptr().cast::<Window>(), wn) }
    }
}

/// The shared ternary gemv driver (see the module docs).
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn gemv_ternary<const K: u8>(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let (bl, bb, name) = match K {
        T2 => (T2_BLOCK, T2_BYTES, "T2"),
        _ => (QK_K, TQ2_0_BYTES, "TQ2_0"),
    };
    let row_bytes = check_gemv_ternary(w, acts, out.len(), bl, bb, name);
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
    let mut panels = unsafe { Panels::<K>::new(acts, &mut buf) };
    let mut r = 0;
    while r < rows {
        let p: [*const u8; ROWS] = super::row_ptrs(w, r, last, row_bytes);
        // The rows PREFETCH_PASSES passes ahead, clamped to the last row.
        let pf: [*const u8; ROWS] = super::row_ptrs(w, r + ROWS * PREFETCH_PASSES, last, row_bytes);
        let mut acc = [_mm256_setzero_ps(); ROWS];
        for w0 in (0..nwin).step_by(PANEL) {
            // SAFETY: the CPU has this function's features.
            let wins = unsafe { panels.get(w0) };
            if K == T2 {
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
                    for i in 0..ROWS {
                        // SAFETY: window `win` of a row is bytes `32 win .. 32 win + 32` (16 when
                        // `half`), inside the row.
                        let c = unsafe { codes2(p[i].add(32 * win), half) };
                        let isum = dot4(wv.sums, c, &wv.a);
                        let t = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), wv.d);
                        acc[i] = _mm256_add_ps(acc[i], t);
                    }
                }
            } else {
                // Whole blocks: two windows each (`PANEL` is even).
                for (j, pair) in wins.chunks_exact(2).enumerate() {
                    let off = ((w0 / 2) + j) * bb;
                    for &q in &pf {
                        // The two 64-byte lines the block spans (it starts at an even offset in
                        // its line, so `off + 64` is in the second).
                        // SAFETY: `off` and `off + 64 < off + bb` are inside the block, inside
                        // the row.
                        unsafe {
                            _mm_prefetch::<_MM_HINT_T0>(q.add(off).cast());
                            _mm_prefetch::<_MM_HINT_T0>(q.add(off + 64).cast());
                        }
                    }
                    for i in 0..ROWS {
                        // SAFETY: the block (with its f16 scale in its last two bytes) is
                        // inside the row.
                        let (q, dw) = unsafe {
                            let q = p[i].add(off);
                            (q, tq_scale(q.add(bb - 2)))
                        };
                        for (h, wv) in pair.iter().enumerate() {
                            // SAFETY: half `h` of the block is its bytes `32 h .. 32 h + 32`.
                            let c = unsafe { codes_tq2(q.add(32 * h)) };
                            let isum = _mm256_srav_epi32(dot4(wv.sums, c, &wv.a), tq2_shifts());
                            let t =
                                _mm256_mul_ps(_mm256_mul_ps(dw, wv.d), _mm256_cvtepi32_ps(isum));
                            acc[i] = _mm256_add_ps(acc[i], t);
                        }
                    }
                }
            }
        }
        if K != T2 {
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            for a in acc.iter_mut() {
                *a = _mm256_permutevar8x32_ps(*a, order);
            }
        }
        let sums = reduce8x4(&acc);
        let n = (rows - r).min(ROWS);
        if n == ROWS {
            // SAFETY: `r + 4 <= rows`: four f32 inside `out`.
            unsafe { _mm_storeu_ps(out.as_mut_ptr().add(r), sums) };
        } else {
            let mut tmp = [0f32; ROWS];
            // SAFETY: `tmp` holds four f32.
            unsafe { _mm_storeu_ps(tmp.as_mut_ptr(), sums) };
            out[r..r + n].copy_from_slice(&tmp[..n]);
        }
        r += ROWS;
    }
}

/// [`reduce8`] of four rows' running sums at once, lane `i` for row `i`: the same additions in
/// the same order (`((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`), so bit for bit the same.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce8x4(acc: &[__m256; ROWS]) -> __m128 {
    // [r0 r2 r0 r2 | r1 r3 r1 r3], then [r0 r1 r2 r3] in the low 128 bits.
    let u = _mm256_unpacklo_ps(reduce8_pair(acc[0], acc[1]), reduce8_pair(acc[2], acc[3]));
    _mm256_castps256_ps128(_mm256_permutevar8x32_ps(
        u,
        _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0),
    ))
}

/// AVX-VNNI [`crate::scalar::ternary::gemv_t2`] (unscaled T2 product), bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemv_t2(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv_ternary::<T2>(w, acts, out) }
}

/// AVX-VNNI [`crate::scalar::ternary::gemv_tq2_0`], bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemv_tq2_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv_ternary::<TQ2_0>(w, acts, out) }
}

/// The exact `isum` of one TQ1_0 window from its four pairs of digit vectors
/// ([`super::ternary::tq1_block`]) and its operands, in the lane order `0 2 4 6 1 3 5 7`
/// (module docs; in the second window of a block, lanes 2 and 5 swapped, as `SPLIT` arranges
/// them): per pair, two `vpdpbusd` (two products `trit·a` per i32 lane each), then
/// `vpackssdw`, `vphaddw` and `vpmaddwd` by ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn tq1_isum(x: &[[__m256i; 2]], wv: &Tq1Window) -> __m256i {
    let p: [__m256i; 4] = core::array::from_fn(|k| {
        let s = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), x[k][0], wv.a[k][0]);
        _mm256_dpbusd_avx_epi32(s, x[k][1], wv.a[k][1])
    });
    let h = _mm256_hadd_epi16(
        _mm256_packs_epi32(p[0], p[1]),
        _mm256_packs_epi32(p[2], p[3]),
    );
    let sums = _mm256_madd_epi16(h, _mm256_set1_epi16(1));
    _mm256_sub_epi32(sums, wv.sums)
}

gemv_tq1! {
    /// The AVX-VNNI TQ1_0 gemv driver (see [`super::ternary::gemv_tq1!`]).
    gemv_tq1_vnni, "avx2,fma,f16c,avxvnni", tq1_isum, true
}

/// AVX-VNNI [`crate::scalar::ternary::gemv_tq1_0`], bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemv_tq1_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv_tq1_vnni(w, acts, out) }
}

/// The ternary gemm driver: the AVX2 one of [`super::ternary`] (tokens eight at a time, rows 32
/// at a time, column panels of eight windows whose activations are arranged once per token into
/// a stack buffer, each weight window unpacked once for four tokens at a time) with the group
/// sums of [`dot4`]. TQ2_0's codes take the T2 arrangement there (one group per lane), so both
/// types share the T2 activation windows.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn gemm_ternary<const K: u8>(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    use crate::scalar::ternary::{check_gemm, token_acts};
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
    let base = w.as_ptr();
    let zero = Window {
        a: [_mm256_setzero_si256(); 4],
        sums: _mm256_setzero_si256(),
        d: _mm256_setzero_ps(),
    };
    let mut buf = [[zero; GEMM_PANEL]; GEMM_TOKENS];
    let mut acc = [[_mm256_setzero_ps(); GEMM_TOKENS]; GEMM_ROWS];
    for t0 in (0..nb).step_by(GEMM_TOKENS) {
        let tn = (nb - t0).min(GEMM_TOKENS);
        for r0 in (0..rows).step_by(GEMM_ROWS) {
            let rn = (rows - r0).min(GEMM_ROWS);
            for a in acc[..rn].iter_mut() {
                a[..tn].fill(_mm256_setzero_ps());
            }
            for w0 in (0..nwin).step_by(GEMM_PANEL) {
                let wn = (nwin - w0).min(GEMM_PANEL);
                for (t, bt) in buf[..tn].iter_mut().enumerate() {
                    let at = token_acts(acts, cols, t0 + t);
                    for (j, b) in bt[..wn].iter_mut().enumerate() {
                        // SAFETY: `w0 + j < nwin` for the token's activations, whose shape
                        // was checked above.
                        *b = unsafe { window::<T2>(&at, w0 + j) };
                    }
                }
                for (r, acc_r) in acc[..rn].iter_mut().enumerate() {
                    // SAFETY: `r0 + r < rows`, and the shape check proved `w` holds `rows`
                    // rows of `row_bytes`.
                    let p = unsafe { base.add((r0 + r) * row_bytes) };
                    // Four tokens at a time, their running sums in registers (a short last group
                    // computes stale buffer entries whose sums are never written out).
                    for s0 in (0..tn).step_by(GEMM_SUB) {
                        let mut a: [__m256; GEMM_SUB] = core::array::from_fn(|u| acc_r[s0 + u]);
                        // `j` indexes the window in every token's row of `buf`.
                        #[allow(clippy::needless_range_loop)]
                        for j in 0..wn {
                            let win = w0 + j;
                            // SAFETY: window `win` of the row is inside it: T2 bytes `32 win ..`
                            // (16 when the row ends with half a window), TQ2_0 half `win % 2` of
                            // block `win / 2` with its scale in the block's last two bytes.
                            let (c, dw) = unsafe {
                                if K == T2 {
                                    (codes2(p.add(32 * win), (win + 1) * WIN > cols), None)
                                } else {
                                    let q = p.add((win / 2) * bb);
                                    (
                                        codes_tq2_grouped(q.add(32 * (win % 2))),
                                        Some(tq_scale(q.add(bb - 2))),
                                    )
                                }
                            };
                            for (u, au) in a.iter_mut().enumerate() {
                                let wv = &buf[s0 + u][j];
                                let isum = dot4(wv.sums, c, &wv.a);
                                let t = match dw {
                                    None => _mm256_mul_ps(_mm256_cvtepi32_ps(isum), wv.d),
                                    Some(dw) => _mm256_mul_ps(
                                        _mm256_mul_ps(dw, wv.d),
                                        _mm256_cvtepi32_ps(isum),
                                    ),
                                };
                                *au = _mm256_add_ps(*au, t);
                            }
                        }
                        acc_r[s0..s0 + GEMM_SUB].copy_from_slice(&a);
                    }
                }
            }
            for (r, acc_r) in acc[..rn].iter().enumerate() {
                for (t, &a) in acc_r[..tn].iter().enumerate() {
                    out[(t0 + t) * rows + r0 + r] = reduce8(a);
                }
            }
        }
    }
}

/// AVX-VNNI [`crate::scalar::ternary::gemm_t2`], bit-exact with one [`avxvnni_gemv_t2`] per
/// token.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemm_t2(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm_ternary::<T2>(w, acts, nb, out) }
}

/// AVX-VNNI [`crate::scalar::ternary::gemm_tq2_0`], bit-exact with one [`avxvnni_gemv_tq2_0`]
/// per token.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemm_tq2_0(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm_ternary::<TQ2_0>(w, acts, nb, out) }
}

// ---------------------------------------------------------------------------------------------
// Legacy block types (Q4_0, Q4_1, Q5_0, Q5_1)

/// Eight i32 partial sums whose total is the block's unsigned-weight dot with `a` (as
/// [`super::legacy`]'s AVX2 block dot, in one `vpdpbusd` instead of `vpmaddubsw` and `vpmaddwd`):
/// lanes 0-3 group 0, lanes 4-7 group 1.
///
/// # Safety
///
/// `blk` must be valid for reading one block of type `K`; the CPU must have AVX2 and AVX-VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn block_dot<const K: u8>(blk: *const u8, a: __m256i) -> __m256i {
    let z = _mm256_setzero_si256();
    match K {
        // SAFETY: bytes 2..18 of the block.
        Q4_0 => _mm256_dpbusd_avx_epi32(z, unsafe { nibbles(blk.add(2)) }, a),
        // SAFETY: bytes 4..20 of the block.
        Q4_1 => _mm256_dpbusd_avx_epi32(z, unsafe { nibbles(blk.add(4)) }, a),
        Q5_0 => {
            // SAFETY: bytes 2..6 of the block.
            let qh = unsafe { blk.add(2).cast::<u32>().read_unaligned() };
            // SAFETY: bytes 6..22 of the block.
            let q = _mm256_or_si256(unsafe { nibbles(blk.add(6)) }, high_bits(u32::from_le(qh)));
            _mm256_dpbusd_avx_epi32(z, q, a)
        }
        _ => {
            // SAFETY: bytes 4..8 of the block.
            let qh = unsafe { blk.add(4).cast::<u32>().read_unaligned() };
            // SAFETY: bytes 8..24 of the block.
            let q = _mm256_or_si256(unsafe { nibbles(blk.add(8)) }, high_bits(u32::from_le(qh)));
            _mm256_dpbusd_avx_epi32(z, q, a)
        }
    }
}

/// The legacy gemv driver: the AVX2 driver of [`super::legacy`] (eight rows per pass, the same
/// reduction and float steps) with [`block_dot`].
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn gemv_legacy<const K: u8>(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let bb = block_bytes(K);
    let (nb, row_bytes) = check_gemv(w, acts, out.len(), bb, type_name(K));
    let rows = out.len();
    if rows == 0 || row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    let base = w.as_ptr();
    let last = rows - 1;
    let mut r = 0;
    while r < rows {
        let p: [*const u8; 8] = super::row_ptrs(w, r, last, row_bytes);
        let mut acc = _mm256_setzero_ps();
        // Prefetch the group of rows PREFETCH_GROUPS ahead, in step with this group's progress.
        let ahead = (r + 8 * PREFETCH_GROUPS) * row_bytes;
        for b in 0..nb {
            let pf = ahead + b * 8 * bb;
            if pf + 8 * bb <= w.len() {
                for line in 0..(8 * bb).div_ceil(64) {
                    // SAFETY: `pf + 64 * line < pf + 8 * bb <= w.len()`: inside `w`.
                    _mm_prefetch::<_MM_HINT_T1>(unsafe { base.add(pf + 64 * line) }.cast());
                }
            }
            // SAFETY: `check_gemv` proved `acts.qs` holds `nb * QK` values.
            let a = unsafe { _mm256_loadu_si256(acts.qs.as_ptr().add(b * QK).cast()) };
            let (da0, da1) = (acts.d[2 * b], acts.d[2 * b + 1]);
            let (sa0, sa1) = (acts.sums[2 * b], acts.sums[2 * b + 1]);
            let off = b * bb;
            // SAFETY: block `b` of each row lies inside its row (`b < nb`).
            let s: [__m256i; 8] =
                core::array::from_fn(|i| unsafe { block_dot::<K>(p[i].add(off), a) });
            let (mut i0, mut i1) = hsum8_groups(s);
            let offset = match K {
                Q4_0 => 8,
                Q5_0 => 16,
                _ => 0,
            };
            if offset != 0 {
                i0 = _mm256_sub_epi32(i0, _mm256_set1_epi32(sa0.wrapping_mul(offset)));
                i1 = _mm256_sub_epi32(i1, _mm256_set1_epi32(sa1.wrapping_mul(offset)));
            }
            // SAFETY: every block type here starts with at least 4 bytes (`d`, then `m` or data).
            let (dw, mw) = unsafe { scales8(&p, off) };
            let mut t = _mm256_add_ps(
                _mm256_mul_ps(
                    _mm256_mul_ps(dw, _mm256_set1_ps(da0)),
                    _mm256_cvtepi32_ps(i0),
                ),
                _mm256_mul_ps(
                    _mm256_mul_ps(dw, _mm256_set1_ps(da1)),
                    _mm256_cvtepi32_ps(i1),
                ),
            );
            if K == Q4_1 || K == Q5_1 {
                let c = _mm256_set1_ps(da0 * sa0 as f32 + da1 * sa1 as f32);
                t = _mm256_add_ps(t, _mm256_mul_ps(mw, c));
            }
            acc = _mm256_add_ps(acc, t);
        }
        super::store8(out, r, acc);
        r += 8;
    }
}

/// AVX-VNNI [`crate::scalar::gemv_q4_0`], bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemv_q4_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv_legacy::<Q4_0>(w, acts, out) }
}

/// AVX-VNNI [`crate::scalar::gemv_q4_1`], bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemv_q4_1(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv_legacy::<Q4_1>(w, acts, out) }
}

/// AVX-VNNI [`crate::scalar::gemv_q5_0`], bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemv_q5_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv_legacy::<Q5_0>(w, acts, out) }
}

/// AVX-VNNI [`crate::scalar::gemv_q5_1`], bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemv_q5_1(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv_legacy::<Q5_1>(w, acts, out) }
}
