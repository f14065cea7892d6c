//! NEON attention kernels over an f16 or int8 KV cache: [`crate::scalar::attn`] with ARMv8.0
//! `fcvtl` conversions (or int8 widening), FMA sums and a polynomial `exp`; the same tiles as the
//! AVX2 version on 4-lane vectors, written once for both element types (`E` bytes per value);
//! the scores against an int8 cache are integer sums, in [`super::attn_q16`].
//!
//! `fcvtl`/`fcvtl2` (f16 to f32) are base Advanced SIMD instructions, but their intrinsics take
//! the unstable `float16x4_t` type, so they are emitted with `asm!`. `exp` is the Cephes
//! single-precision algorithm described in the AVX2 module; arguments below -87.3 give 0.

use core::arch::aarch64::*;
use core::arch::asm;

use crate::scalar::attn::{check_scores, check_values};
use crate::scalar::f16_bits_to_f32;

/// Query heads per tile.
const HEADS: usize = 3;

/// Eight cached values at `p` (f16 bits when `E == 2`, int8 when `E == 1`), as two f32 vectors
/// (low four, high four).
///
/// # Safety
///
/// `8 * E` bytes from `p` must be readable; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn cvt8<const E: usize>(p: *const u8) -> (float32x4_t, float32x4_t) {
    if E == 1 {
        // SAFETY: the caller guarantees 8 readable bytes.
        let w = vmovl_s8(unsafe { vld1_s8(p.cast()) });
        return (
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))),
            vcvtq_f32_s32(vmovl_high_s16(w)),
        );
    }
    // SAFETY: the caller guarantees 8 readable values.
    let h = unsafe { vld1q_u16(p.cast()) };
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: `fcvtl`/`fcvtl2` are base Advanced SIMD instructions that only read and write the
    // named registers.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    (lo, hi)
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

/// The lane sums of four vectors, in order.
#[inline]
#[target_feature(enable = "neon")]
fn hsum4(a: float32x4_t, b: float32x4_t, c: float32x4_t, d: float32x4_t) -> float32x4_t {
    vpaddq_f32(vpaddq_f32(a, b), vpaddq_f32(c, d))
}

