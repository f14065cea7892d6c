//! NEON float kernels: F32/F16/BF16 weight rows times f32 activations, `dot_f32`, `axpy_f32`.
//!
//! Sums use four 4-lane FMA accumulators (16 values per step), then a sequential scalar tail;
//! they differ from the sequential scalar spec only by rounding (tested within a named
//! tolerance). `neon_axpy_f32` multiplies and adds separately, bit-exact. F16 weights are widened
//! by `fcvtl`, a base Advanced SIMD instruction whose intrinsic takes the unstable `float16x4_t`,
//! so it is emitted with `asm!` (exact, as every f16 is an f32).

use core::arch::aarch64::*;

use crate::scalar::float::check_gemv_f;
use crate::scalar::{bf16_bits_to_f32, f16_bits_to_f32};

const F32: u8 = 0;
const F16: u8 = 1;
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
            F16 => super::f16x4_to_f32(vreinterpret_u16_u8(vld1_u8(p.add(i * 2)))),
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
            F16 => f16_bits_to_f32(u16::from_le(p.add(i * 2).cast::<u16>().read_unaligned())),
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

/// NEON [`crate::scalar::gemv_f32w_f16`] (float tolerance).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemv_f32w_f16(w: &[u8], x: &[f32], out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe { gemv::<F16>(w, x, out, "F16") }
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

/// The lanes of `x` where [`expf4_core`] is exact: all ones where `2^-14 < |x| < 87.33655`.
#[inline]
#[target_feature(enable = "neon")]
fn expf4_inside(x: float32x4_t) -> uint32x4_t {
    let hx = vandq_u32(vreinterpretq_u32_f32(x), vdupq_n_u32(0x7fff_ffff));
    vandq_u32(
        vcgtq_u32(hx, vdupq_n_u32(0x3900_0000)),
        vcltq_u32(hx, vdupq_n_u32(0x42ae_ac50)),
    )
}

/// `e^x` in four lanes, bit for bit `libm::expf` (see the AVX2 `expf8_libm`), for lanes that
/// [`expf4_inside`] accepts (the others get junk).
#[inline]
#[target_feature(enable = "neon")]
fn expf4_core(x: float32x4_t) -> float32x4_t {
    let bits = vreinterpretq_u32_f32(x);
    let hx = vandq_u32(bits, vdupq_n_u32(0x7fff_ffff));
    let neg = vreinterpretq_s32_u32(vcgeq_u32(bits, vdupq_n_u32(0x8000_0000)));
    let half = vbslq_f32(
        vreinterpretq_u32_s32(neg),
        vdupq_n_f32(-0.5),
        vdupq_n_f32(0.5),
    );
    let k_big = vcvtq_s32_f32(vaddq_f32(
        vmulq_f32(vdupq_n_f32(f32::from_bits(0x3fb8_aa3b)), x),
        half,
    ));
    let k_mid = vorrq_s32(neg, vdupq_n_s32(1));
    let big = vcgtq_u32(hx, vdupq_n_u32(0x3f85_1592));
    let mid = vreinterpretq_s32_u32(vcgtq_u32(hx, vdupq_n_u32(0x3eb1_7218)));
    let k = vandq_s32(mid, vbslq_s32(big, k_big, k_mid));
    let kf = vcvtq_f32_s32(k);
    let hi = vsubq_f32(x, vmulq_f32(kf, vdupq_n_f32(6.931_457_5e-1)));
    let lo = vmulq_f32(kf, vdupq_n_f32(1.428_606_8e-6));
    let r = vsubq_f32(hi, lo);
    let rr = vmulq_f32(r, r);
    let p = vaddq_f32(
        vdupq_n_f32(1.666_662_5e-1),
        vmulq_f32(rr, vdupq_n_f32(-2.766_733_3e-3)),
    );
    let c = vsubq_f32(r, vmulq_f32(rr, p));
    let q = vdivq_f32(vmulq_f32(r, c), vsubq_f32(vdupq_n_f32(2.0), c));
    let y = vaddq_f32(vdupq_n_f32(1.0), vaddq_f32(vsubq_f32(q, lo), hi));
    let pow2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(k, vdupq_n_s32(127))));
    vmulq_f32(y, pow2)
}

/// Values per pass of [`neon_swiglu`]: four vectors.
const SWIGLU_PASS: usize = 16;

/// `g[i..i + 4]` by the specification's steps, with `e = e^-g` of those four values.
///
/// # Safety
///
/// `i + 4` must be at most the length of both slices; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn swiglu4(g: &mut [f32], u: &[f32], i: usize, e: float32x4_t) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let gp = g.as_mut_ptr().add(i);
        let s = vdivq_f32(vld1q_f32(gp), vaddq_f32(vdupq_n_f32(1.0), e));
        vst1q_f32(gp, vmulq_f32(s, vld1q_f32(u.as_ptr().add(i))));
    }
}

/// NEON [`crate::scalar::swiglu`], bit-exact: `e^-g` by [`expf4_core`], then the
/// specification's division and product. Sixteen values per pass when every `|g|` lies in the
/// core's range: four independent chains of about 30 dependent operations and two divisions,
/// which the in-order A53 interleaves only when the source does and which the out-of-order
/// cores' schedulers otherwise fill with one chain's waiting instructions (as in the softmax).
/// Four at a time otherwise, `libm::expf` for four values that hold one outside.
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_swiglu(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "swiglu: lengths differ");
    let n = g.len();
    // `-g[i..i + 4]` and whether every lane is in range.
    let neg4 = |g: &[f32], i: usize| {
        // SAFETY: the callers' `i + 4 <= n`.
        let x = unsafe { vnegq_f32(vld1q_f32(g.as_ptr().add(i))) };
        (x, expf4_inside(x))
    };
    // Values `i .. i + 4` alone (`i + 4 <= n`).
    let one = |g: &mut [f32], i: usize| {
        let (x, inside) = neg4(g, i);
        if vminvq_u32(inside) != 0 {
            // SAFETY: `i + 4 <= n`.
            unsafe { swiglu4(g, u, i, expf4_core(x)) };
        } else {
            crate::scalar::swiglu(&mut g[i..i + 4], &u[i..i + 4]);
        }
    };
    let mut i = 0;
    while i + SWIGLU_PASS <= n {
        let x: [(float32x4_t, uint32x4_t); 4] = core::array::from_fn(|j| neg4(g, i + 4 * j));
        let inside = x.iter().fold(vdupq_n_u32(!0), |m, v| vandq_u32(m, v.1));
        if vminvq_u32(inside) != 0 {
            let e = x.map(|v| expf4_core(v.0));
            for (j, &e) in e.iter().enumerate() {
                // SAFETY: `i + 4 * j + 4 <= i + 16 <= n`.
                unsafe { swiglu4(g, u, i + 4 * j, e) };
            }
        } else {
            for j in 0..4 {
                one(g, i + 4 * j);
            }
        }
        i += SWIGLU_PASS;
    }
    while i + 4 <= n {
        one(g, i);
        i += 4;
    }
    crate::scalar::swiglu(&mut g[i..], &u[i..]);
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
