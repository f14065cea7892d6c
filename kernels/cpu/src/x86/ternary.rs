//! AVX2 ternary kernels (T2, TQ2_0, TQ1_0), bit-exact with [`crate::scalar::ternary`].
//!
//! All types are walked in windows of 128 columns, eight activation groups of 16, four rows per
//! pass sharing the window's activations, sums and scales. Per row and window the 2-bit codes
//! `c` (0..=3) come out of 32 weight bytes with one shift and one mask per 32 codes; `vpmaddubsw`
//! multiplies them (unsigned) with the int8 activations into i16 pair sums (at most
//! `2 * 3 * 127`, no saturation); i16 adds and one `vpmaddwd` by ones leave the eight exact
//! group sums `Σ c·a` (at most `16 * 3 * 127`, no i16 overflow) in eight i32 lanes, and
//! `isum = Σ c·a − sums[g]` is `Σ (c − 1)·a`, exact because of the [`ActsQ8`] invariant
//! `sums[g] = Σ qs`. The eight f32 lanes are the specification's eight running sums, updated with
//! its operations and order, then reduced with its tree: every lane reproduces the scalar row.
//!
//! T2 window: two 16-byte blocks loaded as one 256-bit vector, so `(v >> 2s) & 3` holds, per
//! 128-bit lane (block), elements `4s .. 4s + 4` of each group `k` in bytes `4k .. 4k + 4`; the
//! activations are reordered alike once per window (a 4x4 transpose of 32-bit words), so each
//! group's products land in its own two i16 lanes: three vertical adds and the `vpmaddwd` give
//! the eight group sums in natural order, with no horizontal adds. TQ2_0 window (layout fixed
//! by llama.cpp): one 32-byte half of a block, whose shift `2j` gives groups `2j` and `2j + 1`.
//! The gemv takes each 32-bit word of the half to all four words of its 128-bit lane
//! (`vpshufd`) and shifts word `j` by `2j` (`vpsrlvd`), so that every word of the four code
//! vectors holds codes of one group, in the order `0 2 4 6 1 3 5 7` (`codes_tq2_words`); with
//! the activations arranged alike (a word transpose, once per call) the products add vertically
//! as T2's. The window's sums and scales are permuted to that order and the running sums put
//! back in natural order before the final reduction. (The TQ1_0 kernels reduce the same lane
//! order with a `vphaddw` tree, `group_sums`.) The window operands are arranged once per call
//! (per panel of `TQ1_PANEL` windows for long rows) and read from memory in every row, which
//! leaves the registers to the rows' running sums.
//!
//! TQ2W (TQ2_0's blocks with their codes in T2's order, which the loader makes in memory): each
//! half block is a T2 window, unpacked and reduced as T2's (one shift and one mask per 32 codes,
//! the activations in T2's arrangement, groups in natural lane order), with TQ2_0's block
//! scale: about 20 instructions per row and window instead of TQ2_0's 26.
//!
//! TQ1_0 (llama.cpp's base-3 layout, see [`crate::scalar::ternary`]): TQ2_0's windows, lane
//! order and float steps, but a whole block (two windows) per row at a time (`gemv_tq1!`),
//! decoded once into eight pairs of digit vectors in natural element order (`tq1_block`). The
//! digit `(3 q) >> 8` of a byte `q = b · 3^n mod 256` is the high byte of the 16-bit product
//! `3 q`, whose low byte `3 q mod 256` is the `q` of the next digit: one `vpmaddubsw` by 3 of the
//! low byte of each 16-bit lane (at the first power, of the low or the high byte of `b`) turns 16
//! elements (one parity) of one power into their digits, in the odd bytes, and the bytes of the
//! next power, in the even ones. So `qs[0..32]` costs one instruction per 16 digits, with no
//! compares; `qs[32..48]` and `qh` one more, a product by the power of each 128-bit lane (of each
//! 32-bit word for `qh`). The activations are arranged to match once per call (per panel of
//! `TQ1_PANEL` windows for long rows): each element's activation in the odd byte of its 16-bit
//! lane, zero in the even byte, so that `vpmaddubsw` of a digit vector by them gives one exact
//! product `trit·a` per lane; the products of the two parities are added into pair sums and
//! reduced as TQ2_0's, minus `sums`. A driver may instead decode `qs[32..48]` as digits 0 | 2
//! and 1 | 3 in a chain (one product by the lane powers, then `vpmaddubsw` by 3 twice: one
//! instruction per parity fewer), with the activations of that window arranged alike; its groups
//! then come out with lanes 2 and 5 swapped, which one `vpermd` of the `isum` undoes (the
//! AVX-VNNI driver does, where the multiplier ports are the limit; here it does not pay).
//!
//! Like the other AVX2 kernels these need AVX2, FMA and F16C (F16C converts the TQ scales).
//!
//! A row count that is not a multiple of four repeats the last row in the final pass and drops
//! the extra results.

use core::arch::x86_64::*;

use crate::acts::ActsQ8;
use crate::scalar::ternary::{check_gemv_ternary, QK_K, QS, T2_BLOCK, T2_BYTES, TQ2_0_BYTES};

/// Rows per pass.
pub(crate) const ROWS: usize = 4;
/// How many passes ahead the gemv prefetches.
pub(crate) const PREFETCH_PASSES: usize = 2;
/// The least distance, in bytes of rows, at which the T2 and TQ2_0 gemvs prefetch (more than
/// [`PREFETCH_PASSES`] when rows are short). They prefetch into L2, not L1: with long rows the
/// lines in flight and the window operands together outgrow a 32 KiB L1 (T2 2560 x 6912 from
/// memory: 58-77% of a 1-thread read into L1, 81-85% into L2). Near the end of a matrix they
/// prefetch what follows it, the next matrix of a model image in decode order. T2 walks the
/// lines of the pass `ahead` in address order, a few per window, rather than each row's line
/// in step with the rows it reads (`bench bandwidth`, twelve alternating runs, median GB/s:
/// 6912 x 2560 6.4 → 7.7, 2560 x 6912 7.6 → 8.1); for TQ2_0, bound by its instructions, the
/// extra loop cost more than it gained. TQ2W, with fewer instructions, walks them too, a
/// block's share per block (ten alternating runs: 6912 x 2560 10.2 → 11.8 GB/s, 2560 x 6912
/// 11.9 → 12.0; on a matrix left in cache 14.0 → 12.7).
pub(crate) const PREFETCH_BYTES: usize = 16384;
/// Columns per window: eight activation groups.
pub(crate) const WIN: usize = 8 * QS;

pub(crate) const T2: u8 = 0;
pub(crate) const TQ2_0: u8 = 1;
pub(crate) const TQ2W: u8 = 2;

/// The exact sums `Σ c·a` of eight groups from the four `vpmaddubsw` results of a window, in
/// the lane order described in the module docs (each 128-bit lane of `p[i]` holds one group).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn group_sums(p: [__m256i; 4]) -> __m256i {
    let a = _mm256_hadd_epi16(p[0], p[1]);
    let b = _mm256_hadd_epi16(p[2], p[3]);
    _mm256_madd_epi16(_mm256_hadd_epi16(a, b), _mm256_set1_epi16(1))
}

