//! Tests of every legacy-type and float kernel of every tier this machine can run against the
//! scalar specification, and of the scalar dequantizers against the GGUF reference values in
//! `tests/data` (made by `gen_legacy_fixture.py` with the `gguf` Python package).

mod common;
use edgellm_kernels::scalar;
use edgellm_kernels::{
    ActsQ8, ActsQ8Mut, CpuFeatures, GgmlType, KernelError, Kernels, Tier, QK, QS,
};
use half::f16;

// ---------------------------------------------------------------------------------------------
// Named tolerances

/// Two evaluations of the same n-term float sum in different orders (each with at most n
/// roundings of relative size `eps`) differ by at most `2 n eps Σ|terms|`; we use that bound.
fn sum_order_tol(n: usize, abs_terms: f32) -> f32 {
    2.0 * n.max(1) as f32 * f32::EPSILON * abs_terms + f32::MIN_POSITIVE
}

/// int8 activations round each `x` by at most `d/2` of its group's scale, so a quantized gemv row
/// differs from the exact one by at most `Σ_g (d_g / 2) Σ_{c in g} |W[c]|` (groups of [`QS`]
/// values), plus the float rounding of both sums.
fn act_q8_tol(row: &[f32], x: &[f32], acts: &ActsQ8<'_>) -> f32 {
    let mut quant = 0.0f32;
    let mut abs_terms = 0.0f32;
    for (g, (wg, xg)) in row.chunks(QS).zip(x.chunks(QS)).enumerate() {
        let wsum: f32 = wg.iter().map(|w| w.abs()).sum();
        quant += acts.d[g] * 0.5 * wsum;
        abs_terms += wg.iter().zip(xg).map(|(w, x)| (w * x).abs()).sum::<f32>();
    }
    1.001 * quant + 4.0 * sum_order_tol(row.len(), abs_terms + quant)
}

// ---------------------------------------------------------------------------------------------
// Deterministic random data

use common::Rng;

/// How the f16 scales (`d`, `m`) of random blocks are chosen.
#[derive(Clone, Copy, Debug)]
enum Scales {
    /// Ordinary scales of both signs.
    Typical,
    /// Every scale is +0.
    Zero,
    /// Every scale is negative.
    Negative,
    /// Every scale is an f16 subnormal.
    Subnormal,
    /// Every scale is ±65504, the largest f16.
    Max,
}

fn scale_bits(rng: &mut Rng, s: Scales) -> u16 {
    match s {
        Scales::Typical => f16::from_f32(rng.normal(0.05)).to_bits(),
        Scales::Zero => 0,
        Scales::Negative => f16::from_f32(-(rng.unit() * 0.1 + 1e-3)).to_bits(),
        Scales::Subnormal => (1 + rng.below(0x3FF) as u16) | ((rng.below(2) as u16) << 15),
        Scales::Max => 0x7BFF | ((rng.below(2) as u16) << 15),
    }
}

/// Offsets of the f16 scale fields in a block.
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
        _ => &[0],
    }
}

/// How the quantized values of random blocks are chosen.
#[derive(Clone, Copy, Debug)]
enum Quants {
    Random,
    /// Every byte zero (Q4_0: all -8, Q8_0: all 0...).
    AllZero,
    /// Every byte 0xFF (largest unsigned nibbles and high bits, Q8_0 -1).
    AllOnes,
    /// Q8_0 bytes at the extremes -128 and 127.
    Extremes,
}

fn random_rows(
    rng: &mut Rng,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    s: Scales,
    q: Quants,
) -> Vec<u8> {
    let bb = ty.block_bytes();
    let nblocks = rows * cols / QK;
    let mut w = vec![0u8; nblocks * bb];
    for blk in w.chunks_exact_mut(bb) {
        match q {
            Quants::Random => rng.fill_bytes(blk),
            Quants::AllZero => blk.fill(0),
            Quants::AllOnes => blk.fill(0xFF),
            Quants::Extremes => {
                for v in blk.iter_mut() {
                    *v = if rng.below(2) == 0 { 0x80 } else { 0x7F };
                }
            }
        }
        for &off in scale_fields(ty) {
            blk[off..off + 2].copy_from_slice(&scale_bits(rng, s).to_le_bytes());
        }
    }
    w
}

/// How random activations are chosen.
#[derive(Clone, Copy, Debug)]
enum Acts {
    Typical,
    Zero,
    /// Large values of both signs (1e4), so `q` reaches ±127.
    Large,
    /// f32 subnormals and tiny normals: blocks with `d` below `f32::MIN_POSITIVE` quantize to 0.
    Tiny,
    /// A mix of exact halves: ties that must round to even.
    Ties,
}

