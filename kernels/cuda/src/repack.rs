//! Weight matrices in the GPU's layout, built on the host from GGUF blocks.
//!
//! GGUF blocks interleave an f16 scale with the quantized values (34 bytes per 32 values for
//! Q8_0, 18 for Q4_0, ...), so the values of a row are not 4-byte aligned. The GPU kernels want
//! each row's quantized bytes contiguous and 16-byte aligned (one 128-bit load per block, four
//! `__dp4a` per 16 values) and the scales apart, as f32. Repacking moves bytes and widens f16
//! scales to f32, both exact, so the GPU computes with the same numbers as the CPU.
//!
//! | type  | `qs` per row               | `d` per 32 values | `m` per 32 values | `rs` per row |
//! |-------|----------------------------|-------------------|-------------------|--------------|
//! | Q8_0  | 32 int8 per block          | scale             | -                 | -            |
//! | Q4_0  | the block's 16 nibble bytes | scale            | -                 | -            |
//! | Q4W   | as Q4_0 (its blocks rewritten as Q4_0's first, without loss) | scale | - | -   |
//! | Q4_1  | the block's 16 nibble bytes | scale            | minimum           | -            |
//! | T2    | the 4 code bytes per 16, interleaved | -       | -                 | row scale    |
//! | F16   | the values                 | -                 | -                 | -            |
//! | F32, BF16 | f32 values             | -                 | -                 | -            |
//!
//! Rows are padded to a multiple of 16 bytes (`stride`).
//!
//! T2 keeps the CPU's 4-byte word per group of 16 values, but in each whole chunk of
//! [`T2_CHUNK`] groups (2048 values) the words are interleaved ([`t2_word_pos`]): lane `l` of a
//! warp finds the groups `l`, `l + 32`, `l + 64`, `l + 96` it sums, in that order, in one
//! 16-byte word at `4 l`, so a warp streams 512 bytes of a row per load. The groups of a row's
//! last partial chunk keep their natural order (lanes read them one word at a time).

use edgellm_core::model::Matrix;
use edgellm_kernels::scalar::q4w::q4_0_from_q4w;
use edgellm_kernels::GgmlType;

/// Kernel format codes (`FMT_*` in `kernels.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Format {
    Q8_0 = 0,
    Q4_0 = 1,
    Q4_1 = 2,
    T2 = 3,
    F16 = 4,
    F32 = 5,
}

/// A matrix in the device layout, still on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Packed {
    pub format: Format,
    pub rows: usize,
    pub cols: usize,
    /// Bytes from one row's `qs` to the next (a multiple of 16).
    pub stride: usize,
    pub qs: Vec<u8>,
    pub d: Vec<f32>,
    pub m: Vec<f32>,
    pub rs: Vec<f32>,
}

/// Groups of 16 values per interleaved T2 chunk: four per lane of a warp.
pub const T2_CHUNK: usize = 128;

