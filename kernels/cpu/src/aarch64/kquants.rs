//! NEON K-quant gemvs and gemms (Q4_K, Q5_K, Q6_K), bit-exact with [`crate::scalar::kquants`]
//! (the specification's accumulation order is in that module's docs), on the `neon` tier and,
//! with one `sdot` per group, the `neon-dotprod` tier.
//!
//! The gemv: one row at a time. Per super-block the codes of each half `h` (elements `128h ..`,
//! activation groups `8h .. 8h + 8`) come out by masks and shifts as eight vectors of 16 values,
//! entry `e` holding group `8h + e`: Q6_K's 6-bit codes from `ql` and `qh`, minus 32; Q4_K's
//! nibbles of `qs[64h ..]` (32-element sub-block `4h + e / 2`, low nibbles for even sub-blocks),
//! with Q5_K's fifth bit from bit `4h + e / 2` of `qh`. The exact dots of four groups with their
//! activations land in the four lanes of one vector: groups `0 2 4 6`, `1 3 5 7`, `8 10 12 14`,
//! `9 11 13 15`, whose lanes are the specification's accumulator lanes `0..4`, `4..8`, `0..4`,
//! `4..8`. On `neon-dotprod` each group's dot is one `sdot`, and two rounds of `addp` (i32) gather
//! four. On `neon` each group's `smull`/`smlal2` pair sums (eight i16 lanes) are added pairwise in
//! i16 by `addp` before `saddlp` widens them: twice for Q4_K/Q5_K (sums of eight products of codes
//! `0..32` and activations `-128..128`, at most `31744`), then one `saddlp`; once for Q6_K (sums of
//! four products of codes `-32..32`, at most `2^14`; eight could reach `2^15`), then two `saddlp`
//! and one `addp` in i32. The same integers either way; fewer widening steps than a `saddlp` per
//! group (in the cycle model faster on the Cortex-A53, A72 and A57). Each vector then takes the
//! specification's float steps lane by lane (never fused: Q6_K `((scale * dot) * d) * acts.d[g]`,
//! Q4_K/Q5_K `(dot * dl - sums[g] * ml) * acts.d[g]` with `dl = d * sc`, `ml = dmin * m` of the
//! group's sub-block, the eight of a super-block decoded and multiplied in vectors by `scales_k4`),
//! the even and odd groups' activation scales and sums deinterleaved by `ld2`, and the eight
//! running sums are reduced in the specification's order.
//!
//! The gemms (prefill: `nb` tokens, `out[t * rows + r]`) take the tokens in passes, and each pass
//! the rows one by one: per super-block the factors (Q4_K/Q5_K's `dl` and `ml` by `scales_k4`,
//! Q6_K's `d` and widened scales) and per half the eight code vectors are decoded once, and then
//! each token of the pass takes the gemv's dots and float steps, in the gemv's order, into eight
//! running sums of its own: every result has the bits of its token's gemv.
//!
//! - `neon`: passes of two tokens, whose running sums stay in registers (with more tokens the
//!   products did not fit the 32 vector registers), and a last odd token alone. The dots are the
//!   gemv's, with the same i16 `addp` rounds before `saddlp`.
//! - `neon-dotprod`, with the gemv's one `sdot` per group: passes of eight tokens up to the last
//!   multiple of eight, the codes of a half held in registers through a loop over the tokens
//!   (their running sums on the stack; in the Neoverse N1 model faster than passes of two or
//!   four), then passes of two and of one as on `neon`.

use core::arch::aarch64::*;

use crate::acts::{ActsQ8, QS};
use crate::scalar::kquants::{
    check_gemv, ACT_GROUPS_PER_SUPER, K4_D, K4_DMIN, K4_SCALES, Q4_K_BLOCK_BYTES, Q4_K_QS,
    Q5_K_BLOCK_BYTES, Q5_K_QH, Q5_K_QS, Q6_K_BLOCK_BYTES, Q6_K_D, Q6_K_QH, Q6_K_QL, Q6_K_SCALES,
};
use crate::scalar::ternary::{check_gemm, token_acts, token_group};

