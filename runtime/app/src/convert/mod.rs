//! `edgellm convert`: turns a GGUF file or a Hugging Face directory (optionally with a PEFT LoRA
//! adapter merged in) into a deployable model image: a GGUF v3 file whose linear weights are
//! ternary (T2), Q4W (Q4_0's numbers in the kernels' layout), Q8_0 or F16, with the embedding /
//! output layer at its own precision, the input's metadata carried over or synthesized, and a
//! checksum per tensor.
//!
//! Pipeline, one tensor at a time: read the source values as f32 (dequantize a GGUF tensor,
//! widen a safetensors one), merge the LoRA delta (in Hugging Face row order), permute llama's
//! q/k rows into GGUF's RoPE order (Hugging Face input only), quantize, stream to the file.

mod hf;
mod lora;
mod source;
pub mod ternary;
pub mod writer;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use edgellm_core::gguf::{Gguf, Value, ValueType};
use edgellm_kernels::scalar::q4w::quantize_row_q4w;
use edgellm_kernels::scalar::quantize::{quantize_row_q4_0, quantize_row_q6_k, quantize_row_q8_0};
use edgellm_kernels::GgmlType;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

use source::{Permute, Source};
use writer::{fnv1a64, GgufWriter, Meta, TensorSpec};

/// Version of the image layout, `edgellm.image.version`.
pub const IMAGE_VERSION: u32 = 1;
/// Metadata keys every image has.
pub const KEY_VERSION: &str = "edgellm.image.version";
pub const KEY_FORMAT: &str = "edgellm.image.format";
pub const KEY_HEAD_FORMAT: &str = "edgellm.image.head_format";
pub const KEY_SOURCE: &str = "edgellm.image.source";
/// FNV-1a 64 of each tensor's bytes, in tensor order (u64 array).
pub const KEY_CHECKSUMS: &str = "edgellm.image.checksums";

/// Format of the linear (2-D) weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// T2: 2-bit ternary codes with one absmean scale per row (BitNet b1.58 style).
    Ternary,
    /// Q4W: Q4_0's numbers (4.5 bits per weight) in the layout the gemv kernels stream; rows
    /// that are not a multiple of 64 values fall back to Q4_0.
    Q4,
    /// Q8_0: 8.5 bits per weight.
    Q8,
    /// F16: 16 bits per weight; a reference image to measure the others against.
    F16,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Ternary => "ternary",
            Format::Q4 => "q4",
            Format::Q8 => "q8",
            Format::F16 => "f16",
        }
    }
}

/// Format of the token embedding and output layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HeadFormat {
    /// F16: 16 bits per weight.
    F16,
    /// Q8_0: 8.5 bits per weight.
    Q8,
    /// Q6_K: 6.56 bits per weight, for rows a multiple of 256 values (others fall back to Q8_0);
    /// read by the CPU kernels only (the GPU path runs such a model on the CPU).
    Q6,
    /// Q4W: Q4_0's numbers (4.5 bits per weight) in the layout the gemv kernels stream; rows
    /// that are not a multiple of 64 values fall back to Q4_0.
    Q4,
}

impl HeadFormat {
    pub fn name(self) -> &'static str {
        match self {
            HeadFormat::F16 => "f16",
            HeadFormat::Q8 => "q8",
            HeadFormat::Q6 => "q6",
            HeadFormat::Q4 => "q4",
        }
    }
}

/// `edgellm convert` options.
#[derive(Args, Clone, Debug)]
pub struct ConvertArgs {
    /// Input: a GGUF file, or a Hugging Face directory (config.json, *.safetensors, tokenizer.json).
    pub input: PathBuf,
    /// Output image (GGUF v3).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Format of the linear weights.
    #[arg(long, value_enum)]
    pub format: Format,
    /// Format of the token embedding and output layer.
    #[arg(long, value_enum, default_value = "q8")]
    pub head_format: HeadFormat,
    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) to merge.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// How the input's I2_S tensors (bitnet.cpp) pack their codes, which the file does not
    /// record: `x86` (blocks of 128 weights, written by bitnet.cpp built for x86, as the published
    /// models are) or `arm` (blocks of 64, written by bitnet.cpp built for ARM).
    #[arg(long, value_enum, default_value = "x86")]
    pub i2s_layout: I2sLayoutArg,
    /// No progress bar and no summary.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `--i2s-layout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum I2sLayoutArg {
    X86,
    Arm,
}

