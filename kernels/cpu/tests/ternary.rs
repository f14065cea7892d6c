//! Tests of the ternary kernels (T2, TQ1_0, TQ2_0): every SIMD kernel this machine can run is
//! checked bit for bit against the scalar specification, the scalar gemv against a plain f64
//! product, `quantize_t2_row` against its rule, and the TQ dequantizers against gguf-py's
//! reference values in `tests/data` (made by `ternary_gen.py`).
//!
//! Activations come from a private quantizer with one scale per 16 values, the [`ActsQ8`]
//! contract the ternary kernels are written for.

mod common;
use edgellm_kernels::scalar::ternary as st;
use edgellm_kernels::{ActsQ8, GgmlType};
use half::f16;

type GemvFn = unsafe fn(&[u8], &ActsQ8<'_>, &mut [f32]);

// ---------------------------------------------------------------------------------------------
// Deterministic random data

use common::{bits, scale_bits, Acts, Rng, Scale, QS};
#[cfg(target_arch = "x86_64")]
use common::{has_avx2, has_avx512, has_avxvnni};
#[cfg(target_arch = "aarch64")]
use common::{has_dotprod, has_neon};

// ---------------------------------------------------------------------------------------------
// Activations: one scale per 16 values

/// How activations are chosen.
#[derive(Clone, Copy, Debug)]
enum ActKind {
    Typical,
    Zero,
    /// Every value ±1 in its group: every `q` is ±127.
    AtMax,
    /// Every value +1: `q` = +127 everywhere (with all-(-1) weights, the most negative sums).
    AllMax,
    /// Typical values with one group of large outliers (1e4).
    OutlierGroup,
}

fn random_x(rng: &mut Rng, n: usize, k: ActKind) -> Vec<f32> {
    let outlier = if n == 0 { 0 } else { rng.below(n / QS) };
    (0..n)
        .map(|i| match k {
            ActKind::Typical => rng.normal(1.0),
            ActKind::Zero => 0.0,
            ActKind::AtMax => {
                if rng.below(2) == 0 {
                    1.0
                } else {
                    -1.0
                }
            }
            ActKind::AllMax => 1.0,
            ActKind::OutlierGroup => {
                if i / QS == outlier {
                    1e4 * rng.normal(1.0)
                } else {
                    rng.normal(1.0)
                }
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Weights: packing ternary values into each layout (the layouts as documented)

/// The ternary formats.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ty {
    T2,
    Tq1,
    Tq2,
    /// TQ2_0 blocks laid out as TQ2W.
    Tq2w,
}

impl Ty {
    fn block_len(self) -> usize {
        match self {
            Ty::T2 => 64,
            _ => 256,
        }
    }
    fn block_bytes(self) -> usize {
        match self {
            Ty::T2 => 16,
            Ty::Tq1 => 54,
            Ty::Tq2 | Ty::Tq2w => 66,
        }
    }
    fn ggml(self) -> GgmlType {
        match self {
            Ty::T2 => GgmlType::T2,
            Ty::Tq1 => GgmlType::TQ1_0,
            Ty::Tq2 => GgmlType::TQ2_0,
            Ty::Tq2w => GgmlType::TQ2W,
        }
    }
    fn dequantize(self, src: &[u8], dst: &mut [f32]) {
        match self {
            Ty::T2 => st::dequantize_t2(src, dst),
            Ty::Tq1 => st::dequantize_tq1_0(src, dst),
            Ty::Tq2 => st::dequantize_tq2_0(src, dst),
            Ty::Tq2w => st::dequantize_tq2w(src, dst),
        }
    }
    fn spec(self) -> GemvFn {
        match self {
            Ty::T2 => st::gemv_t2,
            Ty::Tq1 => st::gemv_tq1_0,
            Ty::Tq2 => st::gemv_tq2_0,
            Ty::Tq2w => st::gemv_tq2w,
        }
    }
}

/// Packs one block of codes `c` (0..=2, `w + 1`; T2 and TQ2_0 also take 3) with scale `d`.
fn pack_block(ty: Ty, c: &[u8], d: u16, blk: &mut [u8]) {
    blk.fill(0);
    match ty {
        Ty::T2 => {
            // Element i of group k: byte 4k + i % 4, bits 2 (i / 4).
            for (e, &c) in c.iter().enumerate() {
                let (k, i) = (e / 16, e % 16);
                blk[4 * k + i % 4] |= c << (2 * (i / 4));
            }
        }
        Ty::Tq2 => {
            for (e, &c) in c.iter().enumerate() {
                let (h, l, m) = (e / 128, (e / 32) % 4, e % 32);
                blk[32 * h + m] |= c << (2 * l);
            }
            blk[64..66].copy_from_slice(&d.to_le_bytes());
        }
        Ty::Tq2w => {
            pack_block(Ty::Tq2, c, d, blk);
            st::tq2w_from_tq2_0(blk);
        }
        Ty::Tq1 => {
            // Byte value v (digits, most significant first) is stored as ceil(v * 256 / 243).
            let enc = |digits: &[u8]| {
                let v = digits.iter().fold(0u16, |v, &c| v * 3 + c as u16);
                let v = v * 3u16.pow(5 - digits.len() as u32);
                (v * 256).div_ceil(243) as u8
            };
            for m in 0..32 {
                let digits: Vec<u8> = (0..5).map(|n| c[32 * n + m]).collect();
                blk[m] = enc(&digits);
            }
            for m in 0..16 {
                let digits: Vec<u8> = (0..5).map(|n| c[160 + 16 * n + m]).collect();
                blk[32 + m] = enc(&digits);
            }
            for j in 0..4 {
                let digits: Vec<u8> = (0..4).map(|n| c[240 + 4 * n + j]).collect();
                blk[48 + j] = enc(&digits);
            }
            blk[52..54].copy_from_slice(&d.to_le_bytes());
        }
    }
}

/// How weights are chosen.
#[derive(Clone, Copy, Debug)]
enum WKind {
    /// Random codes 0..=2.
    Random,
    /// Random bytes: for T2 and TQ2_0 this includes the code 3 (read as +2).
    RandomBytes,
    AllZero,
    AllPlus,
    AllMinus,
}

fn random_rows(rng: &mut Rng, ty: Ty, rows: usize, cols: usize, k: WKind, s: Scale) -> Vec<u8> {
    let (bl, bb) = (ty.block_len(), ty.block_bytes());
    let nblocks = rows * cols / bl;
    let mut w = vec![0u8; nblocks * bb];
    let mut c = vec![0u8; bl];
    for blk in w.chunks_exact_mut(bb) {
        for v in c.iter_mut() {
            *v = match k {
                WKind::Random => rng.below(3) as u8,
                WKind::RandomBytes => rng.below(if ty == Ty::Tq1 { 3 } else { 4 }) as u8,
                WKind::AllZero => 1,
                WKind::AllPlus => 2,
                WKind::AllMinus => 0,
            };
        }
        pack_block(ty, &c, scale_bits(rng, s), blk);
        if matches!(k, WKind::RandomBytes) && ty == Ty::Tq1 {
            // Every byte is a valid TQ1_0 digit group: use raw random bytes.
            for v in &mut blk[..52] {
                *v = rng.next_u64() as u8;
            }
        }
    }
    w
}

// ---------------------------------------------------------------------------------------------
// SIMD kernels against the scalar specification

/// Shapes: fixed ones (half windows, the SmolLM2 and BitNet-2B dims) and random ones
/// (rows 1..13, columns multiples of the block length up to 4096).
fn shapes(rng: &mut Rng, ty: Ty) -> Vec<(usize, usize)> {
    let bl = ty.block_len();
    let mut v = vec![
        (0, bl),
        (1, bl),
        (3, 0),
        (5, 2 * bl),
        (4, 3 * bl),
        (9, 5 * bl),
    ];
    if ty == Ty::T2 {
        v.extend([(2, 576), (7, 1536), (3, 2560), (2, 6912)]);
        // Past 8192 columns (the x86 kernels' activation panel), ending in half a window.
        v.extend([(5, 8256), (2, 16448)]);
    } else {
        v.extend([(2, 1536), (3, 2560), (2, 6912)]);
        // Past 8192 columns (the x86 kernels' activation panel).
        v.extend([(5, 8448), (2, 16640)]);
    }
    for _ in 0..24 {
        v.push((1 + rng.below(13), bl * (1 + rng.below(4096 / bl))));
    }
    v
}

fn check_kernel(name: &str, ty: Ty, f: GemvFn, wk: WKind, ak: ActKind, s: Scale, seed: u64) {
    let mut rng = Rng::new(seed);
    for (rows, cols) in shapes(&mut rng, ty) {
        let w = random_rows(&mut rng, ty, rows, cols, wk, s);
        let x = random_x(&mut rng, cols, ak);
        let acts = Acts::quantize(&x);
        let mut want = vec![f32::NAN; rows];
        let mut got = vec![f32::NAN; rows];
        // SAFETY: the scalar kernel has no CPU requirement; the caller of `check_kernel` checked
        // that this CPU has the features `f` needs.
        unsafe {
            (ty.spec())(&w, &acts.view(), &mut want);
            f(&w, &acts.view(), &mut got);
        }
        assert_eq!(
            bits(&got),
            bits(&want),
            "{name} differs from the spec: {rows}x{cols}, {wk:?} weights, {ak:?} acts, {s:?} \
             scales\n got {got:?}\nwant {want:?}"
        );
    }
}

macro_rules! simd_kernel_tests {
    ($($name:ident: $ty:expr, $f:path, $arch:literal, $available:expr;)*) => {$(
        #[cfg(target_arch = $arch)]
        mod $name {
            use super::*;
            const NAME: &str = stringify!($name);

            fn available() -> bool {
                $available
            }
            fn check(wk: WKind, ak: ActKind, s: Scale, seed: u64) {
                if !available() {
                    eprintln!("{NAME}: this CPU lacks the features, skipped");
                    return;
                }
                check_kernel(NAME, $ty, $f, wk, ak, s, seed);
            }

            #[test]
            fn random_bit_exact() {
                check(WKind::Random, ActKind::Typical, Scale::Typical, 1);
                check(WKind::RandomBytes, ActKind::Typical, Scale::Typical, 2);
            }
            #[test]
            fn all_zero_weights_and_acts() {
                check(WKind::AllZero, ActKind::Typical, Scale::Typical, 3);
                check(WKind::Random, ActKind::Zero, Scale::Typical, 4);
            }
            #[test]
            fn all_plus_and_all_minus() {
                check(WKind::AllPlus, ActKind::AtMax, Scale::Typical, 5);
                check(WKind::AllMinus, ActKind::AtMax, Scale::Typical, 6);
                check(WKind::AllMinus, ActKind::AllMax, Scale::Max, 7);
                check(WKind::AllPlus, ActKind::AllMax, Scale::Max, 8);
            }
            #[test]
            fn acts_at_127() {
                check(WKind::Random, ActKind::AtMax, Scale::Typical, 9);
                check(WKind::RandomBytes, ActKind::AtMax, Scale::Max, 10);
            }
            #[test]
            fn one_outlier_group() {
                check(WKind::Random, ActKind::OutlierGroup, Scale::Typical, 11);
            }
            #[test]
            fn scales() {
                check(WKind::Random, ActKind::Typical, Scale::Zero, 12);
                check(WKind::Random, ActKind::Typical, Scale::Negative, 13);
                check(WKind::Random, ActKind::Typical, Scale::Subnormal, 14);
            }
            #[test]
            #[should_panic(expected = "weight bytes")]
            fn checks_weight_length() {
                if !available() {
                    panic!("weight bytes (skipped: features missing)");
                }
                let acts = Acts::quantize(&[0.5; 256]);
                let bytes = $ty.block_bytes() * (256 / $ty.block_len()) * 2 - 1;
                // SAFETY: `available()` checked the features.
                unsafe { $f(&vec![0; bytes], &acts.view(), &mut [0.0; 2]) };
            }
        }
    )*};
}

simd_kernel_tests! {
    avx2_gemv_t2: Ty::T2, edgellm_kernels::x86::ternary::avx2_gemv_t2, "x86_64", has_avx2();
    avx2_gemv_t2_lut: Ty::T2, edgellm_kernels::x86::ternary::avx2_gemv_t2_lut, "x86_64", has_avx2();
    avx2_gemv_tq1_0: Ty::Tq1, edgellm_kernels::x86::ternary::avx2_gemv_tq1_0, "x86_64", has_avx2();
    avx2_gemv_tq2_0: Ty::Tq2, edgellm_kernels::x86::ternary::avx2_gemv_tq2_0, "x86_64", has_avx2();
    avx2_gemv_tq2w: Ty::Tq2w, edgellm_kernels::x86::ternary::avx2_gemv_tq2w, "x86_64", has_avx2();
    avxvnni_gemv_t2: Ty::T2, edgellm_kernels::x86::vnni::avxvnni_gemv_t2, "x86_64",
        has_avxvnni();
    avxvnni_gemv_tq2_0: Ty::Tq2, edgellm_kernels::x86::vnni::avxvnni_gemv_tq2_0, "x86_64",
        has_avxvnni();
    avxvnni_gemv_tq1_0: Ty::Tq1, edgellm_kernels::x86::vnni::avxvnni_gemv_tq1_0, "x86_64",
        has_avxvnni();
    avx512_gemv_tq1_0: Ty::Tq1, edgellm_kernels::x86::avx512::avx512_gemv_tq1_0, "x86_64",
        has_avx512();
    avx512_gemv_t2: Ty::T2, edgellm_kernels::x86::avx512::avx512_gemv_t2, "x86_64",
        has_avx512();
    avx512_gemv_tq2_0: Ty::Tq2, edgellm_kernels::x86::avx512::avx512_gemv_tq2_0, "x86_64",
        has_avx512();
    neon_gemv_t2: Ty::T2, edgellm_kernels::aarch64::ternary::neon_gemv_t2, "aarch64", has_neon();
    neon_gemv_t2_lut: Ty::T2, edgellm_kernels::aarch64::ternary::neon_gemv_t2_lut, "aarch64",
        has_neon();
    neon_gemv_tq1_0: Ty::Tq1, edgellm_kernels::aarch64::ternary::neon_gemv_tq1_0, "aarch64",
        has_neon();
    neon_dotprod_gemv_tq1_0: Ty::Tq1, edgellm_kernels::aarch64::ternary::neon_dotprod_gemv_tq1_0,
        "aarch64", has_dotprod();
    neon_gemv_tq2_0: Ty::Tq2, edgellm_kernels::aarch64::ternary::neon_gemv_tq2_0, "aarch64",
        has_neon();
    neon_dotprod_gemv_t2: Ty::T2, edgellm_kernels::aarch64::ternary::neon_dotprod_gemv_t2,
        "aarch64", has_dotprod();
    neon_dotprod_gemv_tq2_0: Ty::Tq2, edgellm_kernels::aarch64::ternary::neon_dotprod_gemv_tq2_0,
        "aarch64", has_dotprod();
    neon_gemv_tq2w: Ty::Tq2w, edgellm_kernels::aarch64::ternary::neon_gemv_tq2w, "aarch64",
        has_neon();
    neon_dotprod_gemv_tq2w: Ty::Tq2w, edgellm_kernels::aarch64::ternary::neon_dotprod_gemv_tq2w,
        "aarch64", has_dotprod();
}

// ---------------------------------------------------------------------------------------------
// The scalar specification against a plain product

/// Each scalar gemv is within float rounding of `Σ_c W[c] * d[c/16] * q[c]` computed in f64.
fn check_spec_vs_f64(ty: Ty, seed: u64) {
    let mut rng = Rng::new(seed);
    for (rows, cols) in shapes(&mut rng, ty) {
        let w = random_rows(&mut rng, ty, rows, cols, WKind::RandomBytes, Scale::Typical);
        let x = random_x(&mut rng, cols, ActKind::Typical);
        let acts = Acts::quantize(&x);
        let mut got = vec![f32::NAN; rows];
        // SAFETY: scalar kernels have no CPU requirement.
        unsafe { (ty.spec())(&w, &acts.view(), &mut got) };
        let rb = w.len() / rows.max(1);
        let mut row = vec![0.0f32; cols];
        for r in 0..rows {
            ty.dequantize(&w[r * rb..(r + 1) * rb], &mut row);
            let (mut want, mut abs) = (0.0f64, 0.0f64);
            for (c, &wv) in row.iter().enumerate() {
                let t = wv as f64 * acts.d[c / QS] as f64 * acts.qs[c] as f64;
                want += t;
                abs += t.abs();
            }
            let tol = 4.0 * (cols as f64 / QS as f64 + 8.0) * f32::EPSILON as f64 * abs + 1e-30;
            assert!(
                (got[r] as f64 - want).abs() <= tol,
                "{ty:?} row {r} of {rows}x{cols}: {} vs f64 {want} (tolerance {tol})",
                got[r]
            );
        }
    }
}

#[test]
fn gemv_t2_spec_matches_plain_product() {
    check_spec_vs_f64(Ty::T2, 40);
}

#[test]
fn gemv_tq1_0_spec_matches_plain_product() {
    check_spec_vs_f64(Ty::Tq1, 41);
}

#[test]
fn gemv_tq2_0_spec_matches_plain_product() {
    check_spec_vs_f64(Ty::Tq2, 42);
}

#[test]
fn gemv_t2_small_example() {
    // One 64-column row: weights +1 on group 0, -1 on group 1, 0 on group 2, +1 on group 3.
    let mut c = [1u8; 64];
    c[..16].fill(2);
    c[16..32].fill(0);
    c[48..].fill(2);
    let mut w = [0u8; 16];
    pack_block(Ty::T2, &c, 0, &mut w);
    let x: Vec<f32> = (0..64).map(|i| (i % 16) as f32 - 7.0).collect();
    let acts = Acts::quantize(&x);
    let mut out = [f32::NAN];
    st::gemv_t2(&w, &acts.view(), &mut out);
    let s: i32 = acts.qs[..16].iter().map(|&q| q as i32).sum();
    // Groups 0 and 3 add `s * d`, group 1 subtracts it; the scales of all groups are equal.
    assert_eq!(out[0], (s as f32 * acts.d[0]));
    assert!(s != 0);
}

#[test]
fn gemv_checks_shapes() {
    let acts = Acts::quantize(&[1.0; 64]);
    let r = std::panic::catch_unwind(|| {
        let mut out = [0.0];
        st::gemv_tq2_0(&[0; 66], &acts.view(), &mut out);
    });
    assert!(r.is_err(), "64 columns are not a whole TQ2_0 block");
    let bad = ActsQ8 {
        qs: &acts.qs,
        d: &acts.d[..2],
        sums: &acts.sums[..2],
    };
    let r = std::panic::catch_unwind(|| st::gemv_t2(&[0; 16], &bad, &mut [0.0]));
    assert!(r.is_err(), "one scale per 32 values must be refused");
}

// ---------------------------------------------------------------------------------------------
// T2 quantization

#[test]
fn quantize_t2_row_rule() {
    let mut rng = Rng::new(50);
    for n in [64, 128, 576, 2560] {
        let x: Vec<f32> = (0..n).map(|_| rng.normal(0.02)).collect();
        let mut blocks = vec![0u8; n / 4];
        let s = st::quantize_t2_row(&x, &mut blocks);
        let mean = x.iter().fold(0.0f32, |a, v| a + v.abs()) / n as f32;
        assert_eq!(s.to_bits(), mean.to_bits(), "scale is the absmean");
        let mut w = vec![f32::NAN; n];
        st::dequantize_t2(&blocks, &mut w);
        for (i, (&wv, &xv)) in w.iter().zip(&x).enumerate() {
            assert!(wv == -1.0 || wv == 0.0 || wv == 1.0, "value {wv}");
            let want = (xv / s).round_ties_even().clamp(-1.0, 1.0);
            assert_eq!(wv, want, "element {i}: x {xv}, s {s}");
        }
        // No code 3 is ever written.
        for b in &blocks {
            for k in 0..4 {
                assert_ne!((b >> (2 * k)) & 3, 3);
            }
        }
    }
}

#[test]
fn quantize_t2_row_round_trip() {
    let mut rng = Rng::new(51);
    for s in [0.5f32, 0.013, 3.75e-3, 1.0] {
        // An exactly ternary row times s (with zeros): the ternary values come back exactly.
        let t: Vec<f32> = (0..640).map(|_| rng.below(3) as f32 - 1.0).collect();
        let x: Vec<f32> = t.iter().map(|v| v * s).collect();
        let mut blocks = vec![0u8; 160];
        st::quantize_t2_row(&x, &mut blocks);
        let mut w = vec![0.0; 640];
        st::dequantize_t2(&blocks, &mut w);
        assert_eq!(w, t, "s = {s}");
    }
    // With no zeros and s a power of two the absmean is s, so w * s is the row itself.
    let t: Vec<f32> = (0..256)
        .map(|_| if rng.below(2) == 0 { -1.0 } else { 1.0 })
        .collect();
    let x: Vec<f32> = t.iter().map(|v| v * 0.125).collect();
    let mut blocks = vec![0u8; 64];
    let s = st::quantize_t2_row(&x, &mut blocks);
    assert_eq!(s, 0.125);
    let mut w = vec![0.0; 256];
    st::dequantize_t2(&blocks, &mut w);
    let back: Vec<f32> = w.iter().map(|v| v * s).collect();
    assert_eq!(back, x);
}

#[test]
fn quantize_t2_row_keeps_a_ternary_rows_magnitude() {
    // A row already ternary (a ternary model's weights: zeros and one magnitude, any sign) is
    // re-encoded exactly; absmean would have scaled it by its share of nonzero weights.
    let mut rng = Rng::new(52);
    for m in [0.7f32, 0.013, 3.0e-3] {
        let x: Vec<f32> = (0..640).map(|_| (rng.below(3) as f32 - 1.0) * m).collect();
        let mut blocks = vec![0u8; 160];
        let s = st::quantize_t2_row(&x, &mut blocks);
        assert_eq!(s, m);
        let mut w = vec![0.0; 640];
        st::dequantize_t2(&blocks, &mut w);
        let back: Vec<f32> = w.iter().map(|v| v * s).collect();
        assert_eq!(back, x, "m = {m}");
    }
    // One value of another magnitude: absmean again.
    let mut x = vec![0.5f32; 64];
    x[3] = -0.25;
    let mut blocks = [0u8; 16];
    let s = st::quantize_t2_row(&x, &mut blocks);
    assert_eq!(s, (63.0 * 0.5 + 0.25) / 64.0);
}

#[test]
fn quantize_t2_row_ties_and_zero() {
    // [a, -a, t, -t, 0, ...] with a = 63/64, t = 1/64: the absmean is exactly 2/64 = 1/32, so
    // t / s = 0.5 is a tie and rounds to 0 (even), a / s = 31.5 clamps to 1.
    let mut x = [0.0f32; 64];
    x[..4].copy_from_slice(&[63.0 / 64.0, -63.0 / 64.0, 1.0 / 64.0, -1.0 / 64.0]);
    let mut b = [0u8; 16];
    let s = st::quantize_t2_row(&x, &mut b);
    assert_eq!(s, 1.0 / 32.0);
    let mut w = [f32::NAN; 64];
    st::dequantize_t2(&b, &mut w);
    assert_eq!(&w[..4], &[1.0, -1.0, 0.0, 0.0]);
    assert!(w[4..].iter().all(|&v| v == 0.0));
    // All zero: scale 0, every weight code 1 (zero).
    let mut b = [0xFFu8; 32];
    assert_eq!(st::quantize_t2_row(&[0.0; 128], &mut b), 0.0);
    assert!(b.iter().all(|&v| v == 0x55), "all zero weights are code 1");
}

#[test]
fn quantize_t2_row_checks_lengths() {
    assert!(std::panic::catch_unwind(|| st::quantize_t2_row(&[0.0; 32], &mut [0; 8])).is_err());
    assert!(std::panic::catch_unwind(|| st::quantize_t2_row(&[0.0; 64], &mut [0; 15])).is_err());
}

// ---------------------------------------------------------------------------------------------
// Layouts and the reference dequantizers

#[test]
fn t2_type_numbers() {
    let t = GgmlType::T2;
    assert_eq!(t.id(), 1000);
    assert_eq!(GgmlType::from_id(1000), Some(t));
    assert_eq!(t.name(), "T2");
    assert_eq!((t.block_len(), t.block_bytes()), (64, 16));
    assert_eq!(t.bytes_for(576), Some(144));
    assert_eq!(t.bytes_for(100), None);
}

#[test]
fn packing_round_trips_through_the_dequantizers() {
    let mut rng = Rng::new(60);
    for ty in [Ty::T2, Ty::Tq1, Ty::Tq2] {
        assert_eq!(ty.ggml().block_len(), ty.block_len());
        assert_eq!(ty.ggml().block_bytes(), ty.block_bytes());
        for _ in 0..20 {
            let c: Vec<u8> = (0..ty.block_len()).map(|_| rng.below(3) as u8).collect();
            let d = f16::from_f32(0.5 + rng.unit());
            let mut blk = vec![0u8; ty.block_bytes()];
            pack_block(ty, &c, d.to_bits(), &mut blk);
            let mut y = vec![f32::NAN; ty.block_len()];
            ty.dequantize(&blk, &mut y);
            let dv = if ty == Ty::T2 { 1.0 } else { d.to_f32() };
            for (e, (&y, &c)) in y.iter().zip(&c).enumerate() {
                assert_eq!(y, dv * (c as f32 - 1.0), "{ty:?} element {e}");
            }
        }
    }
}

fn fixture(name: &str) -> (Vec<u8>, Vec<f32>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
    let blocks = std::fs::read(format!("{dir}ternary_{name}.blocks")).expect("fixture blocks");
    let f = std::fs::read(format!("{dir}ternary_{name}.f32")).expect("fixture values");
    let vals = f
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (blocks, vals)
}

#[test]
fn dequantize_tq1_0_matches_gguf() {
    let (blocks, want) = fixture("tq1_0");
    assert!(want.len() >= 8 * 256);
    let mut got = vec![f32::NAN; want.len()];
    st::dequantize_tq1_0(&blocks, &mut got);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "TQ1_0 value {i}: {g} vs gguf {w}");
    }
}

#[test]
fn dequantize_tq2_0_matches_gguf() {
    let (blocks, want) = fixture("tq2_0");
    assert!(want.len() >= 8 * 256);
    let mut got = vec![f32::NAN; want.len()];
    st::dequantize_tq2_0(&blocks, &mut got);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "TQ2_0 value {i}: {g} vs gguf {w}");
    }
}