/// Scores of `H` heads (query rows at `q`) against `P` keys (rows at `keys`), written at
/// `out[h * n + p]`.
///
/// # Safety
///
/// `q` holds `H` rows and `keys` `P` rows of `hd` values; `out[h * n + p]` is writable for every
/// `h < H`, `p < P`; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn scores_tile<const E: usize, const H: usize, const P: usize>(
    q: *const f32,
    keys: *const u8,
    hd: usize,
    scale: f32,
    out: *mut f32,
    n: usize,
) {
    let mut acc = [[vdupq_n_f32(0.0); P]; H];
    let mut i = 0;
    while i + 8 <= hd {
        let mut k = [(vdupq_n_f32(0.0), vdupq_n_f32(0.0)); P];
        for (p, kv) in k.iter_mut().enumerate() {
            // SAFETY: row `p < P` has `hd` values and `i + 8 <= hd`.
            *kv = unsafe { cvt8::<E>(keys.add((p * hd + i) * E)) };
        }
        for (h, acc_h) in acc.iter_mut().enumerate() {
            // SAFETY: row `h < H` of `q` has `hd` values and `i + 8 <= hd`.
            let (q0, q1) = unsafe {
                (
                    vld1q_f32(q.add(h * hd + i)),
                    vld1q_f32(q.add(h * hd + i + 4)),
                )
            };
            for (a, &(k0, k1)) in acc_h.iter_mut().zip(&k) {
                *a = vfmaq_f32(vfmaq_f32(*a, q0, k0), q1, k1);
            }
        }
        i += 8;
    }
    for (h, acc_h) in acc.iter().enumerate() {
        let mut s = [0f32; P];
        if P == 4 {
            let v = hsum4(acc_h[0], acc_h[1], acc_h[2], acc_h[3]);
            // SAFETY: `s` holds 4 values when `P == 4`.
            unsafe { vst1q_f32(s.as_mut_ptr(), v) };
        } else {
            for (sp, &a) in s.iter_mut().zip(acc_h) {
                *sp = vaddvq_f32(a);
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
#[target_feature(enable = "neon")]
unsafe fn scores_heads<const E: usize, const H: usize>(
    q: *const f32,
    keys: *const u8,
    hd: usize,
    scale: f32,
    out: *mut f32,
    n: usize,
) {
    let mut t = 0;
    while t + 4 <= n {
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
/// The shapes were checked by `check_scores` (`kp` holds `n` rows); the CPU must have NEON.
#[target_feature(enable = "neon")]
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

/// NEON [`crate::scalar::attn_scores_f16`] (float tolerance).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_attn_scores_f16(
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
#[target_feature(enable = "neon")]
fn exp4(x: float32x4_t) -> float32x4_t {
    let lo = vdupq_n_f32(-87.336_55);
    // At `lo` itself (just below ln(f32::MIN_POSITIVE)) e^x is already subnormal: 0 as well.
    let underflow = vcleq_f32(x, lo);
    // Lanes that underflow compute e^0 and are zeroed at the end, so no lane rounds to a
    // subnormal (as in the AVX2 `exp8`, where that costs a microcode assist).
    let x = vminq_f32(
        vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(x), underflow)),
        vdupq_n_f32(88.376_26),
    );
    let n = vrndnq_f32(vmulq_n_f32(x, core::f32::consts::LOG2_E));
    let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
    let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
    let mut y = vdupq_n_f32(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        y = vfmaq_f32(vdupq_n_f32(c), y, r);
    }
    let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), y, vmulq_f32(r, r));
    let pow2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(
        vcvtq_s32_f32(n),
        vdupq_n_s32(127),
    )));
    let e = vmulq_f32(y, pow2);
    vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(e), underflow))
}

/// NEON [`crate::scalar::softmax_unnorm`] (the maximum is exact; `exp` and the sum within a
/// tolerance).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_softmax_unnorm(x: &mut [f32]) -> (f32, f32) {
    let n = x.len();
    if n == 0 {
        return (f32::NEG_INFINITY, 0.0);
    }
    let p = x.as_mut_ptr();
    let mut mv = vdupq_n_f32(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: `i + 4 <= n`.
        mv = vmaxq_f32(mv, unsafe { vld1q_f32(p.add(i)) });
        i += 4;
    }
    let max = x[i..].iter().fold(vmaxvq_f32(mv), |m, &v| m.max(v));
    let m4 = vdupq_n_f32(max);
    // Four vectors per pass: four independent `exp` chains (each about 20 dependent operations),
    // which the in-order A53 interleaves only when the source does and which the out-of-order
    // cores' schedulers otherwise fill with one chain's waiting instructions.
    let mut s4 = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (j, s) in s4.iter_mut().enumerate() {
            // SAFETY: `i + 16 <= n`.
            unsafe {
                let e = exp4(vsubq_f32(vld1q_f32(p.add(i + 4 * j)), m4));
                vst1q_f32(p.add(i + 4 * j), e);
                *s = vaddq_f32(*s, e);
            }
        }
        i += 16;
    }
    let mut sv = vaddq_f32(vaddq_f32(s4[0], s4[1]), vaddq_f32(s4[2], s4[3]));
    while i + 4 <= n {
        // SAFETY: `i + 4 <= n`.
        unsafe {
            let e = exp4(vsubq_f32(vld1q_f32(p.add(i)), m4));
            vst1q_f32(p.add(i), e);
            sv = vaddq_f32(sv, e);
        }
        i += 4;
    }
    if i < n {
        // The tail, padded with -inf (whose exp is 0).
        let mut t = [f32::NEG_INFINITY; 4];
        t[..n - i].copy_from_slice(&x[i..]);
        // SAFETY: `t` holds 4 values.
        unsafe {
            let e = exp4(vsubq_f32(vld1q_f32(t.as_ptr()), m4));
            vst1q_f32(t.as_mut_ptr(), e);
            sv = vaddq_f32(sv, e);
        }
        x[i..].copy_from_slice(&t[..n - i]);
    }
    (max, vaddvq_f32(sv))
}

