//! Fuzz target: on any bytes that parse as GGUF, loading a model and a tokenizer returns a value
//! or an error and never panics; a model that loads takes one decode step on each numeric path
//! (context 4), and a tokenizer that loads encodes a short text and gives every id's bytes.
//!
//! Seed it with small model images, e.g. those `cargo test -p edgellm --test convert` leaves under
//! `target/tmp/convert-*/` (tiny llama, BitNet and ternary models of 64-190 KB):
//! `cargo +nightly fuzz run model_load corpus/model_load SEEDS -- -max_len=262144`.
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use edgellm_core::gguf::Gguf;
use edgellm_core::model::Model;
use edgellm_core::parallel::Serial;
use edgellm_core::session::{NumericPath, Session, SessionOptions};
use edgellm_core::tokenizer::Tokenizer;
use edgellm_kernels::Kernels;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else { return };
    let kernels = Kernels::detect();
    if let Ok(m) = Model::from_gguf(&g, &kernels) {
        for path in [NumericPath::Exact, NumericPath::Fast] {
            let options = SessionOptions { context: 4, path };
            if let Ok(mut s) = Session::new(&m, kernels, options) {
                if let Ok(logits) = s.forward(0, &Serial) {
                    assert_eq!(logits.len(), m.config.vocab_size);
                }
            }
        }
    }
    if let Ok(t) = Tokenizer::from_gguf(&g) {
        let mut ids = Vec::new();
        t.encode(
            "Hello, world! <|im_start|>user 123 \u{e9}\u{4e2d}",
            true,
            &mut ids,
        );
        for &id in &ids {
            assert!((id as usize) < t.vocab_size());
            let _ = t.token_bytes(id);
        }
    }
});
