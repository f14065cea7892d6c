//! AVX2 int8 kernels for the legacy block types and the activation quantizer, bit-exact with
//! [`crate::scalar::legacy`].
//!
//! gemv layout: eight rows per pass, their activation block loaded once. Per row and block the
//! unsigned weights are multiplied with the activations by `vpmaddubsw` (pairs of u8·i8 summed in
//! i16: at most 2·31·127, no saturation) and widened by `vpmaddwd` to eight i32. The registers keep
//! element order (nibbles of elements 0..16 in the low 128-bit lane, 16..32 in the high one), so
//! i32 lanes 0-3 hold values 0..16 (scale group `2b`) and lanes 4-7 values 16..32 (group `2b + 1`).
//! Two levels of `vphaddd` over four rows then leave the four rows' exact group-0 sums in the low
//! lane and their group-1 sums in the high lane; two cross-lane permutes of the two row quartets
//! give `isum0` and `isum1` for eight rows in eight lanes. The f32 block term is then computed in
//! those lanes with the scalar specification's operations and order (separate multiplies and adds,
//! blocks in order), so each lane reproduces the scalar row.
//! Signed weights (Q4_0, Q5_0) are handled as unsigned with `isum = Σ q·a − offset·sums[g]`,
//! which relies on the [`ActsQ8`] invariant `sums[g] = Σ qs` of the group; Q8_0 uses
//! `|w|·sign(a, w)`, exact because activations lie in `-127..=127`. A row count that is not a
//! multiple of eight repeats the last row in the final pass and drops the extra results.

use core::arch::x86_64::*;

use crate::acts::{ActsQ8, ActsQ8Mut, QK};
use crate::scalar::legacy::{check_acts, check_gemv};

pub(crate) const Q4_0: u8 = 0;
pub(crate) const Q4_1: u8 = 1;
pub(crate) const Q5_0: u8 = 2;
pub(crate) const Q5_1: u8 = 3;
pub(crate) const Q8_0: u8 = 4;

/// How many groups of eight rows ahead the gemv prefetches. The prefetches go to L2
/// (`_MM_HINT_T1`), here and in the AVX-VNNI driver: into L1, the rows ahead pushed out the
/// activations and the rows being read (four alternating runs of `bench bandwidth`, share of a
/// 1-thread read: Q4_0 73-75% → 79-80%, Q4_1 73% → 75-77%, Q8_0 76-78% → 86-88%).
pub(crate) const PREFETCH_GROUPS: usize = 2;

pub(crate) const fn block_bytes(k: u8) -> usize {
    match k {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    }
}

pub(crate) const fn type_name(k: u8) -> &'static str {
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
pub(crate) unsafe fn nibbles(qs: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes; loadu has no alignment requirement.
    let v = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(qs.cast())) };
    let shifted = _mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
}

/// Byte `j` is `0x10` where bit `j` of `qh` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn high_bits(qh: u32) -> __m256i {
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

/// The exact group sums of eight rows' block dots: `s[i]` holds row `i`'s eight partial sums
/// (lanes 0-3 group 0, lanes 4-7 group 1); returns `(isum0, isum1)` with lane `i` for row `i`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum8_groups(s: [__m256i; 8]) -> (__m256i, __m256i) {
    // x = [g0 of rows 0..4 | g1 of rows 0..4], y likewise for rows 4..8.
    let x = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    let y = _mm256_hadd_epi32(_mm256_hadd_epi32(s[4], s[5]), _mm256_hadd_epi32(s[6], s[7]));
    (
        _mm256_permute2x128_si256::<0x20>(x, y),
        _mm256_permute2x128_si256::<0x31>(x, y),
    )
}

