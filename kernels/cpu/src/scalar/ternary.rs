//! Scalar ternary kernels (EdgeLLM's T2, llama.cpp's TQ1_0 and TQ2_0): quantization,
//! dequantization and the matrix-vector product with int8 activations. This file is the
//! specification the SIMD versions are tested against.
//!
//! # Block layouts
//!
//! - **T2** (ours, 16 bytes per 64 weights, no scale): weight `w` in `{-1, 0, +1}` is stored as the
//!   2-bit code `c = w + 1`. Element `i` (`0..16`) of group `k` (`0..4`; element `16k + i` of the
//!   block) is in byte `4k + (i % 4)`, bits `2 (i / 4)` ([`t2_position`]): group `k` is the
//!   32-bit word `k` of the block, and its low nibbles hold the element pairs `(i, i + 4)`, its
//!   high nibbles `(i + 8, i + 12)`. So one shift by `2s` and one mask of the 16 bytes give, in
//!   bytes `4k .. 4k + 4`, elements `4s .. 4s + 4` of group `k`: a SIMD dot product (`vpmaddubsw`,
//!   `sdot`) then leaves each group's partial sums in its own lanes, added vertically with no
//!   horizontal reduction, against activations reordered once per block and shared by all rows;
//!   and a table lookup indexes by whole nibbles of one group. Each row has one f32 scale kept
//!   outside the blocks (the model loader holds it); the kernels here compute the unscaled
//!   `Σ w·x` and the caller multiplies by the row scale.
//! - **TQ2_0** (66 bytes per 256): `qs: [u8; 64]`, `d: f16`. Element `128h + 32l + m` (`h` in
//!   `0..2`, `l` in `0..4`, `m` in `0..32`) is `d * (((qs[32h + m] >> 2l) & 3) - 1)`.
//! - **TQ2W** (ours, 66 bytes per 256; made in memory at load from TQ2_0, [`tq2w_from_tq2_0`],
//!   or TQ1_0, [`tq2w_from_tq1_0`]):
//!   a TQ2_0 block with its 64 code bytes in T2's order, the four 16-byte T2 blocks of its
//!   elements `0..64`, `64..128`, `128..192`, `192..256`, then the same f16 `d`
//!   ([`tq2w_position`]). The same values as the TQ2_0 block; SIMD kernels unpack it with T2's
//!   shifts and masks instead of TQ2_0's per-word shifts.
//! - **TQ1_0** (54 bytes per 256): `qs: [u8; 48]`, `qh: [u8; 4]`, `d: f16`; five (or four) base-3
//!   digits per byte, read as `trit(b, n) = ((b * 3^n mod 256) * 3) >> 8` (a value in `0..3`) and
//!   weight `trit - 1`. Element `32n + m` (`n` in `0..5`, `m` in `0..32`) comes from `qs[m]`,
//!   element `160 + 16n + m` (`n` in `0..5`, `m` in `0..16`) from `qs[32 + m]`, element
//!   `240 + 4n + j` (`n` in `0..4`, `j` in `0..4`) from `qh[j]`; its value is `d * (trit - 1)`.
//! - **I2_S** (bitnet.cpp; read by the converter, see [`dequantize_i2_s`]): 2-bit codes `c`
//!   (weight `c - 1`) over the whole tensor in blocks of `4 G` weights in `G` bytes: element
//!   `4 G b + G k + p` (`k` in `0..4`, `p` in `0..G`) is in byte `G b + p` at bits `6 - 2k`.
//!   `G` is 32 in files written by bitnet.cpp's x86 builds (the published models), 16 in those
//!   of its ARM builds; the file does not say which ([`I2sLayout`]). After the `n / 4` bytes of
//!   codes, a 32-byte trailer starts with the tensor's one f32 scale: weight `scale * (c - 1)`.
//!
//! A 2-bit code 3 is never written by [`quantize_t2_row`] (nor by llama.cpp for TQ2_0); every
//! kernel reads it as `+2` (`c - 1`, as TQ2_0's reference dequantizer does), so any bytes give the
//! same numbers on every ISA.
//!
//! # Activation groups
//!
//! Activations ([`ActsQ8`]) carry one scale `d[g]` and one integer sum `sums[g] = Σ qs` per group
//! `g` of `QS` = 16 values. Every group of 16 consecutive weights lies inside one block of each
//! type: T2 group `k` of a block is its bytes `4k .. 4k + 4`; TQ2_0 group `8h + 2l + s` (`s` in
//! `0..2`) is bytes `32h + 16s .. 32h + 16s + 16` at bits `2l`; TQ2W group `4b + k` is bytes
//! `16b + 4k .. 16b + 4k + 4` (T2's group `k` of its T2 block `b`); TQ1_0 groups `0..10` are digit
//! `n = g / 2` of bytes `16(g % 2) .. 16(g % 2) + 16`, groups `10..15` digit `g - 10` of bytes
//! `32..48`, group 15 the four digits of `qh`.
//!
//! # The matrix-vector product: the accumulation order is the specification
//!
//! `gemv_<type>(w, acts, out)` computes, for every row `r` in `0..out.len()`:
//!
//! 1. Integers, exact: per group `g` of the row, `isum_g = Σ (c_e - 1) * a_e` over its 16 elements
//!    (i32; `|c - 1| <= 2` and `|a| <= 127`, so `|isum_g| <= 16 * 2 * 127` and its conversion to
//!    f32 is exact).
//! 2. Floats, eight running sums `acc[0..8]` starting at `+0.0`, groups in order
//!    `g = 0, 1, ...`, each operation rounded to f32, never fused:
//!    - T2: `acc[g % 8] += (isum_g as f32) * acts.d[g]`;
//!    - TQ1_0, TQ2_0, TQ2W: `acc[g % 8] += (dw * acts.d[g]) * (isum_g as f32)` with `dw` the f16 scale
//!      of the block that holds group `g`, as f32.
//! 3. `out[r] = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))`.
//!
//! The eight sums are the eight lanes of one AVX2 register (two NEON registers), so a SIMD kernel
//! following these steps gives the same bits. A row whose group count is not a multiple of eight
//! may add `+0.0` to the unused sums: `acc` is never `-0.0` (it starts at `+0.0`, and in
//! round-to-nearest `x + y` is `-0.0` only when both are), so that changes nothing.
//!
//! # The small-batch product (gemm)
//!
//! `gemm_<type>(w, acts, nb, out)` multiplies the same rows by `nb` activation vectors: `acts`
//! holds `nb` token rows one after the other (`acts.len() / nb` columns each, with their
//! `d` and `sums` likewise), and `out` holds `nb` rows of `out.len() / nb` results,
//! `out[t * rows + r]`. Its specification is `gemv_<type>` once per token: every result has the
//! bits of the matching gemv, whatever the ISA, so prefill and decode agree exactly. SIMD versions
//! unpack each weight once and apply it to several tokens.
//!
//! # Argument checks
//!
//! Every function panics (the SIMD kernels run the same checks) when `acts.len()` is not a
//! multiple of the block length, when `acts.d` or `acts.sums` do not hold `acts.len() / 16`
//! values, or when `w` does not hold exactly `out.len()` rows.

