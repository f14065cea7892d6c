//! Scalar kernels of Q4W, EdgeLLM's 4-bit type: conversion from and to Q4_0, quantization,
//! dequantization and the matrix-vector product with int8 activations. This file is the
//! specification the SIMD versions are tested against.
//!
//! # Block layout
//!
//! Q4W holds Q4_0's numbers: weights `d * (q - 8)` with 4-bit codes `q` and one f16 scale `d`
//! per 32 weights. A block is 64 weights in 36 bytes: `d: [f16; 2]` (bytes 0..4; `d[s]` scales
//! elements `32 s .. 32 s + 32`), then `qs: [u8; 32]`. A block is two Q4_0 blocks' bytes,
//! rearranged ([`q4w_from_q4_0`] and [`q4_0_from_q4w`] convert without loss).
//!
//! The codes are arranged for SIMD dot products (`vpdpbusd`, `sdot`): the 32 bytes are eight
//! 32-bit lanes, and lane `j` holds half `h = j / 4` (elements `8 h .. 8 h + 8`) of group
//! `k = LANE_GROUP[j % 4]` (elements `16 k .. 16 k + 16` of the block): its byte `m` (`0..4`)
//! has element `16 k + 8 h + m` in the low nibble and element `16 k + 8 h + 4 + m` in the high
//! one ([`q4w_position`]). So one mask and one shift of the 32 bytes give two code vectors whose
//! lane products with activations arranged alike are each half-group's partial sums, added
//! vertically with no horizontal reduction; and since `LANE_GROUP` alternates between the two
//! halves of the block (groups 0, 2, 1, 3), lane `j`'s weight scale is `d[j % 2]`: the two f16
//! scales loaded as one 32-bit word and broadcast are already in lane order.
//!
//! # The matrix-vector product: the accumulation order is the specification
//!
//! `gemv_q4w(w, acts, out)` computes, for every row `r` in `0..out.len()`:
//!
//! 1. Integers, exact: per block `b` and lane `j`, `isum = Σ (q_e - 8) * a_e` over the eight
//!    elements of the lane (i32; at most `8 * 8 * 127` in magnitude).
//! 2. Floats, eight running sums `acc[0..8]` starting at `+0.0`, blocks in order, each operation
//!    rounded to f32, never fused: `acc[j] += (d[j % 2] * acts.d[4 b + k]) * (isum as f32)`,
//!    with `d` the block's scales as f32 and `k` lane `j`'s group.
//! 3. `out[r] = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))`.
//!
//! The eight sums are the eight lanes of one AVX2 register (two NEON registers).
//!
//! # Argument checks
//!
//! As for the ternary types: every function panics when `acts.len()` is not a multiple of 64,
//! when `acts.d` or `acts.sums` do not hold `acts.len() / 16` values, or when `w` does not hold
//! exactly `out.len()` rows.

use super::ternary::{check_gemv_ternary, reduce8};
use crate::acts::{ActsQ8, QS};
use crate::scalar::f16_at;
use crate::scalar::quantize::quantize_row_q4_0;

/// Weights per Q4W block.
pub const Q4W_BLOCK: usize = 64;
/// Bytes per Q4W block.
pub const Q4W_BYTES: usize = 36;
/// Bytes per Q4_0 block (two make one Q4W block).
const Q4_0_BYTES: usize = 18;

/// The group (of 16 elements) each lane `j % 4` of a block holds (module docs). Its own inverse.
pub const LANE_GROUP: [usize; 4] = [0, 2, 1, 3];

/// Byte and bit shift of element `e` (`0..64`) of a Q4W block (codes start at byte 4).
#[inline]
pub const fn q4w_position(e: usize) -> (usize, u32) {
    let (k, i) = (e / 16, e % 16);
    let (h, hi, m) = (i / 8, (i % 8) / 4, i % 4);
    let j = 4 * h + LANE_GROUP[k];
    (4 + 4 * j + m, 4 * hi as u32)
}

