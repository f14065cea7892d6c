//! The second real model, Qwen2.5-Coder-0.5B-Instruct (qwen2 architecture: q/k/v biases, untied
//! output, Q4_K/Q5_0/Q6_K/Q8_0 tensors): it loads, and its greedy answer to a coding request is code.

use edgellm_core::gguf::Gguf;
use edgellm_core::model::{Arch, Model};
use edgellm_core::parallel::Serial;
use edgellm_core::session::{NumericPath, Session, SessionOptions};
use edgellm_core::tokenizer::Tokenizer;
use edgellm_kernels::Kernels;

#[test]
fn qwen_loads_and_answers_with_code() {
    let Some(path) = edgellm_tests::qwen_path() else {
        return;
    };
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: read-only private map of a file nobody rewrites during the test.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let g = Gguf::parse(&map).unwrap();
    let kernels = Kernels::detect();
    let model = Model::from_gguf(&g, &kernels).unwrap();
    assert_eq!(model.config.arch, Arch::Qwen2);
    assert!(
        !model.tied_output,
        "Qwen2.5-0.5B has a separate output layer in this file"
    );
    assert!(!model.layers[0].bq.is_empty(), "q/k/v biases are loaded");
    let tok = Tokenizer::from_gguf(&g).unwrap();

    // The chat template's rendering of one user message (its default system prompt included).
    let prompt = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
                  <|im_start|>user\nWrite a Python function that returns the sum of two numbers.<|im_end|>\n\
                  <|im_start|>assistant\n";
    let mut ids = Vec::new();
    tok.encode(prompt, true, &mut ids);
    let opts = SessionOptions {
        context: 128,
        path: NumericPath::Fast,
    };
    let mut s = Session::new(&model, kernels, opts).unwrap();
    let mut next = argmax(s.prefill(&ids, &Serial).unwrap());
    let mut text = Vec::new();
    for _ in 0..40 {
        if tok.is_end_of_generation(next) {
            break;
        }
        text.extend_from_slice(tok.token_bytes(next));
        next = argmax(s.forward(next, &Serial).unwrap());
    }
    let text = String::from_utf8_lossy(&text);
    eprintln!("qwen answer: {text}");
    assert!(
        text.contains("def "),
        "expected a Python function, got {text:?}"
    );
    assert!(
        text.contains("return"),
        "expected a return statement, got {text:?}"
    );
}

fn argmax(v: &[f32]) -> u32 {
    edgellm_tests::top_k(v, 1)[0]
}
