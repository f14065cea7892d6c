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
//! For every row `r` and every block `b` of the row (activations block `b`: values `a_j`, scale
//! `da = acts.d[b]`, integer sum `sa = acts.sums[b]`):
//!
//! 1. `isum`: the exact `i32` dot product of the block's integer weights with `a_j`:
//!    Q4_0 `Σ (q_j - 8) a_j`, Q4_1 `Σ q_j a_j`, Q5_0 `Σ (q5_j - 16) a_j`, Q5_1 `Σ q5_j a_j`,
//!    Q8_0 `Σ qs_j a_j` (integers: any evaluation order gives the same value);
//! 2. the block term in f32, each operation rounded separately (no fused multiply-add):
//!    `t = (dw * da) * (isum as f32)`, and for Q4_1/Q5_1
//!    `t = (dw * da) * (isum as f32) + (mw * da) * (sa as f32)`;
//! 3. `acc = acc + t`, with `acc` starting at `0.0` and blocks taken in order `b = 0, 1, ...`;
//!    `out[r] = acc`.
//!
//! This order is cheap for SIMD code (one horizontal integer reduction per block, rows in lanes),
//! so the SIMD kernels reproduce it bit for bit.

use crate::acts::{ActsQ8, ActsQ8Mut, QK};
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
    assert!(
        acts.d.len() == nb && acts.sums.len() == nb,
        "gemv {name}: activations have {} values but {} scales and {} sums (expected {nb})",
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

/// Quantizes `x` to int8 blocks (the rule is in [`crate::acts`]).
///
/// Per block of 32: `amax = max |x_j|`, `d = amax / 127`; if `d` is below `f32::MIN_POSITIVE`
/// (zero or subnormal) the block is all zeros with `d = 0`, otherwise `q_j = rintf(x_j * (1 / d))`
/// (ties to even) and `sums = Σ q_j`. Values lie in `-127..=127`. Inputs must be finite (others
/// give unspecified values, never undefined behaviour).
///
/// Panics if `x.len()` is not a multiple of 32 or `out` does not have room for exactly `x.len()`.
pub fn quantize_acts(x: &[f32], out: &mut ActsQ8Mut<'_>) {
    check_acts(x, out);
    for (b, xb) in x.chunks_exact(QK).enumerate() {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let qb = &mut out.qs[b * QK..(b + 1) * QK];
        let mut sum = 0i32;
        if d < f32::MIN_POSITIVE {
            qb.fill(0);
            out.d[b] = 0.0;
        } else {
            let id = 1.0 / d;
            for (q, &v) in qb.iter_mut().zip(xb) {
                let r = libm::rintf(v * id) as i32;
                *q = r as i8;
                sum += r;
            }
            out.d[b] = d;
        }
        out.sums[b] = sum;
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
        out.qs.len() == n && out.d.len() == n / QK && out.sums.len() == n / QK,
        "quantize_acts: {n} values need {n} qs, {} d and {} sums; got {}, {}, {}",
        n / QK,
        n / QK,
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

/// Exact integer dot product of 32 weights (`offset` subtracted) with 32 activations.
#[inline(always)]
fn idot(q: &[u8; QK], offset: i32, a: &[i8]) -> i32 {
    q.iter()
        .zip(a)
        .map(|(&q, &a)| (q as i32 - offset) * a as i32)
        .sum()
}

/// Shared row loop of the spec: `term(block bytes, a_j, da, sa)` gives the f32 block term.
#[inline(always)]
fn gemv_rows(
    w: &[u8],
    acts: &ActsQ8<'_>,
    out: &mut [f32],
    block_bytes: usize,
    name: &str,
    term: impl Fn(&[u8], &[i8], f32, i32) -> f32,
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
            acc += term(blk, a, acts.d[b], acts.sums[b]);
        }
        *o = acc;
    }
}

/// `out[r] = Σ W[r][c] a[c]` for Q4_0 weights `w` (`out.len()` rows of `acts.len()` columns).
pub fn gemv_q4_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(w, acts, out, Q4_0_BYTES, "Q4_0", |blk, a, da, _| {
        let isum = idot(&nibbles(&blk[2..18]), 8, a);
        (f16_at(blk, 0) * da) * isum as f32
    });
}

/// `out[r] = Σ W[r][c] a[c]` for Q4_1 weights (offset term from `acts.sums`).
pub fn gemv_q4_1(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(w, acts, out, Q4_1_BYTES, "Q4_1", |blk, a, da, sa| {
        let isum = idot(&nibbles(&blk[4..20]), 0, a);
        (f16_at(blk, 0) * da) * isum as f32 + (f16_at(blk, 2) * da) * sa as f32
    });
}

/// `out[r] = Σ W[r][c] a[c]` for Q5_0 weights.
pub fn gemv_q5_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(w, acts, out, Q5_0_BYTES, "Q5_0", |blk, a, da, _| {
        let isum = idot(&fives(u32_at(blk, 2), &blk[6..22]), 16, a);
        (f16_at(blk, 0) * da) * isum as f32
    });
}

/// `out[r] = Σ W[r][c] a[c]` for Q5_1 weights (offset term from `acts.sums`).
pub fn gemv_q5_1(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(w, acts, out, Q5_1_BYTES, "Q5_1", |blk, a, da, sa| {
        let isum = idot(&fives(u32_at(blk, 4), &blk[8..24]), 0, a);
        (f16_at(blk, 0) * da) * isum as f32 + (f16_at(blk, 2) * da) * sa as f32
    });
}

/// `out[r] = Σ W[r][c] a[c]` for Q8_0 weights.
pub fn gemv_q8_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    gemv_rows(w, acts, out, Q8_0_BYTES, "Q8_0", |blk, a, da, _| {
        let isum: i32 = blk[2..34]
            .iter()
            .zip(a)
            .map(|(&q, &a)| (q as i8) as i32 * a as i32)
            .sum();
        (f16_at(blk, 0) * da) * isum as f32
    });
}
