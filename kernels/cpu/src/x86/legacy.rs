//! AVX2 int8 kernels for the legacy block types and the activation quantizer, bit-exact with
//! [`crate::scalar::legacy`].
//!
//! gemv layout: four rows per pass, their activation block loaded once. Per row and block the
//! unsigned weights are multiplied with the activations by `vpmaddubsw` (pairs of u8·i8 summed in
//! i16: at most 2·31·127, no saturation) and widened by `vpmaddwd` to eight i32; three `vphaddd`
//! reduce the four rows' vectors to one exact i32 `isum` per row, in four lanes. The f32 block term
//! is then computed in those lanes with the scalar specification's operations and order
//! (separate multiplies and adds, blocks in order), so each lane reproduces the scalar row.
//! Signed weights (Q4_0, Q5_0) are handled as unsigned with `isum = Σ q·a − offset·sums[b]`,
//! which relies on the [`ActsQ8`] invariant `sums[b] = Σ qs` of the block; Q8_0 uses
//! `|w|·sign(a, w)`, exact because activations lie in `-127..=127`. A row count that is not a
//! multiple of four repeats the last row in the final pass and drops the extra results.

use core::arch::x86_64::*;

use crate::acts::{ActsQ8, ActsQ8Mut, QK};
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

/// 32 nibbles from 16 bytes at `qs`: low nibbles (elements 0..16) in the low lane, high nibbles
/// (elements 16..32) in the high lane.
///
/// # Safety
///
/// `qs` must be valid for reading 16 bytes; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(qs: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes; loadu has no alignment requirement.
    let v = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(qs.cast())) };
    let shifted = _mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
}

/// Byte `j` is `0x10` where bit `j` of `qh` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn high_bits(qh: u32) -> __m256i {
    let v = _mm256_set1_epi32(qh as i32);
    let idx = _mm256_setr_epi64x(
        0,
        0x0101_0101_0101_0101,
        0x0202_0202_0202_0202,
        0x0303_0303_0303_0303,
    );
    let bytes = _mm256_shuffle_epi8(v, idx);
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Eight i32 partial sums whose total is the block's unsigned-weight dot with `a`
/// (`Σ q·a` for Q4_0/Q4_1/Q5_0/Q5_1 with q unsigned, `Σ w·a` for Q8_0).
///
/// # Safety
///
/// `blk` must be valid for reading one block of type `K`; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_dot<const K: u8>(blk: *const u8, a: __m256i) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    let prod = match K {
        // SAFETY: bytes 2..18 of the block.
        Q4_0 => _mm256_maddubs_epi16(unsafe { nibbles(blk.add(2)) }, a),
        // SAFETY: bytes 4..20 of the block.
        Q4_1 => _mm256_maddubs_epi16(unsafe { nibbles(blk.add(4)) }, a),
        Q5_0 => {
            // SAFETY: bytes 2..6 of the block.
            let qh = unsafe { blk.add(2).cast::<u32>().read_unaligned() };
            // SAFETY: bytes 6..22 of the block.
            let q = _mm256_or_si256(unsafe { nibbles(blk.add(6)) }, high_bits(u32::from_le(qh)));
            _mm256_maddubs_epi16(q, a)
        }
        Q5_1 => {
            // SAFETY: bytes 4..8 of the block.
            let qh = unsafe { blk.add(4).cast::<u32>().read_unaligned() };
            // SAFETY: bytes 8..24 of the block.
            let q = _mm256_or_si256(unsafe { nibbles(blk.add(8)) }, high_bits(u32::from_le(qh)));
            _mm256_maddubs_epi16(q, a)
        }
        _ => {
            // SAFETY: bytes 2..34 of the block.
            let w = unsafe { _mm256_loadu_si256(blk.add(2).cast()) };
            _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w))
        }
    };
    _mm256_madd_epi16(prod, ones)
}

/// The exact totals of four 8-lane i32 vectors, one per lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum4(s0: __m256i, s1: __m256i, s2: __m256i, s3: __m256i) -> __m128i {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(s0, s1), _mm256_hadd_epi32(s2, s3));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// The f16 at byte `off` of each of four rows, as four f32.
///
/// # Safety
///
/// Each `p[i] + off` must be valid for reading 2 bytes; the CPU must have F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16x4(p: &[*const u8; 4], off: usize) -> __m128 {
    // SAFETY: the caller guarantees 2 readable bytes at each address.
    let h = unsafe {
        [
            p[0].add(off).cast::<u16>().read_unaligned(),
            p[1].add(off).cast::<u16>().read_unaligned(),
            p[2].add(off).cast::<u16>().read_unaligned(),
            p[3].add(off).cast::<u16>().read_unaligned(),
        ]
    };
    let v = _mm_setr_epi16(
        h[0] as i16,
        h[1] as i16,
        h[2] as i16,
        h[3] as i16,
        0,
        0,
        0,
        0,
    );
    _mm_cvtph_ps(v)
}

