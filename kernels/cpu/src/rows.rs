//! Row addresses for the SIMD gemv and gemm drivers, which take the rows of a matrix a few at a
//! time.

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