/// The specification's final reduction of eight running sums in natural lane order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn reduce8(acc: __m256) -> f32 {
    // [a0+a4, a1+a5, a2+a6, a3+a7]
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    // [(a0+a4)+(a2+a6), (a1+a5)+(a3+a7), ..]
    let t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps::<0b01>(t, t)))
}

/// [`reduce8`] of two rows' running sums `x` and `y` at once: every 32-bit word of the low
/// 128-bit lane holds `x`'s reduction, every word of the high lane `y`'s, with the same additions
/// in the same order (`((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn reduce8_pair(x: __m256, y: __m256) -> __m256 {
    // [s_x | s_y] with s_j = a_j + a_{j + 4} of each row.
    let s = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(x, y),
        _mm256_permute2f128_ps::<0x31>(x, y),
    );
    // Every word of each 128-bit lane: (s0 + s2) + (s1 + s3).
    let t = _mm256_add_ps(s, _mm256_permute_ps::<0b01_00_11_10>(s));
    _mm256_add_ps(t, _mm256_permute_ps::<0b10_11_00_01>(t))
}

/// The 4x4 transpose of the i32 words of each 128-bit lane of `r`: word `k` of result `q` is word
/// `q` of `r[k]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn transpose4(r: [__m256i; 4]) -> [__m256i; 4] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}

/// One window's shared operands: activations (arranged per type), `sums` and `d` (in the lane
/// order of [`group_sums`] for the type).
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub(crate) a: [__m256i; 4],
    pub(crate) sums: __m256i,
    pub(crate) d: __m256,
}

/// Loads the operands of window `win` (columns `128 win ..`; only the first 64 exist when
/// `half`, the rest are zero).
///
/// # Safety
///
/// `acts` must hold the columns of the window (checked by the caller's shape check); the CPU
/// must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn load_window<const K: u8>(acts: &ActsQ8<'_>, win: usize, half: bool) -> Window {
    let qa = acts.qs.as_ptr();
    let c0 = win * WIN;
    let g0 = win * 8;
    // SAFETY: the caller guarantees the window's columns (64 of them when `half`), and with them
    // its groups, lie inside `acts`.
    unsafe {
        if K == T2 || K == TQ2W {
            // g[k] = [group k of block 0 | group k of block 1]: 32-bit words 4k .. 4k + 4 of
            // each block's activations; a 4x4 word transpose gives a[s] = words s, 4 + s, 8 + s,
            // 12 + s, i.e. elements 4s .. 4s + 4 of groups 0..4, as the codes at shift 2s.
            let z = _mm_setzero_si128();
            let g: [__m256i; 4] = core::array::from_fn(|k| {
                let lo = _mm_loadu_si128(qa.add(c0 + 16 * k).cast());
                let hi = if half {
                    z
                } else {
                    _mm_loadu_si128(qa.add(c0 + 64 + 16 * k).cast())
                };
                _mm256_set_m128i(hi, lo)
            });
            let a = transpose4(g);
            if half {
                Window {
                    a,
                    sums: _mm256_set_m128i(z, _mm_loadu_si128(acts.sums.as_ptr().add(g0).cast())),
                    d: _mm256_set_m128(_mm_setzero_ps(), _mm_loadu_ps(acts.d.as_ptr().add(g0))),
                }
            } else {
                Window {
                    a,
                    sums: _mm256_loadu_si256(acts.sums.as_ptr().add(g0).cast()),
                    d: _mm256_loadu_ps(acts.d.as_ptr().add(g0)),
                }
            }
        } else {
            let perm = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
            Window {
                a: core::array::from_fn(|l| _mm256_loadu_si256(qa.add(c0 + 32 * l).cast())),
                sums: _mm256_permutevar8x32_epi32(
                    _mm256_loadu_si256(acts.sums.as_ptr().add(g0).cast()),
                    perm,
                ),
                d: _mm256_permutevar8x32_ps(_mm256_loadu_ps(acts.d.as_ptr().add(g0)), perm),
            }
        }
    }
}

/// The 2-bit codes at the four shifts of the 32 bytes at `p` (16 when `half`, the rest zero).
///
/// # Safety
///
/// `p` must be valid for reading 32 bytes (16 when `half`); the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn codes2(p: *const u8, half: bool) -> [__m256i; 4] {
    // SAFETY: the caller guarantees the bytes.
    let v = unsafe {
        if half {
            _mm256_set_m128i(_mm_setzero_si128(), _mm_loadu_si128(p.cast()))
        } else {
            _mm256_loadu_si256(p.cast())
        }
    };
    let m = _mm256_set1_epi8(3);
    [
        _mm256_and_si256(v, m),
        _mm256_and_si256(_mm256_srli_epi16::<2>(v), m),
        _mm256_and_si256(_mm256_srli_epi16::<4>(v), m),
        _mm256_and_si256(_mm256_srli_epi16::<6>(v), m),
    ]
}

/// The 2-bit codes of the 32 TQ2_0 bytes at `p` (half a block) arranged like T2's: vector `k`
/// holds in 32-bit word `j` of 128-bit lane `h` the codes at shift `2j` of bytes `16h + 4k ..
/// 16h + 4k + 4`, i.e. elements `32j + 16h + 4k ..` of group `2j + h`; so every word of every
/// vector belongs to the same group (lanes in the order `0 2 4 6 1 3 5 7`), and the products
/// with activations arranged alike add vertically. Per vector: a word broadcast, a variable shift
/// and a mask.
///
/// # Safety
///
/// `p` must be valid for reading 32 bytes; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn codes_tq2_words(p: *const u8) -> [__m256i; 4] {
    // SAFETY: the caller guarantees the bytes.
    let v = unsafe { _mm256_loadu_si256(p.cast()) };
    let m = _mm256_set1_epi8(3);
    let sh = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    [
        _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi32::<0x00>(v), sh), m),
        _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi32::<0x55>(v), sh), m),
        _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi32::<0xAA>(v), sh), m),
        _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi32::<0xFF>(v), sh), m),
    ]
}

/// `c0 · (low byte) + c1 · (high byte)` of each 16-bit lane of `v`, for the 16-bit lanes `c0 +
/// 256 c1` of `c` (`vpmaddubsw`): with one of `c0`, `c1` zero and the other at most 127, an
/// exact product of one byte.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_byte(v: __m256i, c: __m256i) -> __m256i {
    _mm256_maddubs_epi16(v, c)
}

