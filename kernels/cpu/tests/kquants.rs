//! Tests of the K-quant kernels (Q4_K, Q5_K, Q6_K): scalar dequantization pinned bit for bit to the
//! format's reference (gguf-py fixtures in `tests/data`), scalar gemv against dequantize + dot, and
//! the AVX2 kernels against the scalar specification on random shapes and named edge cases.

mod common;
use edgellm_kernels::scalar::kquants::{
    dequantize_q4_k, dequantize_q5_k, dequantize_q6_k, gemv_q4_k, gemv_q5_k, gemv_q6_k, QK_K,
};
use edgellm_kernels::{ActsQ8, QK, QS};

/// AVX2 kernels may differ from the scalar specification by this many units in the last place.
/// Zero: they follow the specification's accumulation order with separate multiplies and adds, so
/// the results are bit-identical (this also covers the integer parts, which any difference in an
/// exact i32 dot would show immediately).
#[cfg(target_arch = "x86_64")]
const AVX2_VS_SCALAR_MAX_ULPS: u32 = 0;

/// Relative bound, per rounding step, for scalar gemv against the f64 dot of dequantized weights
/// and dequantized activations: each f32 operation rounds with relative error at most
/// `f32::EPSILON / 2`, and a result passes through at most `2 * cols / 256 + 3` additions (lane
/// sums, two groups per lane and super-block, and the final reduction) plus a handful of products
/// and one subtraction on either side (the dequantized weight is itself `(d * sc) * q - dmin * m`,
/// three roundings). The bound is
/// `(2 * cols / 256 + GEMV_ROUNDING_STEPS) * f32::EPSILON * Σ |terms|`, where the terms are the
/// products before any cancellation (the scale part and the min part counted separately); this is
/// about twice the worst case. Observed errors stay below
/// `0.9 * f32::EPSILON * Σ |terms|` (and about 1e-7 relative on the real rows).
const GEMV_ROUNDING_STEPS: f64 = 10.0;

/// Shapes of the random tests.
const ROWS: core::ops::RangeInclusive<usize> = 1..=9;
const COLS: [usize; 8] = [256, 512, 768, 1024, 1280, 1536, 1792, 2048];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

use common::Rng;

/// Test-only copy of the activation quantization rule of `ActsQ8`: per group of 16 values,
/// `d = amax / 127`, `q = round_ties_even(x * (1 / d))`, 0 when `amax == 0`, and the exact sum.
fn quantize_acts(x: &[f32], qs: &mut [i8], d: &mut [f32], sums: &mut [i32]) {
    assert!(x.len().is_multiple_of(QK));
    for (b, xb) in x.chunks_exact(QS).enumerate() {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let db = amax / 127.0;
        let id = if amax == 0.0 { 0.0 } else { 1.0 / db };
        let mut sum = 0i32;
        for (q, &v) in qs[b * QS..(b + 1) * QS].iter_mut().zip(xb) {
            *q = libm::rintf(v * id) as i8;
            sum += *q as i32;
        }
        d[b] = db;
        sums[b] = sum;
    }
}

/// Owned quantized activations.
struct Acts {
    qs: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<i32>,
}

impl Acts {
    fn from_f32(x: &[f32]) -> Self {
        let nb = x.len() / QS;
        let mut a = Acts {
            qs: vec![0; x.len()],
            d: vec![0.0; nb],
            sums: vec![0; nb],
        };
        quantize_acts(x, &mut a.qs, &mut a.d, &mut a.sums);
        a
    }
    /// Every group with the same integer values `q` (sums computed) and scale `d`.
    fn constant(cols: usize, q: i8, d: f32) -> Self {
        let nb = cols / QS;
        Acts {
            qs: vec![q; cols],
            d: vec![d; nb],
            sums: vec![q as i32 * QS as i32; nb],
        }
    }
    fn random(rng: &mut Rng, cols: usize) -> Self {
        let mut x = vec![0.0f32; cols];
        for block in x.chunks_exact_mut(QS) {
            // Groups of very different magnitudes (also the two halves of one 32-element
            // sub-block), and now and then an all-zero group.
            let scale = if rng.below(16) == 0 {
                0.0
            } else {
                (2.0f32).powf(rng.unit() * 12.0 - 8.0)
            };
            for v in block {
                *v = (rng.unit() * 2.0 - 1.0) * scale;
            }
        }
        Self::from_f32(&x)
    }
    fn view(&self) -> ActsQ8<'_> {
        ActsQ8 {
            qs: &self.qs,
            d: &self.d,
            sums: &self.sums,
        }
    }
}

