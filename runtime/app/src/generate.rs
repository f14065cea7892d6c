//! The generation loop shared by `run`, `bench` and the service: prefill the prompt, then sample,
//! stream and feed back one token at a time, timing every step.
//!
//! Invariant: the loop between the first and the last token allocates nothing: ids and per-token
//! latencies go into vectors reserved before the first token, text is streamed through a fixed
//! buffer.

use anyhow::{bail, Result};
use edgellm_core::parallel::Parallel;
use edgellm_core::sampler::Sampler;
use edgellm_core::session::Session;
use edgellm_core::tokenizer::{Tokenizer, Utf8Stream};
use std::time::Instant;

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// The requested number of tokens was generated.
    Length,
    /// The context is full.
    Context,
    /// The caller asked to stop (e.g. a stop sequence or a disconnected client).
    Cancelled,
}

impl StopReason {
    /// The name OpenAI and Ollama use (`stop` / `length`).
    pub fn name(self) -> &'static str {
        match self {
            StopReason::EndOfGeneration | StopReason::Cancelled => "stop",
            StopReason::Length | StopReason::Context => "length",
        }
    }
}

/// What a generation produced, with its timings.
#[derive(Debug)]
pub struct Generation {
    /// Generated ids, including a final end-of-generation token if one was produced.
    pub ids: Vec<u32>,
    pub stop: StopReason,
    /// Seconds spent in prefill (the whole prompt, up to its logits).
    pub prefill_s: f64,
    /// Seconds for each generated token after the first: forward pass plus sampling.
    pub token_s: Vec<f64>,
    /// Seconds from the start until the first token was sampled.
    pub ttft_s: f64,
}

/// Runs `prompt` through `session` and generates up to `max_new` tokens. `on_text` receives the text
/// of each token as soon as it forms valid UTF-8 and returns `false` to stop.
pub fn generate(
    session: &mut Session<'_, '_>,
    tokenizer: &Tokenizer,
    sampler: &mut Sampler,
    par: &dyn Parallel,
    prompt: &[u32],
    max_new: usize,
    on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    generate_with_step(
        session,
        tokenizer,
        sampler,
        par,
        prompt,
        max_new,
        |_| true,
        on_text,
    )
}

/// [`generate`] with a hook called before each token is sampled (`on_step(i)` for the `i`-th
/// token, right after the prompt's or the previous token's forward pass): returning `false` stops
/// with [`StopReason::Cancelled`] before that token. The service uses it to cancel a generation
/// whose client went away within one token, and to time each step.
#[allow(clippy::too_many_arguments)]
pub fn generate_with_step(
    session: &mut Session<'_, '_>,
    tokenizer: &Tokenizer,
    sampler: &mut Sampler,
    par: &dyn Parallel,
    prompt: &[u32],
    max_new: usize,
    mut on_step: impl FnMut(usize) -> bool,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        bail!("the prompt is empty: give at least one token");
    }
    let room = session.context() - session.pos();
    if prompt.len() > room {
        bail!(
            "the prompt has {} tokens but only {room} fit in the context ({} positions): \
             shorten it by {} tokens or raise --context",
            prompt.len(),
            session.context(),
            prompt.len() - room
        );
    }
    let mut out = Generation {
        ids: Vec::with_capacity(max_new),
        stop: StopReason::Length,
        prefill_s: 0.0,
        token_s: Vec::with_capacity(max_new),
        ttft_s: 0.0,
    };
    for &t in prompt {
        sampler.accept(t);
    }
    let start = Instant::now();
    session.prefill(prompt, par)?;
    out.prefill_s = start.elapsed().as_secs_f64();
    let mut stream = Utf8Stream::new();
    let mut step_start = Instant::now();
    for i in 0..max_new {
        if !on_step(i) {
            out.stop = StopReason::Cancelled;
            break;
        }
        let id = sampler.sample(session.logits());
        sampler.accept(id);
        out.ids.push(id);
        if i == 0 {
            out.ttft_s = start.elapsed().as_secs_f64();
        }
        if tokenizer.is_end_of_generation(id) {
            out.stop = StopReason::EndOfGeneration;
            break;
        }
        if !tokenizer.is_control(id) {
            let mut go_on = true;
            stream.push_with(tokenizer.token_bytes(id), |piece| {
                if go_on && !piece.is_empty() {
                    go_on = on_text(piece);
                }
            });
            if !go_on {
                out.stop = StopReason::Cancelled;
                break;
            }
        }
        if i + 1 == max_new {
            break;
        }
        if session.pos() >= session.context() {
            out.stop = StopReason::Context;
            break;
        }
        session.forward(id, par)?;
        let now = Instant::now();
        out.token_s.push((now - step_start).as_secs_f64());
        step_start = now;
    }
    Ok(out)
}