use crate::acts::ActsQ8;
pub(crate) use crate::acts::QS;
use crate::scalar::f16_at;
use crate::KernelError;
/// Weights per T2 block.
pub const T2_BLOCK: usize = 64;
/// Bytes per T2 block.
pub const T2_BYTES: usize = 16;
/// Weights per TQ1_0 / TQ2_0 block.
pub const QK_K: usize = 256;
/// Bytes per TQ1_0 block.
pub const TQ1_0_BYTES: usize = 54;
/// Bytes per TQ2_0 block.
pub const TQ2_0_BYTES: usize = 66;

/// `3^n` for the TQ1_0 digits.
pub(crate) const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// Checks the shape of a ternary gemv and returns the bytes per row.
pub(crate) fn check_gemv_ternary(
    w: &[u8],
    acts: &ActsQ8<'_>,
    rows: usize,
    block_len: usize,
    block_bytes: usize,
    name: &str,
) -> usize {
    let cols = acts.qs.len();
    assert!(
        cols.is_multiple_of(block_len),
        "gemv {name}: {cols} columns is not a multiple of {block_len}"
    );
    let ng = cols / QS;
    assert!(
        acts.d.len() == ng && acts.sums.len() == ng,
        "gemv {name}: activations have {cols} values but {} scales and {} sums (expected {ng}, \
         one per {QS} values)",
        acts.d.len(),
        acts.sums.len()
    );
    let row_bytes = cols / block_len * block_bytes;
    assert!(
        Some(w.len()) == rows.checked_mul(row_bytes),
        "gemv {name}: {rows} rows of {cols} columns need {} weight bytes, got {}",
        rows.saturating_mul(row_bytes),
        w.len()
    );
    row_bytes
}

