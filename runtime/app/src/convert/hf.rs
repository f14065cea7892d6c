//! Hugging Face input: `config.json` (Llama / Qwen2 / BitNet) mapped to GGUF hyper-parameter keys,
//! `*.safetensors` mapped to GGUF tensor names and checked against the config, and
//! `tokenizer.json` + `tokenizer_config.json` turned into GGUF's gpt2-style byte-level BPE keys.

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::SafeTensors;
use serde::Deserialize;
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::source::{hf_to_gguf, Data, Permute, Source, SrcTensor};
use super::writer::Meta;

/// The `config.json` keys the converter reads (any other key is ignored).
#[derive(Deserialize, Debug)]
struct Config {
    architectures: Option<Vec<String>>,
    hidden_size: Option<u64>,
    num_hidden_layers: Option<u64>,
    num_attention_heads: Option<u64>,
    num_key_value_heads: Option<u64>,
    intermediate_size: Option<u64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    max_position_embeddings: Option<u64>,
    tie_word_embeddings: Option<bool>,
    vocab_size: Option<u64>,
    head_dim: Option<u64>,
    bos_token_id: Option<Json>,
    eos_token_id: Option<Json>,
    rope_scaling: Option<Json>,
    /// transformers 5's home of `rope_theta` (and of the scaling type).
    rope_parameters: Option<Json>,
    hidden_act: Option<String>,
}

impl Config {
    /// `rope_theta`, top-level (transformers 4) or in `rope_parameters` (transformers 5).
    fn rope_theta(&self) -> Option<f64> {
        self.rope_theta.or_else(|| {
            self.rope_parameters
                .as_ref()
                .and_then(|p| p.get("rope_theta"))
                .and_then(Json::as_f64)
        })
    }

    /// Whether the config asks for a RoPE scaling, which images do not carry.
    fn scales_rope(&self) -> bool {
        self.rope_scaling.as_ref().is_some_and(|v| !v.is_null())
            || self.rope_parameters.as_ref().is_some_and(|p| {
                p.get("rope_type")
                    .and_then(Json::as_str)
                    .is_some_and(|t| t != "default")
            })
    }
}

/// A Hugging Face model directory, its safetensors files mapped.
pub struct HfDir {
    dir: PathBuf,
    config: Config,
    tokenizer: Json,
    tokenizer_config: Option<Json>,
    files: Vec<(PathBuf, Mmap)>,
}

fn read_json(path: &Path) -> Result<Json> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// The hyper-parameters, checked.
struct Dims {
    arch: &'static str,
    hidden: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    ffn: u64,
    vocab: u64,
    tied: bool,
}

impl HfDir {
    /// Reads `config.json` and `tokenizer.json` and maps every `*.safetensors` file of `dir`.
    pub fn open(dir: &Path) -> Result<HfDir> {
        let config_path = dir.join("config.json");
        let config: Config = serde_json::from_value(read_json(&config_path)?)
            .with_context(|| format!("{}: unexpected value type", config_path.display()))?;
        let tokenizer = read_json(&dir.join("tokenizer.json"))?;
        let tc = dir.join("tokenizer_config.json");
        let tokenizer_config = if tc.exists() {
            Some(read_json(&tc)?)
        } else {
            None
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            bail!(
                "{} has no *.safetensors file: a Hugging Face model directory needs config.json, \
                 *.safetensors and tokenizer.json",
                dir.display()
            );
        }
        let mut files = Vec::with_capacity(paths.len());
        for p in paths {
            let map = super::map_file(&p)?;
            files.push((p, map));
        }
        Ok(HfDir {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            tokenizer_config,
            files,
        })
    }

