//! `edgellm convert` end to end: the real SmolLM2 model to Q8_0 and Q4_0 images that parse,
//! verify and generate the reference's greedy tokens; tiny Hugging Face directories built here
//! (llama with q/k permutation, qwen2 with biases, BitNet b1.58 with sub-norms) whose images
//! compute what an independent f32 transformer written in this file computes; a tiny BitNet model
//! against Hugging Face transformers' own logits; I2_S inputs (llama and bitnet-b1.58); LoRA merges
//! against W + (alpha/r)·B·A; T2 images (the same prefill bits on 1, 2 and 3 threads); and clear
//! errors for malformed inputs.

use edgellm::convert::writer::{GgufWriter, Meta, TensorSpec};
use edgellm::convert::{
    convert, verify_image, ConvertArgs, Format, HeadFormat, I2sLayoutArg, ImageError,
};
use edgellm_core::gguf::Gguf;
use edgellm_core::model::Model;
use edgellm_core::parallel::Serial;
use edgellm_core::session::{NumericPath, Session, SessionOptions};
use edgellm_core::tokenizer::Tokenizer;
use edgellm_hal::pool::ThreadPool;
use edgellm_kernels::scalar::ternary::dequantize_t2;
use edgellm_kernels::{scalar, GgmlType, Kernels};
use edgellm_tests::{cosine, smollm2_path, smollm2_reference, top_k};
use safetensors::{Dtype, View};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("convert-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn args(input: &Path, output: &Path, format: Format, head: HeadFormat) -> ConvertArgs {
    ConvertArgs {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        format,
        head_format: head,
        lora: None,
        i2s_layout: I2sLayoutArg::X86,
        quiet: true,
    }
}

fn argmax(v: &[f32]) -> u32 {
    top_k(v, 1)[0]
}

/// A tensor's values as f32, dequantized from the image.
fn values(g: &Gguf<'_>, name: &str) -> Vec<f32> {
    let t = g.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
    let mut out = vec![0f32; t.n_elements() as usize];
    scalar::dequantize_row(t.ty, t.data, &mut out).unwrap();
    out
}

// ---------------------------------------------------------------------------------------------
// The real model.

