//! Scalar dequantization and int8 matrix-vector products for the legacy 32-element block types
//! (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), and the activation quantizer they all share.
//!
//! Block layouts, little-endian, exactly as GGUF stores them (`d`, `m` are IEEE f16):
//!
//! | type | bytes | layout                                   | element `j` (0..32)              |
//! |------|-------|------------------------------------------|----------------------------------|
//! | Q4_0 | 18    | `d`, `qs[16]`                            | `d * (q_j - 8)`                  |
//! | Q4_1 | 20    | `d`, `m`, `qs[16]`                       | `d * q_j + m`                    |
//! | Q5_0 | 22    | `d`, `qh: u32`, `qs[16]`                 | `d * ((q_j \| h_j << 4) - 16)`   |
//! | Q5_1 | 24    | `d`, `m`, `qh: u32`, `qs[16]`            | `d * (q_j \| h_j << 4) + m`      |
//! | Q8_0 | 34    | `d`, `qs[32]: i8`                        | `d * qs[j]`                      |
//!
//! For the 4-bit fields, byte `j < 16` of `qs` holds element `j` in its low nibble and element
//! `j + 16` in its high nibble; `h_j` is bit `j` of `qh`.
//!
//! ## The gemv specification
//!
//! For every row `r` and every block `b` of the row, the activations of the block are the two
//! scale groups `g0 = 2b` (values `a_0..a_15`) and `g1 = 2b + 1` (values `a_16..a_31`), with scales
//! `da0 = acts.d[g0]`, `da1 = acts.d[g1]` and integer sums `sa0 = acts.sums[g0]`,
//! `sa1 = acts.sums[g1]`; `dw` (and `mw`) are the block's f16 scales as f32:
//!
//! 1. `isum0`, `isum1`: the exact `i32` dot products of the block's integer weights with the
//!    activations of each half (`j in 0..16` and `j in 16..32`):
//!    Q4_0 `Σ (q_j - 8) a_j`, Q4_1 `Σ q_j a_j`, Q5_0 `Σ (q5_j - 16) a_j`, Q5_1 `Σ q5_j a_j`,
//!    Q8_0 `Σ qs_j a_j` (integers: any evaluation order gives the same value);
//! 2. the block term in f32, each operation rounded separately (no fused multiply-add), evaluated
//!    left to right as parenthesized:
//!    `t = (dw * da0) * (isum0 as f32) + (dw * da1) * (isum1 as f32)`, and for Q4_1/Q5_1
//!    `t = ((dw * da0) * (isum0 as f32) + (dw * da1) * (isum1 as f32)) + mw * c` with
//!    `c = da0 * (sa0 as f32) + da1 * (sa1 as f32)` (the same for every row);
//! 3. `acc = acc + t`, with `acc` starting at `0.0` and blocks taken in order `b = 0, 1, ...`;
//!    `out[r] = acc`.
//!
//! This order is cheap for SIMD code (the two group sums of eight rows come out of one
//! horizontal-add tree, rows in lanes), so the SIMD kernels reproduce it bit for bit.

use crate::acts::{ActsQ8, ActsQ8Mut, QK, QS};
use crate::scalar::{f16_at, u32_at};

/// Bytes per Q4_0 block.
pub const Q4_0_BYTES: usize = 18;
/// Bytes per Q4_1 block.
pub const Q4_1_BYTES: usize = 20;
/// Bytes per Q5_0 block.
pub const Q5_0_BYTES: usize = 22;
/// Bytes per Q5_1 block.
pub const Q5_1_BYTES: usize = 24;
/// Bytes per Q8_0 block.
pub const Q8_0_BYTES: usize = 34;

/// Checks that `src` holds exactly the blocks for `n` elements of a type with `block_bytes`.
fn check_dequant(src: &[u8], n: usize, block_bytes: usize, name: &str) {
    assert!(
        n.is_multiple_of(QK),
        "dequantize {name}: {n} values is not a multiple of {QK}"
    );
    assert!(
        src.len() == n / QK * block_bytes,
        "dequantize {name}: {n} values need {} bytes, got {}",
        n / QK * block_bytes,
        src.len()
    );
}

/// Checks the shape of a quantized gemv and returns (blocks per row, bytes per row).
pub(crate) fn check_gemv(
    w: &[u8],
    acts: &ActsQ8<'_>,
    rows: usize,
    block_bytes: usize,
    name: &str,
) -> (usize, usize) {
    let cols = acts.qs.len();
    assert!(
        cols.is_multiple_of(QK),
        "gemv {name}: {cols} columns is not a multiple of {QK}"
    );
    let nb = cols / QK;
    let ng = cols / QS;
    assert!(
        acts.d.len() == ng && acts.sums.len() == ng,
        "gemv {name}: activations have {} values but {} scales and {} sums (expected {ng}, \
         one per {QS} values)",
        cols,
        acts.d.len(),
        acts.sums.len()
    );
    let row_bytes = nb * block_bytes;
    assert!(
        Some(w.len()) == rows.checked_mul(row_bytes),
        "gemv {name}: {rows} rows of {cols} columns need {} weight bytes, got {}",
        rows.saturating_mul(row_bytes),
        w.len()
    );
    (nb, row_bytes)
}

