//! CPU kernels for EdgeLLM: the scalar specification, AVX2 and NEON versions, and the run-time
//! dispatch table that picks one set for the CPU the program runs on.
//!
//! Boundary: this crate is `no_std`, knows nothing of files, threads or the OS, and never allocates.
//! Every function works on caller-provided slices.
//!
//! Invariant: the functions in [`scalar`] are the specification. Every SIMD kernel is tested against
//! them: bit-exact for integer paths, within a named tolerance for float paths.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod acts;
pub mod dispatch;
// Shared by the SIMD kernels below.
#[cfg(any(
    all(target_arch = "aarch64", target_feature = "neon"),
    all(target_arch = "x86_64", target_feature = "sse2")
))]
mod rows;
pub mod scalar;
pub mod types;

// The NEON kernels need Advanced SIMD, which soft-float targets lack.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub mod aarch64;
// The x86 kernels need the SSE2 float ABI, which soft-float targets (x86_64-unknown-none) lack.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub mod x86;

pub use acts::{ActsQ8, ActsQ8Mut, QK, QS};
pub use dispatch::{
    relaid_len, relayout, relayout_into, CpuFeature, CpuFeatures, KernelError, Kernels, Tier,
};
pub use types::GgmlType;