/// Checks that `src` holds exactly the blocks for `n` elements.
fn check_dequant(src: &[u8], n: usize, block_len: usize, block_bytes: usize, name: &str) {
    assert!(
        n.is_multiple_of(block_len),
        "dequantize {name}: {n} values is not a multiple of {block_len}"
    );
    assert!(
        src.len() == n / block_len * block_bytes,
        "dequantize {name}: {n} values need {} bytes, got {}",
        n / block_len * block_bytes,
        src.len()
    );
}

/// The byte and the bit shift of T2 block element `e` (`0..64`): byte `4 (e / 16) + e % 4`,
/// shift `2 ((e % 16) / 4)`.
#[inline(always)]
pub const fn t2_position(e: usize) -> (usize, u32) {
    (4 * (e / 16) + e % 4, 2 * ((e % 16) / 4) as u32)
}

/// The final reduction of the eight running sums (step 3 of the specification).
#[inline(always)]
pub(crate) fn reduce8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// The TQ1_0 digit `n` of byte `b`: a value in `0..3`.
#[inline(always)]
pub(crate) fn trit(b: u8, n: usize) -> i32 {
    ((b.wrapping_mul(POW3[n]) as u16 * 3) >> 8) as i32
}

/// How the I2_S tensor of a file packs its codes (see the module docs): bitnet.cpp writes blocks
/// of 128 weights in 32 bytes when built for x86 and of 64 in 16 bytes when built for ARM, and
/// records neither in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I2sLayout {
    /// Blocks of 128 weights (bitnet.cpp built for x86; the published models).
    X86,
    /// Blocks of 64 weights (bitnet.cpp built for ARM).
    Arm,
}

impl I2sLayout {
    /// Bytes per block (`G` in the module docs); a block holds four times as many weights.
    pub const fn block_bytes(self) -> usize {
        match self {
            I2sLayout::X86 => 32,
            I2sLayout::Arm => 16,
        }
    }
}

