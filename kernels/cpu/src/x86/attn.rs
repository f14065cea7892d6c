//! AVX2 attention kernels over an f16 or int8 KV cache: [`crate::scalar::attn`] with F16C (or
//! int8 widening) conversions, FMA sums and a polynomial `exp`. The tiles are written once for
//! both element types: `E` is the bytes per cached value (2: f16 bits, 1: int8); the scores
//! against an int8 cache are integer sums, in [`super::attn_q16`].
//!
//! Scores: a tile of up to 3 query heads x 4 positions keeps 12 accumulators in registers, so each
//! key row is converted once for all heads of its group; four accumulators reduce together into
//! four scores. Weighted values: a tile of up to 3 heads x 32 dimensions, walking the positions,
//! so each value row is converted once per tile. Dimension tails (head sizes that are not a
//! multiple of 8) and position tails run sequentially in scalar code.
//!
//! Both walk their rows in order and prefetch the rows `KV_AHEAD` positions on: with the rows in
//! memory (a decode step's weights stream through the caches between layers), `bench attn`'s
//! in-decode figure went from 2.5-2.7 to 1.7-2.0 ms per SmolLM2 step at 576 positions.
//!
//! `exp` is the Cephes single-precision algorithm (`x = n ln 2 + r`, `|r| <= ln 2 / 2`, a degree-5
//! polynomial for `(e^r - 1 - r) / r²`, then `2^n` through the exponent bits); arguments below
//! -87.3 give 0 where `libm::expf` gives a subnormal below 1.2e-38.

use core::arch::x86_64::*;

use crate::scalar::attn::{check_scores, check_values};
use crate::scalar::f16_bits_to_f32;

/// Query heads per tile.
const HEADS: usize = 3;

/// Positions ahead whose cached rows the kernels prefetch into L1 (4 KiB of f16 keys at head
/// size 64): in a decode the rows come from memory, between layers whose weights have just
/// streamed through the caches, and the hardware prefetchers do not run ahead across 4 KiB pages.
pub(crate) const KV_AHEAD: usize = 32;

/// Prefetches into L1 the 64-byte lines from `p` on that start within `bytes` of it: a hint, which
/// accesses nothing, so any address will do.
#[inline(always)]
pub(crate) fn prefetch_lines(p: *const u8, bytes: usize) {
    for l in (0..bytes).step_by(64) {
        // SAFETY: SSE is part of x86-64, and a prefetch never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(l).cast()) };
    }
}

/// Eight cached values at `p` (f16 bits when `E == 2`, int8 when `E == 1`), as f32.
///
/// # Safety
///
/// `8 * E` bytes from `p` must be readable; the CPU must have AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn cvt8<const E: usize>(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees 8 readable values; the loads are unaligned.
    unsafe {
        if E == 2 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        } else {
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast())))
        }
    }
}

/// The cached value at `p` (as [`cvt8`]), as f32.
///
/// # Safety
///
/// `E` bytes from `p` must be readable.
#[inline]
unsafe fn cvt1<const E: usize>(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees the bytes.
    unsafe {
        if E == 2 {
            f16_bits_to_f32(p.cast::<u16>().read_unaligned())
        } else {
            *p as i8 as f32
        }
    }
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2)))
}

/// The lane sums of four vectors, in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    let t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t))
}