    fn dims(&self) -> Result<Dims> {
        let c = &self.config;
        let arch = match c
            .architectures
            .as_ref()
            .and_then(|a| a.first())
            .map(String::as_str)
        {
            Some("LlamaForCausalLM") => "llama",
            Some("Qwen2ForCausalLM") => "qwen2",
            // BitNet b1.58 2B-4T, under bitnet.cpp's architecture name.
            Some("BitNetForCausalLM") => "bitnet-b1.58",
            Some(other) => bail!(
                "config.json: architecture {other} is not supported \
                 (supported: LlamaForCausalLM, Qwen2ForCausalLM, BitNetForCausalLM)"
            ),
            None => bail!("config.json: missing key `architectures`"),
        };
        let req = |v: Option<u64>, key: &str| {
            v.filter(|&v| v > 0)
                .with_context(|| format!("config.json: missing or zero key `{key}`"))
        };
        let hidden = req(c.hidden_size, "hidden_size")?;
        let heads = req(c.num_attention_heads, "num_attention_heads")?;
        let kv_heads = c.num_key_value_heads.unwrap_or(heads);
        let head_dim = c.head_dim.unwrap_or(hidden / heads);
        if kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || head_dim == 0
            || !head_dim.is_multiple_of(2)
        {
            bail!(
                "config.json: {heads} attention heads, {kv_heads} key/value heads and head \
                 dimension {head_dim} are inconsistent"
            );
        }
        if arch == "bitnet-b1.58" {
            if let Some(act) = c.hidden_act.as_deref().filter(|a| *a != "relu2") {
                bail!(
                    "config.json: a BitNet model with hidden_act {act:?} is not supported (only \
                     relu2, as BitNet b1.58 2B-4T)"
                );
            }
            if heads * head_dim != hidden {
                bail!(
                    "config.json: BitNet's attn_sub_norm needs num_attention_heads x head_dim = \
                     hidden_size, got {heads} x {head_dim} and {hidden}"
                );
            }
        }
        let d = Dims {
            arch,
            hidden,
            layers: req(c.num_hidden_layers, "num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            ffn: req(c.intermediate_size, "intermediate_size")?,
            vocab: req(c.vocab_size, "vocab_size")?,
            tied: c.tie_word_embeddings.unwrap_or(false),
        };
        // The image stores each as a u32.
        for (v, key) in [
            (d.hidden, "hidden_size"),
            (d.layers, "num_hidden_layers"),
            (d.heads, "num_attention_heads"),
            (d.kv_heads, "num_key_value_heads"),
            (d.head_dim, "head_dim"),
            (d.ffn, "intermediate_size"),
            (d.vocab, "vocab_size"),
        ] {
            if v > u64::from(u32::MAX) {
                bail!("config.json: {key} = {v} is out of range");
            }
        }
        Ok(d)
    }

    /// The source view: synthesized metadata and the mapped tensors.
    pub fn source(&self) -> Result<Source<'_>> {
        let d = self.dims()?;
        let c = &self.config;
        let eps = c
            .rms_norm_eps
            .context("config.json: missing key `rms_norm_eps`")?;
        if c.scales_rope() {
            eprintln!("warning: config.json's rope scaling is not carried into the image");
        }
        let context = c.max_position_embeddings.unwrap_or(2048);
        let Ok(context) = u32::try_from(context) else {
            bail!("config.json: max_position_embeddings = {context} is out of range");
        };
        let a = d.arch;
        let name = self
            .dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        let mut meta: Vec<(String, Meta)> = vec![
            ("general.architecture".into(), Meta::Str(a.into())),
            ("general.name".into(), Meta::Str(name)),
            (format!("{a}.context_length"), Meta::U32(context)),
            (format!("{a}.embedding_length"), Meta::U32(d.hidden as u32)),
            (format!("{a}.block_count"), Meta::U32(d.layers as u32)),
            (format!("{a}.feed_forward_length"), Meta::U32(d.ffn as u32)),
            (
                format!("{a}.attention.head_count"),
                Meta::U32(d.heads as u32),
            ),
            (
                format!("{a}.attention.head_count_kv"),
                Meta::U32(d.kv_heads as u32),
            ),
            (
                format!("{a}.rope.freq_base"),
                Meta::F32(c.rope_theta().unwrap_or(10_000.0) as f32),
            ),
            (
                format!("{a}.attention.layer_norm_rms_epsilon"),
                Meta::F32(eps as f32),
            ),
            (
                format!("{a}.rope.dimension_count"),
                Meta::U32(d.head_dim as u32),
            ),
            (format!("{a}.vocab_size"), Meta::U32(d.vocab as u32)),
        ];
        if d.head_dim * d.heads != d.hidden {
            meta.push((
                format!("{a}.attention.key_length"),
                Meta::U32(d.head_dim as u32),
            ));
            meta.push((
                format!("{a}.attention.value_length"),
                Meta::U32(d.head_dim as u32),
            ));
        }
        meta.extend(self.tokenizer_meta(d.vocab)?);
        let tensors = self.tensors(&d)?;
        Ok(Source { meta, tensors })
    }

