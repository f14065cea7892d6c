//! AVX-512 attention kernels over an f16 or int8 KV cache: the AVX2 kernels' tiles
//! ([`super::attn`]) with 16 lanes. Scores of up to 3 query heads x 4 positions in 12
//! accumulators, each key row converted once for the group; weighted values of up to 3 heads x 64
//! dimensions, each value row converted once per tile. Head sizes that are not a multiple of 16
//! run the AVX2 kernels. `E` is the bytes per cached value (2: f16, 1: int8); the scores against
//! an int8 cache are integer sums, in [`super::attn_q16`].
//!
//! In cache they are about twice as fast as the AVX2 ones (values) and 1.2x (scores), but a core
//! that runs 512-bit multiply-adds lowers its clock for a while: a decode whose gemvs are all
//! 256-bit (SmolLM2's Q4_1 file) measured slower with them, one whose gemvs already run 512-bit
//! kernels (T2, Q4W, TQ1_0 on the `avx512` tier) faster. So the `avx512` table holds them apart
//! and [`crate::Kernels::for_weights`] puts them in for models of the second kind.
//!
//! Every kernel is a `#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,
//! avx512vnni")] unsafe fn` whose only safety condition is that the CPU has those features.

use core::arch::x86_64::*;

use super::attn::{prefetch_lines, KV_AHEAD};
use crate::scalar::attn::{check_scores, check_values};

/// Query heads per tile.
const HEADS: usize = 3;

/// Sixteen cached values at `p` (f16 bits when `E == 2`, int8 when `E == 1`), as f32.
///
/// # Safety
///
/// `16 * E` bytes from `p` must be readable; the CPU must have the features of this module.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn cvt16<const E: usize>(p: *const u8) -> __m512 {
    // SAFETY: the caller guarantees 16 readable values; the loads are unaligned.
    unsafe {
        if E == 2 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        } else {
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())))
        }
    }
}

/// The lane sums of four vectors, in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn hsum4x16(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
    // [a0 + a2, a1 + a3, b0 + b2, b1 + b3] in 128-bit lanes, and alike for c, d.
    let x = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
    );
    let y = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(c, d),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(c, d),
    );
    // One 128-bit lane per vector: [a, b, c, d], four partial sums each.
    let z = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
    );
    let z = _mm512_add_ps(z, _mm512_permute_ps::<0b01_00_11_10>(z));
    let z = _mm512_add_ps(z, _mm512_permute_ps::<0b10_11_00_01>(z));
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castps512_ps128(_mm512_permutexvar_ps(idx, z))
}

/// Sum of the sixteen lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn hsum16(v: __m512) -> f32 {
    _mm512_reduce_add_ps(v)
}