type DequantizeFn = fn(&[u8], &mut [f32]);
type GemvFn = fn(&[u8], &ActsQ8<'_>, &mut [f32]);
#[cfg(target_arch = "x86_64")]
type Avx2GemvFn = unsafe fn(&[u8], &ActsQ8<'_>, &mut [f32]);

/// What the tests need to know about one K-quant type.
struct Kind {
    block_bytes: usize,
    /// Offsets of the f16 fields: `[d, dmin]` or `[d]`.
    f16_fields: &'static [usize],
    /// Byte range of the packed scales.
    scales: core::ops::Range<usize>,
    /// Byte range of the packed quants.
    quants: core::ops::Range<usize>,
    dequantize: DequantizeFn,
    gemv: GemvFn,
}

const Q4_K: Kind = Kind {
    block_bytes: 144,
    f16_fields: &[0, 2],
    scales: 4..16,
    quants: 16..144,
    dequantize: dequantize_q4_k,
    gemv: gemv_q4_k,
};
const Q5_K: Kind = Kind {
    block_bytes: 176,
    f16_fields: &[0, 2],
    scales: 4..16,
    quants: 16..176,
    dequantize: dequantize_q5_k,
    gemv: gemv_q5_k,
};
const Q6_K: Kind = Kind {
    block_bytes: 210,
    f16_fields: &[208],
    scales: 192..208,
    quants: 0..192,
    dequantize: dequantize_q6_k,
    gemv: gemv_q6_k,
};

impl Kind {
    /// `rows` rows of `cols / 256` random super-blocks with finite f16 scales.
    fn random_weights(&self, rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
        let mut w = vec![0u8; rows * cols / QK_K * self.block_bytes];
        rng.fill_bytes(&mut w);
        for blk in w.chunks_exact_mut(self.block_bytes) {
            for &off in self.f16_fields {
                blk[off..off + 2].copy_from_slice(&rng.sane_f16().to_le_bytes());
            }
        }
        w
    }

    /// Sets f16 field `field` (0 = d, 1 = dmin) of every super-block to `v`.
    fn set_f16(&self, w: &mut [u8], field: usize, v: f32) {
        let bits = half::f16::from_f32(v).to_bits().to_le_bytes();
        assert_eq!(
            half::f16::from_bits(u16::from_le_bytes(bits)).to_f32(),
            v,
            "not an f16"
        );
        let off = self.f16_fields[field];
        for blk in w.chunks_exact_mut(self.block_bytes) {
            blk[off..off + 2].copy_from_slice(&bits);
        }
    }

    fn fill(&self, w: &mut [u8], range: core::ops::Range<usize>, byte: u8) {
        for blk in w.chunks_exact_mut(self.block_bytes) {
            blk[range.clone()].fill(byte);
        }
    }

    fn dequantize_rows(&self, w: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; rows * cols];
        (self.dequantize)(w, &mut y);
        y
    }

    /// The f64 reference `Σ_c deq(W)[r][c] * d[c/16] * q[c]` and the magnitude `Σ |terms|` for the
    /// tolerance. For Q4_K/Q5_K the scale part `d*sc*q` and the min part `dmin*m` are dequantized
    /// separately (zeroing the other f16) so that cancellation between them is accounted for.
    fn reference(&self, w: &[u8], acts: &Acts, rows: usize) -> Vec<(f64, f64)> {
        let cols = acts.qs.len();
        let a: Vec<f64> = (0..cols)
            .map(|c| acts.d[c / QS] as f64 * acts.qs[c] as f64)
            .collect();
        let full = self.dequantize_rows(w, rows, cols);
        let parts: Vec<Vec<f32>> = if self.f16_fields.len() == 2 {
            (0..2)
                .map(|zeroed| {
                    let mut wp = w.to_vec();
                    self.set_f16(&mut wp, zeroed, 0.0);
                    self.dequantize_rows(&wp, rows, cols)
                })
                .collect()
        } else {
            vec![full.clone()]
        };
        (0..rows)
            .map(|r| {
                let mut sum = 0.0f64;
                let mut mag = 0.0f64;
                for (c, &ac) in a.iter().enumerate() {
                    let i = r * cols + c;
                    sum += full[i] as f64 * ac;
                    mag += parts.iter().map(|p| (p[i] as f64 * ac).abs()).sum::<f64>();
                }
                (sum, mag)
            })
            .collect()
    }

    /// Scalar gemv against the f64 reference, within the documented bound.
    fn check_gemv_against_dequantize(&self, w: &[u8], acts: &Acts, rows: usize, what: &str) {
        let cols = acts.qs.len();
        let mut out = vec![f32::NAN; rows];
        (self.gemv)(w, &acts.view(), &mut out);
        let steps = (2 * cols / QK_K) as f64 + GEMV_ROUNDING_STEPS;
        for (r, (&got, (want, mag))) in out.iter().zip(self.reference(w, acts, rows)).enumerate() {
            let tol = steps * f32::EPSILON as f64 * mag;
            let err = (got as f64 - want).abs();
            assert!(
                err <= tol,
                "{what}: row {r} of {rows}x{cols}: gemv {got} vs reference {want} \
                 (error {err:e}, bound {tol:e})"
            );
        }
    }
}

/// Distance in units in the last place between two floats of the same sign, or `u32::MAX`. Two NaNs
/// count as equal whatever their payloads (x86 propagates the payload of a particular operand, which
/// is not part of the specification).
#[cfg(target_arch = "x86_64")]
fn ulps(a: f32, b: f32) -> u32 {
    if a.to_bits() == b.to_bits() || (a == 0.0 && b == 0.0) || (a.is_nan() && b.is_nan()) {
        return 0;
    }
    if a.is_sign_negative() != b.is_sign_negative() || !a.is_finite() || !b.is_finite() {
        return u32::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    let ok = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    if !ok {
        eprintln!("skipped: this CPU lacks AVX2 or FMA");
    }
    ok
}

/// The AVX2 kernel against the scalar one on the same inputs.
#[cfg(target_arch = "x86_64")]
// The tolerance is a named constant that is zero today; the comparison stays written as a bound.
#[allow(clippy::absurd_extreme_comparisons)]
fn check_avx2(kind: &Kind, avx2: Avx2GemvFn, w: &[u8], acts: &Acts, rows: usize, what: &str) {
    let mut want = vec![f32::NAN; rows];
    let mut got = vec![f32::NAN; rows];
    (kind.gemv)(w, &acts.view(), &mut want);
    // SAFETY: callers check `avx2_available()` first.
    unsafe { avx2(w, &acts.view(), &mut got) };
    for r in 0..rows {
        assert!(
            ulps(got[r], want[r]) <= AVX2_VS_SCALAR_MAX_ULPS,
            "{what}: row {r} of {rows}x{}: AVX2 {} ({:#010x}) vs scalar {} ({:#010x})",
            acts.qs.len(),
            got[r],
            got[r].to_bits(),
            want[r],
            want[r].to_bits()
        );
    }
}

/// The named edge cases: `(name, weights, activations)` for `rows` x `cols`.
fn edge_cases(kind: &Kind, rows: usize, cols: usize) -> Vec<(&'static str, Vec<u8>, Acts)> {
    let mut rng = Rng::new(7);
    let random = |rng: &mut Rng| kind.random_weights(rng, rows, cols);
    let mut cases = Vec::new();

    cases.push((
        "all-zero weights",
        vec![0u8; rows * cols / QK_K * kind.block_bytes],
        { Acts::random(&mut rng, cols) },
    ));
    cases.push((
        "all-zero activations",
        random(&mut rng),
        Acts::from_f32(&vec![0.0; cols]),
    ));

    // Largest 6-bit scales (and mins), largest quants, largest f16, activations at the int8 limits.
    for (name, q, d) in [
        ("max scales, acts +127", 127i8, 1.0e4f32),
        ("max scales, acts -128", -128, 1.0e4),
    ] {
        let mut w = random(&mut rng);
        // 0xFF is scale and min 63 for Q4_K/Q5_K; Q6_K scales are i8, largest 0x7F.
        let max_scale = if kind.f16_fields.len() == 2 {
            0xFF
        } else {
            0x7F
        };
        kind.fill(&mut w, kind.scales.clone(), max_scale);
        kind.fill(&mut w, kind.quants.clone(), 0xFF);
        for field in 0..kind.f16_fields.len() {
            kind.set_f16(&mut w, field, 65504.0);
        }
        cases.push((name, w, Acts::constant(cols, q, d)));
    }
    if kind.f16_fields.len() == 1 {
        // Q6_K: scales -128 and quants 0 (= -32) with activations -128: |ip| reaches 2^23.
        let mut w = random(&mut rng);
        kind.fill(&mut w, kind.scales.clone(), 0x80);
        kind.fill(&mut w, kind.quants.clone(), 0x00);
        kind.set_f16(&mut w, 0, -65504.0);
        cases.push((
            "Q6_K most negative scales, |ip| = 2^23",
            w,
            Acts::constant(cols, -128, 1.0),
        ));
    }

    // One outlier group in every 32-element sub-block, a thousand times larger than the other half
    // (the first half in even sub-blocks, the second in odd ones), so the two halves get very
    // different activation scales under one weight scale and min.
    let x: Vec<f32> = (0..cols)
        .map(|c| {
            let v = (rng.unit() * 2.0 - 1.0) * 0.01;
            let outlier = (c / QS) % 2 == (c / QK) % 2;
            if outlier {
                v * 1000.0
            } else {
                v
            }
        })
        .collect();
    cases.push((
        "outlier half in every sub-block",
        random(&mut rng),
        Acts::from_f32(&x),
    ));

    let mut w = random(&mut rng);
    kind.set_f16(&mut w, 0, -0.5);
    cases.push(("negative d", w, Acts::random(&mut rng, cols)));
    if kind.f16_fields.len() == 2 {
        let mut w = random(&mut rng);
        kind.set_f16(&mut w, 0, -0.75);
        kind.set_f16(&mut w, 1, -0.25);
        cases.push(("negative d and dmin", w, Acts::random(&mut rng, cols)));
        let mut w = random(&mut rng);
        kind.set_f16(&mut w, 1, 0.0);
        cases.push(("dmin = 0", w, Acts::random(&mut rng, cols)));
    }
    let mut w = random(&mut rng);
    kind.set_f16(&mut w, 0, 0.0);
    cases.push(("d = 0", w, Acts::random(&mut rng, cols)));
    let mut w = random(&mut rng);
    kind.set_f16(&mut w, 0, (2.0f32).powi(-24)); // smallest f16 subnormal
    cases.push(("subnormal d", w, Acts::random(&mut rng, cols)));
    cases
}

// ---------------------------------------------------------------------------------------------
// Tests, generated for each type
// ---------------------------------------------------------------------------------------------

macro_rules! kquant_tests {
    ($name:ident, $kind:expr, $fixture:literal, $avx2:path) => {
        mod $name {
            use super::*;

            const BLOCKS: &[u8] = include_bytes!(concat!("data/kquants_", $fixture, ".blocks"));
            const EXPECTED: &[u8] = include_bytes!(concat!("data/kquants_", $fixture, ".f32"));

            #[test]
            fn dequantize_matches_gguf_py_bit_for_bit() {
                let kind = &$kind;
                let n = BLOCKS.len() / kind.block_bytes;
                assert_eq!(n, 64);
                assert_eq!(BLOCKS.len(), n * kind.block_bytes);
                assert_eq!(EXPECTED.len(), n * QK_K * 4);
                let mut got = vec![f32::NAN; n * QK_K];
                (kind.dequantize)(BLOCKS, &mut got);
                for (i, (g, e)) in got.iter().zip(EXPECTED.chunks_exact(4)).enumerate() {
                    let e = f32::from_le_bytes(e.try_into().unwrap());
                    assert_eq!(
                        g.to_bits(),
                        e.to_bits(),
                        "super-block {} element {}: got {g}, gguf-py {e}",
                        i / QK_K,
                        i % QK_K
                    );
                }
            }

            #[test]
            fn dequantize_reads_only_the_super_blocks_it_writes() {
                let kind = &$kind;
                let mut all = vec![0.0f32; 64 * QK_K];
                (kind.dequantize)(BLOCKS, &mut all);
                let mut part = vec![0.0f32; 3 * QK_K];
                (kind.dequantize)(BLOCKS, &mut part);
                assert_eq!(part, all[..3 * QK_K]);
                (kind.dequantize)(&BLOCKS[5 * kind.block_bytes..], &mut part);
                assert_eq!(part, all[5 * QK_K..8 * QK_K]);
                (kind.dequantize)(&[], &mut []);
            }

            #[test]
            fn gemv_matches_dequantize_dot_on_random_shapes() {
                let kind = &$kind;
                let mut rng = Rng::new(0x5EED_0001);
                for rows in ROWS {
                    for cols in COLS {
                        let w = kind.random_weights(&mut rng, rows, cols);
                        let acts = Acts::random(&mut rng, cols);
                        kind.check_gemv_against_dequantize(&w, &acts, rows, "random");
                    }
                }
            }

            #[test]
            fn gemv_matches_dequantize_dot_on_fixture_blocks() {
                // The gguf-py fixture blocks as 4 rows of 16 super-blocks (cols = 4096); they include
                // zero, negative, subnormal and largest f16 scales.
                let kind = &$kind;
                let mut rng = Rng::new(0x5EED_0002);
                let acts = Acts::random(&mut rng, 16 * QK_K);
                kind.check_gemv_against_dequantize(BLOCKS, &acts, 4, "fixture");
            }

            #[test]
            fn gemv_edge_cases_match_dequantize_dot() {
                let kind = &$kind;
                for (rows, cols) in [(1, 256), (3, 768), (2, 2048)] {
                    for (what, w, acts) in edge_cases(kind, rows, cols) {
                        kind.check_gemv_against_dequantize(&w, &acts, rows, what);
                    }
                }
            }

            #[test]
            fn gemv_all_zero_weights_give_exact_zero() {
                let kind = &$kind;
                let mut rng = Rng::new(3);
                let acts = Acts::random(&mut rng, 1024);
                let w = vec![0u8; 5 * 4 * kind.block_bytes];
                let mut out = vec![f32::NAN; 5];
                (kind.gemv)(&w, &acts.view(), &mut out);
                assert!(out.iter().all(|v| v.to_bits() == 0), "{out:?}");
            }

            #[test]
            fn gemv_reads_only_the_first_rows_and_handles_empty_shapes() {
                let kind = &$kind;
                let mut rng = Rng::new(4);
                let w = kind.random_weights(&mut rng, 5, 512);
                let acts = Acts::random(&mut rng, 512);
                let mut all = vec![0.0f32; 5];
                (kind.gemv)(&w, &acts.view(), &mut all);
                let mut first = vec![0.0f32; 2];
                (kind.gemv)(&w, &acts.view(), &mut first);
                assert_eq!(first, all[..2]);
                (kind.gemv)(&w, &acts.view(), &mut []);
                let mut zero_cols = vec![f32::NAN; 3];
                (kind.gemv)(&[], &Acts::from_f32(&[]).view(), &mut zero_cols);
                assert_eq!(zero_cols, [0.0; 3]);
            }

            #[test]
            #[should_panic(expected = "need")]
            fn gemv_rejects_short_weights() {
                let kind = &$kind;
                let mut rng = Rng::new(5);
                let w = kind.random_weights(&mut rng, 2, 512);
                let acts = Acts::random(&mut rng, 512);
                (kind.gemv)(&w[..w.len() - 1], &acts.view(), &mut [0.0; 2]);
            }

            #[test]
            #[should_panic(expected = "not a multiple of 256")]
            fn gemv_rejects_partial_super_blocks() {
                let kind = &$kind;
                let acts = Acts::from_f32(&[1.0; 288]);
                (kind.gemv)(&[0u8; 1024], &acts.view(), &mut [0.0; 1]);
            }

            #[test]
            #[should_panic(expected = "scales and sums")]
            fn gemv_rejects_missing_activation_scales() {
                let kind = &$kind;
                let acts = Acts::from_f32(&[1.0; 256]);
                let view = ActsQ8 {
                    qs: &acts.qs,
                    d: &acts.d[..15],
                    sums: &acts.sums,
                };
                (kind.gemv)(&[0u8; 1024], &view, &mut [0.0; 1]);
            }

            #[test]
            #[should_panic(expected = "need 16 scales and sums, got 8 and 8")]
            fn gemv_rejects_one_scale_per_32_values() {
                let kind = &$kind;
                let acts = Acts::from_f32(&[1.0; 256]);
                let view = ActsQ8 {
                    qs: &acts.qs,
                    d: &acts.d[..8],
                    sums: &acts.sums[..8],
                };
                (kind.gemv)(&[0u8; 1024], &view, &mut [0.0; 1]);
            }

            #[test]
            #[should_panic(expected = "not a multiple of 256")]
            fn dequantize_rejects_partial_super_blocks() {
                ($kind.dequantize)(BLOCKS, &mut [0.0; 100]);
            }

            #[test]
            #[should_panic(expected = "need")]
            fn dequantize_rejects_short_source() {
                ($kind.dequantize)(&BLOCKS[..100], &mut [0.0; 256]);
            }

            #[cfg(target_arch = "x86_64")]
            #[test]
            fn avx2_matches_scalar_on_random_shapes() {
                if !avx2_available() {
                    return;
                }
                let kind = &$kind;
                let mut rng = Rng::new(0x5EED_0003);
                for rows in ROWS {
                    for cols in COLS {
                        for _ in 0..3 {
                            let w = kind.random_weights(&mut rng, rows, cols);
                            let acts = Acts::random(&mut rng, cols);
                            check_avx2(kind, $avx2, &w, &acts, rows, "random");
                        }
                    }
                }
            }

            #[cfg(target_arch = "x86_64")]
            #[test]
            fn avx2_matches_scalar_on_fully_random_bytes() {
                // Any f16 bit pattern, infinities and NaNs included: still the same bits.
                if !avx2_available() {
                    return;
                }
                let kind = &$kind;
                let mut rng = Rng::new(0x5EED_0004);
                for cols in COLS {
                    let mut w = vec![0u8; 4 * cols / QK_K * kind.block_bytes];
                    rng.fill_bytes(&mut w);
                    let acts = Acts::random(&mut rng, cols);
                    check_avx2(kind, $avx2, &w, &acts, 4, "random bytes");
                }
            }

            #[cfg(target_arch = "x86_64")]
            #[test]
            fn avx2_matches_scalar_on_edge_cases() {
                if !avx2_available() {
                    return;
                }
                let kind = &$kind;
                for (rows, cols) in [(1, 256), (3, 768), (2, 2048)] {
                    for (what, w, acts) in edge_cases(kind, rows, cols) {
                        check_avx2(kind, $avx2, &w, &acts, rows, what);
                    }
                }
                check_avx2(
                    kind,
                    $avx2,
                    BLOCKS,
                    &Acts::random(&mut Rng::new(9), 4096),
                    4,
                    "fixture",
                );
            }

            #[cfg(target_arch = "x86_64")]
            #[test]
            #[should_panic(expected = "need 16 scales and sums, got 16 and 15")]
            fn avx2_rejects_missing_activation_sums() {
                if !avx2_available() {
                    panic!("need 16 scales and sums, got 16 and 15 (skipped: no AVX2)");
                }
                let acts = Acts::from_f32(&[1.0; 256]);
                let view = ActsQ8 {
                    qs: &acts.qs,
                    d: &acts.d,
                    sums: &acts.sums[..15],
                };
                // SAFETY: AVX2 and FMA were detected above.
                unsafe { $avx2(&[0u8; 1024], &view, &mut [0.0; 1]) };
            }

            #[cfg(target_arch = "x86_64")]
            #[test]
            #[should_panic(expected = "need")]
            fn avx2_rejects_short_weights() {
                if !avx2_available() {
                    panic!("need AVX2 (skipped)");
                }
                let kind = &$kind;
                let mut rng = Rng::new(6);
                let w = kind.random_weights(&mut rng, 2, 512);
                let acts = Acts::random(&mut rng, 512);
                // SAFETY: AVX2 and FMA were detected above.
                unsafe { $avx2(&w[..w.len() - 1], &acts.view(), &mut [0.0; 2]) };
            }
        }
    };
}

kquant_tests!(
    q4_k,
    Q4_K,
    "q4_k",
    edgellm_kernels::x86::kquants::avx2_gemv_q4_k
);
kquant_tests!(
    q5_k,
    Q5_K,
    "q5_k",
    edgellm_kernels::x86::kquants::avx2_gemv_q5_k
);
kquant_tests!(
    q6_k,
    Q6_K,
    "q6_k",
    edgellm_kernels::x86::kquants::avx2_gemv_q6_k
);

// ---------------------------------------------------------------------------------------------
// Batched gemm (prefill): every tier's `Kernels::gemm` gives, bit for bit, the scalar gemv of each
// token.
// ---------------------------------------------------------------------------------------------

use edgellm_kernels::GgmlType;

use common::tiers;

/// `Kernels::gemm` of the tokens `toks` (each one's activations) against the spec's gemv per
/// token, on every tier.
fn check_gemm(kind: &Kind, ty: GgmlType, w: &[u8], toks: &[Acts], rows: usize, what: &str) {
    let (nb, cols) = (toks.len(), toks[0].qs.len());
    let mut want = vec![f32::NAN; nb * rows];
    for (t, a) in toks.iter().enumerate() {
        (kind.gemv)(w, &a.view(), &mut want[t * rows..(t + 1) * rows]);
    }
    let all = Acts {
        qs: toks.iter().flat_map(|a| a.qs.iter().copied()).collect(),
        d: toks.iter().flat_map(|a| a.d.iter().copied()).collect(),
        sums: toks.iter().flat_map(|a| a.sums.iter().copied()).collect(),
    };
    let x: Vec<f32> = (0..nb * cols)
        .map(|c| all.qs[c] as f32 * all.d[c / QS])
        .collect();
    for k in tiers() {
        let mut got = vec![f32::NAN; nb * rows];
        k.gemm(ty, w, &x, &all.view(), nb, &mut got);
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "{ty} gemm, {what}: token {} row {} of {nb}x{rows}x{cols} on tier {} \
                 (batched: {}): {g} vs the spec's {e}",
                i / rows,
                i % rows,
                k.tier(),
                k.gemm_batches(ty)
            );
        }
    }
}

