//! NEON kernels of Q4W (layout and specification in [`crate::scalar::q4w`]) for ARMv8.0 and for
//! ARMv8.2 with the dot-product extension, bit-exact.
//!
//! Four rows per pass, one block (64 columns) per step. The block's activations are loaded once
//! per pass with `ld4` (32-bit words `s, 4 + s, 8 + s, 12 + s` in vector `s`) and their words put
//! in the layout's lane order (groups 0, 2, 1, 3) with one `tbl` each: vector 0 then holds the
//! low-nibble operands of lanes 0..4, vector 1 their high-nibble operands, vectors 2 and 3 those
//! of lanes 4..8. Per row the 32 code bytes (two vectors, lanes 0..4 and 4..8) give signed codes
//! `q − 8` with a mask or a shift and a subtraction, so the products need no offset term:
//! - dotprod: two `sdot` per half leave its four lane sums;
//! - ARMv8.0: `smull`/`smlal` into i16 (at most `2 * 8 * 127` per element), one `addp` and one
//!   `saddlp`.
//!
//! The block's two f16 scales, duplicated as 32-bit words and widened with `fcvtl` (its
//! intrinsic takes the unstable `float16x4_t`, so it is emitted with `asm!`), are in the lane
//! order `d0 d1 d0 d1` of both halves; the float steps are the specification's (no fused
//! multiply-add) and two vectors hold its eight running sums, reduced with its tree.
//! A row count that is not a multiple of four repeats the last row and drops the extra results.
//!
//! The gemms (prefill) take two rows and two tokens per pass: each row's codes and scales are
//! unpacked once for both tokens, each token's activations arranged once for both rows.

use core::arch::aarch64::*;

use super::ternary::{check_gemm_ternary, reduce8, sdot};
use crate::acts::ActsQ8;
use crate::scalar::q4w::{Q4W_BLOCK, Q4W_BYTES};
use crate::scalar::ternary::check_gemv_ternary;

/// Rows per pass.
const R: usize = 4;

/// The table index that puts the 32-bit words of a vector in the order 0, 2, 1, 3.
const WORDS_0213: [u8; 16] = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15];

/// The block's two f16 scales at `p` as f32 `[d0, d1, d0, d1]`.
///
/// # Safety
///
/// `p` must be valid for reading 4 bytes; the CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn scales(p: *const u8) -> float32x4_t {
    // SAFETY: the caller guarantees the bytes.
    let h = vdup_n_u32(unsafe { p.cast::<u32>().read_unaligned() });
    super::f16x4_to_f32(vreinterpret_u16_u32(h))
}

/// The signed codes `q − 8` of 16 bytes: low nibbles and high nibbles.
#[inline]
#[target_feature(enable = "neon")]
fn codes(v: uint8x16_t) -> (int8x16_t, int8x16_t) {
    let eight = vdupq_n_s8(8);
    (
        vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))), eight),
        vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)), eight),
    )
}

/// The four lane sums `Σ lo·al + Σ hi·ah` (i8 products, four per lane) with `smull`/`smlal`.
///
/// # Safety
///
/// The CPU must have NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn lanes_neon(lo: int8x16_t, hi: int8x16_t, al: int8x16_t, ah: int8x16_t) -> int32x4_t {
    let l = vmlal_s8(
        vmull_s8(vget_low_s8(lo), vget_low_s8(al)),
        vget_low_s8(hi),
        vget_low_s8(ah),
    );
    let h = vmlal_high_s8(vmull_high_s8(lo, al), hi, ah);
    vpaddlq_s16(vpaddq_s16(l, h))
}

/// [`lanes_neon`] with two `sdot`.
///
/// # Safety
///
/// The CPU must have the dot-product extension.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn lanes_dot(lo: int8x16_t, hi: int8x16_t, al: int8x16_t, ah: int8x16_t) -> int32x4_t {
    // SAFETY: the caller guarantees the dot-product extension.
    unsafe { sdot(sdot(vdupq_n_s32(0), lo, al), hi, ah) }
}