impl From<I2sLayoutArg> for edgellm_kernels::scalar::ternary::I2sLayout {
    fn from(a: I2sLayoutArg) -> Self {
        match a {
            I2sLayoutArg::X86 => Self::X86,
            I2sLayoutArg::Arm => Self::Arm,
        }
    }
}

/// Element type of an output tensor (named as ggml names them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum OutType {
    F32,
    /// A 1-D tensor (norm weights, biases) whose every value is exactly a bfloat16: stored in
    /// half the bytes of F32, without loss (`exact_bf16`).
    BF16,
    F16,
    Q8_0,
    Q6_K,
    Q4_0,
    /// Q4_0's numbers in the layout of EdgeLLM's gemv kernels (`scalar::q4w`), for rows of a
    /// multiple of 64 values.
    Q4W,
    T2,
}

impl OutType {
    fn type_id(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::BF16 => GgmlType::BF16.id(),
            OutType::F16 => 1,
            OutType::Q4_0 => 2,
            OutType::Q8_0 => 8,
            OutType::Q6_K => GgmlType::Q6_K.id(),
            OutType::Q4W => GgmlType::Q4W.id(),
            OutType::T2 => ternary::T2_TYPE_ID,
        }
    }
    fn block(self) -> (usize, usize) {
        match self {
            OutType::F32 => (1, 4),
            OutType::BF16 | OutType::F16 => (1, 2),
            OutType::Q8_0 => (32, 34),
            OutType::Q6_K => (GgmlType::Q6_K.block_len(), GgmlType::Q6_K.block_bytes()),
            OutType::Q4_0 => (32, 18),
            OutType::Q4W => (GgmlType::Q4W.block_len(), GgmlType::Q4W.block_bytes()),
            OutType::T2 => (ternary::T2_BLOCK_LEN, ternary::T2_BLOCK_BYTES),
        }
    }
    fn fits(self, row_len: u64) -> bool {
        row_len.is_multiple_of(self.block().0 as u64)
    }
    fn bytes(self, n: u64) -> u64 {
        let (len, bytes) = self.block();
        n / len as u64 * bytes as u64
    }
}

/// Which part of the model a tensor belongs to, for the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    EmbeddingHead,
    Attention,
    Ffn,
    Norms,
    Other,
}

impl Class {
    fn of(name: &str) -> Class {
        let base = name.strip_suffix(".scale").unwrap_or(name);
        if base.starts_with("token_embd.") || base.starts_with("output.") {
            Class::EmbeddingHead
        } else if base.contains("norm") {
            Class::Norms
        } else if base.contains(".attn_") {
            Class::Attention
        } else if base.contains(".ffn_") {
            Class::Ffn
        } else {
            Class::Other
        }
    }
    fn name(self) -> &'static str {
        match self {
            Class::EmbeddingHead => "embedding/head",
            Class::Attention => "attention",
            Class::Ffn => "FFN",
            Class::Norms => "norms",
            Class::Other => "other",
        }
    }
}

/// What a conversion wrote.
#[derive(Clone, Debug)]
pub struct Summary {
    pub output: PathBuf,
    pub file_bytes: u64,
    pub n_tensors: usize,
    /// Per class: (tensor bytes, weights counted; `.scale` tensors add bytes, not weights).
    pub classes: Vec<(Class, u64, u64)>,
    pub seconds: f64,
    /// Tensors written at another type than asked (row length not a whole number of blocks).
    pub fallbacks: Vec<String>,
    /// Modules a LoRA adapter was merged into.
    pub lora_modules: usize,
}

impl Summary {
    /// Bits per weight of one class, or of everything with `None`.
    pub fn bits_per_weight(&self, class: Option<Class>) -> f64 {
        let (b, n) = self
            .classes
            .iter()
            .filter(|c| class.is_none_or(|k| k == c.0))
            .fold((0u64, 0u64), |a, c| (a.0 + c.1, a.1 + c.2));
        if n == 0 {
            0.0
        } else {
            b as f64 * 8.0 / n as f64
        }
    }
}

