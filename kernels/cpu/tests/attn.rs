//! Tests of the attention kernels over an f16 or int8 KV cache (`attn_scores_f16`,
//! `softmax_unnorm`, `attn_values_f16`, `attn_scores_q16`, `attn_values_i8`) of every tier this
//! machine can run against the scalar specification, on random shapes with tails in every
//! dimension, and of the specification itself against f64; and of `swiglu`, which shares the
//! SIMD `exp`.

mod common;
use common::Rng;
use edgellm_kernels::scalar;
use edgellm_kernels::{CpuFeatures, GgmlType, Kernels, Tier};
use half::f16;

// ---------------------------------------------------------------------------------------------
// Named tolerances

/// Two evaluations of the same n-term float sum in different orders (each with at most n
/// roundings of relative size `eps`) differ by at most `2 n eps Σ|terms|`; we use that bound.
fn sum_order_tol(n: usize, abs_terms: f32) -> f32 {
    2.0 * n.max(1) as f32 * f32::EPSILON * abs_terms + f32::MIN_POSITIVE
}

/// Relative error allowed between the SIMD `exp` (Cephes polynomial) and `libm::expf`, both
/// within about 1 ulp of the true value; measured at most 1.4 eps apart over [-87, 0].
const EXP_REL_TOL: f32 = 4.0 * f32::EPSILON;

/// Below `ln(f32::MIN_POSITIVE)` the SIMD `exp` gives 0 where `libm::expf` gives a subnormal.
const EXP_ABS_TOL: f32 = f32::MIN_POSITIVE;

// ---------------------------------------------------------------------------------------------
// Data

/// Every kernel set this machine can run (always includes scalar), and each one's set for a
/// model with ternary weights where that changes its attention kernels
/// ([`Kernels::for_weights`]).
fn tiers() -> Vec<Kernels> {
    let f = CpuFeatures::detect();
    let mut v = Vec::new();
    for k in Tier::ALL
        .into_iter()
        .filter_map(|t| Kernels::with_tier(t, &f).ok())
    {
        let wide = k.for_weights([GgmlType::T2]);
        v.push(k);
        if wide.attn_tier() != k.attn_tier() {
            v.push(wide);
        }
    }
    v
}

#[test]
fn attention_kernels_follow_the_weight_types() {
    let f = CpuFeatures::detect();
    for k in Tier::ALL
        .into_iter()
        .filter_map(|t| Kernels::with_tier(t, &f).ok())
    {
        // 256-bit gemvs only (Q4_1, Q8_0 on every tier): the tier's own attention.
        let plain = k.for_weights([GgmlType::Q4_1, GgmlType::Q8_0]);
        assert_eq!(plain.attn_tier(), k.attn_tier(), "{}", k.tier());
        // Ternary weights: 512-bit attention exactly where T2 runs a 512-bit gemv.
        let t2 = k.for_weights([GgmlType::Q8_0, GgmlType::T2]);
        if k.kernel_tier(GgmlType::T2) == Some(Tier::Avx512) {
            assert_eq!(t2.attn_tier(), Tier::Avx512, "{}", k.tier());
            assert!(t2.describe().to_string().ends_with("attention: avx512"));
        } else {
            assert_eq!(t2.attn_tier(), k.attn_tier(), "{}", k.tier());
        }
    }
}

/// How cached f16 values are chosen.
#[derive(Clone, Copy, Debug)]
enum Cache {
    /// Roughly normal, deviation 1 (what RoPE'd keys and values look like).
    Typical,
    /// Every value +0.
    Zero,
    /// f16 subnormals of both signs.
    Subnormal,
    /// Magnitudes near the largest f16, 65504.
    Large,
}

fn cache_bits(rng: &mut Rng, n: usize, c: Cache) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let sign = (rng.below(2) as u16) << 15;
            match c {
                Cache::Typical => f16::from_f32(rng.normal(1.0)).to_bits(),
                Cache::Zero => 0,
                Cache::Subnormal => sign | (1 + rng.below(0x3FF) as u16),
                Cache::Large => sign | (0x7800 + rng.below(0x3FF) as u16),
            }
        })
        .collect()
}

fn normal(rng: &mut Rng, n: usize, s: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal(s)).collect()
}

fn widen(v: &[u16]) -> Vec<f32> {
    v.iter().map(|&b| f16::from_bits(b).to_f32()).collect()
}

