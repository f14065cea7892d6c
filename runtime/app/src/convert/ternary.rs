//! The T2 ternary weight type as the converter writes it: GGUF type id 1000, 64 weights per
//! 16-byte block of 2-bit codes (layout: `edgellm_kernels::scalar::ternary`), one absmean scale
//! per row in a companion F32 tensor `<weight name>.scale`.

use edgellm_kernels::scalar::ternary::{quantize_t2_row, quantize_t2_row_with};
use edgellm_kernels::GgmlType;

/// GGUF type id of T2.
pub const T2_TYPE_ID: u32 = GgmlType::T2.id();
/// Weights per T2 block.
pub const T2_BLOCK_LEN: usize = GgmlType::T2.block_len();
/// Bytes per T2 block.
pub const T2_BLOCK_BYTES: usize = GgmlType::T2.block_bytes();

/// Quantizes `rows` rows of `cols` weights to T2: the packed blocks and the per-row scales.
pub fn quantize_t2(values: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let row_bytes = cols / T2_BLOCK_LEN * T2_BLOCK_BYTES;
    let mut out = vec![0u8; rows * row_bytes];
    let mut scales = Vec::with_capacity(rows);
    for (src, dst) in values
        .chunks_exact(cols)
        .zip(out.chunks_exact_mut(row_bytes))
    {
        scales.push(quantize_t2_row(src, dst));
    }
    (out, scales)
}

/// [`quantize_t2`] with one scale for the whole tensor, as BitNet b1.58 was trained: every row
/// gets the same scale: the rule of `edgellm_kernels::scalar::ternary::t2_scale` over all the
/// values, but with the absmean summed in f64 (a tensor has millions of values: an f32 running sum
/// would drop most of their low bits).
pub fn quantize_t2_per_tensor(values: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let row_bytes = cols / T2_BLOCK_LEN * T2_BLOCK_BYTES;
    let mut out = vec![0u8; rows * row_bytes];
    let magnitude = values.iter().find(|v| **v != 0.0).map(|v| v.abs());
    let s = match magnitude {
        // Exactly ternary (every nonzero value of one magnitude): keep that magnitude.
        Some(m) if values.iter().all(|v| *v == 0.0 || v.abs() == m) => m,
        Some(_) => {
            (values.iter().map(|v| f64::from(v.abs())).sum::<f64>() / values.len() as f64) as f32
        }
        None => 0.0,
    };
    let scales = values
        .chunks_exact(cols)
        .zip(out.chunks_exact_mut(row_bytes))
        .map(|(src, dst)| quantize_t2_row_with(src, dst, s))
        .collect();
    (out, scales)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgellm_kernels::scalar::ternary::dequantize_t2;

    #[test]
    fn rows_round_trip_through_codes_and_scales() {
        let mut row = vec![0f32; 128];
        row[0] = 2.0;
        row[1] = -2.0;
        row[5] = 0.4;
        row[127] = 3.0;
        let (q, s) = quantize_t2(&row, 1, 128);
        let mean = (2.0 + 2.0 + 0.4 + 3.0) / 128.0;
        assert!((s[0] - mean).abs() < 1e-7);
        assert_eq!(q.len(), 32);
        let mut back = vec![0f32; 128];
        dequantize_t2(&q, &mut back);
        for (i, (&w, &b)) in row.iter().zip(&back).enumerate() {
            let want = (w / s[0]).round_ties_even().clamp(-1.0, 1.0);
            assert_eq!(b, want, "weight {i}");
        }
        // One scale per tensor: the absmean of both rows, for each.
        let two: Vec<f32> = (0..128).map(|i| if i < 64 { 1.0 } else { 3.0 }).collect();
        let (q, s) = quantize_t2_per_tensor(&two, 2, 64);
        assert_eq!(s, [2.0, 2.0]);
        dequantize_t2(&q, &mut back);
        assert!(back[..64].iter().all(|&v| v == 0.0), "1 / 2 rounds to 0");
        assert!(back[64..].iter().all(|&v| v == 1.0), "3 / 2 clamps to 1");
        // The absmean is summed in f64: in f32, 2^24 + 1 is 2^24, so the 63 ones would vanish.
        let mut big = vec![1.0f32; 64];
        big[0] = 16_777_216.0;
        let (_, s) = quantize_t2_per_tensor(&big, 1, 64);
        assert_eq!(s, [((16_777_216.0f64 + 63.0) / 64.0) as f32]);
        let (q, s) = quantize_t2(&[0.0; 64], 1, 64);
        assert_eq!(s, [0.0]);
        dequantize_t2(&q, &mut back[..64]);
        assert!(back[..64].iter().all(|&v| v == 0.0));
    }
}
