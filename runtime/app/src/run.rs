//! `edgellm run`, `edgellm logits` and `edgellm tokenize`.

use crate::chat::{self, Message};
use crate::generate::generate;
use crate::load::{self, Loaded, ModelFile};
use crate::rt::{self, Exec};
use crate::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use edgellm_core::sampler::{Sampler, SamplerParams};
use edgellm_core::session::{KvType, NumericPath, Session, SessionOptions};
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text (read from stdin when absent).
    #[arg(short, long)]
    pub prompt: Option<String>,
    /// Maximum number of tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for repeating recent tokens (1.0: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed (default: from the clock; printed with --json).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Feed the prompt as is, without the model's chat template.
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object at the end (prompt_ids, ids, text, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text, fed as is (special-token text such as <|im_start|> is parsed).
    #[arg(short, long)]
    pub prompt: String,
    /// Output file: vocab-size little-endian f32 values.
    #[arg(short, long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// Model file (GGUF).
    #[arg(short, long)]
    pub model: PathBuf,
    /// Text to tokenize.
    #[arg(long)]
    pub text: String,
    /// Parse special-token text (e.g. <|im_start|>) as the special tokens.
    #[arg(long)]
    pub parse_special: bool,
}

/// The inference threads: count, cores, scheduling and memory locking from the flags and the
/// board's defaults, applied (call it once the session exists, so that locking covers the model
/// and the arena). Logs one line saying what is in effect.
pub fn make_pool(args: &ModelArgs) -> Result<Exec> {
    let allowed = edgellm_hal::cpu::allowed_cpus().map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = rt::plan(args, &args.board()?, &allowed)?;
    let exec = rt::apply(&plan)?;
    eprintln!("execution: {}", exec.describe());
    Ok(exec)
}

/// The context length (the flag, else the board's default, never above the model's, at least
/// `min`), checked against the board's memory budget and the memory available.
pub fn context_len(
    args: &ModelArgs,
    loaded: &Loaded<'_>,
    file_bytes: u64,
    min: usize,
) -> Result<usize> {
    if args.context == Some(0) {
        bail!("--context 0: the context must hold at least the prompt");
    }
    let board = args.board()?;
    let cfg = &loaded.model.config;
    let ctx = args
        .context
        .unwrap_or(board.default_context.min(cfg.train_context))
        .max(min);
    let available = edgellm_hal::memory::available_memory_bytes().ok();
    crate::budget::check(&board, available, file_bytes, cfg, ctx, kv_type(args))?;
    if let Some(n) = beyond_training(ctx, cfg.train_context) {
        eprintln!("note: {n}");
    }
    Ok(ctx)
}

/// A note when a context of `ctx` tokens is longer than the `train` tokens the model was
/// trained on (its GGUF `context_length`): it runs, but positions past that may give poor text.
pub fn beyond_training(ctx: usize, train: usize) -> Option<String> {
    (ctx > train).then(|| {
        format!(
            "a context of {ctx} tokens is longer than the {train} the model was trained on \
             (its context_length): text at positions past {train} may be poor"
        )
    })
}

/// The numeric path the options ask for.
pub fn numeric_path(args: &ModelArgs) -> NumericPath {
    if args.exact {
        NumericPath::Exact
    } else {
        NumericPath::Fast
    }
}

/// The CPU's KV cache type: f32 on the exact path, else `--kv-cache` (f16 or int8).
pub fn kv_type(args: &ModelArgs) -> KvType {
    match (args.exact, args.kv_cache.as_str()) {
        (true, _) => KvType::F32,
        (false, "int8") => KvType::Int8,
        _ => KvType::F16,
    }
}

/// A session for `loaded` with the context `context_len` settles on and the numeric path the
/// options ask for.
pub fn new_session<'m, 'a>(
    args: &ModelArgs,
    loaded: &'m Loaded<'a>,
    file_bytes: u64,
    min: usize,
    kernels: edgellm_kernels::Kernels,
) -> Result<Session<'m, 'a>> {
    let context = context_len(args, loaded, file_bytes, min)?;
    session_for(args, loaded, context, kernels)
}

/// A session for `loaded` with `context` tokens (as [`context_len`] gave it) and the numeric
/// path the options ask for.
pub fn session_for<'m, 'a>(
    args: &ModelArgs,
    loaded: &'m Loaded<'a>,
    context: usize,
    kernels: edgellm_kernels::Kernels,
) -> Result<Session<'m, 'a>> {
    let path = numeric_path(args);
    Ok(Session::with_kv_advised(
        &loaded.model,
        kernels,
        SessionOptions { context, path },
        kv_type(args),
        advise_arena,
    )?)
}

/// Asks for transparent huge pages for a session's arena (the KV cache is walked every token:
/// one TLB entry per 2 MiB instead of per 4 KiB). Best effort: where the system does not allow
/// them, the arena keeps normal pages; `bench` reports the huge pages the process holds.
pub fn advise_arena(arena: &mut [u8]) {
    #[cfg(target_os = "linux")]
    let _ = edgellm_hal::memory::advise_huge_pages(arena);
    #[cfg(not(target_os = "linux"))]
    let _ = arena;
}

