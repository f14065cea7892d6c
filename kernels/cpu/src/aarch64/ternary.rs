//! NEON ternary kernels (T2, TQ2W, TQ2_0, TQ1_0) for ARMv8.0 and for ARMv8.2 with the
//! dot-product extension, bit-exact with [`crate::scalar::ternary`].
//!
//! T2 and TQ2W four rows per pass (each step's activations, activation sums and scales loaded
//! once for the four), TQ2_0 and TQ1_0 one row at a time; four activation groups of 16 per step.
//! The 2-bit codes `c` (0..=3) come out of the weight bytes with one shift and one mask per 16
//! codes.
//!
//! T2 (one 16-byte block per step): the shift by `2s` gives elements `4s .. 4s + 4` of group `k`
//! in bytes `4k .. 4k + 4`; `ld4` of the block's activations as 32-bit words gives them in the
//! same order. With dotprod, four `sdot` into one accumulator leave the four group sums in its
//! lanes directly; on ARMv8.0, `smull`/`smlal` into two i16 vectors (codes are below 128, so
//! reading them as i8 is exact; at most `4 * 3 * 127` per lane), one `addp` and one `saddlp`.
//!
//! TQ2W (TQ2_0's blocks with their codes in T2's order, which the loader makes in memory from
//! TQ2_0): each of a block's four 16-byte steps is a T2 block, unpacked and summed as T2's; the
//! four rows' block scales are widened by one `fcvtl` per block, and the float step multiplies
//! by `dw · d` as TQ2_0's does.
//!
//! TQ2_0 (layout fixed by llama.cpp): two 16-byte halves of a 32-byte chunk at two shifts give
//! four consecutive groups; their sums come from
//! - ARMv8.0: `smull`/`smlal` into i16 pair sums (at most `2 * 3 * 127`), three `addp` levels and
//!   one `saddlp`, or
//! - dotprod: one `sdot` per group into four i32 partial sums, then two `addp` levels.
//!
//! TQ1_0: the base-3 digits come from a byte multiply by `3^n` and two unsigned compares (with
//! 86 and 171) whose masks (-1 where true) are added: the digits negated, so the group sums are
//! `-Σ c·a` and the float step subtracts (exact, see `update_neg`); four consecutive groups per
//! step, then as TQ2_0.
//!
//! Either way the groups `g .. g + 4` end in natural lane order; `isum = Σ c·a − sums[g]` is
//! `Σ (c − 1)·a` by the [`ActsQ8`] invariant `sums[g] = Σ qs`. Two f32 vectors hold the
//! specification's eight running sums (`acc[0..4]` and `acc[4..8]`), updated with its operations
//! (no fused multiply-add) and order, then reduced with its tree: each row reproduces the
//! scalar row bit for bit.
//!
//! `sdot` is emitted with `asm!` (its intrinsic is not stable) inside functions compiled with
//! the `dotprod` feature, which only run after the caller checked the CPU has it.

use core::arch::aarch64::*;
use core::arch::asm;

use crate::acts::ActsQ8;
use crate::scalar::ternary::{
    check_gemm, check_gemv_ternary, token_acts, token_group, QK_K, QS, T2_BLOCK, T2_BYTES,
    TQ1_0_BYTES, TQ2_0_BYTES,
};

/// `acc + Σ` of each four consecutive `a[i] * b[i]` (i8), per i32 lane: one `sdot`.
///
/// # Safety
///
/// The CPU must have the dot-product extension.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` reads and writes only these registers; the caller guarantees the CPU has it.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// The exact `Σ c·a` of four groups (`c[k]` codes, `a[k]` activations), lanes `0..4`, with
/// `smull`/`smlal` (ARMv8.0).
#[inline]
#[target_feature(enable = "neon")]
fn group_sums4_neon(c: [uint8x16_t; 4], a: [int8x16_t; 4]) -> int32x4_t {
    let p: [int16x8_t; 4] = core::array::from_fn(|k| {
        let c = vreinterpretq_s8_u8(c[k]);
        vmlal_s8(
            vmull_s8(vget_low_s8(c), vget_low_s8(a[k])),
            vget_high_s8(c),
            vget_high_s8(a[k]),
        )
    });
    vpaddlq_s16(vpaddq_s16(vpaddq_s16(p[0], p[1]), vpaddq_s16(p[2], p[3])))
}

/// [`group_sums4_neon`] with `sdot`.
///
/// # Safety
///
/// The CPU must have the dot-product extension.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn group_sums4_dot(c: [uint8x16_t; 4], a: [int8x16_t; 4]) -> int32x4_t {
    let z = vdupq_n_s32(0);
    // SAFETY: the caller guarantees the dot-product extension.
    let s: [int32x4_t; 4] =
        core::array::from_fn(|k| unsafe { sdot(z, vreinterpretq_s8_u8(c[k]), a[k]) });
    vpaddq_s32(vpaddq_s32(s[0], s[1]), vpaddq_s32(s[2], s[3]))
}