/// The signed codes (`q - 32`) of half `h` of the super-block at `blk`: entry `2g + k` holds
/// elements `128h + 32g + 16k ..` (activation group `8h + 2g + k`).
///
/// # Safety
///
/// `blk` must be valid for reading one Q6_K super-block; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn codes(blk: *const u8, h: usize) -> [int8x16_t; 8] {
    // SAFETY: `ql[64h .. 64h + 64]` and `qh[32h .. 32h + 32]` are inside the super-block.
    let (l, q) = unsafe {
        let ql = blk.add(Q6_K_QL + 64 * h);
        let qh = blk.add(Q6_K_QH + 32 * h);
        (
            [0, 16, 32, 48].map(|o| vld1q_u8(ql.add(o))),
            [vld1q_u8(qh), vld1q_u8(qh.add(16))],
        )
    };
    let m4 = vdupq_n_u8(0x0F);
    let m2 = vdupq_n_u8(0x03);
    let c32 = vdupq_n_s8(32);
    core::array::from_fn(|e| {
        let (g, k) = (e / 2, e % 2);
        // Low four bits from ql[32 (g % 2) + 16k + ..], nibble g / 2; high two from qh bits 2g.
        let lo = l[2 * (g % 2) + k];
        let lo = if g < 2 {
            vandq_u8(lo, m4)
        } else {
            vshrq_n_u8::<4>(lo)
        };
        let hi = match g {
            0 => vandq_u8(q[k], m2),
            1 => vandq_u8(vshrq_n_u8::<2>(q[k]), m2),
            2 => vandq_u8(vshrq_n_u8::<4>(q[k]), m2),
            _ => vshrq_n_u8::<6>(q[k]),
        };
        vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, vshlq_n_u8::<4>(hi))), c32)
    })
}

/// The four lane sums of `Σ w·a` over 16 values: one `sdot`.
///
/// # Safety
///
/// The CPU must have the dot-product extension.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn lanes_dotprod(w: int8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: the caller guarantees the extension.
    unsafe { super::ternary::sdot(vdupq_n_s32(0), w, a) }
}

/// The specification's reduction of the eight running sums, `lo` lanes 0..4 and `hi` lanes 4..8:
/// `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
#[inline]
#[target_feature(enable = "neon")]
fn reduce(lo: float32x4_t, hi: float32x4_t) -> f32 {
    let sum = vaddq_f32(lo, hi);
    let half = vadd_f32(vget_low_f32(sum), vget_high_f32(sum));
    vget_lane_f32::<0>(half) + vget_lane_f32::<1>(half)
}

/// The exact dots of activation groups `first + x` for the four `x` of `pick`, one per lane,
/// with `codes[x]` the codes of group `first + x`: `lanes` per group, then two rounds of `addp`
/// (the `neon-dotprod` tier's; `neon`'s is [`quad_neon`]).
///
/// # Safety
///
/// Those groups' activations must be inside `qa`; the CPU must have NEON and whatever `lanes`
/// needs.
#[inline(always)]
unsafe fn quad(
    lanes: &impl Fn(int8x16_t, int8x16_t) -> int32x4_t,
    codes: &[int8x16_t; 8],
    qa: *const i8,
    first: usize,
    pick: [usize; 4],
) -> int32x4_t {
    // SAFETY: the caller guarantees the groups' activations and NEON.
    unsafe {
        let dot = |x: usize| lanes(codes[x], vld1q_s8(qa.add((first + x) * QS)));
        let [a, b, c, e] = pick;
        vpaddq_s32(vpaddq_s32(dot(a), dot(b)), vpaddq_s32(dot(c), dot(e)))
    }
}

/// A gemv's way to the exact dots of four groups, as [`quad`] gives them: [`PerGroup`] (the
/// `neon-dotprod` tier's) or [`I16Rounds`] (the `neon` tier's). A trait rather than the gemms'
/// closures: with [`quad`] inside a closure the `neon-dotprod` gemvs' instructions came out in
/// another order; this way they are the same as with `lanes` passed straight to the driver.
trait GemvDots {
    /// The dots of groups `first + x` for the four `x` of `pick`, one per lane.
    ///
    /// # Safety
    ///
    /// As [`quad`]'s, with whatever the way needs.
    unsafe fn quad(
        &self,
        codes: &[int8x16_t; 8],
        qa: *const i8,
        first: usize,
        pick: [usize; 4],
    ) -> int32x4_t;
}

/// [`quad`] with these `lanes` per group.
struct PerGroup<F>(F);

impl<F: Fn(int8x16_t, int8x16_t) -> int32x4_t> GemvDots for PerGroup<F> {
    #[inline(always)]
    unsafe fn quad(
        &self,
        codes: &[int8x16_t; 8],
        qa: *const i8,
        first: usize,
        pick: [usize; 4],
    ) -> int32x4_t {
        // SAFETY: the caller guarantees `quad`'s conditions.
        unsafe { quad(&self.0, codes, qa, first, pick) }
    }
}

/// [`quad_neon`] with its `EIGHT`.
struct I16Rounds<const EIGHT: bool>;

impl<const EIGHT: bool> GemvDots for I16Rounds<EIGHT> {
    #[inline(always)]
    unsafe fn quad(
        &self,
        codes: &[int8x16_t; 8],
        qa: *const i8,
        first: usize,
        pick: [usize; 4],
    ) -> int32x4_t {
        // SAFETY: the caller guarantees `quad_neon`'s conditions.
        unsafe { quad_neon::<EIGHT>(codes, qa, first, pick) }
    }
}

