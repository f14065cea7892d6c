//! The real model and the llama.cpp vocabulary files parse, with the shapes and metadata we expect.
//! Each test prints "skipped: ... not found" and passes when its file is absent.
//!
//! Files: `$EDGELLM_MODEL_DIR` (default `~/.cache/edgellm/models`) for the model,
//! `$EDGELLM_VOCAB_DIR` (default `~/.cache/edgellm/vocab`) for the vocabularies.

use std::path::PathBuf;

use edgellm_core::gguf::{Gguf, Value, ValueType};
use edgellm_core::kernels::GgmlType;

fn dir(var: &str, default: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(default),
    }
}

fn read(path: &std::path::Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(_) => {
            println!("skipped: {} not found", path.display());
            None
        }
    }
}

/// Walks every metadata value (arrays included) and every tensor byte range.
fn walk(g: &Gguf<'_>) -> usize {
    fn visit(v: &Value<'_>) -> usize {
        match v {
            Value::Array(a) => {
                let mut n = 0;
                for item in a.iter() {
                    n += visit(&item);
                }
                assert_eq!(a.iter().count(), a.len());
                n + 1
            }
            _ => 1,
        }
    }
    let mut n = 0;
    for (_, v) in g.metadata() {
        n += visit(v);
    }
    n
}

#[test]
fn smollm2_q4_1_parses() {
    let path =
        dir("EDGELLM_MODEL_DIR", ".cache/edgellm/models").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let Some(bytes) = read(&path) else { return };
    let g = Gguf::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(g.version, 3);
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get_u32("llama.block_count"), Some(30));
    assert_eq!(g.get_u32("llama.embedding_length"), Some(576));
    assert_eq!(g.get_u32("llama.feed_forward_length"), Some(1536));
    assert_eq!(g.get_u32("llama.attention.head_count"), Some(9));
    assert_eq!(g.get_u32("llama.attention.head_count_kv"), Some(3));
    assert_eq!(g.get_f32("llama.rope.freq_base"), Some(100000.0));
    assert!(g
        .get_f32("llama.attention.layer_norm_rms_epsilon")
        .is_some());
    assert_eq!(g.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(g.get_str("tokenizer.ggml.pre"), Some("smollm"));
    let tokens = g.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.elem_type(), ValueType::Str);
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens.strings().unwrap().count(), 49152);
    assert!(g
        .get_array("tokenizer.ggml.merges")
        .unwrap()
        .strings()
        .unwrap()
        .all(|m| m.contains(' ')));
    walk(&g);

    // 30 layers x 9 tensors, token embedding, output norm; tied output.
    assert_eq!(g.tensors().len(), 30 * 9 + 2);
    assert!(g.tensor("output.weight").is_none());
    let embd = g.tensor("token_embd.weight").unwrap();
    assert_eq!((embd.ty, embd.shape()), (GgmlType::Q8_0, &[576, 49152][..]));
    let q = g.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q.ty, q.shape(), q.row_len(), q.n_rows()),
        (GgmlType::Q4_1, &[576, 576][..], 576, 576)
    );
    let k = g.tensor("blk.29.attn_k.weight").unwrap();
    assert_eq!(k.shape(), [576, 192]);
    let up = g.tensor("blk.3.ffn_up.weight").unwrap();
    assert_eq!(up.shape(), [576, 1536]);
    let norm = g.tensor("output_norm.weight").unwrap();
    assert_eq!(
        (norm.ty, norm.shape(), norm.data.len()),
        (GgmlType::F32, &[576][..], 576 * 4)
    );
    let total: usize = g.tensors().iter().map(|t| t.data.len()).sum();
    assert!(g.data_offset + total <= bytes.len());
    assert_eq!(g.data_offset % g.alignment, 0);
}

#[test]
fn llama_cpp_vocab_files_parse() {
    let vocab = dir("EDGELLM_VOCAB_DIR", ".cache/edgellm/vocab");
    for name in [
        "gpt-2",
        "llama-bpe",
        "llama-spm",
        "phi-3",
        "qwen2",
        "starcoder",
    ] {
        let path = vocab.join(format!("ggml-vocab-{name}.gguf"));
        let Some(bytes) = read(&path) else { continue };
        let g = Gguf::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(g.tensors().is_empty(), "{name}");
        let tokens = g.get_array("tokenizer.ggml.tokens").unwrap();
        assert!(tokens.len() > 30_000, "{name}: {} tokens", tokens.len());
        assert_eq!(tokens.strings().unwrap().count(), tokens.len(), "{name}");
        assert!(g.get_str("tokenizer.ggml.model").is_some(), "{name}");
        if let Some(types) = g.get_array("tokenizer.ggml.token_type") {
            assert_eq!(types.i32s().unwrap().len(), tokens.len(), "{name}");
        }
        if let Some(scores) = g.get_array("tokenizer.ggml.scores") {
            assert_eq!(scores.f32s().unwrap().len(), tokens.len(), "{name}");
        }
        walk(&g);
    }
}