/// The exact `Σ c·a` of the four groups of a T2 block, lanes `0..4`, from the codes at the four
/// shifts (`c[s]`: elements `4s .. 4s + 4` of group `k` in bytes `4k .. 4k + 4`) and the
/// activations reordered alike (`a[s]`), with `smull`/`smlal` (ARMv8.0).
#[inline]
#[target_feature(enable = "neon")]
fn t2_sums_neon(c: [uint8x16_t; 4], a: [int8x16_t; 4]) -> int32x4_t {
    let c: [int8x16_t; 4] = core::array::from_fn(|s| vreinterpretq_s8_u8(c[s]));
    // Lanes 0..4 group 0 and 4..8 group 1 (low halves); groups 2 and 3 (high halves).
    let mut lo = vmull_s8(vget_low_s8(c[0]), vget_low_s8(a[0]));
    let mut hi = vmull_s8(vget_high_s8(c[0]), vget_high_s8(a[0]));
    for s in 1..4 {
        lo = vmlal_s8(lo, vget_low_s8(c[s]), vget_low_s8(a[s]));
        hi = vmlal_s8(hi, vget_high_s8(c[s]), vget_high_s8(a[s]));
    }
    vpaddlq_s16(vpaddq_s16(lo, hi))
}

/// [`t2_sums_neon`] with `sdot`: four `sdot` into one accumulator, no reduction.
///
/// # Safety
///
/// The CPU must have the dot-product extension.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn t2_sums_dot(c: [uint8x16_t; 4], a: [int8x16_t; 4]) -> int32x4_t {
    let mut acc = vdupq_n_s32(0);
    for s in 0..4 {
        // SAFETY: the caller guarantees the dot-product extension.
        acc = unsafe { sdot(acc, vreinterpretq_s8_u8(c[s]), a[s]) };
    }
    acc
}

/// The specification's final reduction of `acc[0..4]` (`lo`) and `acc[4..8]` (`hi`).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn reduce8(lo: float32x4_t, hi: float32x4_t) -> f32 {
    // [a0+a4, a1+a5, a2+a6, a3+a7]
    let s = vaddq_f32(lo, hi);
    // [(a0+a4)+(a2+a6), (a1+a5)+(a3+a7)]
    let t = vadd_f32(vget_low_f32(s), vget_high_f32(s));
    vget_lane_f32::<0>(t) + vget_lane_f32::<1>(t)
}

/// The activation sums and scales of groups `g .. g + 4`.
///
/// # Safety
///
/// Groups `g .. g + 4` must exist in `acts` (checked by the caller's shape check).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn group_operands(acts: &ActsQ8<'_>, g: usize) -> (int32x4_t, float32x4_t) {
    // SAFETY: the caller guarantees the four groups exist.
    unsafe {
        (
            vld1q_s32(acts.sums.as_ptr().add(g)),
            vld1q_f32(acts.d.as_ptr().add(g)),
        )
    }
}

/// The running sums updated with four groups starting at group `g` (a multiple of four):
/// `acc[g % 8 ..] += scale * (isum as f32)` with `scale = d[g..g + 4]` (T2) or
/// `dw * d[g..g + 4]` (TQ2_0).
///
/// # Safety
///
/// Groups `g .. g + 4` must exist in `acts` (checked by the caller's shape check).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn update(
    acc: &mut [float32x4_t; 2],
    sums: int32x4_t,
    acts: &ActsQ8<'_>,
    g: usize,
    dw: Option<f32>,
) {
    // SAFETY: the caller guarantees the four groups exist.
    let (s, d) = unsafe { group_operands(acts, g) };
    let isum = vcvtq_f32_s32(vsubq_s32(sums, s));
    let t = match dw {
        None => vmulq_f32(isum, d),
        Some(dw) => vmulq_f32(vmulq_n_f32(d, dw), isum),
    };
    let k = (g / 4) % 2;
    acc[k] = vaddq_f32(acc[k], t);
}

/// [`update`] for TQ1_0 from the negated sums `nsums = -Σ c·a` of four groups (codes from
/// [`neg_trit`]): `isum = -(nsums + sums[g])`, and the running sums take `-((dw · d) · (nsums +
/// sums))` by a subtraction, the same value as the specification's addition of `(dw · d) · isum`
/// (negation is exact in both the conversion and the product).
///
/// # Safety
///
/// Groups `g .. g + 4` must exist in `acts` (checked by the caller's shape check).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn update_neg(
    acc: &mut [float32x4_t; 2],
    nsums: int32x4_t,
    acts: &ActsQ8<'_>,
    g: usize,
    dw: f32,
) {
    // SAFETY: the caller guarantees the four groups exist.
    let (s, d) = unsafe { group_operands(acts, g) };
    let t = vmulq_f32(vmulq_n_f32(d, dw), vcvtq_f32_s32(vaddq_s32(nsums, s)));
    let k = (g / 4) % 2;
    acc[k] = vsubq_f32(acc[k], t);
}