fn random_x(rng: &mut Rng, n: usize, a: Acts) -> Vec<f32> {
    (0..n)
        .map(|i| match a {
            Acts::Typical => rng.normal(1.0),
            Acts::Zero => 0.0,
            Acts::Large => (if rng.below(2) == 0 { 1e4 } else { -1e4 }) * (0.5 + rng.unit()),
            Acts::Tiny => {
                f32::from_bits(rng.below(0x0100_0000) as u32) * if i % 2 == 0 { 1.0 } else { -1.0 }
            }
            // amax 127 gives d = 1 and id = 1, so x = k + 0.5 is an exact tie.
            Acts::Ties => {
                if i % QS == 0 {
                    127.0
                } else {
                    (rng.below(200) as f32 - 100.0) + 0.5
                }
            }
        })
        .collect()
}

/// Owned quantized activations.
struct OwnedActs {
    qs: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<i32>,
}

impl OwnedActs {
    fn new(n: usize) -> Self {
        OwnedActs {
            qs: vec![0; n],
            d: vec![0.0; n / QS],
            sums: vec![0; n / QS],
        }
    }
    fn view(&self) -> ActsQ8<'_> {
        ActsQ8 {
            qs: &self.qs,
            d: &self.d,
            sums: &self.sums,
        }
    }
    fn quantize(k: &Kernels, x: &[f32]) -> Self {
        let mut a = Self::new(x.len());
        k.quantize_acts(
            x,
            &mut ActsQ8Mut {
                qs: &mut a.qs,
                d: &mut a.d,
                sums: &mut a.sums,
            },
        );
        a
    }
}

/// Every kernel set this machine can run (always includes scalar).
use common::tiers;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------------
// Quantized gemv: every tier bit-exact with the scalar spec

/// Shapes: fixed ones (the SmolLM2 dims, row counts around the 4-, 8- and 16-row steps of the
/// SIMD kernels) and random ones.
fn shapes(rng: &mut Rng) -> Vec<(usize, usize)> {
    let mut v = vec![
        (0, 32),
        (1, 32),
        (2, 64),
        (3, 96),
        (4, 32),
        (5, 576),
        (7, 1536),
        (9, 576),
        (3, 0),
        (16, 64),
        (17, 576),
        (31, 96),
        (40, 1536),
    ];
    for _ in 0..24 {
        v.push((rng.below(40), QK * (1 + rng.below(48))));
    }
    v
}

fn check_gemv_q8(ty: GgmlType, s: Scales, q: Quants, a: Acts, seed: u64) {
    let spec = Kernels::scalar();
    let mut rng = Rng::new(seed ^ ty.id() as u64);
    for (rows, cols) in shapes(&mut rng) {
        let w = random_rows(&mut rng, ty, rows, cols, s, q);
        let x = random_x(&mut rng, cols, a);
        let acts = OwnedActs::quantize(&spec, &x);
        let mut want = vec![f32::NAN; rows];
        spec.gemv(ty, &w, &x, &acts.view(), &mut want);
        for k in tiers() {
            let mut got = vec![f32::NAN; rows];
            k.gemv(ty, &w, &x, &acts.view(), &mut got);
            assert_eq!(
                bits(&got),
                bits(&want),
                "{ty} gemv on tier {} differs from the spec: {rows}x{cols}, {s:?} scales, {q:?} \
                 quants, {a:?} acts\n got {got:?}\nwant {want:?}",
                k.tier()
            );
        }
    }
}

