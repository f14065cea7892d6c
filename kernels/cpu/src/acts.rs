//! Activations quantized to int8 with one scale per group of [`QS`] values, the right-hand side of
//! every quantized matrix-vector product.
//!
//! Lengths are multiples of [`QK`] (32, the block length of the weight types); each 32-value block
//! holds two scale groups of [`QS`] = 16 values. Group `g` holds `qs[g*QS .. (g+1)*QS]`, a scale
//! `d[g]` (so that `x ≈ d * q`) and the integer sum `sums[g] = Σ qs` of the group, which the offset
//! terms of Q4_1/Q5_1/Q4_K/Q5_K need. Block `b` of 32 values is groups `2b` (values `0..16` of the
//! block) and `2b + 1` (values `16..32`).
//!
//! The quantization rule (the specification, see `scalar::quantize_acts`):
//! `amax = max |x|` over the group, `d = amax / 127`, `q = round_ties_even(x * (1/d))`
//! (a group whose `d` is zero or subnormal, below `f32::MIN_POSITIVE`, is all zeros with `d = 0`,
//! so `1/d` is always finite), so SIMD code that rounds to nearest-even reproduces it exactly.
//! Sixteen values per scale keep an outlier from costing the precision of the whole 32-block:
//! it only coarsens the scale of its own half.
//!
//! Invariants the gemv kernels rely on (the quantizer guarantees them; hand-made values must
//! keep them): every `qs` lies in `-127..=127` (never -128), and `sums[g]` is exactly the sum of
//! group `g`'s `qs`. Broken invariants give wrong numbers, never undefined behaviour.

/// Values per block: activation lengths are multiples of this (the weight block length).
pub const QK: usize = 32;

/// Values per activation scale group: `d` and `sums` hold one entry per `QS` values.
pub const QS: usize = 16;

/// Read-only view of quantized activations of length `qs.len()` (a multiple of [`QK`]).
#[derive(Clone, Copy, Debug)]
pub struct ActsQ8<'a> {
    /// Quantized values, `n` of them.
    pub qs: &'a [i8],
    /// One scale per group of [`QS`] values, `n / QS` of them.
    pub d: &'a [f32],
    /// One integer sum per group of [`QS`] values, `n / QS` of them.
    pub sums: &'a [i32],
}

/// Mutable buffers that a quantizer fills: `qs` holds `n` values (a multiple of [`QK`]),
/// `d` and `sums` hold `n / QS` entries each (one per group of [`QS`] values).
#[derive(Debug)]
pub struct ActsQ8Mut<'a> {
    /// Quantized values, `n` of them.
    pub qs: &'a mut [i8],
    /// One scale per group of [`QS`] values, `n / QS` of them.
    pub d: &'a mut [f32],
    /// One integer sum per group of [`QS`] values, `n / QS` of them.
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
