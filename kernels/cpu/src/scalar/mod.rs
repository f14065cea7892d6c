//! The scalar kernels: the specification every SIMD kernel is tested against.
//!
//! Conventions shared by every kernel here and in the ISA modules:
//! - a weight row of type `T` with `cols` elements is `T.bytes_for(cols)` bytes of packed blocks,
//!   little-endian, exactly as GGUF stores them (unaligned: read fields with `from_le_bytes`);
//! - `gemv_<type>(w, acts, out)` computes `out[r] = Σ_c W[r][c] * a[c]` for `r in 0..out.len()`,
//!   where `w` holds `out.len()` consecutive rows and `acts.len()` is `cols`;
//! - `dequantize_<type>(src, dst)` writes `dst.len()` floats from `src`.
pub mod kquants;