/// `Kernels::gemm` of `nb` tokens on every tier gives, bit for bit, the spec's gemv of each
/// token (the batched 4-bit kernels put eight tokens in a vector and arrange 1024 columns at a
/// time: token counts around 8 and rows of more than 1024 columns are in the shapes).
fn check_gemm_q8(ty: GgmlType, s: Scales, q: Quants, a: Acts, seed: u64) {
    let spec = Kernels::scalar();
    let mut rng = Rng::new(seed ^ ty.id() as u64 ^ 0x6e6d);
    let mut shapes = shapes(&mut rng);
    shapes.extend([(5, 2048), (3, 1056), (2, 4096)]);
    for (i, (rows, cols)) in shapes.into_iter().enumerate() {
        let nb = [1, 2, 7, 8, 9, 16, 17][i % 7];
        let w = random_rows(&mut rng, ty, rows, cols, s, q);
        let x = random_x(&mut rng, nb * cols, a);
        let acts = OwnedActs::quantize(&spec, &x);
        let g = cols / QS;
        let mut want = vec![f32::NAN; nb * rows];
        for t in 0..nb {
            let at = ActsQ8 {
                qs: &acts.qs[t * cols..(t + 1) * cols],
                d: &acts.d[t * g..(t + 1) * g],
                sums: &acts.sums[t * g..(t + 1) * g],
            };
            let xt = &x[t * cols..(t + 1) * cols];
            spec.gemv(ty, &w, xt, &at, &mut want[t * rows..(t + 1) * rows]);
        }
        for k in tiers() {
            let mut got = vec![f32::NAN; nb * rows];
            k.gemm(ty, &w, &x, &acts.view(), nb, &mut got);
            assert_eq!(
                bits(&got),
                bits(&want),
                "{ty} gemm of {nb} tokens on tier {} (batched: {}) differs from the spec: \
                 {rows}x{cols}, {s:?} scales, {q:?} quants, {a:?} acts",
                k.tier(),
                k.gemm_batches(ty)
            );
        }
    }
}

fn check_gemv_vs_exact(ty: GgmlType, seed: u64) {
    let mut rng = Rng::new(seed ^ ty.id() as u64);
    for k in tiers() {
        for (rows, cols) in shapes(&mut rng) {
            let w = random_rows(&mut rng, ty, rows, cols, Scales::Typical, Quants::Random);
            let x = random_x(&mut rng, cols, Acts::Typical);
            let acts = OwnedActs::quantize(&k, &x);
            let (mut fast, mut exact) = (vec![0.0; rows], vec![0.0; rows]);
            let mut scratch = vec![0.0; cols];
            k.gemv(ty, &w, &x, &acts.view(), &mut fast);
            k.gemv_exact(ty, &w, &x, &mut exact, &mut scratch);
            let rb = w.len() / rows.max(1);
            for r in 0..rows {
                let mut row = vec![0.0; cols];
                scalar::dequantize_row(ty, &w[r * rb..(r + 1) * rb], &mut row).unwrap();
                let tol = act_q8_tol(&row, &x, &acts.view());
                assert!(
                    (fast[r] - exact[r]).abs() <= tol,
                    "{ty} tier {}: row {r} of {rows}x{cols}: int8 path {} vs exact {} (tolerance {tol})",
                    k.tier(),
                    fast[r],
                    exact[r]
                );
            }
        }
    }
}

macro_rules! gemv_q8_tests {
    ($($name:ident: $ty:expr;)*) => {$(
        mod $name {
            use super::*;
            const TY: GgmlType = $ty;

            #[test]
            fn random_bit_exact() {
                check_gemv_q8(TY, Scales::Typical, Quants::Random, Acts::Typical, 1);
            }
            #[test]
            fn all_zero_blocks() {
                check_gemv_q8(TY, Scales::Typical, Quants::AllZero, Acts::Typical, 2);
                check_gemv_q8(TY, Scales::Typical, Quants::Random, Acts::Zero, 3);
            }
            #[test]
            fn max_magnitude() {
                check_gemv_q8(TY, Scales::Max, Quants::AllOnes, Acts::Large, 4);
                check_gemv_q8(TY, Scales::Max, Quants::Extremes, Acts::Large, 5);
                check_gemv_q8(TY, Scales::Typical, Quants::Extremes, Acts::Large, 6);
            }
            #[test]
            fn zero_scale() {
                check_gemv_q8(TY, Scales::Zero, Quants::Random, Acts::Typical, 7);
            }
            #[test]
            fn negative_scales() {
                check_gemv_q8(TY, Scales::Negative, Quants::Random, Acts::Typical, 8);
            }
            #[test]
            fn subnormal_scales() {
                check_gemv_q8(TY, Scales::Subnormal, Quants::Random, Acts::Typical, 9);
            }
            #[test]
            fn tiny_and_tie_activations() {
                check_gemv_q8(TY, Scales::Typical, Quants::Random, Acts::Tiny, 10);
                check_gemv_q8(TY, Scales::Typical, Quants::Random, Acts::Ties, 11);
            }
            #[test]
            fn close_to_exact_path() {
                check_gemv_vs_exact(TY, 12);
            }
            #[test]
            fn gemm_is_gemv_per_token() {
                check_gemm_q8(TY, Scales::Typical, Quants::Random, Acts::Typical, 13);
                check_gemm_q8(TY, Scales::Max, Quants::Extremes, Acts::Large, 14);
                check_gemm_q8(TY, Scales::Subnormal, Quants::Random, Acts::Ties, 15);
                check_gemm_q8(TY, Scales::Negative, Quants::AllOnes, Acts::Tiny, 16);
            }
        }
    )*};
}

