//! Weight quantizers: f32 rows to Q8_0 and Q4_0 blocks, with the rounding of ggml's reference
//! quantizers (and of gguf-py's, which reproduce them bit for bit).
//!
//! Per block of 32 values `x_j`:
//!
//! - Q8_0: `amax = max |x_j|`, `d = amax / 127`, `id = 1 / d` (0 when `d == 0`),
//!   `q_j = round(x_j * id)` rounding half away from zero; `d` is stored as IEEE f16 (round to
//!   nearest even from the f32 value).
//! - Q4_0: `m` = the value of largest magnitude (the first one on ties, sign kept), `d = m / -8`,
//!   `id = 1 / d` (0 when `d == 0`), `q_j = min(15, trunc(x_j * id + 8.5))`; element `j < 16` goes
//!   to the low nibble of byte `j`, element `j + 16` to its high nibble.
//!
//! Per super-block of 256 values, Q6_K (this module's own rule, not ggml's search; the format is
//! ggml's: sixteen sub-blocks of 16 values, each with an i8 scale under one f16 super-scale `d`,
//! values `d * sc * (q - 32)` with 6-bit `q`):
//!
//! - each sub-block's scale `s`: `m` = its value of largest magnitude (the first on ties, sign
//!   kept), `s = m / -32` (so `m` takes the end of the asymmetric range `-32..=31`); then, with
//!   `q_j = clamp(round(x_j / s), -32, 31)`, the least-squares scale `s' = Σ x_j q_j / Σ q_j²`
//!   replaces `s` when its squared error (requantized alike) is smaller;
//! - `M` = the scale of largest magnitude (first on ties), `d = f16(M / -128)`, and `sc_i` the
//!   one of `round(s_i / d)` and its neighbour on the other side of `s_i / d` (both clamped to
//!   `-128..=127`) whose codes give the smaller squared error, the rounded one on ties (0 when
//!   `d` is 0);
//! - `q_j = clamp(round(x_j / (d sc_i)), -32, 31) + 32` (32 when `d sc_i` is 0), with the stored
//!   f16 `d`, so the codes fit the scales actually stored.
//!
//! Every rounding is half away from zero. A block whose values lie on a Q6_K grid (a scale of
//! -128 in the block and a code of 0 in every sub-block, as [`super::kquants::dequantize_q6_k`]
//! gives them) is requantized to the same bytes.
//!
//! All arithmetic is single-precision, each operation rounded separately, so the result is the
//! same on every target. Inputs must be finite; others give unspecified (never undefined) bytes.

use crate::acts::QK;
use crate::scalar::kquants::{Q6_K_BLOCK_BYTES, QK_K};
use crate::scalar::legacy::{Q4_0_BYTES, Q8_0_BYTES};

/// Checks that `dst` has room for exactly the blocks of `src` (blocks of `len` values, `bytes`
/// bytes each).
fn check(src: &[f32], dst: &[u8], len: usize, bytes: usize, name: &str) {
    assert!(
        src.len().is_multiple_of(len),
        "quantize {name}: {} values is not a multiple of {len}",
        src.len()
    );
    assert!(
        dst.len() == src.len() / len * bytes,
        "quantize {name}: {} values need {} bytes, got {}",
        src.len(),
        src.len() / len * bytes,
        dst.len()
    );
}

/// Rounds half away from zero (C `roundf`), without relying on a libm.
#[inline(always)]
fn round_away(v: f32) -> f32 {
    let a = v.abs();
    let fl = libm::floorf(a);
    // `a - fl` is exact; doubling is exact; so this is exact for every finite input.
    let r = fl + libm::floorf(2.0 * (a - fl));
    if v < 0.0 {
        -r
    } else {
        r
    }
}

#[inline(always)]
fn f16_bytes(d: f32) -> [u8; 2] {
    half::f16::from_f32(d).to_bits().to_le_bytes()
}

/// Quantizes `src` (a multiple of 32 values) to Q8_0 blocks in `dst` (34 bytes per block).
pub fn quantize_row_q8_0(src: &[f32], dst: &mut [u8]) {
    check(src, dst, QK, Q8_0_BYTES, "Q8_0");
    for (x, blk) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(Q8_0_BYTES)) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        blk[..2].copy_from_slice(&f16_bytes(d));
        for (q, &v) in blk[2..].iter_mut().zip(x) {
            *q = round_away(v * id) as i8 as u8;
        }
    }
}

