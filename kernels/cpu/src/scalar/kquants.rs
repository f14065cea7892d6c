//! Scalar K-quant kernels (Q4_K, Q5_K, Q6_K): dequantization and the matrix-vector product with
//! int8 activations. This file is the specification the SIMD versions are tested against.
//!
//! # Block layouts
//!
//! A row of `cols` elements (a multiple of [`QK_K`] = 256) is `cols / 256` super-blocks, exactly as
//! GGUF stores them. All multi-byte fields are little-endian and may be unaligned.
//!
//! - **Q4_K** (144 bytes): `d: f16`, `dmin: f16`, `scales: [u8; 12]`, `qs: [u8; 128]`. Eight
//!   sub-blocks of 32 elements, each with a 6-bit scale `sc[j]` and a 6-bit min `m[j]` packed in
//!   `scales` (see [`scale_min_k4`]). Element `32*j + l` is `d*sc[j] * q - dmin*m[j]` with the 4-bit
//!   `q = (qs[32*(j/2) + l] >> (4*(j%2))) & 0xF`: sub-blocks `2k` and `2k+1` share the 32 bytes
//!   `qs[32k..32k+32]`, low nibbles first.
//! - **Q5_K** (176 bytes): `d`, `dmin`, `scales: [u8; 12]`, `qh: [u8; 32]`, `qs: [u8; 128]`. As Q4_K,
//!   plus a fifth bit: `q = nibble | (((qh[l] >> j) & 1) << 4)`, a value in `0..32`.
//! - **Q6_K** (210 bytes): `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16`. Two halves
//!   `h` of 128 elements; element `128*h + 32*g + l` (`g` in `0..4`, `l` in `0..32`) has the low four
//!   bits `(ql[64*h + 32*(g%2) + l] >> (4*(g/2))) & 0xF` and the high two bits
//!   `(qh[32*h + l] >> (2*g)) & 3`; its value is `d * scales[e/16] * (q - 32)` for element index `e`.
//!
//! Dequantization computes in f32 exactly as written above, one rounding per operation:
//! `(d * sc) * q - dmin * m` for Q4_K/Q5_K and `(d * scale) * (q - 32)` for Q6_K. This is the order
//! of the format's reference dequantizer, so results are bit-identical to it.
//!
//! # The matrix-vector product: the accumulation order is the specification
//!
//! `gemv_<type>(w, acts, out)` computes `out[r] ≈ Σ_c W[r][c] * acts.d[c/16] * acts.qs[c]` for
//! every row `r` in `0..out.len()`. The activations carry one scale and one integer sum per group
//! of `QS` = 16 values (lengths stay multiples of [`QK`](crate::acts::QK) = 32). Activation group
//! `g` lines up with elements `16i .. 16i+16` of super-block `s = g / 16`, `i = g % 16`:
//! - Q4_K/Q5_K: group `i` is half `k = i % 2` of the 32-element sub-block `j = i / 2`, so one
//!   sub-block scale `sc[j]` and min `m[j]` span the two groups `2j` and `2j + 1`;
//! - Q6_K: group `i` is exactly the 16-element sub-block with scale `scales[i]`.
//!
//! For each row, with eight running sums `acc[0..8]`, all starting at `+0.0`, super-blocks in order
//! and within one the groups `i = 0..16` in order, group `i` going to lane
//! `L(i) = 4 * (i % 2) + (i / 2) % 4`: first halves of 32-element sub-blocks `j` to lane `j % 4`,
//! second halves to lane `4 + j % 4`, so that each lane receives group `i` and then group `i + 8`
//! of each super-block:
//!
//! 1. Integers, exact, per group: `dot = Σ_l q[l] * a[l]` over the group's 16 values (i32; Q6_K
//!    with the signed quants `q - 32`).
//! 2. Floats, each step rounded to f32 and never fused:
//!    - Q4_K/Q5_K, with `dl = d * sc[j]` and `ml = dmin * m[j]` computed as in the dequantizer:
//!      `acc[L(i)] += ((dot as f32) * dl - (acts.sums[g] as f32) * ml) * acts.d[g]`;
//!    - Q6_K, with `ip = scales[i] * dot` (i32): `acc[L(i)] += ((ip as f32) * d) * acts.d[g]`.
//! 3. `out[r] = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))`.
//!
//! All i32 to f32 conversions are exact: `|dot| <= 16 * 31 * 128` (Q4_K/Q5_K), `|ip| <= 2^23`
//! (Q6_K: `128 * 32 * 128 * 16`) when activations are in `-128..=127`, and `|sums[g]| <= 16 * 128`
//! for the true group sums (other sums are rounded the same way by every kernel). The products
//! `dl` and `ml` are exact too (a 6-bit integer times an f16), so `(dot as f32) * dl` is the one
//! rounding of `sc * dot * d`.
//!
//! The eight lanes are the lanes of one AVX2 register: horizontal adds within the 128-bit halves of
//! the `maddubs` results of sub-blocks `4h .. 4h+4` leave one register with their first-half group
//! dots in the low half and their second-half ones in the high half, which is the map `L`. A SIMD
//! kernel that follows these steps with separate multiplies and adds gives the same bits.
//!
//! # Argument checks
//!
//! Every function panics (the same checks in the SIMD kernels) when `acts.len()` or `dst.len()` is
//! not a multiple of 256, when `acts.d` or `acts.sums` does not hold `acts.len() / 16` values, or
//! when the weight bytes are too short. Longer weight slices are fine: only the first rows are
//! read.

