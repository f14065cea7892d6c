//! NEON int8 kernels for the legacy block types and the activation quantizer, bit-exact with
//! [`crate::scalar::legacy`].
//!
//! gemv: four rows per pass, the rows in the lanes of the float steps (as the x86 kernels hold
//! eight). Per row and block the signed weights (`q - 8`, `q - 16`, or the unsigned / Q8_0 values
//! as they are) are multiplied with the activations of each half block, by `smull`/`smlal2`
//! (pairs of i8·i8 summed in i16: at most 2·128·127, no overflow) and `saddlp` on ARMv8.0 (for
//! the 4- and 5-bit types the two halves' pair sums first added pairwise in i16 by one `addp`,
//! [`isums_neon16`]) or by one `sdot` with the dot-product extension, leaving four i32 lane sums
//! per half; two rounds of `addp` over the four rows and a `uzp1`/`uzp2` give the exact `isum0` (values 0..16, scale group
//! `2b`) and `isum1` (values 16..32, group `2b + 1`) of the four rows in two vectors. The rows' f16
//! scales (with Q4_1's and Q5_1's `m`: one 32-bit load per row) are widened with `fcvtl`, and the
//! block term and the running sum are the specification's operations in its order, lane by lane.
//! Q5_0's and Q5_1's fifth bits come from one 16-byte load of `qh`, spread over the lanes by two
//! `tbl` and picked out per lane by a test (Q5_0, which takes its `- 16` there too) or a shift.
//!
//! gemm (prefill; Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): the same passes of four rows, each block's
//! weights (Q5's fifth bits as in the gemv) and scales unpacked once for two tokens, each token
//! with its own running sums and the gemv's operations in the gemv's order. Two tokens, not four:
//! with four, the registers did not hold the four rows' weights and the tokens' sums, and the
//! modelled cycles went up on some cores.

use core::arch::aarch64::*;

use super::ternary::sdot;
use crate::acts::{ActsQ8, ActsQ8Mut, QK, QS};
use crate::scalar::legacy::{check_acts, check_gemv};

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

const fn block_bytes(k: u8) -> usize {
    match k {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    }
}

const fn type_name(k: u8) -> &'static str {
    match k {
        Q4_0 => "Q4_0",
        Q4_1 => "Q4_1",
        Q5_0 => "Q5_0",
        Q5_1 => "Q5_1",
        _ => "Q8_0",
    }
}

/// The 32 high bits `qh` in bytes `0..4` of `h`, spread over the lanes by two `tbl`: lane `j`
/// of the first vector holds the byte with bit `j` (lanes `0..8`: byte 0, `8..16`: byte 1, so
/// the bit of element `j` is bit `j % 8` of lane `j`), the second the same for elements `16..32`.
#[inline]
#[target_feature(enable = "neon")]
fn spread_high_bits(h: uint8x16_t) -> (uint8x16_t, uint8x16_t) {
    const SPREAD: [[u8; 16]; 2] = [
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
        [2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3],
    ];
    // SAFETY: each array holds 16 bytes.
    let (s0, s1) = unsafe { (vld1q_u8(SPREAD[0].as_ptr()), vld1q_u8(SPREAD[1].as_ptr())) };
    (vqtbl1q_u8(h, s0), vqtbl1q_u8(h, s1))
}