/// The Q6_K driver (module docs), with `dots` the exact dots of four groups.
///
/// # Safety
///
/// The CPU must have NEON and whatever `dots` needs.
#[inline(always)]
unsafe fn gemv(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32], dots: impl GemvDots) {
    let row_bytes = check_gemv(w, acts, out, Q6_K_BLOCK_BYTES);
    let nsb = row_bytes / Q6_K_BLOCK_BYTES;
    let (qa, da) = (acts.qs.as_ptr(), acts.d.as_ptr());
    for (r, y) in out.iter_mut().enumerate() {
        // SAFETY: `check_gemv` guarantees `out.len()` rows of `nsb` super-blocks in `w` and `nsb`
        // super-blocks' activations, scales included; the caller, the CPU's features.
        unsafe {
            let row = w.as_ptr().add(r * row_bytes);
            let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            for s in 0..nsb {
                let blk = row.add(s * Q6_K_BLOCK_BYTES);
                let d = vdupq_n_f32(super::f16_to_f32(u16::from_le_bytes([
                    *blk.add(Q6_K_D),
                    *blk.add(Q6_K_D + 1),
                ])));
                // The 16 scales, i8, widened; even and odd groups apart.
                let sc = vld1q_s8(blk.add(Q6_K_SCALES).cast());
                let sc16 = [vmovl_s8(vget_low_s8(sc)), vmovl_s8(vget_high_s8(sc))];
                let g0 = s * ACT_GROUPS_PER_SUPER;
                for (h, &s8) in sc16.iter().enumerate() {
                    let c = codes(blk, h);
                    // Groups 8h + {0, 2, 4, 6} (lanes 0..4), then 8h + {1, 3, 5, 7} (4..8); entry
                    // `e` of `c` holds group `8h + e`.
                    let first = g0 + 8 * h;
                    let dots = [
                        dots.quad(&c, qa, first, [0, 2, 4, 6]),
                        dots.quad(&c, qa, first, [1, 3, 5, 7]),
                    ];
                    // Their scales (`s8`: the widened scales of groups 8h .. 8h + 8), even / odd.
                    let ev = vmovl_s16(vget_low_s16(vuzp1q_s16(s8, s8)));
                    let od = vmovl_s16(vget_low_s16(vuzp2q_s16(s8, s8)));
                    // The activation scales of groups 8h .. 8h + 8, deinterleaved.
                    let ad = vld2q_f32(da.add(g0 + 8 * h));
                    let t0 = vmulq_f32(vmulq_f32(vcvtq_f32_s32(vmulq_s32(ev, dots[0])), d), ad.0);
                    let t1 = vmulq_f32(vmulq_f32(vcvtq_f32_s32(vmulq_s32(od, dots[1])), d), ad.1);
                    lo = vaddq_f32(lo, t0);
                    hi = vaddq_f32(hi, t1);
                }
            }
            *y = reduce(lo, hi);
        }
    }
}

/// The 4-bit (Q4_K) or 5-bit (Q5_K, `FIVE`) codes of half `h` of the super-block at `blk`:
/// entry `e` holds elements `128h + 16e ..` (sub-block `4h + e / 2`, activation group `8h + e`).
///
/// # Safety
///
/// `blk` must be valid for reading one super-block of its type; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn codes_k4<const FIVE: bool>(blk: *const u8, h: usize) -> [int8x16_t; 8] {
    let qs_off = if FIVE { Q5_K_QS } else { Q4_K_QS };
    // SAFETY: `qs[64h .. 64h + 64]` and `qh[0 .. 32]` are inside the super-block.
    let (l, qh) = unsafe {
        let qs = blk.add(qs_off + 64 * h);
        let qh = blk.add(Q5_K_QH);
        (
            [0, 16, 32, 48].map(|o| vld1q_u8(qs.add(o))),
            [vld1q_u8(qh), vld1q_u8(qh.add(16))],
        )
    };
    let m4 = vdupq_n_u8(0x0F);
    core::array::from_fn(|e| {
        // Sub-block j = 4h + e / 2 (its pair's 32 bytes are l[2 (e / 4) ..]), half k = e % 2.
        let (jj, k) = (e / 2, e % 2);
        let bytes = l[2 * (jj / 2) + k];
        let q = if jj % 2 == 0 {
            vandq_u8(bytes, m4)
        } else {
            vshrq_n_u8::<4>(bytes)
        };
        let q = if FIVE {
            // Bit j = 4h + jj of qh[16k ..], moved to bit 4 (shifted left by 4 - j) and masked.
            let j = (4 * h + jj) as i8;
            let hi = vshlq_u8(qh[k], vdupq_n_s8(4 - j));
            vorrq_u8(q, vandq_u8(hi, vdupq_n_u8(0x10)))
        } else {
            q
        };
        vreinterpretq_s8_u8(q)
    })
}

