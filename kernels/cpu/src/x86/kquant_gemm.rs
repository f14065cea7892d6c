//! AVX-VNNI gemm of the K-quants Q4_K, Q5_K and Q6_K for prefill: eight tokens per vector.
//!
//! The layout of [`super::vnni_gemm`]: the lanes of a vector are eight tokens, a row's
//! super-blocks are unpacked once into bytes (one per weight, in element order), four of a
//! group's 16 columns are broadcast to every lane, and `vpdpbusd` multiplies them with the same
//! four columns of each token's activations, arranged once per panel of `PANEL_SUPERS`
//! super-blocks by 8x8 transposes of 32-bit words. A group's integer dot then comes out one per
//! lane, and the float steps of the specification ([`crate::scalar::kquants::gemv_q4_k`] and its
//! module documentation) run lane by lane in its order, unfused, into the eight running sums of
//! each (row, token), which are reduced in the specification's order at the end of the row:
//! every result has the bits the gemv gives its token.
//!
//! - Q4_K and Q5_K: `((dot as f32) * dl - (sums[g] as f32) * ml) * d[g]`, with the stored
//!   activation sums `acts.sums`, as the specification takes them.
//! - Q6_K: the weights enter as `q` (`0..64`) and the products start from `-32 Σ a` (the
//!   group's exact sum of activation values); `ip = scale * dot` is exact in f32
//!   (`|ip| <= 2^23`), so it is formed as the product of the two converted integers, then
//!   `(ip * d) * d[g]`.
//!
//! The lane sums of up to `CHUNK_ROWS` rows stay on the stack between panels (the prefill
//! passes tiles of 32 rows, so the activations are arranged once per panel and call).

use core::arch::x86_64::*;

use super::kquants::{quants_q4_k, quants_q5_k};
use super::{acts_bytes, gather8};
use crate::acts::{ActsQ8, QS};
use crate::scalar::kquants::{
    acc_lane, check_gemv, f16_at, scale_min_k4, ACT_GROUPS_PER_SUPER, K4_D, K4_DMIN, K4_SCALES,
    Q4_K_BLOCK_BYTES, Q4_K_QS, Q5_K_BLOCK_BYTES, Q5_K_QH, Q5_K_QS, Q6_K_BLOCK_BYTES, Q6_K_D,
    Q6_K_QH, Q6_K_QL, Q6_K_SCALES, QK_K,
};
use crate::scalar::ternary::{check_gemm, token_acts};

/// Tokens per vector.
const LANES: usize = 8;

/// Super-blocks whose activations are arranged at a time (1024 columns: 8 KiB of arranged
/// activations and 4 KiB of scales and sums on the stack).
const PANEL_SUPERS: usize = 4;

/// Activation groups of 16 columns per panel.
const PANEL_GROUPS: usize = PANEL_SUPERS * ACT_GROUPS_PER_SUPER;

/// Rows whose running lane sums are kept between panels (8 KiB).
const CHUNK_ROWS: usize = 32;

/// [`gemm`]'s type: Q4_K.
const Q4K: u8 = 0;
/// Q5_K.
const Q5K: u8 = 1;
/// Q6_K.
const Q6K: u8 = 2;