/// The TQ1_0 block at `blk` as eight pairs of digit vectors, in natural element order: pair `v`
/// covers elements `32 v .. 32 v + 32`; its first vector holds in byte `2i + 1` the digit of
/// element `32 v + 2i`, its second the digit of element `32 v + 2i + 1` (the even bytes hold
/// junk, to be multiplied by zero).
///
/// Every 16-bit lane is `3 q` for one byte `q = b · 3^n mod 256` (the byte `b` and digit `n` of
/// its element): its high byte is the digit `(3 q) >> 8`, its low byte `3 q mod 256`, the `q` of
/// the next digit. So one [`mul_byte`] by 3 of the low bytes per 16 elements gives both the
/// digits of `qs[0..32]` at one power and the bytes for the next. For `qs[32..48]` and `qh`,
/// one [`mul_byte`] per lane and parity by the power of each 128-bit lane (of each 32-bit word
/// for `qh`) gives the bytes `q`, a second one the digits.
///
/// With `SPLIT`, pairs 5 and 6 hold instead digits 0 | 2 and 1 | 3 of `qs[32..48]` (elements
/// `160 .. 176 | 192 .. 208`, then `176 .. 192 | 208 .. 224`): one product by the powers 1 | 9
/// and two [`mul_byte`] by 3 in a chain, one [`mul_byte`] per parity fewer (see
/// [`load_window_tq1`] and [`gemv_tq1!`] for the matching operands and lane order).
///
/// # Safety
///
/// `blk` must be valid for reading bytes `0..52` of one TQ1_0 block; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn tq1_block<const SPLIT: bool>(blk: *const u8) -> [[__m256i; 2]; 8] {
    // SAFETY: bytes 0..32 (qs[0..32]), 32..48 (qs[32..48]) and 48..52 (qh) of the block.
    let (q, r, h) = unsafe {
        (
            _mm256_loadu_si256(blk.cast()),
            _mm256_broadcastsi128_si256(_mm_loadu_si128(blk.add(32).cast())),
            _mm256_broadcastd_epi32(_mm_loadu_si32(blk.add(48))),
        )
    };
    // Multipliers of the low (`e`) or high (`o`) byte of each 16-bit lane.
    let e = |c: [i16; 8], d: [i16; 8]| {
        _mm256_setr_epi16(
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        )
    };
    let o = |c: [i16; 8], d: [i16; 8]| _mm256_slli_epi16::<8>(e(c, d));
    let (e3, o3) = (_mm256_set1_epi16(3), _mm256_set1_epi16(3 << 8));
    // Digits n of qs[0..32]: elements 32n .. 32n + 32.
    let mut x = [[e3; 2]; 8];
    x[0] = [mul_byte(q, e3), mul_byte(q, o3)];
    for n in 1..5 {
        x[n] = [mul_byte(x[n - 1][0], e3), mul_byte(x[n - 1][1], e3)];
    }
    // Two 128-bit lanes of qs[32..48] (or qh) at the powers `lo`, `hi`: the bytes, then the
    // digits.
    let digits = |v: __m256i, lo: [i16; 8], hi: [i16; 8]| {
        [
            mul_byte(mul_byte(v, e(lo, hi)), e3),
            mul_byte(mul_byte(v, o(lo, hi)), e3),
        ]
    };
    // Elements 160 + 16n + m: digit n of qs[32 + m].
    if SPLIT {
        // Digits 0 | 2, then 1 | 3.
        let p = [
            mul_byte(r, e([1; 8], [9; 8])),
            mul_byte(r, o([1; 8], [9; 8])),
        ];
        x[5] = [mul_byte(p[0], e3), mul_byte(p[1], e3)];
        x[6] = [mul_byte(x[5][0], e3), mul_byte(x[5][1], e3)];
    } else {
        x[5] = digits(r, [1; 8], [3; 8]);
        x[6] = digits(r, [9; 8], [27; 8]);
    }
    // Elements 224 .. 240 (digit 4 of qs[32..48]), then 240 + 4n + j: digit n of qh[j], from
    // qh repeated in the four words of the high lane.
    x[7] = digits(
        _mm256_blend_epi32::<0xF0>(r, h),
        [81; 8],
        [1, 1, 3, 3, 9, 9, 27, 27],
    );
    x
}

/// The TQ1_0 operands of window `win` (columns `128 win ..`) for [`tq1_isum`]: the activations
/// of each vector of [`tq1_block`] (per 32 columns, the even elements moved to the odd bytes,
/// and the odd elements, each with zero even bytes), and `sums`, `d` in the TQ2_0 lane order.
#[derive(Clone, Copy)]
pub(crate) struct Tq1Window {
    pub(crate) a: [[__m256i; 2]; 4],
    pub(crate) sums: __m256i,
    pub(crate) d: __m256,
}

/// The word permutation that swaps i32 lanes 2 and 5 (its own inverse): with `SPLIT`, the
/// second window of a block yields its groups in the lane order `0 2 3 6 1 4 5 7` (pairs 5 and 6
/// of [`tq1_block`] hold groups 10 | 12 and 11 | 13), which this puts back in the TQ2_0 order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn tq1_swap() -> __m256i {
    _mm256_setr_epi32(0, 1, 5, 3, 4, 2, 6, 7)
}

/// The operands of TQ1_0 window `win` (see [`Tq1Window`]) for [`tq1_block`] with `SPLIT`
/// alike: then, in the second window of a block, the 128-bit halves of its columns `32..96` are
/// rearranged like the digits (`32..48 | 64..80`, then `48..64 | 80..96`) and `sums` swapped by
/// [`tq1_swap`].
///
/// # Safety
///
/// `acts` must hold the columns of the window (checked by the caller's shape check); the CPU
/// must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn load_window_tq1<const SPLIT: bool>(
    acts: &ActsQ8<'_>,
    win: usize,
) -> Tq1Window {
    // SAFETY: the caller guarantees the window's columns lie inside `acts`.
    let mut wv = unsafe { load_window::<TQ2_0>(acts, win, false) };
    let split = SPLIT && win % 2 == 1;
    if split {
        let (a1, a2) = (wv.a[1], wv.a[2]);
        wv.a[1] = _mm256_permute2x128_si256::<0x20>(a1, a2);
        wv.a[2] = _mm256_permute2x128_si256::<0x31>(a1, a2);
    }
    Tq1Window {
        a: tq1_acts(&wv.a),
        sums: if split {
            _mm256_permutevar8x32_epi32(wv.sums, tq1_swap())
        } else {
            wv.sums
        },
        d: wv.d,
    }
}

/// The activations of four natural 32-column vectors `a` arranged for the digit vectors of
/// [`tq1_block`]: even elements shifted into the odd bytes, odd elements kept there, zeros in
/// the even bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tq1_acts(a: &[__m256i; 4]) -> [[__m256i; 2]; 4] {
    let hi = _mm256_set1_epi16(0xFF00u16 as i16);
    core::array::from_fn(|k| [_mm256_slli_epi16::<8>(a[k]), _mm256_and_si256(a[k], hi)])
}

/// The exact `isum` of the eight groups of one TQ1_0 window (four pairs of [`tq1_block`]) in
/// the TQ2_0 lane order: per pair, two `vpmaddubsw` of the digit vectors by the arranged
/// activations (one product per 16-bit lane) and an add give the pair sums of `trit·a`,
/// reduced by [`group_sums`]; minus `sums`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tq1_isum(x: &[[__m256i; 2]], win: &Tq1Window) -> __m256i {
    let p: [__m256i; 4] = core::array::from_fn(|l| {
        _mm256_add_epi16(
            _mm256_maddubs_epi16(x[l][0], win.a[l][0]),
            _mm256_maddubs_epi16(x[l][1], win.a[l][1]),
        )
    });
    _mm256_sub_epi32(group_sums(p), win.sums)
}

