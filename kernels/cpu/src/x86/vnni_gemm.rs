//! AVX-VNNI gemm of the legacy types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 for prefill: eight tokens
//! per vector.
//!
//! A gemv multiplies one token's activations by each weight block, so every block costs its
//! unpacking and its float steps once per token. Here the lanes of a vector are eight tokens: a
//! row's block is unpacked once, four of its columns are broadcast to every lane, and `vpdpbusd`
//! multiplies them with the same four columns of each token's activations (arranged once per
//! panel of `PANEL_BLOCKS` blocks, token-interleaved). The two 16-column group sums of a block
//! then come out one per lane with no horizontal adds, and the float steps of the specification
//! ([`crate::scalar::gemv_q4_0`] and the other legacy gemvs:
//! `(dw * da0) * i0 + (dw * da1) * i1`, plus `mw * (da0 * sa0 + da1 * sa1)` for Q4_1 and Q5_1,
//! added to the row's running sum block after block)
//! run lane by lane in the same order, unfused: every result has the bits the gemv gives its token.
//! The running sums live in `out` between panels. `vpdpbusd` takes unsigned weights: Q4_0's
//! nibbles are `q - 8`, Q5_0's five-bit values `q - 16` and Q8_0's bytes are signed, so they
//! enter as `q`, `q` and `q + 128`, and the integer sums start from `-8 Σ a`, `-16 Σ a` or
//! `-128 Σ a` (each group's exact sum of activations, times the offset, once per panel).
//!
//! A 512-bit version (sixteen tokens per vector, two panels side by side) measured no faster
//! than this one on the development host (`benches/gemv.rs`, the prefill tile), so the `avx512`
//! tier uses this gemm.

use core::arch::x86_64::*;

use super::legacy::{high_bits, nibbles};
use super::{acts_bytes, gather8};
use crate::acts::{ActsQ8, QK, QS};
use crate::scalar::legacy::{
    check_gemv, Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q8_0_BYTES,
};
use crate::scalar::ternary::{check_gemm, token_acts};

/// Tokens per vector.
const LANES: usize = 8;

/// Vectors of tokens per pass over the rows: each row's blocks are unpacked once for 16 tokens
/// (a prefill chunk).
const VECS: usize = 2;

/// Blocks of 32 columns whose activations are arranged at a time (1024 columns: 16 KiB of
/// arranged activations and 10 KiB of scales and sums on the stack for 16 tokens).
const PANEL_BLOCKS: usize = 32;

/// [`gemm`]'s type: Q4_0 (scale, nibbles - 8).
const Q40: u8 = 0;
/// Q4_1 (scale, minimum, nibbles).
const Q41: u8 = 1;
/// Q8_0 (scale, signed bytes).
const Q80: u8 = 2;
/// Q5_0 (scale, high bits, nibbles; five-bit values - 16).
const Q50: u8 = 3;
/// Q5_1 (scale, minimum, high bits, nibbles).
const Q51: u8 = 4;

/// Block bytes, offset of the nibbles (or bytes) and name of type `K`.
const fn layout(k: u8) -> (usize, usize, &'static str) {
    match k {
        Q41 => (Q4_1_BYTES, 4, "Q4_1"),
        Q50 => (Q5_0_BYTES, 6, "Q5_0"),
        Q51 => (Q5_1_BYTES, 8, "Q5_1"),
        Q80 => (Q8_0_BYTES, 2, "Q8_0"),
        _ => (Q4_0_BYTES, 2, "Q4_0"),
    }
}

/// Whether type `K` carries a minimum (Q4_1, Q5_1): its offset term comes from `acts.sums`.
const fn with_min(k: u8) -> bool {
    k == Q41 || k == Q51
}

/// One panel's activations arranged for eight tokens: `a[8j + k]` holds columns `4k .. 4k + 4`
/// of block `j` of each token in its lane; `da[j][h]` the activation scales of the block's
/// group `h`; `sa[j][h]` the stored sums (types with a minimum) or `-o Σ a` (the others); `off[j]`
/// the offset term `da0 * sa0 + da1 * sa1` (types with a minimum).
struct Panel {
    a: [__m256i; PANEL_BLOCKS * 8],
    da: [[__m256; 2]; PANEL_BLOCKS],
    sa: [[__m256i; 2]; PANEL_BLOCKS],
    off: [__m256; PANEL_BLOCKS],
}