/// The gemm of type `K` ([`Q4K`], [`Q5K`] or [`Q6K`]).
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn gemm<const K: u8>(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    let (name, bb) = match K {
        Q4K => ("Q4_K", Q4_K_BLOCK_BYTES),
        Q5K => ("Q5_K", Q5_K_BLOCK_BYTES),
        _ => ("Q6_K", Q6_K_BLOCK_BYTES),
    };
    let (cols, rows) = check_gemm(acts, nb, out.len(), name);
    // Every token has the shape of the first (check_gemm), which the gemv's check covers.
    let row_bytes = check_gemv(w, &token_acts(acts, cols, 0), &out[..rows], bb);
    let nsb = cols / QK_K;
    if nsb == 0 {
        // No super-blocks: the specification's reduction of eight zero sums.
        out.fill(0.0);
        return;
    }
    let groups = cols / QS;
    let (q_bytes, d_bytes, s_bytes) = acts_bytes(acts);
    let zero_i = _mm256_setzero_si256();
    let zero = _mm256_setzero_ps();
    // Per panel, for the eight tokens of the pass: each group's four vectors of arranged
    // activations, its activation scales, and its stored sums as f32 (Q4_K, Q5_K) or -32 times
    // its exact sum of values (Q6_K).
    let mut a = [zero_i; PANEL_GROUPS * 4];
    let mut ad = [zero; PANEL_GROUPS];
    let mut sf = [zero; PANEL_GROUPS];
    let mut s32 = [zero_i; PANEL_GROUPS];
    let mut lanes = [[zero; 8]; CHUNK_ROWS];
    // A row's unpacked weights and factors (rewritten for each row: zeroing them per row cost
    // a `memset` call each).
    let mut u = [0u8; PANEL_SUPERS * QK_K];
    let mut f1 = [0f32; PANEL_GROUPS];
    let mut f2 = [0f32; PANEL_GROUPS];
    let nib = _mm256_set1_epi8(0x0F);
    let two = _mm256_set1_epi8(0x30);
    let ones = _mm256_set1_epi8(1);
    for t0 in (0..nb).step_by(LANES) {
        let tn = (nb - t0).min(LANES);
        for c0 in (0..rows).step_by(CHUNK_ROWS) {
            let cn = (rows - c0).min(CHUNK_ROWS);
            lanes[..cn].fill([zero; 8]);
            for p0 in (0..nsb).step_by(PANEL_SUPERS) {
                let pn = (nsb - p0).min(PANEL_SUPERS);
                let g0 = p0 * ACT_GROUPS_PER_SUPER;
                for c in 0..pn * ACT_GROUPS_PER_SUPER / 2 {
                    let v = gather8(q_bytes, cols, nb, t0, (g0 + 2 * c) * QS);
                    a[8 * c..8 * c + 8].copy_from_slice(&v);
                }
                for c in 0..pn * ACT_GROUPS_PER_SUPER / 8 {
                    let (at, n) = (4 * (g0 + 8 * c), 4 * groups);
                    let d = gather8(d_bytes, n, nb, t0, at);
                    let s = gather8(s_bytes, n, nb, t0, at);
                    for i in 0..8 {
                        ad[8 * c + i] = _mm256_castsi256_ps(d[i]);
                        sf[8 * c + i] = _mm256_cvtepi32_ps(s[i]);
                    }
                }
                if K == Q6K {
                    for (g, s) in s32[..pn * ACT_GROUPS_PER_SUPER].iter_mut().enumerate() {
                        let mut x = zero_i;
                        for k in 0..4 {
                            x = _mm256_dpbusd_avx_epi32(x, ones, a[4 * g + k]);
                        }
                        *s = _mm256_sub_epi32(zero_i, _mm256_slli_epi32::<5>(x));
                    }
                }
                for (ri, lane) in lanes[..cn].iter_mut().enumerate() {
                    let row = &w[(c0 + ri) * row_bytes..(c0 + ri + 1) * row_bytes];
                    // The panel's super-blocks of this row: one byte per weight in element order,
                    // and the float factors of each group (Q4_K, Q5_K: `dl`, `ml` per 32-element
                    // sub-block; Q6_K: the 16 scales, and `d`).
                    for s in 0..pn {
                        let blk = &row[(p0 + s) * bb..(p0 + s + 1) * bb];
                        let o = &mut u[s * QK_K..(s + 1) * QK_K];
                        // SAFETY: every load and store below is of a slice of the block or of
                        // `o` that holds the bytes it reads or writes (bounds-checked slicing).
                        unsafe {
                            let load = |at: usize| -> __m256i {
                                _mm256_loadu_si256(blk[at..at + 32].as_ptr().cast())
                            };
                            let mut put = |at: usize, v: __m256i| {
                                _mm256_storeu_si256(o[at..at + 32].as_mut_ptr().cast(), v)
                            };
                            if K == Q6K {
                                for h in 0..2 {
                                    let lo = load(Q6_K_QL + 64 * h);
                                    let hi = load(Q6_K_QL + 64 * h + 32);
                                    let q = load(Q6_K_QH + 32 * h);
                                    let e = 128 * h;
                                    let h0 = _mm256_and_si256(_mm256_slli_epi16::<4>(q), two);
                                    let h1 = _mm256_and_si256(_mm256_slli_epi16::<2>(q), two);
                                    let h2 = _mm256_and_si256(q, two);
                                    let h3 = _mm256_and_si256(_mm256_srli_epi16::<2>(q), two);
                                    let l0 = _mm256_and_si256(lo, nib);
                                    let l1 = _mm256_and_si256(hi, nib);
                                    let l2 = _mm256_and_si256(_mm256_srli_epi16::<4>(lo), nib);
                                    let l3 = _mm256_and_si256(_mm256_srli_epi16::<4>(hi), nib);
                                    put(e, _mm256_or_si256(l0, h0));
                                    put(e + 32, _mm256_or_si256(l1, h1));
                                    put(e + 64, _mm256_or_si256(l2, h2));
                                    put(e + 96, _mm256_or_si256(l3, h3));
                                }
                                let sc = _mm_loadu_si128(blk[Q6_K_SCALES..].as_ptr().cast());
                                let f = &mut f1[s * 16..s * 16 + 16];
                                _mm256_storeu_ps(
                                    f.as_mut_ptr(),
                                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)),
                                );
                                _mm256_storeu_ps(
                                    f.as_mut_ptr().add(8),
                                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(
                                        sc,
                                    ))),
                                );
                                f2[s] = f16_at(blk, Q6_K_D);
                            } else {
                                // The gemv's codes of the eight 32-element sub-blocks, in
                                // element order (the block holds `qh` and `qs`).
                                let p = blk.as_ptr();
                                let q = if K == Q5K {
                                    quants_q5_k(p.add(Q5_K_QH), p.add(Q5_K_QS))
                                } else {
                                    quants_q4_k(p.add(Q4_K_QS))
                                };
                                for (j, &v) in q.iter().enumerate() {
                                    put(32 * j, v);
                                }
                                let (d, dmin) = (f16_at(blk, K4_D), f16_at(blk, K4_DMIN));
                                let scales = &blk[K4_SCALES..K4_SCALES + 12];
                                for j in 0..8 {
                                    let (sc, m) = scale_min_k4(j, scales);
                                    f1[s * 8 + j] = d * sc as f32;
                                    f2[s * 8 + j] = dmin * m as f32;
                                }
                            }
                        }
                    }
                    let mut l = *lane;
                    for s in 0..pn {
                        for i in 0..ACT_GROUPS_PER_SUPER {
                            let g = s * ACT_GROUPS_PER_SUPER + i;
                            // Q6_K's products start from -32 Σ a: Σ (q - 32) a, exactly.
                            let mut dot = if K == Q6K { s32[g] } else { zero_i };
                            for k in 0..4 {
                                // SAFETY: `u` holds the panel's 256 bytes per super-block.
                                let wv = unsafe {
                                    _mm256_broadcastd_epi32(_mm_loadu_si32(
                                        u.as_ptr().add(16 * g + 4 * k),
                                    ))
                                };
                                dot = _mm256_dpbusd_avx_epi32(dot, wv, a[4 * g + k]);
                            }
                            let term = if K == Q6K {
                                // `scale * dot`, exact in f32, times `d`, times the
                                // activation scale.
                                let ip =
                                    _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(f1[g]));
                                _mm256_mul_ps(_mm256_mul_ps(ip, _mm256_set1_ps(f2[s])), ad[g])
                            } else {
                                let j = s * 8 + i / 2;
                                _mm256_mul_ps(
                                    _mm256_sub_ps(
                                        _mm256_mul_ps(
                                            _mm256_cvtepi32_ps(dot),
                                            _mm256_set1_ps(f1[j]),
                                        ),
                                        _mm256_mul_ps(sf[g], _mm256_set1_ps(f2[j])),
                                    ),
                                    ad[g],
                                )
                            };
                            let at = acc_lane(i);
                            l[at] = _mm256_add_ps(l[at], term);
                        }
                    }
                    *lane = l;
                }
            }
            for (ri, l) in lanes[..cn].iter().enumerate() {
                // The specification's reduction of the eight lane sums, for eight tokens.
                let v = _mm256_add_ps(
                    _mm256_add_ps(_mm256_add_ps(l[0], l[4]), _mm256_add_ps(l[2], l[6])),
                    _mm256_add_ps(_mm256_add_ps(l[1], l[5]), _mm256_add_ps(l[3], l[7])),
                );
                let mut y = [0f32; LANES];
                // SAFETY: `y` holds eight f32.
                unsafe { _mm256_storeu_ps(y.as_mut_ptr(), v) };
                for (t, &y) in y.iter().enumerate().take(tn) {
                    out[(t0 + t) * rows + c0 + ri] = y;
                }
            }
        }
    }
}

/// AVX-VNNI gemm of Q4_K weights: [`crate::scalar::kquants::gemv_q4_k`] once per token, bit
/// for bit.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemm_q4_k(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm::<Q4K>(w, acts, nb, out) }
}

/// AVX-VNNI gemm of Q5_K weights: [`crate::scalar::kquants::gemv_q5_k`] once per token, bit
/// for bit.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemm_q5_k(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm::<Q5K>(w, acts, nb, out) }
}

/// AVX-VNNI gemm of Q6_K weights: [`crate::scalar::kquants::gemv_q6_k`] once per token, bit
/// for bit.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemm_q6_k(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm::<Q6K>(w, acts, nb, out) }
}