// `scales_k4` reads `d` and `dmin` as one 32-bit word.
const _: () = assert!(K4_DMIN == K4_D + 2);

/// `dl = d * sc` and `ml = dmin * m` of the eight sub-blocks of the Q4_K/Q5_K super-block at
/// `blk` (sub-blocks `0..4` in the first vector of each pair, `4..8` in the second), each one
/// f32 product as the specification computes it:
/// [`crate::scalar::kquants::scale_min_k4`] for all eight at once. With `A`, `B`, `C` the three
/// 4-byte words of `scales`, `A & 63` and `B & 63` are the first four scales and mins, and
/// `(C & 15) | (A >> 6) << 4` and `(C >> 4) | (B >> 6) << 4` the last four.
///
/// # Safety
///
/// `blk` must be valid for reading the super-block's first 16 bytes; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn scales_k4(blk: *const u8) -> ([float32x4_t; 2], [float32x4_t; 2]) {
    // SAFETY: d, dmin (bytes 0..4) and scales (4..16) are inside the super-block.
    let (dd, ab, c) = unsafe {
        let dd = u32::from_le(blk.add(K4_D).cast::<u32>().read_unaligned());
        let q = blk.add(K4_SCALES);
        (dd, vld1_u8(q), vld1_u8(q.add(4)))
    };
    // Lane 0: d, lane 1: dmin (the f16 after d).
    let dm = super::f16x4_to_f32(vcreate_u16(u64::from(dd)));
    // [C, C], and the shifts that take its second word right by 4.
    let cc = vreinterpret_u8_u32(vdup_lane_u32::<1>(vreinterpret_u32_u8(c)));
    let shift = vcreate_s8(0xFCFC_FCFC_0000_0000);
    let m4 = vdup_n_u8(0x0F);
    // [sc 0..4, m 0..4] and [sc 4..8, m 4..8].
    let lo = vand_u8(ab, vdup_n_u8(0x3F));
    let top = vshr_n_u8::<2>(vand_u8(ab, vdup_n_u8(0xC0)));
    let hi = vorr_u8(vand_u8(vshl_u8(cc, shift), m4), top);
    let (lo, hi) = (vreinterpret_u32_u8(lo), vreinterpret_u32_u8(hi));
    let f = |v: uint32x2_t, x: float32x4_t| {
        let w = vmovl_u8(vreinterpret_u8_u32(v));
        [
            vmulq_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(w))), x),
            vmulq_f32(vcvtq_f32_u32(vmovl_high_u16(w)), x),
        ]
    };
    (
        f(vzip1_u32(lo, hi), vdupq_laneq_f32::<0>(dm)),
        f(vzip2_u32(lo, hi), vdupq_laneq_f32::<1>(dm)),
    )
}

/// The Q4_K/Q5_K driver (module docs), with `dots` the exact dots of four groups.
///
/// # Safety
///
/// The CPU must have NEON and whatever `dots` needs.
#[inline(always)]
unsafe fn gemv_k4<const FIVE: bool>(
    w: &[u8],
    acts: &ActsQ8<'_>,
    out: &mut [f32],
    dots: impl GemvDots,
) {
    let bb = if FIVE {
        Q5_K_BLOCK_BYTES
    } else {
        Q4_K_BLOCK_BYTES
    };
    let row_bytes = check_gemv(w, acts, out, bb);
    let nsb = row_bytes / bb;
    let (qa, da, sa) = (acts.qs.as_ptr(), acts.d.as_ptr(), acts.sums.as_ptr());
    for (r, y) in out.iter_mut().enumerate() {
        // SAFETY: `check_gemv` guarantees `out.len()` rows of `nsb` super-blocks in `w` and `nsb`
        // super-blocks' activations, scales and sums included; the caller, the CPU's features.
        unsafe {
            let row = w.as_ptr().add(r * row_bytes);
            let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            for s in 0..nsb {
                let blk = row.add(s * bb);
                let (dls, mls) = scales_k4(blk);
                let g0 = s * ACT_GROUPS_PER_SUPER;
                // Both halves written out (not a loop), so that each one's shifts are constants.
                let mut half = |h: usize| {
                    let (dl, ml) = (dls[h], mls[h]);
                    let c = codes_k4::<FIVE>(blk, h);
                    let first = g0 + 8 * h;
                    let dots = [
                        dots.quad(&c, qa, first, [0, 2, 4, 6]),
                        dots.quad(&c, qa, first, [1, 3, 5, 7]),
                    ];
                    let ad = vld2q_f32(da.add(g0 + 8 * h));
                    let sums = vld2q_s32(sa.add(g0 + 8 * h));
                    let term = |dot: int32x4_t, sum: int32x4_t, a: float32x4_t| {
                        let x = vmulq_f32(vcvtq_f32_s32(dot), dl);
                        let m = vmulq_f32(vcvtq_f32_s32(sum), ml);
                        vmulq_f32(vsubq_f32(x, m), a)
                    };
                    lo = vaddq_f32(lo, term(dots[0], sums.0, ad.0));
                    hi = vaddq_f32(hi, term(dots[1], sums.1, ad.1));
                };
                half(0);
                half(1);
            }
            *y = reduce(lo, hi);
        }
    }
}

