//! The converter's view of its input: metadata to carry over and tensors (GGUF names and shapes)
//! whose values are read as f32 on demand, from a GGUF file or from safetensors files.

use anyhow::{bail, Context, Result};
use edgellm_core::gguf::{Gguf, TensorInfo};
use edgellm_kernels::scalar::{self, ternary::I2sLayout};
use edgellm_kernels::GgmlType;
use safetensors::Dtype;

use super::writer::Meta;

/// How a tensor's rows relate to GGUF's interleaved-RoPE order for llama q/k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permute {
    /// Not a rotated projection (or a NeoX-style architecture): rows as they are.
    None,
    /// Hugging Face order: the rows of each of these many heads are permuted when written.
    ToGguf(usize),
    /// Already in GGUF order (a GGUF input): a LoRA delta must be permuted before it is added.
    AlreadyGguf(usize),
}

/// Where a tensor's values are.
pub enum Data<'a> {
    Gguf(TensorInfo<'a>),
    /// A bitnet.cpp I2_S tensor, whose file does not say how it packs its codes.
    I2s(TensorInfo<'a>, I2sLayout),
    Safetensors {
        dtype: Dtype,
        bytes: &'a [u8],
    },
}

/// One tensor of the input, named and shaped as in the output.
pub struct SrcTensor<'a> {
    /// GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Hugging Face module name without `.weight`/`.bias` (for LoRA), e.g.
    /// `model.layers.0.self_attn.q_proj`.
    pub hf_module: Option<String>,
    /// GGUF dimensions (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    pub data: Data<'a>,
    pub permute: Permute,
}

/// A model to convert.
pub struct Source<'a> {
    pub meta: Vec<(String, Meta)>,
    pub tensors: Vec<SrcTensor<'a>>,
}

impl Source<'_> {
    /// The values of tensor `i` as f32, in the source's row order.
    pub fn values(&self, i: usize) -> Result<Vec<f32>> {
        let t = &self.tensors[i];
        let n: u64 = t.dims.iter().product();
        let n = usize::try_from(n).context("tensor too large")?;
        let mut out = vec![0f32; n];
        match &t.data {
            Data::Gguf(info) => scalar::dequantize_row(info.ty, info.data, &mut out)
                .map_err(|e| anyhow::anyhow!("tensor {}: cannot dequantize: {e}", t.name))?,
            Data::I2s(info, layout) => {
                scalar::ternary::dequantize_i2_s(info.data, &mut out, *layout)
                    .map_err(|e| anyhow::anyhow!("tensor {}: {e}", t.name))?;
            }
            Data::Safetensors { dtype, bytes } => {
                safetensors_to_f32(*dtype, bytes, &mut out).with_context(|| t.name.clone())?
            }
        }
        Ok(out)
    }
}

/// Widens F32 / F16 / BF16 safetensors bytes into `out` (which sets the element count).
pub fn safetensors_to_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let width = match dtype {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        other => bail!("safetensors type {other:?} is not supported (F32, F16, BF16)"),
    };
    if bytes.len() != out.len() * width {
        bail!(
            "{} bytes for {} values of {dtype:?}",
            bytes.len(),
            out.len()
        );
    }
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(width)) {
        *o = match dtype {
            Dtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            Dtype::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
            _ => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
        };
    }
    Ok(())
}

/// Permutes the rows of a llama q or k projection (`heads` heads of `rows / heads` rows, each
/// row `row_len` long) from Hugging Face's rotate-half order into GGUF's adjacent-pair order:
/// in each head, row `2i + j` of the output is row `j * half + i` of the input (`j` in 0..2).
/// A 1-D tensor (a bias) is `row_len == 1`.
pub fn permute_rows(x: &[f32], row_len: usize, heads: usize) -> Vec<f32> {
    let rows = x.len() / row_len;
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0f32; x.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let dst = (h * hd + 2 * i + j) * row_len;
                let src = (h * hd + j * half + i) * row_len;
                out[dst..dst + row_len].copy_from_slice(&x[src..src + row_len]);
            }
        }
    }
    out
}

/// The Hugging Face module (without `.weight`) for a GGUF tensor name, and the reverse.
const NAME_MAP: [(&str, &str); 13] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("attn_sub_norm", "self_attn.attn_sub_norm"),
    ("ffn_sub_norm", "mlp.ffn_sub_norm"),
];

