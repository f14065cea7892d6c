//! AVX2 K-quant kernels (Q4_K, Q5_K, Q6_K): matrix-vector products with int8 activations that give
//! the same bits as the scalar specification in `scalar::kquants`.
//!
//! Per super-block and row, the sixteen 16-value activation groups are handled together, in the
//! *group lane map* of the specification: two registers, register `h` holding the values for
//! groups `8h .. 8h + 8`, group `i` in lane `L(i) = 4 * (i % 2) + (i / 2) % 4` (low half: first
//! halves of 32-element sub-blocks `4h .. 4h + 4`, high half: their second halves).
//! - Integer dots: `_mm256_maddubs_epi16` (unsigned weight quants times signed int8 activations)
//!   gives per 32-value sub-block sixteen i16 pair sums in element order, the low 128-bit half
//!   for the sub-block's first group and the high half for its second. `_mm256_hadd_epi16` then
//!   adds within each half, so the two groups never mix; every intermediate is bounded below the
//!   i16 limit (see the helpers), and the last additions happen in i32 (`_mm256_madd_epi16`, with
//!   ones or with the Q6_K scales, and for Q6_K `_mm256_hadd_epi32`). The result is already in the
//!   group lane map, and all integer results are exact.
//! - Q4_K/Q5_K: the unpacked 6-bit scales and mins come out repeated in both 128-bit halves, as
//!   the map needs, and `dl = d * sc`, `ml = dmin * m` are computed from them; Q6_K: quants are
//!   used unsigned (`0..64`) and the offset removed in i16 (`Σ q a - Σ 32 a`), the 16-element
//!   scales applied by `_mm256_madd_epi16`.
//! - `acts.d` and `acts.sums` are loaded eight groups at a time and permuted into the map (moving
//!   bits only).
//! - The float step is the specification's, lane `l` of one `__m256` is `acc[l]`, with separate
//!   multiplies and adds (no FMA, so no different rounding), register 0 before register 1, and
//!   the final reduction adds the lanes in the specification's order.
//! - The f16 scales are widened exactly by F16C.
//!
//! Hence every result is bit-identical to the scalar kernel; the tests check exactly that.
//!
//! Rows are read one after the other, each prefetching the weights `PREFETCH_BYTES` ahead of
//! the super-block it reads.
//!
//! The SIMD steps live in `#[inline(always)]` helpers without `target_feature`: they are inlined
//! into the `#[target_feature(enable = "avx2,fma,f16c")]` entry points, whose callers guarantee
//! the CPU supports AVX2, FMA and F16C.

use core::arch::x86_64::*;

use crate::acts::ActsQ8;
use crate::scalar::kquants::{
    check_gemv, ACT_GROUPS_PER_SUPER, Q4_K_BLOCK_BYTES, Q5_K_BLOCK_BYTES, Q6_K_BLOCK_BYTES, QK_K,
};

/// Values per K-quant sub-block of 32 (one `maddubs` register).
const SUB: usize = 32;

/// The 6-bit scales and mins of the eight sub-blocks of a Q4_K/Q5_K super-block, from the 12 packed
/// bytes at `s`, in the group lane map: `sc[h]` lane `l` is the scale of sub-block `4h + l % 4`
/// (`h` in `0..2`), likewise `m[h]` for the mins. Same values as
/// `scalar::kquants::scale_min_k4`, computed without lane-crossing shuffles: each lane shifts its
/// own copy of a packed word.
///
/// # Safety
/// The CPU must support AVX2 and `s` must be valid for reading 12 bytes.
#[inline(always)]
unsafe fn scales_mins_k4(s: *const u8) -> ([__m256i; 2], [__m256i; 2]) {
    // SAFETY: the caller guarantees AVX2 and that `s..s+12` is readable; the three unaligned
    // 4-byte reads are `s..s+4`, `s+4..s+8` and `s+8..s+12`.
    unsafe {
        let word = |i: usize| _mm256_set1_epi32(s.add(4 * i).cast::<i32>().read_unaligned());
        // Lanes l and l + 4 look at byte l % 4 of each word.
        let byte_of = _mm256_setr_epi32(0, 8, 16, 24, 0, 8, 16, 24);
        let a = _mm256_srlv_epi32(word(0), byte_of); // low 6 bits: scales 0..4
        let c = _mm256_srlv_epi32(word(1), byte_of); // low 6 bits: mins 0..4
        let b = _mm256_srlv_epi32(word(2), byte_of); // nibbles: low bits of scales / mins 4..8
        let m6 = _mm256_set1_epi32(0x3F);
        let m4 = _mm256_set1_epi32(0x0F);
        let top = _mm256_set1_epi32(0x30);
        // For sub-blocks 4..8, bits 6..7 of the bytes of words 0 and 1 become bits 4..5.
        let sc_hi = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi32::<2>(a), top),
            _mm256_and_si256(b, m4),
        );
        let m_hi = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi32::<2>(c), top),
            _mm256_and_si256(_mm256_srli_epi32::<4>(b), m4),
        );
        (
            [_mm256_and_si256(a, m6), sc_hi],
            [_mm256_and_si256(c, m6), m_hi],
        )
    }
}