impl Panel {
    #[inline]
    #[target_feature(enable = "avx2")]
    fn new() -> Self {
        let (zi, zf) = (_mm256_setzero_si256(), _mm256_setzero_ps());
        Panel {
            a: [zi; PANEL_BLOCKS * 8],
            da: [[zf; 2]; PANEL_BLOCKS],
            sa: [[zi; 2]; PANEL_BLOCKS],
            off: [zf; PANEL_BLOCKS],
        }
    }

    /// Arranges blocks `p0 .. p0 + pn` of tokens `vt .. vt + 8` (a token past the last repeats
    /// it; its results are dropped) of the `nb` tokens of `cols` columns in `acts`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    fn arrange<const K: u8>(
        &mut self,
        acts: &ActsQ8<'_>,
        cols: usize,
        nb: usize,
        vt: usize,
        p0: usize,
        pn: usize,
    ) {
        let groups = cols / QS;
        let (q_bytes, d_bytes, s_bytes) = acts_bytes(acts);
        let zero_i = _mm256_setzero_si256();
        let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
        for j in 0..pn {
            let b = p0 + j;
            let q = gather8(q_bytes, cols, nb, vt, b * QK);
            self.a[j * 8..j * 8 + 8].copy_from_slice(&q);
            if !with_min(K) {
                // Σ (q - o) a = Σ q a - o Σ a, exactly: o = 8 for Q4_0's nibbles, 16 for
                // Q5_0's values, 128 for Q8_0's bytes (which enter as q + 128). The products
                // start from -o Σ a, each group's sum taken from its values (pairs of i8
                // summed in i16, then in i32).
                for h in 0..2 {
                    let mut x = zero_i;
                    for k in 0..4 {
                        let pairs = _mm256_maddubs_epi16(ones8, q[4 * h + k]);
                        x = _mm256_add_epi32(x, _mm256_madd_epi16(pairs, ones16));
                    }
                    let o = match K {
                        Q80 => _mm256_slli_epi32::<7>(x),
                        Q50 => _mm256_slli_epi32::<4>(x),
                        _ => _mm256_slli_epi32::<3>(x),
                    };
                    self.sa[j][h] = _mm256_sub_epi32(zero_i, o);
                }
            }
        }
        // The groups' activation scales (and the stored sums of the types with a minimum):
        // eight groups (four blocks) per transpose, the last blocks of the panel one by one.
        let whole = pn / 4 * 4;
        for j4 in (0..whole).step_by(4) {
            let (at, len) = (4 * 2 * (p0 + j4), 4 * groups);
            let d = gather8(d_bytes, len, nb, vt, at);
            let sm = if with_min(K) {
                gather8(s_bytes, len, nb, vt, at)
            } else {
                [zero_i; 8]
            };
            for i in 0..8 {
                self.da[j4 + i / 2][i % 2] = _mm256_castsi256_ps(d[i]);
                if with_min(K) {
                    self.sa[j4 + i / 2][i % 2] = sm[i];
                }
            }
        }
        for j in whole..pn {
            for h in 0..2 {
                let (mut d, mut sm) = ([0f32; LANES], [0i32; LANES]);
                for t in 0..LANES {
                    let g = (vt + t).min(nb - 1) * groups + 2 * (p0 + j) + h;
                    d[t] = acts.d[g];
                    sm[t] = acts.sums[g];
                }
                // SAFETY: `d` and `sm` hold eight values each.
                unsafe {
                    self.da[j][h] = _mm256_loadu_ps(d.as_ptr());
                    if with_min(K) {
                        self.sa[j][h] = _mm256_loadu_si256(sm.as_ptr().cast());
                    }
                }
            }
        }
        if with_min(K) {
            for j in 0..pn {
                let (da, sa) = (self.da[j], self.sa[j]);
                self.off[j] = _mm256_add_ps(
                    _mm256_mul_ps(da[0], _mm256_cvtepi32_ps(sa[0])),
                    _mm256_mul_ps(da[1], _mm256_cvtepi32_ps(sa[1])),
                );
            }
        }
    }
}