/// `out[h * hd + c]` for `H` heads and `8 * V` dimensions starting at the value column `v` and
/// output column `out`: the weighted sum over all `n` positions.
///
/// # Safety
///
/// `w` holds `H` rows of `n` weights; `v` points into `n` value rows of `hd` values with `8 * V`
/// readable from the column it points at; `out` rows `h < H` have `8 * V` writable values from
/// the column it points at; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn values_tile<const E: usize, const H: usize, const V: usize>(
    w: *const f32,
    n: usize,
    v: *const u8,
    hd: usize,
    out: *mut f32,
) {
    let mut acc = [[(vdupq_n_f32(0.0), vdupq_n_f32(0.0)); V]; H];
    for t in 0..n {
        let mut vv = [(vdupq_n_f32(0.0), vdupq_n_f32(0.0)); V];
        for (c, x) in vv.iter_mut().enumerate() {
            // SAFETY: row `t < n`, columns `8c..8c + 8` of the tile are readable.
            *x = unsafe { cvt8::<E>(v.add((t * hd + 8 * c) * E)) };
        }
        for (h, acc_h) in acc.iter_mut().enumerate() {
            // SAFETY: weight row `h < H` has `n` values.
            let wt = unsafe { *w.add(h * n + t) };
            for (a, &(x0, x1)) in acc_h.iter_mut().zip(&vv) {
                a.0 = vfmaq_n_f32(a.0, x0, wt);
                a.1 = vfmaq_n_f32(a.1, x1, wt);
            }
        }
    }
    for (h, acc_h) in acc.iter().enumerate() {
        for (c, &(a0, a1)) in acc_h.iter().enumerate() {
            // SAFETY: the caller guarantees the tile of `out` is writable.
            unsafe {
                vst1q_f32(out.add(h * hd + 8 * c), a0);
                vst1q_f32(out.add(h * hd + 8 * c + 4), a1);
            }
        }
    }
}

/// Weighted values of `H` heads over all `hd` dimensions.
///
/// # Safety
///
/// `w` holds `H` rows of `n` weights, `v` `n` rows of `hd` values, `out` `H` rows of `hd`
/// writable values; the CPU must have NEON.
#[target_feature(enable = "neon")]
unsafe fn values_heads<const E: usize, const H: usize>(
    w: *const f32,
    n: usize,
    v: *const u8,
    hd: usize,
    out: *mut f32,
) {
    let mut i = 0;
    while i + 16 <= hd {
        // SAFETY: columns `i..i + 16` are within `hd`.
        unsafe { values_tile::<E, H, 2>(w, n, v.add(i * E), hd, out.add(i)) };
        i += 16;
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
/// The shapes were checked by `check_values` (`vp` holds `n` rows); the CPU must have NEON.
#[target_feature(enable = "neon")]
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

/// NEON [`crate::scalar::attn_values_f16`] (float tolerance).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_attn_values_f16(weights: &[f32], vals: &[u16], hd: usize, out: &mut [f32]) {
    let gn = check_values(weights, vals.len(), hd, out);
    // SAFETY: shapes checked; same features.
    unsafe { values::<2>(weights, vals.as_ptr().cast(), gn, hd, out) }
}

/// NEON [`crate::scalar::attn_values_i8`] (float tolerance).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_attn_values_i8(weights: &[f32], vals: &[i8], hd: usize, out: &mut [f32]) {
    let gn = check_values(weights, vals.len(), hd, out);
    // SAFETY: shapes checked; same features.
    unsafe { values::<1>(weights, vals.as_ptr().cast(), gn, hd, out) }
}
