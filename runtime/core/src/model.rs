//! A model as the forward pass sees it: the hyper-parameters read from GGUF metadata, and every
//! weight tensor checked against them, borrowed zero-copy from the file's bytes.
//!
//! Invariant: once [`Model::from_gguf`] returns, every tensor has the shape and a type the kernels
//! support, and every row length is a whole number of activation blocks; the forward pass relies on
//! it and does not check again.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::gguf::{Gguf, TensorInfo};
use crate::kernels::{scalar, GgmlType, Kernels, QK};

/// Model families the forward pass knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Arch {
    /// Llama 2/3, SmolLM2, TinyLlama: no biases, q/k rows permuted so RoPE rotates adjacent pairs.
    Llama,
    /// Qwen2 / Qwen2.5: q/k/v biases, RoPE rotates the two halves of each head (NeoX layout).
    Qwen2,
    /// BitNet b1.58 (bitnet.cpp's `bitnet-b1.58`, formerly `bitnet-25`): llama blocks with an RMS
    /// norm before each output projection (`attn_sub_norm` on the heads' outputs, `ffn_sub_norm`
    /// on the gated product), a squared-ReLU gate instead of SiLU, RoPE on the two halves of each
    /// head (no q/k permutation).
    Bitnet,
}

impl Arch {
    /// The name GGUF uses in `general.architecture`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Bitnet => "bitnet-b1.58",
        }
    }
}

/// The gate of the feed-forward block: `act(x·w_gate) * (x·w_up)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnAct {
    /// `silu(g) * u` (SwiGLU).
    Silu,
    /// `max(g, 0)² * u` (BitNet b1.58).
    Relu2,
}

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotate `(x[2i], x[2i+1])` (GGUF's permuted llama layout).
    Adjacent,
    /// Rotate `(x[i], x[i + d/2])`.
    Halves,
}

/// Hyper-parameters of a decoder-only transformer.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: Arch,
    pub n_layers: usize,
    /// Width of the residual stream.
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Hidden width of the gated feed-forward block.
    pub ffn_dim: usize,
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub train_context: usize,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    pub ffn_act: FfnAct,
}

impl Config {
    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// A weight matrix in the file: `rows` outputs of `cols` inputs, in the file's block type.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// `rows * row_bytes` bytes of packed blocks.
    pub data: &'a [u8],
    /// One little-endian f32 scale per row (`rows * 4` bytes) for types whose blocks carry no
    /// scale (T2, from the companion tensor `<name>.scale`); `None` otherwise.
    pub row_scale: Option<&'a [u8]>,
}

impl<'a> Matrix<'a> {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows
    }
    /// The bytes of rows `r` (a sub-range of `0..rows`).
    pub fn rows_data(&self, r: core::ops::Range<usize>) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r.start * rb..r.end * rb]
    }

    /// Multiplies `out` (the products of rows `first..first + out.len()`) by their row scales,
    /// if this matrix has them.
    pub fn apply_row_scale(&self, first: usize, out: &mut [f32]) {
        if let Some(s) = self.row_scale {
            let s = &s[first * 4..(first + out.len()) * 4];
            for (o, b) in out.iter_mut().zip(s.chunks_exact(4)) {
                *o *= f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

/// The weights of one transformer block.
#[derive(Debug)]
pub struct Layer<'a> {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix<'a>,
    pub wk: Matrix<'a>,
    pub wv: Matrix<'a>,
    /// Biases of q, k, v (Qwen2), empty otherwise.
    pub bq: Vec<f32>,
    pub bk: Vec<f32>,
    pub bv: Vec<f32>,
    pub wo: Matrix<'a>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix<'a>,
    pub w_up: Matrix<'a>,
    pub w_down: Matrix<'a>,
    /// RMS norm weights of the heads' outputs before `wo` and of the gated product before
    /// `w_down` (BitNet), empty otherwise.
    pub attn_sub_norm: Vec<f32>,
    pub ffn_sub_norm: Vec<f32>,
}

/// A loaded model: configuration and weights borrowed from the file's bytes.
#[derive(Debug)]
pub struct Model<'a> {
    pub config: Config,
    pub token_embd: Matrix<'a>,
    pub layers: Vec<Layer<'a>>,
    pub output_norm: Vec<f32>,
    /// The output (logits) layer; the token embedding when the model ties them.
    pub output: Matrix<'a>,
    /// Whether `output` is the token embedding.
    pub tied_output: bool,
}

/// Why a model cannot be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelError {
    /// `general.architecture` names a family this runtime does not run.
    UnsupportedArch(String),
    /// A metadata key the model needs is missing or has the wrong type.
    MissingKey(String),
    /// A metadata value is out of range or inconsistent.
    BadValue(String),
    /// A tensor the model needs is missing.
    MissingTensor(String),
    /// A tensor has the wrong shape.
    BadShape {
        name: String,
        expected: String,
        found: String,
    },
    /// A tensor's type cannot be computed with.
    UnsupportedType { name: String, ty: GgmlType },
}

