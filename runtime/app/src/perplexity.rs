//! `edgellm perplexity`: how well a model (in a given format) predicts a text, the single number
//! that shows the quality price of a weight format.
//!
//! The text is tokenized as is (no template), split into windows of `--ctx` tokens, and every token
//! after the first of each window is scored: perplexity = exp(mean negative log-likelihood).

use crate::load::{self, Loaded};
use crate::run::{make_pool, new_session};
use crate::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score.
    #[arg(short, long)]
    pub file: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Negative log-likelihood of `target` under `logits` (log-softmax in f64).
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    -(logits[target as usize] as f64 - max - sum.ln())
}

pub fn perplexity(args: PerplexityArgs) -> Result<()> {
    if args.ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let file = load::open_model(&args.model)?;
    let kernels = load::kernels(args.model.kernels.as_deref())?;
    let loaded = Loaded::new(file.gguf()?, &kernels)?;
    let tok = &loaded.tokenizer;
    let mut ids = Vec::new();
    tok.encode(&text, false, &mut ids);
    if ids.len() < 2 {
        bail!("{} has fewer than 2 tokens", args.file.display());
    }
    let bos = tok.add_bos().then(|| tok.bos_id()).flatten();
    // A text shorter than a window needs no more context than its own tokens.
    let context = args.ctx.min(ids.len() + usize::from(bos.is_some()));
    let mut session = new_session(&args.model, &loaded, file.len(), context, kernels)?;
    let pool = make_pool(&args.model)?;
    let (mut total, mut count) = (0f64, 0usize);
    let start = std::time::Instant::now();
    let window = args.ctx - usize::from(bos.is_some());
    for chunk in ids.chunks(window) {
        session.reset();
        let mut prev = match bos {
            Some(b) => b,
            None => chunk[0],
        };
        let rest = if bos.is_some() { chunk } else { &chunk[1..] };
        for &t in rest {
            let logits = session.forward(prev, pool.par())?;
            total += nll(logits, t);
            count += 1;
            prev = t;
        }
    }
    let ppl = (total / count as f64).exp();
    let secs = start.elapsed().as_secs_f64();
    if args.json {
        let out = serde_json::json!({
            "model": args.model.model.display().to_string(),
            "file": args.file.display().to_string(),
            "tokens": count,
            "ctx": args.ctx,
            "perplexity": ppl,
            "path": if args.model.exact { "exact" } else { "fast" },
        });
        println!("{out}");
    } else {
        println!(
            "perplexity {ppl:.4} over {count} tokens of {} (windows of {} tokens, {:.1} s)",
            args.file.display(),
            args.ctx,
            secs
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn nll_of_uniform_logits_is_log_vocab() {
        let l = [0.5f32; 8];
        assert!((super::nll(&l, 3) - 8f64.ln()).abs() < 1e-12);
        let l = [0.0, 100.0, 0.0];
        assert!(super::nll(&l, 1) < 1e-30 + 1e-12);
    }
}
