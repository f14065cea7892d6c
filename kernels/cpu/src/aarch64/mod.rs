//! NEON kernels for aarch64 (ARMv8.0 Advanced SIMD), same file list as `x86`.
//!
//! Every kernel is a `#[target_feature(enable = "neon")] unsafe fn` whose only safety condition
//! is that the CPU has NEON; the dispatch table calls them after checking. They check slice
//! shapes themselves. The `neon-dotprod` tier adds `sdot` (ARMv8.2 dot product, emitted with
//! `asm!`) kernels for the ternary types, Q4W, the K-quants and the legacy block types, and uses
//! the NEON ones elsewhere.

use core::arch::aarch64::{float32x4_t, uint16x4_t, vcreate_u16, vgetq_lane_f32};
use core::arch::asm;

pub(crate) use crate::rows::row_ptrs;

/// Four f16 values (as bits) widened to f32 by `fcvtl`, a base Advanced SIMD instruction whose
/// intrinsic takes the unstable `float16x4_t`, so it is emitted with `asm!`. Exact for every
/// value (a NaN comes out quiet).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let f: float32x4_t;
    // SAFETY: `fcvtl` only reads and writes the named registers.
    unsafe {
        asm!(
            "fcvtl {f:v}.4s, {h:v}.4h",
            h = in(vreg) h,
            f = out(vreg) f,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    f
}

/// One f16 value (as bits) widened to f32 by [`f16x4_to_f32`]: exact, like the specification's
/// software conversion, in two instructions.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    vgetq_lane_f32::<0>(f16x4_to_f32(vcreate_u16(u64::from(h))))
}

pub mod attn;
pub mod attn_q16;
pub mod float;
pub mod kquants;
pub mod legacy;
pub mod q4w;
pub mod ternary;

pub use attn::*;
pub use attn_q16::*;
pub use float::*;
pub use legacy::*;
