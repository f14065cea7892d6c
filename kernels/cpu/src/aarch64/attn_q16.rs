//! NEON [`crate::scalar::attn_scores_q16`]: integer attention scores of int16 queries against
//! an int8 KV cache, exact (the same i32 sums as the scalar kernel), for every ARMv8 core (the
//! dot-product extension has no 16-bit form).
//!
//! The tile of the AVX2 version, on 128-bit vectors: up to 3 query heads x 4 positions keep 12
//! accumulators of four i32 lanes; each 16-value chunk of a key row is loaded and widened to i16
//! (`sxtl`, `sxtl2`) once for all the heads of its group, and each head adds its products with
//! `smlal`/`smlal2` (i16 x i16 into i32). Four accumulators reduce together (two rounds of
//! `addp`) into four scores. Dimension tails (head sizes that are not a multiple of 16) and
//! position tails run in scalar code.

use core::arch::aarch64::*;

use crate::scalar::attn::check_scores_q16;

/// Query heads per tile.
const HEADS: usize = 3;

/// NEON [`crate::scalar::attn_scores_q16`], exact.
///
/// # Safety
///
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_attn_scores_q16(q: &[i16], keys: &[i8], hd: usize, out: &mut [i32]) {
    /// The scores of `H` heads (rows at `q`) against `P` keys (rows at `keys`), written
    /// at `out[h * n + p]`.
    ///
    /// # Safety
    ///
    /// `q` holds `H` rows and `keys` `P` rows of `hd` values; `out[h * n + p]` is
    /// writable for every `h < H`, `p < P`; the CPU has NEON.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn tile<const H: usize, const P: usize>(
        q: *const i16,
        keys: *const i8,
        hd: usize,
        out: *mut i32,
        n: usize,
    ) {
        let mut acc = [[vdupq_n_s32(0); P]; H];
        let mut i = 0;
        while i + 16 <= hd {
            let k: [(int16x8_t, int16x8_t); P] = core::array::from_fn(|p| {
                // SAFETY: row `p < P` has `hd` values and `i + 16 <= hd`.
                let v = unsafe { vld1q_s8(keys.add(p * hd + i)) };
                (vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v))
            });
            for (h, acc_h) in acc.iter_mut().enumerate() {
                // SAFETY: row `h < H` of `q` has `hd` values and `i + 16 <= hd`.
                let (q0, q1) = unsafe {
                    (
                        vld1q_s16(q.add(h * hd + i)),
                        vld1q_s16(q.add(h * hd + i + 8)),
                    )
                };
                for (a, &(k0, k1)) in acc_h.iter_mut().zip(&k) {
                    let s = vmlal_s16(*a, vget_low_s16(q0), vget_low_s16(k0));
                    let s = vmlal_high_s16(s, q0, k0);
                    let s = vmlal_s16(s, vget_low_s16(q1), vget_low_s16(k1));
                    *a = vmlal_high_s16(s, q1, k1);
                }
            }
            i += 16;
        }
        for (h, acc_h) in acc.iter().enumerate() {
            let mut s = [0i32; P];
            if P == 4 {
                let v = vpaddq_s32(
                    vpaddq_s32(acc_h[0], acc_h[1]),
                    vpaddq_s32(acc_h[2], acc_h[3]),
                );
                // SAFETY: `s` holds 4 values when `P == 4`.
                unsafe { vst1q_s32(s.as_mut_ptr(), v) };
            } else {
                for (sp, &a) in s.iter_mut().zip(acc_h) {
                    *sp = vaddvq_s32(a);
                }
            }
            for (p, sp) in s.iter_mut().enumerate() {
                for j in i..hd {
                    // SAFETY: `j < hd`, rows `h < H` and `p < P` exist.
                    *sp +=
                        unsafe { i32::from(*q.add(h * hd + j)) * i32::from(*keys.add(p * hd + j)) };
                }
                // SAFETY: the caller guarantees `out[h * n + p]` is writable.
                unsafe { *out.add(h * n + p) = *sp };
            }
        }
    }

    /// The scores of `H` heads against all `n` keys.
    ///
    /// # Safety
    ///
    /// As `tile` with `P = n`.
    #[target_feature(enable = "neon")]
    unsafe fn heads<const H: usize>(
        q: *const i16,
        keys: *const i8,
        hd: usize,
        out: *mut i32,
        n: usize,
    ) {
        let mut t = 0;
        while t + 4 <= n {
            // SAFETY: positions `t..t + 4` are below `n`.
            unsafe { tile::<H, 4>(q, keys.add(t * hd), hd, out.add(t), n) };
            t += 4;
        }
        while t < n {
            // SAFETY: `t < n`.
            unsafe { tile::<H, 1>(q, keys.add(t * hd), hd, out.add(t), n) };
            t += 1;
        }
    }

    let (g, n) = check_scores_q16(q, keys.len(), hd, out);
    let (qp, kp, op) = (q.as_ptr(), keys.as_ptr(), out.as_mut_ptr());
    let mut h = 0;
    while h < g {
        let hh = (g - h).min(HEADS);
        // SAFETY: the checked shapes: heads `h..h + hh` of `q` and of `out` exist, and
        // the keys hold `n` rows; the CPU has NEON.
        unsafe {
            let (qh, oh) = (qp.add(h * hd), op.add(h * n));
            match hh {
                3 => heads::<3>(qh, kp, hd, oh, n),
                2 => heads::<2>(qh, kp, hd, oh, n),
                _ => heads::<1>(qh, kp, hd, oh, n),
            }
        }
        h += hh;
    }
}
