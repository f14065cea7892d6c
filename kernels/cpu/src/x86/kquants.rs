//! AVX2 K-quant kernels (Q4_K, Q5_K, Q6_K): matrix-vector products with int8 activations that give
//! the same bits as the scalar specification in `scalar::kquants`.
//!
//! Per super-block and row, the sixteen 16-value activation groups are handled together:
//! - integer dots with `_mm256_maddubs_epi16` (unsigned weight quants times signed int8 activations;
//!   every pair sum stays far below the i16 saturation limit) and `_mm256_madd_epi16`: for each
//!   32-value sub-block `j` one register whose i32 lanes 0..4 hold partial sums of values 0..16 and
//!   lanes 4..8 those of values 16..32 (both instructions keep element order);
//! - two rounds of a transposing horizontal sum turn the eight such registers into two registers of
//!   exact group dots: register `i / 8` holds group `i` in lane `4 * (i % 2) + (i / 2) % 4`, which
//!   is the specification's accumulator lane `L(i)`;
//! - Q4_K/Q5_K: the 6-bit scales and mins multiply the dots and `acts.sums` as i32 vectors (the
//!   unpacked scales come out already repeated in both 128-bit halves, as that lane map needs);
//!   Q6_K: quants are used unsigned (`0..64`) and the offset removed in i16 (`Σ q a - Σ 32 a`), the
//!   two 16-element scales of a sub-block applied by `_mm256_madd_epi16`;
//! - `acts.d` and `acts.sums` are loaded eight groups at a time and permuted into that lane map;
//! - the float step is the specification's, lane `l` of one `__m256` is `acc[l]`, with separate
//!   multiplies and adds (no FMA, so no different rounding), groups `0..8` before `8..16`, and the
//!   final reduction adds the lanes in the specification's order.
//!
//! Hence every result is bit-identical to the scalar kernel; the tests check exactly that.
//!
//! The SIMD steps live in `#[inline(always)]` helpers without `target_feature`: they are inlined
//! into the `#[target_feature(enable = "avx2,fma")]` entry points, whose callers guarantee the CPU
//! supports AVX2 and FMA.

use core::arch::x86_64::*;

use crate::acts::ActsQ8;
use crate::scalar::kquants::{
    check_gemv, f16_at, ACT_GROUPS_PER_SUPER, Q4_K_BLOCK_BYTES, Q5_K_BLOCK_BYTES, Q6_K_BLOCK_BYTES,
    QK_K,
};