/// Eight per-group values at `p` (32-bit lanes) permuted into the group lane map: lane `l` gets
/// `p[[0, 2, 4, 6, 1, 3, 5, 7][l]]`. Only moves bits.
///
/// # Safety
/// The CPU must support AVX2 and `p` must be valid for reading 32 bytes.
#[inline(always)]
unsafe fn load_groups(p: *const f32) -> __m256 {
    // SAFETY: the caller guarantees AVX2 and that `p..p+8` is readable.
    unsafe {
        let perm = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
        _mm256_permutevar8x32_ps(_mm256_loadu_ps(p), perm)
    }
}

/// How far ahead of the super-block being read the gemvs prefetch weight bytes. Rows are read
/// one after the other, so this runs ahead in the one stream of weights; without it the
/// hardware prefetchers left the loads waiting on memory for about half of the time (2 to 4 KiB
/// measured best on a Sapphire Rapids core).
const PREFETCH_BYTES: usize = 3072;

/// Prefetches the `len` bytes (`len > 0`) at `p`, every 64-byte line they touch, into the L1
/// cache.
///
/// Only computes addresses: `p` may point anywhere (past the end of the weights too), since a
/// prefetch never faults.
#[inline(always)]
fn prefetch(p: *const u8, len: usize) {
    let mut o = 0;
    while o < len {
        // SAFETY: a prefetch reads nothing architecturally and never faults; SSE is part of
        // x86-64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(o).cast()) };
        o += 64;
    }
    // SAFETY: as above; the line of the last byte, which the steps of 64 can miss.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(len - 1).cast()) };
}

/// The little-endian f16 at `p` widened exactly (F16C) and broadcast to eight lanes: the value
/// `f16_at` gives.
///
/// # Safety
/// The CPU must support AVX2 and F16C and `p` must be valid for reading 2 bytes.
#[inline(always)]
unsafe fn f16_splat(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees the features and the 2 readable bytes.
    unsafe {
        let bits = u16::from_le(p.cast::<u16>().read_unaligned());
        _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }
}

/// The specification's final reduction of the eight lane sums:
/// `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn reduce_lanes_ps(acc: __m256) -> f32 {
    // SAFETY: the caller guarantees AVX2; these intrinsics only touch registers.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        // [s0 + s2, s1 + s3, ..]
        let t = _mm_add_ps(s, _mm_movehl_ps(s, s));
        // (s0 + s2) + (s1 + s3)
        _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
    }
}

/// The sixteen exact group dots `Σ q*a` of a super-block whose unsigned quants of sub-block `j`
/// are `q[j]`, with the activations at `a`, in the group lane map (result `h`: groups
/// `8h .. 8h + 8`).
///
/// # Safety
/// The CPU must support AVX2, every `q[j]` must be in `0..=31` and `a` must be valid for reading
/// 256 bytes.
#[inline(always)]
unsafe fn dots_u8_i8(q: &[__m256i; 8], a: *const i8) -> [__m256i; 2] {
    // SAFETY: the caller guarantees AVX2 and that `a..a+256` is readable; each load reads
    // `a + 32*j .. a + 32*j + 32` with `j < 8`, unaligned loads being allowed.
    unsafe {
        let p: [__m256i; 8] = core::array::from_fn(|j| {
            let x = _mm256_loadu_si256(a.add(SUB * j).cast::<__m256i>());
            // |q0*x0 + q1*x1| <= 31 * 128 * 2 = 7936: no saturation.
            _mm256_maddubs_epi16(q[j], x)
        });
        // Two rounds of horizontal i16 adds (per 128-bit half, so the first and second group of
        // a sub-block stay apart) leave sums of four pair sums, |.| <= 4 * 7936 < 2^15, exact;
        // `madd` with ones adds the last pair in i32. Low half of result h: the first groups of
        // sub-blocks 4h..4h+4, high half: their second groups (the group lane map).
        let ones = _mm256_set1_epi16(1);
        let quad = |k: usize| {
            let h01 = _mm256_hadd_epi16(p[4 * k], p[4 * k + 1]);
            let h23 = _mm256_hadd_epi16(p[4 * k + 2], p[4 * k + 3]);
            _mm256_madd_epi16(_mm256_hadd_epi16(h01, h23), ones)
        };
        [quad(0), quad(1)]
    }
}