    /// Every tensor of every safetensors file, mapped to GGUF names, checked against the config
    /// and put in GGUF's usual order.
    fn tensors(&self, d: &Dims) -> Result<Vec<SrcTensor<'_>>> {
        let q_rows = d.heads * d.head_dim;
        let kv_rows = d.kv_heads * d.head_dim;
        // Expected Hugging Face shape ([rows, cols] or [n]) of each GGUF tensor kind.
        let expected = |part: &str| -> Option<(Vec<u64>, &'static str)> {
            Some(match part {
                "token_embd.weight" | "output.weight" => {
                    (vec![d.vocab, d.hidden], "[vocab_size, hidden_size]")
                }
                "output_norm.weight" | "attn_norm.weight" | "ffn_norm.weight" => {
                    (vec![d.hidden], "[hidden_size]")
                }
                "attn_sub_norm.weight" if d.arch == "bitnet-b1.58" => {
                    (vec![d.hidden], "[hidden_size]")
                }
                "ffn_sub_norm.weight" if d.arch == "bitnet-b1.58" => {
                    (vec![d.ffn], "[intermediate_size]")
                }
                "attn_q.weight" => (
                    vec![q_rows, d.hidden],
                    "[num_attention_heads × head_dim, hidden_size]",
                ),
                "attn_k.weight" | "attn_v.weight" => (
                    vec![kv_rows, d.hidden],
                    "[num_key_value_heads × head_dim, hidden_size]",
                ),
                "attn_q.bias" => (vec![q_rows], "[num_attention_heads × head_dim]"),
                "attn_k.bias" | "attn_v.bias" => {
                    (vec![kv_rows], "[num_key_value_heads × head_dim]")
                }
                "attn_output.weight" => (
                    vec![d.hidden, q_rows],
                    "[hidden_size, num_attention_heads × head_dim]",
                ),
                "ffn_gate.weight" | "ffn_up.weight" => {
                    (vec![d.ffn, d.hidden], "[intermediate_size, hidden_size]")
                }
                "ffn_down.weight" => (vec![d.hidden, d.ffn], "[hidden_size, intermediate_size]"),
                _ => return None,
            })
        };
        let mut found: BTreeMap<(u64, usize, String), SrcTensor<'_>> = BTreeMap::new();
        for (path, map) in &self.files {
            let st = SafeTensors::deserialize(map).map_err(|e| {
                anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display())
            })?;
            for (hf_name, view) in st.tensors() {
                if hf_name.ends_with("rotary_emb.inv_freq") {
                    continue;
                }
                let Some(name) = hf_to_gguf(&hf_name) else {
                    bail!(
                        "{}: tensor {hf_name} has no GGUF counterpart in a {} model",
                        path.display(),
                        d.arch
                    );
                };
                if name == "output.weight" && d.tied {
                    // A tied model's lm_head is the embedding; keep one tensor.
                    continue;
                }
                let (layer, part) = match name.strip_prefix("blk.") {
                    Some(rest) => {
                        let (l, p) = rest.split_once('.').unwrap_or((rest, ""));
                        (l.parse::<u64>().unwrap_or(u64::MAX), p.to_string())
                    }
                    None => (u64::MAX, name.clone()),
                };
                if name.starts_with("blk.") && layer >= d.layers {
                    bail!(
                        "tensor {hf_name}: layer {layer} is past num_hidden_layers = {}",
                        d.layers
                    );
                }
                let Some((want, what)) = expected(&part) else {
                    bail!(
                        "tensor {hf_name} ({name}) is not part of a {} model",
                        d.arch
                    );
                };
                let shape: Vec<u64> = view.shape().iter().map(|&s| s as u64).collect();
                if shape != want {
                    bail!(
                        "tensor {hf_name} has shape {shape:?}, expected {want:?} = {what} \
                         from config.json"
                    );
                }
                let permute = match (d.arch, part.as_str()) {
                    ("llama", "attn_q.weight" | "attn_q.bias") => Permute::ToGguf(d.heads as usize),
                    ("llama", "attn_k.weight" | "attn_k.bias") => {
                        Permute::ToGguf(d.kv_heads as usize)
                    }
                    _ => Permute::None,
                };
                let order = match name.as_str() {
                    "token_embd.weight" => (0, 0, String::new()),
                    "output_norm.weight" => (u64::MAX, 0, String::new()),
                    "output.weight" => (u64::MAX, 1, String::new()),
                    _ => (layer + 1, part_rank(&part), part.clone()),
                };
                let module = hf_name
                    .rsplit_once('.')
                    .map(|(m, _)| m.to_string())
                    .unwrap_or_default();
                let t = SrcTensor {
                    name: name.clone(),
                    hf_module: Some(module),
                    dims: shape.iter().rev().copied().collect(),
                    data: Data::Safetensors {
                        dtype: view.dtype(),
                        bytes: view.data(),
                    },
                    permute,
                };
                if found.insert(order, t).is_some() {
                    bail!("tensor {name} appears twice in the safetensors files");
                }
            }
        }
        let have: std::collections::HashSet<String> =
            found.values().map(|t| t.name.clone()).collect();
        // Checked one name at a time, in order, so that a config.json claiming a huge layer
        // count costs no more than the tensors the files hold before the first one missing.
        let check = |name: &str| {
            if have.contains(name) {
                return Ok(());
            }
            bail!(
                "the safetensors files have no tensor for {name} (Hugging Face name {})",
                super::source::gguf_to_hf(name)
                    .map(|(m, s)| format!("{m}.{s}"))
                    .unwrap_or_default()
            )
        };
        check("token_embd.weight")?;
        check("output_norm.weight")?;
        if !d.tied {
            check("output.weight")?;
        }
        let mut parts = vec![
            "attn_norm.weight",
            "attn_q.weight",
            "attn_k.weight",
            "attn_v.weight",
            "attn_output.weight",
            "ffn_norm.weight",
            "ffn_gate.weight",
            "ffn_up.weight",
            "ffn_down.weight",
        ];
        if d.arch == "qwen2" {
            parts.extend(["attn_q.bias", "attn_k.bias", "attn_v.bias"]);
        }
        if d.arch == "bitnet-b1.58" {
            parts.extend(["attn_sub_norm.weight", "ffn_sub_norm.weight"]);
        }
        for l in 0..d.layers {
            for p in &parts {
                check(&format!("blk.{l}.{p}"))?;
            }
        }
        Ok(found.into_values().collect())
    }

    /// `tokenizer.ggml.*` keys and the chat template, from tokenizer.json / tokenizer_config.json.
    fn tokenizer_meta(&self, vocab_size: u64) -> Result<Vec<(String, Meta)>> {
        let tj = &self.tokenizer;
        let model = &tj["model"];
        if model["type"].as_str() != Some("BPE") {
            bail!(
                "tokenizer.json: model type {} is not supported: only byte-level BPE (type \"BPE\") \
                 tokenizers can be converted",
                model["type"]
            );
        }
        let vocab = model["vocab"]
            .as_object()
            .context("tokenizer.json: model.vocab is not an object")?;
        let mut tokens: Vec<Option<String>> = vec![None; vocab_size as usize];
        let mut types = vec![1i32; vocab_size as usize];
        let mut put = |text: &str, id: u64, ty: Option<i32>| -> Result<()> {
            let slot = tokens.get_mut(id as usize).with_context(|| {
                format!(
                    "tokenizer.json: token {text:?} has id {id}, past config.json's vocab_size \
                     {vocab_size}"
                )
            })?;
            *slot = Some(text.to_string());
            if let Some(ty) = ty {
                types[id as usize] = ty;
            }
            Ok(())
        };
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .with_context(|| format!("tokenizer.json: token {text:?} has no integer id"))?;
            put(text, id, None)?;
        }
        let mut by_text: HashMap<String, u64> = vocab
            .iter()
            .filter_map(|(t, id)| Some((t.clone(), id.as_u64()?)))
            .collect();
        if let Some(added) = tj["added_tokens"].as_array() {
            for a in added {
                let text = a["content"]
                    .as_str()
                    .context("tokenizer.json: added token without content")?;
                let id = a["id"]
                    .as_u64()
                    .context("tokenizer.json: added token without id")?;
                let special = a["special"].as_bool().unwrap_or(false);
                put(text, id, Some(if special { 3 } else { 4 }))?;
                by_text.insert(text.to_string(), id);
            }
        }
        let tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.unwrap_or_else(|| {
                    types[i] = 5;
                    format!("[PAD{i}]")
                })
            })
            .collect();
        let merges: Vec<String> = match model["merges"].as_array() {
            None => Vec::new(),
            Some(m) => m
                .iter()
                .map(|v| match v {
                    Json::String(s) => Ok(s.clone()),
                    Json::Array(p) if p.len() == 2 => Ok(format!(
                        "{} {}",
                        p[0].as_str().unwrap_or_default(),
                        p[1].as_str().unwrap_or_default()
                    )),
                    other => bail!("tokenizer.json: merge {other} is neither \"a b\" nor [a, b]"),
                })
                .collect::<Result<_>>()?,
        };
        let pre = pre_tokenizer_name(&tj["pre_tokenizer"])?;
        let mut meta = vec![
            ("tokenizer.ggml.model".to_string(), Meta::Str("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Meta::Str(pre.into())),
            ("tokenizer.ggml.tokens".into(), Meta::strings(tokens)),
            ("tokenizer.ggml.token_type".into(), Meta::i32s(types)),
            ("tokenizer.ggml.merges".into(), Meta::strings(merges)),
        ];
        let tc = self.tokenizer_config.as_ref();
        let special = |key: &str, fallback: Option<&Json>| -> Option<u64> {
            let from_tc = tc.and_then(|t| match &t[key] {
                Json::String(s) => by_text.get(s).copied(),
                Json::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .and_then(|s| by_text.get(s).copied()),
                _ => None,
            });
            from_tc.or_else(|| match fallback? {
                Json::Number(n) => n.as_u64(),
                Json::Array(a) => a.first()?.as_u64(),
                _ => None,
            })
        };
        for (key, gguf_key, fallback) in [
            (
                "bos_token",
                "tokenizer.ggml.bos_token_id",
                self.config.bos_token_id.as_ref(),
            ),
            (
                "eos_token",
                "tokenizer.ggml.eos_token_id",
                self.config.eos_token_id.as_ref(),
            ),
            ("unk_token", "tokenizer.ggml.unknown_token_id", None),
            ("pad_token", "tokenizer.ggml.padding_token_id", None),
        ] {
            if let Some(id) = special(key, fallback) {
                meta.push((gguf_key.into(), Meta::U32(id as u32)));
            }
        }
        let add_bos = tc
            .and_then(|t| t["add_bos_token"].as_bool())
            .unwrap_or_else(|| adds_bos(&tj["post_processor"]));
        meta.push(("tokenizer.ggml.add_bos_token".into(), Meta::Bool(add_bos)));
        if let Some(t) = tc.map(|t| &t["chat_template"]) {
            let template = match t {
                Json::String(s) => Some(s.clone()),
                Json::Array(list) => list
                    .iter()
                    .find(|e| e["name"].as_str() == Some("default"))
                    .or(list.first())
                    .and_then(|e| e["template"].as_str().map(str::to_string)),
                _ => None,
            };
            if let Some(s) = template {
                meta.push(("tokenizer.chat_template".into(), Meta::Str(s)));
            }
        }
        Ok(meta)
    }
}