/// The operands of the T2 block whose four groups start at group `g`: its 64 activations
/// de-interleaved by `ld4` as 32-bit words (`a[s]` = words s, 4 + s, 8 + s, 12 + s, in the order
/// of the codes at shift `2s`), the groups' activation sums and scales.
///
/// # Safety
///
/// Groups `g .. g + 4` and their activations must exist in `acts` (checked by the caller's shape
/// check).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn t2_operands(acts: &ActsQ8<'_>, g: usize) -> ([int8x16_t; 4], int32x4_t, float32x4_t) {
    // SAFETY: the caller guarantees the groups; `ld4` has no alignment requirement.
    unsafe {
        let w4 = vld4q_s32(acts.qs.as_ptr().add(QS * g).cast::<i32>());
        (
            [
                vreinterpretq_s8_s32(w4.0),
                vreinterpretq_s8_s32(w4.1),
                vreinterpretq_s8_s32(w4.2),
                vreinterpretq_s8_s32(w4.3),
            ],
            vld1q_s32(acts.sums.as_ptr().add(g)),
            vld1q_f32(acts.d.as_ptr().add(g)),
        )
    }
}

/// The 2-bit codes of a 16-byte T2 block at its four shifts.
#[inline]
#[target_feature(enable = "neon")]
fn t2_codes(v: uint8x16_t) -> [uint8x16_t; 4] {
    let m3 = vdupq_n_u8(3);
    [
        vandq_u8(v, m3),
        vandq_u8(vshrq_n_u8::<2>(v), m3),
        vandq_u8(vshrq_n_u8::<4>(v), m3),
        vshrq_n_u8::<6>(v),
    ]
}

/// Rows per pass of the T2 gemv: the block's activations, sums and scales are loaded once for
/// them.
const T2_ROWS: usize = 4;

/// Defines a T2 gemv entry point with target features `$feat` whose four-group sums come from
/// `$sums` (see the module docs), [`T2_ROWS`] rows per pass. The body is written once and compiled per feature set, so that
/// everything inlines into the entry point.
macro_rules! gemv_t2 {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $sums:ident) => {
        $(#[$doc])*
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
            let row_bytes = check_gemv_ternary(w, acts, out.len(), T2_BLOCK, T2_BYTES, "T2");
            let rows = out.len();
            if rows == 0 || row_bytes == 0 {
                out.fill(0.0);
                return;
            }
            let nb = row_bytes / T2_BYTES;
            let mut r = 0;
            while r < rows {
                // Rows `r .. r + T2_ROWS`, the last one repeated past the end (its results dropped).
                let p: [*const u8; T2_ROWS] = super::row_ptrs(w, r, rows - 1, row_bytes);
                let mut acc = [[vdupq_n_f32(0.0); 2]; T2_ROWS];
                // Block `b` into running sums `k` = `b % 2`, a constant at each call below so that
                // the sums stay in registers.
                let mut block = |b: usize, k: usize| {
                    // SAFETY: block `b`'s groups `4b .. 4b + 4` exist (shape check).
                    let (a, s, d) = unsafe { t2_operands(acts, 4 * b) };
                    for (acc, q) in acc.iter_mut().zip(&p) {
                        // SAFETY: block `b` of the row is 16 bytes inside `w` (shape check).
                        let c = t2_codes(unsafe { vld1q_u8(q.add(T2_BYTES * b)) });
                        // SAFETY: the entry point's contract covers `$sums`' features (the
                        // ARMv8.0 one is a safe function).
                        #[allow(unused_unsafe)]
                        let isum = vcvtq_f32_s32(vsubq_s32(unsafe { $sums(c, a) }, s));
                        acc[k] = vaddq_f32(acc[k], vmulq_f32(isum, d));
                    }
                };
                let mut b = 0;
                while b + 2 <= nb {
                    block(b, 0);
                    block(b + 1, 1);
                    b += 2;
                }
                if b < nb {
                    block(b, 0);
                }
                for (i, acc) in acc.iter().enumerate().take(rows - r) {
                    out[r + i] = reduce8(acc[0], acc[1]);
                }
                r += T2_ROWS;
            }
        }
    };
}

