//! The weight quantizers: bit-exact with gguf-py's Q8_0 / Q4_0 quantizers on a committed fixture
//! (`data/quantize/gen.py` wrote it), and dequantize(quantize(x)) within each format's error bound.

use edgellm_kernels::scalar::quantize::{quantize_row_q4_0, quantize_row_q8_0};
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