/// Rewrites Q4_0 blocks as Q4W blocks, two into one, without loss. `src` holds `2 n` Q4_0
/// blocks and `dst` `n` Q4W blocks; panics otherwise.
pub fn q4w_from_q4_0(src: &[u8], dst: &mut [u8]) {
    let n = dst.len() / Q4W_BYTES;
    assert!(
        dst.len() == n * Q4W_BYTES && src.len() == 2 * n * Q4_0_BYTES,
        "q4w_from_q4_0: {} Q4_0 bytes for {} Q4W bytes",
        src.len(),
        dst.len()
    );
    for (s, d) in src
        .chunks_exact(2 * Q4_0_BYTES)
        .zip(dst.chunks_exact_mut(Q4W_BYTES))
    {
        d[0..2].copy_from_slice(&s[0..2]);
        d[2..4].copy_from_slice(&s[Q4_0_BYTES..Q4_0_BYTES + 2]);
        d[4..].fill(0);
        for e in 0..Q4W_BLOCK {
            let (half, i) = (e / 32, e % 32);
            let byte = s[half * Q4_0_BYTES + 2 + i % 16];
            let q = if i < 16 { byte & 0x0F } else { byte >> 4 };
            let (at, shift) = q4w_position(e);
            d[at] |= q << shift;
        }
    }
}

/// The inverse of [`q4w_from_q4_0`]: `src` holds `n` Q4W blocks, `dst` `2 n` Q4_0 blocks.
pub fn q4_0_from_q4w(src: &[u8], dst: &mut [u8]) {
    let n = src.len() / Q4W_BYTES;
    assert!(
        src.len() == n * Q4W_BYTES && dst.len() == 2 * n * Q4_0_BYTES,
        "q4_0_from_q4w: {} Q4W bytes for {} Q4_0 bytes",
        src.len(),
        dst.len()
    );
    for (s, d) in src
        .chunks_exact(Q4W_BYTES)
        .zip(dst.chunks_exact_mut(2 * Q4_0_BYTES))
    {
        d[0..2].copy_from_slice(&s[0..2]);
        d[Q4_0_BYTES..Q4_0_BYTES + 2].copy_from_slice(&s[2..4]);
        d[2..Q4_0_BYTES].fill(0);
        d[Q4_0_BYTES + 2..].fill(0);
        for e in 0..Q4W_BLOCK {
            let (at, shift) = q4w_position(e);
            let q = (s[at] >> shift) & 0x0F;
            let (half, i) = (e / 32, e % 32);
            d[half * Q4_0_BYTES + 2 + i % 16] |= if i < 16 { q } else { q << 4 };
        }
    }
}

/// Quantizes `src` (a multiple of 64 values) to Q4W: Q4_0's quantizer
/// ([`quantize_row_q4_0`]), then [`q4w_from_q4_0`].
pub fn quantize_row_q4w(src: &[f32], dst: &mut [u8]) {
    let n = src.len() / Q4W_BLOCK;
    assert!(
        src.len() == n * Q4W_BLOCK && dst.len() == n * Q4W_BYTES,
        "quantize_row_q4w: {} values into {} bytes",
        src.len(),
        dst.len()
    );
    let mut q4 = [0u8; 2 * Q4_0_BYTES];
    for (x, d) in src
        .chunks_exact(Q4W_BLOCK)
        .zip(dst.chunks_exact_mut(Q4W_BYTES))
    {
        quantize_row_q4_0(x, &mut q4);
        q4w_from_q4_0(&q4, d);
    }
}

/// Dequantizes `dst.len()` values (a multiple of 64) from Q4W blocks.
pub fn dequantize_q4w(src: &[u8], dst: &mut [f32]) {
    let n = dst.len() / Q4W_BLOCK;
    assert!(
        dst.len() == n * Q4W_BLOCK && src.len() == n * Q4W_BYTES,
        "dequantize_q4w: {} bytes for {} values",
        src.len(),
        dst.len()
    );
    for (blk, out) in src
        .chunks_exact(Q4W_BYTES)
        .zip(dst.chunks_exact_mut(Q4W_BLOCK))
    {
        let d = [f16_at(blk, 0), f16_at(blk, 2)];
        for (e, o) in out.iter_mut().enumerate() {
            let (at, shift) = q4w_position(e);
            let q = ((blk[at] >> shift) & 0x0F) as i32;
            *o = d[e / 32] * (q - 8) as f32;
        }
    }
}