/// `edgellm convert` from the command line: converts and prints the summary.
pub fn run(args: ConvertArgs) -> Result<()> {
    let s = convert(&args)?;
    if args.quiet {
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "wrote {} ({:.1} MiB)",
        s.output.display(),
        mib(s.file_bytes)
    );
    eprintln!(
        "  {:<15} {:>10} {:>14} {:>8}",
        "class", "MiB", "weights", "bits/w"
    );
    for (c, bytes, n) in &s.classes {
        eprintln!(
            "  {:<15} {:>10.2} {:>14} {:>8.3}",
            c.name(),
            mib(*bytes),
            n,
            s.bits_per_weight(Some(*c))
        );
    }
    eprintln!(
        "  {:<15} {:>10.2} {:>14} {:>8.3}",
        "all",
        mib(s.classes.iter().map(|c| c.1).sum()),
        s.classes.iter().map(|c| c.2).sum::<u64>(),
        s.bits_per_weight(None)
    );
    if s.lora_modules > 0 {
        eprintln!("  LoRA merged into {} modules", s.lora_modules);
    }
    for f in &s.fallbacks {
        eprintln!("  note: {f}");
    }
    eprintln!("  {} tensors in {:.1} s", s.n_tensors, s.seconds);
    Ok(())
}

/// Where tensor `name` goes in the image: in the order a decode step reads it (each layer's
/// tensors in the order of use, layers by number, then the final norm and the output layer),
/// so that one token's weights are one forward stream through the file and a kernel's prefetch
/// past the end of its matrix reaches the next one. The embedding goes last: a step reads one
/// row of it, and with tied embeddings it is the output layer. Tensors outside the layers go
/// first; unknown names in a layer after its known ones (the sort is stable).
fn decode_rank(name: &str) -> (u8, u32, u8) {
    const IN_LAYER: [&str; 11] = [
        "attn_norm.",
        "attn_q.",
        "attn_k.",
        "attn_v.",
        "attn_sub_norm.",
        "attn_output.",
        "ffn_norm.",
        "ffn_gate.",
        "ffn_up.",
        "ffn_sub_norm.",
        "ffn_down.",
    ];
    if let Some(rest) = name.strip_prefix("blk.") {
        let (n, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let pos = IN_LAYER.iter().position(|p| tail.starts_with(p));
        return match n.parse::<u32>() {
            Ok(n) => (1, n, pos.map_or(IN_LAYER.len() as u8, |p| p as u8)),
            Err(_) => (1, u32::MAX, 0),
        };
    }
    match name.split('.').next() {
        Some("output_norm") => (2, 0, 0),
        Some("output") => (2, 0, 1),
        // Read once per token (one row), or as the tied output layer.
        Some("token_embd") => (2, 0, 2),
        _ => (0, 0, 0),
    }
}

/// The output type of source tensor `name` with shape `dims` (GGUF order).
fn out_type(name: &str, dims: &[u64], args: &ConvertArgs) -> (OutType, Option<String>) {
    let is_head = name == "token_embd.weight" || name == "output.weight";
    if dims.len() < 2 {
        return (OutType::F32, None);
    }
    let want = if is_head {
        match args.head_format {
            HeadFormat::F16 => OutType::F16,
            HeadFormat::Q8 => OutType::Q8_0,
            HeadFormat::Q6 => OutType::Q6_K,
            HeadFormat::Q4 => OutType::Q4W,
        }
    } else {
        match args.format {
            Format::Ternary => OutType::T2,
            Format::Q4 => OutType::Q4W,
            Format::Q8 => OutType::Q8_0,
            Format::F16 => OutType::F16,
        }
    };
    if want.fits(dims[0]) {
        return (want, None);
    }
    let fallback = [OutType::Q4_0, OutType::Q8_0, OutType::F16]
        .into_iter()
        .filter(|&t| want == OutType::Q4W || t != OutType::Q4_0)
        .find(|t| t.fits(dims[0]))
        .unwrap_or(OutType::F16);
    let note = format!(
        "{name}: rows of {} values are not whole {:?} blocks, written as {fallback:?}",
        dims[0], want
    );
    (fallback, Some(note))
}

/// Converts `args.input` into the image `args.output`.
pub fn convert(args: &ConvertArgs) -> Result<Summary> {
    let start = Instant::now();
    let input = &args.input;
    if args.output.exists() && same_file(input, &args.output) {
        bail!("the output {} is the input", args.output.display());
    }
    let hf_dir;
    let gguf_map;
    let gguf;
    let mut src: Source<'_> = if input.is_dir() {
        hf_dir = hf::HfDir::open(input)?;
        hf_dir.source()?
    } else {
        gguf_map = map_file(input)?;
        gguf = Gguf::parse(&gguf_map)
            .map_err(|e| anyhow::anyhow!("{} is not a valid GGUF file: {e}", input.display()))?;
        source::from_gguf(&gguf, args.i2s_layout.into())?
    };
    let adapter_dir;
    let adapter = match &args.lora {
        Some(dir) => {
            adapter_dir = lora::AdapterDir::open(dir)?;
            Some(adapter_dir.adapter(&src)?)
        }
        None => None,
    };

    // BitNet b1.58 was trained with one ternary scale per tensor: keep that rule.
    let per_tensor_t2 = src.meta.iter().any(|(k, v)| {
        k == "general.architecture"
            && matches!(v, Meta::Str(a) if a == "bitnet-b1.58" || a == "bitnet-25")
    });
    // Metadata: the source's, then the image keys.
    let mut w = GgufWriter::new();
    for (k, v) in src.meta.drain(..) {
        if !k.starts_with("edgellm.image.") && k != "general.alignment" {
            w.set(&k, v);
        }
    }
    match args.format {
        // llama_ftype: MOSTLY_Q8_0 = 7, MOSTLY_F16 = 1; none for our own types (T2, Q4W).
        Format::Q8 => w.set("general.file_type", Meta::U32(7)),
        Format::F16 => w.set("general.file_type", Meta::U32(1)),
        Format::Q4 | Format::Ternary => w.remove("general.file_type"),
    }
    w.set("general.quantization_version", Meta::U32(2));
    w.set(KEY_VERSION, Meta::U32(IMAGE_VERSION));
    w.set(KEY_FORMAT, Meta::Str(args.format.name().into()));
    w.set(KEY_HEAD_FORMAT, Meta::Str(args.head_format.name().into()));
    let source_name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    w.set(KEY_SOURCE, Meta::Str(source_name));
    w.with_checksums(KEY_CHECKSUMS);

    // Tensor table: each source tensor, and a `.scale` after each T2 weight.
    struct Job {
        src: usize,
        ty: OutType,
        scale_of: bool,
    }
    let mut jobs = Vec::new();
    let mut fallbacks = Vec::new();
    let mut order: Vec<usize> = (0..src.tensors.len()).collect();
    order.sort_by_key(|&i| decode_rank(&src.tensors[i].name));
    for i in order {
        let t = &src.tensors[i];
        let (mut ty, note) = out_type(&t.name, &t.dims, args);
        fallbacks.extend(note);
        // A LoRA adapter merges into 2-D weights only, so a 1-D tensor's values are final here.
        if ty == OutType::F32 && exact_bf16(&src.values(i)?) {
            ty = OutType::BF16;
        }
        let n: u64 = t.dims.iter().product();
        w.add_tensor(TensorSpec {
            name: t.name.clone(),
            dims: t.dims.clone(),
            type_id: ty.type_id(),
            size: ty.bytes(n),
        })?;
        jobs.push(Job {
            src: i,
            ty,
            scale_of: false,
        });
        if ty == OutType::T2 {
            let rows = n / t.dims[0];
            w.add_tensor(TensorSpec {
                name: format!("{}.scale", t.name),
                dims: vec![rows],
                type_id: OutType::F32.type_id(),
                size: 4 * rows,
            })?;
            jobs.push(Job {
                src: i,
                ty: OutType::F32,
                scale_of: true,
            });
        }
    }
    let mut classes: Vec<(Class, u64, u64)> = Vec::new();
    for (spec, job) in w.tensors().iter().zip(&jobs) {
        let class = Class::of(&spec.name);
        let weights = if job.scale_of {
            0
        } else {
            spec.dims.iter().product()
        };
        match classes.iter_mut().find(|c| c.0 == class) {
            Some(c) => {
                c.1 += spec.size;
                c.2 += weights;
            }
            None => classes.push((class, spec.size, weights)),
        }
    }
    classes.sort_by_key(|c| c.0);

    let total: u64 = w.tensors().iter().map(|t| t.size).sum();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    };
    let mut pending_scales: Option<Vec<f32>> = None;
    let written = w.write(
        &args.output,
        |i, spec| {
            let job = &jobs[i];
            if job.scale_of {
                let s = pending_scales
                    .take()
                    .context("internal: scales asked for before their weight")?;
                return Ok(s.iter().flat_map(|v| v.to_le_bytes()).collect());
            }
            bar.set_message(spec.name.clone());
            let t = &src.tensors[job.src];
            let mut values = src.values(job.src)?;
            if let Some(a) = &adapter {
                a.merge(t, &mut values)?;
            }
            // A NaN or infinity (a diverged fine-tune, a corrupt file) would quantize into
            // scales that turn every output to NaN: refuse it here, by name.
            if let Some(k) = values.iter().position(|v| !v.is_finite()) {
                let merged = adapter.as_ref().is_some_and(|a| a.targets(t));
                bail!(
                    "tensor {} holds a non-finite value ({}) at index {k}{}: the model cannot \
                     be quantized",
                    t.name,
                    values[k],
                    if merged {
                        " after the LoRA merge (check the adapter's lora_alpha and factors)"
                    } else {
                        ""
                    }
                );
            }
            if let Permute::ToGguf(heads) = t.permute {
                values = source::permute_rows(&values, t.dims[0] as usize, heads);
            }
            let (bytes, scales) = encode(job.ty, &values, t.dims[0] as usize, per_tensor_t2);
            pending_scales = scales;
            Ok(bytes)
        },
        |_, bytes| bar.inc(bytes),
    )?;
    bar.finish_and_clear();
    Ok(Summary {
        output: args.output.clone(),
        file_bytes: written.file_bytes,
        n_tensors: written.checksums.len(),
        classes,
        seconds: start.elapsed().as_secs_f64(),
        fallbacks,
        lora_modules: adapter.as_ref().map_or(0, |a| a.len()),
    })
}