/// The exact `isum` of the window's eight groups of one row from its codes `c`, arranged so
/// that every 32-bit word of the four vectors holds codes of one group (T2's windows,
/// [`codes_tq2_words`]) and the activations alike: each group's products sit in its own two i16
/// lanes of every `vpmaddubsw` result, so three vertical adds and one `vpmaddwd` give the sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn window_isum(c: [__m256i; 4], win: &Window) -> __m256i {
    let p: [__m256i; 4] = core::array::from_fn(|l| _mm256_maddubs_epi16(c[l], win.a[l]));
    let q = _mm256_add_epi16(_mm256_add_epi16(p[0], p[1]), _mm256_add_epi16(p[2], p[3]));
    _mm256_sub_epi32(_mm256_madd_epi16(q, _mm256_set1_epi16(1)), win.sums)
}

/// The operands of window `win` of `acts` (`cols` columns; only T2 rows end with half a
/// window) for [`window_isum`] with the codes of type `K` ([`codes2`] for T2,
/// [`codes_tq2_words`] for TQ2_0, whose activations are transposed to match: word `j` of lane
/// `h` of `a[k]` is word `k` of lane `h` of the natural `a[j]`, elements `32j + 16h + 4k ..`).
///
/// # Safety
///
/// `win` must be below the window count of `cols`, the columns of `acts` (checked by the
/// caller's shape check); the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_window<const K: u8>(acts: &ActsQ8<'_>, win: usize, cols: usize) -> Window {
    // SAFETY: the caller guarantees the window's columns (the first 64 when it is a half).
    let mut wv = unsafe { load_window::<K>(acts, win, (win + 1) * WIN > cols) };
    if K == TQ2_0 {
        wv.a = transpose4(wv.a);
    }
    wv
}

/// The running sums `acc` of type `K` in natural group order: TQ2_0's lanes hold the groups
/// `0 2 4 6 1 3 5 7`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn natural_order<const K: u8>(acc: __m256) -> __m256 {
    if K != TQ2_0 {
        acc
    } else {
        _mm256_permutevar8x32_ps(acc, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// The shared gemv driver (see the module docs). The window operands are arranged once per
/// panel of [`TQ1_PANEL`] windows (once per call when the row fits in one) into a stack buffer
/// and read from there in every row, which leaves the registers to the rows' running sums; a
/// TQ2_0 block (two windows) is taken whole per row, its scale converted once.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv<const K: u8>(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    use core::mem::MaybeUninit;
    let (bl, bb, name) = match K {
        T2 => (T2_BLOCK, T2_BYTES, "T2"),
        TQ2W => (QK_K, TQ2_0_BYTES, "TQ2W"),
        _ => (QK_K, TQ2_0_BYTES, "TQ2_0"),
    };
    let row_bytes = check_gemv_ternary(w, acts, out.len(), bl, bb, name);
    let rows = out.len();
    if rows == 0 || row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    let cols = acts.qs.len();
    let nwin = cols.div_ceil(WIN);
    let last = rows - 1;
    let mut buf = [const { MaybeUninit::<Window>::uninit() }; TQ1_PANEL];
    let load = |buf: &mut [MaybeUninit<Window>], w0: usize, wn: usize| {
        for (j, b) in buf[..wn].iter_mut().enumerate() {
            let win = w0 + j;
            // Only T2 rows can end with half a window (an odd number of 64-column blocks).
            // SAFETY: `win < nwin`: the window's columns are inside `acts`.
            b.write(unsafe { gemv_window::<K>(acts, win, cols) });
        }
    };
    let single = nwin <= TQ1_PANEL;
    if single {
        load(&mut buf, 0, nwin);
    }
    let ahead = ROWS * PREFETCH_PASSES.max(PREFETCH_BYTES.div_ceil(ROWS * row_bytes));
    // T2 prefetches the lines of the `ahead` pass in address order, `pf_per` per window (see
    // `PREFETCH_BYTES`), TQ2W `pf_per_block` per block; TQ2_0 each row's block, in step with the
    // rows it reads.
    let pf_lines = (ROWS * row_bytes).div_ceil(64);
    let pf_per = pf_lines.div_ceil(nwin);
    let pf_per_block = pf_lines.div_ceil(nwin.div_ceil(2));
    let mut r = 0;
    while r < rows {
        let p: [*const u8; ROWS] = super::row_ptrs(w, r, last, row_bytes);
        // The rows `ahead`, past the last row at the end (see `prefetch_ptrs`).
        let pf: [*const u8; ROWS] = super::prefetch_ptrs(w, r + ahead, row_bytes);
        let pfb = pf[0];
        let mut acc = [_mm256_setzero_ps(); ROWS];
        for w0 in (0..nwin).step_by(TQ1_PANEL) {
            let wn = (nwin - w0).min(TQ1_PANEL);
            if !single {
                load(&mut buf, w0, wn);
            }
            let wins = {
                let b = buf.as_ptr().cast::<Window>();
                // SAFETY: entries `..wn` were written above (or before the row loop when
                // `single`).
                unsafe { core::slice::from_raw_parts(b, wn) }
            };
            if K == T2 {
                for (j, wv) in wins.iter().enumerate() {
                    let win = w0 + j;
                    let half = (win + 1) * WIN > cols;
                    super::prefetch_step(pfb, win, pf_per, pf_lines);
                    for i in 0..ROWS {
                        // The window operands, read in every row (see `launder`).
                        let wv = &launder(core::slice::from_ref(wv))[0];
                        // SAFETY: window `win` of a row is bytes `32 win .. 32 win + 32` (16
                        // when `half`), inside the row.
                        let c = unsafe { codes2(p[i].add(32 * win), half) };
                        let isum = window_isum(c, wv);
                        let t = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), wv.d);
                        acc[i] = _mm256_add_ps(acc[i], t);
                    }
                }
            } else {
                // Whole blocks: two windows each (`TQ1_PANEL` and `nwin` are even).
                for (j, pair) in wins.chunks_exact(2).enumerate() {
                    let off = (w0 / 2 + j) * bb;
                    if K == TQ2W {
                        super::prefetch_step(pfb, w0 / 2 + j, pf_per_block, pf_lines);
                    } else {
                        for &q in &pf {
                            _mm_prefetch::<_MM_HINT_T1>(q.wrapping_add(off).cast());
                            _mm_prefetch::<_MM_HINT_T1>(q.wrapping_add(off + 64).cast());
                        }
                    }
                    for i in 0..ROWS {
                        let pair = launder(pair);
                        // SAFETY: the block (with its f16 scale in its last two bytes) is
                        // inside the row.
                        let (q, dw) = unsafe {
                            let q = p[i].add(off);
                            (q, tq_scale(q.add(bb - 2)))
                        };
                        for (h, wv) in pair.iter().enumerate() {
                            // SAFETY: half `h` of the block is bytes `32 h .. 32 h + 32`.
                            let c = unsafe {
                                if K == TQ2W {
                                    codes2(q.add(32 * h), false)
                                } else {
                                    codes_tq2_words(q.add(32 * h))
                                }
                            };
                            let isum = window_isum(c, wv);
                            let t =
                                _mm256_mul_ps(_mm256_mul_ps(dw, wv.d), _mm256_cvtepi32_ps(isum));
                            acc[i] = _mm256_add_ps(acc[i], t);
                        }
                    }
                }
            }
        }
        let n = (rows - r).min(ROWS);
        for i in 0..n {
            out[r + i] = reduce8(natural_order::<K>(acc[i]));
        }
        r += ROWS;
    }
}