/// Defines a Q4W gemv entry point with target features `$feat` whose lane sums come from
/// `$lanes` (module docs).
macro_rules! gemv_q4w {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $lanes:ident) => {
        $(#[$doc])*
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
            let row_bytes =
                check_gemv_ternary(w, acts, out.len(), Q4W_BLOCK, Q4W_BYTES, "Q4W");
            let rows = out.len();
            if rows == 0 || row_bytes == 0 {
                out.fill(0.0);
                return;
            }
            let nb = acts.qs.len() / Q4W_BLOCK;
            // SAFETY: a 16-byte constant.
            let order = unsafe { vld1q_u8(WORDS_0213.as_ptr()) };
            let perm = |v: int32x4_t| {
                vreinterpretq_s8_u8(vqtbl1q_u8(vreinterpretq_u8_s32(v), order))
            };
            let qa = acts.qs.as_ptr();
            let mut r = 0;
            while r < rows {
                // Rows `r .. r + R`, the last one repeated past the end (its results dropped).
                let p: [*const u8; R] = super::row_ptrs(w, r, rows - 1, row_bytes);
                let mut acc = [[vdupq_n_f32(0.0); 2]; R];
                for b in 0..nb {
                    // SAFETY: block `b`'s 64 activations and 4 scales exist (shape check).
                    let (w4, d) = unsafe {
                        (
                            vld4q_s32(qa.add(Q4W_BLOCK * b).cast::<i32>()),
                            vld1q_f32(acts.d.as_ptr().add(4 * b)),
                        )
                    };
                    let (al0, ah0, al1, ah1) = (perm(w4.0), perm(w4.1), perm(w4.2), perm(w4.3));
                    let da = vreinterpretq_f32_u8(vqtbl1q_u8(vreinterpretq_u8_f32(d), order));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: block `b` of row `p[i]` is 36 bytes inside `w` (shape check).
                        let (v0, v1, dw) = unsafe {
                            let blk = p[i].add(b * Q4W_BYTES);
                            (vld1q_u8(blk.add(4)), vld1q_u8(blk.add(20)), scales(blk))
                        };
                        let (lo0, hi0) = codes(v0);
                        let (lo1, hi1) = codes(v1);
                        // SAFETY: the CPU has this function's features.
                        let s = unsafe { [$lanes(lo0, hi0, al0, ah0), $lanes(lo1, hi1, al1, ah1)] };
                        let scale = vmulq_f32(dw, da);
                        for (a, s) in acc.iter_mut().zip(s) {
                            *a = vaddq_f32(*a, vmulq_f32(scale, vcvtq_f32_s32(s)));
                        }
                    }
                }
                for (i, a) in acc.iter().enumerate().take((rows - r).min(R)) {
                    out[r + i] = reduce8(a[0], a[1]);
                }
                r += R;
            }
        }
    };
}

gemv_q4w! {
    /// NEON (ARMv8.0) [`crate::scalar::q4w::gemv_q4w`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemv_q4w, "neon", lanes_neon
}

gemv_q4w! {
    /// NEON + dot-product [`crate::scalar::q4w::gemv_q4w`], bit-exact.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension.
    neon_dotprod_gemv_q4w, "neon,dotprod", lanes_dot
}

/// Rows per pass of the gemm.
const GEMM_ROWS: usize = 2;
/// Tokens per pass of the gemm.
const GEMM_TOKENS: usize = 2;