/// One Q4_K/Q5_K super-block of a row added to `acc`: `q` are its unsigned quants per sub-block,
/// `blk` the super-block (for `d`, `dmin` and the packed scales), `a`, `ad` and `sums` the
/// activations, scales and sums of its 256 values.
///
/// # Safety
/// The CPU must support AVX2 and F16C, every `q[j]` must be in `0..=31` and `a` must hold 256
/// values; `blk`, `ad` and `sums` are checked by indexing.
#[inline(always)]
unsafe fn super_block_k4(
    acc: __m256,
    blk: &[u8],
    q: &[__m256i; 8],
    a: &[i8],
    ad: &[f32],
    sums: &[i32],
) -> __m256 {
    let (ad, sums, scales, ddmin) = (&ad[..16], &sums[..16], &blk[4..16], &blk[..4]);
    // SAFETY: the caller guarantees AVX2, F16C, the quant range and that `a` holds 256 values;
    // `ddmin` is 4 bytes, `scales` 12 bytes, `ad` and `sums` 16 values, so the loads at offsets 0
    // and 8 read inside them.
    unsafe {
        let (sc, m) = scales_mins_k4(scales.as_ptr());
        // `d` and `dmin` widened exactly by F16C (the same values as `f16_at`).
        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(
            ddmin.as_ptr().cast::<i32>().read_unaligned(),
        ));
        let d = _mm256_broadcastss_ps(dd);
        let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
        let dots = dots_u8_i8(q, a.as_ptr());
        let mut acc = acc;
        for h in 0..2 {
            // dl = d * sc and ml = dmin * m, per sub-block, as in the dequantizer.
            let dl = _mm256_mul_ps(d, _mm256_cvtepi32_ps(sc[h]));
            let ml = _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(m[h]));
            let sv = _mm256_castps_si256(load_groups(sums.as_ptr().add(8 * h).cast::<f32>()));
            let pos = _mm256_mul_ps(_mm256_cvtepi32_ps(dots[h]), dl);
            let neg = _mm256_mul_ps(_mm256_cvtepi32_ps(sv), ml);
            let adv = load_groups(ad.as_ptr().add(8 * h));
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_sub_ps(pos, neg), adv));
        }
        acc
    }
}

/// The 4-bit quants of the eight 32-element sub-blocks of a Q4_K super-block whose `qs` field
/// starts at `qs`.
///
/// # Safety
/// The CPU must support AVX2 and `qs` must be valid for reading 128 bytes.
#[inline(always)]
pub(crate) unsafe fn quants_q4_k(qs: *const u8) -> [__m256i; 8] {
    // SAFETY: the caller guarantees AVX2 and that `qs..qs+128` is readable; load `k` reads
    // `qs + 32*k .. qs + 32*k + 32` with `k < 4`.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let mut q = [_mm256_setzero_si256(); 8];
        for k in 0..4 {
            let bytes = _mm256_loadu_si256(qs.add(32 * k).cast::<__m256i>());
            q[2 * k] = _mm256_and_si256(bytes, m4);
            q[2 * k + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), m4);
        }
        q
    }
}

/// The 5-bit quants of the eight 32-element sub-blocks of a Q5_K super-block whose `qh` and `qs`
/// fields start at `qh` and `qs`.
///
/// # Safety
/// The CPU must support AVX2, `qh` must be valid for reading 32 bytes and `qs` for 128 bytes.
#[inline(always)]
pub(crate) unsafe fn quants_q5_k(qh: *const u8, qs: *const u8) -> [__m256i; 8] {
    // SAFETY: the caller guarantees AVX2 and the readable ranges; the load reads `qh..qh+32`, and
    // `quants_q4_k` reads `qs..qs+128`.
    unsafe {
        let mut q = quants_q4_k(qs);
        let bit4 = _mm256_set1_epi8(0x10);
        // Bits 2k and 2k+1 of every byte of `bits` are bits 0 and 1 after k shifts by two; the
        // 16-bit shifts only carry bits between bytes into positions that the 0x10 mask removes.
        let mut bits = _mm256_loadu_si256(qh.cast::<__m256i>());
        for k in 0..4 {
            let h0 = _mm256_and_si256(_mm256_slli_epi16::<4>(bits), bit4);
            let h1 = _mm256_and_si256(_mm256_slli_epi16::<3>(bits), bit4);
            q[2 * k] = _mm256_or_si256(q[2 * k], h0);
            q[2 * k + 1] = _mm256_or_si256(q[2 * k + 1], h1);
            bits = _mm256_srli_epi16::<2>(bits);
        }
        q
    }
}