/// The block's 32 weights as i8, elements 0..16 and 16..32.
///
/// # Safety
///
/// `blk` must be valid for reading one block of type `K`; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block_weights<const K: u8>(blk: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: every offset below stays inside the block the caller guarantees readable.
    unsafe {
        let qs_off = match K {
            Q4_0 => 2,
            Q4_1 => 4,
            Q5_0 => 6,
            Q5_1 => 8,
            _ => 2,
        };
        if K == Q8_0 {
            return (vld1q_s8(blk.add(2).cast()), vld1q_s8(blk.add(18).cast()));
        }
        let v = vld1q_u8(blk.add(qs_off));
        let mut lo = vandq_u8(v, vdupq_n_u8(0x0F));
        let mut hi = vshrq_n_u8::<4>(v);
        if K == Q5_0 || K == Q5_1 {
            // qh (4 bytes) and the first 12 bytes of qs: 16 bytes inside the block.
            let (sl, sh) = spread_high_bits(vld1q_u8(blk.add(qs_off - 4)));
            if K == Q5_0 {
                // `q - 16` with q = nibble + 16 * bit: the nibble where the bit is set, the
                // nibble with its high four bits set (as i8, nibble - 16) where it is not. The
                // bit of lane `j` is tested against `1 << (j % 8)`.
                const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
                // SAFETY: BIT holds 16 bytes.
                let m = vld1q_u8(BIT.as_ptr());
                let f0 = vdupq_n_u8(0xF0);
                lo = vorrq_u8(lo, vbicq_u8(f0, vtstq_u8(sl, m)));
                hi = vorrq_u8(hi, vbicq_u8(f0, vtstq_u8(sh, m)));
            } else {
                // The bit of lane `j` shifted to bit 4 (left by `4 - j % 8`), then masked: one
                // instruction fewer than a test here (the model of `cargo xtask cycles`).
                const SHIFT: [i8; 16] = [4, 3, 2, 1, 0, -1, -2, -3, 4, 3, 2, 1, 0, -1, -2, -3];
                // SAFETY: SHIFT holds 16 bytes.
                let sv = vld1q_s8(SHIFT.as_ptr());
                let x10 = vdupq_n_u8(0x10);
                lo = vorrq_u8(lo, vandq_u8(vshlq_u8(sl, sv), x10));
                hi = vorrq_u8(hi, vandq_u8(vshlq_u8(sh, sv), x10));
            }
        }
        let (lo, hi) = (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi));
        match K {
            Q4_0 => (vsubq_s8(lo, vdupq_n_s8(8)), vsubq_s8(hi, vdupq_n_s8(8))),
            _ => (lo, hi),
        }
    }
}

/// Rows per pass.
const R: usize = 4;

/// The f16 values at `p[i] + off`, one per row, as f32 lanes.
///
/// # Safety
///
/// Each `p[i] + off` must be valid for reading 2 bytes; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn f16x4(p: &[*const u8; R], off: usize) -> float32x4_t {
    let mut bits = 0u64;
    for (i, q) in p.iter().enumerate() {
        // SAFETY: the caller guarantees the two bytes.
        let h = u16::from_le(unsafe { q.add(off).cast::<u16>().read_unaligned() });
        bits |= u64::from(h) << (16 * i);
    }
    super::f16x4_to_f32(vcreate_u16(bits))
}

/// The f16 pairs at `p[i] + off` (a block's scale and the `m` after it), one per row, as the
/// scales' f32 lanes and the `m`s': one 32-bit load per row, two `fcvtl` and a `uzp1`/`uzp2`.
///
/// # Safety
///
/// Each `p[i] + off` must be valid for reading 4 bytes; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn f16x4_pairs(p: &[*const u8; R], off: usize) -> (float32x4_t, float32x4_t) {
    let w = p.map(|q| {
        // SAFETY: the caller guarantees the four bytes.
        let v = unsafe { q.add(off).cast::<u32>().read_unaligned() };
        u64::from(u32::from_le(v))
    });
    // [d0 m0 d1 m1] and [d2 m2 d3 m3].
    let lo = super::f16x4_to_f32(vcreate_u16(w[0] | w[1] << 32));
    let hi = super::f16x4_to_f32(vcreate_u16(w[2] | w[3] << 32));
    (vuzp1q_f32(lo, hi), vuzp2q_f32(lo, hi))
}

/// The exact `isum0` and `isum1` (lane `i`: row `i`) of the four rows' blocks `w` (elements
/// `0..16`, `16..32`) against the block's activations `a0`, `a1`: per half, `smull`/`smlal2` into
/// i16 (pairs of products, at most `2 * 128 * 127`) and `saddlp` to four i32 lane sums; two
/// rounds of `addp` over the rows and `uzp1`/`uzp2`.
#[inline]
#[target_feature(enable = "neon")]
fn isums_neon(
    w: [(int8x16_t, int8x16_t); R],
    a0: int8x16_t,
    a1: int8x16_t,
) -> (int32x4_t, int32x4_t) {
    let half = |w: int8x16_t, a: int8x16_t| {
        vpaddlq_s16(vmlal_high_s8(
            vmull_s8(vget_low_s8(w), vget_low_s8(a)),
            w,
            a,
        ))
    };
    rows_isums(w.map(|(w0, w1)| vpaddq_s32(half(w0, a0), half(w1, a1))))
}