/// Scores of `H` heads (query rows at `q`) against `P` keys (rows at `keys`), written at
/// `out[h * n + p]`.
///
/// # Safety
///
/// `q` holds `H` rows and `keys` `P` rows of `hd` values; `out[h * n + p]` is writable for every
/// `h < H`, `p < P`; the CPU must have AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_tile<const E: usize, const H: usize, const P: usize>(
    q: *const f32,
    keys: *const u8,
    hd: usize,
    scale: f32,
    out: *mut f32,
    n: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); P]; H];
    let mut i = 0;
    while i + 8 <= hd {
        let mut k = [_mm256_setzero_ps(); P];
        for (p, kv) in k.iter_mut().enumerate() {
            // SAFETY: row `p < P` has `hd` values and `i + 8 <= hd`.
            *kv = unsafe { cvt8::<E>(keys.add((p * hd + i) * E)) };
        }
        for (h, acc_h) in acc.iter_mut().enumerate() {
            // SAFETY: row `h < H` of `q` has `hd` values and `i + 8 <= hd`.
            let qv = unsafe { _mm256_loadu_ps(q.add(h * hd + i)) };
            for (a, &kv) in acc_h.iter_mut().zip(&k) {
                *a = _mm256_fmadd_ps(qv, kv, *a);
            }
        }
        i += 8;
    }
    for (h, acc_h) in acc.iter().enumerate() {
        let mut s = [0f32; P];
        if P == 4 {
            let v = hsum4(acc_h[0], acc_h[1], acc_h[2], acc_h[3]);
            // SAFETY: `s` holds 4 values when `P == 4`.
            unsafe { _mm_storeu_ps(s.as_mut_ptr(), v) };
        } else {
            for (sp, &a) in s.iter_mut().zip(acc_h) {
                *sp = hsum(a);
            }
        }
        for (p, sp) in s.iter_mut().enumerate() {
            for j in i..hd {
                // SAFETY: `j < hd`, rows `h < H` and `p < P` exist.
                *sp += unsafe { *q.add(h * hd + j) * cvt1::<E>(keys.add((p * hd + j) * E)) };
            }
            // SAFETY: the caller guarantees `out[h * n + p]` is writable.
            unsafe { *out.add(h * n + p) = *sp * scale };
        }
    }
}

/// Scores of `H` heads against all `n` keys.
///
/// # Safety
///
/// As [`scores_tile`] with `P = n`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_heads<const E: usize, const H: usize>(
    q: *const f32,
    keys: *const u8,
    hd: usize,
    scale: f32,
    out: *mut f32,
    n: usize,
) {
    // The first KV_AHEAD rows, which the loop's prefetches do not cover.
    prefetch_lines(keys, n.min(KV_AHEAD) * hd * E);
    let mut t = 0;
    while t + 4 <= n {
        // The key rows KV_AHEAD positions on (a hint: no access, so any address will do).
        prefetch_lines(keys.wrapping_add((t + KV_AHEAD) * hd * E), 4 * hd * E);
        // SAFETY: positions `t..t + 4` are below `n`.
        unsafe { scores_tile::<E, H, 4>(q, keys.add(t * hd * E), hd, scale, out.add(t), n) };
        t += 4;
    }
    while t < n {
        // SAFETY: `t < n`.
        unsafe { scores_tile::<E, H, 1>(q, keys.add(t * hd * E), hd, scale, out.add(t), n) };
        t += 1;
    }
}

/// Scores of every head of `q` against `n` keys of `E` bytes per value at `kp`.
///
/// # Safety
///
/// The shapes were checked by `check_scores` (`kp` holds `n` rows); the CPU must have AVX2, FMA
/// and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores<const E: usize>(
    q: &[f32],
    kp: *const u8,
    (g, n): (usize, usize),
    hd: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let (qp, op) = (q.as_ptr(), scores.as_mut_ptr());
    let mut h = 0;
    while h < g {
        let hh = (g - h).min(HEADS);
        // SAFETY: the checked shapes: heads `h..h + hh` of `q` and of `scores` exist, and the
        // keys hold `n` rows.
        unsafe {
            let (qh, oh) = (qp.add(h * hd), op.add(h * n));
            match hh {
                3 => scores_heads::<E, 3>(qh, kp, hd, scale, oh, n),
                2 => scores_heads::<E, 2>(qh, kp, hd, scale, oh, n),
                _ => scores_heads::<E, 1>(qh, kp, hd, scale, oh, n),
            }
        }
        h += hh;
    }
}