/// (g heads, head dimension, positions): the shapes of SmolLM2 (3 heads per KV head, 64) and
/// Qwen2.5-0.5B (7, 64), head sizes with tails of every width below 8 and 32, position counts
/// around the 4-position tile, and random ones.
fn shapes(rng: &mut Rng) -> Vec<(usize, usize, usize)> {
    let mut v = vec![
        (3, 64, 576),
        (7, 64, 300),
        (1, 128, 33),
        (4, 128, 9),
        (2, 64, 0),
        (3, 1, 5),
        (5, 8, 4),
        (3, 36, 7),
        (6, 40, 8),
        (2, 72, 3),
        (1, 100, 1),
        (8, 96, 13),
    ];
    for _ in 0..40 {
        v.push((1 + rng.below(9), 1 + rng.below(140), rng.below(70)));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Scores and weighted values: every tier within the sum-order tolerance of the spec

fn check_scores(c: Cache, seed: u64) {
    let mut rng = Rng::new(seed);
    for (g, hd, n) in shapes(&mut rng) {
        let q = normal(&mut rng, g * hd, 1.0);
        let keys = cache_bits(&mut rng, n * hd, c);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut want = vec![f32::NAN; g * n];
        scalar::attn_scores_f16(&q, &keys, hd, scale, &mut want);
        let k32 = widen(&keys);
        for k in tiers() {
            let mut got = vec![f32::NAN; g * n];
            k.attn_scores_f16(&q, &keys, hd, scale, &mut got);
            for h in 0..g {
                for t in 0..n {
                    let abs: f32 = (0..hd)
                        .map(|i| (q[h * hd + i] * k32[t * hd + i]).abs())
                        .sum();
                    let tol = sum_order_tol(hd, abs) * scale;
                    let (a, b) = (got[h * n + t], want[h * n + t]);
                    assert!(
                        (a - b).abs() <= tol,
                        "attn_scores_f16 tier {}: g={g} hd={hd} n={n} {c:?}: head {h} position \
                         {t}: {a} vs spec {b} (tolerance {tol})",
                        k.tier()
                    );
                }
            }
        }
    }
}

fn check_values(c: Cache, seed: u64) {
    let mut rng = Rng::new(seed);
    for (g, hd, n) in shapes(&mut rng) {
        // Softmax-like weights: positive, summing to about 1 per head.
        let weights: Vec<f32> = (0..g * n)
            .map(|_| rng.unit() * 2.0 / n.max(1) as f32)
            .collect();
        let values = cache_bits(&mut rng, n * hd, c);
        let mut want = vec![f32::NAN; g * hd];
        scalar::attn_values_f16(&weights, &values, hd, &mut want);
        let v32 = widen(&values);
        for k in tiers() {
            let mut got = vec![f32::NAN; g * hd];
            k.attn_values_f16(&weights, &values, hd, &mut got);
            for h in 0..g {
                for i in 0..hd {
                    let abs: f32 = (0..n)
                        .map(|t| (weights[h * n + t] * v32[t * hd + i]).abs())
                        .sum();
                    let tol = sum_order_tol(n, abs);
                    let (a, b) = (got[h * hd + i], want[h * hd + i]);
                    assert!(
                        (a - b).abs() <= tol,
                        "attn_values_f16 tier {}: g={g} hd={hd} n={n} {c:?}: head {h} dim {i}: \
                         {a} vs spec {b} (tolerance {tol})",
                        k.tier()
                    );
                }
            }
        }
    }
}

macro_rules! attn_tests {
    ($($name:ident: $cache:expr, $seed:literal;)*) => {$(
        mod $name {
            use super::*;

            #[test]
            fn scores_within_tolerance() {
                check_scores($cache, $seed);
            }

            #[test]
            fn values_within_tolerance() {
                check_values($cache, $seed + 1000);
            }
        }
    )*};
}

attn_tests! {
    typical: Cache::Typical, 1;
    zero: Cache::Zero, 2;
    subnormal: Cache::Subnormal, 3;
    large: Cache::Large, 4;
}

// ---------------------------------------------------------------------------------------------
// The int8 cache: the same kernels over int8 rows (every value of -128..=127 drawn)

fn int8_rows(rng: &mut Rng, n: usize) -> Vec<i8> {
    (0..n)
        .map(|_| (rng.below(256) as i32 - 128) as i8)
        .collect()
}

/// One integer scores case: heads, head size, positions, queries, keys.
type Q16Case = (usize, usize, usize, Vec<i16>, Vec<i8>);

/// The integer scores of every tier equal the specification's, and the specification equals
/// a plain i64 sum; on random shapes with any i16 queries and i8 keys, and with every key at
/// -128 and every query at -32768 or 32767 at the largest head dimension (the largest sums).
#[test]
fn int8_scores_are_exact() {
    let mut rng = Rng::new(11);
    let mut cases: Vec<Q16Case> = shapes(&mut rng)
        .into_iter()
        .map(|(g, hd, n)| {
            let q = (0..g * hd)
                .map(|_| (rng.below(65536) as i32 - 32768) as i16)
                .collect();
            (g, hd, n, q, int8_rows(&mut rng, n * hd))
        })
        .collect();
    let hd = scalar::Q16_MAX_HD;
    for (g, n, v) in [(3, 9, i16::MIN), (2, 5, i16::MAX)] {
        cases.push((g, hd, n, vec![v; g * hd], vec![-128; n * hd]));
    }
    for (g, hd, n, q, keys) in cases {
        let mut want = vec![i32::MIN; g * n];
        scalar::attn_scores_q16(&q, &keys, hd, &mut want);
        for h in 0..g {
            for t in 0..n {
                let sum: i64 = (0..hd)
                    .map(|i| i64::from(q[h * hd + i]) * i64::from(keys[t * hd + i]))
                    .sum();
                assert_eq!(i64::from(want[h * n + t]), sum, "spec g={g} hd={hd} n={n}");
            }
        }
        for k in tiers() {
            let mut got = vec![i32::MIN; g * n];
            k.attn_scores_q16(&q, &keys, hd, &mut got);
            assert_eq!(
                got,
                want,
                "attn_scores_q16 tier {}: g={g} hd={hd} n={n}",
                k.attn_tier()
            );
        }
    }
}

#[test]
#[should_panic(expected = "head dimension 512 above 511")]
fn int8_scores_refuse_a_head_dimension_that_could_overflow() {
    scalar::attn_scores_q16(&[0; 512], &[0; 512], 512, &mut [0; 1]);
}

/// Queries enter the integer scores within half a step of 1/32767 of their row's largest
/// magnitude, and a row of zeros stays zero with scale 0.
#[test]
fn query_rows_round_to_int16() {
    let mut rng = Rng::new(13);
    let x = normal(&mut rng, 128, 3.0);
    let mut q = vec![0i16; 128];
    let d = scalar::quantize_row_i16(&x, &mut q);
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_eq!(d, amax / 32767.0);
    assert!(q.iter().any(|&v| v.abs() == 32767));
    for (a, &b) in x.iter().zip(&q) {
        assert!(
            (a - d * f32::from(b)).abs() <= 0.5 * d * 1.001,
            "{a} came back as {}",
            d * f32::from(b)
        );
    }
    assert_eq!(scalar::quantize_row_i16(&[0.0; 4], &mut q[..4]), 0.0);
    assert_eq!(&q[..4], &[0; 4]);
}

#[test]
fn int8_values_within_tolerance() {
    let mut rng = Rng::new(12);
    for (g, hd, n) in shapes(&mut rng) {
        let weights: Vec<f32> = (0..g * n)
            .map(|_| rng.unit() * 2.0 / n.max(1) as f32)
            .collect();
        let values = int8_rows(&mut rng, n * hd);
        let mut want = vec![f32::NAN; g * hd];
        scalar::attn_values_i8(&weights, &values, hd, &mut want);
        for k in tiers() {
            let mut got = vec![f32::NAN; g * hd];
            k.attn_values_i8(&weights, &values, hd, &mut got);
            for h in 0..g {
                for i in 0..hd {
                    let abs: f32 = (0..n)
                        .map(|t| (weights[h * n + t] * values[t * hd + i] as f32).abs())
                        .sum();
                    let tol = sum_order_tol(n, abs);
                    let (a, b) = (got[h * hd + i], want[h * hd + i]);
                    assert!(
                        (a - b).abs() <= tol,
                        "attn_values_i8 tier {}: g={g} hd={hd} n={n}: head {h} dim {i}: {a} vs \
                         spec {b} (tolerance {tol})",
                        k.tier()
                    );
                }
            }
        }
    }
}

#[test]
fn int8_rows_round_to_nearest_within_half_a_step() {
    let mut rng = Rng::new(13);
    for hd in [1, 7, 64, 128] {
        let x = normal(&mut rng, hd, 3.0);
        let mut q = vec![0i8; hd];
        let d = scalar::quantize_row_i8(&x, &mut q);
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(d, amax / 127.0);
        for (&xi, &qi) in x.iter().zip(&q) {
            assert!(
                (xi - qi as f32 * d).abs() <= d * 0.5 * (1.0 + 1e-5),
                "hd {hd}: {xi} -> {qi} x {d}"
            );
        }
        // The largest magnitude maps to +-127.
        assert!(q.iter().any(|&v| v.abs() == 127), "hd {hd}: {q:?}");
    }
    // A row of zeros: scale 0, values 0.
    let mut q = [5i8; 4];
    assert_eq!(scalar::quantize_row_i8(&[0.0; 4], &mut q), 0.0);
    assert_eq!(q, [0; 4]);
    // Ties go to even: 0.5 and 2.5 steps.
    let mut q = [0i8; 3];
    scalar::quantize_row_i8(&[127.0, 0.5, 2.5], &mut q);
    assert_eq!(q, [127, 0, 2]);
}

// ---------------------------------------------------------------------------------------------
// Softmax blocks: the maximum exact, `exp` and the sum within tolerance

fn check_softmax(x: &[f32], what: &str) {
    let mut want = x.to_vec();
    let (wm, ws) = scalar::softmax_unnorm(&mut want);
    for k in tiers() {
        let mut got = x.to_vec();
        let (gm, gs) = k.softmax_unnorm(&mut got);
        let tier = k.tier();
        assert_eq!(gm.to_bits(), wm.to_bits(), "{what} tier {tier}: max");
        for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
            let tol = EXP_REL_TOL * b + EXP_ABS_TOL;
            assert!(
                (a - b).abs() <= tol,
                "{what} tier {tier}: exp at {i} (x = {}): {a} vs spec {b} (tolerance {tol})",
                x[i]
            );
        }
        let tol = sum_order_tol(x.len(), ws) + EXP_REL_TOL * ws + x.len() as f32 * EXP_ABS_TOL;
        assert!(
            (gs - ws).abs() <= tol,
            "{what} tier {tier}: sum {gs} vs spec {ws} (tolerance {tol})"
        );
    }
}

#[test]
fn softmax_unnorm_within_tolerance() {
    let mut rng = Rng::new(20);
    for n in (0..40).chain([63, 64, 65, 300, 577]) {
        for s in [0.1f32, 3.0, 30.0] {
            let x = normal(&mut rng, n, s);
            check_softmax(&x, &format!("softmax n={n} deviation {s}"));
        }
    }
}

#[test]
fn softmax_unnorm_edge_cases() {
    check_softmax(&[], "empty");
    check_softmax(&[5.0], "one value");
    check_softmax(&[-3.0; 19], "all equal");
    // Differences from the maximum across the whole range, down to where exp underflows.
    let spread: Vec<f32> = (0..200).map(|i| -(i as f32) * 0.52).collect();
    check_softmax(&spread, "spread to -103");
    let huge: Vec<f32> = (0..37)
        .map(|i| if i % 5 == 0 { 1e30 } else { -1e30 })
        .collect();
    check_softmax(&huge, "huge magnitudes");
    let mut empty: [f32; 0] = [];
    for k in tiers() {
        assert_eq!(k.softmax_unnorm(&mut empty), (f32::NEG_INFINITY, 0.0));
    }
}

#[test]
fn simd_exp_within_tolerance_of_f64() {
    // Dense sweep of [-90, 0] through softmax blocks whose maximum is 0.
    let mut x: Vec<f32> = (0..=90_000).map(|i| -(i as f32) * 1e-3).collect();
    let xs = x.clone();
    for k in tiers() {
        x.copy_from_slice(&xs);
        let (m, _) = k.softmax_unnorm(&mut x);
        assert_eq!(m, 0.0);
        for (&e, &v) in x.iter().zip(&xs) {
            let want = (v as f64).exp();
            let err = (e as f64 - want).abs();
            // Each of libm and the polynomial is within about 1 ulp of the truth.
            let tol = (EXP_REL_TOL as f64 / 2.0) * want + EXP_ABS_TOL as f64;
            assert!(
                err <= tol,
                "exp({v}) tier {}: {e} vs {want} (tolerance {tol:e})",
                k.tier()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The specification against f64, and blocks that combine

#[test]
fn split_blocks_combine_to_the_whole_attention() {
    let mut rng = Rng::new(30);
    let (g, hd, n) = (3, 64, 203);
    let q = normal(&mut rng, g * hd, 1.0);
    let keys = cache_bits(&mut rng, n * hd, Cache::Typical);
    let values = cache_bits(&mut rng, n * hd, Cache::Typical);
    let scale = 1.0 / (hd as f32).sqrt();
    let (k32, v32) = (widen(&keys), widen(&values));
    // f64 reference: softmax(q·k * scale)·v per head.
    let mut want = vec![0f64; g * hd];
    for h in 0..g {
        let s: Vec<f64> = (0..n)
            .map(|t| {
                (0..hd)
                    .map(|i| q[h * hd + i] as f64 * k32[t * hd + i] as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
        for t in 0..n {
            let p = (s[t] - m).exp() / z;
            for i in 0..hd {
                want[h * hd + i] += p * v32[t * hd + i] as f64;
            }
        }
    }
    for k in tiers() {
        for cut in [n, 1, 64, 100, 202] {
            // Blocks 0..cut and cut..n, combined with their maxima and sums.
            let mut parts = Vec::new();
            for r in [0..cut, cut..n] {
                let len = r.len();
                let mut sc = vec![0f32; g * len];
                k.attn_scores_f16(&q, &keys[r.start * hd..r.end * hd], hd, scale, &mut sc);
                let ml: Vec<(f32, f32)> = sc
                    .chunks_mut(len.max(1))
                    .map(|row| k.softmax_unnorm(row))
                    .collect();
                let mut o = vec![f32::NAN; g * hd];
                k.attn_values_f16(&sc, &values[r.start * hd..r.end * hd], hd, &mut o);
                parts.push((ml, o, len));
            }
            for h in 0..g {
                let big = parts
                    .iter()
                    .filter(|p| p.2 > 0)
                    .map(|p| p.0[h].0)
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut l = 0f32;
                let mut o = vec![0f32; hd];
                for (ml, po, len) in &parts {
                    if *len == 0 {
                        continue;
                    }
                    let c = (ml[h].0 - big).exp();
                    l += c * ml[h].1;
                    for i in 0..hd {
                        o[i] += c * po[h * hd + i];
                    }
                }
                for i in 0..hd {
                    let got = o[i] / l;
                    let w = want[h * hd + i];
                    // f16 inputs are exact in f64; the f32 sums of ~200 terms of size ~1 and the
                    // exp keep the result within 1e-5 of the f64 value.
                    assert!(
                        (got as f64 - w).abs() <= 1e-5,
                        "tier {} cut {cut}: head {h} dim {i}: {got} vs f64 {w}",
                        k.tier()
                    );
                }
            }
        }
    }
}

#[test]
fn bad_shapes_panic_on_every_tier() {
    for k in tiers() {
        let q = [0f32; 128];
        let keys = [0u16; 192];
        type Case<'a> = (&'static str, Box<dyn Fn() + 'a>);
        let cases: [Case<'_>; 5] = [
            (
                "hd 0",
                Box::new(|| k.attn_scores_f16(&q, &keys, 0, 1.0, &mut [0.0; 6])),
            ),
            (
                "q not whole rows",
                Box::new(|| k.attn_scores_f16(&q[..100], &keys, 64, 1.0, &mut [0.0; 6])),
            ),
            (
                "scores too short",
                Box::new(|| k.attn_scores_f16(&q, &keys, 64, 1.0, &mut [0.0; 5])),
            ),
            (
                "weights too long",
                Box::new(|| k.attn_values_f16(&[0.0; 7], &keys, 64, &mut [0.0; 128])),
            ),
            (
                "values not whole rows",
                Box::new(|| k.attn_values_f16(&[0.0; 6], &keys[..190], 64, &mut [0.0; 128])),
            ),
        ];
        for (what, f) in cases {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            assert!(r.is_err(), "tier {}: {what} did not panic", k.tier());
        }
    }
}

#[test]
fn f32_to_f16_rounds_to_nearest_even() {
    let one = 1.0f32;
    let ulp = 2f32.powi(-10); // f16 spacing at 1
    let cases = [
        (one + ulp / 2.0, one),                   // tie, rounds to even (1.0)
        (one + 3.0 * ulp / 2.0, one + 2.0 * ulp), // tie, rounds to even (1 + 2 ulp)
        (one + ulp * 0.51, one + ulp),
        (65504.0, 65504.0),
        (65519.0, 65504.0),
        (65520.0, f32::INFINITY), // halfway to the next binade rounds away: overflow
        (-0.0, -0.0),
        (1e-8, 0.0),
        (6e-8, 5.960_464_5e-8), // the smallest f16 subnormal
    ];
    let src: Vec<f32> = cases.iter().map(|c| c.0).collect();
    let mut dst = vec![0u16; src.len()];
    scalar::f32_to_f16_row(&src, &mut dst);
    for ((x, want), &b) in cases.iter().zip(&dst) {
        let got = f16::from_bits(b).to_f32();
        assert_eq!(got.to_bits(), want.to_bits(), "{x} -> {got}, want {want}");
    }
    // A whole row (converted several values at a time) rounds each value as `f16::from_f32`
    // does, over every magnitude an f16 holds and past it, with a tail of odd length.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let row: Vec<f32> = (0..1027)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let e = (state % 44) as i32 - 28; // 2^-28 .. 2^15
            let m = 1.0 + (state >> 40) as f32 / (1u64 << 24) as f32;
            if state & 1 == 0 {
                m * 2f32.powi(e)
            } else {
                -m * 2f32.powi(e)
            }
        })
        .collect();
    let mut got = vec![0u16; row.len()];
    scalar::f32_to_f16_row(&row, &mut got);
    for (i, (&x, &b)) in row.iter().zip(&got).enumerate() {
        assert_eq!(b, f16::from_f32(x).to_bits(), "at {i}: {x:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: bit-exact with the specification (`libm::expf`) on every tier

fn check_swiglu(g: &[f32], u: &[f32], what: &str) {
    let mut want = g.to_vec();
    scalar::swiglu(&mut want, u);
    for k in tiers() {
        let mut got = g.to_vec();
        k.swiglu(&mut got, u);
        let tier = k.tier();
        for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan(),
                "{what} tier {tier}: at {i} (g = {:e}, u = {}): {a:e} vs spec {b:e}",
                g[i],
                u[i]
            );
        }
    }
}

#[test]
fn swiglu_is_bit_exact() {
    let mut rng = Rng::new(31);
    for n in (0..20).chain([31, 32, 33, 576, 1537]) {
        for s in [0.1f32, 3.0, 30.0] {
            let g = normal(&mut rng, n, s);
            let u = normal(&mut rng, n, 2.0);
            check_swiglu(&g, &u, &format!("swiglu n={n} deviation {s}"));
        }
    }
    // Where exp over- and underflows, the edges of its argument ranges, zeros of both signs,
    // subnormals, NaN and infinities.
    let g = [
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-40,
        -1e-40,
        6.1e-5,
        -6.1e-5,
        6.2e-5,
        -6.2e-5,
        0.3465,
        -0.3465,
        0.3466,
        -0.3466,
        1.0397,
        -1.0397,
        1.0398,
        -1.0398,
        87.0,
        -87.0,
        87.3365,
        -87.3365,
        87.3366,
        -87.3366,
        88.5,
        -88.5,
        88.8,
        -88.8,
        100.0,
        -100.0,
        104.0,
        -104.0,
        1e30,
        -1e30,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        5.0,
        -5.0,
    ];
    let u: Vec<f32> = (0..g.len()).map(|i| [1.0, -3.0, 0.5, 1e4][i % 4]).collect();
    check_swiglu(&g, &u, "edge values");
}

#[test]
fn swiglu_is_bit_exact_over_a_sweep_of_every_magnitude() {
    // Every 127th bit pattern of f32 (34 million values: all exponents, both signs), in slices
    // of 4096, against one `u`.
    let all: Vec<f32> = (0..=u32::MAX / 127)
        .map(|i| f32::from_bits(i * 127))
        .collect();
    let u = vec![1.5f32; 4096];
    for g in all.chunks(4096) {
        check_swiglu(g, &u[..g.len()], "sweep");
    }
}