/// Dequantizes a whole I2_S tensor: `data` is its bytes as the file stores them (`n / 4` bytes
/// of codes, then the 32-byte trailer whose first four bytes are the f32 scale), `dst` its `n`
/// weights, `scale * (c - 1)` each. Returns the scale.
///
/// Errors: `n` not a whole number of `layout`'s blocks, `data` not `n / 4 + 32` bytes, or a
/// scale that is not finite.
pub fn dequantize_i2_s(
    data: &[u8],
    dst: &mut [f32],
    layout: I2sLayout,
) -> Result<f32, KernelError> {
    let n = dst.len();
    let g = layout.block_bytes();
    if !n.is_multiple_of(4 * g) {
        return Err(KernelError::BadShape(
            "I2_S: the tensor is not a whole number of blocks",
        ));
    }
    if data.len() != n / 4 + 32 {
        return Err(KernelError::BadShape(
            "I2_S: the tensor's bytes are not its codes and a 32-byte trailer",
        ));
    }
    let (codes, trailer) = data.split_at(n / 4);
    let scale = f32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    if !scale.is_finite() {
        return Err(KernelError::BadShape(
            "I2_S: the tensor's scale is not finite",
        ));
    }
    for (blk, out) in codes.chunks_exact(g).zip(dst.chunks_exact_mut(4 * g)) {
        for (k, part) in out.chunks_exact_mut(g).enumerate() {
            for (p, v) in part.iter_mut().enumerate() {
                let c = (blk[p] >> (6 - 2 * k)) & 3;
                *v = scale * (c as f32 - 1.0);
            }
        }
    }
    Ok(scale)
}

/// Quantizes one row `src` (a multiple of 64 values) to T2 blocks in `dst` and returns the row
/// scale `s`, so that `src[i] ≈ s * w_i`.
///
/// The BitNet b1.58 "absmean" rule: `s = (Σ |src[i]|) / n`, the sum taken in f32 in index
/// order; `w_i = clamp(round_ties_even(src[i] / s), -1, 1)`, so `|src[i]| <= s / 2` gives 0
/// (an exact half goes to 0, the even neighbour). A row that is already ternary (every nonzero
/// value of one magnitude `m`, as in a ternary model's file) takes `s = m` instead and is kept
/// exactly (absmean would scale it by its share of nonzero weights). If `s` is zero, subnormal or
/// not finite, every weight is 0 and the scale returned is `0.0`. Non-finite inputs give
/// unspecified weights, never a panic.
///
/// Panics if `src.len()` is not a multiple of 64 or `dst.len()` is not `src.len() / 4`.
pub fn quantize_t2_row(src: &[f32], dst: &mut [u8]) -> f32 {
    quantize_t2_row_with(src, dst, t2_scale(src))
}

/// The scale [`quantize_t2_row`] takes for `values` (any number of them: a row, or a whole
/// tensor for BitNet's one scale per tensor): the magnitude shared by every nonzero value if
/// there is one, else the absmean `(Σ |v|) / n` summed in f32 in index order; `0.0` for no values.
pub fn t2_scale(values: &[f32]) -> f32 {
    let n = values.len();
    let magnitude = values.iter().find(|v| **v != 0.0).map(|v| v.abs());
    let ternary = magnitude.filter(|&m| values.iter().all(|v| *v == 0.0 || v.abs() == m));
    match ternary {
        Some(m) => m,
        None if n == 0 => 0.0,
        None => values.iter().fold(0.0f32, |s, v| s + v.abs()) / n as f32,
    }
}

/// [`quantize_t2_row`] with the scale `s` given (see [`t2_scale`]): `w_i = clamp(round_ties_even(
/// src[i] / s), -1, 1)`; if `s` is zero, subnormal or not finite every weight is 0 and `0.0` is
/// returned, else `s`. Same panics.
pub fn quantize_t2_row_with(src: &[f32], dst: &mut [u8], s: f32) -> f32 {
    let n = src.len();
    assert!(
        n.is_multiple_of(T2_BLOCK),
        "quantize_t2_row: {n} values is not a multiple of {T2_BLOCK}"
    );
    assert!(
        dst.len() == n / T2_BLOCK * T2_BYTES,
        "quantize_t2_row: {n} values need {} bytes, got {}",
        n / T2_BLOCK * T2_BYTES,
        dst.len()
    );
    let ok = s.is_finite() && s >= f32::MIN_POSITIVE;
    for (blk, xs) in dst
        .chunks_exact_mut(T2_BYTES)
        .zip(src.chunks_exact(T2_BLOCK))
    {
        blk.fill(0);
        for (e, &x) in xs.iter().enumerate() {
            let w = if ok {
                libm::rintf(x / s).clamp(-1.0, 1.0) as i32
            } else {
                0
            };
            let (byte, shift) = t2_position(e);
            blk[byte] |= ((w + 1) as u8) << shift;
        }
    }
    if ok {
        s
    } else {
        0.0
    }
}