/// Defines a TQ2W gemv entry point, like [`gemv_t2!`]: a TQ2W block is four T2 blocks and
/// TQ2_0's f16 scale (see [`crate::scalar::ternary`]), so each 16-byte step unpacks and sums as
/// T2's, [`T2_ROWS`] rows per pass sharing the step's activations, sums and scales; the float
/// step takes `dw · d` (each row's block scale) as TQ2_0's does.
macro_rules! gemv_tq2w {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $sums:ident) => {
        $(#[$doc])*
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
            let row_bytes = check_gemv_ternary(w, acts, out.len(), QK_K, TQ2_0_BYTES, "TQ2W");
            let rows = out.len();
            if rows == 0 || row_bytes == 0 {
                out.fill(0.0);
                return;
            }
            let nb = row_bytes / TQ2_0_BYTES;
            let mut r = 0;
            while r < rows {
                // Rows `r .. r + T2_ROWS`, the last one repeated past the end (its results dropped).
                let p: [*const u8; T2_ROWS] = super::row_ptrs(w, r, rows - 1, row_bytes);
                let mut acc = [[vdupq_n_f32(0.0); 2]; T2_ROWS];
                for b in 0..nb {
                    // The four rows' block scales, widened by one `fcvtl`. SAFETY: block `b` of
                    // each row is 66 bytes inside `w` (shape check); the scale is its last two.
                    let h = p.iter().enumerate().fold(0u64, |h, (i, q)| unsafe {
                        let s = q.add(TQ2_0_BYTES * b + 64);
                        h | u64::from(u16::from_le_bytes([*s, *s.add(1)])) << (16 * i)
                    });
                    let dwv = super::f16x4_to_f32(vcreate_u16(h));
                    let dw: [f32; T2_ROWS] = [
                        vgetq_lane_f32::<0>(dwv),
                        vgetq_lane_f32::<1>(dwv),
                        vgetq_lane_f32::<2>(dwv),
                        vgetq_lane_f32::<3>(dwv),
                    ];
                    // T2 block `j` of the block into running sums `j % 2` (groups `16b + 4j`),
                    // a constant at each call below so that the sums stay in registers.
                    let mut step = |j: usize| {
                        // SAFETY: groups `16b + 4j .. 16b + 4j + 4` exist (shape check).
                        let (a, s, d) = unsafe { t2_operands(acts, 16 * b + 4 * j) };
                        for ((acc, q), &dw) in acc.iter_mut().zip(&p).zip(&dw) {
                            // SAFETY: bytes `16j .. 16j + 16` of block `b` are inside `w`.
                            let c = t2_codes(unsafe {
                                vld1q_u8(q.add(TQ2_0_BYTES * b + T2_BYTES * j))
                            });
                            // SAFETY: the entry point's contract covers `$sums`' features (the
                            // ARMv8.0 one is a safe function).
                            #[allow(unused_unsafe)]
                            let isum = vcvtq_f32_s32(vsubq_s32(unsafe { $sums(c, a) }, s));
                            let k = j % 2;
                            acc[k] = vaddq_f32(acc[k], vmulq_f32(vmulq_n_f32(d, dw), isum));
                        }
                    };
                    step(0);
                    step(1);
                    step(2);
                    step(3);
                }
                for (i, acc) in acc.iter().enumerate().take(rows - r) {
                    out[r + i] = reduce8(acc[0], acc[1]);
                }
                r += T2_ROWS;
            }
        }
    };
}

/// Defines a TQ2_0 gemv entry point, like [`gemv_t2!`].
macro_rules! gemv_tq2_0 {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $sums:ident) => {
        $(#[$doc])*
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
            let row_bytes = check_gemv_ternary(w, acts, out.len(), QK_K, TQ2_0_BYTES, "TQ2_0");
            if row_bytes == 0 {
                out.fill(0.0);
                return;
            }
            let m3 = vdupq_n_u8(3);
            let qa = acts.qs.as_ptr();
            let sh = |x: uint8x16_t, l: usize| match l {
                0 => vandq_u8(x, m3),
                1 => vandq_u8(vshrq_n_u8::<2>(x), m3),
                2 => vandq_u8(vshrq_n_u8::<4>(x), m3),
                _ => vshrq_n_u8::<6>(x),
            };
            for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
                let mut acc = [vdupq_n_f32(0.0); 2];
                for (b, blk) in row.chunks_exact(TQ2_0_BYTES).enumerate() {
                    let dw = super::f16_to_f32(u16::from_le_bytes([blk[64], blk[65]]));
                    for h in 0..2 {
                        // SAFETY: bytes `32h .. 32h + 32` are inside the 66-byte block.
                        let u = unsafe {
                            [
                                vld1q_u8(blk.as_ptr().add(32 * h)),
                                vld1q_u8(blk.as_ptr().add(32 * h + 16)),
                            ]
                        };
                        for m in 0..2 {
                            // Groups g .. g + 4 are (l, s) = (2m, 0), (2m, 1), (2m + 1, 0),
                            // (2m + 1, 1): bytes `16 s ..` of the chunk at shift `2 l`.
                            let g = 16 * b + 8 * h + 4 * m;
                            let c = [
                                sh(u[0], 2 * m),
                                sh(u[1], 2 * m),
                                sh(u[0], 2 * m + 1),
                                sh(u[1], 2 * m + 1),
                            ];
                            // SAFETY: groups `g .. g + 4` and their activations exist (shape
                            // check); the entry point's contract covers `$sums`' features.
                            unsafe {
                                let a = core::array::from_fn(|k| vld1q_s8(qa.add(QS * (g + k))));
                                let s = $sums(c, a);
                                update(&mut acc, s, acts, g, Some(dw));
                            }
                        }
                    }
                }
                *o = reduce8(acc[0], acc[1]);
            }
        }
    };
}

/// The TQ1_0 base-3 digit `(3 q) >> 8` of each byte `q` (already multiplied by its power of
/// 3), negated: `-((q >= 86) + (q >= 171))` as i8, the sum of the two compares' masks (each -1
/// where true).
#[inline]
#[target_feature(enable = "neon")]
fn neg_trit(q: uint8x16_t) -> uint8x16_t {
    vaddq_u8(vcgeq_u8(q, vdupq_n_u8(86)), vcgeq_u8(q, vdupq_n_u8(171)))
}

