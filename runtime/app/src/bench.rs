//! `edgellm bench`: prefill and decode speed and the per-token latency distribution, measured on the
//! real forward pass with synthetic prompt tokens, like llama-bench.

use crate::load::{self, Loaded, ModelFile};
use crate::run::{context_len, make_pool};
use crate::ModelArgs;
use anyhow::Result;
use clap::Args;
use edgellm_core::session::{NumericPath, Session, SessionOptions};
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens per repetition (pp).
    #[arg(short = 'p', long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Generated tokens per repetition (tg).
    #[arg(short = 'g', long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Repetitions.
    #[arg(short, long, default_value_t = 5)]
    pub reps: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Mean and sample standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

pub fn bench(args: BenchArgs) -> Result<()> {
    anyhow::ensure!(args.prompt_tokens > 0 && args.gen_tokens > 0 && args.reps > 0, "-p, -g and -r must be at least 1");
    let file = ModelFile::open(&args.model.model)?;
    let kernels = load::kernels(args.model.kernels.as_deref())?;
    let loaded = Loaded::new(file.gguf()?, &kernels)?;
    let cfg = &loaded.model.config;
    let need = args.prompt_tokens + args.gen_tokens;
    let ctx = context_len(&args.model, cfg.train_context).max(need);
    let path = if args.model.exact { NumericPath::Exact } else { NumericPath::Fast };
    let mut session = Session::new(&loaded.model, kernels, SessionOptions { context: ctx, path })?;
    let pool = make_pool(args.model.threads)?;
    let threads = pool.threads();

    // Synthetic prompt: deterministic ordinary tokens (no control tokens), like llama-bench.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut prompt = Vec::with_capacity(args.prompt_tokens);
    while prompt.len() < args.prompt_tokens {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let id = (state % cfg.vocab_size as u64) as u32;
        if !loaded.tokenizer.is_control(id) {
            prompt.push(id);
        }
    }

    let mut pp = Vec::with_capacity(args.reps);
    let mut tg = Vec::with_capacity(args.reps);
    let mut ttft = Vec::with_capacity(args.reps);
    let mut lat = Vec::with_capacity(args.reps * args.gen_tokens);
    // One warm-up repetition (page in the weights), not counted.
    for rep in 0..=args.reps {
        session.reset();
        let t0 = Instant::now();
        session.prefill(&prompt, pool.as_ref())?;
        let t_prefill = t0.elapsed().as_secs_f64();
        let mut tok = argmax(session.logits());
        let first = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut last = t1;
        let mut steps = Vec::with_capacity(args.gen_tokens);
        for _ in 0..args.gen_tokens {
            session.forward(tok, pool.as_ref())?;
            tok = argmax(session.logits());
            let now = Instant::now();
            steps.push((now - last).as_secs_f64());
            last = now;
        }
        let t_gen = t1.elapsed().as_secs_f64();
        if rep == 0 {
            continue;
        }
        pp.push(args.prompt_tokens as f64 / t_prefill);
        tg.push(args.gen_tokens as f64 / t_gen);
        ttft.push(first * 1e3);
        lat.extend(steps.iter().map(|s| s * 1e3));
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let (pp_m, pp_s) = mean_std(&pp);
    let (tg_m, tg_s) = mean_std(&tg);
    let (ttft_m, _) = mean_std(&ttft);
    let kernels = session.kernels().describe().to_string();
    if args.json {
        let out = serde_json::json!({
            "model": args.model.model.display().to_string(),
            "board": crate::BOARD.name,
            "device": "cpu",
            "threads": threads,
            "realtime": false,
            "kernels": kernels,
            "n_prompt": args.prompt_tokens,
            "n_gen": args.gen_tokens,
            "reps": args.reps,
            "prefill_tps": pp_m,
            "prefill_tps_stddev": pp_s,
            "decode_tps": tg_m,
            "decode_tps_stddev": tg_s,
            "ttft_ms": ttft_m,
            "token_latency_ms": {
                "p50": quantile(&lat, 0.50),
                "p90": quantile(&lat, 0.90),
                "p99": quantile(&lat, 0.99),
                "p999": quantile(&lat, 0.999),
                "max": lat.last().copied().unwrap_or(0.0),
            },
        });
        println!("{out}");
    } else {
        println!("model    {}", args.model.model.display());
        println!("board    {}   threads {threads}   kernels {kernels}", crate::BOARD.name);
        println!("{:<10} {:>14} {:>10}", "test", "tokens/s", "± stddev");
        println!("{:<10} {:>14.1} {:>10.1}", format!("pp{}", args.prompt_tokens), pp_m, pp_s);
        println!("{:<10} {:>14.1} {:>10.1}", format!("tg{}", args.gen_tokens), tg_m, tg_s);
        println!("time to first token {ttft_m:.2} ms");
        println!(
            "token latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            quantile(&lat, 0.5),
            quantile(&lat, 0.9),
            quantile(&lat, 0.99),
            quantile(&lat, 0.999),
            lat.last().copied().unwrap_or(0.0)
        );
    }
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