/// Whether every value is exactly a bfloat16 (its low 16 bits are zero), so that BF16 holds it
/// without loss: the norm weights of models trained in bfloat16, which GGUF files and f32
/// checkpoints carry widened to f32.
fn exact_bf16(values: &[f32]) -> bool {
    values.iter().all(|v| v.to_bits() & 0xFFFF == 0)
}

/// Encodes f32 `values` (rows of `row_len`) as `ty`; T2 also returns the per-row scales (all
/// equal with `per_tensor_t2`).
fn encode(
    ty: OutType,
    values: &[f32],
    row_len: usize,
    per_tensor_t2: bool,
) -> (Vec<u8>, Option<Vec<f32>>) {
    let n = values.len() as u64;
    let mut out = vec![0u8; ty.bytes(n) as usize];
    match ty {
        OutType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(values) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        OutType::BF16 => {
            // The low 16 bits are zero (`exact_bf16`): the high ones are the bfloat16.
            for (o, v) in out.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
            }
        }
        OutType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        OutType::Q8_0 => quantize_row_q8_0(values, &mut out),
        OutType::Q6_K => parallel_rows(values, &mut out, row_len, quantize_row_q6_k),
        OutType::Q4_0 => quantize_row_q4_0(values, &mut out),
        OutType::Q4W => parallel_rows(values, &mut out, row_len, quantize_row_q4w),
        OutType::T2 => {
            let rows = values.len() / row_len;
            let (q, s) = if per_tensor_t2 {
                ternary::quantize_t2_per_tensor(values, rows, row_len)
            } else {
                ternary::quantize_t2(values, rows, row_len)
            };
            return (q, Some(s));
        }
    }
    (out, None)
}