/// Order of a layer's tensors in the image (GGUF converters' usual order).
fn part_rank(part: &str) -> usize {
    [
        "attn_norm.weight",
        "attn_q.weight",
        "attn_q.bias",
        "attn_k.weight",
        "attn_k.bias",
        "attn_v.weight",
        "attn_v.bias",
        "attn_sub_norm.weight",
        "attn_output.weight",
        "ffn_norm.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
        "ffn_sub_norm.weight",
        "ffn_down.weight",
    ]
    .iter()
    .position(|p| *p == part)
    .unwrap_or(usize::MAX)
}

/// Whether a post-processor puts a special token before the text (`TemplateProcessing`).
fn adds_bos(pp: &Json) -> bool {
    match pp["type"].as_str() {
        Some("TemplateProcessing") => pp["single"]
            .as_array()
            .and_then(|s| s.first())
            .is_some_and(|first| first.get("SpecialToken").is_some()),
        Some("Sequence") => pp["processors"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(adds_bos)),
        _ => false,
    }
}

/// Every `Split` regex and whether a `Digits` (individual) / `ByteLevel` step appears.
fn collect_pre(p: &Json, regexes: &mut Vec<String>, digits: &mut bool, byte_level: &mut bool) {
    match p["type"].as_str() {
        Some("Sequence") => {
            for q in p["pretokenizers"].as_array().into_iter().flatten() {
                collect_pre(q, regexes, digits, byte_level);
            }
        }
        Some("Split") => {
            if let Some(r) = p["pattern"]["Regex"].as_str() {
                regexes.push(r.to_string());
            }
        }
        Some("Digits") => *digits |= p["individual_digits"].as_bool().unwrap_or(false),
        Some("ByteLevel") => {
            *byte_level = true;
            if p["use_regex"].as_bool().unwrap_or(true) {
                regexes.push("gpt2".into());
            }
        }
        _ => {}
    }
}