/// The word (4 bytes, 16 values) of a T2 row of `ng` groups that holds group `g`: in a whole
/// chunk, group `32 j + l` at word `4 l + j`; past the last whole chunk, group `g` at word `g`.
/// (`t2_pos` of kernels.cu.)
pub fn t2_word_pos(g: usize, ng: usize) -> usize {
    let whole = ng / T2_CHUNK * T2_CHUNK;
    if g >= whole {
        return g;
    }
    let (c, i) = (g / T2_CHUNK, g % T2_CHUNK);
    c * T2_CHUNK + (i % 32) * 4 + i / 32
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Repacks `w` for the GPU, or says why its type or shape is not handled there.
pub fn repack(w: &Matrix<'_>) -> Result<Packed, String> {
    let (rows, cols) = (w.rows, w.cols);
    let unsupported = || {
        format!(
            "tensor {} has type {} ({} x {}); the GPU kernels read Q8_0, Q4_0, Q4_1, F16, BF16 \
             and F32 with rows a multiple of 32 values, T2 and Q4W with rows a multiple of 64",
            w.name,
            w.ty.name(),
            rows,
            cols
        )
    };
    if cols == 0 || !cols.is_multiple_of(32) {
        return Err(unsupported());
    }
    let (format, row_qs) = match w.ty {
        GgmlType::Q8_0 => (Format::Q8_0, cols),
        // Q4W holds Q4_0's numbers (rearranged for the CPU kernels): repacked as Q4_0.
        GgmlType::Q4_0 => (Format::Q4_0, cols / 2),
        GgmlType::Q4W if cols.is_multiple_of(64) => (Format::Q4_0, cols / 2),
        GgmlType::Q4_1 => (Format::Q4_1, cols / 2),
        GgmlType::T2 if cols.is_multiple_of(64) => (Format::T2, cols / 4),
        GgmlType::F16 => (Format::F16, cols * 2),
        GgmlType::F32 | GgmlType::BF16 => (Format::F32, cols * 4),
        _ => return Err(unsupported()),
    };
    let stride = row_qs.div_ceil(16) * 16;
    let blocks = cols / 32;
    let mut p = Packed {
        format,
        rows,
        cols,
        stride,
        qs: vec![0; stride * rows],
        d: Vec::new(),
        m: Vec::new(),
        rs: Vec::new(),
    };
    if matches!(format, Format::Q8_0 | Format::Q4_0 | Format::Q4_1) {
        p.d.reserve(rows * blocks);
    }
    if format == Format::Q4_1 {
        p.m.reserve(rows * blocks);
    }
    let mut q4 = if w.ty == GgmlType::Q4W {
        vec![0u8; blocks * 18]
    } else {
        Vec::new()
    };
    for r in 0..rows {
        let mut src = w.rows_data(r..r + 1);
        if w.ty == GgmlType::Q4W {
            q4_0_from_q4w(src, &mut q4);
            src = &q4;
        }
        let dst = &mut p.qs[r * stride..r * stride + row_qs];
        match format {
            Format::Q8_0 => {
                for (b, blk) in src.chunks_exact(34).enumerate() {
                    p.d.push(f16_at(blk, 0));
                    dst[b * 32..b * 32 + 32].copy_from_slice(&blk[2..34]);
                }
            }
            Format::Q4_0 => {
                for (b, blk) in src.chunks_exact(18).enumerate() {
                    p.d.push(f16_at(blk, 0));
                    dst[b * 16..b * 16 + 16].copy_from_slice(&blk[2..18]);
                }
            }
            Format::Q4_1 => {
                for (b, blk) in src.chunks_exact(20).enumerate() {
                    p.d.push(f16_at(blk, 0));
                    p.m.push(f16_at(blk, 2));
                    dst[b * 16..b * 16 + 16].copy_from_slice(&blk[4..20]);
                }
            }
            Format::T2 => {
                let ng = cols / 16;
                for (g, word) in src.chunks_exact(4).enumerate() {
                    let at = 4 * t2_word_pos(g, ng);
                    dst[at..at + 4].copy_from_slice(word);
                }
            }
            Format::F16 => dst.copy_from_slice(src),
            Format::F32 => {
                if w.ty == GgmlType::BF16 {
                    for (c, v) in src.chunks_exact(2).enumerate() {
                        let f = half::bf16::from_bits(u16::from_le_bytes([v[0], v[1]])).to_f32();
                        dst[c * 4..c * 4 + 4].copy_from_slice(&f.to_le_bytes());
                    }
                } else {
                    dst.copy_from_slice(src);
                }
            }
        }
    }
    if let Some(s) = w.row_scale {
        p.rs = s
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgellm_kernels::scalar;

    /// Dequantizes a packed row the way the GPU's `embed` kernel reads it.
    fn dequant(p: &Packed, r: usize) -> Vec<f32> {
        let row = &p.qs[r * p.stride..];
        let nb = p.cols / 32;
        let mut out: Vec<f32> = (0..p.cols)
            .map(|e| match p.format {
                Format::Q8_0 => p.d[r * nb + e / 32] * (row[e] as i8) as f32,
                Format::Q4_0 | Format::Q4_1 => {
                    let (b, i) = (e / 32, e % 32);
                    let byte = row[b * 16 + i % 16];
                    let q = if i < 16 { byte & 15 } else { byte >> 4 } as f32;
                    if p.format == Format::Q4_0 {
                        (q - 8.0) * p.d[r * nb + b]
                    } else {
                        q * p.d[r * nb + b] + p.m[r * nb + b]
                    }
                }
                Format::T2 => {
                    let (g, i) = (e / 16, e % 16);
                    let byte = row[4 * t2_word_pos(g, p.cols / 16) + i % 4];
                    ((byte >> (2 * (i / 4))) & 3) as f32 - 1.0
                }
                Format::F16 => f16_at(row, 2 * e),
                Format::F32 => {
                    f32::from_le_bytes([row[4 * e], row[4 * e + 1], row[4 * e + 2], row[4 * e + 3]])
                }
            })
            .collect();
        if !p.rs.is_empty() {
            out.iter_mut().for_each(|v| *v *= p.rs[r]);
        }
        out
    }

    fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 33) as u8
            })
            .collect()
    }

    /// Every supported type: the packed layout dequantizes to exactly the CPU's values.
    #[test]
    fn packed_rows_dequantize_like_the_cpu() {
        let rows = 5;
        let types = [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4W,
            GgmlType::Q4_1,
            GgmlType::T2,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::F32,
        ];
        // 192 columns: only a partial T2 chunk; 4288: two whole chunks and a partial one.
        for (cols, ty) in [192, 4288].into_iter().flat_map(|c| types.map(|t| (c, t))) {
            let row_bytes = cols / ty.block_len() * ty.block_bytes();
            let mut data = random_bytes(rows * row_bytes, 7);
            // Keep f16/bf16/f32 scales and values finite: clear the top exponent bit.
            match ty {
                GgmlType::Q8_0 | GgmlType::Q4_0 => {
                    for blk in data.chunks_exact_mut(ty.block_bytes()) {
                        blk[1] &= 0x3f;
                    }
                }
                GgmlType::Q4W => {
                    for blk in data.chunks_exact_mut(36) {
                        blk[1] &= 0x3f;
                        blk[3] &= 0x3f;
                    }
                }
                GgmlType::Q4_1 => {
                    for blk in data.chunks_exact_mut(20) {
                        blk[1] &= 0x3f;
                        blk[3] &= 0x3f;
                    }
                }
                GgmlType::F16 | GgmlType::BF16 => {
                    data.chunks_exact_mut(2).for_each(|v| v[1] &= 0x3f)
                }
                GgmlType::F32 => data.chunks_exact_mut(4).for_each(|v| v[3] &= 0x3f),
                _ => {}
            }
            let scales: Vec<u8> = (0..rows)
                .flat_map(|r| (0.5 + r as f32).to_le_bytes())
                .collect();
            let w = Matrix {
                name: "w",
                ty,
                rows,
                cols,
                data: &data,
                row_scale: (ty == GgmlType::T2).then_some(&scales[..]),
            };
            let p = repack(&w).unwrap();
            assert_eq!(p.stride % 16, 0);
            for r in 0..rows {
                let mut want = vec![0f32; cols];
                scalar::dequantize_row(ty, w.rows_data(r..r + 1), &mut want).unwrap();
                if ty == GgmlType::T2 {
                    want.iter_mut().for_each(|v| *v *= 0.5 + r as f32);
                }
                let got = dequant(&p, r);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{} x {cols}: row {r} differs", ty.name());
            }
        }
    }

    #[test]
    fn unsupported_types_and_shapes_are_refused_with_the_tensor_name() {
        let data = vec![0u8; 1000];
        let w = Matrix {
            name: "blk.0.ffn_down.weight",
            ty: GgmlType::Q4_K,
            rows: 1,
            cols: 256,
            data: &data[..144],
            row_scale: None,
        };
        let e = repack(&w).unwrap_err();
        assert!(
            e.contains("blk.0.ffn_down.weight") && e.contains("Q4_K"),
            "{e}"
        );
        let w = Matrix {
            name: "odd",
            ty: GgmlType::F32,
            rows: 1,
            cols: 20,
            data: &data[..80],
            row_scale: None,
        };
        assert!(repack(&w).unwrap_err().contains("odd"));
    }
}