/// `blk.3.attn_q.weight` → (`model.layers.3.self_attn.q_proj`, `weight`).
pub fn gguf_to_hf(name: &str) -> Option<(String, &str)> {
    let (base, suffix) = name.rsplit_once('.')?;
    let module = match base {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = base.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            layer.parse::<usize>().ok()?;
            let hf = NAME_MAP.iter().find(|(g, _)| *g == part)?.1;
            format!("model.layers.{layer}.{hf}")
        }
    };
    Some((module, suffix))
}

/// `model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`.
pub fn hf_to_gguf(name: &str) -> Option<String> {
    let (module, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let base = match module {
        "model.embed_tokens" => "token_embd".to_string(),
        "model.norm" => "output_norm".to_string(),
        "lm_head" => "output".to_string(),
        _ => {
            let rest = module.strip_prefix("model.layers.")?;
            let (layer, part) = rest.split_once('.')?;
            layer.parse::<usize>().ok()?;
            let g = NAME_MAP.iter().find(|(_, h)| *h == part)?.0;
            format!("blk.{layer}.{g}")
        }
    };
    Some(format!("{base}.{suffix}"))
}

/// The source view of a parsed GGUF file: all its metadata and tensors. I2_S tensors are read
/// with blocks of `i2s` (the file does not record them).
pub fn from_gguf<'a>(g: &Gguf<'a>, i2s: I2sLayout) -> Result<Source<'a>> {
    let arch = g.architecture().unwrap_or("");
    let heads = g
        .get_u64(&format!("{arch}.attention.head_count"))
        .unwrap_or(0) as usize;
    let kv_heads = g
        .get_u64(&format!("{arch}.attention.head_count_kv"))
        .map(|v| v as usize)
        .unwrap_or(heads);
    let mut tensors = Vec::with_capacity(g.tensors().len());
    for t in g.tensors() {
        if t.ty == GgmlType::T2 {
            bail!(
                "tensor {} is T2: the input is already an EdgeLLM image; convert from the model \
                 it was made from",
                t.name
            );
        }
        let i2s_tensor = t.ty == GgmlType::I2_S;
        if !t.ty.is_supported() && !i2s_tensor {
            bail!(
                "tensor {} has type {}, which this converter cannot read \
                 (supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K TQ1_0 TQ2_0 \
                 I2_S)",
                t.name,
                t.ty
            );
        }
        let is_qk = t.name.ends_with(".attn_q.weight") || t.name.ends_with(".attn_k.weight");
        let permute = if arch == "llama" && is_qk && t.n_dims == 2 {
            let h = if t.name.ends_with(".attn_q.weight") {
                heads
            } else {
                kv_heads
            };
            if h == 0 || !t.dims[1].is_multiple_of(2 * h as u64) {
                bail!(
                    "tensor {}: {} rows do not split into {h} heads of even size",
                    t.name,
                    t.dims[1]
                );
            }
            Permute::AlreadyGguf(h)
        } else {
            Permute::None
        };
        tensors.push(SrcTensor {
            name: t.name.to_string(),
            hf_module: gguf_to_hf(t.name).map(|(m, _)| m),
            dims: t.shape().to_vec(),
            data: if i2s_tensor {
                Data::I2s(*t, i2s)
            } else {
                Data::Gguf(*t)
            },
            permute,
        });
    }
    let meta = g
        .metadata()
        .iter()
        .map(|(k, v)| (k.to_string(), Meta::from_value(v)))
        .collect();
    Ok(Source { meta, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for g in [
            "token_embd.weight",
            "output.weight",
            "output_norm.weight",
            "blk.12.attn_q.weight",
            "blk.0.attn_k.bias",
            "blk.3.ffn_down.weight",
            "blk.3.attn_norm.weight",
        ] {
            let (m, s) = gguf_to_hf(g).unwrap();
            assert_eq!(hf_to_gguf(&format!("{m}.{s}")).as_deref(), Some(g));
        }
        assert_eq!(
            hf_to_gguf("model.layers.7.mlp.gate_proj.weight").as_deref(),
            Some("blk.7.ffn_gate.weight")
        );
        assert_eq!(hf_to_gguf("model.layers.x.mlp.gate_proj.weight"), None);
        assert_eq!(hf_to_gguf("model.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn permutation_interleaves_halves() {
        // One head of 4 rows of length 2: rows r0 r1 | r2 r3 become r0 r2 r1 r3.
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
        assert_eq!(permute_rows(&x, 2, 1), [0., 1., 4., 5., 2., 3., 6., 7.]);
        // Two heads of 2 rows: each head on its own (a head of 2 is unchanged).
        assert_eq!(permute_rows(&[1., 2., 3., 4.], 1, 2), [1., 2., 3., 4.]);
    }
}