/// Values per K-quant sub-block of 32 (one `maddubs` register).
const SUB: usize = 32;
/// Lane `l` of a register of group dots holds group `GROUP_OF_LANE[l]` of its eight groups (the
/// inverse of the specification's lane map `L(i)` on `0..8`).
const GROUP_OF_LANE: [i32; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// The 6-bit scales and mins of the eight sub-blocks of a Q4_K/Q5_K super-block, from the 12 packed
/// bytes at `s`, in the lane map of the group dots: `sc[h]` lane `l` is the scale of sub-block
/// `4h + l % 4` (`h` in `0..2`), likewise `m[h]` for the mins. Same values as
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

/// The sixteen group sums of eight sub-block registers: `v[j]` holds in lanes 0..4 partial sums
/// of group `2j` and in lanes 4..8 those of group `2j + 1`. Register `i / 8` of the result holds
/// the (wrapping) sum of group `i` in lane `4 * (i % 2) + (i / 2) % 4`.
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn group_sums(v: &[__m256i; 8]) -> [__m256i; 2] {
    // Two rounds, each adding two vectors' partial sums into one: blends pick the lanes that stay,
    // one in-lane shuffle brings the partners (the compiler may fuse a round into `vphaddd`).
    // Integer sums are exact in any order.
    // SAFETY: the caller guarantees AVX2; these intrinsics only touch registers.
    unsafe {
        // Round 1, (a, b) -> lane 2i: a[2i] + a[2i+1], lane 2i+1: b[2i] + b[2i+1].
        let pairs = |a: __m256i, b: __m256i| {
            let keep = _mm256_blend_epi32::<0b1010_1010>(a, b);
            let swap = _mm256_shuffle_epi32::<0b1011_0001>(_mm256_blend_epi32::<0b1010_1010>(b, a));
            _mm256_add_epi32(keep, swap)
        };
        // Round 2, (x, y) -> lanes 0, 1: the two partial sums of x; lanes 2, 3: those of y (per
        // 128-bit half). With x = pairs(v0, v1) and y = pairs(v2, v3) the low half is the sums of
        // lanes 0..4 of v0, v1, v2, v3 (groups 0, 2, 4, 6) and the high half those of lanes 4..8
        // (groups 1, 3, 5, 7).
        let quads = |x: __m256i, y: __m256i| {
            let keep = _mm256_blend_epi32::<0b1100_1100>(x, y);
            let swap = _mm256_shuffle_epi32::<0b0100_1110>(_mm256_blend_epi32::<0b1100_1100>(y, x));
            _mm256_add_epi32(keep, swap)
        };
        [
            quads(pairs(v[0], v[1]), pairs(v[2], v[3])),
            quads(pairs(v[4], v[5]), pairs(v[6], v[7])),
        ]
    }
}

/// Eight consecutive per-group floats at `p` (groups `8h .. 8h + 8` of a super-block), permuted into
/// the lane map of the group dots.
///
/// # Safety
/// The CPU must support AVX2 and `p` must be valid for reading 8 floats.
#[inline(always)]
unsafe fn load_groups_ps(p: *const f32, perm: __m256i) -> __m256 {
    // SAFETY: the caller guarantees AVX2 and that `p..p+8` is readable.
    unsafe { _mm256_permutevar8x32_ps(_mm256_loadu_ps(p), perm) }
}

/// Eight consecutive per-group integers at `p`, permuted into the lane map of the group dots.
///
/// # Safety
/// The CPU must support AVX2 and `p` must be valid for reading 8 i32.
#[inline(always)]
unsafe fn load_groups_epi32(p: *const i32, perm: __m256i) -> __m256i {
    // SAFETY: the caller guarantees AVX2 and that `p..p+8` is readable.
    unsafe { _mm256_permutevar8x32_epi32(_mm256_loadu_si256(p.cast::<__m256i>()), perm) }
}

/// The permutation for [`load_groups_ps`] and [`load_groups_epi32`].
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn group_perm() -> __m256i {
    // SAFETY: the caller guarantees AVX2; the load reads the 8 i32 of a local array.
    unsafe { _mm256_loadu_si256(GROUP_OF_LANE.as_ptr().cast::<__m256i>()) }
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

/// The float step for Q4_K/Q5_K: `acc + ((ip * d) - (mp * dmin)) * ad`, lane by lane.
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn accumulate_k4(
    acc: __m256,
    ip: __m256i,
    mp: __m256i,
    d: __m256,
    dmin: __m256,
    ad: __m256,
) -> __m256 {
    // SAFETY: the caller guarantees AVX2; these intrinsics only touch registers.
    unsafe {
        let pos = _mm256_mul_ps(_mm256_cvtepi32_ps(ip), d);
        let neg = _mm256_mul_ps(_mm256_cvtepi32_ps(mp), dmin);
        _mm256_add_ps(acc, _mm256_mul_ps(_mm256_sub_ps(pos, neg), ad))
    }
}

/// The sixteen exact group dots `Σ q*a` of a super-block whose unsigned quants of sub-block `j`
/// are `q[j]`, with the activations at `a`, in the lane map of [`group_sums`].
///
/// # Safety
/// The CPU must support AVX2, every `q[j]` must be in `0..=63` and `a` must be valid for reading
/// 256 bytes.
#[inline(always)]
unsafe fn dots_u8_i8(q: &[__m256i; 8], a: *const i8) -> [__m256i; 2] {
    // SAFETY: the caller guarantees AVX2 and that `a..a+256` is readable; each load reads
    // `a + 32*j .. a + 32*j + 32` with `j < 8`, unaligned loads being allowed.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut v = [_mm256_setzero_si256(); 8];
        for (j, vj) in v.iter_mut().enumerate() {
            let x = _mm256_loadu_si256(a.add(SUB * j).cast::<__m256i>());
            // |q0*x0 + q1*x1| <= 63 * 128 * 2 < 2^15: no saturation.
            *vj = _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], x), ones);
        }
        group_sums(&v)
    }
}