use crate::acts::{ActsQ8, QS};

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;
/// Activation scale groups (`QS` = 16 values each) per super-block.
pub const ACT_GROUPS_PER_SUPER: usize = QK_K / QS;
/// Bytes per Q4_K super-block.
pub const Q4_K_BLOCK_BYTES: usize = 144;
/// Bytes per Q5_K super-block.
pub const Q5_K_BLOCK_BYTES: usize = 176;
/// Bytes per Q6_K super-block.
pub const Q6_K_BLOCK_BYTES: usize = 210;

/// Offsets inside a Q4_K / Q5_K super-block.
pub(crate) const K4_D: usize = 0;
pub(crate) const K4_DMIN: usize = 2;
pub(crate) const K4_SCALES: usize = 4;
pub(crate) const Q4_K_QS: usize = 16;
pub(crate) const Q5_K_QH: usize = 16;
pub(crate) const Q5_K_QS: usize = 48;
/// Offsets inside a Q6_K super-block.
pub(crate) const Q6_K_QL: usize = 0;
pub(crate) const Q6_K_QH: usize = 128;
pub(crate) const Q6_K_SCALES: usize = 192;
pub(crate) const Q6_K_D: usize = 208;

/// The f16 at `b[off..off + 2]` (little-endian), widened exactly to f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Scale and min (both `0..64`) of sub-block `j` (`0..8`) from the 12 packed bytes `s` of a Q4_K or
/// Q5_K super-block. Bytes 0..4 hold the low six bits of scales 0..3, bytes 4..8 the low six bits
/// of mins 0..3; for sub-blocks 4..7 byte `j + 4` holds the low four bits of the scale (low nibble)
/// and of the min (high nibble), and the top two bits of bytes `j - 4` and `j` supply bits 4..5.
#[inline(always)]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 0x3F, s[j + 4] & 0x3F)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Checks the dequantization arguments; returns the number of super-blocks.
#[inline]
pub(crate) fn check_dequantize(src: &[u8], dst: &[f32], block_bytes: usize) -> usize {
    assert!(
        dst.len().is_multiple_of(QK_K),
        "K-quant dequantize: dst.len() = {} is not a multiple of {QK_K}",
        dst.len()
    );
    let nsb = dst.len() / QK_K;
    assert!(
        src.len() >= nsb * block_bytes,
        "K-quant dequantize: {} super-blocks need {} bytes, src has {}",
        nsb,
        nsb * block_bytes,
        src.len()
    );
    nsb
}