/// Defines a Q4W gemm entry point with target features `$feat` and lane sums `$lanes`: passes
/// of two rows and two tokens, each block's codes and scales of a row unpacked once for both
/// tokens and each token's activations arranged once for both rows (the gemv's four rows would
/// not leave the registers for two tokens' running sums); per token and row the gemv's
/// operations in its order, so the gemv's bits. A short last pass repeats its last row or token
/// and drops the extra results.
macro_rules! gemm_q4w {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $lanes:ident) => {
        $(#[$doc])*
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
            use crate::scalar::ternary::token_group;
            let (cols, rows, row_bytes) =
                check_gemm_ternary(w, acts, nb, out.len(), Q4W_BLOCK, Q4W_BYTES, "Q4W");
            if rows == 0 || row_bytes == 0 {
                out.fill(0.0);
                return;
            }
            let nblk = cols / Q4W_BLOCK;
            // SAFETY: a 16-byte constant.
            let order = unsafe { vld1q_u8(WORDS_0213.as_ptr()) };
            let perm = |v: int32x4_t| {
                vreinterpretq_s8_u8(vqtbl1q_u8(vreinterpretq_u8_s32(v), order))
            };
            for t0 in (0..nb).step_by(GEMM_TOKENS) {
                let tn = (nb - t0).min(GEMM_TOKENS);
                let at: [ActsQ8<'_>; GEMM_TOKENS] = token_group(acts, cols, nb, t0);
                let mut r = 0;
                while r < rows {
                    // Rows `r .. r + GEMM_ROWS`, the last one repeated past the end (its results
                    // dropped).
                    let p: [*const u8; GEMM_ROWS] = super::row_ptrs(w, r, rows - 1, row_bytes);
                    let mut acc = [[[vdupq_n_f32(0.0); 2]; GEMM_TOKENS]; GEMM_ROWS];
                    for b in 0..nblk {
                        // Each token's arranged activations and scales (as in the gemv).
                        let a: [(int8x16_t, int8x16_t, int8x16_t, int8x16_t, float32x4_t);
                            GEMM_TOKENS] = core::array::from_fn(|t| {
                            // SAFETY: block `b`'s 64 activations and 4 scales of the token
                            // exist (shape check).
                            let (w4, d) = unsafe {
                                (
                                    vld4q_s32(at[t].qs.as_ptr().add(Q4W_BLOCK * b).cast::<i32>()),
                                    vld1q_f32(at[t].d.as_ptr().add(4 * b)),
                                )
                            };
                            let da = vreinterpretq_f32_u8(vqtbl1q_u8(vreinterpretq_u8_f32(d), order));
                            (perm(w4.0), perm(w4.1), perm(w4.2), perm(w4.3), da)
                        });
                        for (i, acc_r) in acc.iter_mut().enumerate() {
                            // SAFETY: block `b` of row `p[i]` is 36 bytes inside `w`.
                            let (v0, v1, dw) = unsafe {
                                let blk = p[i].add(b * Q4W_BYTES);
                                (vld1q_u8(blk.add(4)), vld1q_u8(blk.add(20)), scales(blk))
                            };
                            let (lo0, hi0) = codes(v0);
                            let (lo1, hi1) = codes(v1);
                            for (acc_t, &(al0, ah0, al1, ah1, da)) in acc_r.iter_mut().zip(&a) {
                                // SAFETY: the CPU has this function's features.
                                let s = unsafe {
                                    [$lanes(lo0, hi0, al0, ah0), $lanes(lo1, hi1, al1, ah1)]
                                };
                                let scale = vmulq_f32(dw, da);
                                for (x, s) in acc_t.iter_mut().zip(s) {
                                    *x = vaddq_f32(*x, vmulq_f32(scale, vcvtq_f32_s32(s)));
                                }
                            }
                        }
                    }
                    let n = (rows - r).min(GEMM_ROWS);
                    for (i, acc_r) in acc.iter().enumerate().take(n) {
                        for (t, x) in acc_r.iter().enumerate().take(tn) {
                            out[(t0 + t) * rows + r + i] = reduce8(x[0], x[1]);
                        }
                    }
                    r += GEMM_ROWS;
                }
            }
        }
    };
}

gemm_q4w! {
    /// NEON (ARMv8.0) gemm of Q4W ([`crate::scalar::ternary`]'s gemm contract), bit-exact with
    /// one [`neon_gemv_q4w`] per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON.
    neon_gemm_q4w, "neon", lanes_neon
}

gemm_q4w! {
    /// NEON + dot-product gemm of Q4W, bit-exact with one [`neon_dotprod_gemv_q4w`] per token.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON and the dot-product extension.
    neon_dotprod_gemm_q4w, "neon,dotprod", lanes_dot
}
