//! Helpers shared by the end-to-end tests: where the real models and test vectors are, and the
//! reference outputs computed by Hugging Face transformers for SmolLM2-135M-Instruct.
//!
//! Data that is absent makes a test print `skipped: ...` and pass, except when
//! `EDGELLM_REQUIRE_DATA=1` (set by `cargo xtask ci`), where it fails: CI never skips silently.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The cache directory `cargo xtask fetch-model` writes to.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("EDGELLM_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache").join("edgellm")
}

fn find(env: &str, default: PathBuf, what: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or(default);
    if path.exists() {
        return Some(path);
    }
    let msg = format!("{what} not found at {} (set {env}, or run `cargo xtask ci`)", path.display());
    if std::env::var("EDGELLM_REQUIRE_DATA").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    eprintln!("skipped: {msg}");
    None
}

/// The real SmolLM2-135M-Instruct Q4_1 GGUF (`EDGELLM_MODEL`).
pub fn smollm2_path() -> Option<PathBuf> {
    find(
        "EDGELLM_MODEL",
        cache_dir().join("models").join("SmolLM2-135M-Instruct.Q4_1.gguf"),
        "the SmolLM2-135M model",
    )
}

/// The Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (`EDGELLM_QWEN_MODEL`).
pub fn qwen_path() -> Option<PathBuf> {
    find(
        "EDGELLM_QWEN_MODEL",
        cache_dir().join("models").join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
        "the Qwen2.5-Coder-0.5B model",
    )
}

/// llama.cpp's tokenizer test vectors (`EDGELLM_VOCAB_DIR`).
pub fn vocab_dir() -> Option<PathBuf> {
    find("EDGELLM_VOCAB_DIR", cache_dir().join("vocab"), "the tokenizer test vectors")
}

/// This package's committed test data.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// One reference prompt of `data/smollm2/reference.json`.
#[derive(Debug, Deserialize)]
pub struct RefPrompt {
    pub text: String,
    pub prompt_ids: Vec<u32>,
    pub argmax_per_position: Vec<u32>,
    pub top10_ids: Vec<u32>,
    pub top10_logits: Vec<f32>,
    pub greedy40_ids: Vec<u32>,
    pub greedy40_margins: Vec<f32>,
    pub greedy40_text: String,
    pub last_logits_file: String,
}

#[derive(Debug, Deserialize)]
struct RefFile {
    vocab_size: usize,
    prompts: BTreeMap<String, RefPrompt>,
}

/// The reference prompts by name, and the full last-position logits of each.
pub fn smollm2_reference() -> Vec<(String, RefPrompt, Vec<f32>)> {
    let dir = data_dir().join("smollm2");
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    let file: RefFile = serde_json::from_str(&text).expect("reference.json parses");
    file.prompts
        .into_iter()
        .map(|(name, p)| {
            let bytes = std::fs::read(dir.join(&p.last_logits_file)).expect("logits file");
            let logits: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(logits.len(), file.vocab_size);
            (name, p, logits)
        })
        .collect()
}

/// Relative L2 error |a - b| / |b|.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(v: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..v.len() as u32).collect();
    idx.sort_by(|&a, &b| v[b as usize].total_cmp(&v[a as usize]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}
