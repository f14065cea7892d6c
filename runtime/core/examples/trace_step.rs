//! One decode step of a model, between two marker calls, for `cargo xtask cycles --model`: run
//! under `qemu-aarch64 -d in_asm,exec,nochain`, the blocks executed between the markers are those
//! of one token's forward pass on one thread (every gemv, the attention over the cache, the norms
//! and the activation quantization), each with the number of times it ran.
//!
//! `trace_step MODEL.gguf TIER POSITION`: fills the cache with POSITION tokens (a prefill), then
//! runs the step of the next one. It prints the markers' addresses (`begin 0x...`, `end 0x...`)
//! and the bytes of the model's matrices (`bytes N`, what a decode step reads of the file) and
//! multiply-accumulates per token (`macs N`).

use std::hint::black_box;

use edgellm_core::gguf::Gguf;
use edgellm_core::model::Model;
use edgellm_core::parallel::Serial;
use edgellm_core::session::{NumericPath, Session, SessionOptions};
use edgellm_kernels::{CpuFeatures, Kernels, Tier};

/// Marks the start of the traced step.
#[inline(never)]
#[no_mangle]
pub extern "C" fn edgellm_trace_begin() {
    black_box(1u32);
}

/// Marks its end.
#[inline(never)]
#[no_mangle]
pub extern "C" fn edgellm_trace_end() {
    black_box(2u64);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 3 {
        eprintln!("usage: trace_step MODEL.gguf TIER POSITION");
        std::process::exit(2);
    }
    let bytes = std::fs::read(&args[0]).unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    let tier: Tier = args[1].parse().unwrap_or_else(|e| panic!("{e}"));
    let pos: usize = args[2].parse().expect("POSITION must be a number");
    let kernels =
        Kernels::with_tier(tier, &CpuFeatures::detect()).unwrap_or_else(|e| panic!("{e}"));
    let g = Gguf::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    let model = Model::from_gguf(&g, &kernels).unwrap_or_else(|e| panic!("{e}"));
    let options = SessionOptions {
        context: pos + 1,
        path: NumericPath::Fast,
    };
    let mut s = Session::new(&model, kernels, options).unwrap_or_else(|e| panic!("{e:?}"));
    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..pos as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    if !prompt.is_empty() {
        s.prefill(&prompt, &Serial)
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
    let mut matrices = vec![model.output];
    for l in &model.layers {
        matrices.extend([l.wq, l.wk, l.wv, l.wo, l.w_gate, l.w_up, l.w_down]);
    }
    let weight_bytes: usize = matrices.iter().map(|m| m.data.len()).sum();
    let macs: usize = matrices.iter().map(|m| m.rows * m.cols).sum();
    println!(
        "begin {:#x} end {:#x} bytes {weight_bytes} macs {macs} kernels {}",
        edgellm_trace_begin as extern "C" fn() as usize,
        edgellm_trace_end as extern "C" fn() as usize,
        s.kernels().describe()
    );
    let token = black_box(42 % vocab);
    edgellm_trace_begin();
    let logits = s
        .forward(token, &Serial)
        .unwrap_or_else(|e| panic!("{e:?}"));
    edgellm_trace_end();
    black_box(logits[0]);
}