/// Runs a row quantizer over `values` (rows of `row_len`) on every available core, each thread
/// taking a contiguous run of whole rows; the bytes are the same as one call over all of them.
fn parallel_rows(values: &[f32], out: &mut [u8], row_len: usize, f: fn(&[f32], &mut [u8])) {
    let rows = values.len() / row_len.max(1);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(rows);
    if threads <= 1 || rows * row_len != values.len() {
        return f(values, out);
    }
    let row_bytes = out.len() / rows;
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        for (v, o) in values
            .chunks(per * row_len)
            .zip(out.chunks_mut(per * row_bytes))
        {
            s.spawn(move || f(v, o));
        }
    });
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Memory-maps a file read-only.
pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the map is read-only and private; the file is not expected to change while the
    // converter runs (the contract of every mmap-based loader), and every byte is validated by
    // the GGUF or safetensors parser before use.
    unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot memory-map {}", path.display()))
}

/// Why an image's checksums do not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageError {
    /// The file has no `edgellm.image.checksums`: not a model image.
    NotAnImage,
    /// The checksum key is not an array of u64, or has the wrong length.
    BadChecksumKey(String),
    /// A tensor's bytes do not hash to its recorded checksum.
    Mismatch {
        tensor: String,
        expected: u64,
        found: u64,
    },
}

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageError::NotAnImage => write!(f, "no {KEY_CHECKSUMS} key: not an EdgeLLM image"),
            ImageError::BadChecksumKey(m) => write!(f, "{KEY_CHECKSUMS}: {m}"),
            ImageError::Mismatch {
                tensor,
                expected,
                found,
            } => write!(
                f,
                "tensor {tensor} is corrupt: its bytes hash to {found:#018x}, the image records \
                 {expected:#018x}; convert the model again"
            ),
        }
    }
}