/// The f16 pairs at bytes `off..off + 4` of each of eight rows (`d` and, for Q4_1/Q5_1, `m`),
/// as f32 `(d, m)` with lane `i` for row `i`; for other types `m` is meaningless.
///
/// Built from broadcast loads and blends, which avoid the shuffle port.
///
/// # Safety
///
/// Each `p[i] + off` must be valid for reading 4 bytes; the CPU must have AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn scales8(p: &[*const u8; 8], off: usize) -> (__m256, __m256) {
    // SAFETY: the caller guarantees 4 readable bytes at each `p[i] + off`.
    let ld = |i: usize| unsafe { _mm256_set1_epi32(p[i].add(off).cast::<i32>().read_unaligned()) };
    // Lanes hold rows 0 1 4 5 2 3 6 7, so that the f16 -> f32 conversion of each half
    // followed by an in-lane even/odd split gives rows 0..8 in order.
    let mut v = ld(0);
    v = _mm256_blend_epi32::<0b0000_0010>(v, ld(1));
    v = _mm256_blend_epi32::<0b0001_0000>(v, ld(2));
    v = _mm256_blend_epi32::<0b0010_0000>(v, ld(3));
    v = _mm256_blend_epi32::<0b0000_0100>(v, ld(4));
    v = _mm256_blend_epi32::<0b0000_1000>(v, ld(5));
    v = _mm256_blend_epi32::<0b0100_0000>(v, ld(6));
    v = _mm256_blend_epi32::<0b1000_0000>(v, ld(7));
    let lo = _mm256_cvtph_ps(_mm256_castsi256_si128(v));
    let hi = _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(v));
    (
        _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi),
        _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi),
    )
}

/// The activation side of one block: scales of both groups broadcast, their integer sums, and
/// the Q4_1/Q5_1 offset factor `c = da0 * sa0 + da1 * sa1` broadcast (see the scalar spec).
#[derive(Clone, Copy)]
struct BlockActs {
    da0: __m256,
    da1: __m256,
    sa0: i32,
    sa1: i32,
    c: __m256,
}

/// The eight rows' f32 terms of the block at offset `off` of each row, per the scalar spec.
///
/// # Safety
///
/// Each `p[i] + off` must be valid for reading one block of type `K`; the CPU must have AVX2,
/// FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_term8<const K: u8>(
    p: &[*const u8; 8],
    off: usize,
    a: __m256i,
    ba: &BlockActs,
) -> __m256 {
    // SAFETY: the caller guarantees a readable block at each `p[i] + off`.
    let s = unsafe {
        [
            block_dot::<K>(p[0].add(off), a),
            block_dot::<K>(p[1].add(off), a),
            block_dot::<K>(p[2].add(off), a),
            block_dot::<K>(p[3].add(off), a),
            block_dot::<K>(p[4].add(off), a),
            block_dot::<K>(p[5].add(off), a),
            block_dot::<K>(p[6].add(off), a),
            block_dot::<K>(p[7].add(off), a),
        ]
    };
    let (mut i0, mut i1) = hsum8_groups(s);
    let offset = match K {
        Q4_0 => 8,
        Q5_0 => 16,
        _ => 0,
    };
    if offset != 0 {
        i0 = _mm256_sub_epi32(i0, _mm256_set1_epi32(ba.sa0.wrapping_mul(offset)));
        i1 = _mm256_sub_epi32(i1, _mm256_set1_epi32(ba.sa1.wrapping_mul(offset)));
    }
    // SAFETY: every block type here starts with at least 4 bytes (`d`, then `m` or data).
    let (dw, mw) = unsafe { scales8(p, off) };
    let t = _mm256_add_ps(
        _mm256_mul_ps(_mm256_mul_ps(dw, ba.da0), _mm256_cvtepi32_ps(i0)),
        _mm256_mul_ps(_mm256_mul_ps(dw, ba.da1), _mm256_cvtepi32_ps(i1)),
    );
    if K == Q4_1 || K == Q5_1 {
        _mm256_add_ps(t, _mm256_mul_ps(mw, ba.c))
    } else {
        t
    }
}