fn check_gemm_kind(kind: &Kind, ty: GgmlType, seed: u64) {
    let mut rng = Rng::new(seed);
    // Rows around the 32-row chunks, columns around the 1024-column panels, token counts around
    // the eight lanes of a vector.
    let shapes = [
        (1, 256, 1),
        (3, 256, 2),
        (8, 1024, 7),
        (31, 1280, 8),
        (32, 2048, 9),
        (33, 768, 16),
        (45, 4864, 17),
        (2, 5120, 3),
    ];
    for (rows, cols, nb) in shapes {
        let w = kind.random_weights(&mut rng, rows, cols);
        let toks: Vec<Acts> = (0..nb).map(|_| Acts::random(&mut rng, cols)).collect();
        check_gemm(kind, ty, &w, &toks, rows, "random");
    }
    // Any bytes, infinities and NaNs in the scales included.
    let mut w = vec![0u8; 5 * 1024 / QK_K * kind.block_bytes];
    rng.fill_bytes(&mut w);
    let toks: Vec<Acts> = (0..9).map(|_| Acts::random(&mut rng, 1024)).collect();
    check_gemm(kind, ty, &w, &toks, 5, "random bytes");
    // Extreme activations and weights: every value at its largest magnitude.
    let mut w = kind.random_weights(&mut rng, 4, 512);
    kind.fill(&mut w, kind.quants.clone(), 0xFF);
    kind.fill(&mut w, kind.scales.clone(), 0xBF);
    let toks: Vec<Acts> = [127, -128, -127, 0, 1, 127, -128, 5, -1]
        .iter()
        .map(|&q| Acts::constant(512, q, 0.5))
        .collect();
    check_gemm(kind, ty, &w, &toks, 4, "extremes");
    // Stored sums that are not the sums of the values: Q4_K and Q5_K take the stored ones, as the
    // specification does; Q6_K's offset must come from the values themselves.
    let mut toks: Vec<Acts> = (0..10).map(|_| Acts::random(&mut rng, 768)).collect();
    for a in &mut toks {
        for (i, s) in a.sums.iter_mut().enumerate() {
            *s += (i as i32 % 7) - 3;
        }
    }
    let w = kind.random_weights(&mut rng, 6, 768);
    check_gemm(kind, ty, &w, &toks, 6, "stored sums off by a few");
    // The named edge cases of the gemv, each for a few tokens.
    for (what, w, acts) in edge_cases(kind, 3, 768) {
        let other = Acts::random(&mut rng, 768);
        let toks = [acts, other];
        check_gemm(kind, ty, &w, &toks, 3, what);
    }
}