/// `isum0` and `isum1` of the four rows (lane `i`: row `i`) from each row's half-block sums,
/// `[h0, h0, h1, h1]` split in two lanes each: one more `addp` over pairs of rows, then
/// `uzp1`/`uzp2`.
#[inline]
#[target_feature(enable = "neon")]
fn rows_isums(x: [int32x4_t; R]) -> (int32x4_t, int32x4_t) {
    // [r0 h0, r0 h1, r1 h0, r1 h1] and the same for rows 2 and 3.
    let (y01, y23) = (vpaddq_s32(x[0], x[1]), vpaddq_s32(x[2], x[3]));
    (vuzp1q_s32(y01, y23), vuzp2q_s32(y01, y23))
}

/// [`isums_neon`] for weights of magnitude below 32 (Q4_0, Q4_1, Q5_0, Q5_1): each row's two
/// halves' `smull`/`smlal2` pair sums are added pairwise in i16 by one `addp` (sums of four
/// products, at most `4 * 31 * 128`) before one `saddlp` widens both halves, which leaves the
/// same lane layout as [`isums_neon`]'s first `addp` with half its widening instructions. Q8_0's
/// products reach `128 * 127`, so four of them do not fit i16: it keeps [`isums_neon`].
#[inline]
#[target_feature(enable = "neon")]
fn isums_neon16(
    w: [(int8x16_t, int8x16_t); R],
    a0: int8x16_t,
    a1: int8x16_t,
) -> (int32x4_t, int32x4_t) {
    let pairs =
        |w: int8x16_t, a: int8x16_t| vmlal_high_s8(vmull_s8(vget_low_s8(w), vget_low_s8(a)), w, a);
    // [r h0, r h0, r h1, r h1]: each half's dot in two lanes, as `isums_neon`'s first `addp`.
    rows_isums(w.map(|(w0, w1)| vpaddlq_s16(vpaddq_s16(pairs(w0, a0), pairs(w1, a1)))))
}

/// [`isums_neon`] with one `sdot` per half block.
///
/// # Safety
///
/// The CPU must have the dot-product extension.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn isums_dot(
    w: [(int8x16_t, int8x16_t); R],
    a0: int8x16_t,
    a1: int8x16_t,
) -> (int32x4_t, int32x4_t) {
    let z = vdupq_n_s32(0);
    // SAFETY: the caller guarantees the dot-product extension.
    rows_isums(w.map(|(w0, w1)| unsafe { vpaddq_s32(sdot(z, w0, a0), sdot(z, w1, a1)) }))
}