// ---------------------------------------------------------------------------------------------
// Small-batch products (gemm): several tokens against the same rows

type GemmFn = unsafe fn(&[u8], &ActsQ8<'_>, usize, &mut [f32]);

impl Ty {
    fn gemm_spec(self) -> GemmFn {
        match self {
            Ty::T2 => st::gemm_t2,
            Ty::Tq2 => st::gemm_tq2_0,
            Ty::Tq2w => st::gemm_tq2w,
            Ty::Tq1 => unreachable!("TQ1_0 has no gemm of its own"),
        }
    }
}

/// `nb` tokens of activations, one after the other, as a gemm reads them.
fn batch_acts(rng: &mut Rng, nb: usize, cols: usize, ak: ActKind) -> Acts {
    let mut all = Acts {
        qs: Vec::new(),
        d: Vec::new(),
        sums: Vec::new(),
    };
    for _ in 0..nb {
        let a = Acts::quantize(&random_x(rng, cols, ak));
        all.qs.extend(a.qs);
        all.d.extend(a.d);
        all.sums.extend(a.sums);
    }
    all
}

/// Gemm shapes `(nb, rows, cols)`: token counts around the SIMD token blocks (4 and 8) and the
/// prefill chunk (16), rows around the row blocks (4, 16, 32), columns across the column panels
/// (1024) and, for T2, ending with half a window; plus random ones.
fn gemm_shapes(rng: &mut Rng, ty: Ty) -> Vec<(usize, usize, usize)> {
    let bl = ty.block_len();
    let mut v = vec![
        (1, 1, bl),
        (2, 0, bl),
        (3, 2, 0),
        (4, 5, 2 * bl),
        (8, 17, 5 * bl),
        (9, 33, 1024 + bl),
        (16, 32, 2560),
        (17, 3, 2048 + bl),
    ];
    if ty == Ty::T2 {
        v.extend([(5, 7, 576), (16, 4, 1536), (12, 9, 64)]);
    }
    for _ in 0..16 {
        v.push((
            1 + rng.below(20),
            1 + rng.below(40),
            bl * (1 + rng.below(4096 / bl)),
        ));
    }
    v
}

/// `f` and the scalar gemm give the bits of the scalar gemv for every token.
fn check_gemm(name: &str, ty: Ty, f: GemmFn, wk: WKind, ak: ActKind, s: Scale, seed: u64) {
    let mut rng = Rng::new(seed);
    for (nb, rows, cols) in gemm_shapes(&mut rng, ty) {
        let w = random_rows(&mut rng, ty, rows, cols, wk, s);
        let acts = batch_acts(&mut rng, nb, cols, ak);
        let mut want = vec![f32::NAN; nb * rows];
        for (t, o) in want.chunks_exact_mut(rows.max(1)).enumerate() {
            let g = cols / QS;
            let at = ActsQ8 {
                qs: &acts.qs[t * cols..(t + 1) * cols],
                d: &acts.d[t * g..(t + 1) * g],
                sums: &acts.sums[t * g..(t + 1) * g],
            };
            // SAFETY: the scalar kernel has no CPU requirement.
            unsafe { (ty.spec())(&w, &at, o) };
        }
        let mut spec = vec![f32::NAN; nb * rows];
        let mut got = vec![f32::NAN; nb * rows];
        // SAFETY: the scalar kernel has no CPU requirement; the caller of `check_gemm` checked
        // that this CPU has the features `f` needs.
        unsafe {
            (ty.gemm_spec())(&w, &acts.view(), nb, &mut spec);
            f(&w, &acts.view(), nb, &mut got);
        }
        assert_eq!(
            bits(&spec),
            bits(&want),
            "scalar gemm differs from one gemv per token: {nb} tokens, {rows}x{cols}"
        );
        assert_eq!(
            bits(&got),
            bits(&want),
            "{name} differs from the spec: {nb} tokens, {rows}x{cols}, {wk:?} weights, {ak:?} \
             acts, {s:?} scales"
        );
    }
}

macro_rules! gemm_kernel_tests {
    ($($name:ident: $ty:expr, $f:path, $arch:literal, $available:expr;)*) => {$(
        #[cfg(target_arch = $arch)]
        mod $name {
            use super::*;
            const NAME: &str = stringify!($name);

            fn available() -> bool {
                $available
            }
            fn check(wk: WKind, ak: ActKind, s: Scale, seed: u64) {
                if !available() {
                    eprintln!("{NAME}: this CPU lacks the features, skipped");
                    return;
                }
                check_gemm(NAME, $ty, $f, wk, ak, s, seed);
            }

            #[test]
            fn random_bit_exact() {
                check(WKind::Random, ActKind::Typical, Scale::Typical, 101);
                check(WKind::RandomBytes, ActKind::Typical, Scale::Typical, 102);
            }
            #[test]
            fn extremes() {
                check(WKind::AllMinus, ActKind::AllMax, Scale::Max, 103);
                check(WKind::AllPlus, ActKind::AtMax, Scale::Typical, 104);
                check(WKind::RandomBytes, ActKind::AtMax, Scale::Max, 105);
                check(WKind::AllZero, ActKind::Zero, Scale::Typical, 106);
            }
            #[test]
            fn outliers_and_scales() {
                check(WKind::Random, ActKind::OutlierGroup, Scale::Typical, 107);
                check(WKind::Random, ActKind::Typical, Scale::Subnormal, 108);
                check(WKind::Random, ActKind::Typical, Scale::Negative, 109);
            }
            #[test]
            #[should_panic(expected = "weight bytes")]
            fn checks_weight_length() {
                if !available() {
                    panic!("weight bytes (skipped: features missing)");
                }
                let acts = batch_acts(&mut Rng::new(1), 3, 256, ActKind::Typical);
                let bytes = $ty.block_bytes() * (256 / $ty.block_len()) * 2 - 1;
                // SAFETY: `available()` checked the features.
                unsafe { $f(&vec![0; bytes], &acts.view(), 3, &mut [0.0; 6]) };
            }
            #[test]
            #[should_panic(expected = "whole token rows")]
            fn checks_token_rows() {
                if !available() {
                    panic!("whole token rows (skipped: features missing)");
                }
                let acts = batch_acts(&mut Rng::new(2), 3, 256, ActKind::Typical);
                let bytes = $ty.block_bytes() * (256 / $ty.block_len()) * 2;
                // SAFETY: `available()` checked the features.
                unsafe { $f(&vec![0; bytes], &acts.view(), 3, &mut [0.0; 5]) };
            }
        }
    )*};
}

gemm_kernel_tests! {
    avx2_gemm_t2: Ty::T2, edgellm_kernels::x86::ternary::avx2_gemm_t2, "x86_64", has_avx2();
    avx2_gemm_tq2_0: Ty::Tq2, edgellm_kernels::x86::ternary::avx2_gemm_tq2_0, "x86_64",
        has_avx2();
    avx2_gemm_tq2w: Ty::Tq2w, edgellm_kernels::x86::ternary::avx2_gemm_tq2w, "x86_64",
        has_avx2();
    avxvnni_gemm_t2: Ty::T2, edgellm_kernels::x86::vnni::avxvnni_gemm_t2, "x86_64",
        has_avxvnni();
    avxvnni_gemm_tq2_0: Ty::Tq2, edgellm_kernels::x86::vnni::avxvnni_gemm_tq2_0, "x86_64",
        has_avxvnni();
    avx512_gemm_t2: Ty::T2, edgellm_kernels::x86::avx512::avx512_gemm_t2, "x86_64",
        has_avx512();
    avx512_gemm_tq2_0: Ty::Tq2, edgellm_kernels::x86::avx512::avx512_gemm_tq2_0, "x86_64",
        has_avx512();
    neon_gemm_t2: Ty::T2, edgellm_kernels::aarch64::ternary::neon_gemm_t2, "aarch64", has_neon();
    neon_gemm_tq2_0: Ty::Tq2, edgellm_kernels::aarch64::ternary::neon_gemm_tq2_0, "aarch64",
        has_neon();
    neon_dotprod_gemm_t2: Ty::T2, edgellm_kernels::aarch64::ternary::neon_dotprod_gemm_t2,
        "aarch64", has_dotprod();
    neon_dotprod_gemm_tq2_0: Ty::Tq2, edgellm_kernels::aarch64::ternary::neon_dotprod_gemm_tq2_0,
        "aarch64", has_dotprod();
    neon_gemm_tq2w: Ty::Tq2w, edgellm_kernels::aarch64::ternary::neon_gemm_tq2w, "aarch64",
        has_neon();
    neon_dotprod_gemm_tq2w: Ty::Tq2w, edgellm_kernels::aarch64::ternary::neon_dotprod_gemm_tq2w,
        "aarch64", has_dotprod();
}

/// `Kernels::gemm` of every tier this CPU has gives, for every ternary type (TQ1_0 through its
/// one-gemv-per-token default), the bits of the scalar gemv per token.
#[test]
fn dispatch_gemm_matches_gemv_per_token() {
    use edgellm_kernels::{CpuFeatures, Kernels, Tier};
    let f = CpuFeatures::detect();
    let mut rng = Rng::new(120);
    for tier in Tier::ALL
        .into_iter()
        .filter(|&t| f.missing_for(t).is_none())
    {
        let k = Kernels::with_tier(tier, &f).unwrap();
        for ty in [Ty::T2, Ty::Tq1, Ty::Tq2, Ty::Tq2w] {
            for (nb, rows, cols) in [(1, 3, 256), (5, 7, 512), (16, 33, 1280)] {
                let w = random_rows(&mut rng, ty, rows, cols, WKind::Random, Scale::Typical);
                let acts = batch_acts(&mut rng, nb, cols, ActKind::Typical);
                let x = vec![0.0f32; nb * cols];
                let mut got = vec![f32::NAN; nb * rows];
                k.gemm(ty.ggml(), &w, &x, &acts.view(), nb, &mut got);
                let g = cols / QS;
                for t in 0..nb {
                    let at = ActsQ8 {
                        qs: &acts.qs[t * cols..(t + 1) * cols],
                        d: &acts.d[t * g..(t + 1) * g],
                        sums: &acts.sums[t * g..(t + 1) * g],
                    };
                    let mut want = vec![f32::NAN; rows];
                    // SAFETY: the scalar kernel has no CPU requirement.
                    unsafe { (ty.spec())(&w, &at, &mut want) };
                    assert_eq!(
                        bits(&got[t * rows..(t + 1) * rows]),
                        bits(&want),
                        "{tier} {ty:?} token {t} of {nb}, {rows}x{cols}"
                    );
                }
            }
        }
    }
}

/// The scalar gemm is the scalar gemv once per token, bit for bit (on every machine).
#[test]
fn scalar_gemm_is_gemv_per_token() {
    check_gemm(
        "scalar_gemm_t2",
        Ty::T2,
        st::gemm_t2,
        WKind::RandomBytes,
        ActKind::Typical,
        Scale::Typical,
        110,
    );
    check_gemm(
        "scalar_gemm_tq2_0",
        Ty::Tq2,
        st::gemm_tq2_0,
        WKind::RandomBytes,
        ActKind::Typical,
        Scale::Typical,
        111,
    );
    check_gemm(
        "scalar_gemm_tq2w",
        Ty::Tq2w,
        st::gemm_tq2w,
        WKind::RandomBytes,
        ActKind::Typical,
        Scale::Typical,
        112,
    );
}

/// TQ2W holds TQ2_0's numbers: each of the 256 elements has its own two bits of the 64 code
/// bytes, and blocks rewritten by `tq2w_from_tq2_0` (through `relayout`, as the loader calls it)
/// dequantize to the same values and give the TQ2_0 gemv's bits in the scalar TQ2W gemv, for
/// any bytes (code 3 included).
#[test]
fn tq2w_holds_tq2_0s_numbers() {
    let mut seen = [0u8; 64];
    for e in 0..256 {
        let (byte, shift) = st::tq2w_position(e);
        assert!(byte < 64 && shift % 2 == 0 && shift < 8, "element {e}");
        assert_eq!(seen[byte] & (3 << shift), 0, "element {e} shares bits");
        seen[byte] |= 3 << shift;
    }
    assert_eq!(seen, [0xFF; 64]);
    let mut rng = Rng::new(130);
    for (rows, cols) in [(1, 256), (7, 512), (5, 2560)] {
        let w = random_rows(
            &mut rng,
            Ty::Tq2,
            rows,
            cols,
            WKind::RandomBytes,
            Scale::Typical,
        );
        let mut w2 = w.clone();
        edgellm_kernels::relayout(GgmlType::TQ2_0, GgmlType::TQ2W, &mut w2).unwrap();
        assert_ne!(w, w2, "{rows}x{cols}: the codes move");
        assert_eq!(w[64..66], w2[64..66], "the scale stays");
        let (mut a, mut b) = (vec![0.0; rows * cols], vec![0.0; rows * cols]);
        st::dequantize_tq2_0(&w, &mut a);
        st::dequantize_tq2w(&w2, &mut b);
        assert_eq!(bits(&a), bits(&b), "{rows}x{cols} values");
        let acts = Acts::quantize(&random_x(&mut rng, cols, ActKind::Typical));
        let (mut want, mut got) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
        st::gemv_tq2_0(&w, &acts.view(), &mut want);
        st::gemv_tq2w(&w2, &acts.view(), &mut got);
        assert_eq!(bits(&got), bits(&want), "{rows}x{cols} products");
    }
    // Only TQ2_0 to TQ2W, and only whole blocks; the bytes stay as they were otherwise.
    let mut w = vec![7u8; 66 * 2 + 1];
    assert!(edgellm_kernels::relayout(GgmlType::TQ2_0, GgmlType::TQ2W, &mut w).is_err());
    assert!(edgellm_kernels::relayout(GgmlType::TQ1_0, GgmlType::TQ2W, &mut w[..66]).is_err());
    assert!(w.iter().all(|&b| b == 7));
}

/// TQ2W holds TQ1_0's numbers too: blocks written by `tq2w_from_tq1_0` (through
/// `relayout_into`, as the loader calls it) dequantize to the TQ1_0 blocks' values and give the
/// TQ1_0 gemv's and gemm's bits in TQ2W's, for any bytes; the dispatched kernels of every tier
/// this CPU has agree, TQ2W's on the new blocks and TQ1_0's on the old.
#[test]
fn tq2w_holds_tq1_0s_numbers() {
    use edgellm_kernels::{relaid_len, relayout_into, CpuFeatures, Kernels, Tier};
    let mut rng = Rng::new(131);
    let f = CpuFeatures::detect();
    let tiers: Vec<Kernels> = Tier::ALL
        .into_iter()
        .filter(|&t| f.missing_for(t).is_none())
        .map(|t| Kernels::with_tier(t, &f).unwrap())
        .collect();
    for (rows, cols, k) in [
        (1, 256, WKind::RandomBytes),
        (7, 512, WKind::RandomBytes),
        (5, 2560, WKind::RandomBytes),
        (3, 768, WKind::AllPlus),
        (3, 768, WKind::AllMinus),
    ] {
        let w = random_rows(&mut rng, Ty::Tq1, rows, cols, k, Scale::Typical);
        let n = relaid_len(GgmlType::TQ1_0, GgmlType::TQ2W, w.len()).unwrap();
        assert_eq!(n, w.len() / 54 * 66);
        let mut w2 = vec![0u8; n];
        relayout_into(GgmlType::TQ1_0, GgmlType::TQ2W, &w, &mut w2).unwrap();
        assert_eq!(w[52..54], w2[64..66], "the scale stays");
        let (mut a, mut b) = (vec![0.0; rows * cols], vec![f32::NAN; rows * cols]);
        st::dequantize_tq1_0(&w, &mut a);
        st::dequantize_tq2w(&w2, &mut b);
        assert_eq!(bits(&a), bits(&b), "{rows}x{cols} values");
        let acts = Acts::quantize(&random_x(&mut rng, cols, ActKind::Typical));
        let (mut want, mut got) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
        st::gemv_tq1_0(&w, &acts.view(), &mut want);
        st::gemv_tq2w(&w2, &acts.view(), &mut got);
        assert_eq!(bits(&got), bits(&want), "{rows}x{cols} products");
        for kern in &tiers {
            let x = vec![0.0; cols];
            let (mut g1, mut g2) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
            kern.gemv(GgmlType::TQ1_0, &w, &x, &acts.view(), &mut g1);
            kern.gemv(GgmlType::TQ2W, &w2, &x, &acts.view(), &mut g2);
            assert_eq!(bits(&g2), bits(&g1), "{} {rows}x{cols}", kern.tier());
            assert_eq!(bits(&g2), bits(&want), "{} {rows}x{cols}", kern.tier());
            // Three tokens at once (prefill).
            let x3 = random_x(&mut rng, 3 * cols, ActKind::Typical);
            let a3 = Acts::quantize(&x3);
            let (mut m1, mut m2) = (vec![f32::NAN; 3 * rows], vec![f32::NAN; 3 * rows]);
            kern.gemm(GgmlType::TQ1_0, &w, &x3, &a3.view(), 3, &mut m1);
            kern.gemm(GgmlType::TQ2W, &w2, &x3, &a3.view(), 3, &mut m2);
            assert_eq!(bits(&m2), bits(&m1), "{} {rows}x{cols} x 3", kern.tier());
        }
    }
    // Only TQ1_0 or TQ2_0 to TQ2W, only whole blocks, only into an output of the right size;
    // the output stays as it was otherwise.
    let src = vec![7u8; 54 * 2];
    let mut dst = vec![9u8; 66 * 2];
    assert!(relayout_into(
        GgmlType::TQ1_0,
        GgmlType::TQ2W,
        &src[..100],
        &mut dst[..122]
    )
    .is_err());
    assert!(relayout_into(GgmlType::TQ1_0, GgmlType::TQ2W, &src, &mut dst[..131]).is_err());
    assert!(relayout_into(GgmlType::TQ1_0, GgmlType::TQ2_0, &src, &mut dst).is_err());
    assert!(relayout_into(GgmlType::Q4_0, GgmlType::TQ2W, &src, &mut dst).is_err());
    assert!(dst.iter().all(|&b| b == 9));
    assert_eq!(relaid_len(GgmlType::TQ1_0, GgmlType::TQ2W, 55), None);
    assert_eq!(relaid_len(GgmlType::TQ2_0, GgmlType::TQ2W, 132), Some(132));
    assert_eq!(relaid_len(GgmlType::T2, GgmlType::TQ2W, 132), None);
}

// ---------------------------------------------------------------------------------------------
// I2_S (bitnet.cpp)

/// Encodes weights `t` (each -1, 0 or +1) as an I2_S tensor with blocks of `g` bytes, walking the
/// bytes: byte `p` of block `b` holds, from its high bits down, the codes of elements
/// `4 g b + p`, `+ g`, `+ 2g`, `+ 3g`; then the trailer with `scale`.
fn i2_s_bytes(t: &[f32], g: usize, scale: f32) -> Vec<u8> {
    let mut out = Vec::new();
    for blk in t.chunks(4 * g) {
        for p in 0..g {
            let code = |k: usize| (blk[p + k * g] + 1.0) as u8;
            out.push(code(0) << 6 | code(1) << 4 | code(2) << 2 | code(3));
        }
    }
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend_from_slice(&[0; 28]);
    out
}

#[test]
fn i2_s_layouts_dequantize_as_bitnet_cpp_packs_them() {
    // A named case: x86 byte 0 = 0b10_01_00_10 is elements 0, 32, 64, 96 = +1, 0, -1, +1.
    let mut data = vec![0x55u8; 32];
    data[0] = 0b10_01_00_10;
    data.extend_from_slice(&2.5f32.to_le_bytes());
    data.extend_from_slice(&[0; 28]);
    let mut w = vec![f32::NAN; 128];
    assert_eq!(
        st::dequantize_i2_s(&data, &mut w, st::I2sLayout::X86).unwrap(),
        2.5
    );
    assert_eq!([w[0], w[32], w[64], w[96]], [2.5, 0.0, -2.5, 2.5]);
    assert!(w
        .iter()
        .enumerate()
        .all(|(i, &v)| [0, 32, 64, 96].contains(&i) || v == 0.0));
    // Random tensors, both layouts, rows that are not whole blocks (3 x 192 = 576 weights is
    // 4.5 x86 blocks: a tensor of 6 such rows, 27 blocks).
    let mut rng = Rng::new(53);
    for (layout, g) in [(st::I2sLayout::X86, 32), (st::I2sLayout::Arm, 16)] {
        let t: Vec<f32> = (0..6 * 576).map(|_| rng.below(3) as f32 - 1.0).collect();
        let data = i2_s_bytes(&t, g, 0.0625);
        let mut w = vec![f32::NAN; t.len()];
        assert_eq!(st::dequantize_i2_s(&data, &mut w, layout).unwrap(), 0.0625);
        let want: Vec<f32> = t.iter().map(|v| v * 0.0625).collect();
        assert_eq!(w, want, "{layout:?}");
    }
}

#[test]
fn i2_s_refuses_bad_tensors() {
    let t = vec![0.0f32; 256];
    let ok = i2_s_bytes(&t, 32, 1.0);
    let mut w = vec![0.0; 256];
    assert!(st::dequantize_i2_s(&ok, &mut w, st::I2sLayout::X86).is_ok());
    // Short of the trailer.
    assert!(st::dequantize_i2_s(&ok[..ok.len() - 1], &mut w, st::I2sLayout::X86).is_err());
    // Not whole blocks.
    assert!(st::dequantize_i2_s(&ok, &mut w[..192], st::I2sLayout::X86).is_err());
    // A scale that is not finite.
    for bad in [f32::NAN, f32::INFINITY] {
        let data = i2_s_bytes(&t, 32, bad);
        assert!(st::dequantize_i2_s(&data, &mut w, st::I2sLayout::X86).is_err());
    }
}

/// The `avx2` tier multiplies TQ2_0 and TQ1_0 faster as TQ2W and says so; the scalar tier, and
/// the tiers with kernels of their own for them, keep them; no other type has a faster layout.
#[test]
fn faster_layout_is_tq2w_for_avx2_and_neon_tq2_0_and_avx2_tq1_0() {
    use edgellm_kernels::{CpuFeatures, Kernels, Tier};
    let f = CpuFeatures::detect();
    let tq2w = Some(GgmlType::TQ2W);
    for tier in Tier::ALL
        .into_iter()
        .filter(|&t| f.missing_for(t).is_none())
    {
        let k = Kernels::with_tier(tier, &f).unwrap();
        // (TQ2_0, TQ1_0) by the tier whose kernels run them.
        let want = |ty| match k.kernel_tier(ty) {
            Some(Tier::Avx2) => (tq2w, tq2w),
            Some(Tier::Neon | Tier::NeonDotprod) => (tq2w, None),
            _ => (None, None),
        };
        assert_eq!(
            k.faster_layout(GgmlType::TQ2_0),
            want(GgmlType::TQ2_0).0,
            "{tier}"
        );
        assert_eq!(
            k.faster_layout(GgmlType::TQ1_0),
            want(GgmlType::TQ1_0).1,
            "{tier}"
        );
        for from in [GgmlType::TQ2_0, GgmlType::TQ1_0] {
            if k.faster_layout(from).is_some() {
                // The new layout runs on a kernel of the same tier, not a slower fallback.
                assert_eq!(k.kernel_tier(GgmlType::TQ2W), k.kernel_tier(from), "{tier}");
            }
        }
        for ty in [GgmlType::T2, GgmlType::TQ2W, GgmlType::Q4_0] {
            assert_eq!(k.faster_layout(ty), None, "{tier} {ty}");
        }
    }
    // Named cases, where this CPU has the tier.
    let with = |t| {
        f.missing_for(t)
            .is_none()
            .then(|| Kernels::with_tier(t, &f).unwrap())
    };
    if let Some(k) = with(Tier::Avx2) {
        assert_eq!(k.faster_layout(GgmlType::TQ2_0), tq2w);
        assert_eq!(k.faster_layout(GgmlType::TQ1_0), tq2w);
    }
    for t in [Tier::Neon, Tier::NeonDotprod] {
        if let Some(k) = with(t) {
            assert_eq!(k.faster_layout(GgmlType::TQ2_0), tq2w, "{t}");
            assert_eq!(k.faster_layout(GgmlType::TQ1_0), None, "{t}");
        }
    }
    if let Some(k) = with(Tier::Scalar) {
        assert_eq!(k.faster_layout(GgmlType::TQ2_0), None);
    }
}
