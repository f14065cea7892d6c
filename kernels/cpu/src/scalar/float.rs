//! Scalar float kernels: F32/F16/BF16 weight rows, and the f32 vector helpers of the forward pass.
//!
//! Specification of every sum here: sequential, index 0 first, one rounding per multiply and one
//! per add (no fused multiply-add). SIMD versions reorder the sums and are checked within a
//! tolerance, except [`axpy_f32`], which has no sum and is reproduced bit for bit.

use crate::scalar::f16_bits_to_f32;

/// Converts bf16 bits to f32 (exact).
#[inline(always)]
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Checks that `src` holds `n` elements of `size` bytes.
fn check_dequant(src: &[u8], n: usize, size: usize, name: &str) {
    assert!(
        Some(src.len()) == n.checked_mul(size),
        "dequantize {name}: {n} values need {} bytes, got {}",
        n.saturating_mul(size),
        src.len()
    );
}

/// Copies little-endian F32 values from `src` into `dst` (`dst.len()` values).
pub fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    check_dequant(src, dst.len(), 4, "F32");
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Converts little-endian F16 values from `src` into `dst` (`dst.len()` values, exact).
pub fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    check_dequant(src, dst.len(), 2, "F16");
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// Converts little-endian BF16 values from `src` into `dst` (`dst.len()` values, exact).
pub fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    check_dequant(src, dst.len(), 2, "BF16");
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// Checks a float-weight gemv shape: `out.len()` rows of `x.len()` elements of `size` bytes.
pub(crate) fn check_gemv_f(w: &[u8], x: &[f32], rows: usize, size: usize, name: &str) -> usize {
    let row_bytes = x.len().saturating_mul(size);
    assert!(
        Some(w.len()) == rows.checked_mul(row_bytes),
        "gemv {name}: {rows} rows of {} columns need {} weight bytes, got {}",
        x.len(),
        rows.saturating_mul(row_bytes),
        w.len()
    );
    row_bytes
}

/// The sequential row loop shared by the float-weight gemvs.
#[inline(always)]
fn gemv_f(
    w: &[u8],
    x: &[f32],
    out: &mut [f32],
    size: usize,
    name: &str,
    elem: impl Fn(&[u8]) -> f32,
) {
    let row_bytes = check_gemv_f(w, x, out.len(), size, name);
    if row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        let mut acc = 0.0f32;
        for (b, &xv) in row.chunks_exact(size).zip(x) {
            acc += elem(b) * xv;
        }
        *o = acc;
    }
}

/// `out[r] = Σ W[r][c] x[c]` for F32 weights (`out.len()` rows of `x.len()` columns).
pub fn gemv_f32w_f32(w: &[u8], x: &[f32], out: &mut [f32]) {
    gemv_f(w, x, out, 4, "F32", |b| {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    });
}

/// `out[r] = Σ W[r][c] x[c]` for F16 weights.
pub fn gemv_f32w_f16(w: &[u8], x: &[f32], out: &mut [f32]) {
    gemv_f(w, x, out, 2, "F16", |b| {
        f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]))
    });
}

/// `out[r] = Σ W[r][c] x[c]` for BF16 weights.
pub fn gemv_f32w_bf16(w: &[u8], x: &[f32], out: &mut [f32]) {
    gemv_f(w, x, out, 2, "BF16", |b| {
        bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]))
    });
}

/// `Σ a[i] b[i]`, sequentially. Panics if the lengths differ.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: lengths differ");
    let mut acc = 0.0f32;
    for (&x, &y) in a.iter().zip(b) {
        acc += x * y;
    }
    acc
}

/// `y[i] = y[i] + a * x[i]` (multiply rounded, then add rounded). Panics if the lengths differ.
pub fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy_f32: lengths differ");
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// SwiGLU in place: `g[i] = silu(g[i]) * u[i]`, `silu(x) = x / (1 + e^-x)` with `libm::expf`.
/// Panics if the lengths differ.
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "swiglu: lengths differ");
    for (g, &u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + libm::expf(-*g)) * u;
    }
}

/// RMS normalization: `out[i] = (x[i] * s) * weight[i]` with `s = 1 / sqrt(Σ x² / n + eps)`.
/// Panics if the lengths differ.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == weight.len() && x.len() == out.len(),
        "rmsnorm: lengths differ ({}, {}, {})",
        x.len(),
        weight.len(),
        out.len()
    );
    if x.is_empty() {
        return;
    }
    let ss = dot_f32(x, x);
    let s = 1.0 / libm::sqrtf(ss / x.len() as f32 + eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * s) * g;
    }
}

/// Softmax in place: `x[i] = exp(x[i] - max) / Σ exp(x[j] - max)`. Does nothing on an empty slice.
pub fn softmax_inplace(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}