/// Quantizes `src` (a multiple of 32 values) to Q4_0 blocks in `dst` (18 bytes per block).
pub fn quantize_row_q4_0(src: &[f32], dst: &mut [u8]) {
    check(src, dst, QK, Q4_0_BYTES, "Q4_0");
    for (x, blk) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(Q4_0_BYTES)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        blk[..2].copy_from_slice(&f16_bytes(d));
        let code = |v: f32| -> u8 {
            // `v * id` lies in [-8, 8], so the sum is in [0.5, 16.5] and the cast truncates.
            ((v * id + 8.5) as u8).min(15)
        };
        for j in 0..QK / 2 {
            blk[2 + j] = code(x[j]) | (code(x[j + QK / 2]) << 4);
        }
    }
}

/// The value of largest magnitude in `x` (the first on ties, sign kept), 0 for an empty slice.
fn largest(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// `clamp(round(v / s), -32, 31)` for a Q6_K code, as an i32 (0 when `s` is 0).
#[inline(always)]
fn q6_code(v: f32, s: f32) -> i32 {
    if s == 0.0 {
        return 0;
    }
    (round_away(v / s) as i32).clamp(-32, 31)
}

/// The squared error of `x` quantized with scale `s`.
fn q6_error(x: &[f32], s: f32) -> f32 {
    x.iter()
        .map(|&v| {
            let e = v - s * q6_code(v, s) as f32;
            e * e
        })
        .sum()
}

/// The scale of one 16-value sub-block (module docs).
fn q6_sub_scale(x: &[f32]) -> f32 {
    let s = largest(x) / -32.0;
    if s == 0.0 {
        return 0.0;
    }
    let (mut xq, mut qq) = (0.0f32, 0.0f32);
    for &v in x {
        let q = q6_code(v, s) as f32;
        xq += v * q;
        qq += q * q;
    }
    if qq == 0.0 {
        return s;
    }
    let ls = xq / qq;
    if ls != 0.0 && q6_error(x, ls) < q6_error(x, s) {
        ls
    } else {
        s
    }
}

/// Quantizes `src` (a multiple of 256 values) to Q6_K super-blocks in `dst` (210 bytes each),
/// by the rule of the module docs.
pub fn quantize_row_q6_k(src: &[f32], dst: &mut [u8]) {
    check(src, dst, QK_K, Q6_K_BLOCK_BYTES, "Q6_K");
    for (x, blk) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(Q6_K_BLOCK_BYTES))
    {
        let mut scales = [0f32; QK_K / 16];
        for (s, sub) in scales.iter_mut().zip(x.chunks_exact(16)) {
            *s = q6_sub_scale(sub);
        }
        let d = half::f16::from_f32(largest(&scales) / -128.0);
        let df = d.to_f32();
        blk.fill(0);
        let (ql, rest) = blk.split_at_mut(128);
        let (qh, rest) = rest.split_at_mut(64);
        let (sc, dd) = rest.split_at_mut(16);
        dd.copy_from_slice(&d.to_bits().to_le_bytes());
        for (i, &s) in scales.iter().enumerate() {
            let sub = &x[16 * i..16 * i + 16];
            let c = if df == 0.0 {
                0
            } else {
                // The two i8 multiples of `d` around `s`: the one with the smaller error (the
                // lower one can saturate the codes), the rounded one on ties.
                let r = s / df;
                let near = (round_away(r) as i32).clamp(-128, 127);
                let other = (if (near as f32) < r {
                    near + 1
                } else {
                    near - 1
                })
                .clamp(-128, 127);
                if q6_error(sub, df * other as f32) < q6_error(sub, df * near as f32) {
                    other
                } else {
                    near
                }
            };
            sc[i] = c as i8 as u8;
            let dl = df * c as f32;
            for (k, &v) in sub.iter().enumerate() {
                // Element e = 128 h + 32 g + l: low nibble `g / 2` of ql[64 h + 32 (g % 2) + l],
                // bits 2g of qh[32 h + l].
                let e = 16 * i + k;
                let (h, g, l) = (e / 128, (e % 128) / 32, e % 32);
                let q = (q6_code(v, dl) + 32) as u8;
                ql[64 * h + 32 * (g % 2) + l] |= (q & 0x0F) << (4 * (g / 2));
                qh[32 * h + l] |= (q >> 4) << (2 * g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_away_from_zero() {
        for (v, r) in [
            (0.5, 1.0),
            (-0.5, -1.0),
            (1.5, 2.0),
            (2.5, 3.0),
            (0.49999997, 0.0),
        ] {
            assert_eq!(round_away(v), r, "{v}");
        }
    }
}
