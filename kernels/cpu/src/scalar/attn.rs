//! Scalar attention kernels over an f16 or int8 KV cache: the specification of the AVX2 and NEON
//! versions.
//!
//! One call covers one KV head of one layer (its `g` query heads, a grouped-query "group") over a
//! range of `n` cached positions, so the forward pass makes a handful of calls per KV head instead
//! of one per (head, position). Layouts, all row-major and contiguous:
//! - `q`: the group's queries, `[g, hd]` f32;
//! - `keys`, `values`: the cached rows of one KV head, `[n, hd]` f16 bits (IEEE binary16) or int8
//!   (an int8 cache keeps one scale per row, applied by the caller: scores times the key scale,
//!   weights times the value scale, see [`quantize_row_i8`]);
//! - `scores` / `weights`: `[g, n]` f32, one row per query head; against an int8 cache the
//!   queries are int16 rows with one scale each ([`quantize_row_i16`]) and the scores exact i32
//!   sums ([`attn_scores_q16`]), which the caller scales;
//! - `out`: `[g, hd]` f32.
//!
//! Specification of every sum: sequential, index 0 first, one rounding per multiply and one per
//! add (no fused multiply-add). SIMD versions reorder the sums and use a polynomial `exp`; they are
//! checked within named tolerances.

use crate::scalar::f16_bits_to_f32;

/// Checks the shapes shared by the attention kernels and returns `(g, n)`: query heads and
/// positions.
fn shape(q_len: usize, kv_len: usize, hd: usize, name: &str) -> (usize, usize) {
    assert!(hd > 0, "{name}: head dimension is 0");
    assert!(
        q_len.is_multiple_of(hd) && kv_len.is_multiple_of(hd),
        "{name}: {q_len} query values and {kv_len} cached values are not whole rows of {hd}"
    );
    (q_len / hd, kv_len / hd)
}

/// Checks the shapes of [`attn_scores_f16`] (and its SIMD versions) for
/// `kv_len` cached values; returns `(g, n)`.
pub(crate) fn check_scores(q: &[f32], kv_len: usize, hd: usize, scores: &[f32]) -> (usize, usize) {
    let (g, n) = shape(q.len(), kv_len, hd, "attn_scores");
    assert!(
        Some(scores.len()) == g.checked_mul(n),
        "attn_scores: {g} heads x {n} positions need {} scores, got {}",
        g.saturating_mul(n),
        scores.len()
    );
    (g, n)
}

/// Checks the shapes of [`attn_values_f16`] and [`attn_values_i8`] (and their SIMD versions) for
/// `kv_len` cached values; returns `(g, n)`.
pub(crate) fn check_values(
    weights: &[f32],
    kv_len: usize,
    hd: usize,
    out: &[f32],
) -> (usize, usize) {
    let (g, n) = shape(out.len(), kv_len, hd, "attn_values");
    assert!(
        Some(weights.len()) == g.checked_mul(n),
        "attn_values: {g} heads x {n} positions need {} weights, got {}",
        g.saturating_mul(n),
        weights.len()
    );
    (g, n)
}

fn scores<T: Copy>(
    q: &[f32],
    keys: &[T],
    hd: usize,
    scale: f32,
    out: &mut [f32],
    f32_of: impl Fn(T) -> f32,
) {
    let (_, n) = check_scores(q, keys.len(), hd, out);
    if n == 0 {
        return;
    }
    for (qh, row) in q.chunks_exact(hd).zip(out.chunks_exact_mut(n)) {
        for (s, k) in row.iter_mut().zip(keys.chunks_exact(hd)) {
            let mut acc = 0.0f32;
            for (&qv, &kv) in qh.iter().zip(k) {
                acc += qv * f32_of(kv);
            }
            *s = acc * scale;
        }
    }
}

fn values<T: Copy>(
    weights: &[f32],
    values: &[T],
    hd: usize,
    out: &mut [f32],
    f32_of: impl Fn(T) -> f32,
) {
    let (_, n) = check_values(weights, values.len(), hd, out);
    out.fill(0.0);
    if n == 0 {
        return;
    }
    for (wh, oh) in weights.chunks_exact(n).zip(out.chunks_exact_mut(hd)) {
        for (&w, v) in wh.iter().zip(values.chunks_exact(hd)) {
            for (o, &vv) in oh.iter_mut().zip(v) {
                *o += w * f32_of(vv);
            }
        }
    }
}

/// Attention scores of `g` query heads against `n` cached keys:
/// `scores[h * n + t] = (Σ_i q[h * hd + i] * keys[t * hd + i]) * scale`.
///
/// Panics unless `q` is `[g, hd]`, `keys` is `[n, hd]` and `scores` is `[g, n]`.
pub fn attn_scores_f16(q: &[f32], keys: &[u16], hd: usize, scale: f32, out: &mut [f32]) {
    scores(q, keys, hd, scale, out, f16_bits_to_f32);
}

/// Largest head dimension [`attn_scores_q16`] takes: `hd * 32768 * 128` stays below `i32::MAX`.
pub const Q16_MAX_HD: usize = 511;