/// NEON [`crate::scalar::kquants::gemv_q4_k`], bit-exact (module docs).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemv_q4_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe { gemv_k4::<false>(w, acts, out, I16Rounds::<true>) }
}

/// NEON + dot-product [`crate::scalar::kquants::gemv_q4_k`], bit-exact (module docs).
///
/// # Safety
///
/// The CPU must have NEON and the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn neon_dotprod_gemv_q4_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv_k4::<false>(w, acts, out, PerGroup(|a, b| lanes_dotprod(a, b))) }
}

/// NEON [`crate::scalar::kquants::gemv_q5_k`], bit-exact (module docs).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemv_q5_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe { gemv_k4::<true>(w, acts, out, I16Rounds::<true>) }
}

/// NEON + dot-product [`crate::scalar::kquants::gemv_q5_k`], bit-exact (module docs).
///
/// # Safety
///
/// The CPU must have NEON and the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn neon_dotprod_gemv_q5_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv_k4::<true>(w, acts, out, PerGroup(|a, b| lanes_dotprod(a, b))) }
}

/// NEON [`crate::scalar::kquants::gemv_q6_k`], bit-exact (module docs).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemv_q6_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe { gemv(w, acts, out, I16Rounds::<false>) }
}

/// NEON + dot-product [`crate::scalar::kquants::gemv_q6_k`], bit-exact (module docs).
///
/// # Safety
///
/// The CPU must have NEON and the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn neon_dotprod_gemv_q6_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv(w, acts, out, PerGroup(|a, b| lanes_dotprod(a, b))) }
}

/// Tokens per pass of the gemms' short passes: each super-block's codes and factors are decoded
/// once for two tokens, whose running sums stay in registers. The `neon` gemms take every token
/// in such passes: with more tokens per pass the modelled cycles went up on the Cortex-A53 and
/// A72 (the `smull`/`smlal2` products of more tokens no longer fit the 32 vector registers).
const PAIR: usize = 2;

/// Tokens per pass of the `neon-dotprod` gemms' long passes, which take the tokens up to the
/// last multiple of eight (the rest go in [`PAIR`]s): the codes of a half stay in registers
/// while a loop over the eight tokens keeps their running sums on the stack (one `sdot` per
/// group leaves few values live); in the Neoverse N1 model this was faster than passes of two
/// or four.
const DOTPROD_TOKENS: usize = 8;

/// [`quad`] on ARMv8.0 for the gemvs and gemms, with fewer widening steps than a `saddlp` per
/// group: each group's `smull`/`smlal2` pair sums (eight i16 lanes) are added pairwise in i16 by
/// `addp` before `saddlp` widens them. With `EIGHT`, two rounds in i16 (sums of eight products, at
/// most `8 * 31 * 128 = 31744`: Q4_K's and Q5_K's codes are `0..32`), then one `saddlp`; without it
/// (Q6_K's codes `-32..32`, whose eight products can reach `8 * 32 * 128 = 2^15`), one round in i16
/// (at most `2^14`), two `saddlp` and an `addp` in i32. The dots are exact either way, the same
/// integers as [`quad`]'s.
///
/// # Safety
///
/// As [`quad`]'s, with NEON.
#[inline(always)]
unsafe fn quad_neon<const EIGHT: bool>(
    codes: &[int8x16_t; 8],
    qa: *const i8,
    first: usize,
    pick: [usize; 4],
) -> int32x4_t {
    // SAFETY: the caller guarantees the groups' activations and NEON.
    unsafe {
        let pairs = |x: usize| {
            let (w, a) = (codes[x], vld1q_s8(qa.add((first + x) * QS)));
            vmlal_high_s8(vmull_s8(vget_low_s8(w), vget_low_s8(a)), w, a)
        };
        let [a, b, c, e] = pick;
        let ab = vpaddq_s16(pairs(a), pairs(b));
        let ce = vpaddq_s16(pairs(c), pairs(e));
        if EIGHT {
            vpaddlq_s16(vpaddq_s16(ab, ce))
        } else {
            vpaddq_s32(vpaddlq_s16(ab), vpaddlq_s16(ce))
        }
    }
}

