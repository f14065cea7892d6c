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

impl Generation {
    /// An empty generation of up to `max_new` tokens (every buffer reserved) for `prompt`, which
    /// must be non-empty and fit in the context (`context` positions, `pos` used).
    pub(crate) fn start(
        prompt: &[u32],
        pos: usize,
        context: usize,
        max_new: usize,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            bail!("the prompt is empty: give at least one token");
        }
        let room = context - pos;
        if prompt.len() > room {
            bail!(
                "the prompt has {} tokens but only {room} fit in the context ({context} positions): \
                 shorten it by {} tokens or raise --context",
                prompt.len(),
                prompt.len() - room
            );
        }
        Ok(Generation {
            ids: Vec::with_capacity(max_new),
            stop: StopReason::Length,
            prefill_s: 0.0,
            token_s: Vec::with_capacity(max_new),
            ttft_s: 0.0,
        })
    }
}

/// What the CPU and GPU loops do with each sampled token: record it, stream its text.
pub(crate) struct Emitter<'t, F> {
    tokenizer: &'t Tokenizer,
    stream: Utf8Stream,
    max_new: usize,
    start: Instant,
    on_text: F,
}

impl<'t, F: FnMut(&str) -> bool> Emitter<'t, F> {
    pub(crate) fn new(
        tokenizer: &'t Tokenizer,
        max_new: usize,
        start: Instant,
        on_text: F,
    ) -> Self {
        Emitter {
            tokenizer,
            stream: Utf8Stream::new(),
            max_new,
            start,
            on_text,
        }
    }

    /// Takes `id`, the `i`-th generated token: the sampler sees it, `out` records it (and the
    /// time to the first), its text goes to `on_text`. Returns why generation stops after it, if
    /// it does: an end-of-generation token, `on_text` refusing, or the last token allowed.
    pub(crate) fn take(
        &mut self,
        out: &mut Generation,
        sampler: &mut Sampler,
        id: u32,
        i: usize,
    ) -> Option<StopReason> {
        sampler.accept(id);
        out.ids.push(id);
        if i == 0 {
            out.ttft_s = self.start.elapsed().as_secs_f64();
        }
        if self.tokenizer.is_end_of_generation(id) {
            return Some(StopReason::EndOfGeneration);
        }
        if !self.tokenizer.is_control(id) {
            let mut go_on = true;
            let on_text = &mut self.on_text;
            self.stream
                .push_with(self.tokenizer.token_bytes(id), |piece| {
                    if go_on && !piece.is_empty() {
                        go_on = on_text(piece);
                    }
                });
            if !go_on {
                return Some(StopReason::Cancelled);
            }
        }
        (i + 1 == self.max_new).then_some(StopReason::Length)
    }
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
    on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    let mut out = Generation::start(prompt, session.pos(), session.context(), max_new)?;
    for &t in prompt {
        sampler.accept(t);
    }
    let start = Instant::now();
    session.prefill(prompt, par)?;
    out.prefill_s = start.elapsed().as_secs_f64();
    let mut emit = Emitter::new(tokenizer, max_new, start, on_text);
    let mut step_start = Instant::now();
    for i in 0..max_new {
        if !on_step(i) {
            out.stop = StopReason::Cancelled;
            break;
        }
        let id = sampler.sample(session.logits());
        if let Some(stop) = emit.take(&mut out, sampler, id, i) {
            out.stop = stop;
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
