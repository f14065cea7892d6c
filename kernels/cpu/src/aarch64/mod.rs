//! NEON kernels for aarch64 (ARMv8.0 Advanced SIMD), same file list as `x86`.
//!
//! Every kernel is a `#[target_feature(enable = "neon")] unsafe fn` whose only safety condition
//! is that the CPU has NEON; the dispatch table calls them after checking. They check slice
//! shapes themselves. The `neon-dotprod` tier adds `sdot` (ARMv8.2 dot product, emitted with
//! `asm!`) kernels for the ternary types, Q4W and the K-quants, and uses the NEON ones elsewhere.

pub mod attn;
pub mod float;
pub mod kquants;
pub mod legacy;
pub mod q4w;
pub mod ternary;

pub use attn::*;
pub use float::*;
pub use legacy::*;