/// Dequantizes T2 blocks to the unscaled weights `c - 1` (`-1.0`, `0.0` or `1.0` for codes the
/// quantizer writes): `dst.len()` values (a multiple of 64) from `src`. Multiply by the row scale
/// for the real values.
pub fn dequantize_t2(src: &[u8], dst: &mut [f32]) {
    check_dequant(src, dst.len(), T2_BLOCK, T2_BYTES, "T2");
    for (blk, y) in src
        .chunks_exact(T2_BYTES)
        .zip(dst.chunks_exact_mut(T2_BLOCK))
    {
        for (e, y) in y.iter_mut().enumerate() {
            let (byte, shift) = t2_position(e);
            *y = (((blk[byte] >> shift) & 3) as i32 - 1) as f32;
        }
    }
}

/// Dequantizes TQ2_0 blocks: `dst.len()` values (a multiple of 256) from `src`, each
/// `d * (c - 1)` in f32 (bit-identical to gguf-py's reference).
pub fn dequantize_tq2_0(src: &[u8], dst: &mut [f32]) {
    dequantize_2bit_blocks(src, dst, "TQ2_0", |e| {
        let (h, l, m) = (e / 128, (e / 32) % 4, e % 32);
        (32 * h + m, 2 * l as u32)
    });
}

/// Dequantizes TQ2W blocks (see [`tq2w_from_tq2_0`]): the values of the TQ2_0 blocks they were
/// made from.
pub fn dequantize_tq2w(src: &[u8], dst: &mut [f32]) {
    dequantize_2bit_blocks(src, dst, "TQ2W", tq2w_position);
}

/// The 66-byte blocks of TQ2_0 or TQ2W, whose element `e` has its code at `position(e)` (byte,
/// bit shift): `d * (c - 1)` with the block's f16 `d`.
fn dequantize_2bit_blocks(
    src: &[u8],
    dst: &mut [f32],
    name: &str,
    position: impl Fn(usize) -> (usize, u32),
) {
    check_dequant(src, dst.len(), QK_K, TQ2_0_BYTES, name);
    for (blk, y) in src
        .chunks_exact(TQ2_0_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = f16_at(blk, 64);
        for (e, y) in y.iter_mut().enumerate() {
            let (byte, shift) = position(e);
            let c = (blk[byte] >> shift) & 3;
            *y = d * (c as i32 - 1) as f32;
        }
    }
}

/// The TQ1_0 digit of element `e` (`0..256`) of block `blk`, in `0..3`.
#[inline(always)]
fn tq1_trit(blk: &[u8], e: usize) -> i32 {
    if e < 160 {
        trit(blk[e % 32], e / 32)
    } else if e < 240 {
        trit(blk[32 + (e - 160) % 16], (e - 160) / 16)
    } else {
        trit(blk[48 + (e - 240) % 4], (e - 240) / 4)
    }
}

/// Dequantizes TQ1_0 blocks: `dst.len()` values (a multiple of 256) from `src`, each
/// `d * (trit - 1)` in f32 (bit-identical to gguf-py's reference).
pub fn dequantize_tq1_0(src: &[u8], dst: &mut [f32]) {
    check_dequant(src, dst.len(), QK_K, TQ1_0_BYTES, "TQ1_0");
    for (blk, y) in src
        .chunks_exact(TQ1_0_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = f16_at(blk, 52);
        for (e, y) in y.iter_mut().enumerate() {
            *y = d * (tq1_trit(blk, e) - 1) as f32;
        }
    }
}

