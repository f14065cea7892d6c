//! AVX2 kernels for x86-64.