/// Defines a TQ1_0 gemv entry point, like [`gemv_t2!`]: per block, four steps of four
/// consecutive groups (groups `0..10` from digits `0..5` of `qs[0..16]` and `qs[16..32]`,
/// groups `10..15` from digits `0..5` of `qs[32..48]`, group 15 from the four digits of `qh`).
macro_rules! gemv_tq1_0 {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $sums:ident) => {
        $(#[$doc])*
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
            let row_bytes = check_gemv_ternary(w, acts, out.len(), QK_K, TQ1_0_BYTES, "TQ1_0");
            if row_bytes == 0 {
                out.fill(0.0);
                return;
            }
            const QH_POW: [u8; 16] = [1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27];
            // SAFETY: QH_POW holds 16 bytes.
            let qh_pow = unsafe { vld1q_u8(QH_POW.as_ptr()) };
            let qa = acts.qs.as_ptr();
            let pow = |x: uint8x16_t, n: u8| vmulq_u8(x, vdupq_n_u8(3u8.pow(n as u32)));
            for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
                let mut acc = [vdupq_n_f32(0.0); 2];
                for (b, blk) in row.chunks_exact(TQ1_0_BYTES).enumerate() {
                    let dw = super::f16_to_f32(u16::from_le_bytes([blk[52], blk[53]]));
                    // SAFETY: bytes 0..52 are inside the 54-byte block.
                    let (x0, x1, x2, qh) = unsafe {
                        (
                            vld1q_u8(blk.as_ptr()),
                            vld1q_u8(blk.as_ptr().add(16)),
                            vld1q_u8(blk.as_ptr().add(32)),
                            vreinterpretq_u8_u32(vld1q_dup_u32(blk.as_ptr().add(48).cast())),
                        )
                    };
                    let steps = [
                        [pow(x0, 0), pow(x1, 0), pow(x0, 1), pow(x1, 1)],
                        [pow(x0, 2), pow(x1, 2), pow(x0, 3), pow(x1, 3)],
                        [pow(x0, 4), pow(x1, 4), pow(x2, 0), pow(x2, 1)],
                        [pow(x2, 2), pow(x2, 3), pow(x2, 4), vmulq_u8(qh, qh_pow)],
                    ];
                    for (m, q) in steps.iter().enumerate() {
                        let g = 16 * b + 4 * m;
                        let c = [neg_trit(q[0]), neg_trit(q[1]), neg_trit(q[2]), neg_trit(q[3])];
                        // SAFETY: groups `g .. g + 4` and their activations exist (shape
                        // check); the entry point's contract covers `$sums`' features.
                        unsafe {
                            let a = core::array::from_fn(|k| vld1q_s8(qa.add(QS * (g + k))));
                            let s = $sums(c, a);
                            update_neg(&mut acc, s, acts, g, dw);
                        }
                    }
                }
                *o = reduce8(acc[0], acc[1]);
            }
        }
    };
}

gemv_t2! {
    /// NEON [`crate::scalar::ternary::gemv_t2`] (unscaled T2 product), bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemv_t2, "neon", t2_sums_neon
}

gemv_t2! {
    /// NEON dot-product [`crate::scalar::ternary::gemv_t2`] (unscaled T2 product), bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension (`dotprod`).
    neon_dotprod_gemv_t2, "neon,dotprod", t2_sums_dot
}

gemv_tq2w! {
    /// NEON [`crate::scalar::ternary::gemv_tq2w`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemv_tq2w, "neon", t2_sums_neon
}

gemv_tq2w! {
    /// NEON dot-product [`crate::scalar::ternary::gemv_tq2w`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension (`dotprod`).
    neon_dotprod_gemv_tq2w, "neon,dotprod", t2_sums_dot
}

gemv_tq2_0! {
    /// NEON [`crate::scalar::ternary::gemv_tq2_0`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemv_tq2_0, "neon", group_sums4_neon
}

gemv_tq2_0! {
    /// NEON dot-product [`crate::scalar::ternary::gemv_tq2_0`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension (`dotprod`).
    neon_dotprod_gemv_tq2_0, "neon,dotprod", group_sums4_dot
}

// ---------------------------------------------------------------------------------------------
// Table-lookup variant

/// Rows per row block of the table-lookup kernel (its running sums live on the stack).
const LUT_ROW_BLOCK: usize = 128;
/// Rows per pass of the table-lookup kernel (one byte per row in a vector).
const LUT_ROWS: usize = 16;

