//! Tests of the Q4W kernels: every SIMD kernel this machine can run is checked bit for bit
//! against the scalar specification (`scalar::q4w`), and the specification against a plain f64
//! product of the dequantized weights and against Q4_0's product of the same numbers.

mod common;
use common::{bits, scale_bits, Acts, Rng, Scale, QS};
#[cfg(target_arch = "x86_64")]
use common::{has_avx2, has_avx512, has_avxvnni};
#[cfg(target_arch = "aarch64")]
use common::{has_dotprod, has_neon};
use edgellm_kernels::scalar::q4w::{self as q, Q4W_BLOCK, Q4W_BYTES};
use edgellm_kernels::ActsQ8;
use half::f16;

type GemvFn = unsafe fn(&[u8], &ActsQ8<'_>, &mut [f32]);

#[derive(Clone, Copy, Debug)]
enum ActKind {
    Typical,
    Zero,
    /// Every value ±1 in its group: every `q` is ±127.
    AtMax,
    /// Typical values with one group of large outliers.
    OutlierGroup,
}

#[derive(Clone, Copy, Debug)]
enum WKind {
    /// Random code bytes.
    Random,
    /// Every code 0 (weight `-8 d`): the most negative products with positive activations.
    AllZero,
    /// Every code 15 (weight `7 d`).
    AllMax,
}

fn random_x(rng: &mut Rng, n: usize, k: ActKind) -> Vec<f32> {
    let outlier = if n == 0 { 0 } else { rng.below(n / QS) };
    (0..n)
        .map(|i| match k {
            ActKind::Typical => rng.normal(1.0),
            ActKind::Zero => 0.0,
            ActKind::AtMax => [1.0, -1.0][rng.below(2)],
            ActKind::OutlierGroup if i / QS == outlier => 1e4 * rng.normal(1.0),
            ActKind::OutlierGroup => rng.normal(1.0),
        })
        .collect()
}

fn random_rows(rng: &mut Rng, rows: usize, cols: usize, k: WKind, s: Scale) -> Vec<u8> {
    let mut w = vec![0u8; rows * cols / Q4W_BLOCK * Q4W_BYTES];
    for blk in w.chunks_exact_mut(Q4W_BYTES) {
        blk[0..2].copy_from_slice(&scale_bits(rng, s).to_le_bytes());
        blk[2..4].copy_from_slice(&scale_bits(rng, s).to_le_bytes());
        match k {
            WKind::Random => rng.fill_bytes(&mut blk[4..]),
            WKind::AllZero => blk[4..].fill(0),
            WKind::AllMax => blk[4..].fill(0xFF),
        }
    }
    w
}

/// Shapes: fixed ones (a single block, the SmolLM2 and BitNet-2B dims, past the 4096-column
/// operand panel) and random ones (rows 1..20, columns up to 4096).
fn shapes(rng: &mut Rng) -> Vec<(usize, usize)> {
    let mut v = vec![
        (0, 64),
        (1, 64),
        (3, 0),
        (5, 128),
        (8, 192),
        (9, 320),
        (16, 576),
        (17, 576),
        (7, 1536),
        (3, 2560),
        (2, 6912),
        (5, 4160),
        (2, 8256),
    ];
    for _ in 0..24 {
        v.push((
            1 + rng.below(20),
            Q4W_BLOCK * (1 + rng.below(4096 / Q4W_BLOCK)),
        ));
    }
    v
}

fn check_kernel(name: &str, f: GemvFn, wk: WKind, ak: ActKind, s: Scale, seed: u64) {
    let mut rng = Rng::new(seed);
    for (rows, cols) in shapes(&mut rng) {
        let w = random_rows(&mut rng, rows, cols, wk, s);
        let x = random_x(&mut rng, cols, ak);
        let acts = Acts::quantize(&x);
        let mut want = vec![f32::NAN; rows];
        let mut got = vec![f32::NAN; rows];
        q::gemv_q4w(&w, &acts.view(), &mut want);
        // SAFETY: the caller of `check_kernel` checked that this CPU has the features `f` needs.
        unsafe { f(&w, &acts.view(), &mut got) };
        assert_eq!(
            bits(&got),
            bits(&want),
            "{name} differs from the spec: {rows}x{cols}, {wk:?} weights, {ak:?} acts, {s:?} \
             scales\n got {got:?}\nwant {want:?}"
        );
    }
}

macro_rules! simd_kernel_tests {
    ($($name:ident: $f:path, $arch:literal, $available:expr;)*) => {$(
        #[cfg(target_arch = $arch)]
        mod $name {
            use super::*;
            const NAME: &str = stringify!($name);

            fn check(wk: WKind, ak: ActKind, s: Scale, seed: u64) {
                if !$available {
                    eprintln!("{NAME}: this CPU lacks the features, skipped");
                    return;
                }
                check_kernel(NAME, $f, wk, ak, s, seed);
            }

            #[test]
            fn random_bit_exact() {
                check(WKind::Random, ActKind::Typical, Scale::Typical, 1);
            }
            #[test]
            fn zero_weights_and_acts() {
                check(WKind::Random, ActKind::Zero, Scale::Typical, 2);
                check(WKind::AllZero, ActKind::Typical, Scale::Typical, 3);
            }
            #[test]
            fn extreme_codes_and_acts() {
                check(WKind::AllZero, ActKind::AtMax, Scale::Max, 4);
                check(WKind::AllMax, ActKind::AtMax, Scale::Max, 5);
                check(WKind::Random, ActKind::AtMax, Scale::Typical, 6);
            }
            #[test]
            fn one_outlier_group() {
                check(WKind::Random, ActKind::OutlierGroup, Scale::Typical, 7);
            }
            #[test]
            fn scales() {
                check(WKind::Random, ActKind::Typical, Scale::Zero, 8);
                check(WKind::Random, ActKind::Typical, Scale::Negative, 9);
                check(WKind::Random, ActKind::Typical, Scale::Subnormal, 10);
            }
            #[test]
            #[should_panic(expected = "weight bytes")]
            fn checks_weight_length() {
                if !$available {
                    panic!("weight bytes (skipped: features missing)");
                }
                let acts = Acts::quantize(&[0.5; 256]);
                let bytes = Q4W_BYTES * 4 * 2 - 1;
                // SAFETY: the features were checked above.
                unsafe { $f(&vec![0; bytes], &acts.view(), &mut [0.0; 2]) };
            }
        }
    )*};
}

simd_kernel_tests! {
    avx2_gemv_q4w: edgellm_kernels::x86::q4w::avx2_gemv_q4w, "x86_64", has_avx2();
    avxvnni_gemv_q4w: edgellm_kernels::x86::q4w::avxvnni_gemv_q4w, "x86_64", has_avxvnni();
    avx512_gemv_q4w: edgellm_kernels::x86::q4w::avx512_gemv_q4w, "x86_64", has_avx512();
    neon_gemv_q4w: edgellm_kernels::aarch64::q4w::neon_gemv_q4w, "aarch64", has_neon();
    neon_dotprod_gemv_q4w: edgellm_kernels::aarch64::q4w::neon_dotprod_gemv_q4w, "aarch64",
        has_dotprod();
}

/// The specification is within float rounding of the f64 product of the dequantized weights
/// and the int8 activations.
#[test]
fn spec_matches_plain_product() {
    let mut rng = Rng::new(40);
    for (rows, cols) in shapes(&mut rng) {
        let w = random_rows(&mut rng, rows, cols, WKind::Random, Scale::Typical);
        let acts = Acts::quantize(&random_x(&mut rng, cols, ActKind::Typical));
        let mut got = vec![f32::NAN; rows];
        q::gemv_q4w(&w, &acts.view(), &mut got);
        let rb = w.len() / rows.max(1);
        let mut row = vec![0.0f32; cols];
        for r in 0..rows {
            q::dequantize_q4w(&w[r * rb..(r + 1) * rb], &mut row);
            let (mut want, mut abs) = (0.0f64, 0.0f64);
            for (c, &wv) in row.iter().enumerate() {
                let t = wv as f64 * acts.d[c / QS] as f64 * acts.qs[c] as f64;
                want += t;
                abs += t.abs();
            }
            let tol = 4.0 * (cols as f64 / 8.0 + 8.0) * f32::EPSILON as f64 * abs + 1e-30;
            assert!(
                (got[r] as f64 - want).abs() <= tol,
                "row {r} of {rows}x{cols}: {} vs f64 {want} (tolerance {tol})",
                got[r]
            );
        }
    }
}

/// A hand-made block: one weight per lane set, so each lane's product and scale can be read off.
#[test]
fn spec_small_example() {
    // d0 = 1, d1 = 2; code 9 (weight +1 d) at elements 0 and 40, code 8 (0) elsewhere.
    let mut w = [0x88u8; Q4W_BYTES];
    w[0..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
    w[2..4].copy_from_slice(&f16::from_f32(2.0).to_bits().to_le_bytes());
    for e in [0, 40] {
        let (at, shift) = q::q4w_position(e);
        w[at] = (w[at] & !(0x0F << shift)) | (9 << shift);
    }
    let mut x = vec![0.0f32; 64];
    x[0] = 0.5;
    x[40] = -4.0;
    // Make every group's scale 1/127 (amax 1) but group 2's 4/127.
    for g in 0..4 {
        x[16 * g + 15] = if g == 2 { 4.0 } else { 1.0 };
    }
    let acts = Acts::quantize(&x);
    let mut out = [f32::NAN];
    q::gemv_q4w(&w, &acts.view(), &mut out);
    // 1 * 0.5 (q 64 at scale 1/127, rounds to 63.5 -> 64) + 2 * (-4) exactly.
    let want = 1.0 * (64.0 / 127.0) + 2.0 * -4.0;
    assert!((out[0] - want).abs() < 1e-5, "{} vs {want}", out[0]);
}

/// Q4W and Q4_0 hold the same numbers: their products agree to float rounding.
#[test]
fn spec_agrees_with_q4_0_product() {
    let mut rng = Rng::new(41);
    let (rows, cols) = (13, 576);
    let mut q4 = vec![0u8; rows * cols / 32 * 18];
    for (i, b) in q4.iter_mut().enumerate() {
        *b = if i % 18 == 0 {
            0x66
        } else if i % 18 == 1 {
            0x2A
        } else {
            rng.next_u64() as u8
        };
    }
    let mut w = vec![0u8; rows * cols / Q4W_BLOCK * Q4W_BYTES];
    q::q4w_from_q4_0(&q4, &mut w);
    let acts = Acts::quantize(&random_x(&mut rng, cols, ActKind::Typical));
    let (mut a, mut b) = (vec![0.0; rows], vec![0.0; rows]);
    edgellm_kernels::scalar::gemv_q4_0(&q4, &acts.view(), &mut a);
    q::gemv_q4w(&w, &acts.view(), &mut b);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{x} vs {y}");
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
type GemmFn = unsafe fn(&[u8], &ActsQ8<'_>, usize, &mut [f32]);

/// `f` (a gemm: `nb` token rows of activations, `out[t * rows + r]`) gives the bits of the
/// specification's gemv for every token, on shapes around its blocks (4 and 8 tokens, 16 and 32
/// rows, 1024-column panels) and random ones.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn check_gemm(name: &str, f: GemmFn, wk: WKind, ak: ActKind, s: Scale, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut shapes = vec![
        (1, 1, 64),
        (2, 0, 64),
        (3, 2, 0),
        (4, 5, 128),
        (8, 17, 320),
        (9, 33, 1088),
        (16, 32, 576),
        (17, 3, 2112),
        (5, 40, 1536),
    ];
    for _ in 0..16 {
        shapes.push((
            1 + rng.below(20),
            1 + rng.below(40),
            64 * (1 + rng.below(64)),
        ));
    }
    for (nb, rows, cols) in shapes {
        let w = random_rows(&mut rng, rows, cols, wk, s);
        let x = random_x(&mut rng, nb * cols, ak);
        let acts = Acts::quantize(&x);
        let g = cols / QS;
        let mut want = vec![f32::NAN; nb * rows];
        for (t, o) in want.chunks_exact_mut(rows.max(1)).enumerate().take(nb) {
            let at = ActsQ8 {
                qs: &acts.qs[t * cols..(t + 1) * cols],
                d: &acts.d[t * g..(t + 1) * g],
                sums: &acts.sums[t * g..(t + 1) * g],
            };
            q::gemv_q4w(&w, &at, o);
        }
        let mut got = vec![f32::NAN; nb * rows];
        // SAFETY: the caller checked that this CPU has the features `f` needs.
        unsafe { f(&w, &acts.view(), nb, &mut got) };
        assert_eq!(
            bits(&got),
            bits(&want),
            "{name} differs from the gemv spec: {nb} tokens, {rows}x{cols}, {wk:?} weights, \
             {ak:?} acts, {s:?} scales"
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512_gemm_q4w {
    use super::*;

    fn check(wk: WKind, ak: ActKind, s: Scale, seed: u64) {
        if !has_avx512() {
            eprintln!("avx512_gemm_q4w: this CPU lacks the features, skipped");
            return;
        }
        check_gemm(
            "avx512_gemm_q4w",
            edgellm_kernels::x86::q4w::avx512_gemm_q4w,
            wk,
            ak,
            s,
            seed,
        );
    }

    #[test]
    fn random_bit_exact() {
        check(WKind::Random, ActKind::Typical, Scale::Typical, 101);
        check(WKind::Random, ActKind::OutlierGroup, Scale::Negative, 102);
    }
    #[test]
    fn extremes() {
        check(WKind::AllZero, ActKind::AtMax, Scale::Max, 103);
        check(WKind::AllMax, ActKind::AtMax, Scale::Max, 104);
        check(WKind::Random, ActKind::Zero, Scale::Subnormal, 105);
    }
    #[test]
    #[should_panic(expected = "weight bytes")]
    fn checks_weight_length() {
        if !has_avx512() {
            panic!("weight bytes (skipped: features missing)");
        }
        let acts = Acts::quantize(&[0.5; 3 * 256]);
        let bytes = Q4W_BYTES * 4 * 2 - 1;
        // SAFETY: the features were checked above.
        unsafe {
            edgellm_kernels::x86::q4w::avx512_gemm_q4w(
                &vec![0; bytes],
                &acts.view(),
                3,
                &mut [0.0; 6],
            )
        };
    }
}

/// The NEON gemms (two rows and two tokens per pass) against the gemv specification.
#[cfg(target_arch = "aarch64")]
mod neon_gemm_q4w {
    use super::*;
    use edgellm_kernels::aarch64::q4w::{neon_dotprod_gemm_q4w, neon_gemm_q4w};

    fn check(wk: WKind, ak: ActKind, s: Scale, seed: u64) {
        if has_neon() {
            check_gemm("neon_gemm_q4w", neon_gemm_q4w, wk, ak, s, seed);
        }
        if has_dotprod() {
            check_gemm(
                "neon_dotprod_gemm_q4w",
                neon_dotprod_gemm_q4w,
                wk,
                ak,
                s,
                seed,
            );
        } else {
            eprintln!("neon_dotprod_gemm_q4w: this CPU lacks the dot product, skipped");
        }
    }

    #[test]
    fn random_bit_exact() {
        check(WKind::Random, ActKind::Typical, Scale::Typical, 201);
        check(WKind::Random, ActKind::OutlierGroup, Scale::Negative, 202);
    }
    #[test]
    fn extremes() {
        check(WKind::AllZero, ActKind::AtMax, Scale::Max, 203);
        check(WKind::AllMax, ActKind::AtMax, Scale::Max, 204);
        check(WKind::Random, ActKind::Zero, Scale::Subnormal, 205);
    }
}

/// `Kernels::gemm` of Q4W on every tier this CPU has: batched where the tier has a gemm, one
/// gemv per token elsewhere, the specification's bits either way.
#[test]
fn every_tier_gemm_matches_the_spec() {
    use edgellm_kernels::{CpuFeatures, GgmlType, Kernels, Tier};
    let f = CpuFeatures::detect();
    let mut rng = Rng::new(7);
    let (nb, rows, cols) = (11, 37, 576);
    let w = random_rows(&mut rng, rows, cols, WKind::Random, Scale::Typical);
    let x = random_x(&mut rng, nb * cols, ActKind::Typical);
    let acts = Acts::quantize(&x);
    let g = cols / QS;
    let mut want = vec![0f32; nb * rows];
    for (t, o) in want.chunks_exact_mut(rows).enumerate() {
        let at = ActsQ8 {
            qs: &acts.qs[t * cols..(t + 1) * cols],
            d: &acts.d[t * g..(t + 1) * g],
            sums: &acts.sums[t * g..(t + 1) * g],
        };
        q::gemv_q4w(&w, &at, o);
    }
    for k in Tier::ALL
        .into_iter()
        .filter_map(|t| Kernels::with_tier(t, &f).ok())
    {
        let mut got = vec![f32::NAN; nb * rows];
        k.gemm(GgmlType::Q4W, &w, &x, &acts.view(), nb, &mut got);
        assert_eq!(bits(&got), bits(&want), "{}", k.describe());
    }
}