/// The shared gemv driver: eight rows per pass (see the module docs).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv<const K: u8>(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let bb = block_bytes(K);
    let (nb, row_bytes) = check_gemv(w, acts, out.len(), bb, type_name(K));
    let rows = out.len();
    if rows == 0 || row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    let base = w.as_ptr();
    let last = rows - 1;
    let mut r = 0;
    while r < rows {
        let p: [*const u8; 8] = super::row_ptrs(w, r, last, row_bytes);
        let mut acc = _mm256_setzero_ps();
        // Prefetch the group of rows PREFETCH_GROUPS ahead, in step with this group's progress.
        let ahead = (r + 8 * PREFETCH_GROUPS) * row_bytes;
        for b in 0..nb {
            let pf = ahead + b * 8 * bb;
            if pf + 8 * bb <= w.len() {
                for line in 0..(8 * bb).div_ceil(64) {
                    // SAFETY: `pf + 64 * line < pf + 8 * bb <= w.len()`: inside `w`.
                    _mm_prefetch::<_MM_HINT_T1>(unsafe { base.add(pf + 64 * line) }.cast());
                }
            }
            // SAFETY: `check_gemv` proved `acts.qs` holds `nb * QK` values.
            let a = unsafe { _mm256_loadu_si256(acts.qs.as_ptr().add(b * QK).cast()) };
            let (da0, da1) = (acts.d[2 * b], acts.d[2 * b + 1]);
            let (sa0, sa1) = (acts.sums[2 * b], acts.sums[2 * b + 1]);
            let ba = BlockActs {
                da0: _mm256_set1_ps(da0),
                da1: _mm256_set1_ps(da1),
                sa0,
                sa1,
                c: _mm256_set1_ps(da0 * sa0 as f32 + da1 * sa1 as f32),
            };
            // SAFETY: block `b` of each row lies inside its row (`b < nb`).
            let t = unsafe { block_term8::<K>(&p, b * bb, a, &ba) };
            acc = _mm256_add_ps(acc, t);
        }
        super::store8(out, r, acc);
        r += 8;
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

/// AVX2 [`crate::scalar::quantize_acts`], bit-exact: the same `amax / 127` per group of
/// [`crate::acts::QS`], the same multiply by the inverse, and `vcvtps2dq`, which rounds to
/// nearest even.
/// A group whose `d` is zero or subnormal is multiplied by 0 instead of `1/d` (finite inputs
/// give 0, as the rule says).
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
        // Group 0 is v[0], v[1]; group 1 is v[2], v[3].
        let m0 = _mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask));
        let m1 = _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask));
        // [4 candidates of group 0 | 4 of group 1], then max within each 128-bit lane.
        let m = _mm256_max_ps(
            _mm256_permute2f128_ps::<0x20>(m0, m1),
            _mm256_permute2f128_ps::<0x31>(m0, m1),
        );
        let m = _mm256_max_ps(m, _mm256_permute_ps::<0b01_00_11_10>(m));
        let m = _mm256_max_ps(m, _mm256_permute_ps::<0b10_11_00_01>(m));
        let amax0 = _mm256_cvtss_f32(m);
        let amax1 = _mm_cvtss_f32(_mm256_extractf128_ps::<1>(m));
        let (d0, d1) = (amax0 / 127.0, amax1 / 127.0);
        let inv = |d: f32| if d < f32::MIN_POSITIVE { 0.0 } else { 1.0 / d };
        let (id0, id1) = (_mm256_set1_ps(inv(d0)), _mm256_set1_ps(inv(d1)));
        let i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v[0], id0));
        let i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v[1], id0));
        let i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v[2], id1));
        let i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v[3], id1));
        // Group sums: [g0 g0 g1 g1 | g0 g0 g1 g1] after one hadd, then add the 128-bit halves.
        let s = _mm256_hadd_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s2 = _mm_hadd_epi32(s4, s4);
        // Pack to i8: the in-lane packs interleave 4-value groups, the permute restores order.
        let p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        let q = _mm256_permutevar8x32_epi32(p, order);
        // SAFETY: block `b` of `out.qs` holds exactly 32 bytes (`check_acts`).
        unsafe { _mm256_storeu_si256(out.qs.as_mut_ptr().add(b * QK).cast(), q) };
        let g = 2 * b;
        out.d[g] = if d0 < f32::MIN_POSITIVE { 0.0 } else { d0 };
        out.d[g + 1] = if d1 < f32::MIN_POSITIVE { 0.0 } else { d1 };
        out.sums[g] = _mm_cvtsi128_si32(s2);
        out.sums[g + 1] = _mm_extract_epi32::<1>(s2);
    }
}