impl core::fmt::Display for ModelError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ModelError::UnsupportedArch(a) => {
                write!(
                    f,
                    "unsupported architecture {a:?}: this runtime runs llama, qwen2 and \
                     bitnet-b1.58"
                )
            }
            ModelError::MissingKey(k) => write!(f, "metadata key {k} is missing or not a number"),
            ModelError::BadValue(m) => write!(f, "bad metadata value: {m}"),
            ModelError::MissingTensor(t) => write!(f, "tensor {t} is missing from the file"),
            ModelError::BadShape {
                name,
                expected,
                found,
            } => {
                write!(f, "tensor {name} has shape {found}, expected {expected}")
            }
            ModelError::UnsupportedType { name, ty } => {
                write!(
                    f,
                    "tensor {name} has type {ty}, which this runtime cannot compute with \
                     (supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K T2 Q4W \
                     TQ1_0 TQ2_0 TQ2W)"
                )?;
                if *ty == GgmlType::I2_S {
                    write!(
                        f,
                        "; `edgellm convert MODEL -o IMAGE --format ternary` turns bitnet.cpp's \
                         I2_S into T2 without loss"
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl core::error::Error for ModelError {}

/// The rewrite of a GGUF file read into memory in which every tensor whose type the kernels
/// multiply faster in another layout of the same numbers ([`Kernels::faster_layout`]) takes that
/// layout: its blocks, and the type id in its tensor info, so that a parse of the result gives
/// the new type. When every such layout keeps its tensor's size (TQ2_0 as TQ2W) the file is
/// rewritten in place ([`Relayout::apply`]); when one grows (TQ1_0 as TQ2W, 66 bytes for every
/// 54) the tensors after it move, and [`Relayout::write`] writes the result into a new buffer
/// ([`Relayout::output_len`] bytes), each tensor at the next multiple of the file's alignment, in
/// the order of their offsets.
#[derive(Debug)]
pub struct Relayout {
    jobs: Vec<RelayoutJob>,
    data_offset: usize,
    len: usize,
    changed: usize,
    in_place: bool,
}

/// One tensor of a [`Relayout`]: where its type id is, its bytes before and after (from the
/// start of the file), and its new type if it changes.
#[derive(Debug)]
struct RelayoutJob {
    type_at: usize,
    src: core::ops::Range<usize>,
    dst: core::ops::Range<usize>,
    to: Option<(GgmlType, GgmlType)>,
}

impl Relayout {
    /// Plans the rewrite of `bytes` (a whole GGUF file) for `kernels`: `None` when no tensor would
    /// change or the file does not parse (its parse then reports what is wrong).
    pub fn plan(bytes: &[u8], kernels: &Kernels) -> Option<Relayout> {
        let g = Gguf::parse(bytes).ok()?;
        let mut tensors: Vec<&TensorInfo<'_>> = g.tensors().iter().collect();
        tensors.sort_by_key(|t| t.offset);
        let mut jobs = Vec::with_capacity(tensors.len());
        let (mut pos, mut changed, mut in_place) = (0usize, 0, true);
        for t in tensors {
            // The parse checked that the tensor lies inside the data section.
            let start = g.data_offset + t.offset as usize;
            let src = start..start + t.data.len();
            let to = kernels.faster_layout(t.ty).and_then(|to| {
                let n = crate::kernels::relaid_len(t.ty, to, t.data.len())?;
                Some((to, n))
            });
            let size = to.map_or(t.data.len(), |(_, n)| n);
            in_place &= size == t.data.len();
            changed += usize::from(to.is_some());
            pos = pos.checked_next_multiple_of(g.alignment)?;
            let dst = g.data_offset + pos..g.data_offset + pos.checked_add(size)?;
            pos = dst.end - g.data_offset;
            jobs.push(RelayoutJob {
                type_at: t.type_offset,
                src,
                dst,
                to: to.map(|(to, _)| (t.ty, to)),
            });
        }
        (changed > 0).then(|| Relayout {
            len: g.data_offset + pos,
            jobs,
            data_offset: g.data_offset,
            changed,
            in_place,
        })
    }

    /// How many tensors change layout.
    pub fn tensors(&self) -> usize {
        self.changed
    }

    /// Bytes of the file [`Self::write`] writes.
    pub fn output_len(&self) -> usize {
        self.len
    }

    /// Whether every tensor keeps its size and place, so that [`Self::apply`] can rewrite the
    /// file where it is.
    pub fn in_place(&self) -> bool {
        self.in_place
    }

    /// Rewrites `bytes`, the file planned for, in place. Panics unless [`Self::in_place`].
    pub fn apply(&self, bytes: &mut [u8]) {
        assert!(
            self.in_place,
            "this relayout moves tensors: use Relayout::write"
        );
        for j in &self.jobs {
            if let Some((from, to)) = j.to {
                crate::kernels::relayout(from, to, &mut bytes[j.src.clone()])
                    .expect("the plan admits only pairs that relayout converts");
                bytes[j.type_at..j.type_at + 4].copy_from_slice(&to.id().to_le_bytes());
            }
        }
    }

    /// Writes the rewritten file into `dst` ([`Self::output_len`] bytes, zeroed) from `src`, the
    /// file planned for: the header with the new type ids and tensor offsets, then each tensor in
    /// its new layout, in pieces of at most [`RELAYOUT_PIECE`] bytes of `src`, calling `done`
    /// with each piece's range in `src` once it has been read, in increasing order (a caller can
    /// let the memory behind it go, so that the two copies are never both whole).
    pub fn write(&self, src: &[u8], dst: &mut [u8], mut done: impl FnMut(core::ops::Range<usize>)) {
        assert_eq!(
            dst.len(),
            self.len,
            "the output must hold the rewritten file"
        );
        dst[..self.data_offset].copy_from_slice(&src[..self.data_offset]);
        for j in &self.jobs {
            let offset = (j.dst.start - self.data_offset) as u64;
            dst[j.type_at + 4..j.type_at + 12].copy_from_slice(&offset.to_le_bytes());
            // Pieces of whole source blocks, each written to its place in `dst`.
            let (from_block, to_block) = match j.to {
                Some((from, to)) => {
                    dst[j.type_at..j.type_at + 4].copy_from_slice(&to.id().to_le_bytes());
                    (from.block_bytes(), to.block_bytes())
                }
                None => (1, 1),
            };
            let piece = (RELAYOUT_PIECE / from_block).max(1) * from_block;
            let (mut s, mut d) = (j.src.start, j.dst.start);
            while s < j.src.end {
                let n = piece.min(j.src.end - s);
                let m = n / from_block * to_block;
                let (from, to) = (&src[s..s + n], &mut dst[d..d + m]);
                match j.to {
                    Some((ft, tt)) => crate::kernels::relayout_into(ft, tt, from, to)
                        .expect("the plan sized the output for this pair"),
                    None => to.copy_from_slice(from),
                }
                done(s..s + n);
                (s, d) = (s + n, d + m);
            }
        }
    }
}

/// The most bytes of a file [`Relayout::write`] reads before it reports them read.
pub const RELAYOUT_PIECE: usize = 8 << 20;

/// Rewrites in place, in `bytes` (a whole GGUF file read into memory), every tensor whose type
/// `kernels` multiply faster in a layout of the same size ([`Relayout`]). Returns how many
/// tensors changed: zero for a file that does not parse (left as it is) or whose rewrite would
/// move tensors (which needs [`Relayout::write`]).
pub fn relayout_weights(bytes: &mut [u8], kernels: &Kernels) -> usize {
    match Relayout::plan(bytes, kernels) {
        Some(r) if r.in_place() => {
            r.apply(bytes);
            r.tensors()
        }
        _ => 0,
    }
}

/// Largest values accepted from metadata, far above any model this runtime targets; they keep
/// size arithmetic far from overflow.
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 512;
const MAX_VOCAB: usize = 1 << 22;

impl<'a> Model<'a> {
    /// The types of the matrices a forward pass multiplies by (every layer's and the output
    /// layer's; not the embedding, whose rows are only looked up).
    pub fn matmul_types(&self) -> impl Iterator<Item = GgmlType> + '_ {
        self.layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
            .chain(core::iter::once(&self.output))
            .map(|m| m.ty)
    }

    /// Reads the configuration and every weight of a llama, qwen2 or bitnet-b1.58 model from a
    /// parsed GGUF file,
    /// checking each tensor's shape and type against `kernels`.
    pub fn from_gguf(g: &Gguf<'a>, kernels: &Kernels) -> Result<Model<'a>, ModelError> {
        let arch_name = g.architecture().unwrap_or("");
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            // bitnet.cpp's name for BitNet b1.58 2B-4T; its first published file said bitnet-25.
            "bitnet-b1.58" | "bitnet-25" => Arch::Bitnet,
            other => return Err(ModelError::UnsupportedArch(other.into())),
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let get = |k: &str| -> Result<usize, ModelError> {
            let full = key(k);
            g.get_u64(&full)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or(ModelError::MissingKey(full))
        };
        let n_layers = get("block_count")?;
        let dim = get("embedding_length")?;
        let ffn_dim = get("feed_forward_length")?;
        let n_heads = get("attention.head_count")?;
        let n_kv_heads = get("attention.head_count_kv").unwrap_or(n_heads);
        let train_context = get("context_length").unwrap_or(2048);
        let rope_theta = g.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0);
        let rms_eps = g
            .get_f32(&key("attention.layer_norm_rms_epsilon"))
            .ok_or_else(|| ModelError::MissingKey(key("attention.layer_norm_rms_epsilon")))?;
        let bad = |m: String| Err(ModelError::BadValue(m));
        if n_layers == 0 || n_layers > MAX_LAYERS {
            return bad(format!("block_count {n_layers} is not in 1..={MAX_LAYERS}"));
        }
        for (name, v) in [("embedding_length", dim), ("feed_forward_length", ffn_dim)] {
            if v == 0 || v > MAX_DIM || v % QK != 0 {
                return bad(format!(
                    "{name} {v} must be a non-zero multiple of {QK} up to {MAX_DIM}"
                ));
            }
        }
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 || dim % n_heads != 0 {
            return bad(format!(
                "head counts {n_heads}/{n_kv_heads} do not divide embedding_length {dim}"
            ));
        }
        let head_dim = match g.get_u64(&key("attention.key_length")) {
            Some(k) => usize::try_from(k).unwrap_or(0),
            None => dim / n_heads,
        };
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > 1024 {
            return bad(format!(
                "head dimension {head_dim} must be even and at most 1024"
            ));
        }
        if (n_heads * head_dim) % QK != 0 || (n_kv_heads * head_dim) % QK != 0 {
            return bad(format!("head widths must be multiples of {QK}"));
        }
        if !rope_theta.is_finite() || rope_theta <= 0.0 {
            return bad(format!("rope.freq_base {rope_theta} must be positive"));
        }
        if !rms_eps.is_finite() || rms_eps <= 0.0 || rms_eps > 1.0 {
            return bad(format!("layer_norm_rms_epsilon {rms_eps} is not in (0, 1]"));
        }

        let token_embd = matrix(g, kernels, "token_embd.weight", None, dim)?;
        let vocab_size = token_embd.rows;
        if vocab_size > MAX_VOCAB {
            return bad(format!(
                "vocabulary of {vocab_size} tokens is larger than {MAX_VOCAB}"
            ));
        }
        let config = Config {
            arch,
            n_layers,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab_size,
            train_context,
            rope_theta,
            rope_style: match arch {
                Arch::Llama => RopeStyle::Adjacent,
                Arch::Qwen2 | Arch::Bitnet => RopeStyle::Halves,
            },
            rms_eps,
            ffn_act: match arch {
                Arch::Bitnet => FfnAct::Relu2,
                Arch::Llama | Arch::Qwen2 => FfnAct::Silu,
            },
        };
        if arch == Arch::Bitnet && config.q_dim() != dim {
            return bad(format!(
                "a bitnet-b1.58 model needs head_count x head size = embedding_length, got {} x \
                 {head_dim} and {dim}",
                n_heads
            ));
        }
        let (q_dim, kv_dim) = (config.q_dim(), config.kv_dim());

        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let name = |t: &str| format!("blk.{l}.{t}");
            let m = |t: &str, rows, cols| matrix(g, kernels, &name(t), Some(rows), cols);
            let bias = |t: &str, n| -> Result<Vec<f32>, ModelError> {
                match arch {
                    Arch::Qwen2 => vector(g, &name(t), n),
                    Arch::Llama | Arch::Bitnet => match g.tensor(&name(t)) {
                        Some(_) => vector(g, &name(t), n),
                        None => Ok(Vec::new()),
                    },
                }
            };
            layers.push(Layer {
                attn_norm: vector(g, &name("attn_norm.weight"), dim)?,
                wq: m("attn_q.weight", q_dim, dim)?,
                wk: m("attn_k.weight", kv_dim, dim)?,
                wv: m("attn_v.weight", kv_dim, dim)?,
                bq: bias("attn_q.bias", q_dim)?,
                bk: bias("attn_k.bias", kv_dim)?,
                bv: bias("attn_v.bias", kv_dim)?,
                wo: m("attn_output.weight", dim, q_dim)?,
                ffn_norm: vector(g, &name("ffn_norm.weight"), dim)?,
                w_gate: m("ffn_gate.weight", ffn_dim, dim)?,
                w_up: m("ffn_up.weight", ffn_dim, dim)?,
                w_down: m("ffn_down.weight", dim, ffn_dim)?,
                attn_sub_norm: match arch {
                    Arch::Bitnet => vector(g, &name("attn_sub_norm.weight"), q_dim)?,
                    Arch::Llama | Arch::Qwen2 => Vec::new(),
                },
                ffn_sub_norm: match arch {
                    Arch::Bitnet => vector(g, &name("ffn_sub_norm.weight"), ffn_dim)?,
                    Arch::Llama | Arch::Qwen2 => Vec::new(),
                },
            });
        }
        let output_norm = vector(g, "output_norm.weight", dim)?;
        let (output, tied_output) = match g.tensor("output.weight") {
            Some(_) => (
                matrix(g, kernels, "output.weight", Some(vocab_size), dim)?,
                false,
            ),
            None => (token_embd, true),
        };
        Ok(Model {
            config,
            token_embd,
            layers,
            output_norm,
            output,
            tied_output,
        })
    }

    /// Bytes of weights read per decoded token (every matrix once, the embedding row aside).
    pub fn weight_bytes_per_token(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                [l.wq, l.wk, l.wv, l.wo, l.w_gate, l.w_up, l.w_down]
                    .iter()
                    .map(|m| m.data.len())
                    .sum::<usize>()
            })
            .sum();
        per_layer + self.output.data.len()
    }
}

