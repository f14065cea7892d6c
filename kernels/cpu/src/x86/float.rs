//! AVX2 float kernels: F32/F16/BF16 weight rows times f32 activations, `dot_f32`, `axpy_f32`.
//!
//! Sums use four 8-lane FMA accumulators (32 values per step), then an 8-wide step, then a
//! sequential scalar tail; they differ from the sequential scalar spec only by rounding (tested
//! within a named tolerance). `avx2_axpy_f32` multiplies and adds separately, bit-exact.

use core::arch::x86_64::*;

use crate::scalar::float::check_gemv_f;
use crate::scalar::{bf16_bits_to_f32, f16_bits_to_f32};

const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

const fn elem_bytes(k: u8) -> usize {
    match k {
        F32 => 4,
        _ => 2,
    }
}

/// Eight weights of kind `K` starting at element `i` of the row at `p`, as f32.
///
/// # Safety
///
/// Elements `i..i + 8` of the row must be readable; the CPU must have AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8<const K: u8>(p: *const u8, i: usize) -> __m256 {
    // SAFETY: the caller guarantees the 8 elements are readable; loads are unaligned.
    unsafe {
        match K {
            F32 => _mm256_loadu_ps(p.add(i * 4).cast()),
            F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(i * 2).cast())),
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p.add(i * 2).cast()),
            ))),
        }
    }
}

/// One weight of kind `K` at element `i` of the row at `p`.
///
/// # Safety
///
/// Element `i` of the row must be readable.
#[inline]
unsafe fn load1<const K: u8>(p: *const u8, i: usize) -> f32 {
    // SAFETY: the caller guarantees the element is readable; reads are unaligned.
    unsafe {
        match K {
            F32 => f32::from_bits(u32::from_le(p.add(i * 4).cast::<u32>().read_unaligned())),
            F16 => f16_bits_to_f32(u16::from_le(p.add(i * 2).cast::<u16>().read_unaligned())),
            _ => bf16_bits_to_f32(u16::from_le(p.add(i * 2).cast::<u16>().read_unaligned())),
        }
    }
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2)))
}

/// `Σ W[i] x[i]` for the row of kind `K` at `p` with `x.len()` elements.
///
/// # Safety
///
/// The row must hold `x.len()` readable elements; the CPU must have AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_dot<const K: u8>(p: *const u8, x: &[f32]) -> f32 {
    let n = x.len();
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (loop bodies): `i + 32 <= n` (or `i + 8 <= n`), so both rows are in bounds.
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: see above.
            let (wv, xv) =
                unsafe { (load8::<K>(p, i + 8 * k), _mm256_loadu_ps(xp.add(i + 8 * k))) };
            *a = _mm256_fmadd_ps(wv, xv, *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY: see above.
        let (wv, xv) = unsafe { (load8::<K>(p, i), _mm256_loadu_ps(xp.add(i))) };
        acc[0] = _mm256_fmadd_ps(wv, xv, acc[0]);
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut total = hsum(s);
    while i < n {
        // SAFETY: `i < n`.
        total += unsafe { load1::<K>(p, i) } * x[i];
        i += 1;
    }
    total
}

/// The float-weight gemv driver: one row per pass.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv<const K: u8>(w: &[u8], x: &[f32], out: &mut [f32], name: &str) {
    let row_bytes = check_gemv_f(w, x, out.len(), elem_bytes(K), name);
    for (r, o) in out.iter_mut().enumerate() {
        // SAFETY: `check_gemv_f` proved `w` holds `out.len()` rows of `row_bytes` bytes.
        *o = unsafe { row_dot::<K>(w.as_ptr().add(r * row_bytes), x) };
    }
}

/// AVX2 [`crate::scalar::gemv_f32w_f32`] (float tolerance).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_f32w_f32(w: &[u8], x: &[f32], out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv::<F32>(w, x, out, "F32") }
}

/// AVX2 [`crate::scalar::gemv_f32w_f16`] (float tolerance; the f16 conversion is exact).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_f32w_f16(w: &[u8], x: &[f32], out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv::<F16>(w, x, out, "F16") }
}

/// AVX2 [`crate::scalar::gemv_f32w_bf16`] (float tolerance).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gemv_f32w_bf16(w: &[u8], x: &[f32], out: &mut [f32]) {
    // SAFETY: same features, guaranteed by the caller.
    unsafe { gemv::<BF16>(w, x, out, "BF16") }
}

/// AVX2 [`crate::scalar::dot_f32`] (float tolerance).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: lengths differ");
    // SAFETY: `a` holds `b.len()` f32 values, read as raw little-endian bytes.
    unsafe { row_dot::<F32>(a.as_ptr().cast(), b) }
}