impl std::error::Error for ImageError {}

/// Checks every tensor of an image against its FNV-1a 64 checksum in `edgellm.image.checksums`.
pub fn verify_image(g: &Gguf<'_>) -> Result<(), ImageError> {
    let arr = match g.get(KEY_CHECKSUMS) {
        None => return Err(ImageError::NotAnImage),
        Some(Value::Array(a)) if a.elem_type() == ValueType::U64 => a,
        Some(v) => {
            return Err(ImageError::BadChecksumKey(format!(
                "expected an array of u64, found {}",
                v.value_type()
            )))
        }
    };
    if arr.len() != g.tensors().len() {
        return Err(ImageError::BadChecksumKey(format!(
            "{} checksums for {} tensors",
            arr.len(),
            g.tensors().len()
        )));
    }
    for (t, c) in g.tensors().iter().zip(arr.iter()) {
        let expected = c.as_u64().unwrap_or(0);
        let found = fnv1a64(t.data);
        if found != expected {
            return Err(ImageError::Mismatch {
                tensor: t.name.to_string(),
                expected,
                found,
            });
        }
    }
    Ok(())
}

/// One line for `inspect`: whether the file is an image and whether its checksums verify.
pub fn image_status(g: &Gguf<'_>) -> String {
    let desc = match (
        g.get_u32(KEY_VERSION),
        g.get_str(KEY_FORMAT),
        g.get_str(KEY_HEAD_FORMAT),
    ) {
        (Some(v), Some(f), Some(h)) => format!("EdgeLLM image v{v}, format {f}, head {h}"),
        _ => "EdgeLLM image".to_string(),
    };
    match verify_image(g) {
        Ok(()) => format!(
            "{desc}: {} tensor checksums verified (FNV-1a 64)",
            g.tensors().len()
        ),
        Err(ImageError::NotAnImage) => "not an EdgeLLM image (no tensor checksums)".to_string(),
        Err(e) => format!("{desc}: CHECKSUMS DO NOT VERIFY: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bfloat16_values_are_stored_as_bf16_without_loss() {
        let exact = [
            1.0f32,
            -0.0,
            0.0,
            0.5625,
            -2f32.powi(-70),
            1.5 * 2f32.powi(100),
            f32::INFINITY,
        ];
        assert!(exact_bf16(&exact));
        let mut back = vec![0f32; exact.len()];
        let (bytes, scales) = encode(OutType::BF16, &exact, exact.len(), false);
        assert!(scales.is_none());
        assert_eq!(bytes.len(), 2 * exact.len());
        edgellm_kernels::scalar::dequantize_row(GgmlType::BF16, &bytes, &mut back).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&exact));
        // One value with a bit below bfloat16's mantissa keeps the whole tensor in F32.
        for v in [1.0f32 + f32::EPSILON, 0.1, f32::from_bits(1)] {
            assert!(!exact_bf16(&[1.0, v]), "{v:e}");
        }
    }

    /// Tensors sort into the order a decode step reads them: layers by number (not by name),
    /// each layer's tensors in the order of use, unknown names after their layer's known ones,
    /// then the final norm, the output layer and the embedding (the output of tied models).
    #[test]
    fn tensors_sort_into_decode_order() {
        let mut names = vec![
            "blk.10.attn_q.weight",
            "token_embd.weight",
            "blk.2.ffn_down.weight",
            "blk.2.ffn_sub_norm.weight",
            "output.weight",
            "blk.2.attn_k.weight",
            "rope_freqs.weight",
            "blk.2.attn_q.weight",
            "blk.2.ffn_norm.weight",
            "blk.2.attn_rot_embd",
            "output_norm.weight",
            "blk.2.ffn_gate.weight",
            "blk.2.attn_output.weight",
            "blk.2.ffn_up.weight",
            "blk.2.attn_v.weight",
            "blk.2.attn_norm.weight",
        ];
        names.sort_by_key(|n| decode_rank(n));
        assert_eq!(
            names,
            [
                "rope_freqs.weight",
                "blk.2.attn_norm.weight",
                "blk.2.attn_q.weight",
                "blk.2.attn_k.weight",
                "blk.2.attn_v.weight",
                "blk.2.attn_output.weight",
                "blk.2.ffn_norm.weight",
                "blk.2.ffn_gate.weight",
                "blk.2.ffn_up.weight",
                "blk.2.ffn_sub_norm.weight",
                "blk.2.ffn_down.weight",
                "blk.2.attn_rot_embd",
                "blk.10.attn_q.weight",
                "output_norm.weight",
                "output.weight",
                "token_embd.weight",
            ]
        );
    }

    fn args(format: Format, head_format: HeadFormat) -> ConvertArgs {
        ConvertArgs {
            input: PathBuf::from("in.gguf"),
            output: PathBuf::from("out.gguf"),
            format,
            head_format,
            lora: None,
            i2s_layout: I2sLayoutArg::X86,
            quiet: true,
        }
    }

    /// Rows that a format's blocks do not divide fall back, with a note: Q4W (64) to Q4_0 (32),
    /// then Q8_0, then F16; Q6_K (256) to Q8_0, then F16; no other format falls back to Q4_0.
    #[test]
    fn output_types_and_fallbacks() {
        let q4 = args(Format::Q4, HeadFormat::Q4);
        assert_eq!(
            out_type("blk.0.ffn_up.weight", &[576, 1536], &q4),
            (OutType::Q4W, None)
        );
        assert_eq!(
            out_type("token_embd.weight", &[576, 49152], &q4),
            (OutType::Q4W, None)
        );
        let (t, note) = out_type("blk.0.ffn_up.weight", &[96, 8], &q4);
        assert_eq!(t, OutType::Q4_0);
        assert!(note.unwrap().contains("written as Q4_0"));
        assert_eq!(
            out_type("blk.0.ffn_up.weight", &[48, 8], &q4).0,
            OutType::F16
        );
        assert_eq!(
            out_type("blk.0.attn_norm.weight", &[96], &q4),
            (OutType::F32, None)
        );
        let t2 = args(Format::Ternary, HeadFormat::Q8);
        assert_eq!(
            out_type("blk.0.ffn_up.weight", &[96, 8], &t2).0,
            OutType::Q8_0
        );
        assert_eq!(
            out_type("output.weight", &[96, 8], &t2),
            (OutType::Q8_0, None)
        );
        let q6 = args(Format::Q4, HeadFormat::Q6);
        assert_eq!(
            out_type("output.weight", &[2560, 128256], &q6),
            (OutType::Q6_K, None)
        );
        let (t, note) = out_type("token_embd.weight", &[576, 49152], &q6);
        assert_eq!(t, OutType::Q8_0);
        assert!(note.unwrap().contains("written as Q8_0"));
        assert_eq!(
            out_type("blk.0.ffn_up.weight", &[2560, 6912], &q6),
            (OutType::Q4W, None)
        );
        let q8 = args(Format::Q8, HeadFormat::Q4);
        assert_eq!(out_type("output.weight", &[96, 8], &q8).0, OutType::Q4_0);
        assert_eq!(
            out_type("blk.0.ffn_up.weight", &[96, 8], &q8),
            (OutType::Q8_0, None)
        );
    }
}