/// Checks the shapes of [`attn_scores_q16`] (and its SIMD versions); returns `(g, n)`.
pub(crate) fn check_scores_q16(
    q: &[i16],
    kv_len: usize,
    hd: usize,
    scores: &[i32],
) -> (usize, usize) {
    assert!(
        hd <= Q16_MAX_HD,
        "attn_scores_q16: head dimension {hd} above {Q16_MAX_HD}"
    );
    let (g, n) = shape(q.len(), kv_len, hd, "attn_scores_q16");
    assert!(
        Some(scores.len()) == g.checked_mul(n),
        "attn_scores_q16: {g} heads x {n} positions need {} scores, got {}",
        g.saturating_mul(n),
        scores.len()
    );
    (g, n)
}

/// Integer attention scores of `g` int16 query heads against `n` int8 keys, exact:
/// `scores[h * n + t] = Σ_i q[h * hd + i] * keys[t * hd + i]` in i32 (the queries' and the key
/// rows' scales are the caller's, see [`quantize_row_i16`] and [`quantize_row_i8`]). Every SIMD
/// version gives the same integers.
///
/// Panics unless `q` is `[g, hd]`, `keys` is `[n, hd]`, `scores` is `[g, n]` and `hd` is at most
/// [`Q16_MAX_HD`].
pub fn attn_scores_q16(q: &[i16], keys: &[i8], hd: usize, out: &mut [i32]) {
    let (_, n) = check_scores_q16(q, keys.len(), hd, out);
    if n == 0 {
        return;
    }
    for (qh, row) in q.chunks_exact(hd).zip(out.chunks_exact_mut(n)) {
        for (s, k) in row.iter_mut().zip(keys.chunks_exact(hd)) {
            *s = qh
                .iter()
                .zip(k)
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
        }
    }
}

/// The unnormalized softmax of a block of scores: `x[i] = exp(x[i] - m)` with `m = max x`, and
/// returns `(m, Σ x[i])` (after the update, summed sequentially). Blocks of one row computed
/// apart (e.g. by different workers) combine as `Σ_b exp(m_b - M) · …` with `M = max_b m_b`.
///
/// An empty block returns `(-inf, 0)` and writes nothing.
pub fn softmax_unnorm(x: &mut [f32]) -> (f32, f32) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    (max, sum)
}

/// Weighted sum of `n` cached value rows for `g` query heads:
/// `out[h * hd + i] = Σ_t weights[h * n + t] * values[t * hd + i]` (overwriting `out`).
///
/// Panics unless `out` is `[g, hd]`, `values` is `[n, hd]` and `weights` is `[g, n]`.
pub fn attn_values_f16(weights: &[f32], vals: &[u16], hd: usize, out: &mut [f32]) {
    values(weights, vals, hd, out, f16_bits_to_f32);
}

/// [`attn_values_f16`] over int8 values (the caller folds their row scales into `weights`).
pub fn attn_values_i8(weights: &[f32], vals: &[i8], hd: usize, out: &mut [f32]) {
    values(weights, vals, hd, out, |v| v as f32);
}

/// How a key or value row enters an int8 cache: `d = max |x| / 127`, `dst[i] = x[i] / d` rounded
/// to nearest (ties to even; computed as `x[i] * (1 / d)`), and returns `d` (0 for a row of
/// zeros, whose values are then 0).
pub fn quantize_row_i8(src: &[f32], dst: &mut [i8]) -> f32 {
    assert_eq!(src.len(), dst.len(), "quantize_row_i8: lengths differ");
    let amax = src.iter().fold(0.0f32, |m, &x| m.max(libm::fabsf(x)));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &x) in dst.iter_mut().zip(src) {
        *q = libm::rintf(x * id).clamp(-127.0, 127.0) as i8;
    }
    d
}

/// How a query row enters [`attn_scores_q16`]: `d = max |x| / 32767`, `dst[i] = x[i] / d`
/// rounded to nearest (ties to even; computed as `x[i] * (1 / d)`), and returns `d` (0 for a row
/// of zeros, whose values are then 0). About 15 bits per value: far finer than the int8 keys.
pub fn quantize_row_i16(src: &[f32], dst: &mut [i16]) -> f32 {
    assert_eq!(src.len(), dst.len(), "quantize_row_i16: lengths differ");
    let amax = src.iter().fold(0.0f32, |m, &x| m.max(libm::fabsf(x)));
    let d = amax / 32767.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &x) in dst.iter_mut().zip(src) {
        *q = libm::rintf(x * id).clamp(-32767.0, 32767.0) as i16;
    }
    d
}

/// Rounds `src` to f16 bits (IEEE round to nearest even; values beyond ±65504 become ±inf):
/// how new keys and values enter an f16 cache.
pub fn f32_to_f16_row(src: &[f32], dst: &mut [u16]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    assert_eq!(src.len(), dst.len(), "f32_to_f16_row: lengths differ");
    // The slice conversion rounds each value as `f16::from_f32` does, several at a time (with
    // F16C where the CPU has it).
    dst.reinterpret_cast_mut::<half::f16>()
        .convert_from_f32_slice(src);
}
