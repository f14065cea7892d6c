//! AVX2 kernels for x86-64 (AVX2 + FMA + F16C).
//!
//! Every kernel is a `#[target_feature(enable = "avx2,fma,f16c")] unsafe fn` whose only safety
//! condition is that the CPU has those features; the dispatch table calls them after checking.
//! They check slice shapes themselves (panicking like the scalar kernels), so any slices are sound.
//! [`vnni`] and [`vnni_gemm`] hold the kernels of the `avx-vnni` tier, which also need AVX-VNNI, and [`avx512`]
//! those of the `avx512` tier, which also need AVX-512 F, BW, VL and VNNI.

pub mod attn;
pub mod avx512;
pub mod float;
pub mod kquants;
pub mod legacy;
pub mod ternary;
pub mod vnni;
pub mod vnni_gemm;

pub use attn::*;
pub use float::*;
pub use legacy::*;