/// One Q4_K/Q5_K super-block of a row added to `acc`: `q` are its unsigned quants per sub-block,
/// `blk` the super-block (for `d`, `dmin` and the packed scales), `a`, `ad` and `sums` the
/// activations, scales and sums of its 256 values.
///
/// # Safety
/// The CPU must support AVX2, every `q[j]` must be in `0..=63` and `a` must hold 256 values;
/// `blk`, `ad` and `sums` are checked by indexing.
#[inline(always)]
unsafe fn super_block_k4(
    acc: __m256,
    blk: &[u8],
    q: &[__m256i; 8],
    a: &[i8],
    ad: &[f32],
    sums: &[i32],
    perm: __m256i,
) -> __m256 {
    let (ad, sums, scales) = (&ad[..16], &sums[..16], &blk[4..16]);
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    // SAFETY: the caller guarantees AVX2, the quant range and that `a` holds 256 values; `scales`
    // is 12 bytes, `ad` and `sums` 16 values, so the loads at offsets 0 and 8 read inside them.
    unsafe {
        let (d, dmin) = (_mm256_set1_ps(d), _mm256_set1_ps(dmin));
        let (sc, m) = scales_mins_k4(scales.as_ptr());
        let dots = dots_u8_i8(q, a.as_ptr());
        let mut acc = acc;
        for h in 0..2 {
            let ip = _mm256_mullo_epi32(dots[h], sc[h]);
            let mp = _mm256_mullo_epi32(load_groups_epi32(sums.as_ptr().add(8 * h), perm), m[h]);
            let adv = load_groups_ps(ad.as_ptr().add(8 * h), perm);
            acc = accumulate_k4(acc, ip, mp, d, dmin, adv);
        }
        acc
    }
}