/// The f16 at `p`, as f32 broadcast to eight lanes.
///
/// # Safety
///
/// `p` must be valid for reading 2 bytes; the CPU must have AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn tq_scale(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees 2 readable bytes.
    let bits = unsafe { p.cast::<u16>().read_unaligned() };
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le(bits) as i32));
    _mm256_broadcastss_ps(v)
}

/// AVX2 [`crate::scalar::ternary::gemv_tq2w`], bit-exact: T2's windows with TQ2_0's block
/// scales.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C (the features of the `avx2` tier).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_tq2w(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv::<TQ2W>(w, acts, out) }
}

/// AVX2 [`crate::scalar::ternary::gemv_t2`] (unscaled T2 product), bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C (the features of the `avx2` tier).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_t2(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv::<T2>(w, acts, out) }
}

/// Windows per column panel of the TQ1_0 gemvs (8192 columns): their arranged operands are
/// kept in a stack buffer, made once per call when the row fits in one panel, once per pass of
/// rows otherwise.
pub(crate) const TQ1_PANEL: usize = 64;

/// `s`, at an address the optimizer knows nothing about each time this runs (an empty `asm!`
/// with side effects, which is not hoisted out of loops).
#[inline(always)]
pub(crate) fn launder<T>(s: &[T]) -> &[T] {
    let mut a = s.as_ptr().addr();
    // SAFETY: the assembly is empty: it names the address's register and changes nothing.
    unsafe {
        core::arch::asm!("/* {a} */", a = inout(reg) a, options(nomem, nostack, preserves_flags));
    }
    // SAFETY: `a` is still the address of `s`'s `s.len()` values (with its provenance), borrowed
    // as long as `s`.
    unsafe { core::slice::from_raw_parts(s.as_ptr().with_addr(a), s.len()) }
}

/// Defines a TQ1_0 gemv driver `$name` for the target features `$features`, with `$isum` (the
/// exact `isum` of a window, in the TQ2_0 lane order, from its four pairs of [`tq1_block`] and
/// its [`Tq1Window`]) and `$split` (the `SPLIT` of [`tq1_block`] and [`load_window_tq1`]; when
/// true, the second window's `isum` is put back in order by [`tq1_swap`]): as [`gemv`] for TQ2_0 (four rows per pass, the same lane order and float
/// steps), but a whole block (two windows) per row at a time, so that its digits are decoded
/// once and its scale converted once, with the window operands made once per panel of
/// [`TQ1_PANEL`] windows (once per call when the row fits in one).
macro_rules! gemv_tq1 {
    ($(#[$doc:meta])* $name:ident, $features:literal, $isum:path, $split:literal) => {
        $(#[$doc])*
        ///
        /// # Safety
        ///
        /// The CPU must have the features named in its `target_feature` attribute.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            w: &[u8],
            acts: &$crate::acts::ActsQ8<'_>,
            out: &mut [f32],
        ) {
            use core::arch::x86_64::*;
            use core::mem::MaybeUninit;
            use $crate::scalar::ternary::{check_gemv_ternary, QK_K, TQ1_0_BYTES};
            use $crate::x86::ternary::{
                launder, load_window_tq1, reduce8, tq1_block, tq1_swap, tq_scale, Tq1Window,
                PREFETCH_PASSES, ROWS, TQ1_PANEL, WIN,
            };
            let bb = TQ1_0_BYTES;
            let row_bytes = check_gemv_ternary(w, acts, out.len(), QK_K, bb, "TQ1_0");
            let rows = out.len();
            if rows == 0 || row_bytes == 0 {
                out.fill(0.0);
                return;
            }
            let nwin = acts.qs.len() / WIN;
            let last = rows - 1;
            let mut buf = [const { MaybeUninit::<Tq1Window>::uninit() }; TQ1_PANEL];
            let single = nwin <= TQ1_PANEL;
            if single {
                for (win, b) in buf[..nwin].iter_mut().enumerate() {
                    // SAFETY: `win < nwin`.
                    b.write(unsafe { load_window_tq1::<$split>(acts, win) });
                }
            }
            let mut r = 0;
            while r < rows {
                let p: [*const u8; ROWS] = super::row_ptrs(w, r, last, row_bytes);
                // The rows PREFETCH_PASSES passes ahead, clamped to the last row.
                let pf: [*const u8; ROWS] =
                    super::row_ptrs(w, r + ROWS * PREFETCH_PASSES, last, row_bytes);
                let mut acc = [_mm256_setzero_ps(); ROWS];
                for w0 in (0..nwin).step_by(TQ1_PANEL) {
                    let wn = (nwin - w0).min(TQ1_PANEL);
                    if !single {
                        for (j, b) in buf[..wn].iter_mut().enumerate() {
                            // SAFETY: `w0 + j < nwin`.
                            b.write(unsafe { load_window_tq1::<$split>(acts, w0 + j) });
                        }
                    }
                    let wins = {
                        let b = buf.as_ptr().cast::<Tq1Window>();
                        // SAFETY: entries `..wn` were written above (or before the row loop when
                        // `single`).
                        unsafe { core::slice::from_raw_parts(b, wn) }
                    };
                    // Whole blocks: two windows each (`TQ1_PANEL` and `nwin` are even).
                    for (j, pair) in wins.chunks_exact(2).enumerate() {
                        let off = (w0 / 2 + j) * bb;
                        for &q in &pf {
                            // The line of the block's first byte: blocks are shorter than a
                            // 64-byte line, so every line of the rows holds a block's start.
                            // SAFETY: `off` is inside the row.
                            _mm_prefetch::<_MM_HINT_T0>(unsafe { q.add(off) }.cast());
                        }
                        for i in 0..ROWS {
                            // The window operands, read in every row (hoisted out of the loop,
                            // they would be copied to the stack for want of registers).
                            let pair = launder(pair);
                            // SAFETY: the block (with its f16 scale in bytes 52..54) is inside
                            // the row.
                            let (x, dw) = unsafe {
                                let q = p[i].add(off);
                                (tq1_block::<$split>(q), tq_scale(q.add(bb - 2)))
                            };
                            for (h, wv) in pair.iter().enumerate() {
                                let mut isum = $isum(&x[4 * h..4 * h + 4], wv);
                                if $split && h == 1 {
                                    isum = _mm256_permutevar8x32_epi32(isum, tq1_swap());
                                }
                                let t = _mm256_mul_ps(
                                    _mm256_mul_ps(dw, wv.d),
                                    _mm256_cvtepi32_ps(isum),
                                );
                                acc[i] = _mm256_add_ps(acc[i], t);
                            }
                        }
                    }
                }
                let n = (rows - r).min(ROWS);
                for i in 0..n {
                    let a =
                        _mm256_permutevar8x32_ps(acc[i], _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                    out[r + i] = reduce8(a);
                }
                r += ROWS;
            }
        }
    };
}
pub(crate) use gemv_tq1;

gemv_tq1! {
    /// The AVX2 TQ1_0 gemv driver (see [`gemv_tq1!`]).
    gemv_tq1_avx2, "avx2,fma,f16c", tq1_isum, false
}

/// AVX2 [`crate::scalar::ternary::gemv_tq1_0`], bit-exact: each block is decoded once per row
/// into digit vectors in natural element order by byte products (`vpmaddubsw`, `tq1_block`),
/// whose halves are the two windows; their products with the activations are exact 16-bit sums
/// reduced in the TQ2_0 lane order (`tq1_isum`).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_tq1_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv_tq1_avx2(w, acts, out) }
}

/// AVX2 [`crate::scalar::ternary::gemv_tq2_0`], bit-exact.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_tq2_0(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv::<TQ2_0>(w, acts, out) }
}