/// A row's blocks of one panel unpacked to unsigned bytes (32 columns per block, so that the
/// products broadcast four columns straight from memory) with their scales and minimums.
struct Row {
    u: [u8; PANEL_BLOCKS * QK],
    dw: [f32; PANEL_BLOCKS],
    mw: [f32; PANEL_BLOCKS],
}

impl Row {
    fn new() -> Self {
        Row {
            u: [0; PANEL_BLOCKS * QK],
            dw: [0.0; PANEL_BLOCKS],
            mw: [0.0; PANEL_BLOCKS],
        }
    }

    /// Unpacks blocks `p0 .. p0 + pn` of `row` (rewriting what an earlier row left).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn unpack<const K: u8>(&mut self, row: &[u8], p0: usize, pn: usize) {
        let (bb, qs_at, _) = layout(K);
        let flip = _mm256_set1_epi8(-128);
        for j in 0..pn {
            let blk = &row[(p0 + j) * bb..(p0 + j + 1) * bb];
            let f16 = |at: usize| {
                _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([
                    blk[at],
                    blk[at + 1],
                ]) as i32)))
            };
            self.dw[j] = f16(0);
            if with_min(K) {
                self.mw[j] = f16(2);
            }
            // Columns 0..16 (low nibbles), then 16..32 (high nibbles), as the gemv's `nibbles`;
            // Q5's fifth bits from `qh` (the four bytes before the nibbles) by its `high_bits`.
            let v = if K == Q80 {
                // SAFETY: the block holds 32 bytes at `qs_at`.
                let q = unsafe { _mm256_loadu_si256(blk[qs_at..qs_at + QK].as_ptr().cast()) };
                _mm256_xor_si256(q, flip)
            } else {
                // SAFETY: the block holds 16 bytes of nibbles at `qs_at`.
                let q = unsafe { nibbles(blk[qs_at..qs_at + 16].as_ptr()) };
                if K == Q50 || K == Q51 {
                    let at = qs_at - 4;
                    let qh = u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
                    _mm256_or_si256(q, high_bits(qh))
                } else {
                    q
                }
            };
            // SAFETY: `u` holds 32 bytes from `j * QK`.
            unsafe { _mm256_storeu_si256(self.u[j * QK..(j + 1) * QK].as_mut_ptr().cast(), v) };
        }
    }

    /// Columns `4k .. 4k + 4` of block `j` as one 32-bit word.
    #[inline(always)]
    fn word(&self, j: usize, k: usize) -> i32 {
        let at = j * QK + 4 * k;
        i32::from_le_bytes([self.u[at], self.u[at + 1], self.u[at + 2], self.u[at + 3]])
    }
}

/// The gemm's shape checks: `(cols, rows, blocks per row, row bytes)`, with `out` zeroed
/// (the specification's running sums start at 0.0).
fn checked<const K: u8>(
    w: &[u8],
    acts: &ActsQ8<'_>,
    nb: usize,
    out: &mut [f32],
) -> (usize, usize, usize, usize) {
    let (bb, _, name) = layout(K);
    let (cols, rows) = check_gemm(acts, nb, out.len(), name);
    // Every token has the shape of the first (check_gemm), which gemv's own check covers.
    let (nblk, row_bytes) = check_gemv(w, &token_acts(acts, cols, 0), rows, bb, name);
    out.fill(0.0);
    (cols, rows, nblk, row_bytes)
}

