//! NEON int8 kernels for the legacy block types and the activation quantizer, bit-exact with
//! [`crate::scalar::legacy`].
//!
//! gemv: one row at a time. Per block the signed weights (`q - 8`, `q - 16`, or the unsigned /
//! Q8_0 values as they are) are multiplied with the activations by `smull`/`smlal` (pairs of
//! i8·i8 summed in i16: at most 2·128·127, no overflow), widened by `saddlp` into i32 and
//! reduced to the exact `isum0` (values 0..16, scale group `2b`) and `isum1` (values 16..32,
//! group `2b + 1`); the block term and the running sum are computed in scalar f32 with the
//! specification's operations and order.

use core::arch::aarch64::*;

use crate::acts::{ActsQ8, ActsQ8Mut, QK, QS};
use crate::scalar::f16_bits_to_f32;
use crate::scalar::legacy::{check_acts, check_gemv};

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

const fn block_bytes(k: u8) -> usize {
    match k {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    }
}

const fn type_name(k: u8) -> &'static str {
    match k {
        Q4_0 => "Q4_0",
        Q4_1 => "Q4_1",
        Q5_0 => "Q5_0",
        Q5_1 => "Q5_1",
        _ => "Q8_0",
    }
}

/// `0x10` in lane `j` where bit `j` of `bits` (16 bits) is set, else 0.
#[inline]
#[target_feature(enable = "neon")]
fn high_bits16(bits: u16) -> uint8x16_t {
    let b = bits.to_le_bytes();
    let v = vcombine_u8(vdup_n_u8(b[0]), vdup_n_u8(b[1]));
    const MASK: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    // SAFETY: MASK holds 16 bytes.
    let m = unsafe { vld1q_u8(MASK.as_ptr()) };
    vandq_u8(vtstq_u8(v, m), vdupq_n_u8(0x10))
}

/// The block's 32 weights as i8, elements 0..16 and 16..32.
///
/// # Safety
///
/// `blk` must be valid for reading one block of type `K`; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block_weights<const K: u8>(blk: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: every offset below stays inside the block the caller guarantees readable.
    unsafe {
        let qs_off = match K {
            Q4_0 => 2,
            Q4_1 => 4,
            Q5_0 => 6,
            Q5_1 => 8,
            _ => 2,
        };
        if K == Q8_0 {
            return (vld1q_s8(blk.add(2).cast()), vld1q_s8(blk.add(18).cast()));
        }
        let v = vld1q_u8(blk.add(qs_off));
        let mut lo = vandq_u8(v, vdupq_n_u8(0x0F));
        let mut hi = vshrq_n_u8::<4>(v);
        if K == Q5_0 || K == Q5_1 {
            let qh = u32::from_le(blk.add(qs_off - 4).cast::<u32>().read_unaligned());
            lo = vorrq_u8(lo, high_bits16(qh as u16));
            hi = vorrq_u8(hi, high_bits16((qh >> 16) as u16));
        }
        let (lo, hi) = (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi));
        match K {
            Q4_0 => (vsubq_s8(lo, vdupq_n_s8(8)), vsubq_s8(hi, vdupq_n_s8(8))),
            Q5_0 => (vsubq_s8(lo, vdupq_n_s8(16)), vsubq_s8(hi, vdupq_n_s8(16))),
            _ => (lo, hi),
        }
    }
}

/// Exact `Σ w·a` over 16 values.
#[inline]
#[target_feature(enable = "neon")]
fn idot16(w: int8x16_t, a: int8x16_t) -> i32 {
    let p = vmlal_s8(
        vmull_s8(vget_low_s8(w), vget_low_s8(a)),
        vget_high_s8(w),
        vget_high_s8(a),
    );
    vaddvq_s32(vpaddlq_s16(p))
}