fn shape_str(t: &TensorInfo<'_>) -> String {
    let dims: Vec<String> = t.dims[..t.n_dims].iter().map(|d| format!("{d}")).collect();
    format!("[{}]", dims.join(", "))
}

/// A 2-D weight matrix named `name` with `cols` inputs and `rows` outputs (any count if `None`).
fn matrix<'a>(
    g: &Gguf<'a>,
    kernels: &Kernels,
    name: &str,
    rows: Option<usize>,
    cols: usize,
) -> Result<Matrix<'a>, ModelError> {
    let t = g
        .tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
    let expected = match rows {
        Some(r) => format!("[{cols}, {r}]"),
        None => format!("[{cols}, vocab]"),
    };
    let bad_shape = || ModelError::BadShape {
        name: name.into(),
        expected: expected.clone(),
        found: shape_str(t),
    };
    if t.n_dims != 2 || t.dims[0] != cols as u64 {
        return Err(bad_shape());
    }
    let n_rows = usize::try_from(t.dims[1]).map_err(|_| bad_shape())?;
    if n_rows == 0 || rows.is_some_and(|r| r != n_rows) {
        return Err(bad_shape());
    }
    if !kernels.supports(t.ty) {
        return Err(ModelError::UnsupportedType {
            name: name.into(),
            ty: t.ty,
        });
    }
    // T2 blocks hold bare ternary codes: the per-row scales live in `<name>.scale`.
    let row_scale = if t.ty == GgmlType::T2 {
        let sname = format!("{name}.scale");
        let st = g
            .tensor(&sname)
            .ok_or_else(|| ModelError::MissingTensor(sname.clone()))?;
        if st.ty != GgmlType::F32 || st.n_dims != 1 || st.dims[0] != n_rows as u64 {
            return Err(ModelError::BadShape {
                name: sname,
                expected: format!("F32 [{n_rows}]"),
                found: format!("{} {}", st.ty, shape_str(st)),
            });
        }
        Some(st.data)
    } else {
        None
    };
    Ok(Matrix {
        name: t.name,
        ty: t.ty,
        rows: n_rows,
        cols,
        data: t.data,
        row_scale,
    })
}

/// A 1-D tensor of `n` values (norm weights, biases), converted to f32.
fn vector(g: &Gguf<'_>, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let t = g
        .tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
    if t.n_dims != 1 || t.dims[0] != n as u64 {
        return Err(ModelError::BadShape {
            name: name.into(),
            expected: format!("[{n}]"),
            found: shape_str(t),
        });
    }
    if !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return Err(ModelError::UnsupportedType {
            name: name.into(),
            ty: t.ty,
        });
    }
    let mut out = vec![0.0f32; n];
    scalar::dequantize_row(t.ty, t.data, &mut out).map_err(|_| ModelError::UnsupportedType {
        name: name.into(),
        ty: t.ty,
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn an_i2_s_tensor_is_refused_with_the_way_to_convert_it() {
        let e = ModelError::UnsupportedType {
            name: "blk.0.attn_q.weight".into(),
            ty: GgmlType::I2_S,
        };
        let m = e.to_string();
        assert!(
            m.contains("type I2_S") && m.contains("edgellm convert"),
            "{m}"
        );
        let e = ModelError::UnsupportedType {
            name: "w".into(),
            ty: GgmlType::IQ2_XS,
        };
        assert!(!e.to_string().contains("convert"));
    }
}