#[test]
fn gemm_q4_k_is_gemv_per_token() {
    check_gemm_kind(&Q4_K, GgmlType::Q4_K, 0x6e4b);
}

#[test]
fn gemm_q5_k_is_gemv_per_token() {
    check_gemm_kind(&Q5_K, GgmlType::Q5_K, 0x6e5b);
}

#[test]
fn gemm_q6_k_is_gemv_per_token() {
    check_gemm_kind(&Q6_K, GgmlType::Q6_K, 0x6e6b);
}

// ---------------------------------------------------------------------------------------------
// Real weights: two rows (4864 columns) of ffn_down tensors of Qwen2.5-Coder-0.5B-Instruct Q4_K_M
// (see tests/data/kquants_gen.py); that model has no Q5_K tensor.
// ---------------------------------------------------------------------------------------------

const REAL_COLS: usize = 4864;

/// Activations shaped like a transformer's hidden state: mostly small values with a few outlier
/// channels a hundred times larger.
fn real_like_acts(seed: u64) -> Acts {
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = (0..REAL_COLS)
        .map(|c| {
            let v = rng.unit() + rng.unit() + rng.unit() - 1.5;
            if c % 613 == 7 {
                v * 100.0
            } else {
                v
            }
        })
        .collect();
    Acts::from_f32(&x)
}

