//! x86 [`crate::scalar::attn_scores_q16`]: integer attention scores of int16 queries against an
//! int8 KV cache, exact (the same i32 sums as the scalar kernel).
//!
//! A tile of up to 3 query heads x 4 positions keeps 12 accumulators of eight i32 lanes in
//! registers; each 16-value chunk of a key row is loaded and sign-extended to i16 (`vpmovsxbw`)
//! once for all the heads of its group. The products are i16 x i16 pairs into i32 lanes, which
//! cannot overflow (a key is at most 128 in magnitude):
//! - AVX2: `vpmaddwd`, then `vpaddd`;
//! - AVX-VNNI and AVX-512 VNNI (256-bit, VL): one `vpdpwssd`.
//!
//! Four accumulators reduce together (`vphaddd`) into four scores. Dimension tails (head sizes
//! that are not a multiple of 16) and position tails run in scalar code. Key rows are prefetched
//! `KV_AHEAD` positions on, as in the float kernels.

use core::arch::x86_64::*;

use super::attn::{prefetch_lines, KV_AHEAD};
use crate::scalar::attn::check_scores_q16;

/// Query heads per tile.
const HEADS: usize = 3;

/// Defines the integer scores kernel `$name` with target features `$feat`, whose products of 16
/// query values (`$q`, i16) and key values (`$k`, widened to i16) are added in pairs to the i32
/// lanes of `$acc` by `$dot`.
macro_rules! scores_q16 {
    ($(#[$doc:meta])* $name:ident, $feat:literal, |$acc:ident, $q:ident, $k:ident| $dot:expr) => {
        $(#[$doc])*
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(q: &[i16], keys: &[i8], hd: usize, out: &mut [i32]) {
            /// The scores of `H` heads (rows at `q`) against `P` keys (rows at `keys`), written
            /// at `out[h * n + p]`.
            ///
            /// # Safety
            ///
            /// `q` holds `H` rows and `keys` `P` rows of `hd` values; `out[h * n + p]` is
            /// writable for every `h < H`, `p < P`; the CPU has this kernel's features.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn tile<const H: usize, const P: usize>(
                q: *const i16,
                keys: *const i8,
                hd: usize,
                out: *mut i32,
                n: usize,
            ) {
                let mut acc = [[_mm256_setzero_si256(); P]; H];
                let mut i = 0;
                while i + 16 <= hd {
                    let k: [__m256i; P] = core::array::from_fn(|p| {
                        // SAFETY: row `p < P` has `hd` values and `i + 16 <= hd`.
                        _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(keys.add(p * hd + i).cast()) })
                    });
                    for (h, acc_h) in acc.iter_mut().enumerate() {
                        // SAFETY: row `h < H` of `q` has `hd` values and `i + 16 <= hd`.
                        let qv = unsafe { _mm256_loadu_si256(q.add(h * hd + i).cast()) };
                        for (a, &kv) in acc_h.iter_mut().zip(&k) {
                            let ($acc, $q, $k) = (*a, qv, kv);
                            *a = $dot;
                        }
                    }
                    i += 16;
                }
                for (h, acc_h) in acc.iter().enumerate() {
                    let mut s = [0i32; P];
                    if P == 4 {
                        let t = _mm256_hadd_epi32(
                            _mm256_hadd_epi32(acc_h[0], acc_h[1]),
                            _mm256_hadd_epi32(acc_h[2], acc_h[3]),
                        );
                        let v = _mm_add_epi32(
                            _mm256_castsi256_si128(t),
                            _mm256_extracti128_si256::<1>(t),
                        );
                        // SAFETY: `s` holds 4 values when `P == 4`.
                        unsafe { _mm_storeu_si128(s.as_mut_ptr().cast(), v) };
                    } else {
                        for (sp, &a) in s.iter_mut().zip(acc_h) {
                            let mut l = [0i32; 8];
                            // SAFETY: `l` holds eight i32.
                            unsafe { _mm256_storeu_si256(l.as_mut_ptr().cast(), a) };
                            *sp = l.iter().sum();
                        }
                    }
                    for (p, sp) in s.iter_mut().enumerate() {
                        for j in i..hd {
                            // SAFETY: `j < hd`, rows `h < H` and `p < P` exist.
                            *sp += unsafe {
                                i32::from(*q.add(h * hd + j)) * i32::from(*keys.add(p * hd + j))
                            };
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
            #[target_feature(enable = $feat)]
            unsafe fn heads<const H: usize>(
                q: *const i16,
                keys: *const i8,
                hd: usize,
                out: *mut i32,
                n: usize,
            ) {
                let kb = keys.cast::<u8>();
                // The first KV_AHEAD rows, which the loop's prefetches do not cover.
                prefetch_lines(kb, n.min(KV_AHEAD) * hd);
                let mut t = 0;
                while t + 4 <= n {
                    // A hint: no access, so any address will do.
                    prefetch_lines(kb.wrapping_add((t + KV_AHEAD) * hd), 4 * hd);
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
                // the keys hold `n` rows; the CPU has this function's features.
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
    };
}

scores_q16! {
    /// AVX2 [`crate::scalar::attn_scores_q16`], exact.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2, FMA and F16C.
    avx2_attn_scores_q16,
    "avx2,fma,f16c",
    |acc, q, k| _mm256_add_epi32(acc, _mm256_madd_epi16(q, k))
}

scores_q16! {
    /// AVX-VNNI [`crate::scalar::attn_scores_q16`], exact.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2, FMA, F16C and AVX-VNNI.
    avxvnni_attn_scores_q16,
    "avx2,fma,f16c,avxvnni",
    |acc, q, k| _mm256_dpwssd_avx_epi32(acc, q, k)
}

scores_q16! {
    /// AVX-512 VNNI (256-bit) [`crate::scalar::attn_scores_q16`], exact.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI.
    avx512_attn_scores_q16,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    |acc, q, k| _mm256_dpwssd_epi32(acc, q, k)
}