/// The 4-bit quants of the eight groups of a Q4_K super-block whose `qs` field starts at `qs`.
///
/// # Safety
/// The CPU must support AVX2 and `qs` must be valid for reading 128 bytes.
#[inline(always)]
unsafe fn quants_q4_k(qs: *const u8) -> [__m256i; 8] {
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

/// The 5-bit quants of the eight groups of a Q5_K super-block whose `qh` and `qs` fields start at
/// `qh` and `qs`.
///
/// # Safety
/// The CPU must support AVX2, `qh` must be valid for reading 32 bytes and `qs` for 128 bytes.
#[inline(always)]
unsafe fn quants_q5_k(qh: *const u8, qs: *const u8) -> [__m256i; 8] {
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
/// The CPU must support AVX2 and FMA (`is_x86_feature_detected!("avx2")` and `("fma")`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_gemv_q4_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let row_bytes = check_gemv(w, acts, out, Q4_K_BLOCK_BYTES);
    for (r, y) in out.iter_mut().enumerate() {
        // SAFETY: the caller guarantees AVX2 (the row is `acts.len() / 256` whole super-blocks
        // and `check_gemv` checked the lengths of `acts`).
        *y = unsafe { row_q4_k(&w[r * row_bytes..(r + 1) * row_bytes], acts) };
    }
}

/// One row of [`avx2_gemv_q4_k`]: `row` holds `acts.len() / 256` super-blocks (slices are indexed
/// with bounds checks, so wrong lengths panic).
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn row_q4_k(row: &[u8], acts: &ActsQ8<'_>) -> f32 {
    // SAFETY: the caller guarantees AVX2; these only set registers.
    let (mut acc, perm) = unsafe { (_mm256_setzero_ps(), group_perm()) };
    for s in 0..acts.len() / QK_K {
        let blk = &row[s * Q4_K_BLOCK_BYTES..(s + 1) * Q4_K_BLOCK_BYTES];
        let a = &acts.qs[s * QK_K..(s + 1) * QK_K];
        let groups = s * ACT_GROUPS_PER_SUPER..(s + 1) * ACT_GROUPS_PER_SUPER;
        // SAFETY: the caller guarantees AVX2. `blk` is 144 bytes, so `qs` (16..144) holds the
        // 128 bytes `quants_q4_k` reads; `a` is 256 values. Q4_K quants are in 0..16.
        acc = unsafe {
            let q = quants_q4_k(blk.as_ptr().add(16));
            let (ad, sums) = (&acts.d[groups.clone()], &acts.sums[groups]);
            super_block_k4(acc, blk, &q, a, ad, sums, perm)
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
/// The CPU must support AVX2 and FMA (`is_x86_feature_detected!("avx2")` and `("fma")`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_gemv_q5_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let row_bytes = check_gemv(w, acts, out, Q5_K_BLOCK_BYTES);
    for (r, y) in out.iter_mut().enumerate() {
        // SAFETY: the caller guarantees AVX2 (the row is `acts.len() / 256` whole super-blocks
        // and `check_gemv` checked the lengths of `acts`).
        *y = unsafe { row_q5_k(&w[r * row_bytes..(r + 1) * row_bytes], acts) };
    }
}

/// One row of [`avx2_gemv_q5_k`]: `row` holds `acts.len() / 256` super-blocks (slices are indexed
/// with bounds checks, so wrong lengths panic).
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn row_q5_k(row: &[u8], acts: &ActsQ8<'_>) -> f32 {
    // SAFETY: the caller guarantees AVX2; these only set registers.
    let (mut acc, perm) = unsafe { (_mm256_setzero_ps(), group_perm()) };
    for s in 0..acts.len() / QK_K {
        let blk = &row[s * Q5_K_BLOCK_BYTES..(s + 1) * Q5_K_BLOCK_BYTES];
        let a = &acts.qs[s * QK_K..(s + 1) * QK_K];
        let groups = s * ACT_GROUPS_PER_SUPER..(s + 1) * ACT_GROUPS_PER_SUPER;
        // SAFETY: the caller guarantees AVX2. `blk` is 176 bytes, so `qh` (16..48) and `qs`
        // (48..176) hold the 32 and 128 bytes `quants_q5_k` reads; `a` is 256 values. Q5_K quants
        // are in 0..32.
        acc = unsafe {
            let q = quants_q5_k(blk.as_ptr().add(16), blk.as_ptr().add(48));
            let (ad, sums) = (&acts.d[groups.clone()], &acts.sums[groups]);
            super_block_k4(acc, blk, &q, a, ad, sums, perm)
        };
    }
    // SAFETY: the caller guarantees AVX2.
    unsafe { reduce_lanes_ps(acc) }
}

/// The sixteen exact scaled group dots `scales[i] * Σ (q-32) a` of a Q6_K super-block, in the lane
/// map of [`group_sums`].
///
/// # Safety
/// The CPU must support AVX2, `blk` must be valid for reading a 210-byte Q6_K super-block and `a`
/// for reading 256 bytes.
#[inline(always)]
unsafe fn scaled_dots_q6_k(blk: *const u8, a: *const i8, shuf: &[__m256i; 4]) -> [__m256i; 2] {
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
        let mut v = [_mm256_setzero_si256(); 8];
        for (h, sc_half) in sc_halves.iter().enumerate() {
            let l0 = _mm256_loadu_si256(blk.add(64 * h).cast::<__m256i>());
            let l1 = _mm256_loadu_si256(blk.add(64 * h + 32).cast::<__m256i>());
            let hb = _mm256_loadu_si256(blk.add(128 + 32 * h).cast::<__m256i>());
            // Unsigned 6-bit quants of groups g = 0..4 of this half: low nibbles of l0, l1, then
            // high nibbles; high bits 2g..2g+1 of `hb` moved to bits 4..5 (16-bit shifts carry
            // bits between bytes only into positions the masks remove).
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
            for (g, qg) in q.iter().enumerate() {
                let j = 4 * h + g;
                let x = _mm256_loadu_si256(a.add(SUB * j).cast::<__m256i>());
                // Pair sums of q*x (|.| <= 63*128*2) minus those of 32*x (|.| <= 32*128*2): the
                // difference is the pair sum of (q-32)*x, |.| <= 8192, exact in i16.
                let p =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(*qg, x), _mm256_maddubs_epi16(off, x));
                // Low half (elements 0..16) times scales[2j], high half times scales[2j+1].
                let sc = _mm256_shuffle_epi8(*sc_half, shuf[g]);
                v[j] = _mm256_madd_epi16(p, sc);
            }
        }
        group_sums(&v)
    }
}

/// Shuffle controls that turn eight i16 scales (in both halves) into scale `2g` repeated in the
/// low half and scale `2g + 1` in the high half, for `g` in `0..4`.
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn q6_k_scale_shuffles() -> [__m256i; 4] {
    // SAFETY: the caller guarantees AVX2; these intrinsics only touch registers.
    unsafe {
        let ctl = |g: i16| {
            let lo = (4 * g) | ((4 * g + 1) << 8);
            let hi = (4 * g + 2) | ((4 * g + 3) << 8);
            _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
        };
        [ctl(0), ctl(1), ctl(2), ctl(3)]
    }
}

/// Q6_K weights times int8 activations, bit-identical to `scalar::kquants::gemv_q6_k`.
///
/// Panics on the same argument errors as the scalar kernel.
///
/// # Safety
/// The CPU must support AVX2 and FMA (`is_x86_feature_detected!("avx2")` and `("fma")`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_gemv_q6_k(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let row_bytes = check_gemv(w, acts, out, Q6_K_BLOCK_BYTES);
    // SAFETY: the caller guarantees AVX2.
    let shuf = unsafe { q6_k_scale_shuffles() };
    for (r, y) in out.iter_mut().enumerate() {
        // SAFETY: the caller guarantees AVX2 (the row is `acts.len() / 256` whole super-blocks
        // and `check_gemv` checked the lengths of `acts`).
        *y = unsafe { row_q6_k(&w[r * row_bytes..(r + 1) * row_bytes], acts, &shuf) };
    }
}