fn check_real(kind: &Kind, blocks: &[u8], expected: &[u8]) {
    let rows = blocks.len() / (REAL_COLS / QK_K * kind.block_bytes);
    assert_eq!(rows, 2);
    assert_eq!(blocks.len(), rows * REAL_COLS / QK_K * kind.block_bytes);
    let got = kind.dequantize_rows(blocks, rows, REAL_COLS);
    for (i, (g, e)) in got.iter().zip(expected.chunks_exact(4)).enumerate() {
        let e = f32::from_le_bytes(e.try_into().unwrap());
        assert_eq!(
            g.to_bits(),
            e.to_bits(),
            "element {i}: got {g}, gguf-py {e}"
        );
    }
    for seed in 0..4 {
        kind.check_gemv_against_dequantize(blocks, &real_like_acts(seed), rows, "real rows");
    }
}

#[test]
fn real_q4_k_rows_dequantize_and_gemv() {
    check_real(
        &Q4_K,
        include_bytes!("data/kquants_real_q4_k.blocks"),
        include_bytes!("data/kquants_real_q4_k.f32"),
    );
}

#[test]
fn real_q6_k_rows_dequantize_and_gemv() {
    check_real(
        &Q6_K,
        include_bytes!("data/kquants_real_q6_k.blocks"),
        include_bytes!("data/kquants_real_q6_k.f32"),
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn real_rows_avx2_matches_scalar() {
    if !avx2_available() {
        return;
    }
    use edgellm_kernels::x86::kquants::{avx2_gemv_q4_k, avx2_gemv_q6_k};
    for seed in 0..4 {
        let acts = real_like_acts(seed);
        let q4 = include_bytes!("data/kquants_real_q4_k.blocks");
        check_avx2(&Q4_K, avx2_gemv_q4_k, q4, &acts, 2, "real Q4_K rows");
        let q6 = include_bytes!("data/kquants_real_q6_k.blocks");
        check_avx2(&Q6_K, avx2_gemv_q6_k, q6, &acts, 2, "real Q6_K rows");
    }
}

// ---------------------------------------------------------------------------------------------
// NEON K-quants (the `neon` and `neon-dotprod` tiers): bit for bit the scalar specification.
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "aarch64")]
type NeonGemvFn = unsafe fn(&[u8], &ActsQ8<'_>, &mut [f32]);

/// The NEON kernels of K-quant `ty` (`"q4_k"`, `"q5_k"`, `"q6_k"`) this CPU can run, by name,
/// with the type's test description.
#[cfg(target_arch = "aarch64")]
fn neon_kernels(ty: &str) -> (&'static Kind, Vec<(&'static str, NeonGemvFn)>) {
    use edgellm_kernels::aarch64::kquants as k;
    let (kind, neon, dot): (&Kind, (&str, NeonGemvFn), (&str, NeonGemvFn)) = match ty {
        "q4_k" => (
            &Q4_K,
            ("neon_gemv_q4_k", k::neon_gemv_q4_k),
            ("neon_dotprod_gemv_q4_k", k::neon_dotprod_gemv_q4_k),
        ),
        "q5_k" => (
            &Q5_K,
            ("neon_gemv_q5_k", k::neon_gemv_q5_k),
            ("neon_dotprod_gemv_q5_k", k::neon_dotprod_gemv_q5_k),
        ),
        _ => (
            &Q6_K,
            ("neon_gemv_q6_k", k::neon_gemv_q6_k),
            ("neon_dotprod_gemv_q6_k", k::neon_dotprod_gemv_q6_k),
        ),
    };
    let mut v = Vec::new();
    if common::has_neon() {
        v.push(neon);
    }
    if common::has_dotprod() {
        v.push(dot);
    } else {
        eprintln!("{}: this CPU lacks the dot product, skipped", dot.0);
    }
    (kind, v)
}