/// Q4_K weights times int8 activations, bit-identical to `scalar::kquants::gemv_q4_k`.
///
/// Panics on the same argument errors as the scalar kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`is_x86_feature_detected!("avx2")`, `("fma")` and
/// `("f16c")`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_q4_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let row_bytes = check_gemv(w, acts, out, Q4_K_BLOCK_BYTES);
    for (r, y) in out.iter_mut().enumerate() {
        // SAFETY: the caller guarantees AVX2 and F16C (the row is `acts.len() / 256` whole
        // super-blocks and `check_gemv` checked the lengths of `acts`).
        *y = unsafe { row_q4_k(&w[r * row_bytes..(r + 1) * row_bytes], acts) };
    }
}

/// One row of [`avx2_gemv_q4_k`]: `row` holds `acts.len() / 256` super-blocks (slices are indexed
/// with bounds checks, so wrong lengths panic).
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[inline(always)]
unsafe fn row_q4_k(row: &[u8], acts: &ActsQ8<'_>) -> f32 {
    // SAFETY: the caller guarantees AVX2; this only sets a register.
    let mut acc = unsafe { _mm256_setzero_ps() };
    for s in 0..acts.len() / QK_K {
        let blk = &row[s * Q4_K_BLOCK_BYTES..(s + 1) * Q4_K_BLOCK_BYTES];
        prefetch(blk.as_ptr().wrapping_add(PREFETCH_BYTES), Q4_K_BLOCK_BYTES);
        let a = &acts.qs[s * QK_K..(s + 1) * QK_K];
        let groups = s * ACT_GROUPS_PER_SUPER..(s + 1) * ACT_GROUPS_PER_SUPER;
        // SAFETY: the caller guarantees AVX2 and F16C. `blk` is 144 bytes, so `qs` (16..144)
        // holds the 128 bytes `quants_q4_k` reads; `a` is 256 values. Q4_K quants are in 0..16.
        acc = unsafe {
            let q = quants_q4_k(blk.as_ptr().add(16));
            let (ad, sums) = (&acts.d[groups.clone()], &acts.sums[groups]);
            super_block_k4(acc, blk, &q, a, ad, sums)
        };
    }
    // SAFETY: the caller guarantees AVX2.
    unsafe { reduce_lanes_ps(acc) }
}

/// Q5_K weights times int8 activations, bit-identical to `scalar::kquants::gemv_q5_k`.
///
/// Panics on the same argument errors as the scalar kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`is_x86_feature_detected!("avx2")`, `("fma")` and
/// `("f16c")`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_q5_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let row_bytes = check_gemv(w, acts, out, Q5_K_BLOCK_BYTES);
    for (r, y) in out.iter_mut().enumerate() {
        // SAFETY: the caller guarantees AVX2 and F16C (the row is `acts.len() / 256` whole
        // super-blocks and `check_gemv` checked the lengths of `acts`).
        *y = unsafe { row_q5_k(&w[r * row_bytes..(r + 1) * row_bytes], acts) };
    }
}

/// One row of [`avx2_gemv_q5_k`]: `row` holds `acts.len() / 256` super-blocks (slices are indexed
/// with bounds checks, so wrong lengths panic).
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[inline(always)]
unsafe fn row_q5_k(row: &[u8], acts: &ActsQ8<'_>) -> f32 {
    // SAFETY: the caller guarantees AVX2; this only sets a register.
    let mut acc = unsafe { _mm256_setzero_ps() };
    for s in 0..acts.len() / QK_K {
        let blk = &row[s * Q5_K_BLOCK_BYTES..(s + 1) * Q5_K_BLOCK_BYTES];
        prefetch(blk.as_ptr().wrapping_add(PREFETCH_BYTES), Q5_K_BLOCK_BYTES);
        let a = &acts.qs[s * QK_K..(s + 1) * QK_K];
        let groups = s * ACT_GROUPS_PER_SUPER..(s + 1) * ACT_GROUPS_PER_SUPER;
        // SAFETY: the caller guarantees AVX2 and F16C. `blk` is 176 bytes, so `qh` (16..48) and
        // `qs` (48..176) hold the 32 and 128 bytes `quants_q5_k` reads; `a` is 256 values. Q5_K
        // quants are in 0..32.
        acc = unsafe {
            let q = quants_q5_k(blk.as_ptr().add(16), blk.as_ptr().add(48));
            let (ad, sums) = (&acts.d[groups.clone()], &acts.sums[groups]);
            super_block_k4(acc, blk, &q, a, ad, sums)
        };
    }
    // SAFETY: the caller guarantees AVX2.
    unsafe { reduce_lanes_ps(acc) }
}