/// `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer: `smollm` (digits one by one, then
/// GPT-2's byte-level split), `llama-bpe` (Llama 3's split, numbers in groups of up to three),
/// `qwen2` (the same split, numbers one digit at a time) or `gpt2` (plain byte-level).
fn pre_tokenizer_name(p: &Json) -> Result<&'static str> {
    let (mut regexes, mut digits, mut byte_level) = (Vec::new(), false, false);
    collect_pre(p, &mut regexes, &mut digits, &mut byte_level);
    let llama_like = |r: &str| r.contains(r"[^\r\n\p{L}\p{N}]?\p{L}+");
    let name = match regexes.as_slice() {
        [g] if g == "gpt2" && digits => "smollm",
        [g] if g == "gpt2" => "gpt2",
        [r] if llama_like(r) && r.contains(r"\p{N}{1,3}") => "llama-bpe",
        [r] if llama_like(r) && r.contains(r"|\p{N}|") => "qwen2",
        _ => "",
    };
    if name.is_empty() || !byte_level {
        bail!(
            "tokenizer.json: the pre-tokenizer {} is not one this converter recognises \
             (supported: SmolLM2 / GPT-2 byte-level, Llama 3, Qwen2)",
            p
        );
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_pre_tokenizers() {
        let smollm: Json = serde_json::from_str(
            r#"{"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},
            {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}]}"#,
        )
        .unwrap();
        assert_eq!(pre_tokenizer_name(&smollm).unwrap(), "smollm");
        let llama3 = serde_json::json!({"type":"Sequence","pretokenizers":[
            {"type":"Split","pattern":{"Regex":"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},
            {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]});
        assert_eq!(pre_tokenizer_name(&llama3).unwrap(), "llama-bpe");
        let qwen2 = serde_json::json!({"type":"Sequence","pretokenizers":[
            {"type":"Split","pattern":{"Regex":"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},
            {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false}]});
        assert_eq!(pre_tokenizer_name(&qwen2).unwrap(), "qwen2");
        let gpt2 = serde_json::json!({"type":"ByteLevel","add_prefix_space":false});
        assert_eq!(pre_tokenizer_name(&gpt2).unwrap(), "gpt2");
        let spm = serde_json::json!({"type":"Metaspace"});
        assert!(pre_tokenizer_name(&spm).is_err());
    }

    #[test]
    fn detects_bos_post_processor() {
        let pp = serde_json::json!({"type":"Sequence","processors":[
            {"type":"ByteLevel"},
            {"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<|begin_of_text|>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}]}]});
        assert!(adds_bos(&pp));
        assert!(!adds_bos(&serde_json::json!({"type":"ByteLevel"})));
    }
}