/// One row of [`avx2_gemv_q6_k`]: `row` holds `acts.len() / 256` super-blocks (slices are indexed
/// with bounds checks, so wrong lengths panic).
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn row_q6_k(row: &[u8], acts: &ActsQ8<'_>, shuf: &[__m256i; 4]) -> f32 {
    // SAFETY: the caller guarantees AVX2; these only set registers.
    let (mut acc, perm) = unsafe { (_mm256_setzero_ps(), group_perm()) };
    for s in 0..acts.len() / QK_K {
        let blk = &row[s * Q6_K_BLOCK_BYTES..(s + 1) * Q6_K_BLOCK_BYTES];
        let a = &acts.qs[s * QK_K..(s + 1) * QK_K];
        let ad = &acts.d[s * ACT_GROUPS_PER_SUPER..(s + 1) * ACT_GROUPS_PER_SUPER];
        let d = f16_at(blk, 208);
        // SAFETY: the caller guarantees AVX2. `blk` is a whole 210-byte super-block, `a` is
        // 256 values and `ad` the 16 floats the two loads read.
        acc = unsafe {
            let d = _mm256_set1_ps(d);
            let ip = scaled_dots_q6_k(blk.as_ptr(), a.as_ptr(), shuf);
            let mut acc = acc;
            for (h, iph) in ip.iter().enumerate() {
                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(*iph), d);
                let adv = load_groups_ps(ad.as_ptr().add(8 * h), perm);
                acc = _mm256_add_ps(acc, _mm256_mul_ps(t, adv));
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
