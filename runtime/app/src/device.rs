//! Choosing where the forward pass runs (`--device`), and the generation loop on the GPU.

use crate::generate::{Emitter, Generation, StopReason};
use crate::load::Loaded;
use crate::ModelArgs;
use anyhow::{bail, Result};
use edgellm_core::sampler::Sampler;
use edgellm_core::tokenizer::Tokenizer;
use edgellm_cuda::{CudaError, Gpu, GpuEngine, KvCache};
use std::time::Instant;

/// The model on the GPU when `--device` (and the board) say so and a device is usable; `None`
/// for the CPU. `--device cuda` without a usable device is an error that says why; `auto` logs
/// one line and falls back to the CPU.
pub fn select(args: &ModelArgs, loaded: &Loaded<'_>, context: usize) -> Result<Option<GpuEngine>> {
    let board = args.board()?;
    let wanted = match args.device.as_str() {
        "cpu" => return Ok(None),
        "cuda" => true,
        // Boards with a CUDA GPU, and the host (a workstation may have one).
        _ => board.cuda_arch.is_some() || board.name == "host",
    };
    if !wanted {
        return Ok(None);
    }
    let kv = if args.kv_cache == "int8" {
        KvCache::Int8
    } else {
        KvCache::F16
    };
    let engine = Gpu::open().and_then(|gpu| {
        let mut e = GpuEngine::new(gpu, &loaded.model, context, kv)?;
        // EDGELLM_CUDA_PERSIST=N: decode steps in the persistent kernel with at most N blocks
        // per SM instead of the graph of kernels (the same results; for measuring it).
        if let Some(n) = std::env::var("EDGELLM_CUDA_PERSIST")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            e.set_persistent(n)?;
        }
        // EDGELLM_CUDA_OVERLAP=0: every decode kernel waits for the one before it to finish
        // (the same results; for measuring what overlapping them gains).
        if std::env::var("EDGELLM_CUDA_OVERLAP").is_ok_and(|v| v == "0") {
            e.set_overlap(false)?;
        }
        Ok(e)
    });
    match engine {
        Ok(e) => {
            eprintln!("device: {}", e.describe());
            Ok(Some(e))
        }
        Err(e) if args.device == "cuda" => bail!("--device cuda: {e}"),
        Err(CudaError::NotBuilt) => Ok(None),
        Err(e) => {
            eprintln!("device: cpu ({e})");
            Ok(None)
        }
    }
}

/// [`crate::generate::generate_with_step`] on the GPU: the prompt is prefilled in batches, each
/// next token is sampled on the device (or on the host when the sampler options need it: a
/// repetition penalty, or top-k above what the device sampler keeps). `on_step(i)` runs when
/// token `i` is known; returning `false` cancels.
pub fn generate_gpu(
    engine: &mut GpuEngine,
    tokenizer: &Tokenizer,
    sampler: &mut Sampler,
    prompt: &[u32],
    max_new: usize,
    mut on_step: impl FnMut(usize) -> bool,
    on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    let mut out = Generation::start(prompt, engine.pos(), engine.context(), max_new)?;
    let params = *sampler.params();
    let on_device = engine.set_sampling(&params, params.seed)?;
    let mut logits = if on_device {
        Vec::new()
    } else {
        vec![0f32; sampler.vocab_size()]
    };
    for &t in prompt {
        sampler.accept(t);
    }
    let start = Instant::now();
    engine.prefill(prompt)?;
    let mut id = next(engine, sampler, &mut logits, on_device)?;
    out.prefill_s = start.elapsed().as_secs_f64();
    let mut emit = Emitter::new(tokenizer, max_new, start, on_text);
    let mut step_start = Instant::now();
    for i in 0..max_new {
        if i > 0 {
            id = next(engine, sampler, &mut logits, on_device)?;
            let now = Instant::now();
            out.token_s.push((now - step_start).as_secs_f64());
            step_start = now;
        }
        if !on_step(i) {
            out.stop = StopReason::Cancelled;
            break;
        }
        if let Some(stop) = emit.take(&mut out, sampler, id, i) {
            out.stop = stop;
            break;
        }
        if engine.pos() >= engine.context() {
            out.stop = StopReason::Context;
            break;
        }
        if on_device {
            engine.step()?;
        } else {
            engine.feed(id)?;
        }
    }
    Ok(out)
}

/// The token after the last step: the device's sample, or the host sampler on copied logits.
fn next(
    engine: &mut GpuEngine,
    sampler: &mut Sampler,
    logits: &mut [f32],
    on_device: bool,
) -> Result<u32> {
    if on_device {
        Ok(engine.sampled()?)
    } else {
        engine.logits(logits)?;
        Ok(sampler.sample(logits))
    }
}