/// A gemm's shape, checked by [`check_kquant_gemm`].
#[derive(Clone, Copy)]
struct Shape {
    /// Tokens.
    nb: usize,
    /// Columns (activations per token).
    cols: usize,
    /// Weight rows (results per token).
    rows: usize,
    /// Bytes per weight row.
    row_bytes: usize,
}

/// The gemms' shape checks ([`check_gemm`], and [`check_gemv`] for the first token, whose shape
/// every token shares; [`token_group`] slices each token's activations, scales and sums).
#[inline(always)]
fn check_kquant_gemm(
    w: &[u8],
    acts: &ActsQ8<'_>,
    nb: usize,
    out: &[f32],
    block_bytes: usize,
    name: &str,
) -> Shape {
    let (cols, rows) = check_gemm(acts, nb, out.len(), name);
    let row_bytes = check_gemv(w, &token_acts(acts, cols, 0), &out[..rows], block_bytes);
    Shape {
        nb,
        cols,
        rows,
        row_bytes,
    }
}

/// The type of a gemm's `quad`: the exact dots of four groups, as [`quad`] gives them.
trait Quad: Fn(&[int8x16_t; 8], *const i8, usize, [usize; 4]) -> int32x4_t {}
impl<F: Fn(&[int8x16_t; 8], *const i8, usize, [usize; 4]) -> int32x4_t> Quad for F {}

