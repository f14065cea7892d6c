//! NEON kernels for aarch64.
