//! The weight quantizers: bit-exact with gguf-py's Q8_0 / Q4_0 quantizers on a committed fixture
//! (`data/quantize/gen.py` wrote it), and dequantize(quantize(x)) within each format's error bound;
//! Q6_K (our own rule) also requantizes values on its grid to the same bytes.

use edgellm_kernels::scalar::kquants::dequantize_q6_k;
use edgellm_kernels::scalar::quantize::{quantize_row_q4_0, quantize_row_q6_k, quantize_row_q8_0};
use edgellm_kernels::scalar::{dequantize_q4_0, dequantize_q8_0};
use std::path::Path;

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/quantize")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn input() -> Vec<f32> {
    fixture("input.f32")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A small deterministic generator (xorshift64*), so the tests need no extra crate.
fn random_row(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            (u * 2.0 - 1.0) * scale
        })
        .collect()
}

fn first_diff(a: &[u8], b: &[u8], block: usize) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).map(|i| i / block)
}

#[test]
fn q8_0_matches_gguf_py_bit_for_bit() {
    let x = input();
    let want = fixture("q8_0.bin");
    let mut got = vec![0u8; want.len()];
    quantize_row_q8_0(&x, &mut got);
    assert_eq!(first_diff(&got, &want, 34), None, "first differing block");
}

#[test]
fn q4_0_matches_gguf_py_bit_for_bit() {
    let x = input();
    let want = fixture("q4_0.bin");
    let mut got = vec![0u8; want.len()];
    quantize_row_q4_0(&x, &mut got);
    assert_eq!(first_diff(&got, &want, 18), None, "first differing block");
}

/// Largest error allowed per element of a block whose largest magnitude is `amax`: half a step of
/// the quantizer, plus what rounding the scale to f16 adds over the block's range (relative
/// 2^-11 for a normal f16, absolute 2^-25 per code step for a subnormal one).
fn bound(amax: f32, steps: f32) -> f32 {
    let d = amax / steps;
    let f16_rel = 1.0 / 2048.0;
    let f16_abs = 1.0 / (1u64 << 25) as f32;
    0.5 * d * (1.0 + 1e-5) + amax * f16_rel * 1.01 + steps * f16_abs
}

#[test]
fn q8_0_round_trip_error_is_bounded() {
    for (seed, n, scale) in [
        (1, 32, 1.0),
        (2, 576, 0.05),
        (3, 1536, 300.0),
        (4, 96, 1e-3),
    ] {
        let x = random_row(seed, n, scale);
        let mut q = vec![0u8; n / 32 * 34];
        quantize_row_q8_0(&x, &mut q);
        let mut y = vec![0f32; n];
        dequantize_q8_0(&q, &mut y);
        for (b, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, r) in xb.iter().zip(yb) {
                assert!(
                    (a - r).abs() <= bound(amax, 127.0),
                    "seed {seed} block {b}: {a} came back as {r}"
                );
            }
        }
    }
}

#[test]
fn q4_0_round_trip_error_is_bounded() {
    for (seed, n, scale) in [
        (5, 32, 1.0),
        (6, 576, 0.05),
        (7, 1536, 300.0),
        (8, 96, 1e-3),
    ] {
        let x = random_row(seed, n, scale);
        let mut q = vec![0u8; n / 32 * 18];
        quantize_row_q4_0(&x, &mut q);
        let mut y = vec![0f32; n];
        dequantize_q4_0(&q, &mut y);
        for (b, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            // Q4_0 spans [-8d, 7d] with d = amax/8; the value of largest magnitude is exact up
            // to the f16 scale, the opposite end saturates at 7d (one full step).
            for (a, r) in xb.iter().zip(yb) {
                let err = (a - r).abs();
                assert!(
                    err <= bound(amax, 8.0) || err <= amax / 8.0 * 1.01,
                    "seed {seed} block {b}: {a} came back as {r}"
                );
            }
        }
    }
}

#[test]
fn zeros_and_exact_values() {
    let x = [0f32; 64];
    let mut q = [0xAAu8; 68];
    quantize_row_q8_0(&x, &mut q);
    assert!(q.iter().all(|&b| b == 0));
    let mut q4 = [0u8; 36];
    quantize_row_q4_0(&x, &mut q4);
    // d = -0.0 (0 / -8, as ggml writes it) and every code 8 (zero).
    assert_eq!(&q4[..2], &[0, 0x80]);
    assert!(q4[2..18].iter().all(|&b| b == 0x88));
    // Integers up to 127 survive Q8_0 exactly when the block's maximum is 127.
    let x: Vec<f32> = (1..=32).map(|i| (i * 4) as f32 - 1.0).collect();
    let mut q = [0u8; 34];
    quantize_row_q8_0(&x, &mut q);
    let mut y = [0f32; 32];
    dequantize_q8_0(&q, &mut y);
    assert_eq!(x, y);
}

#[test]
#[should_panic(expected = "not a multiple of 32")]
fn refuses_partial_blocks() {
    quantize_row_q8_0(&[0.0; 33], &mut [0u8; 34]);
}

/// Q6_K: the f16 super-scale and the sixteen signed sub-block scales of block `b` of `q`.
fn q6_k_scales(q: &[u8], b: usize) -> (f32, [i8; 16]) {
    let blk = &q[b * 210..(b + 1) * 210];
    let d = half::f16::from_bits(u16::from_le_bytes([blk[208], blk[209]])).to_f32();
    (d, core::array::from_fn(|i| blk[192 + i] as i8))
}