// ---------------------------------------------------------------------------------------------
// Table-lookup variant

/// Rows per row block of the table-lookup kernel (its running sums live on the stack).
const LUT_ROW_BLOCK: usize = 128;
/// Rows per pass of the table-lookup kernel (one byte per row in each 128-bit lane).
const LUT_ROWS: usize = 16;

/// The lookup tables of one window: for the nibble `h` (0 low, 1 high) of byte `4k + q` of a
/// block, which holds elements `i = q + 8h` and `i + 4` of group `k` (`t[8k + 2q + h]`), 16
/// entries `((n & 3) - 1) a_i + ((n >> 2) - 1) a_{i+4}` split into low bytes (`[0]`) and high
/// bytes (`[1]`); the low 128-bit lane serves the window's first block, the high lane its second.
///
/// # Safety
///
/// The window's columns (64 when `half`) must lie inside `acts`; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lut_tables(acts: &ActsQ8<'_>, win: usize, half: bool, t: &mut [[__m256i; 2]; 32]) {
    let wlo = _mm256_setr_epi16(-1, 0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2);
    let whi = _mm256_setr_epi16(-1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2);
    let byte = _mm256_set1_epi16(0xFF);
    let c0 = win * WIN;
    for k in 0..4 {
        for j in 0..8 {
            let (q, h) = (j / 2, j % 2);
            let entries = |blk: usize| {
                if half && blk == 1 {
                    return _mm256_setzero_si256();
                }
                let e = c0 + 64 * blk + 16 * k + q + 8 * h;
                let (a0, a1) = (acts.qs[e] as i16, acts.qs[e + 4] as i16);
                _mm256_add_epi16(
                    _mm256_mullo_epi16(_mm256_set1_epi16(a0), wlo),
                    _mm256_mullo_epi16(_mm256_set1_epi16(a1), whi),
                )
            };
            let (e0, e1) = (entries(0), entries(1));
            let lo = _mm256_packus_epi16(_mm256_and_si256(e0, byte), _mm256_and_si256(e1, byte));
            let hi = _mm256_packs_epi16(_mm256_srai_epi16::<8>(e0), _mm256_srai_epi16::<8>(e1));
            t[8 * k + j] = [
                _mm256_permute4x64_epi64::<0xD8>(lo),
                _mm256_permute4x64_epi64::<0xD8>(hi),
            ];
        }
    }
}

/// Transposes 16 rows of 32 bytes, per 128-bit lane: byte `i` of lane `L` of result `j` is
/// byte `j` of lane `L` of `x[i]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose16(x: [__m256i; 16]) -> [__m256i; 16] {
    let mut a = [_mm256_setzero_si256(); 16];
    for i in 0..8 {
        a[i] = _mm256_unpacklo_epi8(x[2 * i], x[2 * i + 1]);
        a[i + 8] = _mm256_unpackhi_epi8(x[2 * i], x[2 * i + 1]);
    }
    // a[i] (i < 8): 16-bit element k = bytes k of rows 2i, 2i + 1 (k < 8); a[i + 8]: k + 8.
    let mut b = [_mm256_setzero_si256(); 16];
    for i in 0..4 {
        b[i] = _mm256_unpacklo_epi16(a[2 * i], a[2 * i + 1]);
        b[i + 4] = _mm256_unpackhi_epi16(a[2 * i], a[2 * i + 1]);
        b[i + 8] = _mm256_unpacklo_epi16(a[8 + 2 * i], a[9 + 2 * i]);
        b[i + 12] = _mm256_unpackhi_epi16(a[8 + 2 * i], a[9 + 2 * i]);
    }
    // b[4K + q]: 32-bit element e = bytes 4K + e of rows 4q .. 4q + 4.
    let mut v = [_mm256_setzero_si256(); 16];
    for kk in 0..4 {
        let q = &b[4 * kk..4 * kk + 4];
        let lo01 = _mm256_unpacklo_epi32(q[0], q[1]);
        let hi01 = _mm256_unpackhi_epi32(q[0], q[1]);
        let lo23 = _mm256_unpacklo_epi32(q[2], q[3]);
        let hi23 = _mm256_unpackhi_epi32(q[2], q[3]);
        v[4 * kk] = _mm256_unpacklo_epi64(lo01, lo23);
        v[4 * kk + 1] = _mm256_unpackhi_epi64(lo01, lo23);
        v[4 * kk + 2] = _mm256_unpacklo_epi64(hi01, hi23);
        v[4 * kk + 3] = _mm256_unpackhi_epi64(hi01, hi23);
    }
    v
}