/// AVX2 [`crate::scalar::attn_scores_f16`] (float tolerance).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_attn_scores_f16(
    q: &[f32],
    keys: &[u16],
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    let gn = check_scores(q, keys.len(), hd, out);
    // SAFETY: shapes checked; same features.
    unsafe { scores::<2>(q, keys.as_ptr().cast(), gn, hd, scale, out) }
}

/// `e^x` lane by lane (module docs); 0 below -87.3.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8(x: __m256) -> __m256 {
    let lo = _mm256_set1_ps(-87.336_55);
    // At `lo` itself (just below ln(f32::MIN_POSITIVE)) e^x is already subnormal: 0 as well.
    let underflow = _mm256_cmp_ps::<_CMP_LE_OQ>(x, lo);
    // Lanes that underflow compute e^0 and are zeroed at the end: clamped to `lo` instead, their
    // last multiply would round to a subnormal, which costs a microcode assist per lane (a
    // softmax over widely spread scores ran 7x slower).
    let x = _mm256_min_ps(_mm256_andnot_ps(underflow, x), _mm256_set1_ps(88.376_26));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(core::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    )));
    _mm256_andnot_ps(underflow, _mm256_mul_ps(y, pow2))
}

/// AVX2 [`crate::scalar::softmax_unnorm`] (the maximum is exact; `exp` and the sum within a
/// tolerance).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_softmax_unnorm(x: &mut [f32]) -> (f32, f32) {
    let n = x.len();
    if n == 0 {
        return (f32::NEG_INFINITY, 0.0);
    }
    let p = x.as_mut_ptr();
    let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n`.
        mv = _mm256_max_ps(mv, unsafe { _mm256_loadu_ps(p.add(i)) });
        i += 8;
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 values.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), mv) };
    let max = x[i..]
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let m8 = _mm256_set1_ps(max);
    let mut sv = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n`.
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m8));
            _mm256_storeu_ps(p.add(i), e);
            sv = _mm256_add_ps(sv, e);
        }
        i += 8;
    }
    if i < n {
        // The tail, padded with -inf (whose exp is 0).
        let mut t = [f32::NEG_INFINITY; 8];
        t[..n - i].copy_from_slice(&x[i..]);
        // SAFETY: `t` holds 8 values.
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(t.as_ptr()), m8));
            _mm256_storeu_ps(t.as_mut_ptr(), e);
            sv = _mm256_add_ps(sv, e);
        }
        x[i..].copy_from_slice(&t[..n - i]);
    }
    (max, hsum(sv))
}

/// `out[h * hd + c]` for `H` heads and `8 * V` dimensions starting at the value column `v` and
/// output column `out`: the weighted sum over all `n` positions.
///
/// # Safety
///
/// `w` holds `H` rows of `n` weights; `v` points into `n` value rows of `hd` values with `8 * V`
/// readable from the column it points at; `out` rows `h < H` have `8 * V` writable values from
/// the column it points at; the CPU must have AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values_tile<const E: usize, const H: usize, const V: usize>(
    w: *const f32,
    n: usize,
    v: *const u8,
    hd: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm256_setzero_ps(); V]; H];
    // This tile's part of the first KV_AHEAD rows, which the loop's prefetches do not cover.
    for t in 0..n.min(KV_AHEAD) {
        prefetch_lines(v.wrapping_add(t * hd * E), 8 * V * E);
    }
    for t in 0..n {
        // This tile's part of the value row KV_AHEAD positions on (a hint, as in scores_heads).
        prefetch_lines(v.wrapping_add((t + KV_AHEAD) * hd * E), 8 * V * E);
        let mut vv = [_mm256_setzero_ps(); V];
        for (c, x) in vv.iter_mut().enumerate() {
            // SAFETY: row `t < n`, columns `8c..8c + 8` of the tile are readable.
            *x = unsafe { cvt8::<E>(v.add((t * hd + 8 * c) * E)) };
        }
        for (h, acc_h) in acc.iter_mut().enumerate() {
            // SAFETY: weight row `h < H` has `n` values.
            let wv = _mm256_set1_ps(unsafe { *w.add(h * n + t) });
            for (a, &x) in acc_h.iter_mut().zip(&vv) {
                *a = _mm256_fmadd_ps(wv, x, *a);
            }
        }
    }
    for (h, acc_h) in acc.iter().enumerate() {
        for (c, &a) in acc_h.iter().enumerate() {
            // SAFETY: the caller guarantees the tile of `out` is writable.
            unsafe { _mm256_storeu_ps(out.add(h * hd + 8 * c), a) };
        }
    }
}