/// `e^x` in eight lanes, bit for bit `libm::expf` (FreeBSD's `expf`: `k = round(x / ln 2)`, `x -
/// k ln2_hi - k ln2_lo`, a rational approximation, times `2^k`), for lanes with `2^-14 < |x| <
/// 87.33655`; `None` when a lane is outside (tiny, huge, NaN or infinite), left to `libm::expf`.
/// Every operation is the scalar code's, unfused, in its order, with its constants (`1 / ln 2` is
/// `0x3fb8aa3b`, `ln 2` split into `6.9314575e-1` and `1.4286068e-6`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn expf8_libm(x: __m256) -> Option<__m256> {
    let bits = _mm256_castps_si256(x);
    let hx = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fff_ffff));
    // 0x3900_0000 < hx < 0x42ae_ac50 in every lane (signed compares: hx is non-negative).
    let inside = _mm256_and_si256(
        _mm256_cmpgt_epi32(hx, _mm256_set1_epi32(0x3900_0000)),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(0x42ae_ac50), hx),
    );
    if _mm256_movemask_ps(_mm256_castsi256_ps(inside)) != 0xff {
        return None;
    }
    let neg = _mm256_srai_epi32::<31>(bits); // -1 where the sign bit is set
                                             // |x| > 1.5 ln 2: k = (x / ln 2 ± 0.5) truncated; 0.5 ln 2 < |x|: k = ±1; else k = 0.
    let half = _mm256_blendv_ps(
        _mm256_set1_ps(0.5),
        _mm256_set1_ps(-0.5),
        _mm256_castsi256_ps(neg),
    );
    let k_big = _mm256_cvttps_epi32(_mm256_add_ps(
        _mm256_mul_ps(_mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), x),
        half,
    ));
    let k_mid = _mm256_or_si256(neg, _mm256_set1_epi32(1)); // 1, or -1 where negative
    let big = _mm256_cmpgt_epi32(hx, _mm256_set1_epi32(0x3f85_1592));
    let mid = _mm256_cmpgt_epi32(hx, _mm256_set1_epi32(0x3eb1_7218));
    let k = _mm256_and_si256(mid, _mm256_blendv_epi8(k_mid, k_big, big));
    let kf = _mm256_cvtepi32_ps(k);
    let hi = _mm256_sub_ps(x, _mm256_mul_ps(kf, _mm256_set1_ps(6.931_457_5e-1)));
    let lo = _mm256_mul_ps(kf, _mm256_set1_ps(1.428_606_8e-6));
    let r = _mm256_sub_ps(hi, lo);
    let rr = _mm256_mul_ps(r, r);
    let p = _mm256_add_ps(
        _mm256_set1_ps(1.666_662_5e-1),
        _mm256_mul_ps(rr, _mm256_set1_ps(-2.766_733_3e-3)),
    );
    let c = _mm256_sub_ps(r, _mm256_mul_ps(rr, p));
    let q = _mm256_div_ps(_mm256_mul_ps(r, c), _mm256_sub_ps(_mm256_set1_ps(2.0), c));
    let y = _mm256_add_ps(_mm256_set1_ps(1.0), _mm256_add_ps(_mm256_sub_ps(q, lo), hi));
    // 2^k is a normal float for every k here (|k| <= 126).
    let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        k,
        _mm256_set1_epi32(127),
    )));
    Some(_mm256_mul_ps(y, pow2))
}

/// AVX2 [`crate::scalar::swiglu`], bit-exact: `e^-g` by `expf8_libm` (eight values whose
/// `|g|` lies in its range at a time, the others by `libm::expf`), then the specification's
/// division and product.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_swiglu(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "swiglu: lengths differ");
    let n = g.len();
    let (one, sign) = (_mm256_set1_ps(1.0), _mm256_set1_ps(-0.0));
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n` for both slices.
        let done = unsafe {
            let gp = g.as_mut_ptr().add(i);
            let x = _mm256_loadu_ps(gp);
            match expf8_libm(_mm256_xor_ps(x, sign)) {
                Some(e) => {
                    let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
                    _mm256_storeu_ps(gp, _mm256_mul_ps(s, _mm256_loadu_ps(u.as_ptr().add(i))));
                    true
                }
                None => false,
            }
        };
        if !done {
            crate::scalar::swiglu(&mut g[i..i + 8], &u[i..i + 8]);
        }
        i += 8;
    }
    crate::scalar::swiglu(&mut g[i..], &u[i..]);
}

/// AVX2 [`crate::scalar::axpy_f32`]: `y += a * x`, bit-exact (separate multiply and add).
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy_f32: lengths differ");
    let n = x.len();
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n` for both slices.
        unsafe {
            let yp = y.as_mut_ptr().add(i);
            let v = _mm256_add_ps(
                _mm256_loadu_ps(yp),
                _mm256_mul_ps(av, _mm256_loadu_ps(x.as_ptr().add(i))),
            );
            _mm256_storeu_ps(yp, v);
        }
        i += 8;
    }
    for (y, &x) in y[i..].iter_mut().zip(&x[i..]) {
        *y += a * x;
    }
}
