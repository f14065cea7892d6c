//! The T2 ternary weight type as the converter writes it: GGUF type id 1000, 64 weights per
//! 16-byte block (2-bit codes `c = w + 1`), one absmean scale per row in a companion F32 tensor
//! `<weight name>.scale`.
//!
//! STAND-IN: until the kernels crate has `GgmlType::T2` and `scalar::ternary::quantize_t2_row`,
//! [`quantize_t2_row`] below is a local function with the same signature. [`quantize_t2`] is the
//! only caller: switching to the kernels' quantizer is a one-line change there.

/// GGUF type id of T2.
pub const T2_TYPE_ID: u32 = 1000;
/// Weights per T2 block.
pub const T2_BLOCK_LEN: usize = 64;
/// Bytes per T2 block.
pub const T2_BLOCK_BYTES: usize = 16;

/// STAND-IN for `edgellm_kernels::scalar::ternary::quantize_t2_row`: quantizes one row to T2
/// blocks in `dst` and returns the row's scale `s = mean |w|`. Each weight becomes
/// `q = clamp(round(w / s), -1, 1)`, stored as the 2-bit code `q + 1`; weight `i` of a block is
/// in byte `i / 4`, bits `2 * (i % 4)`. A row of zeros has scale 0 and all codes 1.
fn quantize_t2_row(src: &[f32], dst: &mut [u8]) -> f32 {
    assert!(
        src.len().is_multiple_of(T2_BLOCK_LEN)
            && dst.len() == src.len() / T2_BLOCK_LEN * T2_BLOCK_BYTES,
        "quantize T2: {} values need a multiple of {T2_BLOCK_LEN} and {} bytes, got {}",
        src.len(),
        src.len() / T2_BLOCK_LEN * T2_BLOCK_BYTES,
        dst.len()
    );
    let s = (src.iter().map(|v| f64::from(v.abs())).sum::<f64>() / src.len().max(1) as f64) as f32;
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    dst.fill(0);
    for (i, &w) in src.iter().enumerate() {
        let q = (w * inv).round().clamp(-1.0, 1.0) as i32;
        dst[i / 4] |= ((q + 1) as u8) << (2 * (i % 4));
    }
    s
}

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

/// The value of T2 code `c` (0, 1, 2) at scale `s`, for checking images.
pub fn t2_value(code: u8, s: f32) -> f32 {
    (i32::from(code & 3) - 1) as f32 * s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_codes_and_scales() {
        let mut row = vec![0f32; 128];
        row[0] = 2.0;
        row[1] = -2.0;
        row[5] = 0.4;
        row[127] = 3.0;
        let (q, s) = quantize_t2(&row, 1, 128);
        let mean = (2.0 + 2.0 + 0.4 + 3.0) / 128.0;
        assert!((s[0] - mean).abs() < 1e-7);
        assert_eq!(q.len(), 32);
        assert_eq!(q[0] & 3, 2);
        assert_eq!((q[0] >> 2) & 3, 0);
        assert_eq!(
            (q[1] >> 2) & 3,
            2,
            "0.4 / 0.058 rounds past 1 and is clamped"
        );
        assert_eq!(q[31] >> 6, 2);
        assert_eq!(q[2], 0b0101_0101);
        assert_eq!(t2_value(0, 0.5), -0.5);
        let (q, s) = quantize_t2(&[0.0; 64], 1, 64);
        assert_eq!(s, [0.0]);
        assert!(q.iter().all(|&b| b == 0b0101_0101));
    }
}
