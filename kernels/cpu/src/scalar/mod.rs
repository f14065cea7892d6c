//! The scalar kernels: the specification every SIMD kernel is tested against.
//!
//! Conventions shared by every kernel here and in the ISA modules:
//! - a weight row of type `T` with `cols` elements is `T.bytes_for(cols)` bytes of packed blocks,
//!   little-endian, exactly as GGUF stores them (unaligned: read fields with `from_le_bytes`);
//! - `gemv_<type>(w, acts, out)` computes `out[r] = Σ_c W[r][c] * a[c]` for `r in 0..out.len()`,
//!   where `w` holds `out.len()` consecutive rows and `acts.len()` is `cols`;
//! - `gemv_f32w_<type>(w, x, out)` is the same for float weights and f32 activations;
//! - `dequantize_<type>(src, dst)` writes `dst.len()` floats from `src`.
//!
//! Every kernel panics with a message on inconsistent slice lengths; none allocates.
//! The exact evaluation order of each sum is documented in [`legacy`] and [`float`].

pub mod attn;
pub mod float;
pub mod kquants;
pub mod legacy;
pub mod q4w;
pub mod quantize;
pub mod ternary;

pub use attn::*;
pub use float::*;
pub use legacy::*;

use crate::dispatch::KernelError;
use crate::types::GgmlType;

/// Converts IEEE f16 bits to f32 (exact, subnormals included).
#[inline(always)]
pub fn f16_bits_to_f32(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

/// The little-endian f16 at byte `off` of `b`, as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[off], b[off + 1]]))
}

/// The little-endian u32 at byte `off` of `b`.
#[inline(always)]
pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Dequantizes `dst.len()` values of type `ty` from `src` (which must hold exactly those values).
///
/// Returns [`KernelError::UnsupportedType`] for a type without a scalar dequantizer (today every
/// type outside F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; the K-quant arms are marked below).
/// Panics on inconsistent lengths, like every kernel.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    match ty {
        GgmlType::F32 => dequantize_f32(src, dst),
        GgmlType::F16 => dequantize_f16(src, dst),
        GgmlType::BF16 => dequantize_bf16(src, dst),
        GgmlType::Q4_0 => dequantize_q4_0(src, dst),
        GgmlType::Q4_1 => dequantize_q4_1(src, dst),
        GgmlType::Q5_0 => dequantize_q5_0(src, dst),
        GgmlType::Q5_1 => dequantize_q5_1(src, dst),
        GgmlType::Q8_0 => dequantize_q8_0(src, dst),
        GgmlType::Q4_K => kquants::dequantize_q4_k(src, dst),
        GgmlType::Q5_K => kquants::dequantize_q5_k(src, dst),
        GgmlType::Q6_K => kquants::dequantize_q6_k(src, dst),
        // T2 rows dequantize to their unscaled codes (-1, 0, +1); the row scale is the caller's.
        GgmlType::T2 => ternary::dequantize_t2(src, dst),
        GgmlType::Q4W => q4w::dequantize_q4w(src, dst),
        GgmlType::TQ1_0 => ternary::dequantize_tq1_0(src, dst),
        GgmlType::TQ2_0 => ternary::dequantize_tq2_0(src, dst),
        GgmlType::TQ2W => ternary::dequantize_tq2w(src, dst),
        _ => return Err(KernelError::UnsupportedType(ty)),
    }
    Ok(())
}

/// The reference product used by `--exact`: for each row `r`, dequantize it into
/// `row_scratch[..x.len()]` with [`dequantize_row`], then `out[r] = dot_f32(row, x)`.
///
/// `w` holds `out.len()` rows of `x.len()` values of type `ty`; `row_scratch` needs at least
/// `x.len()` values. Returns [`KernelError::UnsupportedType`] like [`dequantize_row`].
pub fn gemv_exact(
    ty: GgmlType,
    w: &[u8],
    x: &[f32],
    out: &mut [f32],
    row_scratch: &mut [f32],
) -> Result<(), KernelError> {
    // Refuse an unsupported type even when there are no rows.
    dequantize_row(ty, &[], &mut [])?;
    let cols = x.len();
    let row_bytes = ty.bytes_for(cols as u64).ok_or(KernelError::BadShape(
        "gemv_exact: columns are not a whole number of blocks",
    ))? as usize;
    assert!(
        Some(w.len()) == out.len().checked_mul(row_bytes),
        "gemv_exact {ty}: {} rows of {cols} columns need {} bytes, got {}",
        out.len(),
        out.len().saturating_mul(row_bytes),
        w.len()
    );
    assert!(
        row_scratch.len() >= cols,
        "gemv_exact: row_scratch holds {} values, needs {cols}",
        row_scratch.len()
    );
    let row = &mut row_scratch[..cols];
    for (r, o) in out.iter_mut().enumerate() {
        dequantize_row(ty, &w[r * row_bytes..(r + 1) * row_bytes], row)?;
        *o = dot_f32(row, x);
    }
    Ok(())
}