/// The lookup tables of T2 block `b`: for the nibble `h` (0 low, 1 high) of byte `p = 4k + q`,
/// which holds elements `i = q + 8h` and `i + 4` of group `k` (`t[2p + h]`), the 16 entries
/// `((n & 3) - 1) a_i + ((n >> 2) - 1) a_{i+4}` as their low bytes (`[0]`) and high bytes (`[1]`).
#[inline]
#[target_feature(enable = "neon")]
fn lut_tables(acts: &ActsQ8<'_>, b: usize, t: &mut [[uint8x16_t; 2]; 32]) {
    const WLO: [i16; 16] = [-1, 0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2];
    const WHI: [i16; 16] = [-1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2];
    // SAFETY: the arrays hold 16 values each.
    let (wl, wh) = unsafe {
        (
            [vld1q_s16(WLO.as_ptr()), vld1q_s16(WLO.as_ptr().add(8))],
            [vld1q_s16(WHI.as_ptr()), vld1q_s16(WHI.as_ptr().add(8))],
        )
    };
    for (p, tp) in t.chunks_exact_mut(2).enumerate() {
        let (k, q) = (p / 4, p % 4);
        for (h, th) in tp.iter_mut().enumerate() {
            let e = T2_BLOCK * b + 16 * k + q + 8 * h;
            let (a0, a1) = (acts.qs[e] as i16, acts.qs[e + 4] as i16);
            let e0 = vmlaq_n_s16(vmulq_n_s16(wl[0], a0), wh[0], a1);
            let e1 = vmlaq_n_s16(vmulq_n_s16(wl[1], a0), wh[1], a1);
            let (b0, b1) = (vreinterpretq_u8_s16(e0), vreinterpretq_u8_s16(e1));
            *th = [vuzp1q_u8(b0, b1), vuzp2q_u8(b0, b1)];
        }
    }
}

/// Transposes 16 rows of 16 bytes: byte `i` of result `j` is byte `j` of `x[i]`.
#[inline]
#[target_feature(enable = "neon")]
fn transpose16(x: [uint8x16_t; 16]) -> [uint8x16_t; 16] {
    // Stage with element size 2^s bytes pairs rows i and i + 2^s (bit s of i clear).
    let mut a = x;
    for i in (0..16).step_by(2) {
        let (r0, r1) = (a[i], a[i + 1]);
        a[i] = vtrn1q_u8(r0, r1);
        a[i + 1] = vtrn2q_u8(r0, r1);
    }
    for i in (0..16).filter(|i| i & 2 == 0) {
        let (r0, r1) = (vreinterpretq_u16_u8(a[i]), vreinterpretq_u16_u8(a[i + 2]));
        a[i] = vreinterpretq_u8_u16(vtrn1q_u16(r0, r1));
        a[i + 2] = vreinterpretq_u8_u16(vtrn2q_u16(r0, r1));
    }
    for i in (0..16).filter(|i| i & 4 == 0) {
        let (r0, r1) = (vreinterpretq_u32_u8(a[i]), vreinterpretq_u32_u8(a[i + 4]));
        a[i] = vreinterpretq_u8_u32(vtrn1q_u32(r0, r1));
        a[i + 4] = vreinterpretq_u8_u32(vtrn2q_u32(r0, r1));
    }
    for i in 0..8 {
        let (r0, r1) = (vreinterpretq_u64_u8(a[i]), vreinterpretq_u64_u8(a[i + 8]));
        a[i] = vreinterpretq_u8_u64(vtrn1q_u64(r0, r1));
        a[i + 8] = vreinterpretq_u8_u64(vtrn2q_u64(r0, r1));
    }
    a
}

