//! Activations quantized to int8 in blocks of [`QK`] values, the right-hand side of every
//! quantized matrix-vector product.
//!
//! Block `b` holds `qs[b*QK .. (b+1)*QK]`, a scale `d[b]` (so that `x ≈ d * q`) and the integer sum
//! `sums[b] = Σ qs` of the block, which the offset terms of Q4_1/Q5_1/Q4_K/Q5_K need.
//! The quantization rule (the specification, see `scalar::quantize_acts`):
//! `amax = max |x|` over the block, `d = amax / 127`, `q = round_ties_even(x * (1/d))`
//! (0 when `amax == 0`), so SIMD code that rounds to nearest-even reproduces it exactly.

/// Values per activation block.
pub const QK: usize = 32;

/// Read-only view of quantized activations of length `qs.len()` (a multiple of [`QK`]).
#[derive(Clone, Copy, Debug)]
pub struct ActsQ8<'a> {
    /// Quantized values, `n` of them.
    pub qs: &'a [i8],
    /// One scale per block, `n / QK` of them.
    pub d: &'a [f32],
    /// One integer sum per block, `n / QK` of them.
    pub sums: &'a [i32],
}

/// Mutable buffers that a quantizer fills.
#[derive(Debug)]
pub struct ActsQ8Mut<'a> {
    /// Quantized values, `n` of them.
    pub qs: &'a mut [i8],
    /// One scale per block.
    pub d: &'a mut [f32],
    /// One integer sum per block.
    pub sums: &'a mut [i32],
}

impl<'a> ActsQ8<'a> {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.qs.len()
    }
    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
    }
}

impl<'a> ActsQ8Mut<'a> {
    /// A read-only view of the same buffers.
    pub fn as_ref(&self) -> ActsQ8<'_> {
        ActsQ8 {
            qs: self.qs,
            d: self.d,
            sums: self.sums,
        }
    }
}