/// The four rows' f32 terms of block `b` (offset `off` in each row), per the scalar spec.
///
/// # Safety
///
/// Each `p[i] + off` must be valid for reading one block of type `K`; the CPU must have AVX2,
/// FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_term4<const K: u8>(
    p: &[*const u8; 4],
    off: usize,
    a: __m256i,
    da: __m128,
    sa: i32,
) -> __m128 {
    // SAFETY: the caller guarantees a readable block at each `p[i] + off`.
    let (s0, s1, s2, s3) = unsafe {
        (
            block_dot::<K>(p[0].add(off), a),
            block_dot::<K>(p[1].add(off), a),
            block_dot::<K>(p[2].add(off), a),
            block_dot::<K>(p[3].add(off), a),
        )
    };
    let mut isum = hsum4(s0, s1, s2, s3);
    if K == Q4_0 {
        isum = _mm_sub_epi32(isum, _mm_set1_epi32(sa.wrapping_mul(8)));
    } else if K == Q5_0 {
        isum = _mm_sub_epi32(isum, _mm_set1_epi32(sa.wrapping_mul(16)));
    }
    // SAFETY: the block starts with its f16 scale `d`.
    let dw = unsafe { f16x4(p, off) };
    let t = _mm_mul_ps(_mm_mul_ps(dw, da), _mm_cvtepi32_ps(isum));
    if K == Q4_1 || K == Q5_1 {
        // SAFETY: bytes 2..4 of the block hold its f16 offset `m`.
        let mw = unsafe { f16x4(p, off + 2) };
        _mm_add_ps(t, _mm_mul_ps(_mm_mul_ps(mw, da), _mm_set1_ps(sa as f32)))
    } else {
        t
    }
}

/// The shared gemv driver: four rows per pass (see the module docs).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv<const K: u8>(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let bb = block_bytes(K);
    let (nb, row_bytes) = check_gemv(w, acts, out.len(), bb, type_name(K));
    let rows = out.len();
    if row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    let base = w.as_ptr();
    let mut r = 0;
    while r < rows {
        let last = rows - 1;
        // SAFETY: every row index is at most `last`, and `check_gemv` proved `w` holds
        // `rows * row_bytes` bytes, so each pointer starts a whole row inside `w`.
        let p = unsafe {
            [
                base.add(r * row_bytes),
                base.add((r + 1).min(last) * row_bytes),
                base.add((r + 2).min(last) * row_bytes),
                base.add((r + 3).min(last) * row_bytes),
            ]
        };
        let mut acc = _mm_setzero_ps();
        for b in 0..nb {
            // SAFETY: `check_gemv` proved `acts.qs` holds `nb * QK` values.
            let a = unsafe { _mm256_loadu_si256(acts.qs.as_ptr().add(b * QK).cast()) };
            let da = _mm_set1_ps(acts.d[b]);
            // SAFETY: block `b` of each row lies inside its row (`b < nb`).
            let t = unsafe { block_term4::<K>(&p, b * bb, a, da, acts.sums[b]) };
            acc = _mm_add_ps(acc, t);
        }
        let mut tmp = [0.0f32; 4];
        // SAFETY: `tmp` has room for four f32.
        unsafe { _mm_storeu_ps(tmp.as_mut_ptr(), acc) };
        let n = (rows - r).min(4);
        out[r..r + n].copy_from_slice(&tmp[..n]);
        r += 4;
    }
}

/// AVX2 [`crate::scalar::gemv_q4_0`], bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_q4_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv::<Q4_0>(w, acts, out) }
}

/// AVX2 [`crate::scalar::gemv_q4_1`], bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_q4_1(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv::<Q4_1>(w, acts, out) }
}

/// AVX2 [`crate::scalar::gemv_q5_0`], bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_q5_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv::<Q5_0>(w, acts, out) }
}

/// AVX2 [`crate::scalar::gemv_q5_1`], bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_q5_1(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv::<Q5_1>(w, acts, out) }
}

/// AVX2 [`crate::scalar::gemv_q8_0`], bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_q8_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv::<Q8_0>(w, acts, out) }
}

/// AVX2 [`crate::scalar::quantize_acts`], bit-exact: the same `amax / 127`, the same
/// multiply by the inverse, and `vcvtps2dq`, which rounds to nearest even.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_quantize_acts(x: &[f32], out: &mut ActsQ8Mut<'_>) {
    check_acts(x, out);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..x.len() / QK {
        // SAFETY: block `b` is inside `x` (`check_acts`).
        let v = unsafe {
            let p = x.as_ptr().add(b * QK);
            [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ]
        };
        let m01 = _mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask));
        let m23 = _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask));
        let m = _mm256_max_ps(m01, m23);
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m1 = _mm_max_ss(m2, _mm_shuffle_ps::<0b01>(m2, m2));
        let amax = _mm_cvtss_f32(m1);
        let d = amax / 127.0;
        let qb = &mut out.qs[b * QK..(b + 1) * QK];
        if d < f32::MIN_POSITIVE {
            qb.fill(0);
            out.d[b] = 0.0;
            out.sums[b] = 0;
            continue;
        }
        let id = _mm256_set1_ps(1.0 / d);
        let i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v[0], id));
        let i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v[1], id));
        let i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v[2], id));
        let i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v[3], id));
        let s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b00_00_11_10>(s4));
        let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b00_00_00_01>(s2));
        // Pack to i8: the in-lane packs interleave 4-value groups, the permute restores order.
        let p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        let q = _mm256_permutevar8x32_epi32(p, order);
        // SAFETY: `qb` holds exactly 32 bytes.
        unsafe { _mm256_storeu_si256(qb.as_mut_ptr().cast(), q) };
        out.d[b] = d;
        out.sums[b] = _mm_cvtsi128_si32(s1);
    }
}