/// Quantizes `x` to int8 with one scale per group of 16 (the rule is in [`crate::acts`]).
///
/// Per group of [`QS`] = 16: `amax = max |x_j|`, `d = amax / 127`; if `d` is below
/// `f32::MIN_POSITIVE` (zero or subnormal) the group is all zeros with `d = 0`, otherwise
/// `q_j = rintf(x_j * (1 / d))` (ties to even) and `sums = Σ q_j`. Values lie in `-127..=127`.
/// Inputs must be finite (others give unspecified values, never undefined behaviour).
///
/// Panics if `x.len()` is not a multiple of 32 or `out` does not have room for exactly `x.len()`
/// values (`x.len()` qs, `x.len() / 16` scales and sums).
pub fn quantize_acts(x: &[f32], out: &mut ActsQ8Mut<'_>) {
    check_acts(x, out);
    for (g, xg) in x.chunks_exact(QS).enumerate() {
        let amax = xg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let qg = &mut out.qs[g * QS..(g + 1) * QS];
        let mut sum = 0i32;
        if d < f32::MIN_POSITIVE {
            qg.fill(0);
            out.d[g] = 0.0;
        } else {
            let id = 1.0 / d;
            for (q, &v) in qg.iter_mut().zip(xg) {
                let r = libm::rintf(v * id) as i32;
                *q = r as i8;
                sum += r;
            }
            out.d[g] = d;
        }
        out.sums[g] = sum;
    }
}

/// Checks the shapes for [`quantize_acts`].
pub(crate) fn check_acts(x: &[f32], out: &ActsQ8Mut<'_>) {
    let n = x.len();
    assert!(
        n.is_multiple_of(QK),
        "quantize_acts: {n} values is not a multiple of {QK}"
    );
    assert!(
        out.qs.len() == n && out.d.len() == n / QS && out.sums.len() == n / QS,
        "quantize_acts: {n} values need {n} qs, {} d and {} sums (one per {QS}); got {}, {}, {}",
        n / QS,
        n / QS,
        out.qs.len(),
        out.d.len(),
        out.sums.len()
    );
}

/// The 32 unsigned 4-bit values of a block (`qs` is 16 bytes), in element order.
#[inline(always)]
fn nibbles(qs: &[u8]) -> [u8; QK] {
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        q[j] = qs[j] & 0x0F;
        q[j + QK / 2] = qs[j] >> 4;
    }
    q
}

/// The 32 unsigned 5-bit values of a block from its high bits `qh` and nibbles `qs`.
#[inline(always)]
fn fives(qh: u32, qs: &[u8]) -> [u8; QK] {
    let mut q = nibbles(qs);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((qh >> j) & 1) as u8) << 4;
    }
    q
}

/// Dequantizes Q4_0 blocks: `dst.len()` values (a multiple of 32) from `src`.
pub fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    check_dequant(src, dst.len(), Q4_0_BYTES, "Q4_0");
    for (blk, y) in src.chunks_exact(Q4_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(blk, 0);
        for (y, q) in y.iter_mut().zip(nibbles(&blk[2..18])) {
            *y = d * (q as i32 - 8) as f32;
        }
    }
}

/// Dequantizes Q4_1 blocks: `dst.len()` values (a multiple of 32) from `src`.
pub fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    check_dequant(src, dst.len(), Q4_1_BYTES, "Q4_1");
    for (blk, y) in src.chunks_exact(Q4_1_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
        for (y, q) in y.iter_mut().zip(nibbles(&blk[4..20])) {
            *y = d * q as f32 + m;
        }
    }
}

/// Dequantizes Q5_0 blocks: `dst.len()` values (a multiple of 32) from `src`.
pub fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    check_dequant(src, dst.len(), Q5_0_BYTES, "Q5_0");
    for (blk, y) in src.chunks_exact(Q5_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(blk, 0);
        for (y, q) in y.iter_mut().zip(fives(u32_at(blk, 2), &blk[6..22])) {
            *y = d * (q as i32 - 16) as f32;
        }
    }
}

/// Dequantizes Q5_1 blocks: `dst.len()` values (a multiple of 32) from `src`.
pub fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    check_dequant(src, dst.len(), Q5_1_BYTES, "Q5_1");
    for (blk, y) in src.chunks_exact(Q5_1_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
        for (y, q) in y.iter_mut().zip(fives(u32_at(blk, 4), &blk[8..24])) {
            *y = d * q as f32 + m;
        }
    }
}

/// Dequantizes Q8_0 blocks: `dst.len()` values (a multiple of 32) from `src`.
pub fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    check_dequant(src, dst.len(), Q8_0_BYTES, "Q8_0");
    for (blk, y) in src.chunks_exact(Q8_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(blk, 0);
        for (y, &q) in y.iter_mut().zip(&blk[2..34]) {
            *y = d * (q as i8) as f32;
        }
    }
}