#[test]
fn smollm2_q8_image_verifies_and_generates_the_reference() {
    let Some(model) = smollm2_path() else { return };
    let dir = scratch("smollm2");
    let out = dir.join("smollm2-q8.gguf");
    let s = convert(&args(&model, &out, Format::Q8, HeadFormat::Q8)).expect("convert");
    assert_eq!(s.file_bytes, std::fs::metadata(&out).unwrap().len());
    eprintln!(
        "q8 image: {} bytes, {:.3} bits/weight",
        s.file_bytes,
        s.bits_per_weight(None)
    );

    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).expect("image parses");
    verify_image(&g).expect("checksums verify");
    let src_bytes = std::fs::read(&model).unwrap();
    let src = Gguf::parse(&src_bytes).unwrap();
    // Every metadata key of the input is carried over (the file type aside).
    for (k, v) in src.metadata() {
        if *k != "general.file_type" {
            assert_eq!(g.get(k), Some(v), "key {k}");
        }
    }
    assert_eq!(g.get_u32("edgellm.image.version"), Some(1));
    assert_eq!(g.get_str("edgellm.image.format"), Some("q8"));
    assert_eq!(g.get_str("edgellm.image.head_format"), Some("q8"));
    assert_eq!(
        g.get_str("edgellm.image.source"),
        model.file_name().and_then(|n| n.to_str())
    );
    for t in g.tensors() {
        if t.n_dims == 2 {
            assert_eq!(t.ty, GgmlType::Q8_0, "{}", t.name);
        } else {
            // SmolLM2 was trained in bfloat16: its F32 norm weights are exact bfloat16s, which
            // the image stores in half the bytes, value for value.
            assert_eq!(t.ty, GgmlType::BF16, "{}", t.name);
            let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(values(&g, t.name)),
                bits(values(&src, t.name)),
                "{}",
                t.name
            );
        }
    }
    assert!(
        g.tensor("output.weight").is_none(),
        "tied embedding stays tied"
    );
    assert_eq!(g.tensors().len(), src.tensors().len());

    // A flipped bit is caught.
    let mut bad = bytes.clone();
    let t = g.tensor("blk.3.ffn_up.weight").unwrap();
    let at = g.data_offset + t.offset as usize + 100;
    bad[at] ^= 1;
    let gb = Gguf::parse(&bad).unwrap();
    assert!(matches!(
        verify_image(&gb),
        Err(ImageError::Mismatch { tensor, .. }) if tensor == "blk.3.ffn_up.weight"
    ));

    // `inspect` says so.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_edgellm"))
        .args(["inspect", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("format q8, head q8: 272 tensor checksums verified"),
        "{text}"
    );
    assert!(text.contains("model: llama (30 layers"), "{text}");

    // Greedy decoding on every reference prompt: the first 8 tokens equal the reference's, up
    // to the first step whose recorded margin is below 0.25.
    let kernels = Kernels::detect();
    let m = Model::from_gguf(&g, &kernels).expect("model loads");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer loads");
    for (name, p, want_logits) in smollm2_reference() {
        let mut ids = Vec::new();
        tok.encode(&p.text, true, &mut ids);
        assert_eq!(ids, p.prompt_ids);
        let opts = SessionOptions {
            context: 64,
            path: NumericPath::Fast,
        };
        let mut sess = Session::new(&m, kernels, opts).unwrap();
        let logits = sess.prefill(&ids, &Serial).unwrap().to_vec();
        // Re-rounding Q4_1 weights to Q8_0 alone moves the logits of the short `capital` prompt to
        // a cosine of 0.999 (exact path); int8 activations add their own error on top.
        let cos = cosine(&logits, &want_logits);
        eprintln!("q8 image, {name}: cosine to the reference logits {cos:.5}");
        assert!(cos > 0.99, "{name}: cosine {cos}");
        let mut got = vec![argmax(&logits)];
        while got.len() < 8 {
            let l = sess.forward(*got.last().unwrap(), &Serial).unwrap();
            got.push(argmax(l));
        }
        for i in 0..8 {
            if p.greedy40_margins[i] < 0.25 {
                break;
            }
            assert_eq!(
                got[i],
                p.greedy40_ids[i],
                "{name}: greedy token {i}: got {got:?}, want {:?}",
                &p.greedy40_ids[..8]
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn smollm2_q4_and_ternary_images() {
    let Some(model) = smollm2_path() else { return };
    let dir = scratch("smollm2-q4");
    let out = dir.join("q4.gguf");
    let s = convert(&args(&model, &out, Format::Q4, HeadFormat::F16)).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    verify_image(&g).unwrap();
    assert_eq!(g.tensor("token_embd.weight").unwrap().ty, GgmlType::F16);
    assert_eq!(g.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q4W);
    eprintln!("q4 image (f16 head): {} bytes", s.file_bytes);
    // The Q4W rows hold Q4_0's numbers for the source row: dequantize a Q4_1 row of the source,
    // quantize it to Q4_0 and back, and compare with the image's row, bit for bit.
    let src_bytes = std::fs::read(&model).unwrap();
    let src = Gguf::parse(&src_bytes).unwrap();
    let (st, it) = (
        src.tensor("blk.0.ffn_up.weight").unwrap(),
        g.tensor("blk.0.ffn_up.weight").unwrap(),
    );
    assert_eq!(it.ty, GgmlType::Q4W);
    let cols = 576;
    for r in [0, 1, 777, 1535] {
        let sb = st.ty.bytes_for(cols as u64).unwrap() as usize;
        let mut x = vec![0f32; cols];
        scalar::dequantize_row(st.ty, &st.data[r * sb..(r + 1) * sb], &mut x).unwrap();
        let mut q4 = vec![0u8; cols / 32 * 18];
        scalar::quantize::quantize_row_q4_0(&x, &mut q4);
        let (mut want, mut got) = (vec![0f32; cols], vec![0f32; cols]);
        scalar::dequantize_q4_0(&q4, &mut want);
        let ib = it.ty.bytes_for(cols as u64).unwrap() as usize;
        scalar::dequantize_row(it.ty, &it.data[r * ib..(r + 1) * ib], &mut got).unwrap();
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "row {r} of blk.0.ffn_up.weight"
        );
    }
    let kernels = Kernels::detect();
    Model::from_gguf(&g, &kernels).expect("q4 image loads");

    // T2: 2 bits per weight plus one f32 scale per row; the image loads and runs.
    let out = dir.join("t2-q4.gguf");
    let s = convert(&args(&model, &out, Format::Ternary, HeadFormat::Q4)).unwrap();
    assert!(
        s.file_bytes < 45_000_000,
        "ternary image with a 4-bit head: {} bytes, the goal is under 45 MB",
        s.file_bytes
    );
    let out = dir.join("t2.gguf");
    let s = convert(&args(&model, &out, Format::Ternary, HeadFormat::Q8)).unwrap();
    eprintln!("ternary image: {} bytes", s.file_bytes);
    assert!(
        s.file_bytes < 60_000_000,
        "ternary image with an 8-bit head: {} bytes, the goal is under 60 MB",
        s.file_bytes
    );
    let bpw = s.bits_per_weight(Some(edgellm::convert::Class::Ffn));
    assert!((2.0..2.1).contains(&bpw), "FFN bits per weight {bpw}");
    assert_eq!(
        s.n_tensors,
        272 + 30 * 7,
        "a .scale tensor for every linear weight"
    );
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    verify_image(&g).unwrap();
    assert_eq!(g.tensor("blk.0.ffn_up.weight").unwrap().ty, GgmlType::T2);
    let model = Model::from_gguf(&g, &kernels).expect("ternary image loads");
    // A ternarized model that was not trained ternary predicts badly, but it runs end to end and
    // gives finite logits.
    let opts = SessionOptions {
        context: 32,
        path: NumericPath::Fast,
    };
    let mut s = Session::new(&model, kernels, opts).unwrap();
    let logits = s.prefill(&[504, 3575, 282], &Serial).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()));
    // The prefill's T2 products are shared out in tiles that idle workers take from the others'
    // shares: every row computed once, whichever worker takes it, so the same bits on any number
    // of threads. (Four positions: attention splits longer sequences between the workers, which
    // changes its float sums' order.)
    let prompt = [504, 3575, 282, 1001];
    let mut bits = Vec::new();
    for threads in [1, 2, 3] {
        let pool = ThreadPool::new(threads, None).unwrap();
        for _ in 0..2 {
            let mut s = Session::new(&model, kernels, opts).unwrap();
            let logits = s.prefill(&prompt, &pool).unwrap();
            bits.push(logits.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
    }
    assert!(
        bits.iter().all(|b| *b == bits[0]),
        "prefill logits differ between runs or thread counts"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// A tiny Hugging Face model and an independent f32 transformer.

const HIDDEN: usize = 64;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const FFN: usize = 128;
const VOCAB: usize = 260;
const EPS: f32 = 1e-5;
const THETA: f32 = 10_000.0;

/// Deterministic values in [-scale, scale), rounded to f16 so that F16 images hold them exactly.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let u = (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
        u * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| half::f16::from_f32(self.next() * scale).to_f32())
            .collect()
    }
}

/// The model in Hugging Face layout: name → (shape, values).
type Weights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn tiny_weights(qwen: bool, tied: bool, seed: u64) -> Weights {
    tiny_weights_vocab(qwen, tied, seed, VOCAB)
}

fn tiny_weights_vocab(qwen: bool, tied: bool, seed: u64, vocab: usize) -> Weights {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut w = Weights::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let v = r.vec(n, scale).iter().map(|x| x + offset).collect();
        w.insert(name, (shape, v));
    };
    put(
        "model.embed_tokens.weight".into(),
        vec![vocab, HIDDEN],
        1.0,
        0.0,
    );
    for l in 0..LAYERS {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        put(p("input_layernorm.weight"), vec![HIDDEN], 0.2, 1.0);
        put(
            p("self_attn.q_proj.weight"),
            vec![HEADS * HEAD_DIM, HIDDEN],
            0.3,
            0.0,
        );
        put(
            p("self_attn.k_proj.weight"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
            0.3,
            0.0,
        );
        put(
            p("self_attn.v_proj.weight"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
            0.3,
            0.0,
        );
        if qwen {
            put(p("self_attn.q_proj.bias"), vec![HEADS * HEAD_DIM], 0.5, 0.0);
            put(
                p("self_attn.k_proj.bias"),
                vec![KV_HEADS * HEAD_DIM],
                0.5,
                0.0,
            );
            put(
                p("self_attn.v_proj.bias"),
                vec![KV_HEADS * HEAD_DIM],
                0.5,
                0.0,
            );
        }
        put(
            p("self_attn.o_proj.weight"),
            vec![HIDDEN, HEADS * HEAD_DIM],
            0.2,
            0.0,
        );
        put(p("post_attention_layernorm.weight"), vec![HIDDEN], 0.2, 1.0);
        put(p("mlp.gate_proj.weight"), vec![FFN, HIDDEN], 0.2, 0.0);
        put(p("mlp.up_proj.weight"), vec![FFN, HIDDEN], 0.2, 0.0);
        put(p("mlp.down_proj.weight"), vec![HIDDEN, FFN], 0.2, 0.0);
    }
    put("model.norm.weight".into(), vec![HIDDEN], 0.2, 1.0);
    if !tied {
        put("lm_head.weight".into(), vec![vocab, HIDDEN], 0.3, 0.0);
    }
    w
}

/// A safetensors tensor from f32 values, stored as `dtype`.
struct St {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}
impl St {
    fn new(dtype: Dtype, shape: &[usize], v: &[f32]) -> St {
        let bytes = match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            Dtype::BF16 => v
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
            _ => unreachable!(),
        };
        St {
            dtype,
            shape: shape.to_vec(),
            bytes,
        }
    }
}
impl View for &St {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn write_safetensors(path: &Path, tensors: &BTreeMap<String, St>) {
    let data: Vec<(&str, &St)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors::serialize_to_file(data, None, path).unwrap();
}

/// GPT-2's byte → printable character map.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_char(b).to_string(), (b as u64).into());
    }
    vocab.insert("he".into(), 256.into());
    vocab.insert("the".into(), 257.into());
    serde_json::json!({
        "version": "1.0",
        "added_tokens": [{"id": 258, "content": "<|endoftext|>", "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
        "post_processor": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": ["h e", "t he"]}
    })
}

/// Writes a Hugging Face directory for `w`; `edit` may change the config before it is written.
fn write_hf(
    dir: &Path,
    w: &Weights,
    qwen: bool,
    tied: bool,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    std::fs::create_dir_all(dir).unwrap();
    let mut config = serde_json::json!({
        "architectures": [if qwen { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "intermediate_size": FFN,
        "rms_norm_eps": EPS,
        "rope_theta": THETA,
        "max_position_embeddings": 512,
        "tie_word_embeddings": tied,
        "vocab_size": VOCAB,
        "bos_token_id": 258,
        "eos_token_id": 258,
        "rope_scaling": null
    });
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    let tc = serde_json::json!({
        "eos_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    // Two shards; the embedding stored as F16 (its values are f16-rounded, so nothing changes).
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    for (name, (shape, v)) in w {
        let dtype = if name.contains("embed") {
            Dtype::F16
        } else {
            Dtype::F32
        };
        let t = St::new(dtype, shape, v);
        if name.contains("layers.1.") {
            b.insert(name.clone(), t);
        } else {
            a.insert(name.clone(), t);
        }
    }
    write_safetensors(&dir.join("model-00001-of-00002.safetensors"), &a);
    write_safetensors(&dir.join("model-00002-of-00002.safetensors"), &b);
}

fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks_exact(x.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn rmsnorm(x: &[f32], w: &[f32]) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let s = 1.0 / (ms + EPS).sqrt();
    x.iter().zip(w).map(|(v, g)| v * s * g).collect()
}

/// Hugging Face RoPE: rotates `(x[i], x[i + d/2])` of each head by `pos * theta^(-2i/d)`.
fn rope_hf(x: &mut [f32], pos: usize) {
    for h in x.chunks_exact_mut(HEAD_DIM) {
        let half = HEAD_DIM / 2;
        for i in 0..half {
            let f = pos as f32 / THETA.powf((2 * i) as f32 / HEAD_DIM as f32);
            let (c, s) = (f.cos(), f.sin());
            let (a, b) = (h[i], h[i + half]);
            h[i] = a * c - b * s;
            h[i + half] = a * s + b * c;
        }
    }
}

/// The logits of the last of `tokens`, computed the Hugging Face way from `w` (a BitNet model
/// when `w` has the sub-norms: `modeling_bitnet.py`'s RMS norm of the heads' outputs before
/// `o_proj` and of `relu(gate)² * up` before `down_proj`).
fn reference_forward(w: &Weights, qwen: bool, tied: bool, tokens: &[u32]) -> Vec<f32> {
    let g = |n: &str| &w[n].1;
    let bitnet = w.contains_key("model.layers.0.mlp.ffn_sub_norm.weight");
    let bias = |n: &str, v: &mut Vec<f32>| {
        if qwen {
            for (x, b) in v.iter_mut().zip(g(n)) {
                *x += b;
            }
        }
    };
    let mut kcache = vec![Vec::new(); LAYERS];
    let mut vcache = vec![Vec::new(); LAYERS];
    let mut x = Vec::new();
    for (pos, &t) in tokens.iter().enumerate() {
        x = g("model.embed_tokens.weight")[t as usize * HIDDEN..(t as usize + 1) * HIDDEN].to_vec();
        for l in 0..LAYERS {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            let h = rmsnorm(&x, g(&p("input_layernorm.weight")));
            let mut q = matvec(g(&p("self_attn.q_proj.weight")), &h);
            let mut k = matvec(g(&p("self_attn.k_proj.weight")), &h);
            let mut v = matvec(g(&p("self_attn.v_proj.weight")), &h);
            bias(&p("self_attn.q_proj.bias"), &mut q);
            bias(&p("self_attn.k_proj.bias"), &mut k);
            bias(&p("self_attn.v_proj.bias"), &mut v);
            rope_hf(&mut q, pos);
            rope_hf(&mut k, pos);
            kcache[l].push(k);
            vcache[l].push(v);
            let mut att = vec![0f32; HEADS * HEAD_DIM];
            for hh in 0..HEADS {
                let kv = hh / (HEADS / KV_HEADS);
                let qh = &q[hh * HEAD_DIM..(hh + 1) * HEAD_DIM];
                let scores: Vec<f32> = kcache[l]
                    .iter()
                    .map(|k: &Vec<f32>| {
                        qh.iter()
                            .zip(&k[kv * HEAD_DIM..(kv + 1) * HEAD_DIM])
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                            / (HEAD_DIM as f32).sqrt()
                    })
                    .collect();
                let m = scores.iter().fold(f32::MIN, |a, &b| a.max(b));
                let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (pi, vv) in e.iter().zip(&vcache[l]) {
                    for d in 0..HEAD_DIM {
                        att[hh * HEAD_DIM + d] += pi / z * vv[kv * HEAD_DIM + d];
                    }
                }
            }
            if bitnet {
                att = rmsnorm(&att, g(&p("self_attn.attn_sub_norm.weight")));
            }
            let o = matvec(g(&p("self_attn.o_proj.weight")), &att);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h = rmsnorm(&x, g(&p("post_attention_layernorm.weight")));
            let gate = matvec(g(&p("mlp.gate_proj.weight")), &h);
            let up = matvec(g(&p("mlp.up_proj.weight")), &h);
            let mut act: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(a, b)| {
                    if bitnet {
                        a.max(0.0).powi(2) * b
                    } else {
                        a / (1.0 + (-a).exp()) * b
                    }
                })
                .collect();
            if bitnet {
                act = rmsnorm(&act, g(&p("mlp.ffn_sub_norm.weight")));
            }
            let d = matvec(g(&p("mlp.down_proj.weight")), &act);
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
    }
    let h = rmsnorm(&x, g("model.norm.weight"));
    let head = if tied {
        g("model.embed_tokens.weight")
    } else {
        g("lm_head.weight")
    };
    matvec(head, &h)
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Runs the image on `tokens` and returns the last logits.
fn image_forward(g: &Gguf<'_>, tokens: &[u32], path: NumericPath) -> Vec<f32> {
    let kernels = Kernels::detect();
    let m = Model::from_gguf(g, &kernels).expect("image loads");
    let mut s = Session::new(&m, kernels, SessionOptions { context: 16, path }).unwrap();
    s.prefill(tokens, &Serial).unwrap().to_vec()
}

fn check_tiny(qwen: bool, tied: bool) {
    let name = if qwen { "tiny-qwen2" } else { "tiny-llama" };
    let dir = scratch(name);
    let w = tiny_weights(qwen, tied, if qwen { 2 } else { 1 });
    let hf = dir.join("hf");
    write_hf(&hf, &w, qwen, tied, |_| {});

    // F16 image: the weights exactly, so the forward pass matches to float rounding.
    let out = dir.join("f16.gguf");
    convert(&args(&hf, &out, Format::F16, HeadFormat::F16)).expect("convert f16");
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    verify_image(&g).unwrap();
    assert_eq!(g.architecture(), Some(if qwen { "qwen2" } else { "llama" }));
    assert_eq!(g.tensor("output.weight").is_some(), !tied);
    assert_eq!(g.get_str("tokenizer.ggml.pre"), Some("gpt2"));
    assert_eq!(g.get_u32("tokenizer.ggml.eos_token_id"), Some(258));
    assert!(g.get_str("tokenizer.chat_template").is_some());
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
    assert_eq!(tok.vocab_size(), VOCAB);
    let mut ids = Vec::new();
    tok.encode("the hat", false, &mut ids);
    assert_eq!(
        ids,
        [257, 32, 104, 97, 116],
        "'the', then ' hat' byte by byte"
    );

    for tokens in [&[5u32][..], &[5, 257, 40, 258]] {
        let want = reference_forward(&w, qwen, tied, tokens);
        let got = image_forward(&g, tokens, NumericPath::Exact);
        let err = max_rel(&got, &want);
        eprintln!("{name} f16, {} tokens: max error {err:.2e}", tokens.len());
        assert!(err < 1e-4, "{name}: logits differ by {err}");
    }

    // Q8_0 image, default head: close, on the integer path too.
    let out8 = dir.join("q8.gguf");
    convert(&args(&hf, &out8, Format::Q8, HeadFormat::Q8)).expect("convert q8");
    let bytes8 = std::fs::read(&out8).unwrap();
    let g8 = Gguf::parse(&bytes8).unwrap();
    verify_image(&g8).unwrap();
    let tokens = [5u32, 257, 40, 258];
    let want = reference_forward(&w, qwen, tied, &tokens);
    for path in [NumericPath::Exact, NumericPath::Fast] {
        let got = image_forward(&g8, &tokens, path);
        let c = cosine(&got, &want);
        eprintln!("{name} q8 {path:?}: cosine {c:.6}");
        assert!(c > 0.999, "{name} q8 {path:?}: cosine {c}");
    }
}

#[test]
fn tiny_llama_from_hugging_face_computes_the_reference() {
    check_tiny(false, true);
}

#[test]
fn tiny_qwen2_from_hugging_face_computes_the_reference() {
    check_tiny(true, false);
}

/// The tiny llama model of `seed` with BitNet's sub-norms added (tied embeddings).
fn tiny_bitnet_weights(seed: u64) -> Weights {
    let mut w = tiny_weights(false, true, seed);
    let mut r = Rng(seed.wrapping_mul(31) + 77);
    for l in 0..LAYERS {
        for (name, n) in [
            (
                format!("model.layers.{l}.self_attn.attn_sub_norm.weight"),
                HIDDEN,
            ),
            (format!("model.layers.{l}.mlp.ffn_sub_norm.weight"), FFN),
        ] {
            let v = r.vec(n, 0.2).iter().map(|x| x + 1.0).collect();
            w.insert(name, (vec![n], v));
        }
    }
    w
}

/// A Hugging Face `BitNetForCausalLM` directory for `w`.
fn write_bitnet_hf(dir: &Path, w: &Weights) {
    write_hf(dir, w, false, true, |c| {
        c["architectures"] = serde_json::json!(["BitNetForCausalLM"]);
        c["hidden_act"] = "relu2".into();
    });
}

/// A tiny BitNet b1.58 model (tied embeddings, sub-norms, relu² gate) from a Hugging Face
/// directory: its F16 image computes the reference to float rounding; its ternary image computes
/// the reference with every linear layer ternarized by one absmean scale per tensor (BitNet's
/// training rule), and so does the ternary image of its F16 image (the GGUF input path).
#[test]
fn tiny_bitnet_from_hugging_face_computes_the_reference() {
    let dir = scratch("tiny-bitnet");
    let w = tiny_bitnet_weights(3);
    let hf = dir.join("hf");
    write_bitnet_hf(&hf, &w);
    let tokens = [5u32, 257, 40, 258];

    let f16 = dir.join("f16.gguf");
    convert(&args(&hf, &f16, Format::F16, HeadFormat::F16)).expect("convert f16");
    let bytes = std::fs::read(&f16).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    verify_image(&g).unwrap();
    assert_eq!(g.architecture(), Some("bitnet-b1.58"));
    assert!(g.tensor("output.weight").is_none(), "tied");
    assert_eq!(
        g.tensor("blk.1.ffn_sub_norm.weight").map(|t| t.ty),
        Some(GgmlType::F32)
    );
    let want = reference_forward(&w, false, true, &tokens);
    let got = image_forward(&g, &tokens, NumericPath::Exact);
    let err = max_rel(&got, &want);
    eprintln!("tiny-bitnet f16: max error {err:.2e}");
    assert!(err < 1e-4, "tiny-bitnet f16: logits differ by {err}");
    // Without the sub-norms and with SiLU (a llama reading of the same weights) it differs.
    let mut plain = w.clone();
    plain.retain(|k, _| !k.contains("sub_norm"));
    let other = reference_forward(&plain, false, true, &tokens);
    assert!(max_rel(&other, &want) > 1e-2);

    // The reference with each linear layer ternarized, one absmean scale per tensor (the
    // embedding, tied to the output, is the F16 head).
    let mut wt = w.clone();
    for (name, (shape, v)) in wt.iter_mut() {
        if shape.len() == 2 && !name.contains("embed") {
            let s = v.iter().map(|x| x.abs()).sum::<f32>() / v.len() as f32;
            for x in v.iter_mut() {
                *x = s * (*x / s).round_ties_even().clamp(-1.0, 1.0);
            }
        }
    }
    let want_t = reference_forward(&wt, false, true, &tokens);
    for (name, input) in [("hf", &hf), ("f16 image", &f16)] {
        let out = dir.join(format!("t2-{}.gguf", name.replace(' ', "-")));
        convert(&args(input, &out, Format::Ternary, HeadFormat::F16)).expect("convert ternary");
        let bytes = std::fs::read(&out).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        verify_image(&g).unwrap();
        assert_eq!(g.tensor("blk.0.ffn_up.weight").unwrap().ty, GgmlType::T2);
        let scales = values(&g, "blk.0.ffn_up.weight.scale");
        assert!(
            scales.iter().all(|&s| s == scales[0]),
            "one scale per tensor"
        );
        let got = image_forward(&g, &tokens, NumericPath::Exact);
        let err = max_rel(&got, &want_t);
        eprintln!("tiny-bitnet ternary from {name}: max error {err:.2e}");
        assert!(
            err < 1e-4,
            "tiny-bitnet ternary from {name}: logits differ by {err}"
        );
        let fast = image_forward(&g, &tokens, NumericPath::Fast);
        let c = cosine(&fast, &want_t);
        assert!(
            c > 0.999,
            "tiny-bitnet ternary from {name}, fast path: cosine {c}"
        );
    }
}

/// The tiny BitNet model of `tests/data/bitnet-tiny`, written and run by Hugging Face
/// transformers (`xtask/scripts/bitnet_reference.py`; its `config.json` in transformers 5's form,
/// `rope_theta` inside `rope_parameters`): the F16 image computes transformers' logits on the exact
/// path, and the fast path comes close.
#[test]
fn tiny_bitnet_matches_hugging_face_transformers() {
    let fixture = edgellm_tests::data_dir().join("bitnet-tiny");
    let dir = scratch("bitnet-transformers");
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), hf.join(f)).unwrap();
    }
    std::fs::write(hf.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("logits.json")).unwrap()).unwrap();

    let out = dir.join("f16.gguf");
    convert(&args(&hf, &out, Format::F16, HeadFormat::F16)).expect("convert f16");
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    verify_image(&g).unwrap();
    assert_eq!(g.architecture(), Some("bitnet-b1.58"));
    assert_eq!(g.get_f32("bitnet-b1.58.rope.freq_base"), Some(500_000.0));
    let seqs = reference["sequences"].as_array().unwrap();
    let logits = reference["logits"].as_array().unwrap();
    assert_eq!(seqs.len(), logits.len());
    for (seq, want) in seqs.iter().zip(logits) {
        let tokens: Vec<u32> = seq
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<f32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = image_forward(&g, &tokens, NumericPath::Exact);
        let err = max_rel(&got, &want);
        eprintln!(
            "bitnet vs transformers, {} tokens: max error {err:.2e}",
            tokens.len()
        );
        assert!(
            err < 1e-4,
            "{} tokens: logits differ by {err}",
            tokens.len()
        );
        let fast = image_forward(&g, &tokens, NumericPath::Fast);
        let c = cosine(&fast, &want);
        assert!(c > 0.999, "{} tokens, fast path: cosine {c}", tokens.len());
    }
}

/// GGUF's llama RoPE: rotates adjacent pairs `(x[2i], x[2i+1])`.
fn rope_adjacent(x: &mut [f32], pos: usize) {
    for h in x.chunks_exact_mut(HEAD_DIM) {
        for i in 0..HEAD_DIM / 2 {
            let f = pos as f32 / THETA.powf((2 * i) as f32 / HEAD_DIM as f32);
            let (c, s) = (f.cos(), f.sin());
            let (a, b) = (h[2 * i], h[2 * i + 1]);
            h[2 * i] = a * c - b * s;
            h[2 * i + 1] = a * s + b * c;
        }
    }
}

#[test]
fn llama_q_k_rows_are_permuted_for_adjacent_rope() {
    let dir = scratch("permute");
    let w = tiny_weights(false, true, 3);
    let hf = dir.join("hf");
    write_hf(&hf, &w, false, true, |_| {});
    let out = dir.join("f16.gguf");
    convert(&args(&hf, &out, Format::F16, HeadFormat::F16)).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let mut r = Rng(99);
    let (x, y) = (r.vec(HIDDEN, 1.0), r.vec(HIDDEN, 1.0));
    for l in 0..LAYERS {
        let hq = &w[&format!("model.layers.{l}.self_attn.q_proj.weight")].1;
        let hk = &w[&format!("model.layers.{l}.self_attn.k_proj.weight")].1;
        let gq = values(&g, &format!("blk.{l}.attn_q.weight"));
        let gk = values(&g, &format!("blk.{l}.attn_k.weight"));
        assert_ne!(&gq, hq, "q rows must be reordered");
        for (pq, pk) in [(3usize, 7usize), (11, 2)] {
            let (mut q1, mut k1) = (matvec(hq, &x), matvec(hk, &y));
            rope_hf(&mut q1, pq);
            rope_hf(&mut k1, pk);
            let (mut q2, mut k2) = (matvec(&gq, &x), matvec(&gk, &y));
            rope_adjacent(&mut q2, pq);
            rope_adjacent(&mut k2, pk);
            for h in 0..HEADS {
                let kv = h / (HEADS / KV_HEADS);
                let dot = |q: &[f32], k: &[f32]| -> f32 {
                    (0..HEAD_DIM)
                        .map(|d| q[h * HEAD_DIM + d] * k[kv * HEAD_DIM + d])
                        .sum()
                };
                let (a, b) = (dot(&q1, &k1), dot(&q2, &k2));
                assert!(
                    (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                    "layer {l} head {h}: q·k {b} in the image, {a} the Hugging Face way"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LoRA.

/// Writes a PEFT adapter for the q and v projections; returns module → (A [r, in], B [out, r]).
fn write_adapter(
    dir: &Path,
    rank: usize,
    a_rows: usize,
    alpha: f32,
) -> BTreeMap<String, (Vec<f32>, Vec<f32>)> {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = serde_json::json!({
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha,
        "target_modules": ["q_proj", "v_proj"], "bias": "none"
    });
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
    let mut r = Rng(1234);
    let mut out = BTreeMap::new();
    let mut st = BTreeMap::new();
    for l in 0..LAYERS {
        for (m, rows) in [
            ("q_proj", HEADS * HEAD_DIM),
            ("v_proj", KV_HEADS * HEAD_DIM),
        ] {
            let module = format!("model.layers.{l}.self_attn.{m}");
            let a = r.vec(a_rows * HIDDEN, 0.5);
            let b = r.vec(rows * rank, 0.5);
            st.insert(
                format!("base_model.model.{module}.lora_A.weight"),
                St::new(Dtype::F32, &[a_rows, HIDDEN], &a),
            );
            st.insert(
                format!("base_model.model.{module}.lora_B.weight"),
                St::new(Dtype::BF16, &[rows, rank], &b),
            );
            let b: Vec<f32> = b
                .iter()
                .map(|x| half::bf16::from_f32(*x).to_f32())
                .collect();
            out.insert(module, (a, b));
        }
    }
    write_safetensors(&dir.join("adapter_model.safetensors"), &st);
    out
}

/// W + s·B·A in f64, rounded to f32.
fn merged(w: &[f32], a: &[f32], b: &[f32], rank: usize, s: f64) -> Vec<f32> {
    let cols = a.len() / rank;
    w.iter()
        .enumerate()
        .map(|(i, &x)| {
            let (o, c) = (i / cols, i % cols);
            let d: f64 = (0..rank)
                .map(|k| b[o * rank + k] as f64 * a[k * cols + c] as f64)
                .sum();
            (x as f64 + s * d) as f32
        })
        .collect()
}

/// The test's own q/k row permutation (Hugging Face → GGUF), written out per head.
fn to_gguf_rows(x: &[f32], heads: usize) -> Vec<f32> {
    let rows = x.len() / HIDDEN;
    let hd = rows / heads;
    let mut out = Vec::with_capacity(x.len());
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in [i, i + hd / 2] {
                let r = h * hd + j;
                out.extend_from_slice(&x[r * HIDDEN..(r + 1) * HIDDEN]);
            }
        }
    }
    out
}

fn check_close(name: &str, got: &[f32], want: &[f32], tol: impl Fn(usize) -> f32) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol(i),
            "{name}[{i}]: {g} in the image, {w} expected"
        );
    }
}

#[test]
fn lora_merges_into_hugging_face_and_gguf_inputs() {
    let dir = scratch("lora");
    let w = tiny_weights(false, true, 4);
    let hf = dir.join("hf");
    write_hf(&hf, &w, false, true, |_| {});
    let (rank, alpha) = (4usize, 8.0f32);
    let pairs = write_adapter(&dir.join("adapter"), rank, rank, alpha);
    let s = (alpha / rank as f32) as f64;
    let expected = |l: usize, m: &str| -> Vec<f32> {
        let module = format!("model.layers.{l}.self_attn.{m}");
        let (a, b) = &pairs[&module];
        let wm = merged(&w[&format!("{module}.weight")].1, a, b, rank, s);
        match m {
            "q_proj" => to_gguf_rows(&wm, HEADS),
            _ => wm,
        }
    };

    // Hugging Face input, F16 output: the merged weights rounded once to f16.
    let out = dir.join("merged-f16.gguf");
    let mut a = args(&hf, &out, Format::F16, HeadFormat::F16);
    a.lora = Some(dir.join("adapter"));
    let summary = convert(&a).expect("convert with lora");
    assert_eq!(summary.lora_modules, 2 * LAYERS);
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let f16_tol = |want: &[f32]| {
        let v = want.to_vec();
        move |i: usize| v[i].abs() / 1024.0 + 1e-6
    };
    for l in 0..LAYERS {
        for (m, t) in [("q_proj", "attn_q"), ("v_proj", "attn_v")] {
            let want = expected(l, m);
            check_close(
                &format!("blk.{l}.{t}"),
                &values(&g, &format!("blk.{l}.{t}.weight")),
                &want,
                f16_tol(&want),
            );
        }
        // Untargeted modules are unchanged.
        let k = to_gguf_rows(
            &w[&format!("model.layers.{l}.self_attn.k_proj.weight")].1,
            KV_HEADS,
        );
        assert_eq!(values(&g, &format!("blk.{l}.attn_k.weight")), k);
    }

    // Q8_0 output: within half a quantization step of each block.
    let out8 = dir.join("merged-q8.gguf");
    let mut a8 = args(&hf, &out8, Format::Q8, HeadFormat::Q8);
    a8.lora = Some(dir.join("adapter"));
    convert(&a8).unwrap();
    let bytes8 = std::fs::read(&out8).unwrap();
    let g8 = Gguf::parse(&bytes8).unwrap();
    let want = expected(1, "q_proj");
    let amax: Vec<f32> = want
        .chunks(32)
        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect();
    check_close(
        "blk.1.attn_q q8",
        &values(&g8, "blk.1.attn_q.weight"),
        &want,
        |i| amax[i / 32] / 127.0 * 0.5 * 1.001 + amax[i / 32] / 2048.0,
    );

    // GGUF input (the unmerged F16 image): the delta is permuted like the q rows it joins.
    let base = dir.join("base-f16.gguf");
    convert(&args(&hf, &base, Format::F16, HeadFormat::F16)).unwrap();
    let out2 = dir.join("merged-from-gguf.gguf");
    let mut a2 = args(&base, &out2, Format::F16, HeadFormat::F16);
    a2.lora = Some(dir.join("adapter"));
    convert(&a2).unwrap();
    let bytes2 = std::fs::read(&out2).unwrap();
    let g2 = Gguf::parse(&bytes2).unwrap();
    verify_image(&g2).unwrap();
    assert_eq!(g2.get_str("edgellm.image.source"), Some("base-f16.gguf"));
    for l in 0..LAYERS {
        let want = expected(l, "q_proj");
        check_close(
            &format!("gguf input blk.{l}.attn_q"),
            &values(&g2, &format!("blk.{l}.attn_q.weight")),
            &want,
            f16_tol(&want),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed inputs.

fn convert_err(input: &Path, out: &Path, lora: Option<PathBuf>) -> String {
    let mut a = args(input, out, Format::Q8, HeadFormat::Q8);
    a.lora = lora;
    let e = convert(&a).expect_err("conversion must fail");
    assert!(!out.exists(), "a failed conversion leaves no output");
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    format!("{e:#}")
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} should mention {p:?}");
    }
}

#[test]
fn malformed_inputs_give_clear_errors() {
    let dir = scratch("malformed");
    let out = dir.join("out.gguf");
    let w = tiny_weights(false, true, 5);

    let d = dir.join("no-hidden");
    write_hf(&d, &w, false, true, |c| {
        c.as_object_mut().unwrap().remove("hidden_size");
    });
    assert_contains(
        &convert_err(&d, &out, None),
        &["config.json", "hidden_size"],
    );

    let d = dir.join("no-eps");
    write_hf(&d, &w, false, true, |c| {
        c.as_object_mut().unwrap().remove("rms_norm_eps");
    });
    assert_contains(&convert_err(&d, &out, None), &["rms_norm_eps"]);

    let d = dir.join("arch");
    write_hf(&d, &w, false, true, |c| {
        c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    });
    assert_contains(
        &convert_err(&d, &out, None),
        &["GPT2LMHeadModel", "not supported"],
    );

    // k_proj with the query's row count.
    let mut bad = w.clone();
    let q = bad["model.layers.0.self_attn.q_proj.weight"].clone();
    bad.insert("model.layers.0.self_attn.k_proj.weight".into(), q);
    let d = dir.join("shape");
    write_hf(&d, &bad, false, true, |_| {});
    assert_contains(
        &convert_err(&d, &out, None),
        &[
            "model.layers.0.self_attn.k_proj.weight",
            "[64, 64]",
            "expected [32, 64]",
        ],
    );

    let mut missing = w.clone();
    missing.remove("model.layers.1.mlp.up_proj.weight");
    let d = dir.join("missing");
    write_hf(&d, &missing, false, true, |_| {});
    assert_contains(
        &convert_err(&d, &out, None),
        &["blk.1.ffn_up.weight", "mlp.up_proj"],
    );

    let d = dir.join("layers");
    write_hf(&d, &w, false, true, |c| c["num_hidden_layers"] = 1.into());
    assert_contains(&convert_err(&d, &out, None), &["past num_hidden_layers"]);

    // A layer count far beyond the tensors the files hold: the first missing layer is named
    // (without listing a billion layers' tensor names first).
    let d = dir.join("many-layers");
    write_hf(&d, &w, false, true, |c| {
        c["num_hidden_layers"] = 1_000_000_000u64.into()
    });
    assert_contains(
        &convert_err(&d, &out, None),
        &["blk.2.attn_norm.weight", "model.layers.2.input_layernorm"],
    );

    // A dimension the image cannot store as a u32.
    let d = dir.join("huge-vocab");
    write_hf(&d, &w, false, true, |c| {
        c["vocab_size"] = (1u64 << 33).into()
    });
    assert_contains(
        &convert_err(&d, &out, None),
        &["vocab_size = 8589934592", "out of range"],
    );

    // A NaN in a weight, and a LoRA merge that overflows to infinity: refused by name.
    let mut nan = w.clone();
    nan.get_mut("model.layers.1.mlp.down_proj.weight")
        .unwrap()
        .1[7] = f32::NAN;
    let d = dir.join("nan");
    write_hf(&d, &nan, false, true, |_| {});
    assert_contains(
        &convert_err(&d, &out, None),
        &["blk.1.ffn_down.weight", "non-finite value (NaN) at index 7"],
    );
    let d = dir.join("good");
    write_hf(&d, &w, false, true, |_| {});
    write_adapter(&dir.join("huge-alpha"), 4, 4, 8.0);
    let cfg = dir.join("huge-alpha/adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"lora_alpha\":8.0", "\"lora_alpha\":1e300"),
    )
    .unwrap();
    assert_contains(
        &convert_err(&d, &out, Some(dir.join("huge-alpha"))),
        &["blk.0.attn_q.weight", "non-finite", "after the LoRA merge"],
    );

    // LoRA: A with 3 rows where adapter_config.json says r = 4.
    write_hf(&d, &w, false, true, |_| {});
    write_adapter(&dir.join("bad-rank"), 4, 3, 8.0);
    assert_contains(
        &convert_err(&d, &out, Some(dir.join("bad-rank"))),
        &["lora_A", "bad LoRA rank", "r = 4"],
    );
    let ad = dir.join("no-config");
    std::fs::create_dir_all(&ad).unwrap();
    assert_contains(&convert_err(&d, &out, Some(ad)), &["adapter_config.json"]);

    // Not a model at all.
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\0\0\0").unwrap();
    assert_contains(&convert_err(&junk, &out, None), &["not a valid GGUF file"]);
}

// ---------------------------------------------------------------------------------------------
// Ternary images.

#[test]
fn ternary_image_holds_codes_and_row_scales() {
    let dir = scratch("ternary");
    let w = tiny_weights(false, true, 6);
    let hf = dir.join("hf");
    write_hf(&hf, &w, false, true, |_| {});
    let out = dir.join("t2.gguf");
    let s = convert(&args(&hf, &out, Format::Ternary, HeadFormat::F16)).unwrap();
    assert_eq!(s.n_tensors, 1 + LAYERS * (9 + 7) + 1);
    let bytes = std::fs::read(&out).unwrap();
    let linear = [
        ("attn_q", "self_attn.q_proj", HEADS),
        ("attn_k", "self_attn.k_proj", KV_HEADS),
        ("attn_v", "self_attn.v_proj", 0),
        ("attn_output", "self_attn.o_proj", 0),
        ("ffn_gate", "mlp.gate_proj", 0),
        ("ffn_up", "mlp.up_proj", 0),
        ("ffn_down", "mlp.down_proj", 0),
    ];
    let g = Gguf::parse(&bytes).unwrap();
    verify_image(&g).unwrap();
    assert_eq!(g.get_str("edgellm.image.format"), Some("ternary"));
    assert_eq!(g.tensor("token_embd.weight").unwrap().ty, GgmlType::F16);
    for l in 0..LAYERS {
        for (gname, hname, heads) in linear {
            let hw = &w[&format!("model.layers.{l}.{hname}.weight")];
            let (rows, cols) = (hw.0[0], hw.0[1]);
            let want = if heads > 0 {
                to_gguf_rows(&hw.1, heads)
            } else {
                hw.1.clone()
            };
            let name = format!("blk.{l}.{gname}.weight");
            let t = g.tensor(&name).unwrap();
            assert_eq!(t.ty, GgmlType::T2, "{name}");
            assert_eq!(t.data.len(), rows * cols / 4, "{name}");
            let mut codes = vec![0f32; cols];
            let scales = values(&g, &format!("{name}.scale"));
            assert_eq!(scales.len(), rows);
            for r in 0..rows {
                let row = &want[r * cols..(r + 1) * cols];
                let mean = row.iter().map(|v| v.abs() as f64).sum::<f64>() / cols as f64;
                assert!(
                    (scales[r] as f64 - mean).abs() <= mean * 1e-6,
                    "{name} row {r}"
                );
                let rb = cols / 4;
                dequantize_t2(&t.data[r * rb..(r + 1) * rb], &mut codes);
                for (c, &x) in row.iter().enumerate() {
                    let q = (x / scales[r]).round_ties_even().clamp(-1.0, 1.0);
                    assert_eq!(codes[c], q, "{name}[{r}][{c}] = {x}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A real vocabulary through the Hugging Face path.

#[test]
fn smollm2_vocabulary_survives_a_hugging_face_round_trip() {
    let Some(model) = smollm2_path() else { return };
    let src_bytes = std::fs::read(&model).unwrap();
    let src = Gguf::parse(&src_bytes).unwrap();
    let strings = |g: &Gguf<'_>, k: &str| -> Vec<String> {
        g.get_array(k)
            .unwrap()
            .strings()
            .unwrap()
            .map(str::to_string)
            .collect()
    };
    let tokens = strings(&src, "tokenizer.ggml.tokens");
    let merges = strings(&src, "tokenizer.ggml.merges");
    let types: Vec<i32> = src
        .get_array("tokenizer.ggml.token_type")
        .unwrap()
        .i32s()
        .unwrap()
        .collect();
    let template = src.get_str("tokenizer.chat_template").unwrap();

    // tokenizer.json as Hugging Face writes SmolLM2's: control tokens are special added tokens.
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), i.into());
        if types[i] == 3 {
            added.push(serde_json::json!({"id": i, "content": t, "special": true}));
        }
    }
    let tj = serde_json::json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false},
        "model": {"type": "BPE", "vocab": vocab, "merges": merges}
    });
    let tc = serde_json::json!({
        "add_prefix_space": false,
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
        "chat_template": template
    });
    let dir = scratch("smollm2-vocab");
    let hf = dir.join("hf");
    let n = tokens.len();
    let w = tiny_weights_vocab(false, true, 7, n);
    write_hf(&hf, &w, false, true, |c| c["vocab_size"] = n.into());
    std::fs::write(hf.join("tokenizer.json"), tj.to_string()).unwrap();
    std::fs::write(hf.join("tokenizer_config.json"), tc.to_string()).unwrap();

    let out = dir.join("q8.gguf");
    convert(&args(&hf, &out, Format::Q8, HeadFormat::Q8)).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    verify_image(&g).unwrap();
    for k in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    ] {
        let (a, b) = (g.get(k), src.get(k));
        let same = match (a, b) {
            (Some(x), Some(y)) if x.as_u64().is_some() => x.as_u64() == y.as_u64(),
            (Some(x), Some(y)) => x == y,
            _ => false,
        };
        assert!(same, "{k}: image {a:?}, original {b:?}");
    }
    let (t1, t2) = (
        Tokenizer::from_gguf(&g).unwrap(),
        Tokenizer::from_gguf(&src).unwrap(),
    );
    for (name, p, _) in smollm2_reference() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        t1.encode(&p.text, true, &mut a);
        t2.encode(&p.text, true, &mut b);
        assert_eq!(a, p.prompt_ids, "prompt {name}");
        assert_eq!(a, b);
    }
    let kernels = Kernels::detect();
    Model::from_gguf(&g, &kernels).expect("image loads");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// bitnet.cpp's I2_S.

/// Encodes ternary `t` as an I2_S tensor in the x86 layout (blocks of 128 weights in 32 bytes:
/// byte `p` of a block holds elements `p`, `p + 32`, `p + 64`, `p + 96` from its high bits
/// down, code = weight + 1), then the 32-byte trailer with `scale`.
fn i2_s_tensor(t: &[f32], scale: f32) -> Vec<u8> {
    let mut out = Vec::new();
    for blk in t.chunks(128) {
        for p in 0..32 {
            let c = |k: usize| (blk[p + 32 * k] + 1.0) as u8;
            out.push(c(0) << 6 | c(1) << 4 | c(2) << 2 | c(3));
        }
    }
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend_from_slice(&[0; 28]);
    out
}

/// A ternary model in a bitnet.cpp I2_S file converts to T2 without loss: every weight of the
/// image (code times row scale) is the file's `scale * (c - 1)`, and the image equals, tensor for
/// tensor, the one converted from an F32 file of the same values.
#[test]
fn i2_s_model_converts_to_ternary_exactly() {
    check_i2_s(false);
}

/// As bitnet.cpp publishes BitNet b1.58 2B-4T: the `bitnet-b1.58` architecture with I2_S
/// weights (and a tied embedding).
#[test]
fn i2_s_bitnet_model_converts_to_ternary_exactly() {
    check_i2_s(true);
}

fn check_i2_s(bitnet: bool) {
    let dir = scratch(if bitnet { "i2s-bitnet" } else { "i2s" });
    let hf = dir.join("hf");
    if bitnet {
        write_bitnet_hf(&hf, &tiny_bitnet_weights(6));
    } else {
        write_hf(&hf, &tiny_weights(false, true, 5), false, true, |_| {});
    }
    let base = dir.join("f16.gguf");
    convert(&args(&hf, &base, Format::F16, HeadFormat::F16)).unwrap();
    let bytes = std::fs::read(&base).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let linear = |name: &str| {
        name.starts_with("blk.")
            && [
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ]
            .iter()
            .any(|m| name.ends_with(&format!(".{m}.weight")))
    };
    // Each linear weight made ternary with a per-tensor scale (its mean magnitude), written as
    // I2_S in one file and as F32 in another; every other tensor as F32 in both.
    let mut ternary: BTreeMap<String, (Vec<f32>, f32)> = BTreeMap::new();
    for t in g.tensors().iter().filter(|t| linear(t.name)) {
        let v = values(&g, t.name);
        let s = v.iter().map(|x| x.abs()).sum::<f32>() / v.len() as f32;
        let tv: Vec<f32> = v.iter().map(|x| (x / s).round().clamp(-1.0, 1.0)).collect();
        ternary.insert(t.name.to_string(), (tv, s));
    }
    assert_eq!(ternary.len(), 7 * LAYERS);
    let write = |path: &Path, i2s: bool| {
        let mut wr = GgufWriter::new();
        for (k, v) in g.metadata() {
            if !k.starts_with("edgellm.") {
                wr.set(k, Meta::from_value(v));
            }
        }
        let mut data = Vec::new();
        for t in g.tensors() {
            let (ty, bytes) = match ternary.get(t.name) {
                Some((tv, s)) if i2s => (GgmlType::I2_S, i2_s_tensor(tv, *s)),
                Some((tv, s)) => (
                    GgmlType::F32,
                    tv.iter().flat_map(|x| (x * s).to_le_bytes()).collect(),
                ),
                None => (
                    GgmlType::F32,
                    values(&g, t.name)
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect(),
                ),
            };
            wr.add_tensor(TensorSpec {
                name: t.name.to_string(),
                dims: t.shape().to_vec(),
                type_id: ty.id(),
                size: bytes.len() as u64,
            })
            .unwrap();
            data.push(bytes);
        }
        wr.write(path, |i, _| Ok(data[i].clone()), |_, _| {})
            .unwrap();
    };
    let (i2s_in, f32_in) = (dir.join("i2s.gguf"), dir.join("f32.gguf"));
    write(&i2s_in, true);
    write(&f32_in, false);
    let in_bytes = std::fs::read(&i2s_in).unwrap();
    let parsed = Gguf::parse(&in_bytes).unwrap();
    assert_eq!(
        parsed.tensor("blk.0.ffn_down.weight").unwrap().ty,
        GgmlType::I2_S
    );

    let (from_i2s, from_f32) = (dir.join("a.gguf"), dir.join("b.gguf"));
    convert(&args(&i2s_in, &from_i2s, Format::Ternary, HeadFormat::F16)).unwrap();
    convert(&args(&f32_in, &from_f32, Format::Ternary, HeadFormat::F16)).unwrap();
    let (a_bytes, b_bytes) = (
        std::fs::read(&from_i2s).unwrap(),
        std::fs::read(&from_f32).unwrap(),
    );
    let (a, b) = (
        Gguf::parse(&a_bytes).unwrap(),
        Gguf::parse(&b_bytes).unwrap(),
    );
    verify_image(&a).unwrap();
    for (name, (tv, s)) in &ternary {
        let t = a.tensor(name).unwrap();
        assert_eq!(t.ty, GgmlType::T2, "{name}");
        let cols = t.dims[0] as usize;
        let codes = values(&a, name);
        let scales = values(&a, &format!("{name}.scale"));
        for (i, want) in tv.iter().enumerate() {
            assert_eq!(codes[i] * scales[i / cols], want * s, "{name} element {i}");
        }
    }
    for t in b.tensors() {
        assert_eq!(
            a.tensor(t.name).map(|x| x.data),
            Some(t.data),
            "{}: the I2_S and F32 inputs give other bytes",
            t.name
        );
    }
    let kernels = Kernels::detect();
    let m = Model::from_gguf(&a, &kernels).expect("image loads");
    assert_eq!(
        m.config.arch.name(),
        if bitnet { "bitnet-b1.58" } else { "llama" }
    );
    // The image computes what the F32 input (the same ternary weights as floats) computes.
    let tokens = [5u32, 257, 40];
    let f32_bytes = std::fs::read(&f32_in).unwrap();
    let f32_model = Gguf::parse(&f32_bytes).unwrap();
    let want = image_forward(&f32_model, &tokens, NumericPath::Exact);
    let got = image_forward(&a, &tokens, NumericPath::Exact);
    assert!(max_rel(&got, &want) < 1e-5, "{}", max_rel(&got, &want));

    // The ARM layout reads the same bytes in another order: other weights.
    let arm = dir.join("arm.gguf");
    let mut a_args = args(&i2s_in, &arm, Format::Ternary, HeadFormat::F16);
    a_args.i2s_layout = I2sLayoutArg::Arm;
    convert(&a_args).unwrap();
    let arm_bytes = std::fs::read(&arm).unwrap();
    let c = Gguf::parse(&arm_bytes).unwrap();
    assert_ne!(
        c.tensor("blk.0.ffn_down.weight").unwrap().data,
        a.tensor("blk.0.ffn_down.weight").unwrap().data
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--head-format q6`: Q6_K where the rows are whole super-blocks of 256 values, Q8_0 (with a
/// note) where they are not. A llama model 256 wide (the tiny model's metadata with its widths
/// scaled, random weights) computes nearly the logits of its F16 image with a Q6_K embedding.
#[test]
fn q6_head_on_rows_of_256_and_its_fallback() {
    let dir = scratch("q6-head");
    let hf = dir.join("hf");
    write_hf(&hf, &tiny_weights(false, true, 7), false, true, |_| {});
    // Rows of 64 values: Q8_0, said once.
    let small = dir.join("q6-64.gguf");
    let s = convert(&args(&hf, &small, Format::Q8, HeadFormat::Q6)).unwrap();
    assert_eq!(s.fallbacks.len(), 1, "{:?}", s.fallbacks);
    assert!(s.fallbacks[0].contains("token_embd.weight") && s.fallbacks[0].contains("Q8_0"));
    let bytes = std::fs::read(&small).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.tensor("token_embd.weight").unwrap().ty, GgmlType::Q8_0);
    assert_eq!(g.get_str("edgellm.image.head_format"), Some("q6"));

    // The same metadata 256 wide: hidden 64 -> 256, the KV width 32 -> 128, head size 16 -> 64.
    let base = dir.join("f16-64.gguf");
    convert(&args(&hf, &base, Format::F16, HeadFormat::F16)).unwrap();
    let base_bytes = std::fs::read(&base).unwrap();
    let g = Gguf::parse(&base_bytes).unwrap();
    let mut wr = GgufWriter::new();
    for (k, v) in g.metadata() {
        match *k {
            "llama.embedding_length" => wr.set(k, Meta::U32(256)),
            "llama.rope.dimension_count" => wr.set(k, Meta::U32(64)),
            k if k.starts_with("edgellm.") => {}
            _ => wr.set(k, Meta::from_value(v)),
        }
    }
    let mut r = Rng(77);
    let mut data = Vec::new();
    for t in g.tensors() {
        let dims: Vec<u64> = t
            .shape()
            .iter()
            .map(|&d| match d {
                64 => 256,
                32 => 128,
                d => d,
            })
            .collect();
        let n: u64 = dims.iter().product();
        let v: Vec<f32> = if dims.len() == 1 {
            (0..n).map(|_| 1.0 + 0.2 * r.next()).collect()
        } else {
            r.vec(n as usize, 0.1)
        };
        wr.add_tensor(TensorSpec {
            name: t.name.to_string(),
            dims,
            type_id: GgmlType::F32.id(),
            size: 4 * n,
        })
        .unwrap();
        data.push(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    }
    let wide = dir.join("wide-f32.gguf");
    wr.write(&wide, |i, _| Ok(data[i].clone()), |_, _| {})
        .unwrap();

    let (f16_out, q6_out) = (dir.join("wide-f16.gguf"), dir.join("wide-q6.gguf"));
    convert(&args(&wide, &f16_out, Format::F16, HeadFormat::F16)).unwrap();
    let s = convert(&args(&wide, &q6_out, Format::F16, HeadFormat::Q6)).unwrap();
    assert!(s.fallbacks.is_empty(), "{:?}", s.fallbacks);
    let (fb, qb) = (
        std::fs::read(&f16_out).unwrap(),
        std::fs::read(&q6_out).unwrap(),
    );
    let (gf, gq) = (Gguf::parse(&fb).unwrap(), Gguf::parse(&qb).unwrap());
    verify_image(&gq).unwrap();
    let t = gq.tensor("token_embd.weight").unwrap();
    assert_eq!((t.ty, t.shape()), (GgmlType::Q6_K, &[256u64, 260][..]));
    // The embedding within six bits of the source; every other tensor as in the F16 image.
    let (want, got) = (
        values(&gf, "token_embd.weight"),
        values(&gq, "token_embd.weight"),
    );
    let se: f32 = want.iter().zip(&got).map(|(a, b)| (a - b) * (a - b)).sum();
    let sx: f32 = want.iter().map(|a| a * a).sum();
    let rel = (se / sx).sqrt();
    assert!(rel < 0.02, "Q6_K embedding: relative RMS error {rel}");
    for t in gf
        .tensors()
        .iter()
        .filter(|t| t.name != "token_embd.weight")
    {
        assert_eq!(gq.tensor(t.name).unwrap().data, t.data, "{}", t.name);
    }
    let tokens = [5u32, 257, 40, 258];
    for path in [NumericPath::Exact, NumericPath::Fast] {
        let (a, b) = (
            image_forward(&gf, &tokens, path),
            image_forward(&gq, &tokens, path),
        );
        let c = cosine(&b, &a);
        eprintln!("q6 head {path:?}: cosine {c:.6}, embedding error {rel:.4}");
        assert!(c > 0.999, "q6 head {path:?}: cosine {c}");
    }
}