/// Checks the gemv arguments; returns the number of bytes per weight row.
#[inline]
pub(crate) fn check_gemv(w: &[u8], acts: &ActsQ8<'_>, out: &[f32], block_bytes: usize) -> usize {
    let cols = acts.len();
    assert!(
        cols.is_multiple_of(QK_K),
        "K-quant gemv: acts.len() = {cols} is not a multiple of {QK_K}"
    );
    let ng = cols / QS;
    assert!(
        acts.d.len() == ng && acts.sums.len() == ng,
        "K-quant gemv: {cols} activations need {ng} scales and sums, got {} and {}",
        acts.d.len(),
        acts.sums.len()
    );
    let nsb = cols / QK_K;
    let row_bytes = nsb * block_bytes;
    assert!(
        out.len()
            .checked_mul(row_bytes)
            .is_some_and(|n| w.len() >= n),
        "K-quant gemv: {} rows of {row_bytes} bytes need {} bytes, w has {}",
        out.len(),
        out.len() * row_bytes,
        w.len()
    );
    row_bytes
}

/// Step 2 of the specification: the lane that accumulates group `i` (`0..16`) of a super-block.
#[inline(always)]
pub(crate) const fn acc_lane(i: usize) -> usize {
    4 * (i % 2) + (i / 2) % 4
}

/// Step 3 of the specification: the fixed reduction of the eight lane sums.
#[inline(always)]
pub(crate) fn reduce_lanes(acc: &[f32; 8]) -> f32 {
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Dequantizes `dst.len() / 256` Q4_K super-blocks from `src` into `dst`.
///
/// # Panics
/// On the argument errors listed in the module documentation.
pub fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    let nsb = check_dequantize(src, dst, Q4_K_BLOCK_BYTES);
    for (blk, out) in src[..nsb * Q4_K_BLOCK_BYTES]
        .chunks_exact(Q4_K_BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = f16_at(blk, K4_D);
        let dmin = f16_at(blk, K4_DMIN);
        let scales = &blk[K4_SCALES..K4_SCALES + 12];
        let qs = &blk[Q4_K_QS..Q4_K_QS + 128];
        for (j, sub) in out.chunks_exact_mut(32).enumerate() {
            let (sc, m) = scale_min_k4(j, scales);
            let dl = d * sc as f32;
            let ml = dmin * m as f32;
            let shift = 4 * (j % 2);
            let bytes = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            for (y, &q) in sub.iter_mut().zip(bytes) {
                *y = dl * ((q >> shift) & 0x0F) as f32 - ml;
            }
        }
    }
}

/// Dequantizes `dst.len() / 256` Q5_K super-blocks from `src` into `dst`.
///
/// # Panics
/// On the argument errors listed in the module documentation.
pub fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    let nsb = check_dequantize(src, dst, Q5_K_BLOCK_BYTES);
    for (blk, out) in src[..nsb * Q5_K_BLOCK_BYTES]
        .chunks_exact(Q5_K_BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = f16_at(blk, K4_D);
        let dmin = f16_at(blk, K4_DMIN);
        let scales = &blk[K4_SCALES..K4_SCALES + 12];
        let qh = &blk[Q5_K_QH..Q5_K_QH + 32];
        let qs = &blk[Q5_K_QS..Q5_K_QS + 128];
        for (j, sub) in out.chunks_exact_mut(32).enumerate() {
            let (sc, m) = scale_min_k4(j, scales);
            let dl = d * sc as f32;
            let ml = dmin * m as f32;
            let shift = 4 * (j % 2);
            let bytes = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            for ((y, &q), &h) in sub.iter_mut().zip(bytes).zip(qh) {
                let q = ((q >> shift) & 0x0F) | (((h >> j) & 1) << 4);
                *y = dl * q as f32 - ml;
            }
        }
    }
}