/// Each NEON kernel of `ty` against the scalar one on the same inputs: the same bits.
#[cfg(target_arch = "aarch64")]
fn check_neon(ty: &str, w: &[u8], acts: &Acts, rows: usize, what: &str) {
    let (kind, kernels) = neon_kernels(ty);
    let mut want = vec![f32::NAN; rows];
    (kind.gemv)(w, &acts.view(), &mut want);
    for (name, f) in kernels {
        let mut got = vec![f32::NAN; rows];
        // SAFETY: `neon_kernels` lists only kernels whose features this CPU has.
        unsafe { f(w, &acts.view(), &mut got) };
        for r in 0..rows {
            assert!(
                got[r].to_bits() == want[r].to_bits() || (got[r].is_nan() && want[r].is_nan()),
                "{name}, {what}: row {r} of {rows}x{}: {} ({:#010x}) vs scalar {} ({:#010x})",
                acts.qs.len(),
                got[r],
                got[r].to_bits(),
                want[r],
                want[r].to_bits()
            );
        }
    }
}

#[cfg(target_arch = "aarch64")]
const NEON_TYPES: [&str; 3] = ["q4_k", "q5_k", "q6_k"];

#[cfg(target_arch = "aarch64")]
#[test]
fn neon_kquants_match_scalar_on_random_shapes_and_bytes() {
    let mut rng = Rng::new(0x5EED_0A64);
    for ty in NEON_TYPES {
        let kind = neon_kernels(ty).0;
        for rows in ROWS {
            for cols in COLS {
                let w = kind.random_weights(&mut rng, rows, cols);
                let acts = Acts::random(&mut rng, cols);
                check_neon(ty, &w, &acts, rows, "random");
            }
        }
        // Any bytes, f16 infinities and NaNs included.
        for cols in COLS {
            let mut w = vec![0u8; 3 * cols / QK_K * kind.block_bytes];
            rng.fill_bytes(&mut w);
            let acts = Acts::random(&mut rng, cols);
            check_neon(ty, &w, &acts, 3, "random bytes");
        }
    }
}