/// Scores of `H` heads (query rows at `q`) against `P` keys (rows at `keys`), written at
/// `out[h * n + p]`; `hd` is a multiple of 16.
///
/// # Safety
///
/// `q` holds `H` rows and `keys` `P` rows of `hd` values; `out[h * n + p]` is writable for every
/// `h < H`, `p < P`; the CPU must have the features of this module.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn scores_tile<const E: usize, const H: usize, const P: usize>(
    q: *const f32,
    keys: *const u8,
    hd: usize,
    scale: f32,
    out: *mut f32,
    n: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); P]; H];
    for i in (0..hd).step_by(16) {
        let mut k = [_mm512_setzero_ps(); P];
        for (p, kv) in k.iter_mut().enumerate() {
            // SAFETY: row `p < P` has `hd` values and `i + 16 <= hd`.
            *kv = unsafe { cvt16::<E>(keys.add((p * hd + i) * E)) };
        }
        for (h, acc_h) in acc.iter_mut().enumerate() {
            // SAFETY: row `h < H` of `q` has `hd` values and `i + 16 <= hd`.
            let qv = unsafe { _mm512_loadu_ps(q.add(h * hd + i)) };
            for (a, &kv) in acc_h.iter_mut().zip(&k) {
                *a = _mm512_fmadd_ps(qv, kv, *a);
            }
        }
    }
    for (h, acc_h) in acc.iter().enumerate() {
        let mut s = [0f32; P];
        if P == 4 {
            let v = hsum4x16(acc_h[0], acc_h[1], acc_h[2], acc_h[3]);
            // SAFETY: `s` holds 4 values when `P == 4`.
            unsafe { _mm_storeu_ps(s.as_mut_ptr(), v) };
        } else {
            for (sp, &a) in s.iter_mut().zip(acc_h) {
                *sp = hsum16(a);
            }
        }
        for (p, sp) in s.iter().enumerate() {
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
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
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

/// Scores of every head of `q` against `n` keys of `E` bytes per value at `kp` (`hd` a multiple
/// of 16).
///
/// # Safety
///
/// The shapes were checked by `check_scores` (`kp` holds `n` rows); the CPU must have the
/// features of this module.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
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

/// AVX-512 [`crate::scalar::attn_scores_f16`] (float tolerance).
///
/// # Safety
///
/// The CPU must have the features of the `avx512` tier.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn avx512_attn_scores_f16(
    q: &[f32],
    keys: &[u16],
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    if !hd.is_multiple_of(16) {
        // SAFETY: the AVX2 features are part of this tier's.
        return unsafe { super::attn::avx2_attn_scores_f16(q, keys, hd, scale, out) };
    }
    let gn = check_scores(q, keys.len(), hd, out);
    // SAFETY: shapes checked; same features.
    unsafe { scores::<2>(q, keys.as_ptr().cast(), gn, hd, scale, out) }
}

/// `out[h * hd + c]` for `H` heads and `16 * V` dimensions starting at the value column `v` and
/// output column `out`: the weighted sum over all `n` positions.
///
/// # Safety
///
/// `w` holds `H` rows of `n` weights; `v` points into `n` value rows of `hd` values with `16 * V`
/// readable from the column it points at; `out` rows `h < H` have `16 * V` writable values from
/// the column it points at; the CPU must have the features of this module.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn values_tile<const E: usize, const H: usize, const V: usize>(
    w: *const f32,
    n: usize,
    v: *const u8,
    hd: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; H];
    // This tile's part of the first KV_AHEAD rows, which the loop's prefetches do not cover.
    for t in 0..n.min(KV_AHEAD) {
        prefetch_lines(v.wrapping_add(t * hd * E), 16 * V * E);
    }
    for t in 0..n {
        // This tile's part of the value row KV_AHEAD positions on (a hint, as in scores_heads).
        prefetch_lines(v.wrapping_add((t + KV_AHEAD) * hd * E), 16 * V * E);
        let mut vv = [_mm512_setzero_ps(); V];
        for (c, x) in vv.iter_mut().enumerate() {
            // SAFETY: row `t < n`, columns `16c..16c + 16` of the tile are readable.
            *x = unsafe { cvt16::<E>(v.add((t * hd + 16 * c) * E)) };
        }
        for (h, acc_h) in acc.iter_mut().enumerate() {
            // SAFETY: weight row `h < H` has `n` values.
            let wv = _mm512_set1_ps(unsafe { *w.add(h * n + t) });
            for (a, &x) in acc_h.iter_mut().zip(&vv) {
                *a = _mm512_fmadd_ps(wv, x, *a);
            }
        }
    }
    for (h, acc_h) in acc.iter().enumerate() {
        for (c, &a) in acc_h.iter().enumerate() {
            // SAFETY: the caller guarantees the tile of `out` is writable.
            unsafe { _mm512_storeu_ps(out.add(h * hd + 16 * c), a) };
        }
    }
}

/// Weighted values of `H` heads over all `hd` dimensions (a multiple of 16).
///
/// # Safety
///
/// `w` holds `H` rows of `n` weights, `v` `n` rows of `hd` values, `out` `H` rows of `hd`
/// writable values; the CPU must have the features of this module.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn values_heads<const E: usize, const H: usize>(
    w: *const f32,
    n: usize,
    v: *const u8,
    hd: usize,
    out: *mut f32,
) {
    let mut i = 0;
    while i + 64 <= hd {
        // SAFETY: columns `i..i + 64` are within `hd`.
        unsafe { values_tile::<E, H, 4>(w, n, v.add(i * E), hd, out.add(i)) };
        i += 64;
    }
    while i + 16 <= hd {
        // SAFETY: columns `i..i + 16` are within `hd`.
        unsafe { values_tile::<E, H, 1>(w, n, v.add(i * E), hd, out.add(i)) };
        i += 16;
    }
}

/// Weighted values of every head over `n` value rows of `E` bytes per value at `vp` (`hd` a
/// multiple of 16).
///
/// # Safety
///
/// The shapes were checked by `check_values` (`vp` holds `n` rows); the CPU must have the
/// features of this module.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
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

/// AVX-512 [`crate::scalar::attn_values_f16`] (float tolerance).
///
/// # Safety
///
/// The CPU must have the features of the `avx512` tier.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn avx512_attn_values_f16(weights: &[f32], vals: &[u16], hd: usize, out: &mut [f32]) {
    if !hd.is_multiple_of(16) {
        // SAFETY: the AVX2 features are part of this tier's.
        return unsafe { super::attn::avx2_attn_values_f16(weights, vals, hd, out) };
    }
    let gn = check_values(weights, vals.len(), hd, out);
    // SAFETY: shapes checked; same features.
    unsafe { values::<2>(weights, vals.as_ptr().cast(), gn, hd, out) }
}

/// AVX-512 [`crate::scalar::attn_values_i8`] (float tolerance).
///
/// # Safety
///
/// The CPU must have the features of the `avx512` tier.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn avx512_attn_values_i8(weights: &[f32], vals: &[i8], hd: usize, out: &mut [f32]) {
    if !hd.is_multiple_of(16) {
        // SAFETY: the AVX2 features are part of this tier's.
        return unsafe { super::attn::avx2_attn_values_i8(weights, vals, hd, out) };
    }
    let gn = check_values(weights, vals.len(), hd, out);
    // SAFETY: shapes checked; same features.
    unsafe { values::<1>(weights, vals.as_ptr().cast(), gn, hd, out) }
}