/// NEON table-lookup [`crate::scalar::ternary::gemv_t2`] (unscaled T2 product), bit-exact.
///
/// Rows in lanes: per pass, the 16-byte blocks of 16 rows are transposed so that one vector
/// holds the same weight byte of 16 rows. Each nibble of a T2 byte holds two weights `i`, `i + 4`
/// of one group: a 4-bit index into a 16-entry table of `(w_i a_i + w_{i+4} a_{i+4})`, built once
/// per block and row block and shared by its 128 rows; two `tbl` fetch the low and high bytes of
/// the i16 entries of 16 rows at once, and i16 accumulators collect each group's exact `isum`
/// per row (at most `8 * 2 * 2 * 127`) with no horizontal reduction and no need for `sums`.
/// Each row's eight running sums (on the stack) follow the specification's operations and order.
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemv_t2_lut(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let row_bytes = check_gemv_ternary(w, acts, out.len(), T2_BLOCK, T2_BYTES, "T2");
    let rows = out.len();
    if rows == 0 || row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    let nb = acts.qs.len() / T2_BLOCK;
    let base = w.as_ptr();
    let m0f = vdupq_n_u8(0x0F);
    let mut tables = [[vdupq_n_u8(0); 2]; 32];
    let mut acc = [[0.0f32; LUT_ROW_BLOCK]; 8];
    for rb in (0..rows).step_by(LUT_ROW_BLOCK) {
        let rb_rows = (rows - rb).min(LUT_ROW_BLOCK);
        for a in acc.iter_mut() {
            a.fill(0.0);
        }
        for b in 0..nb {
            lut_tables(acts, b, &mut tables);
            for pass in (0..rb_rows).step_by(LUT_ROWS) {
                // Row i of the pass (clamped to the last row: its extra results are dropped).
                let x: [uint8x16_t; LUT_ROWS] = core::array::from_fn(|i| {
                    let r = (rb + pass + i).min(rows - 1);
                    // SAFETY: block `b` of row `r` is 16 bytes inside `w` (shape check).
                    unsafe { vld1q_u8(base.add(r * row_bytes + T2_BYTES * b)) }
                });
                let v = transpose16(x);
                // Group sums, i16: s[k][0] rows 0..8, s[k][1] rows 8..16.
                let mut s = [[vdupq_n_s16(0); 2]; 4];
                for (p, &vp) in v.iter().enumerate() {
                    let k = p / 4;
                    let nib = [vandq_u8(vp, m0f), vshrq_n_u8::<4>(vp)];
                    for (h, &n) in nib.iter().enumerate() {
                        let t = &tables[2 * p + h];
                        let lo = vqtbl1q_u8(t[0], n);
                        let hi = vqtbl1q_u8(t[1], n);
                        s[k][0] = vaddq_s16(s[k][0], vreinterpretq_s16_u8(vzip1q_u8(lo, hi)));
                        s[k][1] = vaddq_s16(s[k][1], vreinterpretq_s16_u8(vzip2q_u8(lo, hi)));
                    }
                }
                let n = (rb_rows - pass).min(LUT_ROWS);
                for (k, sk) in s.iter().enumerate() {
                    let g = 4 * b + k;
                    let (slot, d) = (g % 8, acts.d[g]);
                    for (h8, &sh) in sk.iter().enumerate() {
                        let t = [
                            vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(sh))), d),
                            vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(sh)), d),
                        ];
                        for (q4, &tq) in t.iter().enumerate() {
                            let r0 = pass + 8 * h8 + 4 * q4;
                            let valid = n.saturating_sub(8 * h8 + 4 * q4).min(4);
                            let dst = &mut acc[slot][r0..r0 + valid];
                            if valid == 4 {
                                // SAFETY: `dst` holds four f32.
                                unsafe {
                                    let a = vld1q_f32(dst.as_ptr());
                                    vst1q_f32(dst.as_mut_ptr(), vaddq_f32(a, tq));
                                }
                            } else {
                                let mut tv = [0.0f32; 4];
                                // SAFETY: `tv` holds four f32.
                                unsafe { vst1q_f32(tv.as_mut_ptr(), tq) };
                                for (a, &tvi) in dst.iter_mut().zip(&tv) {
                                    *a += tvi;
                                }
                            }
                        }
                    }
                }
            }
        }
        for (i, o) in out[rb..rb + rb_rows].iter_mut().enumerate() {
            let a: [f32; 8] = core::array::from_fn(|s| acc[s][i]);
            *o = crate::scalar::ternary::reduce8(&a);
        }
    }
}

gemv_tq1_0! {
    /// NEON [`crate::scalar::ternary::gemv_tq1_0`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemv_tq1_0, "neon", group_sums4_neon
}

gemv_tq1_0! {
    /// NEON dot-product [`crate::scalar::ternary::gemv_tq1_0`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension (`dotprod`).
    neon_dotprod_gemv_tq1_0, "neon,dotprod", group_sums4_dot
}

// ---------------------------------------------------------------------------------------------
// Small-batch product (gemm): several tokens per weight unpacked

/// Tokens per pass of the gemm: each step's codes are unpacked once and used for all of them.
const GEMM_TOKENS: usize = 4;

/// Checks a gemm's shapes (every token as its gemv would) and returns `(cols, rows, row_bytes)`.
pub(super) fn check_gemm_ternary(
    w: &[u8],
    acts: &ActsQ8<'_>,
    nb: usize,
    out_len: usize,
    block_len: usize,
    block_bytes: usize,
    name: &str,
) -> (usize, usize, usize) {
    let (cols, rows) = check_gemm(acts, nb, out_len, name);
    let mut row_bytes = 0;
    for t in 0..nb {
        let at = token_acts(acts, cols, t);
        row_bytes = check_gemv_ternary(w, &at, rows, block_len, block_bytes, name);
    }
    (cols, rows, row_bytes)
}

