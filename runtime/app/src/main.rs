//! The `edgellm` command line: run a prompt, print logits or tokens, inspect a model file, benchmark.

mod bench;
mod budget;
mod chat;
mod device;
mod generate;
mod load;
mod perplexity;
mod rt;
mod run;
mod serve;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use edgellm::convert;
use std::path::PathBuf;

/// Every heap operation is counted, so `bench` can show that decoding makes none.
#[global_allocator]
static ALLOC: edgellm_hal::counters::CountingAlloc = edgellm_hal::counters::CountingAlloc::new();

mod boards;
pub use boards::BOARD;

#[derive(Parser)]
#[command(
    name = "edgellm",
    version,
    about = "Run small language models on single-board computers with deterministic latency",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt and stream it to stdout.
    Run(run::RunArgs),
    /// Write the logits of the last prompt position as little-endian f32 (raw prompt, no template).
    Logits(run::LogitsArgs),
    /// Print the token ids of a text as a JSON array (no BOS).
    Tokenize(run::TokenizeArgs),
    /// Print a model file's metadata and tensor table.
    Inspect {
        /// Model file (GGUF).
        path: PathBuf,
        /// Print every element of metadata arrays instead of the first few.
        #[arg(long)]
        full: bool,
    },
    /// Measure prefill and decode speed and per-token latency.
    Bench(bench::BenchArgs),
    /// How well the model predicts a text: the quality price of a weight format.
    Perplexity(perplexity::PerplexityArgs),
    /// Convert a GGUF file or Hugging Face directory into a model image (ternary, q4 or q8).
    Convert(convert::ConvertArgs),
    /// Serve Ollama- and OpenAI-compatible HTTP APIs (binds 127.0.0.1:11434 by default).
    Serve(serve::ServeArgs),
}

/// Options shared by every command that loads a model.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model file (GGUF).
    #[arg(short, long)]
    pub model: PathBuf,
    /// Worker threads for the forward pass (default: the board's).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Kernel tier to force: scalar, avx2, avx-vnni, avx512, neon, neon-dotprod (default: the best
    /// the CPU has; also settable with EDGELLM_KERNELS).
    #[arg(long)]
    pub kernels: Option<String>,
    /// Context length in tokens (default: the board's, at most the model's).
    #[arg(short, long)]
    pub context: Option<usize>,
    /// Reference numeric path: dequantized weights and f32 activations (slow, for checking).
    #[arg(long)]
    pub exact: bool,
    /// Read the model into memory backed by transparent huge pages instead of mapping the file
    /// (the default): fewer TLB misses, so a faster decode, for reading the whole file at start.
    #[arg(long, overrides_with = "mmap")]
    pub no_mmap: bool,
    /// Map the model file instead of reading it into memory: starts at once and shares the page
    /// cache with other processes, but decodes slower (4 KiB pages).
    #[arg(long, overrides_with = "no_mmap")]
    pub mmap: bool,
    /// Apply another board's defaults and memory budget (default: the board this binary was
    /// built for).
    #[arg(long)]
    pub board: Option<String>,
    /// Real-time execution: cores, scheduling, memory locking.
    #[command(flatten)]
    pub realtime: RtArgs,
    /// Where the forward pass runs: cpu, cuda, or auto (CUDA when the board has a GPU, the
    /// binary was built with the `cuda` feature and a usable device is present; else the CPU).
    /// `run`, `bench` and `serve` use it; the other commands run on the CPU.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    pub device: String,
    /// KV cache type: f16 or int8 (one scale per position and head: half the bytes attention
    /// reads per token; on the GPU the int8 scores use __dp4a). The exact path (`--exact`)
    /// keeps an f32 cache.
    #[arg(long, default_value = "f16", value_parser = ["f16", "int8"])]
    pub kv_cache: String,
}

/// How the inference threads run: the cores they are pinned to, their scheduling and whether
/// memory is locked (every command that loads a model, and `serve`).
#[derive(Args, Clone, Debug, Default)]
pub struct RtArgs {
    /// Cores for the inference threads, in order, the first for the calling thread (e.g. `2,3`;
    /// default: the board's inference cores; no pinning on the host board).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub cores: Option<Vec<usize>>,
    /// Run the inference threads under SCHED_FIFO (default: on for the real boards, off on host).
    #[arg(long, overrides_with = "no_rt")]
    pub rt: bool,
    /// Keep the inference threads under the normal scheduler.
    #[arg(long, overrides_with = "rt")]
    pub no_rt: bool,
    /// SCHED_FIFO priority, 1 to 99 (default: the board's).
    #[arg(long, value_name = "N")]
    pub rt_priority: Option<u8>,
    /// Lock all memory in RAM (mlockall) and fault it in before the first token (default: on with
    /// --rt).
    #[arg(long, overrides_with = "no_lock_memory")]
    pub lock_memory: bool,
    /// Do not lock memory, even with --rt.
    #[arg(long, overrides_with = "lock_memory")]
    pub no_lock_memory: bool,
    /// Make a refused SCHED_FIFO or memory lock fatal (default: one warning line, then go on).
    #[arg(long)]
    pub strict_rt: bool,
}

impl ModelArgs {
    /// The board whose defaults and budget apply.
    pub fn board(&self) -> Result<edgellm_board::Board> {
        match &self.board {
            Some(name) => boards::by_name(name),
            None => Ok(BOARD),
        }
    }
}

fn main() {
    let cli = Cli::parse();
    // Every command but the service writes to stdout for a reader that may stop early (`| head`):
    // end quietly then. The service keeps the runtime's "ignore", so that a client that goes away
    // is an error of its request, not the end of the process.
    if !matches!(cli.cmd, Command::Serve(_)) {
        edgellm_hal::process::end_on_broken_pipe();
    }
    let result: Result<()> = match cli.cmd {
        Command::Run(a) => run::run(a),
        Command::Logits(a) => run::logits(a),
        Command::Tokenize(a) => run::tokenize(a),
        Command::Inspect { path, full } => load::inspect(&path, full),
        Command::Bench(a) => bench::bench(a),
        Command::Perplexity(a) => perplexity::perplexity(a),
        Command::Convert(a) => convert::run(a),
        Command::Serve(a) => serve::serve(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