/// The Q6_K gemm's passes of `T` tokens over the tokens `tokens` (module docs): [`gemv`]'s
/// operations in its order for each token, each half's codes and scales decoded once for the
/// pass. A pass that runs past the gemm's last token repeats it and drops its results.
///
/// # Safety
///
/// `shape` must be [`check_kquant_gemm`]'s for these `w`, `acts` and `out` and Q6_K, `tokens`
/// inside `0..shape.nb`; the CPU must have NEON and whatever `quad` needs.
#[inline(always)]
unsafe fn passes_q6_k<const T: usize>(
    w: &[u8],
    acts: &ActsQ8<'_>,
    shape: Shape,
    tokens: core::ops::Range<usize>,
    out: &mut [f32],
    quad: &impl Quad,
) {
    let Shape {
        nb,
        cols,
        rows,
        row_bytes,
    } = shape;
    let nsb = row_bytes / Q6_K_BLOCK_BYTES;
    let end = tokens.end;
    for t0 in tokens.step_by(T) {
        let tn = (end - t0).min(T);
        // Each slice holds its token's `nsb` super-blocks' activations and scales.
        let at: [ActsQ8<'_>; T] = token_group(acts, cols, nb, t0);
        let qa = at.map(|a| a.qs.as_ptr());
        let da = at.map(|a| a.d.as_ptr());
        for r in 0..rows {
            // SAFETY: the shape check guarantees `rows` rows of `nsb` super-blocks in `w`, and
            // each token's slices hold `nsb` super-blocks' activations and scales; the caller,
            // the CPU's features.
            let acc = unsafe {
                let row = w.as_ptr().add(r * row_bytes);
                let mut lo = [vdupq_n_f32(0.0); T];
                let mut hi = [vdupq_n_f32(0.0); T];
                for s in 0..nsb {
                    let blk = row.add(s * Q6_K_BLOCK_BYTES);
                    let d = vdupq_n_f32(super::f16_to_f32(u16::from_le_bytes([
                        *blk.add(Q6_K_D),
                        *blk.add(Q6_K_D + 1),
                    ])));
                    let sc = vld1q_s8(blk.add(Q6_K_SCALES).cast());
                    let sc16 = [vmovl_s8(vget_low_s8(sc)), vmovl_s8(vget_high_s8(sc))];
                    let g0 = s * ACT_GROUPS_PER_SUPER;
                    for (h, &s8) in sc16.iter().enumerate() {
                        let c = codes(blk, h);
                        let ev = vmovl_s16(vget_low_s16(vuzp1q_s16(s8, s8)));
                        let od = vmovl_s16(vget_low_s16(vuzp2q_s16(s8, s8)));
                        let first = g0 + 8 * h;
                        for t in 0..T {
                            let dots = [
                                quad(&c, qa[t], first, [0, 2, 4, 6]),
                                quad(&c, qa[t], first, [1, 3, 5, 7]),
                            ];
                            let ad = vld2q_f32(da[t].add(first));
                            let x0 = vmulq_f32(
                                vmulq_f32(vcvtq_f32_s32(vmulq_s32(ev, dots[0])), d),
                                ad.0,
                            );
                            let x1 = vmulq_f32(
                                vmulq_f32(vcvtq_f32_s32(vmulq_s32(od, dots[1])), d),
                                ad.1,
                            );
                            lo[t] = vaddq_f32(lo[t], x0);
                            hi[t] = vaddq_f32(hi[t], x1);
                        }
                    }
                }
                core::array::from_fn::<f32, T, _>(|t| reduce(lo[t], hi[t]))
            };
            for (t, &y) in acc.iter().enumerate().take(tn) {
                out[(t0 + t) * rows + r] = y;
            }
        }
    }
}

/// The Q4_K/Q5_K gemm's passes of `T` tokens over the tokens `tokens` (module docs):
/// [`gemv_k4`]'s operations in its order for each token, each super-block's factors and each
/// half's codes decoded once for the pass. A pass that runs past the gemm's last token repeats
/// it and drops its results.
///
/// # Safety
///
/// `shape` must be [`check_kquant_gemm`]'s for these `w`, `acts` and `out` and the type,
/// `tokens` inside `0..shape.nb`; the CPU must have NEON and whatever `quad` needs.
#[inline(always)]
unsafe fn passes_k4<const FIVE: bool, const T: usize>(
    w: &[u8],
    acts: &ActsQ8<'_>,
    shape: Shape,
    tokens: core::ops::Range<usize>,
    out: &mut [f32],
    quad: &impl Quad,
) {
    let Shape {
        nb,
        cols,
        rows,
        row_bytes,
    } = shape;
    let bb = if FIVE {
        Q5_K_BLOCK_BYTES
    } else {
        Q4_K_BLOCK_BYTES
    };
    let nsb = row_bytes / bb;
    let end = tokens.end;
    for t0 in tokens.step_by(T) {
        let tn = (end - t0).min(T);
        // Each slice holds its token's `nsb` super-blocks' activations, scales and sums.
        let at: [ActsQ8<'_>; T] = token_group(acts, cols, nb, t0);
        let qa = at.map(|a| a.qs.as_ptr());
        let da = at.map(|a| a.d.as_ptr());
        let sa = at.map(|a| a.sums.as_ptr());
        for r in 0..rows {
            // SAFETY: the shape check guarantees `rows` rows of `nsb` super-blocks in `w`, and
            // each token's slices hold `nsb` super-blocks' activations, scales and sums; the
            // caller, the CPU's features.
            let acc = unsafe {
                let row = w.as_ptr().add(r * row_bytes);
                let mut lo = [vdupq_n_f32(0.0); T];
                let mut hi = [vdupq_n_f32(0.0); T];
                for s in 0..nsb {
                    let blk = row.add(s * bb);
                    let (dls, mls) = scales_k4(blk);
                    let g0 = s * ACT_GROUPS_PER_SUPER;
                    // Both halves written out, as in the gemv.
                    let mut half = |h: usize| {
                        let (dl, ml) = (dls[h], mls[h]);
                        let c = codes_k4::<FIVE>(blk, h);
                        let first = g0 + 8 * h;
                        for t in 0..T {
                            let dots = [
                                quad(&c, qa[t], first, [0, 2, 4, 6]),
                                quad(&c, qa[t], first, [1, 3, 5, 7]),
                            ];
                            let ad = vld2q_f32(da[t].add(first));
                            let sums = vld2q_s32(sa[t].add(first));
                            let term = |dot: int32x4_t, sum: int32x4_t, a: float32x4_t| {
                                let x = vmulq_f32(vcvtq_f32_s32(dot), dl);
                                let m = vmulq_f32(vcvtq_f32_s32(sum), ml);
                                vmulq_f32(vsubq_f32(x, m), a)
                            };
                            lo[t] = vaddq_f32(lo[t], term(dots[0], sums.0, ad.0));
                            hi[t] = vaddq_f32(hi[t], term(dots[1], sums.1, ad.1));
                        }
                    };
                    half(0);
                    half(1);
                }
                core::array::from_fn::<f32, T, _>(|t| reduce(lo[t], hi[t]))
            };
            for (t, &y) in acc.iter().enumerate().take(tn) {
                out[(t0 + t) * rows + r] = y;
            }
        }
    }
}

/// The Q6_K gemm: passes of `LONG` tokens up to the last multiple of `LONG` when `LONG` is more
/// than [`PAIR`], then passes of [`PAIR`], then one of a single token if one is left.
///
/// # Safety
///
/// The CPU must have NEON and whatever `quad` needs.
#[inline(always)]
unsafe fn gemm_q6_k<const LONG: usize>(
    w: &[u8],
    acts: &ActsQ8<'_>,
    nb: usize,
    out: &mut [f32],
    quad: impl Quad,
) {
    let shape = check_kquant_gemm(w, acts, nb, out, Q6_K_BLOCK_BYTES, "Q6_K");
    let long = if LONG > PAIR { nb - nb % LONG } else { 0 };
    // SAFETY: the shape is the check's and the token ranges are inside `0..nb`; the caller
    // guarantees the CPU's features.
    unsafe {
        if LONG > PAIR {
            passes_q6_k::<LONG>(w, acts, shape, 0..long, out, &quad);
        }
        let pairs = long + (nb - long) / PAIR * PAIR;
        passes_q6_k::<PAIR>(w, acts, shape, long..pairs, out, &quad);
        if pairs < nb {
            passes_q6_k::<1>(w, acts, shape, pairs..nb, out, &quad);
        }
    }
}

/// The Q4_K/Q5_K gemm: passes of `LONG` tokens up to the last multiple of `LONG` when `LONG` is
/// more than [`PAIR`], then passes of [`PAIR`], then one of a single token if one is left.
///
/// # Safety
///
/// The CPU must have NEON and whatever `quad` needs.
#[inline(always)]
unsafe fn gemm_k4<const FIVE: bool, const LONG: usize>(
    w: &[u8],
    acts: &ActsQ8<'_>,
    nb: usize,
    out: &mut [f32],
    quad: impl Quad,
) {
    let (bb, name) = if FIVE {
        (Q5_K_BLOCK_BYTES, "Q5_K")
    } else {
        (Q4_K_BLOCK_BYTES, "Q4_K")
    };
    let shape = check_kquant_gemm(w, acts, nb, out, bb, name);
    let long = if LONG > PAIR { nb - nb % LONG } else { 0 };
    // SAFETY: the shape is the check's and the token ranges are inside `0..nb`; the caller
    // guarantees the CPU's features.
    unsafe {
        if LONG > PAIR {
            passes_k4::<FIVE, LONG>(w, acts, shape, 0..long, out, &quad);
        }
        let pairs = long + (nb - long) / PAIR * PAIR;
        passes_k4::<FIVE, PAIR>(w, acts, shape, long..pairs, out, &quad);
        if pairs < nb {
            passes_k4::<FIVE, 1>(w, acts, shape, pairs..nb, out, &quad);
        }
    }
}

/// NEON [`crate::scalar::kquants::gemv_q4_k`] for `nb` tokens (`out[t * rows + r]`), bit-exact
/// with one gemv per token (module docs).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemm_q4_k(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe { gemm_k4::<false, PAIR>(w, acts, nb, out, |c, q, f, p| quad_neon::<true>(c, q, f, p)) }
}

/// NEON + dot-product [`crate::scalar::kquants::gemv_q4_k`] for `nb` tokens (`out[t * rows +
/// r]`), bit-exact with one gemv per token (module docs).
///
/// # Safety
///
/// The CPU must have NEON and the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn neon_dotprod_gemm_q4_k(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe {
        gemm_k4::<false, DOTPROD_TOKENS>(w, acts, nb, out, |c, q, f, p| {
            quad(&|a, b| lanes_dotprod(a, b), c, q, f, p)
        })
    }
}