#[test]
fn q6_k_round_trip_error_is_bounded() {
    for (seed, n, scale) in [
        (11, 256, 1.0),
        (12, 1536, 0.05),
        (13, 2560, 300.0),
        (14, 512, 1e-3),
    ] {
        let mut x = random_row(seed, n, scale);
        // Seeds 13 and 14: one outlier per 256 values, so sub-block scales differ widely within
        // a block (the outlier's sub-block then rounds its other values coarsely).
        let outliers = seed >= 13;
        if outliers {
            for (i, v) in x.iter_mut().enumerate() {
                if i % 256 == 37 {
                    *v *= 20.0;
                }
            }
        }
        let mut q = vec![0u8; n / 256 * 210];
        quantize_row_q6_k(&x, &mut q);
        let mut y = vec![0f32; n];
        dequantize_q6_k(&q, &mut y);
        let (mut se, mut sx) = (0f64, 0f64);
        for (b, (xb, yb)) in x.chunks(256).zip(y.chunks(256)).enumerate() {
            let (d, sc) = q6_k_scales(&q, b);
            for (i, (xs, ys)) in xb.chunks(16).zip(yb.chunks(16)).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = (d * sc[i] as f32).abs();
                for (a, r) in xs.iter().zip(ys) {
                    let err = (a - r).abs();
                    // Half a step inside the codes' range; beyond it (the i8 sub-block scale,
                    // a multiple of `d`, may fall short of the ideal one, and the positive end
                    // is one step shorter than the negative one) the overshoot past 31 steps.
                    let over = (amax - 31.0 * step).max(0.0);
                    assert!(
                        err <= (0.5 * step + over) * 1.0001 + 1e-6 * amax,
                        "seed {seed} block {b} sub-block {i}: {a} came back as {r} (step {step})"
                    );
                }
            }
            for (a, r) in xb.iter().zip(yb) {
                se += f64::from(a - r).powi(2);
                sx += f64::from(*a).powi(2);
            }
        }
        // Six bits: about 1.6% of the values' root mean square for uniform values (a step of
        // amax / 32, an error of step / sqrt(12)).
        let rel = (se / sx).sqrt();
        eprintln!("seed {seed}: relative RMS error {rel:.4}");
        assert!(
            outliers || rel < 0.02,
            "seed {seed}: relative RMS error {rel}"
        );
    }
}

#[test]
fn q6_k_grid_values_requantize_to_the_same_bytes() {
    let mut s = 0x51u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for round in 0..64 {
        let mut blk = [0u8; 210];
        for b in blk[..192].iter_mut() {
            *b = next() as u8;
        }
        // A super-scale with an exponent that keeps every value normal; scales in -128..=127,
        // one of them -128; every sub-block with a code 0 (the value -32 d sc).
        let d = half::f16::from_f32(
            (0.01 + (next() % 1000) as f32 * 1e-3) * if next() % 2 == 0 { 1.0 } else { -1.0 },
        );
        blk[208..].copy_from_slice(&d.to_bits().to_le_bytes());
        for i in 0..16 {
            blk[192 + i] = next() as u8;
        }
        blk[192 + (next() % 16) as usize] = 0x80;
        for i in 0..16 {
            // Element e = 16 i + (next % 16) gets code 0: its low nibble and two high bits.
            let e = 16 * i + (next() % 16) as usize;
            let (h, g, l) = (e / 128, (e % 128) / 32, e % 32);
            blk[64 * h + 32 * (g % 2) + l] &= !(0x0F << (4 * (g / 2)));
            blk[128 + 32 * h + l] &= !(0x03 << (2 * g));
        }
        let mut x = [0f32; 256];
        dequantize_q6_k(&blk, &mut x);
        let mut q = [0u8; 210];
        quantize_row_q6_k(&x, &mut q);
        assert_eq!(q[192..], blk[192..], "round {round}: scales");
        let mut y = [0f32; 256];
        dequantize_q6_k(&q, &mut y);
        assert_eq!(x, y, "round {round}: values");
        // Codes can only differ where a sub-block's scale is 0 (any code gives 0 there).
        for i in (0..16).filter(|&i| blk[192 + i] != 0) {
            for e in 16 * i..16 * i + 16 {
                let (h, g, l) = (e / 128, (e % 128) / 32, e % 32);
                let code = |b: &[u8]| {
                    (b[64 * h + 32 * (g % 2) + l] >> (4 * (g / 2)) & 0x0F)
                        | ((b[128 + 32 * h + l] >> (2 * g)) & 0x03) << 4
                };
                assert_eq!(code(&q), code(&blk), "round {round}: element {e}");
            }
        }
    }
}

#[test]
fn q6_k_zeros_and_lengths() {
    let x = [0f32; 512];
    let mut q = [0xAAu8; 420];
    quantize_row_q6_k(&x, &mut q);
    let mut y = [1f32; 512];
    dequantize_q6_k(&q, &mut y);
    assert!(y.iter().all(|&v| v == 0.0));
    assert_eq!(&q[208..210], &[0, 0x80], "d = -0.0, as 0 / -128 gives");
    let r = std::panic::catch_unwind(|| quantize_row_q6_k(&[0f32; 255], &mut [0u8; 210]));
    assert!(r.is_err(), "255 values are not whole super-blocks");
    let r = std::panic::catch_unwind(|| quantize_row_q6_k(&[0f32; 256], &mut [0u8; 209]));
    assert!(r.is_err(), "209 bytes do not hold a super-block");
}