/// Shared row loop of the spec: `isum(row, g)` is the exact integer dot of group `g` of the row,
/// `scale(row, g)` the weight scale of its block (`None` for T2).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemv_rows(
    w: &[u8],
    acts: &ActsQ8<'_>,
    out: &mut [f32],
    block_len: usize,
    block_bytes: usize,
    name: &str,
    codes: impl Fn(&[u8], usize) -> [i32; QS],
    scale: impl Fn(&[u8]) -> Option<f32>,
) {
    let row_bytes = check_gemv_ternary(w, acts, out.len(), block_len, block_bytes, name);
    if row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    let gpb = block_len / QS;
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        let mut acc = [0.0f32; 8];
        for (b, blk) in row.chunks_exact(block_bytes).enumerate() {
            let dw = scale(blk);
            for k in 0..gpb {
                let g = b * gpb + k;
                let a = &acts.qs[g * QS..(g + 1) * QS];
                let c = codes(blk, k);
                let isum: i32 = c.iter().zip(a).map(|(&c, &a)| (c - 1) * a as i32).sum();
                let t = match dw {
                    None => isum as f32 * acts.d[g],
                    Some(dw) => (dw * acts.d[g]) * isum as f32,
                };
                acc[g % 8] += t;
            }
        }
        *o = reduce8(&acc);
    }
}

/// `out[r] = Σ_c w[r][c] a[c]`, unscaled, for T2 weights `w` (`out.len()` rows of `acts.len()`
/// columns, a multiple of 64); multiply by the row scales for the real product. Order in the
/// module docs.
pub fn gemv_t2(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(
        w,
        acts,
        out,
        T2_BLOCK,
        T2_BYTES,
        "T2",
        |blk, k| {
            core::array::from_fn(|i| {
                let (byte, shift) = t2_position(16 * k + i);
                ((blk[byte] >> shift) & 3) as i32
            })
        },
        |_| None,
    );
}

/// `out[r] = Σ_c W[r][c] a[c]` for TQ2_0 weights (block scales applied; columns a multiple of
/// 256). Order in the module docs.
pub fn gemv_tq2_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(
        w,
        acts,
        out,
        QK_K,
        TQ2_0_BYTES,
        "TQ2_0",
        |blk, g| {
            let (h, l, s) = (g / 8, (g % 8) / 2, g % 2);
            core::array::from_fn(|m| ((blk[32 * h + 16 * s + m] >> (2 * l)) & 3) as i32)
        },
        |blk| Some(f16_at(blk, 64)),
    );
}

/// The byte and bit shift of element `e` (`0..256`) of a TQ2W block: element `128h + x` (`x` in
/// `0..128`) of window `h` is T2 block element `x % 64` of the 16-byte T2 block `2h + x / 64`.
#[inline(always)]
pub const fn tq2w_position(e: usize) -> (usize, u32) {
    let (byte, shift) = t2_position(e % 64);
    (16 * (e / 64) + byte, shift)
}

/// Rearranges the TQ2_0 blocks of `w` in place into TQ2W blocks (the same codes and scales, the
/// codes in T2's order: see the module docs). `w` must hold whole 66-byte blocks.
pub fn tq2w_from_tq2_0(w: &mut [u8]) {
    assert!(
        w.len().is_multiple_of(TQ2_0_BYTES),
        "TQ2_0 to TQ2W: {} bytes is not a whole number of blocks",
        w.len()
    );
    // Per half block (elements `x` in `0..128`): TQ2_0 keeps `x` in byte `x % 32` at bits
    // `2 (x / 32)`, TQ2W as `pack_tq2w_half` says: unpack the 128 codes, then pack them again.
    for half in w
        .chunks_exact_mut(TQ2_0_BYTES)
        .flat_map(|blk| blk[..64].chunks_exact_mut(32))
    {
        let mut c = [0u8; 128];
        for (m, &b) in half.iter().enumerate() {
            for l in 0..4 {
                c[32 * l + m] = (b >> (2 * l)) & 3;
            }
        }
        pack_tq2w_half(&c, half.try_into().expect("32 bytes"));
    }
}