/// NEON [`crate::scalar::kquants::gemv_q5_k`] for `nb` tokens (`out[t * rows + r]`), bit-exact
/// with one gemv per token (module docs).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemm_q5_k(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe { gemm_k4::<true, PAIR>(w, acts, nb, out, |c, q, f, p| quad_neon::<true>(c, q, f, p)) }
}

/// NEON + dot-product [`crate::scalar::kquants::gemv_q5_k`] for `nb` tokens (`out[t * rows +
/// r]`), bit-exact with one gemv per token (module docs).
///
/// # Safety
///
/// The CPU must have NEON and the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn neon_dotprod_gemm_q5_k(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe {
        gemm_k4::<true, DOTPROD_TOKENS>(w, acts, nb, out, |c, q, f, p| {
            quad(&|a, b| lanes_dotprod(a, b), c, q, f, p)
        })
    }
}

/// NEON [`crate::scalar::kquants::gemv_q6_k`] for `nb` tokens (`out[t * rows + r]`), bit-exact
/// with one gemv per token (module docs).
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_gemm_q6_k(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same feature, guaranteed by the caller.
    unsafe {
        gemm_q6_k::<PAIR>(w, acts, nb, out, |c, q, f, p| {
            quad_neon::<false>(c, q, f, p)
        })
    }
}

/// NEON + dot-product [`crate::scalar::kquants::gemv_q6_k`] for `nb` tokens (`out[t * rows +
/// r]`), bit-exact with one gemv per token (module docs).
///
/// # Safety
///
/// The CPU must have NEON and the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn neon_dotprod_gemm_q6_k(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe {
        gemm_q6_k::<DOTPROD_TOKENS>(w, acts, nb, out, |c, q, f, p| {
            quad(&|a, b| lanes_dotprod(a, b), c, q, f, p)
        })
    }
}
