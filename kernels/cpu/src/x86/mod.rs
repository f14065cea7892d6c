//! AVX2 kernels for x86-64 (AVX2 + FMA + F16C).
//!
//! Every kernel is a `#[target_feature(enable = "avx2,fma,f16c")] unsafe fn` whose only safety
//! condition is that the CPU has those features; the dispatch table calls them after checking.
//! They check slice shapes themselves (panicking like the scalar kernels), so any slices are sound.
//! [`vnni`] and [`vnni_gemm`] hold the kernels of the `avx-vnni` tier, which also need AVX-VNNI, and [`avx512`]
//! those of the `avx512` tier, which also need AVX-512 F, BW, VL and VNNI.

pub mod attn;
pub mod attn_q16;
pub mod avx512;
pub mod avx512_attn;
pub mod float;
pub mod kquant_gemm;
pub mod kquants;
pub mod legacy;
pub mod q4w;
pub mod ternary;
pub mod vnni;
pub mod vnni_gemm;

use core::arch::x86_64::{
    __m256i, _mm256_loadu_si256, _mm256_permute2x128_si256, _mm256_unpackhi_epi32,
    _mm256_unpackhi_epi64, _mm256_unpacklo_epi32, _mm256_unpacklo_epi64,
};

use crate::acts::ActsQ8;

pub(crate) use crate::rows::row_ptrs;

/// Addresses of rows `first .. first + N` of `w` (rows of `row_bytes` bytes) for software
/// prefetches only: not clamped, so near the end of `w` they point past it, at what follows
/// the matrix in memory (in a model image, the next matrix a decode step reads). A prefetch
/// never faults and never changes what a program computes, whatever its address; these
/// pointers must never be read through.
#[inline(always)]
pub(crate) fn prefetch_ptrs<const N: usize>(
    w: &[u8],
    first: usize,
    row_bytes: usize,
) -> [*const u8; N] {
    core::array::from_fn(|i| w.as_ptr().wrapping_add((first + i) * row_bytes))
}

/// Prefetches into L2 the lines of step `step` of a pass that takes `per` lines a step from the
/// `lines` lines at `base` ([`prefetch_ptrs`]): over the steps of a pass every line once, in
/// address order.
#[inline(always)]
pub(crate) fn prefetch_step(base: *const u8, step: usize, per: usize, lines: usize) {
    use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    for l in step * per..((step + 1) * per).min(lines) {
        // SAFETY: SSE is part of x86-64, and a prefetch never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(64 * l).cast()) };
    }
}

/// Stores the lanes of `v` to `out[r..]`, as many as fit (at most eight): one vector store for a
/// full pass, a copy through a stack array for the last, partial one (a `copy_from_slice` of
/// eight values per pass became a call to `memcpy` in the decode's hottest loops). Callable from
/// the kernels, which have its target features.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn store8(out: &mut [f32], r: usize, v: core::arch::x86_64::__m256) {
    use core::arch::x86_64::_mm256_storeu_ps;
    let n = out.len().saturating_sub(r).min(8);
    if n == 8 {
        // SAFETY: `r + 8 <= out.len()`: eight f32 inside `out`.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(r), v) };
    } else {
        let mut tmp = [0f32; 8];
        // SAFETY: `tmp` holds eight f32.
        unsafe { _mm256_storeu_ps(tmp.as_mut_ptr(), v) };
        out[r..r + n].copy_from_slice(&tmp[..n]);
    }
}

/// The 8x8 transpose of 32-bit words: word `k` of row `t` becomes word `t` of row `k`.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
    let t: [__m256i; 8] = core::array::from_fn(|i| {
        let (a, b) = (r[2 * (i / 2)], r[2 * (i / 2) + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_epi32(a, b)
        } else {
            _mm256_unpackhi_epi32(a, b)
        }
    });
    // u[4h + c]: words c and c + 4 of rows 4h .. 4h + 4.
    let u: [__m256i; 8] = core::array::from_fn(|i| {
        let (h, c) = (i / 4, i % 4);
        let (a, b) = (t[4 * h + c / 2], t[4 * h + 2 + c / 2]);
        if c % 2 == 0 {
            _mm256_unpacklo_epi64(a, b)
        } else {
            _mm256_unpackhi_epi64(a, b)
        }
    });
    core::array::from_fn(|k| {
        if k < 4 {
            _mm256_permute2x128_si256::<0x20>(u[k], u[4 + k])
        } else {
            _mm256_permute2x128_si256::<0x31>(u[k - 4], u[k])
        }
    })
}

/// The eight 32-byte rows of tokens `t0 .. t0 + 8` (the last token repeated past `nb`) at byte
/// `at` of each token's `len`-byte row of `data`, transposed ([`transpose8`]).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn gather8(data: &[u8], len: usize, nb: usize, t0: usize, at: usize) -> [__m256i; 8] {
    transpose8(core::array::from_fn(|t| {
        let o = (t0 + t).min(nb - 1) * len + at;
        let s = &data[o..o + 32];
        // SAFETY: `s` holds 32 bytes.
        unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
    }))
}

/// The activations, their groups' scales and their groups' sums as bytes (rows for [`gather8`]).
pub(crate) fn acts_bytes<'a>(acts: &ActsQ8<'a>) -> (&'a [u8], &'a [u8], &'a [u8]) {
    // SAFETY: i8, f32 and i32 have no padding and no invalid bytes; each view covers exactly the
    // memory of its slice, for the same lifetime.
    unsafe {
        (
            core::slice::from_raw_parts(acts.qs.as_ptr().cast::<u8>(), acts.qs.len()),
            core::slice::from_raw_parts(acts.d.as_ptr().cast::<u8>(), 4 * acts.d.len()),
            core::slice::from_raw_parts(acts.sums.as_ptr().cast::<u8>(), 4 * acts.sums.len()),
        )
    }
}

pub use attn::*;
pub use float::*;
pub use legacy::*;