/// Packs the codes `c` of half a TQ2W block (elements `x` in `0..128`) into its 32 bytes: `x` in
/// byte `4 (x / 16) + x % 4` at bits `2 ((x % 16) / 4)` ([`tq2w_position`]).
#[inline(always)]
fn pack_tq2w_half(c: &[u8; 128], half: &mut [u8; 32]) {
    for (j, out) in half.iter_mut().enumerate() {
        let x = 16 * (j / 4) + j % 4;
        *out = c[x] | c[x + 4] << 2 | c[x + 8] << 4 | c[x + 12] << 6;
    }
}

/// Writes the TQ1_0 blocks of `src` into `dst` as TQ2W blocks, one for one: the same ternary
/// values and f16 scales, in 66 bytes per 256 weights instead of 54, which the `avx2` tier
/// multiplies about twice as fast (TQ1_0's base-3 digits take multiplies to unpack, TQ2W's
/// codes one shift and one mask). `src` must hold whole 54-byte blocks and `dst` as many 66-byte
/// ones.
pub fn tq2w_from_tq1_0(src: &[u8], dst: &mut [u8]) {
    assert!(
        src.len().is_multiple_of(TQ1_0_BYTES) && dst.len() == src.len() / TQ1_0_BYTES * TQ2_0_BYTES,
        "TQ1_0 to TQ2W: {} bytes to {} is not a whole number of blocks each",
        src.len(),
        dst.len()
    );
    // Every byte's five digits, looked up rather than computed per element (a model's worth of
    // blocks is rewritten at load).
    const DIGITS: [[u8; 5]; 256] = {
        let mut t = [[0u8; 5]; 256];
        let mut b = 0;
        while b < 256 {
            let mut n = 0;
            while n < 5 {
                t[b][n] = ((((b as u8).wrapping_mul(POW3[n]) as u16) * 3) >> 8) as u8;
                n += 1;
            }
            b += 1;
        }
        t
    };
    for (s, d) in src
        .chunks_exact(TQ1_0_BYTES)
        .zip(dst.chunks_exact_mut(TQ2_0_BYTES))
    {
        // The 256 codes in element order, each TQ1_0 byte's digits taken in turn (module docs).
        let s: &[u8; TQ1_0_BYTES] = s.try_into().expect("a whole block");
        let d: &mut [u8; TQ2_0_BYTES] = d.try_into().expect("a whole block");
        let mut c = [0u8; QK_K];
        for m in 0..32 {
            let t = &DIGITS[s[m] as usize];
            for n in 0..5 {
                c[32 * n + m] = t[n];
            }
        }
        for m in 0..16 {
            let t = &DIGITS[s[32 + m] as usize];
            for n in 0..5 {
                c[160 + 16 * n + m] = t[n];
            }
        }
        for j in 0..4 {
            let t = &DIGITS[s[48 + j] as usize];
            for n in 0..4 {
                c[240 + 4 * n + j] = t[n];
            }
        }
        let (lo, hi) = c.split_at(128);
        let (dlo, dhi) = d[..64].split_at_mut(32);
        pack_tq2w_half(
            lo.try_into().expect("128 codes"),
            dlo.try_into().expect("32 bytes"),
        );
        pack_tq2w_half(
            hi.try_into().expect("128 codes"),
            dhi.try_into().expect("32 bytes"),
        );
        d[64..66].copy_from_slice(&s[52..54]);
    }
}

/// `out[r] = Σ_c W[r][c] a[c]` for TQ2W weights: [`gemv_tq2_0`] of the TQ2_0 blocks they were
/// made from, the same bits. Order in the module docs.
pub fn gemv_tq2w(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(
        w,
        acts,
        out,
        QK_K,
        TQ2_0_BYTES,
        "TQ2W",
        |blk, g| {
            core::array::from_fn(|m| {
                let (byte, shift) = tq2w_position(16 * g + m);
                ((blk[byte] >> shift) & 3) as i32
            })
        },
        |blk| Some(f16_at(blk, 64)),
    );
}