/// Defines the gemv of type `$k` with target features `$feat` whose block sums come from
/// `$isums` (`isum0` and `isum1` of the four rows, one per lane): four rows per pass, rows in the
/// lanes of the float steps. The rows' f16 scales are gathered and widened once per block, and
/// the specification's float steps run lane by lane (no fused multiply-add). A row count that is
/// not a multiple of four repeats the last row and drops the extra results.
macro_rules! gemv_legacy {
    ($(#[$doc:meta])* $name:ident, $k:expr, $feat:literal, $isums:ident) => {
        $(#[$doc])*
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
            const K: u8 = $k;
            let bb = block_bytes(K);
            let (nb, row_bytes) = check_gemv(w, acts, out.len(), bb, type_name(K));
            let rows = out.len();
            if rows == 0 || row_bytes == 0 {
                out.fill(0.0);
                return;
            }
            let qa = acts.qs.as_ptr();
            let mut r = 0;
            while r < rows {
                // Rows `r .. r + R`, the last one repeated past the end (its results dropped).
                let p: [*const u8; R] = super::row_ptrs(w, r, rows - 1, row_bytes);
                let mut acc = vdupq_n_f32(0.0);
                for b in 0..nb {
                    let off = b * bb;
                    // SAFETY: block `b`'s 32 activations exist (shape check).
                    let (a0, a1) = unsafe { (vld1q_s8(qa.add(b * QK)), vld1q_s8(qa.add(b * QK + QS))) };
                    // SAFETY: block `b` of each row is inside `w` (shape check); the CPU has
                    // this function's features.
                    let (i0, i1) = unsafe {
                        let wts = p.map(|q| block_weights::<K>(q.add(off)));
                        $isums(wts, a0, a1)
                    };
                    let (da0, da1) = (acts.d[2 * b], acts.d[2 * b + 1]);
                    // SAFETY: each block starts with its f16 scale (and then `m` for Q4_1 and
                    // Q5_1).
                    let (dw, mw) = unsafe {
                        if K == Q4_1 || K == Q5_1 {
                            f16x4_pairs(&p, off)
                        } else {
                            (f16x4(&p, off), vdupq_n_f32(0.0))
                        }
                    };
                    let mut t = vaddq_f32(
                        vmulq_f32(vmulq_n_f32(dw, da0), vcvtq_f32_s32(i0)),
                        vmulq_f32(vmulq_n_f32(dw, da1), vcvtq_f32_s32(i1)),
                    );
                    if K == Q4_1 || K == Q5_1 {
                        let (sa0, sa1) = (acts.sums[2 * b], acts.sums[2 * b + 1]);
                        t = vaddq_f32(t, vmulq_n_f32(mw, da0 * sa0 as f32 + da1 * sa1 as f32));
                    }
                    acc = vaddq_f32(acc, t);
                }
                let n = (rows - r).min(R);
                let mut v = [0f32; R];
                // SAFETY: `v` holds four f32.
                unsafe { vst1q_f32(v.as_mut_ptr(), acc) };
                out[r..r + n].copy_from_slice(&v[..n]);
                r += R;
            }
        }
    };
}

gemv_legacy! {
    /// NEON [`crate::scalar::gemv_q4_0`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemv_q4_0, Q4_0, "neon", isums_neon16
}
gemv_legacy! {
    /// NEON [`crate::scalar::gemv_q4_1`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemv_q4_1, Q4_1, "neon", isums_neon16
}
gemv_legacy! {
    /// NEON [`crate::scalar::gemv_q5_0`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemv_q5_0, Q5_0, "neon", isums_neon16
}
gemv_legacy! {
    /// NEON [`crate::scalar::gemv_q5_1`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemv_q5_1, Q5_1, "neon", isums_neon16
}
gemv_legacy! {
    /// NEON [`crate::scalar::gemv_q8_0`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemv_q8_0, Q8_0, "neon", isums_neon
}
gemv_legacy! {
    /// NEON + dot product [`crate::scalar::gemv_q4_0`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension.
    neon_dotprod_gemv_q4_0, Q4_0, "neon,dotprod", isums_dot
}
gemv_legacy! {
    /// NEON + dot product [`crate::scalar::gemv_q4_1`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension.
    neon_dotprod_gemv_q4_1, Q4_1, "neon,dotprod", isums_dot
}
gemv_legacy! {
    /// NEON + dot product [`crate::scalar::gemv_q5_0`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension.
    neon_dotprod_gemv_q5_0, Q5_0, "neon,dotprod", isums_dot
}
gemv_legacy! {
    /// NEON + dot product [`crate::scalar::gemv_q5_1`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension.
    neon_dotprod_gemv_q5_1, Q5_1, "neon,dotprod", isums_dot
}
gemv_legacy! {
    /// NEON + dot product [`crate::scalar::gemv_q8_0`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension.
    neon_dotprod_gemv_q8_0, Q8_0, "neon,dotprod", isums_dot
}

/// Defines the gemm of type `$k` (features `$feat`, block sums `$isums`): the gemv's passes of
/// four rows, each block's weights and scales unpacked once and multiplied with the activations
/// of `$tokens` tokens, each with its own running sums; per token the operations and their
/// order are the gemv's, so every result has its bits (a short last group of tokens repeats its
/// last token and drops the extra results).
macro_rules! gemm_legacy {
    ($(#[$doc:meta])* $name:ident, $k:expr, $feat:literal, $isums:ident, $tokens:expr) => {
        $(#[$doc])*
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
            use crate::scalar::ternary::{check_gemm, token_acts, token_group};
            const K: u8 = $k;
            const GEMM_TOKENS: usize = $tokens;
            let bb = block_bytes(K);
            let (cols, rows) = check_gemm(acts, nb, out.len(), type_name(K));
            let mut shape = (0, 0);
            for t in 0..nb {
                shape = check_gemv(w, &token_acts(acts, cols, t), rows, bb, type_name(K));
            }
            let (nblk, row_bytes) = shape;
            if rows == 0 || row_bytes == 0 {
                out.fill(0.0);
                return;
            }
            for t0 in (0..nb).step_by(GEMM_TOKENS) {
                let tn = (nb - t0).min(GEMM_TOKENS);
                let at: [ActsQ8<'_>; GEMM_TOKENS] = token_group(acts, cols, nb, t0);
                let mut r = 0;
                while r < rows {
                    // Rows `r .. r + R`, the last one repeated past the end (its results dropped).
                    let p: [*const u8; R] = super::row_ptrs(w, r, rows - 1, row_bytes);
                    let mut acc = [vdupq_n_f32(0.0); GEMM_TOKENS];
                    for b in 0..nblk {
                        let off = b * bb;
                        // SAFETY: block `b` of each row is inside `w` (shape check), and starts
                        // with its scales.
                        let (wts, (dw, mw)) = unsafe {
                            (
                                p.map(|q| block_weights::<K>(q.add(off))),
                                if K == Q4_1 || K == Q5_1 {
                                    f16x4_pairs(&p, off)
                                } else {
                                    (f16x4(&p, off), vdupq_n_f32(0.0))
                                },
                            )
                        };
                        // Each token's offset term first (same operations, same bits): in this
                        // order the four rows' `mw` is not held across the products.
                        let offs: [float32x4_t; GEMM_TOKENS] = core::array::from_fn(|t| {
                            if K == Q4_1 || K == Q5_1 {
                                let (d, s) = (at[t].d, at[t].sums);
                                let f = d[2 * b] * s[2 * b] as f32 + d[2 * b + 1] * s[2 * b + 1] as f32;
                                vmulq_n_f32(mw, f)
                            } else {
                                vdupq_n_f32(0.0)
                            }
                        });
                        for ((acc_t, a_t), &o) in acc.iter_mut().zip(&at).zip(&offs) {
                            let (da0, da1) = (a_t.d[2 * b], a_t.d[2 * b + 1]);
                            let qa = a_t.qs.as_ptr();
                            // SAFETY: block `b`'s 32 activations of the token exist (shape
                            // check); the CPU has this function's features.
                            let (i0, i1) = unsafe {
                                $isums(wts, vld1q_s8(qa.add(b * QK)), vld1q_s8(qa.add(b * QK + QS)))
                            };
                            let mut t = vaddq_f32(
                                vmulq_f32(vmulq_n_f32(dw, da0), vcvtq_f32_s32(i0)),
                                vmulq_f32(vmulq_n_f32(dw, da1), vcvtq_f32_s32(i1)),
                            );
                            if K == Q4_1 || K == Q5_1 {
                                t = vaddq_f32(t, o);
                            }
                            *acc_t = vaddq_f32(*acc_t, t);
                        }
                    }
                    let n = (rows - r).min(R);
                    for (t, acc_t) in acc.iter().enumerate().take(tn) {
                        let mut v = [0f32; R];
                        // SAFETY: `v` holds four f32.
                        unsafe { vst1q_f32(v.as_mut_ptr(), *acc_t) };
                        let o = (t0 + t) * rows + r;
                        out[o..o + n].copy_from_slice(&v[..n]);
                    }
                    r += R;
                }
            }
        }
    };
}

gemm_legacy! {
    /// NEON [`crate::scalar::gemv_q4_0`] for several tokens, bit-exact with one gemv per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemm_q4_0, Q4_0, "neon", isums_neon16, 2
}
gemm_legacy! {
    /// NEON [`crate::scalar::gemv_q4_1`] for several tokens, bit-exact with one gemv per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemm_q4_1, Q4_1, "neon", isums_neon16, 2
}
gemm_legacy! {
    /// NEON [`crate::scalar::gemv_q5_0`] for several tokens, bit-exact with one gemv per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemm_q5_0, Q5_0, "neon", isums_neon16, 2
}
gemm_legacy! {
    /// NEON [`crate::scalar::gemv_q5_1`] for several tokens, bit-exact with one gemv per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemm_q5_1, Q5_1, "neon", isums_neon16, 2
}
gemm_legacy! {
    /// NEON [`crate::scalar::gemv_q8_0`] for several tokens, bit-exact with one gemv per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemm_q8_0, Q8_0, "neon", isums_neon, 2
}
gemm_legacy! {
    /// NEON + dot product [`crate::scalar::gemv_q4_0`] for several tokens, bit-exact with one
    /// gemv per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension.
    neon_dotprod_gemm_q4_0, Q4_0, "neon,dotprod", isums_dot, 2
}
gemm_legacy! {
    /// NEON + dot product [`crate::scalar::gemv_q4_1`] for several tokens, bit-exact with one
    /// gemv per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension.
    neon_dotprod_gemm_q4_1, Q4_1, "neon,dotprod", isums_dot, 2
}
gemm_legacy! {
    /// NEON + dot product [`crate::scalar::gemv_q5_0`] for several tokens, bit-exact with one
    /// gemv per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension.
    neon_dotprod_gemm_q5_0, Q5_0, "neon,dotprod", isums_dot, 2
}
gemm_legacy! {
    /// NEON + dot product [`crate::scalar::gemv_q5_1`] for several tokens, bit-exact with one
    /// gemv per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension.
    neon_dotprod_gemm_q5_1, Q5_1, "neon,dotprod", isums_dot, 2
}
gemm_legacy! {
    /// NEON + dot product [`crate::scalar::gemv_q8_0`] for several tokens, bit-exact with one
    /// gemv per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension.
    neon_dotprod_gemm_q8_0, Q8_0, "neon,dotprod", isums_dot, 2
}

/// NEON [`crate::scalar::quantize_acts`], bit-exact: the same `amax / 127` per group of
/// [`QS`], the same multiply by the inverse, and `fcvtns`, which rounds to nearest even.
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_quantize_acts(x: &[f32], out: &mut ActsQ8Mut<'_>) {
    check_acts(x, out);
    for g in 0..x.len() / QS {
        // SAFETY: group `g` is inside `x` (`check_acts`).
        let v: [float32x4_t; 4] =
            core::array::from_fn(|i| unsafe { vld1q_f32(x.as_ptr().add(g * QS + 4 * i)) });
        let m01 = vmaxq_f32(vabsq_f32(v[0]), vabsq_f32(v[1]));
        let m23 = vmaxq_f32(vabsq_f32(v[2]), vabsq_f32(v[3]));
        let amax = vmaxvq_f32(vmaxq_f32(m01, m23));
        let d = amax / 127.0;
        let qg = &mut out.qs[g * QS..(g + 1) * QS];
        if d < f32::MIN_POSITIVE {
            qg.fill(0);
            out.d[g] = 0.0;
            out.sums[g] = 0;
            continue;
        }
        let id = vdupq_n_f32(1.0 / d);
        let q: [int32x4_t; 4] = core::array::from_fn(|i| vcvtnq_s32_f32(vmulq_f32(v[i], id)));
        let s = vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3]));
        let q16a = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
        let q16b = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
        let q8 = vcombine_s8(vqmovn_s16(q16a), vqmovn_s16(q16b));
        // SAFETY: `qg` holds 16 bytes.
        unsafe { vst1q_s8(qg.as_mut_ptr(), q8) };
        out.d[g] = d;
        out.sums[g] = vaddvq_s32(s);
    }
}