#[cfg(target_arch = "aarch64")]
#[test]
fn neon_kquants_match_scalar_on_edge_cases_and_real_rows() {
    for ty in NEON_TYPES {
        let kind = neon_kernels(ty).0;
        for (rows, cols) in [(1, 256), (3, 768), (2, 2048)] {
            for (what, w, acts) in edge_cases(kind, rows, cols) {
                check_neon(ty, &w, &acts, rows, what);
            }
        }
        // No rows.
        for (_, f) in neon_kernels(ty).1 {
            let acts = Acts::random(&mut Rng::new(1), 256);
            // SAFETY: as in `check_neon`.
            unsafe { f(&[], &acts.view(), &mut []) };
        }
    }
    for seed in 0..4 {
        let acts = real_like_acts(seed);
        let q4 = include_bytes!("data/kquants_real_q4_k.blocks");
        check_neon("q4_k", q4, &acts, 2, "real Q4_K rows");
        let q6 = include_bytes!("data/kquants_real_q6_k.blocks");
        check_neon("q6_k", q6, &acts, 2, "real Q6_K rows");
    }
}

#[cfg(target_arch = "aarch64")]
#[test]
fn neon_kquants_reject_short_weights_and_missing_sums() {
    let mut rng = Rng::new(6);
    for ty in NEON_TYPES {
        let (kind, kernels) = neon_kernels(ty);
        let w = kind.random_weights(&mut rng, 2, 512);
        let acts = Acts::random(&mut rng, 512);
        for (name, f) in kernels {
            let r = std::panic::catch_unwind(|| {
                let mut out = [0.0f32; 2];
                // SAFETY: as in `check_neon`.
                unsafe { f(&w[..w.len() - 1], &acts.view(), &mut out) };
            });
            assert!(r.is_err(), "{name} read past short weights");
            let r = std::panic::catch_unwind(|| {
                let view = ActsQ8 {
                    qs: &acts.qs,
                    d: &acts.d,
                    sums: &acts.sums[..31],
                };
                // SAFETY: as in `check_neon`.
                unsafe { f(&w, &view, &mut [0.0f32; 2]) };
            });
            assert!(r.is_err(), "{name} took 31 sums for 32 groups");
        }
    }
}