/// Exact integer dot products of the two halves of 32 weights (`offset` subtracted) with their
/// 32 activations: `(Σ_{j<16}, Σ_{j>=16})`.
#[inline(always)]
fn idot2(q: &[u8; QK], offset: i32, a: &[i8]) -> (i32, i32) {
    let half = |q: &[u8], a: &[i8]| -> i32 {
        q.iter()
            .zip(a)
            .map(|(&q, &a)| (q as i32 - offset) * a as i32)
            .sum()
    };
    (half(&q[..QS], &a[..QS]), half(&q[QS..], &a[QS..]))
}

/// The activation scales and sums of block `b`: `(da0, da1, sa0, sa1)`.
#[inline(always)]
fn block_acts(acts: &ActsQ8<'_>, b: usize) -> (f32, f32, i32, i32) {
    (
        acts.d[2 * b],
        acts.d[2 * b + 1],
        acts.sums[2 * b],
        acts.sums[2 * b + 1],
    )
}

/// Step 2 of the spec without the offset: `(dw * da0) * isum0 + (dw * da1) * isum1`.
#[inline(always)]
fn scaled(dw: f32, da0: f32, da1: f32, (i0, i1): (i32, i32)) -> f32 {
    (dw * da0) * i0 as f32 + (dw * da1) * i1 as f32
}

/// Step 2 of the spec with the Q4_1/Q5_1 offset: `scaled(..) + mw * (da0 * sa0 + da1 * sa1)`.
#[inline(always)]
fn scaled_offset(
    dw: f32,
    mw: f32,
    (da0, da1, sa0, sa1): (f32, f32, i32, i32),
    i: (i32, i32),
) -> f32 {
    scaled(dw, da0, da1, i) + mw * (da0 * sa0 as f32 + da1 * sa1 as f32)
}

/// Shared row loop of the spec: `term(block bytes, a_j, (da0, da1, sa0, sa1))` gives the f32
/// block term.
#[inline(always)]
fn gemv_rows(
    w: &[u8],
    acts: &ActsQ8<'_>,
    out: &mut [f32],
    block_bytes: usize,
    name: &str,
    term: impl Fn(&[u8], &[i8], (f32, f32, i32, i32)) -> f32,
) {
    let (nb, row_bytes) = check_gemv(w, acts, out.len(), block_bytes, name);
    if row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        let mut acc = 0.0f32;
        for b in 0..nb {
            let blk = &row[b * block_bytes..(b + 1) * block_bytes];
            let a = &acts.qs[b * QK..(b + 1) * QK];
            acc += term(blk, a, block_acts(acts, b));
        }
        *o = acc;
    }
}

/// `out[r] = Σ W[r][c] a[c]` for Q4_0 weights `w` (`out.len()` rows of `acts.len()` columns).
pub fn gemv_q4_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(
        w,
        acts,
        out,
        Q4_0_BYTES,
        "Q4_0",
        |blk, a, (da0, da1, _, _)| {
            let i = idot2(&nibbles(&blk[2..18]), 8, a);
            scaled(f16_at(blk, 0), da0, da1, i)
        },
    );
}

/// `out[r] = Σ W[r][c] a[c]` for Q4_1 weights (offset term from `acts.sums`).
pub fn gemv_q4_1(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(w, acts, out, Q4_1_BYTES, "Q4_1", |blk, a, ba| {
        let i = idot2(&nibbles(&blk[4..20]), 0, a);
        scaled_offset(f16_at(blk, 0), f16_at(blk, 2), ba, i)
    });
}

/// `out[r] = Σ W[r][c] a[c]` for Q5_0 weights.
pub fn gemv_q5_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(
        w,
        acts,
        out,
        Q5_0_BYTES,
        "Q5_0",
        |blk, a, (da0, da1, _, _)| {
            let i = idot2(&fives(u32_at(blk, 2), &blk[6..22]), 16, a);
            scaled(f16_at(blk, 0), da0, da1, i)
        },
    );
}

/// `out[r] = Σ W[r][c] a[c]` for Q5_1 weights (offset term from `acts.sums`).
pub fn gemv_q5_1(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(w, acts, out, Q5_1_BYTES, "Q5_1", |blk, a, ba| {
        let i = idot2(&fives(u32_at(blk, 4), &blk[8..24]), 0, a);
        scaled_offset(f16_at(blk, 0), f16_at(blk, 2), ba, i)
    });
}

/// `out[r] = Σ W[r][c] a[c]` for Q8_0 weights.
pub fn gemv_q8_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(
        w,
        acts,
        out,
        Q8_0_BYTES,
        "Q8_0",
        |blk, a, (da0, da1, _, _)| {
            let half = |q: &[u8], a: &[i8]| -> i32 {
                q.iter()
                    .zip(a)
                    .map(|(&q, &a)| (q as i8) as i32 * a as i32)
                    .sum()
            };
            let i = (half(&blk[2..18], &a[..QS]), half(&blk[18..34], &a[QS..]));
            scaled(f16_at(blk, 0), da0, da1, i)
        },
    );
}