/// The signed 6-bit quants (`q - 32`, in `-32..32`) of half `k` (elements `16k..16k+16`, `k` in
/// `0..2`) of 32-element group `j` (`0..8`) of a Q6_K super-block with fields `ql` and `qh`, in
/// element order.
#[inline(always)]
fn q6_k_half<'a>(ql: &'a [u8], qh: &'a [u8], j: usize, k: usize) -> impl Iterator<Item = i32> + 'a {
    let (h, g) = (j / 4, j % 4);
    let lo = &ql[64 * h + 32 * (g % 2) + 16 * k..][..16];
    let hi = &qh[32 * h + 16 * k..][..16];
    let (lo_shift, hi_shift) = (4 * (g / 2), 2 * g);
    lo.iter().zip(hi).map(move |(&l, &h)| {
        (((l >> lo_shift) & 0x0F) | (((h >> hi_shift) & 0x03) << 4)) as i32 - 32
    })
}

/// Dequantizes `dst.len() / 256` Q6_K super-blocks from `src` into `dst`.
///
/// # Panics
/// On the argument errors listed in the module documentation.
pub fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    let nsb = check_dequantize(src, dst, Q6_K_BLOCK_BYTES);
    for (blk, out) in src[..nsb * Q6_K_BLOCK_BYTES]
        .chunks_exact(Q6_K_BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let ql = &blk[Q6_K_QL..Q6_K_QL + 128];
        let qh = &blk[Q6_K_QH..Q6_K_QH + 64];
        let scales = &blk[Q6_K_SCALES..Q6_K_SCALES + 16];
        let d = f16_at(blk, Q6_K_D);
        for (i, half) in out.chunks_exact_mut(16).enumerate() {
            let dl = d * (scales[i] as i8) as f32;
            for (y, q) in half.iter_mut().zip(q6_k_half(ql, qh, i / 2, i % 2)) {
                *y = dl * q as f32;
            }
        }
    }
}

/// Q4_K weights times int8 activations: `out[r] = Σ_c W[r][c] * a[c]`, in the order given in the
/// module documentation.
///
/// # Panics
/// On the argument errors listed in the module documentation.
pub fn gemv_q4_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let row_bytes = check_gemv(w, acts, out, Q4_K_BLOCK_BYTES);
    for (r, y) in out.iter_mut().enumerate() {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        let mut acc = [0.0f32; 8];
        for (s, blk) in row.chunks_exact(Q4_K_BLOCK_BYTES).enumerate() {
            let d = f16_at(blk, K4_D);
            let dmin = f16_at(blk, K4_DMIN);
            let scales = &blk[K4_SCALES..K4_SCALES + 12];
            let qs = &blk[Q4_K_QS..Q4_K_QS + 128];
            for i in 0..ACT_GROUPS_PER_SUPER {
                let (j, k) = (i / 2, i % 2);
                let g = s * ACT_GROUPS_PER_SUPER + i;
                let a = &acts.qs[g * QS..(g + 1) * QS];
                let shift = 4 * (j % 2);
                let bytes = &qs[32 * (j / 2) + 16 * k..][..16];
                let dot: i32 = bytes
                    .iter()
                    .zip(a)
                    .map(|(&q, &x)| ((q >> shift) & 0x0F) as i32 * x as i32)
                    .sum();
                let (sc, m) = scale_min_k4(j, scales);
                let (dl, ml) = (d * sc as f32, dmin * m as f32);
                acc[acc_lane(i)] += (dot as f32 * dl - acts.sums[g] as f32 * ml) * acts.d[g];
            }
        }
        *y = reduce_lanes(&acc);
    }
}

