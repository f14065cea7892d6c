//! NEON float kernels: F32/BF16 weight rows times f32 activations, `dot_f32`, `axpy_f32`.
//!
//! Sums use four 4-lane FMA accumulators (16 values per step), then a sequential scalar tail;
//! they differ from the sequential scalar spec only by rounding (tested within a named
//! tolerance). `neon_axpy_f32` multiplies and adds separately, bit-exact. F16 rows stay scalar
//! until a kernel using the `fp16` conversions lands.

use core::arch::aarch64::*;

use crate::scalar::bf16_bits_to_f32;
use crate::scalar::float::check_gemv_f;

const F32: u8 = 0;
const BF16: u8 = 2;

/// Four weights of kind `K` starting at element `i` of the row at `p`, as f32.
///
/// # Safety
///
/// Elements `i..i + 4` of the row must be readable; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load4<const K: u8>(p: *const u8, i: usize) -> float32x4_t {
    // SAFETY: the caller guarantees the 4 elements are readable; NEON loads need no alignment
    // beyond the element's, and `vld1_u8`/`vld1q_u8` are byte loads.
    unsafe {
        match K {
            F32 => vreinterpretq_f32_u8(vld1q_u8(p.add(i * 4))),
            _ => {
                let h = vreinterpret_u16_u8(vld1_u8(p.add(i * 2)));
                vreinterpretq_f32_u32(vshll_n_u16::<16>(h))
            }
        }
    }
}

/// One weight of kind `K` at element `i` of the row at `p`.
///
/// # Safety
///
/// Element `i` of the row must be readable.
#[inline]
unsafe fn load1<const K: u8>(p: *const u8, i: usize) -> f32 {
    // SAFETY: the caller guarantees the element is readable; reads are unaligned.
    unsafe {
        match K {
            F32 => f32::from_bits(u32::from_le(p.add(i * 4).cast::<u32>().read_unaligned())),
            _ => bf16_bits_to_f32(u16::from_le(p.add(i * 2).cast::<u16>().read_unaligned())),
        }
    }
}

/// `Σ W[i] x[i]` for the row of kind `K` at `p` with `x.len()` elements.
///
/// # Safety
///
/// The row must hold `x.len()` readable elements; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn row_dot<const K: u8>(p: *const u8, x: &[f32]) -> f32 {
    let n = x.len();
    let xp = x.as_ptr();
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: `i + 16 <= n`, so both rows are in bounds.
            let (wv, xv) = unsafe { (load4::<K>(p, i + 4 * k), vld1q_f32(xp.add(i + 4 * k))) };
            *a = vfmaq_f32(*a, wv, xv);
        }
        i += 16;
    }
    let s = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    let mut total = vaddvq_f32(s);
    while i < n {
        // SAFETY: `i < n`.
        total += unsafe { load1::<K>(p, i) } * x[i];
        i += 1;
    }
    total
}

/// The float-weight gemv driver: one row per pass.
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
unsafe fn gemv<const K: u8>(w: &[u8], x: &[f32], out: &mut [f32], name: &str) {
    let size = if K == F32 { 4 } else { 2 };
    let row_bytes = check_gemv_f(w, x, out.len(), size, name);
    for (r, o) in out.iter_mut().enumerate() {
        // SAFETY: `check_gemv_f` proved `w` holds `out.len()` rows of `row_bytes` bytes.
        *o = unsafe { row_dot::<K>(w.as_ptr().add(r * row_bytes), x) };
    }
}

/// NEON [`crate::scalar::gemv_f32w_f32`] (float tolerance).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemv_f32w_f32(w: &[u8], x: &[f32], out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe { gemv::<F32>(w, x, out, "F32") }
}

/// NEON [`crate::scalar::gemv_f32w_bf16`] (float tolerance).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemv_f32w_bf16(w: &[u8], x: &[f32], out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe { gemv::<BF16>(w, x, out, "BF16") }
}

/// NEON [`crate::scalar::dot_f32`] (float tolerance).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: lengths differ");
    // SAFETY: `a` holds `b.len()` f32 values, read as raw little-endian bytes.
    unsafe { row_dot::<F32>(a.as_ptr().cast(), b) }
}

/// NEON [`crate::scalar::axpy_f32`]: `y += a * x`, bit-exact (separate multiply and add).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy_f32: lengths differ");
    let n = x.len();
    let av = vdupq_n_f32(a);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: `i + 4 <= n` for both slices.
        unsafe {
            let yp = y.as_mut_ptr().add(i);
            vst1q_f32(
                yp,
                vaddq_f32(vld1q_f32(yp), vmulq_f32(av, vld1q_f32(x.as_ptr().add(i)))),
            );
        }
        i += 4;
    }
    for (y, &x) in y[i..].iter_mut().zip(&x[i..]) {
        *y += a * x;
    }
}