/// Prompt ids for `text`: through the chat template unless `raw`, with BOS when the model wants it.
pub fn prompt_ids(loaded: &Loaded<'_>, text: &str, raw: bool) -> Result<Vec<u32>> {
    let tok = &loaded.tokenizer;
    let rendered;
    let text = match (raw, loaded.chat_template()) {
        (false, Some(template)) => {
            let name = |id: Option<u32>| {
                id.map(|i| tok.token_text(i).to_string())
                    .unwrap_or_default()
            };
            let msgs = [Message {
                role: "user".into(),
                content: text.into(),
            }];
            rendered = chat::render(
                template,
                &msgs,
                &name(tok.bos_id()),
                &name(tok.eos_id()),
                true,
            )?;
            rendered.as_str()
        }
        _ => text,
    };
    let mut ids = Vec::new();
    tok.encode(text, true, &mut ids);
    // Add BOS when the model wants one, unless the template already wrote it.
    if let (true, Some(bos)) = (tok.add_bos(), tok.bos_id()) {
        if ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    Ok(ids)
}

pub fn run(args: RunArgs) -> Result<()> {
    let prompt = match &args.prompt {
        Some(p) => p.clone(),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the prompt from stdin")?;
            s
        }
    };
    let file = load::open_model(&args.model)?;
    let kernels = load::kernels(args.model.kernels.as_deref())?;
    let loaded = Loaded::new(file.gguf()?, &kernels)?;
    // What a session over this model runs (its attention kernels follow its weight types).
    let kernels = kernels.for_weights(loaded.model.matmul_types());
    eprintln!("kernels: {}", kernels.describe());
    let ids = prompt_ids(&loaded, &prompt, args.raw)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let params = SamplerParams {
        temperature: args.temp,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        seed,
        ..SamplerParams::default()
    };
    let mut sampler =
        Sampler::new(params, loaded.model.config.vocab_size).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut text = String::new();
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let json = args.json;
    let on_text = |piece: &str| {
        if json {
            text.push_str(piece);
        } else {
            // A closed stdout (e.g. `| head`) ends generation quietly.
            if lock
                .write_all(piece.as_bytes())
                .and_then(|_| lock.flush())
                .is_err()
            {
                return false;
            }
        }
        true
    };
    let context = context_len(&args.model, &loaded, file.len(), 1)?;
    let (gen, backend, device) = match crate::device::select(&args.model, &loaded, context)? {
        Some(mut engine) => {
            let g = crate::device::generate_gpu(
                &mut engine,
                &loaded.tokenizer,
                &mut sampler,
                &ids,
                args.n,
                |_| true,
                on_text,
            )?;
            (g, engine.describe(), "cuda")
        }
        None => {
            let mut session = session_for(&args.model, &loaded, context, kernels)?;
            let pool = make_pool(&args.model)?;
            let g = generate(
                &mut session,
                &loaded.tokenizer,
                &mut sampler,
                pool.par(),
                &ids,
                args.n,
                on_text,
            )?;
            (g, session.kernels().describe().to_string(), "cpu")
        }
    };
    drop(lock);
    let n_tok = gen.token_s.len();
    let decode_s: f64 = gen.token_s.iter().sum();
    if json {
        let out = serde_json::json!({
            "prompt_ids": ids,
            "ids": gen.ids,
            "text": text,
            "stop": gen.stop.name(),
            "seed": seed,
            "prefill_tps": ids.len() as f64 / gen.prefill_s.max(1e-9),
            "decode_tps": if decode_s > 0.0 { n_tok as f64 / decode_s } else { 0.0 },
            "device": device,
            "kernels": backend,
        });
        println!("{out}");
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens at {:.1} tok/s, {} tokens generated at {:.1} tok/s, stop: {}]",
            ids.len(),
            ids.len() as f64 / gen.prefill_s.max(1e-9),
            gen.ids.len(),
            if decode_s > 0.0 {
                n_tok as f64 / decode_s
            } else {
                0.0
            },
            gen.stop.name()
        );
    }
    Ok(())
}

pub fn logits(args: LogitsArgs) -> Result<()> {
    let file = load::open_model(&args.model)?;
    let kernels = load::kernels(args.model.kernels.as_deref())?;
    let loaded = Loaded::new(file.gguf()?, &kernels)?;
    let ids = prompt_ids(&loaded, &args.prompt, true)?;
    let mut session = new_session(&args.model, &loaded, file.len(), ids.len(), kernels)?;
    let pool = make_pool(&args.model)?;
    if ids.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let logits = session.prefill(&ids, pool.par())?;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&args.out, bytes)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    Ok(())
}

pub fn tokenize(args: TokenizeArgs) -> Result<()> {
    let file = ModelFile::open(&args.model)?;
    let g = file.gguf()?;
    let tok =
        edgellm_core::tokenizer::Tokenizer::from_gguf(&g).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut ids = Vec::new();
    tok.encode(&args.text, args.parse_special, &mut ids);
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::beyond_training;

    #[test]
    fn a_context_beyond_the_trained_one_gets_a_note() {
        assert_eq!(beyond_training(8192, 8192), None);
        assert_eq!(beyond_training(512, 8192), None);
        let n = beyond_training(16384, 8192).unwrap();
        assert!(n.contains("16384") && n.contains("8192"), "{n}");
    }
}