gemv_q8_tests! {
    q4_0: GgmlType::Q4_0;
    q4_1: GgmlType::Q4_1;
    q5_0: GgmlType::Q5_0;
    q5_1: GgmlType::Q5_1;
    q8_0: GgmlType::Q8_0;
}

// ---------------------------------------------------------------------------------------------
// Float-weight gemv: within the sum-order tolerance of the spec

fn float_row_bytes(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
    let mut w = Vec::with_capacity(n * ty.block_bytes());
    for _ in 0..n {
        let v = rng.normal(0.5);
        match ty {
            GgmlType::F32 => w.extend_from_slice(&v.to_le_bytes()),
            GgmlType::F16 => w.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes()),
            _ => w.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes()),
        }
    }
    w
}

fn check_gemv_float(ty: GgmlType, seed: u64) {
    let spec = Kernels::scalar();
    let mut rng = Rng::new(seed);
    let mut cases = vec![
        (1, 0),
        (2, 1),
        (3, 7),
        (4, 8),
        (5, 31),
        (1, 32),
        (6, 33),
        (2, 576),
        (3, 1536),
    ];
    for _ in 0..40 {
        cases.push((rng.below(9), rng.below(300)));
    }
    for (rows, cols) in cases {
        let w = float_row_bytes(&mut rng, ty, rows * cols);
        let x = random_x(&mut rng, cols, Acts::Typical);
        let dummy = OwnedActs::new(0);
        let mut want = vec![f32::NAN; rows];
        spec.gemv(ty, &w, &x, &dummy.view(), &mut want);
        let mut row = vec![0.0; cols];
        for k in tiers() {
            let mut got = vec![f32::NAN; rows];
            k.gemv(ty, &w, &x, &dummy.view(), &mut got);
            for r in 0..rows {
                let rb = cols * ty.block_bytes();
                scalar::dequantize_row(ty, &w[r * rb..(r + 1) * rb], &mut row).unwrap();
                let abs: f32 = row.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
                let tol = sum_order_tol(cols, abs);
                assert!(
                    (got[r] - want[r]).abs() <= tol,
                    "{ty} gemv tier {}: row {r} of {rows}x{cols}: {} vs spec {} (tolerance {tol})",
                    k.tier(),
                    got[r],
                    want[r]
                );
            }
        }
    }
}

macro_rules! gemv_float_tests {
    ($($name:ident: $ty:expr;)*) => {$(
        #[test]
        fn $name() {
            check_gemv_float($ty, 100 + $ty.id() as u64);
        }
    )*};
}

gemv_float_tests! {
    gemv_f32w_f32: GgmlType::F32;
    gemv_f32w_f16: GgmlType::F16;
    gemv_f32w_bf16: GgmlType::BF16;
}

#[test]
fn dot_f32_within_tolerance() {
    let mut rng = Rng::new(200);
    for n in (0..70).chain([576, 1536, 4097]) {
        let a = random_x(&mut rng, n, Acts::Typical);
        let b = random_x(&mut rng, n, Acts::Typical);
        let want = scalar::dot_f32(&a, &b);
        let abs: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
        for k in tiers() {
            let got = k.dot_f32(&a, &b);
            let tol = sum_order_tol(n, abs);
            assert!(
                (got - want).abs() <= tol,
                "dot_f32 tier {} n={n}: {got} vs {want} (tol {tol})",
                k.tier()
            );
        }
    }
}