/// AVX2 table-lookup [`crate::scalar::ternary::gemv_t2`] (unscaled T2 product), bit-exact.
///
/// Rows in lanes instead of columns: per pass, 16 rows of a 128-column window (two T2 blocks)
/// are transposed so that one byte vector holds the same weight byte of 16 rows (first block in
/// the low lane, second in the high lane). Each nibble of a T2 byte holds two weights `i`,
/// `i + 4` of one group: a 4-bit index into a 16-entry table of `(w_i a_i + w_{i+4} a_{i+4})`,
/// built once per window and row block
/// and shared by its 128 rows; two `vpshufb` fetch the low and high bytes of the i16 entries
/// of 16 rows at once, and i16 accumulators collect each group's exact `isum` per row (at most
/// `8 * 2 * 2 * 127`) with no horizontal reduction and no need for `sums`. Each row's eight
/// running sums (on the stack) follow the specification's operations and order.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_t2_lut(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    let row_bytes = check_gemv_ternary(w, acts, out.len(), T2_BLOCK, T2_BYTES, "T2");
    let rows = out.len();
    if rows == 0 || row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    let cols = acts.qs.len();
    let nwin = cols.div_ceil(WIN);
    let base = w.as_ptr();
    let m0f = _mm256_set1_epi8(0x0F);
    let mut tables = [[_mm256_setzero_si256(); 2]; 32];
    let mut acc = [[0.0f32; LUT_ROW_BLOCK]; 8];
    for rb in (0..rows).step_by(LUT_ROW_BLOCK) {
        let rb_rows = (rows - rb).min(LUT_ROW_BLOCK);
        for a in acc.iter_mut() {
            a.fill(0.0);
        }
        for win in 0..nwin {
            let half = (win + 1) * WIN > cols;
            // SAFETY: the window's columns are inside `acts` (`win < nwin`, `half` otherwise).
            unsafe { lut_tables(acts, win, half, &mut tables) };
            for pass in (0..rb_rows).step_by(LUT_ROWS) {
                // Row i of the pass (clamped to the last row: its extra results are dropped).
                let x: [__m256i; LUT_ROWS] = core::array::from_fn(|i| {
                    let r = (rb + pass + i).min(rows - 1);
                    // Prefetch the row two 64-byte lines (four windows) ahead.
                    let pf = r * row_bytes + 32 * win + 128;
                    if win % 2 == 0 && pf < (r + 1) * row_bytes {
                        // SAFETY: `pf` is inside row `r`, inside `w`.
                        _mm_prefetch::<_MM_HINT_T0>(unsafe { base.add(pf) }.cast());
                    }
                    // SAFETY: window `win` of row `r` is bytes `32 win .. 32 win + 32` of the
                    // row (16 when `half`), inside `w` by the shape check.
                    unsafe {
                        let p = base.add(r * row_bytes + 32 * win);
                        if half {
                            _mm256_set_m128i(_mm_setzero_si128(), _mm_loadu_si128(p.cast()))
                        } else {
                            _mm256_loadu_si256(p.cast())
                        }
                    }
                });
                let v = transpose16(x);
                // Group sums, i16: s[k][0] rows 0..8, s[k][1] rows 8..16 (per lane: block).
                let mut s = [[_mm256_setzero_si256(); 2]; 4];
                for (p, &vp) in v.iter().enumerate() {
                    // Byte 4k + q: group k, nibbles h = 0, 1 (tables 8k + 2q + h).
                    let (k, q) = (p / 4, p % 4);
                    let nib = [
                        _mm256_and_si256(vp, m0f),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(vp), m0f),
                    ];
                    for (h, &n) in nib.iter().enumerate() {
                        let t = &tables[8 * k + 2 * q + h];
                        let lo = _mm256_shuffle_epi8(t[0], n);
                        let hi = _mm256_shuffle_epi8(t[1], n);
                        s[k][0] = _mm256_add_epi16(s[k][0], _mm256_unpacklo_epi8(lo, hi));
                        s[k][1] = _mm256_add_epi16(s[k][1], _mm256_unpackhi_epi8(lo, hi));
                    }
                }
                let lanes = if half { 1 } else { 2 };
                let n = (rb_rows - pass).min(LUT_ROWS);
                for (k, sk) in s.iter().enumerate() {
                    for lane in 0..lanes {
                        let slot = 4 * lane + k;
                        let d = _mm256_set1_ps(acts.d[8 * win + slot]);
                        for (h, &sh) in sk.iter().enumerate() {
                            let half_lane = if lane == 0 {
                                _mm256_castsi256_si128(sh)
                            } else {
                                _mm256_extracti128_si256::<1>(sh)
                            };
                            let isum = _mm256_cvtepi16_epi32(half_lane);
                            let t = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), d);
                            let r0 = pass + 8 * h;
                            let valid = n.saturating_sub(8 * h).min(8);
                            let dst = &mut acc[slot][r0..r0 + valid];
                            if valid == 8 {
                                // SAFETY: `dst` holds eight f32.
                                unsafe {
                                    let a = _mm256_loadu_ps(dst.as_ptr());
                                    _mm256_storeu_ps(dst.as_mut_ptr(), _mm256_add_ps(a, t));
                                }
                            } else {
                                let mut tv = [0.0f32; 8];
                                // SAFETY: `tv` holds eight f32.
                                unsafe { _mm256_storeu_ps(tv.as_mut_ptr(), t) };
                                for (a, &tvi) in dst.iter_mut().zip(&tv) {
                                    *a += tvi;
                                }
                            }
                        }
                    }
                }
            }
        }
        for (i, o) in out[rb..rb + rb_rows].iter_mut().enumerate() {
            let a: [f32; 8] = core::array::from_fn(|s| acc[s][i]);
            *o = crate::scalar::ternary::reduce8(&a);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small-batch product (gemm): several tokens per weight unpacked

/// Tokens per block of the AVX-VNNI gemm (their window operands live in a stack buffer).
pub(crate) const GEMM_TOKENS: usize = 8;
/// Tokens per inner pass of the gemms (running sums in registers); divides [`GEMM_TOKENS`] and
/// `AVX2_GEMM_TOKENS`.
pub(crate) const GEMM_SUB: usize = 4;
/// Rows per block of the gemm (their running sums live in a stack buffer).
pub(crate) const GEMM_ROWS: usize = 32;
/// Windows per column panel of the gemm (1024 columns).
pub(crate) const GEMM_PANEL: usize = 8;
/// Tokens per block of this AVX2 gemm: a whole prefill chunk, so that each weight is read
/// from memory once per chunk.
const AVX2_GEMM_TOKENS: usize = 16;
/// How many rows ahead the AVX2 gemm prefetches its weights.
const GEMM_PREFETCH_ROWS: usize = 4;

/// The TQ2_0 codes of the 32 bytes at `p` (one half of a block, 128 elements) arranged like the
/// T2 window's activations: i32 lane `n` of vector `q` holds elements `16n + 4q .. 16n + 4q + 4`
/// (group `n`), which are byte word `4 (n % 2) + q` of the half at shift `2 (n / 2)`.
///
/// # Safety
///
/// `p` must be valid for reading 32 bytes; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn codes_tq2_grouped(p: *const u8) -> [__m256i; 4] {
    // SAFETY: the caller guarantees the bytes.
    let v = unsafe { _mm256_loadu_si256(p.cast()) };
    let m = _mm256_set1_epi8(3);
    let shifts = _mm256_setr_epi32(0, 0, 2, 2, 4, 4, 6, 6);
    core::array::from_fn(|q| {
        let q = q as i32;
        let idx = _mm256_setr_epi32(q, 4 + q, q, 4 + q, q, 4 + q, q, 4 + q);
        _mm256_and_si256(
            _mm256_srlv_epi32(_mm256_permutevar8x32_epi32(v, idx), shifts),
            m,
        )
    })
}