/// `out[r] = Σ_c W[r][c] a[c]` for Q4W weights (columns a multiple of 64). Order in the module
/// docs.
pub fn gemv_q4w(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let row_bytes = check_gemv_ternary(w, acts, out.len(), Q4W_BLOCK, Q4W_BYTES, "Q4W");
    if row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        let mut acc = [0.0f32; 8];
        for (b, blk) in row.chunks_exact(Q4W_BYTES).enumerate() {
            let d = [f16_at(blk, 0), f16_at(blk, 2)];
            for (j, acc) in acc.iter_mut().enumerate() {
                let (k, h) = (LANE_GROUP[j % 4], j / 4);
                let g = 4 * b + k;
                let mut isum = 0i32;
                for m in 0..4 {
                    let byte = blk[4 + 4 * j + m];
                    let e = QS * g + 8 * h + m;
                    let (lo, hi) = ((byte & 0x0F) as i32, (byte >> 4) as i32);
                    isum += (lo - 8) * acts.qs[e] as i32 + (hi - 8) * acts.qs[e + 4] as i32;
                }
                *acc += (d[j % 2] * acts.d[g]) * isum as f32;
            }
        }
        *o = reduce8(&acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::legacy::dequantize_q4_0;

    #[test]
    fn positions_cover_every_nibble_once() {
        let mut seen = [0u8; Q4W_BYTES];
        for e in 0..Q4W_BLOCK {
            let (at, shift) = q4w_position(e);
            assert!((4..Q4W_BYTES).contains(&at));
            assert_eq!(seen[at] & (0x0F << shift), 0, "element {e} overlaps");
            seen[at] |= 0x0F << shift;
        }
        assert!(seen[4..].iter().all(|&b| b == 0xFF));
        // Lane 1 is group 2 (the second half of the block), elements 32..36 and 36..40.
        assert_eq!(q4w_position(32), (8, 0));
        assert_eq!(q4w_position(36), (8, 4));
        assert_eq!(q4w_position(40), (24, 0));
    }

    #[test]
    fn q4_0_round_trip_is_lossless_and_dequantizes_alike() {
        let mut x = [0u64; 1];
        let mut rng = || {
            x[0] = x[0]
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x[0] >> 33) as u8
        };
        let n = 5;
        let mut q4 = vec![0u8; 2 * n * Q4_0_BYTES];
        for (i, b) in q4.iter_mut().enumerate() {
            *b = rng();
            // Ordinary f16 scales (no NaN) in the first two bytes of each Q4_0 block.
            if i % Q4_0_BYTES == 1 {
                *b &= 0x3B;
            }
        }
        let mut w = vec![0u8; n * Q4W_BYTES];
        q4w_from_q4_0(&q4, &mut w);
        let mut back = vec![0u8; q4.len()];
        q4_0_from_q4w(&w, &mut back);
        assert_eq!(back, q4);
        let (mut a, mut b) = (vec![0f32; n * 64], vec![0f32; n * 64]);
        dequantize_q4_0(&q4, &mut a);
        dequantize_q4w(&w, &mut b);
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn quantize_matches_q4_0() {
        let x: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut q4 = [0u8; 4 * Q4_0_BYTES];
        quantize_row_q4_0(&x, &mut q4);
        let mut w = [0u8; 2 * Q4W_BYTES];
        quantize_row_q4w(&x, &mut w);
        let mut back = [0u8; 4 * Q4_0_BYTES];
        q4_0_from_q4w(&w, &mut back);
        assert_eq!(back, q4);
    }
}
