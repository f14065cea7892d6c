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

/// Pointers to the starts of rows `first .. first + N` of `w` (rows of `row_bytes` bytes), each
/// row index clamped to `last`, so that a pass of `N` rows past the last one repeats it. `last`
/// must be a row of `w` (`(last + 1) * row_bytes <= w.len()`, which the kernels' shape checks
/// prove); panics otherwise.
#[inline(always)]
pub(crate) fn row_ptrs<const N: usize>(
    w: &[u8],
    first: usize,
    last: usize,
    row_bytes: usize,
) -> [*const u8; N] {
    assert!(
        (last + 1) * row_bytes <= w.len(),
        "row_ptrs: row {last} outside the weights"
    );
    // `wrapping_add` stays inside `w`: every offset is at most `last * row_bytes`.
    core::array::from_fn(|i| w.as_ptr().wrapping_add((first + i).min(last) * row_bytes))
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

pub use attn::*;
pub use float::*;
pub use legacy::*;