/// Weighted values of `H` heads over all `hd` dimensions.
///
/// # Safety
///
/// `w` holds `H` rows of `n` weights, `v` `n` rows of `hd` values, `out` `H` rows of `hd`
/// writable values; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values_heads<const E: usize, const H: usize>(
    w: *const f32,
    n: usize,
    v: *const u8,
    hd: usize,
    out: *mut f32,
) {
    let mut i = 0;
    while i + 32 <= hd {
        // SAFETY: columns `i..i + 32` are within `hd`.
        unsafe { values_tile::<E, H, 4>(w, n, v.add(i * E), hd, out.add(i)) };
        i += 32;
    }
    while i + 8 <= hd {
        // SAFETY: columns `i..i + 8` are within `hd`.
        unsafe { values_tile::<E, H, 1>(w, n, v.add(i * E), hd, out.add(i)) };
        i += 8;
    }
    for j in i..hd {
        for h in 0..H {
            let mut acc = 0.0f32;
            for t in 0..n {
                // SAFETY: `h < H`, `t < n`, `j < hd`.
                acc += unsafe { *w.add(h * n + t) * cvt1::<E>(v.add((t * hd + j) * E)) };
            }
            // SAFETY: as above.
            unsafe { *out.add(h * hd + j) = acc };
        }
    }
}

/// Weighted values of every head over `n` value rows of `E` bytes per value at `vp`.
///
/// # Safety
///
/// The shapes were checked by `check_values` (`vp` holds `n` rows); the CPU must have AVX2, FMA
/// and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values<const E: usize>(
    weights: &[f32],
    vp: *const u8,
    (g, n): (usize, usize),
    hd: usize,
    out: &mut [f32],
) {
    let (wp, op) = (weights.as_ptr(), out.as_mut_ptr());
    let mut h = 0;
    while h < g {
        let hh = (g - h).min(HEADS);
        // SAFETY: the checked shapes: heads `h..h + hh` of `weights` and `out` exist, and the
        // values hold `n` rows.
        unsafe {
            let (wh, oh) = (wp.add(h * n), op.add(h * hd));
            match hh {
                3 => values_heads::<E, 3>(wh, n, vp, hd, oh),
                2 => values_heads::<E, 2>(wh, n, vp, hd, oh),
                _ => values_heads::<E, 1>(wh, n, vp, hd, oh),
            }
        }
        h += hh;
    }
}

/// AVX2 [`crate::scalar::attn_values_f16`] (float tolerance).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_attn_values_f16(weights: &[f32], vals: &[u16], hd: usize, out: &mut [f32]) {
    let gn = check_values(weights, vals.len(), hd, out);
    // SAFETY: shapes checked; same features.
    unsafe { values::<2>(weights, vals.as_ptr().cast(), gn, hd, out) }
}

/// AVX2 [`crate::scalar::attn_values_i8`] (float tolerance).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_attn_values_i8(weights: &[f32], vals: &[i8], hd: usize, out: &mut [f32]) {
    let gn = check_values(weights, vals.len(), hd, out);
    // SAFETY: shapes checked; same features.
    unsafe { values::<1>(weights, vals.as_ptr().cast(), gn, hd, out) }
}