/// The sixteen exact scaled group dots `scales[i] * Σ (q-32) a` of a Q6_K super-block, in the group
/// lane map (result `h`: groups `8h .. 8h + 8`).
///
/// # Safety
/// The CPU must support AVX2, `blk` must be valid for reading a 210-byte Q6_K super-block and `a`
/// for reading 256 bytes.
#[inline(always)]
unsafe fn scaled_dots_q6_k(blk: *const u8, a: *const i8, shuf: &[__m256i; 2]) -> [__m256i; 2] {
    // SAFETY: the caller guarantees AVX2 and the readable ranges. Loads read `ql` at
    // `blk + 64h .. blk + 64h + 64` (h < 2, inside 0..128), `qh` at `blk + 128 + 32h ..` (+32,
    // inside 128..192), the 16 scales at `blk + 192 .. blk + 208`, and activations at
    // `a + 32j .. a + 32j + 32` (j < 8).
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        let off = _mm256_set1_epi8(32);
        let scales = _mm_loadu_si128(blk.add(192).cast::<__m128i>());
        // i16 scales 0..8 and 8..16, each copied into both 128-bit halves.
        let sc_halves = [
            _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(scales)),
            _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_srli_si128::<8>(scales))),
        ];
        let mut v = [_mm256_setzero_si256(); 2];
        for (h, sc_half) in sc_halves.iter().enumerate() {
            let l0 = _mm256_loadu_si256(blk.add(64 * h).cast::<__m256i>());
            let l1 = _mm256_loadu_si256(blk.add(64 * h + 32).cast::<__m256i>());
            let hb = _mm256_loadu_si256(blk.add(128 + 32 * h).cast::<__m256i>());
            // Unsigned 6-bit quants of 32-value blocks g = 0..4 of this half: low nibbles of l0,
            // l1, then high nibbles; high bits 2g..2g+1 of `hb` moved to bits 4..5 (16-bit shifts
            // carry bits between bytes only into positions the masks remove).
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(l0, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(hb), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(l1, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<2>(hb), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                    _mm256_and_si256(hb, m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m30),
                ),
            ];
            let p: [__m256i; 4] = core::array::from_fn(|g| {
                let x = _mm256_loadu_si256(a.add(SUB * (4 * h + g)).cast::<__m256i>());
                // Pair sums of q*x (|.| <= 63*128*2) minus those of 32*x (|.| <= 32*128*2): the
                // difference is the pair sum of (q-32)*x, |.| <= 8192, exact in i16.
                _mm256_sub_epi16(_mm256_maddubs_epi16(q[g], x), _mm256_maddubs_epi16(off, x))
            });
            // One horizontal i16 add per pair of blocks (2k, 2k+1): sums of four values,
            // |.| <= 16384, exact; per 128-bit half the first four lanes are block 2k's, the next
            // four 2k+1's, the low half first groups and the high half second groups. `madd` with
            // the matching scales gives exact i32 (|.| <= 2 * 128 * 16384), and one horizontal
            // i32 add finishes the group sums: per half, blocks 4h..4h+4 in order.
            let r: [__m256i; 2] = core::array::from_fn(|k| {
                let sc = _mm256_shuffle_epi8(*sc_half, shuf[k]);
                _mm256_madd_epi16(_mm256_hadd_epi16(p[2 * k], p[2 * k + 1]), sc)
            });
            v[h] = _mm256_hadd_epi32(r[0], r[1]);
        }
        v
    }
}