/// Q5_K weights times int8 activations: `out[r] = Σ_c W[r][c] * a[c]`, in the order given in the
/// module documentation.
///
/// # Panics
/// On the argument errors listed in the module documentation.
pub fn gemv_q5_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let row_bytes = check_gemv(w, acts, out, Q5_K_BLOCK_BYTES);
    for (r, y) in out.iter_mut().enumerate() {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        let mut acc = [0.0f32; 8];
        for (s, blk) in row.chunks_exact(Q5_K_BLOCK_BYTES).enumerate() {
            let d = f16_at(blk, K4_D);
            let dmin = f16_at(blk, K4_DMIN);
            let scales = &blk[K4_SCALES..K4_SCALES + 12];
            let qh = &blk[Q5_K_QH..Q5_K_QH + 32];
            let qs = &blk[Q5_K_QS..Q5_K_QS + 128];
            for i in 0..ACT_GROUPS_PER_SUPER {
                let (j, k) = (i / 2, i % 2);
                let g = s * ACT_GROUPS_PER_SUPER + i;
                let a = &acts.qs[g * QS..(g + 1) * QS];
                let shift = 4 * (j % 2);
                let bytes = &qs[32 * (j / 2) + 16 * k..][..16];
                let high = &qh[16 * k..][..16];
                let dot: i32 = bytes
                    .iter()
                    .zip(high)
                    .zip(a)
                    .map(|((&q, &h), &x)| {
                        let q = ((q >> shift) & 0x0F) | (((h >> j) & 1) << 4);
                        q as i32 * x as i32
                    })
                    .sum();
                let (sc, m) = scale_min_k4(j, scales);
                let (dl, ml) = (d * sc as f32, dmin * m as f32);
                acc[acc_lane(i)] += (dot as f32 * dl - acts.sums[g] as f32 * ml) * acts.d[g];
            }
        }
        *y = reduce_lanes(&acc);
    }
}

/// Q6_K weights times int8 activations: `out[r] = Σ_c W[r][c] * a[c]`, in the order given in the
/// module documentation.
///
/// # Panics
/// On the argument errors listed in the module documentation.
pub fn gemv_q6_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let row_bytes = check_gemv(w, acts, out, Q6_K_BLOCK_BYTES);
    for (r, y) in out.iter_mut().enumerate() {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        let mut acc = [0.0f32; 8];
        for (s, blk) in row.chunks_exact(Q6_K_BLOCK_BYTES).enumerate() {
            let ql = &blk[Q6_K_QL..Q6_K_QL + 128];
            let qh = &blk[Q6_K_QH..Q6_K_QH + 64];
            let scales = &blk[Q6_K_SCALES..Q6_K_SCALES + 16];
            let d = f16_at(blk, Q6_K_D);
            for (i, &scale) in scales.iter().enumerate() {
                let g = s * ACT_GROUPS_PER_SUPER + i;
                let a = &acts.qs[g * QS..(g + 1) * QS];
                let dot: i32 = q6_k_half(ql, qh, i / 2, i % 2)
                    .zip(a)
                    .map(|(q, &x)| q * x as i32)
                    .sum();
                let ip = (scale as i8) as i32 * dot;
                acc[acc_lane(i)] += (ip as f32 * d) * acts.d[g];
            }
        }
        *y = reduce_lanes(&acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::GgmlType;

    #[test]
    fn block_sizes_match_the_type_table() {
        assert_eq!(GgmlType::Q4_K.block_bytes(), Q4_K_BLOCK_BYTES);
        assert_eq!(GgmlType::Q5_K.block_bytes(), Q5_K_BLOCK_BYTES);
        assert_eq!(GgmlType::Q6_K.block_bytes(), Q6_K_BLOCK_BYTES);
        assert_eq!(GgmlType::Q4_K.block_len(), QK_K);
    }

    #[test]
    fn accumulator_lanes_take_two_groups_each() {
        let mut hits = [0usize; 8];
        for i in 0..ACT_GROUPS_PER_SUPER {
            hits[acc_lane(i)] += 1;
        }
        assert_eq!(hits, [2; 8]);
        for i in 0..8 {
            assert_eq!(acc_lane(i), acc_lane(i + 8), "group {i}");
        }
        let lanes: [usize; 8] = core::array::from_fn(acc_lane);
        assert_eq!(lanes, [0, 4, 1, 5, 2, 6, 3, 7]);
    }

    #[test]
    fn scale_min_k4_unpacks_every_bit() {
        // Scale j = j + 1 + 8 * (j & 3) style values that use all six bits for j >= 4.
        let sc: [u8; 8] = [1, 2, 63, 40, 33, 17, 48, 63];
        let mn: [u8; 8] = [5, 62, 0, 31, 63, 16, 32, 9];
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
        }
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &s), (sc[j], mn[j]), "sub-block {j}");
        }
    }
}