/// The shared gemv driver: one row per pass (see the module docs).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
unsafe fn gemv<const K: u8>(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let bb = block_bytes(K);
    let (nb, row_bytes) = check_gemv(w, acts, out.len(), bb, type_name(K));
    if row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        let mut acc = 0.0f32;
        for b in 0..nb {
            let blk = &row[b * bb..(b + 1) * bb];
            // SAFETY: `blk` is one whole block; `acts.qs` holds `nb * QK` values
            // (`check_gemv`), so block `b` of it is readable.
            let (i0, i1) = unsafe {
                let (w0, w1) = block_weights::<K>(blk.as_ptr());
                let ap = acts.qs.as_ptr().add(b * QK);
                (idot16(w0, vld1q_s8(ap)), idot16(w1, vld1q_s8(ap.add(16))))
            };
            let (da0, da1) = (acts.d[2 * b], acts.d[2 * b + 1]);
            let dw = f16_bits_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
            let t = (dw * da0) * i0 as f32 + (dw * da1) * i1 as f32;
            let t = if K == Q4_1 || K == Q5_1 {
                let mw = f16_bits_to_f32(u16::from_le_bytes([blk[2], blk[3]]));
                let (sa0, sa1) = (acts.sums[2 * b], acts.sums[2 * b + 1]);
                t + mw * (da0 * sa0 as f32 + da1 * sa1 as f32)
            } else {
                t
            };
            acc += t;
        }
        *o = acc;
    }
}

/// NEON [`crate::scalar::gemv_q4_0`], bit-exact.
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemv_q4_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe { gemv::<Q4_0>(w, acts, out) }
}

/// NEON [`crate::scalar::gemv_q4_1`], bit-exact.
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemv_q4_1(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe { gemv::<Q4_1>(w, acts, out) }
}

/// NEON [`crate::scalar::gemv_q5_0`], bit-exact.
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemv_q5_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe { gemv::<Q5_0>(w, acts, out) }
}

/// NEON [`crate::scalar::gemv_q5_1`], bit-exact.
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemv_q5_1(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe { gemv::<Q5_1>(w, acts, out) }
}

/// NEON [`crate::scalar::gemv_q8_0`], bit-exact.
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemv_q8_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe { gemv::<Q8_0>(w, acts, out) }
}

/// NEON [`crate::scalar::quantize_acts`], bit-exact: the same `amax / 127` per group of
/// [`QS`], the same multiply by the inverse, and `fcvtns`, which rounds to nearest even.
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_quantize_acts(x: &[f32], out: &mut ActsQ8Mut<'_>) {
    check_acts(x, out);
    for g in 0..x.len() / QS {
        // SAFETY: group `g` is inside `x` (`check_acts`).
        let v: [float32x4_t; 4] =
            core::array::from_fn(|i| unsafe { vld1q_f32(x.as_ptr().add(g * QS + 4 * i)) });
        let m01 = vmaxq_f32(vabsq_f32(v[0]), vabsq_f32(v[1]));
        let m23 = vmaxq_f32(vabsq_f32(v[2]), vabsq_f32(v[3]));
        let amax = vmaxvq_f32(vmaxq_f32(m01, m23));
        let d = amax / 127.0;
        let qg = &mut out.qs[g * QS..(g + 1) * QS];
        if d < f32::MIN_POSITIVE {
            qg.fill(0);
            out.d[g] = 0.0;
            out.sums[g] = 0;
            continue;
        }
        let id = vdupq_n_f32(1.0 / d);
        let q: [int32x4_t; 4] = core::array::from_fn(|i| vcvtnq_s32_f32(vmulq_f32(v[i], id)));
        let s = vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3]));
        let q16a = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
        let q16b = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
        let q8 = vcombine_s8(vqmovn_s16(q16a), vqmovn_s16(q16b));
        // SAFETY: `qg` holds 16 bytes.
        unsafe { vst1q_s8(qg.as_mut_ptr(), q8) };
        out.d[g] = d;
        out.sums[g] = vaddvq_s32(s);
    }
}
