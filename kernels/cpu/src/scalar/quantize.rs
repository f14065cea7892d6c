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
//! All arithmetic is single-precision, each operation rounded separately, so the result is the
//! same on every target. Inputs must be finite; others give unspecified (never undefined) bytes.

use crate::acts::QK;
use crate::scalar::legacy::{Q4_0_BYTES, Q8_0_BYTES};

/// Checks that `dst` has room for exactly the blocks of `src`.
fn check(src: &[f32], dst: &[u8], block_bytes: usize, name: &str) {
    assert!(
        src.len().is_multiple_of(QK),
        "quantize {name}: {} values is not a multiple of {QK}",
        src.len()
    );
    assert!(
        dst.len() == src.len() / QK * block_bytes,
        "quantize {name}: {} values need {} bytes, got {}",
        src.len(),
        src.len() / QK * block_bytes,
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
    check(src, dst, Q8_0_BYTES, "Q8_0");
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
    check(src, dst, Q4_0_BYTES, "Q4_0");
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