/// Defines a T2 gemm entry point with target features `$feat` as one gemv `$gemv` per token.
/// The session calls it on tiles of a few dozen rows, which stay in the caches from token to
/// token. A gemm that unpacked each 16-byte block once for four tokens, one row at a time, took
/// more cycles than the gemv's four rows per pass, which share each token's activation loads
/// (`cargo xtask cycles`, `T2:576x1536x16` against `T2:576x1536`: cortex-a53 0.492 against
/// 0.446 cycles per weight, cortex-a72 0.227 against 0.196, neoverse-n1 0.141 against 0.140).
/// TQ2W's gemms, whose steps are T2's, are made the same way.
macro_rules! gemm_t2 {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $gemv:ident) => {
        gemm_t2! { $(#[$doc])* $name, $feat, $gemv, T2_BLOCK, T2_BYTES, "T2" }
    };
    ($(#[$doc:meta])* $name:ident, $feat:literal, $gemv:ident, $blk:expr, $bytes:expr, $ty:literal) => {
        $(#[$doc])*
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
            let (cols, rows, row_bytes) =
                check_gemm_ternary(w, acts, nb, out.len(), $blk, $bytes, $ty);
            if rows == 0 || row_bytes == 0 {
                out.fill(0.0);
                return;
            }
            for (t, o) in out.chunks_exact_mut(rows).enumerate() {
                // SAFETY: the entry point's contract covers `$gemv`'s features.
                unsafe { $gemv(w, &token_acts(acts, cols, t), o) };
            }
        }
    };
}

/// Defines a TQ2_0 gemm entry point, like [`gemm_t2!`].
macro_rules! gemm_tq2_0 {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $sums:ident) => {
        $(#[$doc])*
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
            let (cols, rows, row_bytes) =
                check_gemm_ternary(w, acts, nb, out.len(), QK_K, TQ2_0_BYTES, "TQ2_0");
            if rows == 0 || row_bytes == 0 {
                out.fill(0.0);
                return;
            }
            let m3 = vdupq_n_u8(3);
            let sh = |x: uint8x16_t, l: usize| match l {
                0 => vandq_u8(x, m3),
                1 => vandq_u8(vshrq_n_u8::<2>(x), m3),
                2 => vandq_u8(vshrq_n_u8::<4>(x), m3),
                _ => vshrq_n_u8::<6>(x),
            };
            for t0 in (0..nb).step_by(GEMM_TOKENS) {
                let tn = (nb - t0).min(GEMM_TOKENS);
                let at: [ActsQ8<'_>; GEMM_TOKENS] = token_group(acts, cols, nb, t0);
                for (r, row) in w.chunks_exact(row_bytes).enumerate() {
                    let mut acc = [[vdupq_n_f32(0.0); 2]; GEMM_TOKENS];
                    for (b, blk) in row.chunks_exact(TQ2_0_BYTES).enumerate() {
                        let dw = super::f16_to_f32(u16::from_le_bytes([blk[64], blk[65]]));
                        for h in 0..2 {
                            // SAFETY: bytes `32h .. 32h + 32` are inside the 66-byte block.
                            let u = unsafe {
                                [
                                    vld1q_u8(blk.as_ptr().add(32 * h)),
                                    vld1q_u8(blk.as_ptr().add(32 * h + 16)),
                                ]
                            };
                            for m in 0..2 {
                                // Groups g .. g + 4, as in the gemv.
                                let g = 16 * b + 8 * h + 4 * m;
                                let c = [
                                    sh(u[0], 2 * m),
                                    sh(u[1], 2 * m),
                                    sh(u[0], 2 * m + 1),
                                    sh(u[1], 2 * m + 1),
                                ];
                                for (acc_t, a_t) in acc.iter_mut().zip(&at) {
                                    // SAFETY: groups `g .. g + 4` and their activations exist
                                    // (shape check); the entry point's contract covers `$sums`'
                                    // features.
                                    unsafe {
                                        let qa = a_t.qs.as_ptr();
                                        let a = core::array::from_fn(|k| {
                                            vld1q_s8(qa.add(QS * (g + k)))
                                        });
                                        let s = $sums(c, a);
                                        update(acc_t, s, a_t, g, Some(dw));
                                    }
                                }
                            }
                        }
                    }
                    for (t, acc_t) in acc.iter().enumerate().take(tn) {
                        out[(t0 + t) * rows + r] = reduce8(acc_t[0], acc_t[1]);
                    }
                }
            }
        }
    };
}

gemm_t2! {
    /// NEON [`crate::scalar::ternary::gemm_t2`], bit-exact with one [`neon_gemv_t2`] per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemm_t2, "neon", neon_gemv_t2
}

gemm_t2! {
    /// NEON dot-product [`crate::scalar::ternary::gemm_t2`], bit-exact with one
    /// [`neon_dotprod_gemv_t2`] per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension (`dotprod`).
    neon_dotprod_gemm_t2, "neon,dotprod", neon_dotprod_gemv_t2
}

gemm_tq2_0! {
    /// NEON [`crate::scalar::ternary::gemm_tq2_0`], bit-exact with one [`neon_gemv_tq2_0`] per
    /// token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemm_tq2_0, "neon", group_sums4_neon
}

gemm_tq2_0! {
    /// NEON dot-product [`crate::scalar::ternary::gemm_tq2_0`], bit-exact with one
    /// [`neon_dotprod_gemv_tq2_0`] per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension (`dotprod`).
    neon_dotprod_gemm_tq2_0, "neon,dotprod", group_sums4_dot
}

gemm_t2! {
    /// NEON [`crate::scalar::ternary::gemm_tq2w`], bit-exact with one [`neon_gemv_tq2w`] per
    /// token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemm_tq2w, "neon", neon_gemv_tq2w, QK_K, TQ2_0_BYTES, "TQ2W"
}

gemm_t2! {
    /// NEON dot-product [`crate::scalar::ternary::gemm_tq2w`], bit-exact with one
    /// [`neon_dotprod_gemv_tq2w`] per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension (`dotprod`).
    neon_dotprod_gemm_tq2w, "neon,dotprod", neon_dotprod_gemv_tq2w, QK_K, TQ2_0_BYTES, "TQ2W"
}
