//! Tokenizer against llama.cpp's vocabulary test vectors and SmolLM2's reference prompt ids.
//!
//! The vectors are `ggml-vocab-*.gguf` with `.inp` (inputs, each followed by a line
//! `__ggml_vocab_test__`) and `.out` (expected ids, one line per input), tokenized without BOS and
//! without parsing special tokens. They live in `EDGELLM_VOCAB_DIR` (default
//! `~/.cache/edgellm/vocab`); the tests skip with a message when it is absent.

use edgellm_core::gguf::Gguf;
use edgellm_core::tokenizer::{Model, Tokenizer, Utf8Stream};
use std::path::{Path, PathBuf};

const VOCABS: [&str; 6] = [
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "starcoder",
    "llama-spm",
    "phi-3",
];
const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn cache_dir(var: &str, sub: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/edgellm").join(sub)
        }
    }
}

fn vocab_dir() -> Option<PathBuf> {
    let dir = cache_dir("EDGELLM_VOCAB_DIR", "vocab");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!(
            "skipped: vocab test vectors not found in {} (set EDGELLM_VOCAB_DIR)",
            dir.display()
        );
        None
    }
}

fn load_tokenizer(path: &Path) -> Tokenizer {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let g = Gguf::parse(&bytes).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("tokenizer of {}: {e}", path.display()))
}

/// The cases of one vocabulary: (input, expected ids).
fn cases(dir: &Path, name: &str) -> Vec<(String, Vec<u32>)> {
    let base = dir.join(format!("ggml-vocab-{name}.gguf"));
    let inp = std::fs::read_to_string(base.with_extension("gguf.inp")).expect("reading .inp");
    let out = std::fs::read_to_string(base.with_extension("gguf.out")).expect("reading .out");
    let mut inputs = Vec::new();
    let mut rest = inp.as_str();
    while let Some(p) = rest.find(SEPARATOR) {
        inputs.push(rest[..p].to_string());
        rest = &rest[p + SEPARATOR.len()..];
    }
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("id in .out"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        expected.len(),
        "{name}: inputs and expected lines differ in count"
    );
    inputs.into_iter().zip(expected).collect()
}

#[test]
fn llama_cpp_vocab_vectors() {
    let Some(dir) = vocab_dir() else { return };
    let mut failures = 0;
    for name in VOCABS {
        let tok = load_tokenizer(&dir.join(format!("ggml-vocab-{name}.gguf")));
        let cases = cases(&dir, name);
        let mut passed = 0;
        for (input, want) in &cases {
            let mut got = Vec::new();
            tok.encode(input, false, &mut got);
            if &got == want {
                passed += 1;
            } else {
                failures += 1;
                println!("FAIL {name}: input {input:?}\n  expected {want:?}\n  got      {got:?}");
            }
        }
        println!("{name}: {passed}/{} cases pass", cases.len());
    }
    assert_eq!(failures, 0, "{failures} vocab cases failed (see output)");
}

fn decode_streaming(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut stream = Utf8Stream::new();
    let mut buf = vec![0u8; Utf8Stream::max_output_len(tok.max_token_bytes())];
    let mut text = String::new();
    for &id in ids {
        text.push_str(
            stream
                .push(tok.token_bytes(id), &mut buf)
                .expect("buffer sized"),
        );
    }
    text.push_str(stream.finish());
    text
}

#[test]
fn encode_then_decode_gives_the_input_back() {
    let Some(dir) = vocab_dir() else { return };
    for name in VOCABS {
        let tok = load_tokenizer(&dir.join(format!("ggml-vocab-{name}.gguf")));
        for (input, _) in cases(&dir, name) {
            let mut ids = Vec::new();
            tok.encode(&input, false, &mut ids);
            let bytes: Vec<u8> = ids
                .iter()
                .flat_map(|&id| tok.token_bytes(id))
                .copied()
                .collect();
            // SentencePiece puts a space before the text.
            let want = match tok.model() {
                Model::Spm if !input.is_empty() => format!(" {input}"),
                _ => input.clone(),
            };
            assert_eq!(String::from_utf8_lossy(&bytes), want, "{name}: {ids:?}");
            assert_eq!(decode_streaming(&tok, &ids), want, "{name}: streaming");
        }
    }
}

fn smollm2() -> Option<Tokenizer> {
    let path = cache_dir("EDGELLM_MODEL_DIR", "models").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        println!(
            "skipped: {} not found (set EDGELLM_MODEL_DIR)",
            path.display()
        );
        return None;
    }
    let file = std::fs::File::open(&path).expect("opening model");
    // SAFETY: the model file is only read, and nothing truncates it while the test runs.
    let map = unsafe { memmap2::Mmap::map(&file) }.expect("mapping model");
    let g = Gguf::parse(&map).expect("parsing model");
    Some(Tokenizer::from_gguf(&g).expect("model tokenizer"))
}

#[test]
fn smollm2_reference_prompts() {
    let Some(tok) = smollm2() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert!(!tok.add_bos());
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    for end in ["<|im_end|>", "<|endoftext|>"] {
        let id = tok.token_id(end).unwrap();
        assert!(tok.is_end_of_generation(id) && tok.is_control(id), "{end}");
    }
    assert!(!tok.is_end_of_generation(tok.token_id("<|im_start|>").unwrap()));

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/smollm2/reference.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("reference.json")).unwrap();
    let prompts = json["prompts"].as_object().expect("prompts");
    assert!(!prompts.is_empty());
    for (name, p) in prompts {
        let text = p["text"].as_str().expect("text");
        let want: Vec<u32> = p["prompt_ids"]
            .as_array()
            .expect("prompt_ids")
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut got = Vec::new();
        tok.encode(text, true, &mut got);
        assert_eq!(got, want, "prompt {name}: {text:?}");
        assert_eq!(decode_streaming(&tok, &got), text, "prompt {name} decoded");
    }
}

#[test]
fn smollm2_special_tokens_are_text_unless_parsed() {
    let Some(tok) = smollm2() else { return };
    let mut ids = Vec::new();
    tok.encode("<|im_start|>user", false, &mut ids);
    assert!(!ids.contains(&1), "{ids:?}");
    ids.clear();
    tok.encode("<|im_start|>user", true, &mut ids);
    assert_eq!(ids[0], 1);
    // SmolLM2 splits digits one at a time.
    ids.clear();
    tok.encode("2024", false, &mut ids);
    assert_eq!(ids.len(), 4);
}