/// The gemm of type `K` ([`Q40`], [`Q41`], [`Q50`], [`Q51`] or [`Q80`]).
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn gemm<const K: u8>(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    let (cols, rows, nblk, row_bytes) = checked::<K>(w, acts, nb, out);
    if rows == 0 || nblk == 0 {
        return;
    }
    let zero_i = _mm256_setzero_si256();
    let mut p = [Panel::new(), Panel::new()];
    let mut u = Row::new();
    for t0 in (0..nb).step_by(LANES * VECS) {
        let tn = (nb - t0).min(LANES * VECS);
        for p0 in (0..nblk).step_by(PANEL_BLOCKS) {
            let pn = (nblk - p0).min(PANEL_BLOCKS);
            for (v, p) in p.iter_mut().enumerate() {
                p.arrange::<K>(acts, cols, nb, t0 + v * LANES, p0, pn);
            }
            for r in 0..rows {
                u.unpack::<K>(&w[r * row_bytes..(r + 1) * row_bytes], p0, pn);
                let mut acc = [0f32; LANES * VECS];
                for (t, acc) in acc.iter_mut().enumerate().take(tn) {
                    *acc = out[(t0 + t) * rows + r];
                }
                // SAFETY: `acc` holds `VECS` vectors of eight f32.
                let mut accv: [__m256; VECS] = core::array::from_fn(|v| unsafe {
                    _mm256_loadu_ps(acc.as_ptr().add(LANES * v))
                });
                for j in 0..pn {
                    // The integer sums start from the offset term (zero for Q4_1 and Q5_1).
                    let mut i: [[__m256i; 2]; VECS] =
                        core::array::from_fn(
                            |v| {
                                if with_min(K) {
                                    [zero_i; 2]
                                } else {
                                    p[v].sa[j]
                                }
                            },
                        );
                    // Each broadcast word serves both vectors of tokens.
                    #[allow(clippy::needless_range_loop)]
                    for h in 0..2 {
                        for k in 0..4 {
                            let wv = _mm256_set1_epi32(u.word(j, 4 * h + k));
                            for v in 0..VECS {
                                i[v][h] =
                                    _mm256_dpbusd_avx_epi32(i[v][h], wv, p[v].a[j * 8 + 4 * h + k]);
                            }
                        }
                    }
                    let d = _mm256_set1_ps(u.dw[j]);
                    let m = _mm256_set1_ps(u.mw[j]);
                    for v in 0..VECS {
                        let da = p[v].da[j];
                        let mut term = _mm256_add_ps(
                            _mm256_mul_ps(_mm256_mul_ps(d, da[0]), _mm256_cvtepi32_ps(i[v][0])),
                            _mm256_mul_ps(_mm256_mul_ps(d, da[1]), _mm256_cvtepi32_ps(i[v][1])),
                        );
                        if with_min(K) {
                            term = _mm256_add_ps(term, _mm256_mul_ps(m, p[v].off[j]));
                        }
                        accv[v] = _mm256_add_ps(accv[v], term);
                    }
                }
                for (v, &x) in accv.iter().enumerate() {
                    // SAFETY: `acc` holds `VECS` vectors of eight f32.
                    unsafe { _mm256_storeu_ps(acc.as_mut_ptr().add(LANES * v), x) };
                }
                for (t, &x) in acc.iter().enumerate().take(tn) {
                    out[(t0 + t) * rows + r] = x;
                }
            }
        }
    }
}

/// AVX-VNNI gemm of Q4_0 weights: [`crate::scalar::gemv_q4_0`] once per token, bit for bit.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemm_q4_0(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm::<Q40>(w, acts, nb, out) }
}

/// AVX-VNNI gemm of Q4_1 weights: [`crate::scalar::gemv_q4_1`] once per token, bit for bit.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemm_q4_1(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm::<Q41>(w, acts, nb, out) }
}

/// AVX-VNNI gemm of Q8_0 weights: [`crate::scalar::gemv_q8_0`] once per token, bit for bit.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemm_q8_0(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm::<Q80>(w, acts, nb, out) }
}

/// AVX-VNNI gemm of Q5_0 weights: [`crate::scalar::gemv_q5_0`] once per token, bit for bit.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemm_q5_0(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm::<Q50>(w, acts, nb, out) }
}

/// AVX-VNNI gemm of Q5_1 weights: [`crate::scalar::gemv_q5_1`] once per token, bit for bit.
///
/// # Safety
///
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI (the features of the `avx-vnni` tier).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn avxvnni_gemm_q5_1(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm::<Q51>(w, acts, nb, out) }
}