/// `out[r] = Σ_c W[r][c] a[c]` for TQ1_0 weights (block scales applied; columns a multiple of
/// 256). Order in the module docs.
pub fn gemv_tq1_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(
        w,
        acts,
        out,
        QK_K,
        TQ1_0_BYTES,
        "TQ1_0",
        |blk, g| core::array::from_fn(|m| tq1_trit(blk, 16 * g + m)),
        |blk| Some(f16_at(blk, 52)),
    );
}

/// Checks the shape of a gemm of `nb` tokens and returns `(cols, rows)` per token.
pub(crate) fn check_gemm(
    acts: &ActsQ8<'_>,
    nb: usize,
    out_len: usize,
    name: &str,
) -> (usize, usize) {
    assert!(nb > 0, "gemm {name}: no tokens");
    let n = acts.qs.len();
    assert!(
        n.is_multiple_of(nb) && out_len.is_multiple_of(nb),
        "gemm {name}: {n} activations and {out_len} results are not {nb} whole token rows"
    );
    (n / nb, out_len / nb)
}

/// Token `t`'s activations of a gemm whose tokens have `cols` columns each.
#[inline(always)]
pub(crate) fn token_acts<'a>(acts: &ActsQ8<'a>, cols: usize, t: usize) -> ActsQ8<'a> {
    let g = cols / QS;
    ActsQ8 {
        qs: &acts.qs[t * cols..(t + 1) * cols],
        d: &acts.d[t * g..(t + 1) * g],
        sums: &acts.sums[t * g..(t + 1) * g],
    }
}

/// The activations of tokens `t0 .. t0 + T` of a gemm's `nb` token rows, as a SIMD gemm's pass
/// takes them: a group that runs past the last token repeats it (its results are dropped).
#[cfg(target_arch = "aarch64")]
pub(crate) fn token_group<'a, const T: usize>(
    acts: &ActsQ8<'a>,
    cols: usize,
    nb: usize,
    t0: usize,
) -> [ActsQ8<'a>; T] {
    core::array::from_fn(|t| token_acts(acts, cols, (t0 + t).min(nb - 1)))
}

/// The specification of every gemm: `gemv` once per token (see the module docs).
fn gemm_by_gemv(
    w: &[u8],
    acts: &ActsQ8<'_>,
    nb: usize,
    out: &mut [f32],
    name: &str,
    gemv: fn(&[u8], &ActsQ8<'_>, &mut [f32]),
) {
    let (cols, rows) = check_gemm(acts, nb, out.len(), name);
    for (t, o) in out.chunks_exact_mut(rows.max(1)).enumerate().take(nb) {
        gemv(w, &token_acts(acts, cols, t), o);
    }
    if rows == 0 {
        // No rows: still check the weights against each token's shape.
        gemv(w, &token_acts(acts, cols, 0), &mut []);
    }
}

/// `out[t * rows + r] = Σ_c w[r][c] a_t[c]`, unscaled, for `nb` tokens of activations in `acts`
/// and T2 weights `w`: [`gemv_t2`] once per token (see the module docs).
pub fn gemm_t2(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    gemm_by_gemv(w, acts, nb, out, "T2", gemv_t2);
}

/// [`gemv_tq2_0`] for `nb` tokens (see the module docs).
pub fn gemm_tq2_0(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    gemm_by_gemv(w, acts, nb, out, "TQ2_0", gemv_tq2_0);
}

/// [`gemv_tq2w`] for `nb` tokens (see the module docs).
pub fn gemm_tq2w(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    gemm_by_gemv(w, acts, nb, out, "TQ2W", gemv_tq2w);
}
