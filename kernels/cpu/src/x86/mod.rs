//! AVX2 kernels for x86-64.
pub mod kquants;