/// Shuffle controls that turn the eight i16 scales of four 32-value blocks (in both halves) into
/// the scales of blocks `2k` and `2k + 1` (`k` in `0..2`) in the lane order of `_mm256_hadd_epi16`
/// of their pair sums: low half four times scale `4k` then four times `4k + 2` (first groups),
/// high half `4k + 1` and `4k + 3` (second groups).
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn q6_k_scale_shuffles() -> [__m256i; 2] {
    // SAFETY: the caller guarantees AVX2; these intrinsics only touch registers.
    unsafe {
        // The two bytes of i16 scale `i`, as one i16 shuffle control.
        let bytes = |i: i16| (2 * i) | ((2 * i + 1) << 8);
        let ctl = |k: i16| {
            let half = |a: i16, b: i16| {
                let (a, b) = (bytes(a), bytes(b));
                _mm_setr_epi16(a, a, a, a, b, b, b, b)
            };
            _mm256_set_m128i(half(4 * k + 1, 4 * k + 3), half(4 * k, 4 * k + 2))
        };
        [ctl(0), ctl(1)]
    }
}

/// Q6_K weights times int8 activations, bit-identical to `scalar::kquants::gemv_q6_k`.
///
/// Panics on the same argument errors as the scalar kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`is_x86_feature_detected!("avx2")`, `("fma")` and
/// `("f16c")`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_q6_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let row_bytes = check_gemv(w, acts, out, Q6_K_BLOCK_BYTES);
    // SAFETY: the caller guarantees AVX2.
    let shuf = unsafe { q6_k_scale_shuffles() };
    for (r, y) in out.iter_mut().enumerate() {
        // SAFETY: the caller guarantees AVX2 and F16C (the row is `acts.len() / 256` whole
        // super-blocks and `check_gemv` checked the lengths of `acts`).
        *y = unsafe { row_q6_k(&w[r * row_bytes..(r + 1) * row_bytes], acts, &shuf) };
    }
}

/// One row of [`avx2_gemv_q6_k`]: `row` holds `acts.len() / 256` super-blocks (slices are indexed
/// with bounds checks, so wrong lengths panic).
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[inline(always)]
unsafe fn row_q6_k(row: &[u8], acts: &ActsQ8<'_>, shuf: &[__m256i; 2]) -> f32 {
    // SAFETY: the caller guarantees AVX2; this only sets a register.
    let mut acc = unsafe { _mm256_setzero_ps() };
    for s in 0..acts.len() / QK_K {
        let blk = &row[s * Q6_K_BLOCK_BYTES..(s + 1) * Q6_K_BLOCK_BYTES];
        prefetch(blk.as_ptr().wrapping_add(PREFETCH_BYTES), Q6_K_BLOCK_BYTES);
        let a = &acts.qs[s * QK_K..(s + 1) * QK_K];
        let ad = &acts.d[s * ACT_GROUPS_PER_SUPER..(s + 1) * ACT_GROUPS_PER_SUPER];
        // SAFETY: the caller guarantees AVX2 and F16C. `blk` is a whole 210-byte super-block
        // (`d` is its last two bytes), `a` is 256 values and `ad` the 16 floats the two loads
        // read.
        acc = unsafe {
            let d = f16_splat(blk.as_ptr().add(208));
            let ip = scaled_dots_q6_k(blk.as_ptr(), a.as_ptr(), shuf);
            let mut acc = acc;
            for (h, iph) in ip.iter().enumerate() {
                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(*iph), d);
                acc = _mm256_add_ps(acc, _mm256_mul_ps(t, load_groups(ad.as_ptr().add(8 * h))));
            }
            acc
        };
    }
    // SAFETY: the caller guarantees AVX2.
    unsafe { reduce_lanes_ps(acc) }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::scalar::kquants::scale_min_k4;

    fn avx2() -> bool {
        std::is_x86_feature_detected!("avx2")
    }

    #[test]
    fn packed_scale_unpacking_matches_the_specification() {
        if !avx2() {
            return;
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            let mut s = [0u8; 12];
            for b in &mut s {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            // SAFETY: AVX2 was detected above; `s` is 12 bytes.
            let (sc, m) = unsafe {
                let (sc, m) = scales_mins_k4(s.as_ptr());
                (
                    sc.map(|v| core::mem::transmute::<__m256i, [i32; 8]>(v)),
                    m.map(|v| core::mem::transmute::<__m256i, [i32; 8]>(v)),
                )
            };
            for h in 0..2 {
                for l in 0..8 {
                    let (want_sc, want_m) = scale_min_k4(4 * h + l % 4, &s);
                    assert_eq!(
                        (sc[h][l], m[h][l]),
                        (i32::from(want_sc), i32::from(want_m)),
                        "{s:?} {h} {l}"
                    );
                }
            }
        }
    }
}