/// The shared gemm driver for T2 and TQ2_0 (see [`avx2_gemm_t2`]).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm<const K: u8>(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    use crate::scalar::ternary::{check_gemm, token_acts};
    let (bl, bb, name) = match K {
        T2 => (T2_BLOCK, T2_BYTES, "T2"),
        TQ2W => (QK_K, TQ2_0_BYTES, "TQ2W"),
        _ => (QK_K, TQ2_0_BYTES, "TQ2_0"),
    };
    let (cols, rows) = check_gemm(acts, nb, out.len(), name);
    for t in 0..nb {
        check_gemv_ternary(w, &token_acts(acts, cols, t), rows, bl, bb, name);
    }
    if rows == 0 || cols == 0 {
        out.fill(0.0);
        return;
    }
    let row_bytes = cols / bl * bb;
    let nwin = cols.div_ceil(WIN);
    let base = w.as_ptr();
    let zero = Window {
        a: [_mm256_setzero_si256(); 4],
        sums: _mm256_setzero_si256(),
        d: _mm256_setzero_ps(),
    };
    let mut buf = [[zero; GEMM_PANEL]; AVX2_GEMM_TOKENS];
    let mut acc = [[_mm256_setzero_ps(); AVX2_GEMM_TOKENS]; GEMM_ROWS];
    let mut cbuf = [[_mm256_setzero_si256(); 4]; GEMM_PANEL];
    let mut dbuf = [_mm256_setzero_ps(); GEMM_PANEL];
    for t0 in (0..nb).step_by(AVX2_GEMM_TOKENS) {
        let tn = (nb - t0).min(AVX2_GEMM_TOKENS);
        for r0 in (0..rows).step_by(GEMM_ROWS) {
            let rn = (rows - r0).min(GEMM_ROWS);
            for a in acc[..rn].iter_mut() {
                a[..tn].fill(_mm256_setzero_ps());
            }
            for w0 in (0..nwin).step_by(GEMM_PANEL) {
                let wn = (nwin - w0).min(GEMM_PANEL);
                for (t, bt) in buf[..tn].iter_mut().enumerate() {
                    let at = token_acts(acts, cols, t0 + t);
                    for (j, b) in bt[..wn].iter_mut().enumerate() {
                        let win = w0 + j;
                        // SAFETY: the window's columns are inside the token's activations
                        // (`win < nwin`; only T2 rows end with half a window).
                        *b = unsafe { gemv_window::<K>(&at, win, cols) };
                    }
                }
                for (r, acc_r) in acc[..rn].iter_mut().enumerate() {
                    // SAFETY: `r0 + r < rows`, and the shape check proved `w` holds `rows`
                    // rows of `row_bytes`.
                    let p = unsafe { base.add((r0 + r) * row_bytes) };
                    // The rows of a block are read a panel at a time, a stride the hardware
                    // does not follow: prefetch the segment read `GEMM_PREFETCH_ROWS` rows on.
                    let (pr, pw) = {
                        let n = r + GEMM_PREFETCH_ROWS;
                        if n < rn {
                            (r0 + n, w0)
                        } else if w0 + GEMM_PANEL < nwin {
                            (r0 + n - rn, w0 + GEMM_PANEL)
                        } else {
                            ((r0 + n).min(rows - 1), 0)
                        }
                    };
                    let (lo, hi) = if K == T2 {
                        (32 * pw, (32 * (pw + GEMM_PANEL)).min(row_bytes))
                    } else {
                        (pw / 2 * bb, ((pw + GEMM_PANEL) / 2 * bb).min(row_bytes))
                    };
                    for off in (lo..hi).step_by(64).chain(core::iter::once(hi - 1)) {
                        // SAFETY: `pr < rows` and `off < row_bytes`: inside `w`.
                        _mm_prefetch::<_MM_HINT_T0>(
                            unsafe { base.add(pr * row_bytes + off) }.cast(),
                        );
                    }
                    // The panel's codes (and TQ2_0 scales) of this row, unpacked once for all
                    // the tokens of the block and read back from the stack in each pass.
                    for j in 0..wn {
                        let win = w0 + j;
                        // SAFETY: window `win` of the row is inside it: T2 bytes `32 win ..`
                        // (16 when the row ends with half a window), TQ2_0 half `win % 2` of
                        // block `win / 2` with its scale in the block's last two bytes.
                        unsafe {
                            if K == T2 {
                                cbuf[j] = codes2(p.add(32 * win), (win + 1) * WIN > cols);
                            } else {
                                let q = p.add((win / 2) * bb);
                                cbuf[j] = if K == TQ2W {
                                    codes2(q.add(32 * (win % 2)), false)
                                } else {
                                    codes_tq2_words(q.add(32 * (win % 2)))
                                };
                                dbuf[j] = tq_scale(q.add(bb - 2));
                            }
                        }
                    }
                    // Four tokens at a time, their running sums in registers (a short last group
                    // computes stale buffer entries whose sums are never written out).
                    for s0 in (0..tn).step_by(GEMM_SUB) {
                        let mut a: [__m256; GEMM_SUB] = core::array::from_fn(|u| acc_r[s0 + u]);
                        // `j` indexes the window in every token's row of `buf`.
                        #[allow(clippy::needless_range_loop)]
                        for j in 0..wn {
                            let c = launder(&cbuf[j..j + 1])[0];
                            for (u, au) in a.iter_mut().enumerate() {
                                let wv = &buf[s0 + u][j];
                                // Each group's products in its own lanes.
                                let isum = window_isum(c, wv);
                                let t = if K == T2 {
                                    _mm256_mul_ps(_mm256_cvtepi32_ps(isum), wv.d)
                                } else {
                                    _mm256_mul_ps(
                                        _mm256_mul_ps(dbuf[j], wv.d),
                                        _mm256_cvtepi32_ps(isum),
                                    )
                                };
                                *au = _mm256_add_ps(*au, t);
                            }
                        }
                        acc_r[s0..s0 + GEMM_SUB].copy_from_slice(&a);
                    }
                }
            }
            for (r, acc_r) in acc[..rn].iter().enumerate() {
                for (t, &a) in acc_r[..tn].iter().enumerate() {
                    out[(t0 + t) * rows + r0 + r] = reduce8(natural_order::<K>(a));
                }
            }
        }
    }
}

/// AVX2 [`crate::scalar::ternary::gemm_t2`] (unscaled T2 product of several tokens), bit-exact
/// with one [`avx2_gemv_t2`] per token.
///
/// Tokens are taken sixteen at a time (a prefill chunk, so each weight is read from memory once
/// per chunk) and rows 32 at a time; per column panel of eight windows the activations of those
/// tokens are arranged once (as in the gemv) into a stack buffer; each row's windows of the
/// panel are unpacked once into a third and multiplied with every token of the block, four
/// tokens per pass with their running sums in registers (kept in a second stack buffer until the
/// row block is done). The weights are prefetched four rows ahead, as the rows of a block are
/// read a panel at a time, a stride the hardware prefetchers do not follow.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemm_t2(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm::<T2>(w, acts, nb, out) }
}

/// AVX2 [`crate::scalar::ternary::gemm_tq2_0`], bit-exact with one [`avx2_gemv_tq2_0`] per
/// token. As [`avx2_gemm_t2`]; each half block's codes are spread as the gemv's
/// (`codes_tq2_words`: a word broadcast and a variable shift per vector) and the activations
/// arranged alike, so the group sums need vertical adds only.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemm_tq2_0(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm::<TQ2_0>(w, acts, nb, out) }
}

/// AVX2 [`crate::scalar::ternary::gemm_tq2w`], bit-exact with one [`avx2_gemv_tq2w`] per token:
/// [`avx2_gemm_t2`]'s windows with TQ2_0's block scales.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemm_tq2w(w: &[u8], acts: &ActsQ8<'_>, nb: usize, out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemm::<TQ2W>(w, acts, nb, out) }
}