#[test]
fn axpy_f32_bit_exact() {
    let mut rng = Rng::new(201);
    for n in (0..40).chain([576, 1537]) {
        let x = random_x(&mut rng, n, Acts::Typical);
        let y0 = random_x(&mut rng, n, Acts::Typical);
        let a = rng.normal(2.0);
        let mut want = y0.clone();
        scalar::axpy_f32(a, &x, &mut want);
        for k in tiers() {
            let mut got = y0.clone();
            k.axpy_f32(a, &x, &mut got);
            assert_eq!(bits(&got), bits(&want), "axpy_f32 tier {} n={n}", k.tier());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Activation quantizer: bit-exact on every tier, and the rule itself

#[test]
fn quantize_acts_bit_exact() {
    let spec = Kernels::scalar();
    let mut rng = Rng::new(300);
    for a in [
        Acts::Typical,
        Acts::Zero,
        Acts::Large,
        Acts::Tiny,
        Acts::Ties,
    ] {
        for blocks in [0, 1, 2, 3, 18, 48] {
            let x = random_x(&mut rng, blocks * QK, a);
            let want = OwnedActs::quantize(&spec, &x);
            for k in tiers() {
                let got = OwnedActs::quantize(&k, &x);
                assert_eq!(
                    got.qs,
                    want.qs,
                    "quantize_acts qs, tier {}, {a:?}",
                    k.tier()
                );
                assert_eq!(
                    bits(&got.d),
                    bits(&want.d),
                    "quantize_acts d, tier {}, {a:?}",
                    k.tier()
                );
                assert_eq!(
                    got.sums,
                    want.sums,
                    "quantize_acts sums, tier {}, {a:?}",
                    k.tier()
                );
            }
        }
    }
}

#[test]
fn quantize_acts_rule() {
    let spec = Kernels::scalar();
    let mut rng = Rng::new(301);
    for a in [
        Acts::Typical,
        Acts::Large,
        Acts::Tiny,
        Acts::Ties,
        Acts::Zero,
    ] {
        let x = random_x(&mut rng, 8 * QK, a);
        let q = OwnedActs::quantize(&spec, &x);
        assert_eq!((q.d.len(), q.sums.len()), (8 * QK / QS, 8 * QK / QS));
        for (g, xg) in x.chunks(QS).enumerate() {
            let amax = xg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let qg = &q.qs[g * QS..(g + 1) * QS];
            assert_eq!(
                q.sums[g],
                qg.iter().map(|&v| v as i32).sum::<i32>(),
                "sums[{g}]"
            );
            assert!(qg.iter().all(|&v| v != -128), "-128 produced");
            if d < f32::MIN_POSITIVE {
                assert_eq!(q.d[g], 0.0);
                assert!(qg.iter().all(|&v| v == 0));
                continue;
            }
            assert_eq!(q.d[g].to_bits(), d.to_bits());
            for (&v, &xv) in qg.iter().zip(xg) {
                assert_eq!(v as f32, (xv * (1.0 / d)).round_ties_even(), "x = {xv}");
            }
        }
    }
    // Ties go to even: amax 127 gives d = 1.
    let mut x = [0.0f32; QK];
    x[0] = 127.0;
    x[1..6].copy_from_slice(&[2.5, 3.5, -2.5, -0.5, 0.5]);
    let q = OwnedActs::quantize(&spec, &x);
    assert_eq!(&q.qs[..6], &[127, 2, 4, -2, 0, 0]);
    // The second group of the block is all zeros: its own scale is 0, the first group's is 1.
    assert_eq!((q.d[0], q.d[1], q.sums[1]), (1.0, 0.0, 0));
}

/// Mixed groups inside one block: a zero (or subnormal-scale) half next to an ordinary half, on
/// every tier, bit-exact with the spec.
#[test]
fn quantize_acts_zero_half_next_to_normal_half() {
    let spec = Kernels::scalar();
    let mut rng = Rng::new(302);
    let mut x = random_x(&mut rng, 4 * QK, Acts::Typical);
    x[..QS].fill(0.0); // block 0: zero first half
    x[QK + QS..2 * QK].fill(1e-40); // block 1: subnormal second half
    x[2 * QK..2 * QK + QS].fill(-0.0); // block 2: negative zeros
    let want = OwnedActs::quantize(&spec, &x);
    assert_eq!((want.d[0], want.d[3], want.d[4]), (0.0, 0.0, 0.0));
    assert!(want.d[1] > 0.0 && want.d[2] > 0.0 && want.d[5] > 0.0);
    assert!(want.qs[..QS].iter().all(|&v| v == 0));
    for k in tiers() {
        let got = OwnedActs::quantize(&k, &x);
        assert_eq!(got.qs, want.qs, "tier {}", k.tier());
        assert_eq!(bits(&got.d), bits(&want.d), "tier {}", k.tier());
        assert_eq!(got.sums, want.sums, "tier {}", k.tier());
    }
}

/// The reason for 16-value scale groups: an outlier in one half of a 32-value block coarsens
/// only that half's scale, so the other half keeps its precision, in the quantized values and in
/// the gemv of every tier.
#[test]
fn outlier_in_one_half_keeps_precision_in_the_other() {
    let mut rng = Rng::new(303);
    let cols = 4 * QK;
    let mut x = random_x(&mut rng, cols, Acts::Typical);
    let outlier = 1000.0f32;
    for b in 0..cols / QK {
        // Outlier in the second half of even blocks and in the first half of odd blocks.
        let j = if b % 2 == 0 { QS + 3 } else { 5 };
        x[b * QK + j] = if b < 2 { outlier } else { -outlier };
    }
    for k in tiers() {
        let acts = OwnedActs::quantize(&k, &x);
        for b in 0..cols / QK {
            let clean = if b % 2 == 0 { 2 * b } else { 2 * b + 1 };
            let xs = &x[clean * QS..(clean + 1) * QS];
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(
                acts.d[clean],
                amax / 127.0,
                "tier {}: clean group {clean}",
                k.tier()
            );
            assert!(acts.d[clean ^ 1] >= outlier / 127.0);
            for (j, &xv) in xs.iter().enumerate() {
                let err = (acts.d[clean] * acts.qs[clean * QS + j] as f32 - xv).abs();
                assert!(
                    err <= 0.5001 * acts.d[clean],
                    "tier {}: x = {xv}, error {err}",
                    k.tier()
                );
            }
        }
        // A weight row that only sees the clean halves: the int8 gemv error stays at the clean
        // halves' scale, two orders of magnitude below what one scale per 32 values would allow.
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
            let mut w = random_rows(&mut rng, ty, 1, cols, Scales::Typical, Quants::Random);
            let bb = ty.block_bytes();
            for (b, blk) in w.chunks_exact_mut(bb).enumerate() {
                // Zero the weights of the outlier half (Q8_0: qs = 0; Q4_0: nibble 8).
                for j in 0..QS {
                    let e = if b % 2 == 0 { QS + j } else { j };
                    if ty == GgmlType::Q8_0 {
                        blk[2 + e] = 0;
                    } else if e < QS {
                        blk[2 + e] = (blk[2 + e] & 0xF0) | 0x08;
                    } else {
                        blk[2 + e - QS] = (blk[2 + e - QS] & 0x0F) | 0x80;
                    }
                }
            }
            let mut row = vec![0.0; cols];
            scalar::dequantize_row(ty, &w, &mut row).unwrap();
            let exact: f32 = row.iter().zip(&x).map(|(a, b)| a * b).sum();
            let mut got = [0.0f32];
            k.gemv(ty, &w, &x, &acts.view(), &mut got);
            let tol = act_q8_tol(&row, &x, &acts.view());
            let coarse: f32 = row.iter().map(|w| w.abs()).sum::<f32>() * outlier / 127.0 * 0.5;
            assert!(
                (got[0] - exact).abs() <= tol && tol < coarse / 100.0,
                "{ty} tier {}: {} vs exact {exact}, tolerance {tol}, per-32 bound {coarse}",
                k.tier(),
                got[0]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar dequantization pinned to the GGUF reference implementation

fn fixture(name: &str) -> (Vec<u8>, Vec<f32>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
    let blocks = std::fs::read(format!("{dir}{name}.blocks")).expect("fixture blocks");
    let f = std::fs::read(format!("{dir}{name}.f32")).expect("fixture values");
    let vals = f
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (blocks, vals)
}

macro_rules! dequant_fixture_tests {
    ($($name:ident: $ty:expr;)*) => {$(
        #[test]
        fn $name() {
            let ty: GgmlType = $ty;
            let (blocks, want) = fixture(ty.name());
            assert!(want.len() >= 256, "fixture too small");
            let mut got = vec![f32::NAN; want.len()];
            scalar::dequantize_row(ty, &blocks, &mut got).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{ty} value {i}: {g} vs gguf reference {w}");
            }
        }
    )*};
}

dequant_fixture_tests! {
    dequantize_q4_0_matches_gguf: GgmlType::Q4_0;
    dequantize_q4_1_matches_gguf: GgmlType::Q4_1;
    dequantize_q5_0_matches_gguf: GgmlType::Q5_0;
    dequantize_q5_1_matches_gguf: GgmlType::Q5_1;
    dequantize_q8_0_matches_gguf: GgmlType::Q8_0;
    dequantize_f32_matches_gguf: GgmlType::F32;
    dequantize_f16_matches_gguf: GgmlType::F16;
    dequantize_bf16_matches_gguf: GgmlType::BF16;
}

// ---------------------------------------------------------------------------------------------
// Dispatch

#[test]
fn tier_names_round_trip() {
    for t in Tier::ALL {
        assert_eq!(t.name().parse::<Tier>(), Ok(t));
        assert_eq!(t.to_string(), t.name());
    }
    assert_eq!("sse".parse::<Tier>(), Err(KernelError::UnknownTier));
}

#[test]
fn detect_picks_the_best_available_tier() {
    let f = CpuFeatures::detect();
    let k = Kernels::detect();
    assert_eq!(k.tier(), f.best_tier());
    let avail: Vec<Tier> = tiers().iter().map(|k| k.tier()).collect();
    assert!(avail.contains(&Tier::Scalar));
    assert!(avail.contains(&k.tier()));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        let d = k.describe().to_string();
        let avx512 = std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni");
        if avx512 {
            assert_eq!(k.tier(), Tier::Avx512);
            assert!(d.starts_with("avx512: t2 tq1_0 tq2_0 q4w; "), "{d}");
            if std::is_x86_feature_detected!("avxvnni") {
                assert!(d.contains("; avx-vnni: q4_0 q4_1 q5_0 q5_1; "), "{d}");
            }
            assert!(d.contains("avx2: "), "{d}");
        } else if std::is_x86_feature_detected!("avxvnni") {
            assert_eq!(k.tier(), Tier::AvxVnni);
            assert!(
                d.starts_with("avx-vnni: q4_0 q4_1 q5_0 q5_1 t2 tq1_0 tq2_0 q4w; "),
                "{d}"
            );
            assert!(d.contains("; avx2: q8_0 f16 f32 bf16"), "{d}");
        } else {
            assert_eq!(k.tier(), Tier::Avx2);
            assert!(
                d.starts_with("avx2: q4_0 q4_1 q5_0 q5_1 q8_0 f16 f32 bf16"),
                "{d}"
            );
        }
    }
}

#[test]
fn refuses_tiers_the_cpu_lacks() {
    let none = CpuFeatures::none();
    for t in [
        Tier::Avx2,
        Tier::AvxVnni,
        Tier::Avx512,
        Tier::Neon,
        Tier::NeonDotprod,
    ] {
        let e = Kernels::with_tier(t, &none).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(t.name()) && msg.contains("needs"), "{msg}");
    }
    assert_eq!(
        Kernels::with_tier(Tier::Scalar, &none).unwrap().tier(),
        Tier::Scalar
    );
    #[cfg(target_arch = "x86_64")]
    {
        let e = Kernels::with_tier(Tier::Neon, &CpuFeatures::detect()).unwrap_err();
        assert!(e.to_string().contains("aarch64"), "{e}");
    }
}

#[test]
fn supported_types_and_description() {
    let k = Kernels::scalar();
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4W,
    ] {
        assert!(k.supports(ty), "{ty}");
        assert_eq!(k.kernel_tier(ty), Some(Tier::Scalar));
    }
    for ty in [
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::IQ4_NL,
        GgmlType::I8,
    ] {
        assert!(!k.supports(ty), "{ty}");
    }
    let d = k.describe().to_string();
    assert!(
        d.starts_with("scalar: q4_0 q4_1 q5_0 q5_1 q8_0 f16 f32 bf16"),
        "{d}"
    );
    for t in tiers() {
        let d = t.describe().to_string();
        assert!(d.contains("q4_1") && d.contains("acts dot axpy"), "{d}");
    }
}

#[test]
#[should_panic(expected = "no CPU kernel for tensor type Q8_1")]
fn gemv_panics_on_unsupported_type() {
    let acts = OwnedActs::new(32);
    Kernels::detect().gemv(
        GgmlType::Q8_1,
        &[0; 36],
        &[0.0; 32],
        &acts.view(),
        &mut [0.0],
    );
}

#[test]
fn dequantize_row_refuses_unsupported_types() {
    for ty in [
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::IQ2_XXS,
    ] {
        let n = ty.block_len();
        let src = vec![0u8; ty.block_bytes()];
        let mut dst = vec![0.0; n];
        assert_eq!(
            scalar::dequantize_row(ty, &src, &mut dst),
            Err(KernelError::UnsupportedType(ty))
        );
        assert_eq!(
            scalar::gemv_exact(ty, &[], &vec![0.0; n], &mut [], &mut dst),
            Err(KernelError::UnsupportedType(ty))
        );
    }
}

#[test]
#[should_panic(expected = "weight bytes")]
fn gemv_checks_weight_length() {
    let k = Kernels::detect();
    let x = [0.5f32; 64];
    let acts = OwnedActs::quantize(&k, &x);
    // Two rows of 64 Q4_1 values need 80 bytes.
    k.gemv(GgmlType::Q4_1, &[0; 79], &x, &acts.view(), &mut [0.0; 2]);
}

#[test]
fn rmsnorm_and_softmax() {
    let k = Kernels::detect();
    let x = [1.0f32, -2.0, 3.0, -4.0];
    let g = [1.0f32, 1.0, 2.0, 0.5];
    let mut out = [0.0; 4];
    k.rmsnorm(&x, &g, 1e-5, &mut out);
    let s = 1.0 / ((1.0 + 4.0 + 9.0 + 16.0) / 4.0f32 + 1e-5).sqrt();
    for i in 0..4 {
        assert!((out[i] - x[i] * s * g[i]).abs() < 1e-6);
    }
    let mut p = [1.0f32, 2.0, 3.0, 1000.0, -1000.0];
    k.softmax_inplace(&mut p);
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!(p[3] > 0.999 && p[4] == 0.0);
}

#[test]
fn assumed_features_enable_a_tier() {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        use edgellm_kernels::CpuFeature;
        // SAFETY: the features were just detected on this CPU.
        let f = unsafe {
            CpuFeatures::none()
                .assume(CpuFeature::Avx2)
                .assume(CpuFeature::Fma)
                .assume(CpuFeature::F16c)
        };
        assert!(f.has(CpuFeature::Avx2) && !f.has(CpuFeature::Neon));
        assert_eq!(f.best_tier(), Tier::Avx2);
        assert_eq!(
            Kernels::with_tier(Tier::Avx2, &f).unwrap().tier(),
            Tier::Avx2
        );
        // SAFETY: as above.
        let partial = unsafe { CpuFeatures::none().assume(CpuFeature::Avx2) };
        assert!(Kernels::with_tier(Tier::Avx2, &partial).is_err());
        // Without AVX-VNNI the `avx-vnni` tier is refused, naming what is missing.
        let e = Kernels::with_tier(Tier::AvxVnni, &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("avx-vnni") && e.contains("AVX-VNNI"), "{e}");
        if std::is_x86_feature_detected!("avxvnni") {
            // SAFETY: AVX-VNNI was just detected on this CPU.
            let v = unsafe { f.assume(CpuFeature::AvxVnni) };
            assert_eq!(v.best_tier(), Tier::AvxVnni);
            let k = Kernels::with_tier(Tier::AvxVnni, &v).unwrap();
            assert_eq!(k.kernel_tier(GgmlType::T2), Some(Tier::AvxVnni));
            assert_eq!(k.kernel_tier(GgmlType::TQ2_0), Some(Tier::AvxVnni));
            assert_eq!(k.kernel_tier(GgmlType::Q4_1), Some(Tier::AvxVnni));
            assert_eq!(k.kernel_tier(GgmlType::F16), Some(Tier::Avx2));
        }
        // Without AVX-512 the `avx512` tier is refused, naming what is missing.
        let e = Kernels::with_tier(Tier::Avx512, &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("avx512") && e.contains("AVX-512"), "{e}");
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
        {
            // SAFETY: the AVX-512 features were just detected on this CPU.
            let v = unsafe {
                f.assume(CpuFeature::Avx512f)
                    .assume(CpuFeature::Avx512bw)
                    .assume(CpuFeature::Avx512vl)
                    .assume(CpuFeature::Avx512vnni)
            };
            assert_eq!(v.best_tier(), Tier::Avx512);
            // Without AVX-VNNI the other entries are the AVX2 kernels ...
            let k = Kernels::with_tier(Tier::Avx512, &v).unwrap();
            assert_eq!(k.kernel_tier(GgmlType::TQ1_0), Some(Tier::Avx512));
            assert_eq!(k.kernel_tier(GgmlType::T2), Some(Tier::Avx512));
            assert_eq!(k.kernel_tier(GgmlType::Q4_1), Some(Tier::Avx2));
            if std::is_x86_feature_detected!("avxvnni") {
                // ... and with it, the AVX-VNNI ones.
                // SAFETY: AVX-VNNI was just detected on this CPU.
                let w = unsafe { v.assume(CpuFeature::AvxVnni) };
                let k = Kernels::with_tier(Tier::Avx512, &w).unwrap();
                assert_eq!(k.kernel_tier(GgmlType::TQ1_0), Some(Tier::Avx512));
                assert_eq!(k.kernel_tier(GgmlType::T2), Some(Tier::Avx512));
                assert_eq!(k.kernel_tier(GgmlType::TQ2_0), Some(Tier::Avx512));
                assert_eq!(k.kernel_tier(GgmlType::Q4_1), Some(Tier::AvxVnni));
                assert_eq!(k.kernel_tier(GgmlType::F16), Some(Tier::Avx2));
            }
        }
    }
}
