//! `edgellm bench`: prefill and decode speed and the per-token latency distribution, measured on the
//! real forward pass with synthetic prompt tokens, like llama-bench.

use crate::budget::OVERHEAD_BYTES;
use crate::load::{self, Loaded};
use crate::run::{make_pool, session_for};
use crate::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use edgellm_hal::counters::{page_faults, peak_rss_bytes, steal_time, CountingAlloc};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// Also run llama.cpp (the `xllamacpp` Python package) on the same file with the same threads,
    /// prompt and generation lengths, and report both side by side with their ratio.
    #[arg(long)]
    pub compare_llamacpp: bool,
    /// Run llama.cpp on this file instead of `--model` (e.g. the original GGUF a model image was
    /// converted from, or a file whose types llama.cpp reads).
    #[arg(long)]
    pub llamacpp_model: Option<PathBuf>,
    /// Python interpreter that has xllamacpp installed.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// With --compare-llamacpp: run this llama.cpp build's `llama-bench` binary instead of
    /// xllamacpp (e.g. a CUDA build).
    #[arg(long, value_name = "PATH")]
    pub llamacpp_bench: Option<PathBuf>,
    /// With --llamacpp-bench: layers llama.cpp offloads to the GPU (`-ngl`).
    #[arg(long, default_value_t = 0)]
    pub llamacpp_ngl: usize,
    /// With --compare-llamacpp: alternate the two engines this many times (each round: a warm-up
    /// and `--reps` repetitions of ours, then llama.cpp with `--reps`), so that on a machine whose
    /// speed drifts both sample the same stretches of time; the ratios are also given per round,
    /// with their median.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub rounds: usize,
    /// Also write every timed decode step's latency to this file, as CSV lines `rep,position,ms`
    /// (for plotting latency against the context position).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Set, not parsed: llama.cpp keeps its f16 KV cache where it has no GPU kernel for q8_0
    /// ([`llamacpp_kv_type`]).
    #[arg(skip)]
    pub peer_f16_kv: bool,
}

/// Writes `--trace`: `lat` holds the timed steps' latencies in ms, repetition after repetition,
/// `gen_tokens` per repetition; step `i` of a repetition decodes at position `prompt_tokens + i`.
fn write_trace(args: &BenchArgs, lat: &[f64]) -> Result<()> {
    let Some(path) = &args.trace else {
        return Ok(());
    };
    let mut csv = String::from("rep,position,ms\n");
    for (i, ms) in lat.iter().enumerate() {
        let (rep, step) = (i / args.gen_tokens, i % args.gen_tokens);
        csv.push_str(&format!(
            "{},{},{ms:.4}\n",
            rep + 1,
            args.prompt_tokens + step
        ));
    }
    std::fs::write(path, csv).with_context(|| format!("writing the trace {}", path.display()))
}

/// llama.cpp's figures from the same command.
#[derive(Clone, Copy)]
struct Peer {
    prefill: (f64, f64),
    decode: (f64, f64),
    /// Whether llama.cpp read the model into memory (`llama-bench -mmp 0`) rather than mapped it.
    in_memory: bool,
}

/// llama.cpp's name for the KV cache type `bench` runs it with: its `q8_0` (one scale per 32
/// values) for `--kv-cache int8`, so both engines read an 8-bit cache; else its default, f16.
/// On the GPU, a q8_0 cache needs llama.cpp's CUDA flash attention, which has q8_0 kernels for
/// heads of 128 values only and runs every other size on the CPU: there it keeps its f16 cache
/// (`peer_f16_kv`), its fastest, and the table says so.
fn llamacpp_kv_type(args: &BenchArgs) -> &'static str {
    match crate::run::kv_type(&args.model) {
        edgellm_core::session::KvType::Int8 if !args.peer_f16_kv => "q8_0",
        _ => "f16",
    }
}

/// Whether llama.cpp, on the GPU, keeps its f16 cache against our int8 one: its CUDA flash
/// attention has q8_0 kernels for heads of 128 values only ([`llamacpp_kv_type`]).
fn gpu_peer_keeps_f16(model: &crate::ModelArgs, head_dim: usize) -> bool {
    matches!(
        crate::run::kv_type(model),
        edgellm_core::session::KvType::Int8
    ) && head_dim != 128
}

/// `llama-bench`'s arguments for [`llamacpp_kv_type`] (a quantized V cache needs its flash
/// attention).
fn llama_bench_kv_args(args: &BenchArgs) -> Vec<&'static str> {
    match llamacpp_kv_type(args) {
        "f16" => Vec::new(),
        t => vec!["-ctk", t, "-ctv", t, "-fa", "1"],
    }
}

/// Runs a llama.cpp build's `llama-bench` with the same settings, the model read into memory
/// (`-mmp 0`) when ours is (its JSON output has one entry for the prompt test and one for the
/// generation test, with mean and stddev tokens/s).
fn run_llama_bench(
    args: &BenchArgs,
    bin: &std::path::Path,
    threads: usize,
    in_memory: bool,
    cores: &[usize],
) -> Result<Peer> {
    let model = args.llamacpp_model.as_ref().unwrap_or(&args.model.model);
    let mut cmd = std::process::Command::new(bin);
    edgellm_hal::realtime::spawn_on_cores(&mut cmd, cores);
    let out = cmd
        .arg("-m")
        .arg(model)
        .args(["-p", &args.prompt_tokens.to_string()])
        .args(["-n", &args.gen_tokens.to_string()])
        .args(["-r", &args.reps.to_string()])
        .args(["-t", &threads.to_string()])
        .args(["-ngl", &args.llamacpp_ngl.to_string()])
        .args(llama_bench_kv_args(args))
        .args(["-mmp", if in_memory { "0" } else { "1" }])
        .args(["-o", "json"])
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", bin.display()))?;
    anyhow::ensure!(out.status.success(), "llama-bench failed ({})", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut peer = Peer {
        prefill: (0.0, 0.0),
        decode: (0.0, 0.0),
        in_memory,
    };
    for t in v.as_array().into_iter().flatten() {
        let fig = (
            t["avg_ts"].as_f64().unwrap_or(0.0),
            t["stddev_ts"].as_f64().unwrap_or(0.0),
        );
        if t["n_gen"].as_u64() == Some(0) {
            peer.prefill = fig;
        } else {
            peer.decode = fig;
        }
    }
    anyhow::ensure!(
        peer.decode.0 > 0.0,
        "llama-bench printed no generation timing"
    );
    Ok(peer)
}

/// Runs llama.cpp through xllamacpp (or `--llamacpp-bench`) with the same settings and returns
/// its mean/stddev figures. `in_memory`: whether our model was read into memory; `llama-bench`
/// then reads it too, while xllamacpp always maps it (it has no setting for that). `cores`: the
/// cores our threads were pinned to (empty: none); llama.cpp runs on the same set under the
/// normal scheduler, not confined to the core of the (pinned, perhaps real-time) calling thread.
fn run_llamacpp(
    args: &BenchArgs,
    threads: usize,
    ctx: usize,
    in_memory: bool,
    cores: &[usize],
) -> Result<Peer> {
    if let Some(bin) = &args.llamacpp_bench {
        return run_llama_bench(args, bin, threads, in_memory, cores);
    }
    let mut cmd = std::process::Command::new(&args.python);
    edgellm_hal::realtime::spawn_on_cores(&mut cmd, cores);
    let out = cmd
        .arg("-c")
        .arg(include_str!("llamacpp_bench.py"))
        .arg(args.llamacpp_model.as_ref().unwrap_or(&args.model.model))
        .args([threads, args.prompt_tokens, args.gen_tokens, args.reps, ctx].map(|v| v.to_string()))
        .arg(llamacpp_kv_type(args))
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", args.python))?;
    anyhow::ensure!(
        out.status.success(),
        "llama.cpp comparison failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        pp.push(v["prefill_tps"].as_f64().unwrap_or(0.0));
        tg.push(v["decode_tps"].as_f64().unwrap_or(0.0));
    }
    anyhow::ensure!(!tg.is_empty(), "llama.cpp printed no timings");
    Ok(Peer {
        prefill: mean_std(&pp),
        decode: mean_std(&tg),
        in_memory: false,
    })
}

/// Mean and sample standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// The CPU time a hypervisor took from an engine's threads over a span (`steal` in `/proc/stat`,
/// summed over the CPUs they run on), as a share of the threads' time: how much of a measurement
/// on a shared virtual machine was the host's doing. A virtual CPU accrues steal only while it
/// has work, so with the engine the only busy program the sum is the engine's. Unknown (`None`)
/// where the kernel does not report it.
struct Steal {
    cpus: Vec<usize>,
    threads: usize,
    at: Option<Duration>,
    t0: Instant,
}

impl Steal {
    /// Starts a span of `threads` threads on `cpus` (see [`steal_cpus`]).
    fn start(cpus: &[usize], threads: usize) -> Steal {
        Steal {
            cpus: cpus.to_vec(),
            threads,
            at: steal_time(cpus).ok().flatten(),
            t0: Instant::now(),
        }
    }

    /// Seconds stolen since [`Steal::start`], and the threads' seconds over the span.
    fn seconds(&self) -> Option<(f64, f64)> {
        if self.cpus.is_empty() {
            return None;
        }
        let now = steal_time(&self.cpus).ok().flatten()?;
        let cpu = self.t0.elapsed().as_secs_f64() * self.threads as f64;
        Some((now.saturating_sub(self.at?).as_secs_f64(), cpu))
    }
}

/// Stolen seconds as a percentage of the threads' seconds (0 for none), at most 100: the kernel
/// counts steal in ticks (10 ms), and over a short span, or with another program busy on a
/// measured CPU the threads leave idle, the sum can pass the threads' own time.
fn steal_percent((stolen, cpu): (f64, f64)) -> f64 {
    if cpu > 0.0 {
        (100.0 * stolen / cpu).min(100.0)
    } else {
        0.0
    }
}

/// The CPUs whose steal counts for a run on `cores`: those cores, or every CPU this process may
/// use when the run is not pinned.
fn steal_cpus(cores: &[usize]) -> Vec<usize> {
    if cores.is_empty() {
        edgellm_hal::cpu::allowed_cpus().unwrap_or_default()
    } else {
        cores.to_vec()
    }
}

/// One round of an alternating comparison: our mean prefill and decode tokens/s over the round's
/// repetitions, and llama.cpp's figures from the run that followed; with the host's steal (in
/// percent) during each.
struct Round {
    ours: (f64, f64),
    peer: Peer,
    steal: (Option<f64>, Option<f64>),
}

impl Round {
    /// The round of our repetitions' prefill and decode rates `pp`, `tg`, then llama.cpp's run;
    /// `steal`: the stolen percentages during ours and during llama.cpp's.
    fn after(pp: &[f64], tg: &[f64], peer: Peer, steal: (Option<f64>, Option<f64>)) -> Round {
        Round {
            ours: (mean_std(pp).0, mean_std(tg).0),
            peer,
            steal,
        }
    }

    fn ratios(&self) -> (f64, f64) {
        (
            self.ours.0 / self.peer.prefill.0,
            self.ours.1 / self.peer.decode.0,
        )
    }
}

/// Ends a round: adds our repetitions' steal `ours` (seconds stolen, the threads' seconds) to
/// `total`, then, when comparing, runs llama.cpp (`peer`, `peer_threads` threads) under its own
/// steal meter on `cpus` and returns the round of our rates `pp`, `tg` and llama.cpp's.
fn end_round(
    (pp, tg): (&[f64], &[f64]),
    ours: Option<(f64, f64)>,
    total: &mut Option<(f64, f64)>,
    (cpus, peer_threads): (&[usize], usize),
    peer: Option<impl FnOnce() -> Result<Peer>>,
) -> Result<Option<Round>> {
    *total = total.zip(ours).map(|(a, b)| (a.0 + b.0, a.1 + b.1));
    let Some(run) = peer else {
        return Ok(None);
    };
    let meter = Steal::start(cpus, peer_threads);
    let peer = run()?;
    let steal = (ours.map(steal_percent), meter.seconds().map(steal_percent));
    Ok(Some(Round::after(pp, tg, peer, steal)))
}

/// llama.cpp's figures over all rounds: one round's as llama.cpp reported them, else the mean
/// and standard deviation of the rounds' means.
fn peer_over(rounds: &[Round]) -> Option<Peer> {
    let first = rounds.first()?;
    if rounds.len() == 1 {
        return Some(first.peer);
    }
    let pp: Vec<f64> = rounds.iter().map(|r| r.peer.prefill.0).collect();
    let tg: Vec<f64> = rounds.iter().map(|r| r.peer.decode.0).collect();
    Some(Peer {
        prefill: mean_std(&pp),
        decode: mean_std(&tg),
        in_memory: first.peer.in_memory,
    })
}

/// The median of `v` (the mean of the middle two for an even count); 0 for none.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `token_latency_ms` of the JSON output, from sorted per-token latencies in ms.
fn latency_json(lat: &[f64]) -> serde_json::Value {
    serde_json::json!({
        "p50": quantile(lat, 0.50),
        "p90": quantile(lat, 0.90),
        "p99": quantile(lat, 0.99),
        "p999": quantile(lat, 0.999),
        "max": lat.last().copied().unwrap_or(0.0),
    })
}

/// The `llamacpp` object of the JSON output: llama.cpp's figures over all rounds, the ratios of
/// the overall means, and each round's figures and ratios with the ratios' medians.
fn peer_json(args: &BenchArgs, rounds: &[Round], pp_m: f64, tg_m: f64) -> serde_json::Value {
    let Some(p) = peer_over(rounds) else {
        return serde_json::Value::Null;
    };
    let per: Vec<serde_json::Value> = rounds
        .iter()
        .map(|r| {
            let (pr, dr) = r.ratios();
            serde_json::json!({
                "prefill_tps": r.peer.prefill.0,
                "decode_tps": r.peer.decode.0,
                "edgellm_prefill_tps": r.ours.0,
                "edgellm_decode_tps": r.ours.1,
                "prefill_ratio": pr,
                "decode_ratio": dr,
                "edgellm_cpu_steal_pct": r.steal.0,
                "cpu_steal_pct": r.steal.1,
            })
        })
        .collect();
    serde_json::json!({
        "model": args.llamacpp_model.as_ref().unwrap_or(&args.model.model).display().to_string(),
        "prefill_tps": p.prefill.0,
        "prefill_tps_stddev": p.prefill.1,
        "decode_tps": p.decode.0,
        "decode_tps_stddev": p.decode.1,
        "kv_cache_type": llamacpp_kv_type(args),
        "model_in_memory": p.in_memory,
        "decode_ratio": tg_m / p.decode.0,
        "prefill_ratio": pp_m / p.prefill.0,
        "rounds": per,
        "decode_ratio_median": median(rounds.iter().map(|r| r.ratios().1).collect()),
        "prefill_ratio_median": median(rounds.iter().map(|r| r.ratios().0).collect()),
    })
}

/// The tokens/s rows of the table: ours, then llama.cpp's with the ratio (and each round's ratios
/// when there were several).
fn print_rates(args: &BenchArgs, pp: (f64, f64), tg: (f64, f64), rounds: &[Round]) {
    let peer = peer_over(rounds);
    let peer = peer.as_ref();
    let pp_name = format!("pp{}", args.prompt_tokens);
    let tg_name = format!("tg{}", args.gen_tokens);
    println!("{:<10} {:>14} {:>10}", "test", "tokens/s", "± stddev");
    println!("{pp_name:<10} {:>14.1} {:>10.1}", pp.0, pp.1);
    println!("{tg_name:<10} {:>14.1} {:>10.1}", tg.0, tg.1);
    if let Some(p) = peer {
        let kv = match llamacpp_kv_type(args) {
            "f16" if args.peer_f16_kv => {
                ", its f16 KV cache: its CUDA flash attention reads q8_0 for heads of 128 only"
                    .to_string()
            }
            "f16" => String::new(),
            t => format!(", {t} KV cache"),
        };
        let kv = format!(
            " (model {}{kv})",
            if p.in_memory { "in memory" } else { "mapped" }
        );
        for (name, theirs, ours) in [(&pp_name, p.prefill, pp.0), (&tg_name, p.decode, tg.0)] {
            println!(
                "{name:<10} {:>14.1} {:>10.1}   llama.cpp{kv}; edgellm/llama.cpp = {:.2}x",
                theirs.0,
                theirs.1,
                ours / theirs.0
            );
        }
        if rounds.len() > 1 {
            let list = |f: fn(&Round) -> f64| {
                let v: Vec<f64> = rounds.iter().map(f).collect();
                let each: Vec<String> = v.iter().map(|r| format!("{r:.2}x")).collect();
                format!("{} (median {:.2}x)", each.join(" "), median(v))
            };
            println!(
                "rounds     {}: prefill {}, decode {}",
                rounds.len(),
                list(|r| r.ratios().0),
                list(|r| r.ratios().1)
            );
        }
        let steal = |f: fn(&Round) -> Option<f64>| {
            let each: Vec<String> = rounds
                .iter()
                .map(|r| f(r).map_or("?".into(), |p| format!("{p:.1}%")))
                .collect();
            each.join(" ")
        };
        println!(
            "host steal of the threads' time{}: edgellm {}, llama.cpp {}",
            if rounds.len() > 1 { ", per round" } else { "" },
            steal(|r| r.steal.0),
            steal(|r| r.steal.1)
        );
    }
}

/// Above this share of the threads' time taken by the hypervisor, a run's figures say more about
/// the host than about the engine.
const STEAL_NOTE_PCT: f64 = 5.0;

/// The note for a run whose steal (`pct`, the worst of its runs) passed [`STEAL_NOTE_PCT`].
fn steal_note(pct: Option<f64>) -> Option<String> {
    pct.filter(|&p| p > STEAL_NOTE_PCT).map(|p| {
        format!(
            "note: the host took {p:.0}% of a run's CPU time (steal): the figures of the engine \
             that ran then understate it; measure again in a quieter moment"
        )
    })
}

/// The per-token latency line of the table.
fn print_latency(lat: &[f64]) {
    println!(
        "token latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        quantile(lat, 0.5),
        quantile(lat, 0.9),
        quantile(lat, 0.99),
        quantile(lat, 0.999),
        lat.last().copied().unwrap_or(0.0)
    );
}

/// The line on the host's steal while our repetitions ran (none where the kernel does not count
/// it), and a note when that, or either engine's in a round, passed [`STEAL_NOTE_PCT`].
fn print_steal(pct: Option<f64>, rounds: &[Round]) {
    if let Some(p) = pct {
        println!(
            "host steal: {p:.1}% of the threads' time while the repetitions ran (time the \
             hypervisor gave to other guests; 0 on a board)"
        );
    }
    // The worst of ours overall and each engine's in each round.
    let worst = rounds
        .iter()
        .flat_map(|r| [r.steal.0, r.steal.1])
        .chain([pct])
        .flatten()
        .reduce(f64::max);
    if let Some(n) = steal_note(worst) {
        println!("{n}");
    }
}

/// How decode latency splits into growth with the context and jitter around it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Trend {
    /// Least-squares slope of latency against position, in ms per position (the attention
    /// reading one more cached row per layer and KV head each step).
    slope_ms: f64,
    /// Nearest-rank 99th percentile and maximum of each step's latency divided by the fitted
    /// latency at its position: the tail that the context length does not explain.
    jitter_p99: f64,
    jitter_max: f64,
}

/// [`Trend`] of `lat`, the timed steps in ms, `gen` per repetition, each one position after the
/// one before. The line is fitted to the median over repetitions at each position, so a spike
/// in one repetition moves it little. `None` below 4 steps per repetition.
fn trend(lat: &[f64], gen: usize) -> Option<Trend> {
    if gen < 4 || lat.len() < gen {
        return None;
    }
    let reps = lat.len() / gen;
    let med: Vec<f64> = (0..gen)
        .map(|i| {
            let mut v: Vec<f64> = (0..reps).map(|r| lat[r * gen + i]).collect();
            v.sort_by(f64::total_cmp);
            v[(v.len() - 1) / 2]
        })
        .collect();
    let n = gen as f64;
    let mx = (gen - 1) as f64 / 2.0;
    let my = med.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in med.iter().enumerate() {
        let dx = i as f64 - mx;
        sxy += dx * (y - my);
        sxx += dx * dx;
    }
    let slope = sxy / sxx;
    let fit = |i: usize| my + slope * (i as f64 - mx);
    let mut ratio: Vec<f64> = lat[..reps * gen]
        .iter()
        .enumerate()
        .map(|(k, y)| y / fit(k % gen))
        .collect();
    if ratio.iter().any(|r| !r.is_finite() || *r <= 0.0) {
        return None;
    }
    ratio.sort_by(f64::total_cmp);
    Some(Trend {
        slope_ms: slope,
        jitter_p99: quantile(&ratio, 0.99),
        jitter_max: ratio[ratio.len() - 1],
    })
}

/// The `token_latency_trend` object of the JSON output.
fn trend_json(t: Option<Trend>) -> serde_json::Value {
    match t {
        Some(t) => serde_json::json!({
            "growth_us_per_position": t.slope_ms * 1e3,
            "jitter_p99": t.jitter_p99,
            "jitter_max": t.jitter_max,
        }),
        None => serde_json::Value::Null,
    }
}

/// The trend line of the table.
fn print_trend(t: Option<Trend>, gen: usize) {
    if let Some(t) = t {
        println!(
            "token latency trend: {:+.2} us per position ({:+.3} ms over the {gen} steps); \
             jitter over that line: p99 {:.3}x, max {:.3}x",
            t.slope_ms * 1e3,
            t.slope_ms * (gen - 1) as f64,
            t.jitter_p99,
            t.jitter_max
        );
    }
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

pub fn bench(mut args: BenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.prompt_tokens > 0 && args.gen_tokens > 0 && args.reps > 0 && args.rounds > 0,
        "-p, -g, -r and --rounds must be at least 1"
    );
    let file = load::open_model(&args.model)?;
    let file_len = file.len();
    let kernels = load::kernels(args.model.kernels.as_deref())?;
    let loaded = Loaded::new(file.gguf()?, &kernels)?;
    let cfg = &loaded.model.config;
    let need = args.prompt_tokens + args.gen_tokens;
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
    let context = crate::run::context_len(&args.model, &loaded, file_len, need)?;
    if let Some(engine) = crate::device::select(&args.model, &loaded, context)? {
        args.peer_f16_kv = gpu_peer_keeps_f16(&args.model, cfg.head_dim);
        return bench_gpu(&args, engine, &prompt);
    }
    let mut session = session_for(&args.model, &loaded, context, kernels)?;
    let pool = make_pool(&args.model)?;
    let threads = pool.threads;
    let board = args.model.board()?;

    let n_rounds = if args.compare_llamacpp {
        args.rounds
    } else {
        1
    };
    let total = args.reps * n_rounds;
    let mut pp = Vec::with_capacity(total);
    let mut tg = Vec::with_capacity(total);
    let mut ttft = Vec::with_capacity(total);
    let mut lat = Vec::with_capacity(total * args.gen_tokens);
    let (mut decode_faults, mut decode_allocs) = (0u64, 0u64);
    let mut rounds = Vec::with_capacity(n_rounds);
    let cpus = steal_cpus(pool.cores.as_deref().unwrap_or(&[]));
    let mut stolen = Some((0.0, 0.0));
    for _ in 0..n_rounds {
        let round_start = tg.len();
        let mut meter = Steal::start(&cpus, threads);
        // One warm-up repetition (page in the weights, or bring them back after llama.cpp ran), not
        // counted.
        for rep in 0..=args.reps {
            session.reset();
            let t0 = Instant::now();
            session.prefill(&prompt, pool.par())?;
            let t_prefill = t0.elapsed().as_secs_f64();
            let mut tok = argmax(session.logits());
            let first = t0.elapsed().as_secs_f64();
            let mut steps = Vec::with_capacity(args.gen_tokens);
            let (t_gen, faults, allocs) = timed_decode(args.gen_tokens, &mut steps, || {
                session.forward(tok, pool.par())?;
                tok = argmax(session.logits());
                Ok(())
            })?;
            if rep == 0 {
                meter = Steal::start(&cpus, threads);
                continue;
            }
            decode_faults += faults;
            decode_allocs += allocs;
            pp.push(args.prompt_tokens as f64 / t_prefill);
            tg.push(args.gen_tokens as f64 / t_gen);
            ttft.push(first * 1e3);
            lat.extend(steps.iter().map(|s| s * 1e3));
        }
        let peer = args.compare_llamacpp.then_some(|| {
            run_llamacpp(
                &args,
                threads,
                session.context(),
                file.in_memory(),
                pool.cores.as_deref().unwrap_or(&[]),
            )
        });
        rounds.extend(end_round(
            (&pp[round_start..], &tg[round_start..]),
            meter.seconds(),
            &mut stolen,
            (&cpus, threads),
            peer,
        )?);
    }
    let steal_pct = stolen.map(steal_percent);
    write_trace(&args, &lat)?;
    let lat_trend = trend(&lat, args.gen_tokens);
    lat.sort_by(|a, b| a.total_cmp(b));
    let (pp_m, pp_s) = mean_std(&pp);
    let (tg_m, tg_s) = mean_std(&tg);
    let (ttft_m, _) = mean_std(&ttft);
    let kernels = session.kernels().describe().to_string();
    let expected = file_len + session.arena_bytes() as u64 + OVERHEAD_BYTES;
    let huge = edgellm_hal::memory::anon_huge_page_bytes().unwrap_or(0);
    if args.json {
        let out = serde_json::json!({
            "model": args.model.model.display().to_string(),
            "model_in_memory": file.in_memory(),
            "model_tensors_relaid": file.relaid(),
            "board": board.name,
            "device": "cpu",
            "threads": threads,
            "cores": pool.cores,
            "realtime": pool.realtime,
            "rt_priority": if pool.realtime { pool.priority } else { None },
            "memory_locked": pool.memory_locked,
            "kernels": kernels,
            "n_prompt": args.prompt_tokens,
            "n_gen": args.gen_tokens,
            "reps": args.reps,
            "prefill_tps": pp_m,
            "prefill_tps_stddev": pp_s,
            "decode_tps": tg_m,
            "decode_tps_stddev": tg_s,
            "ttft_ms": ttft_m,
            "peak_rss_bytes": peak_rss_bytes().unwrap_or(0),
            "decode_page_faults": decode_faults,
            "decode_heap_allocations": decode_allocs,
            "cpu_steal_pct": steal_pct,
            "model_bytes": file_len,
            "arena_bytes": session.arena_bytes(),
            "huge_page_bytes": huge,
            "kv_cache_bytes": session.plan().kv_bytes(),
            "kv_cache_type": session.plan().kv_type().name(),
            "overhead_bytes": OVERHEAD_BYTES,
            "expected_bytes": expected,
            "token_latency_ms": latency_json(&lat),
            "token_latency_trend": trend_json(lat_trend),
            "rounds": n_rounds,
            "llamacpp": peer_json(&args, &rounds, pp_m, tg_m),
        });
        println!("{out}");
    } else {
        println!(
            "model    {} ({})",
            args.model.model.display(),
            file.describe()
        );
        println!(
            "board    {}   threads {threads}   kernels {kernels}",
            board.name
        );
        println!("exec     {}", pool.describe());
        print_rates(&args, (pp_m, pp_s), (tg_m, tg_s), &rounds);
        println!("time to first token {ttft_m:.2} ms");
        println!(
            "during {} decode steps: {decode_faults} page faults, {decode_allocs} heap allocations",
            total * args.gen_tokens
        );
        let mib = |b: u64| b as f64 / 1048576.0;
        let plan = session.plan();
        println!(
            "memory: peak RSS {:.1} MiB; budgeted {:.1} MiB = model {}{:.1} + {} KV cache {:.1} \
             + other buffers {:.1} + overhead {:.1}",
            mib(peak_rss_bytes().unwrap_or(0)),
            mib(expected),
            // A relayout that grows tensors (TQ1_0 as TQ2W) makes the model larger than its file.
            if file.relaid() > 0 {
                "in memory "
            } else {
                "file "
            },
            mib(file_len),
            plan.kv_type().name(),
            mib(plan.kv_bytes() as u64),
            mib((session.arena_bytes() - plan.kv_bytes()) as u64),
            mib(OVERHEAD_BYTES)
        );
        println!(
            "memory: {:.1} MiB in transparent huge pages (the arena asks for them, and the model \
             when it is read into memory)",
            mib(huge)
        );
        print_latency(&lat);
        print_trend(lat_trend, args.gen_tokens);
        print_steal(steal_pct, &rounds);
    }
    Ok(())
}

/// Runs `step` `n` times, each step's seconds in `steps` (cleared first; its capacity must hold
/// `n`, so the loop does not allocate); returns the loop's seconds and the page faults and heap
/// operations counted over it.
fn timed_decode(
    n: usize,
    steps: &mut Vec<f64>,
    mut step: impl FnMut() -> Result<()>,
) -> Result<(f64, u64, u64)> {
    steps.clear();
    let faults0 = page_faults().unwrap_or(0);
    let allocs0 = CountingAlloc::stats();
    let t1 = Instant::now();
    let mut last = t1;
    for _ in 0..n {
        step()?;
        let now = Instant::now();
        steps.push((now - last).as_secs_f64());
        last = now;
    }
    let t_gen = t1.elapsed().as_secs_f64();
    let faults = page_faults().unwrap_or(0).saturating_sub(faults0);
    let allocs = CountingAlloc::stats().since(&allocs0).heap_operations();
    Ok((t_gen, faults, allocs))
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

/// The GPU half of `bench`: the same repetitions, prompt and greedy decode, timed around the
/// decode graph's replays (each step waits for its token on the host, as generation does).
fn bench_gpu(args: &BenchArgs, mut engine: edgellm_cuda::GpuEngine, prompt: &[u32]) -> Result<()> {
    let board = args.model.board()?;
    if std::env::var_os("EDGELLM_CUDA_PROFILE").is_some() {
        // At the position decoding starts from, as the timed steps below.
        engine.reset()?;
        engine.prefill(prompt)?;
        eprintln!("profile: {}", engine.persistent_info()?);
        for (name, s) in engine.profile()? {
            eprintln!("profile: {name:<20} {:9.1} us", s * 1e6);
        }
        if prompt.len() <= engine.prefill_batch() {
            engine.profile_prefill(prompt)?;
            for (name, s) in engine.profile_prefill(prompt)? {
                eprintln!("profile prefill: {name:<20} {:9.1} us", s * 1e6);
            }
        }
    }
    let n_rounds = if args.compare_llamacpp {
        args.rounds
    } else {
        1
    };
    let total = args.reps * n_rounds;
    let mut pp = Vec::with_capacity(total);
    let mut tg = Vec::with_capacity(total);
    let mut ttft = Vec::with_capacity(total);
    let mut lat = Vec::with_capacity(total * args.gen_tokens);
    let (mut decode_faults, mut decode_allocs) = (0u64, 0u64);
    // Allocated once, outside the counted window: the counters measure the engine only.
    let mut steps = Vec::with_capacity(args.gen_tokens);
    let mut rounds = Vec::with_capacity(n_rounds);
    let cpus = steal_cpus(&[]);
    // Our host thread, and llama.cpp's CPU threads.
    let (threads, peer_threads) = (1, args.model.threads.unwrap_or(1));
    let mut stolen = Some((0.0, 0.0));
    for _ in 0..n_rounds {
        let round_start = tg.len();
        let mut meter = Steal::start(&cpus, threads);
        for rep in 0..=args.reps {
            engine.reset()?;
            let t0 = Instant::now();
            engine.prefill(prompt)?;
            engine.sampled()?;
            let t_prefill = t0.elapsed().as_secs_f64();
            let (t_gen, faults, allocs) = timed_decode(args.gen_tokens, &mut steps, || {
                engine.step()?;
                engine.sampled()?;
                Ok(())
            })?;
            if rep == 0 {
                meter = Steal::start(&cpus, threads);
                continue;
            }
            decode_faults += faults;
            decode_allocs += allocs;
            pp.push(prompt.len() as f64 / t_prefill);
            tg.push(args.gen_tokens as f64 / t_gen);
            ttft.push(t_prefill * 1e3);
            lat.extend(steps.iter().map(|s| s * 1e3));
        }
        // The weights live in GPU memory: how llama.cpp loads its file does not matter here.
        let peer = args
            .compare_llamacpp
            .then_some(|| run_llamacpp(args, peer_threads, engine.context(), false, &[]));
        rounds.extend(end_round(
            (&pp[round_start..], &tg[round_start..]),
            meter.seconds(),
            &mut stolen,
            (&cpus, peer_threads),
            peer,
        )?);
    }
    let steal_pct = stolen.map(steal_percent);
    write_trace(args, &lat)?;
    let lat_trend = trend(&lat, args.gen_tokens);
    lat.sort_by(|a, b| a.total_cmp(b));
    let (pp_m, pp_s) = mean_std(&pp);
    let (tg_m, tg_s) = mean_std(&tg);
    let (ttft_m, _) = mean_std(&ttft);
    let desc = engine.describe();
    if args.json {
        let out = serde_json::json!({
            "model": args.model.model.display().to_string(),
            "board": board.name,
            "device": "cuda",
            "threads": 1,
            "realtime": false,
            "kernels": desc,
            "n_prompt": args.prompt_tokens,
            "n_gen": args.gen_tokens,
            "reps": args.reps,
            "prefill_tps": pp_m,
            "prefill_tps_stddev": pp_s,
            "decode_tps": tg_m,
            "decode_tps_stddev": tg_s,
            "ttft_ms": ttft_m,
            "peak_rss_bytes": peak_rss_bytes().unwrap_or(0),
            "decode_page_faults": decode_faults,
            "decode_heap_allocations": decode_allocs,
            "cpu_steal_pct": steal_pct,
            "token_latency_ms": latency_json(&lat),
            "token_latency_trend": trend_json(lat_trend),
            "rounds": n_rounds,
            "llamacpp": peer_json(args, &rounds, pp_m, tg_m),
        });
        println!("{out}");
    } else {
        println!("model    {}", args.model.model.display());
        println!("board    {}   {desc}", board.name);
        print_rates(args, (pp_m, pp_s), (tg_m, tg_s), &rounds);
        println!("time to first token {ttft_m:.2} ms");
        println!(
            "during {} decode steps: {decode_faults} page faults, {decode_allocs} heap allocations",
            total * args.gen_tokens
        );
        print_latency(&lat);
        print_trend(lat_trend, args.gen_tokens);
        print_steal(steal_pct, &rounds);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_kv_cache_follows_ours_unless_it_has_no_gpu_kernel() {
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            b: BenchArgs,
        }
        let parse = |kv: &str| {
            <T as clap::Parser>::try_parse_from(["bench", "-m", "x.gguf", "--kv-cache", kv])
                .unwrap()
                .b
        };
        assert_eq!(llamacpp_kv_type(&parse("f16")), "f16");
        assert!(llama_bench_kv_args(&parse("f16")).is_empty());
        let mut a = parse("int8");
        assert_eq!(llamacpp_kv_type(&a), "q8_0");
        assert_eq!(
            llama_bench_kv_args(&a),
            ["-ctk", "q8_0", "-ctv", "q8_0", "-fa", "1"]
        );
        // On the GPU: q8_0 where llama.cpp has the kernels (heads of 128), else its f16 cache.
        assert!(!gpu_peer_keeps_f16(&a.model, 128));
        assert!(gpu_peer_keeps_f16(&a.model, 64));
        assert!(!gpu_peer_keeps_f16(&parse("f16").model, 64));
        a.peer_f16_kv = gpu_peer_keeps_f16(&a.model, 64);
        assert_eq!(llamacpp_kv_type(&a), "f16");
        assert!(llama_bench_kv_args(&a).is_empty());
    }

    #[test]
    fn steal_shares_stay_within_the_threads_time() {
        assert_eq!(steal_percent((0.5, 2.0)), 25.0);
        assert_eq!(steal_percent((0.0, 0.0)), 0.0);
        // Two 10 ms ticks over a 15 ms span of one thread: all of it, not 133%.
        assert_eq!(steal_percent((0.02, 0.015)), 100.0);
    }

    #[test]
    fn a_run_with_much_steal_gets_a_note() {
        assert_eq!(steal_note(None), None);
        assert_eq!(steal_note(Some(0.0)), None);
        assert_eq!(steal_note(Some(STEAL_NOTE_PCT)), None);
        let n = steal_note(Some(26.3)).expect("a note");
        assert!(n.contains("26% of a run's CPU time"), "{n}");
    }

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn trend_separates_growth_from_jitter() {
        // Two repetitions of 100 steps growing by 0.01 ms per position from 5 ms, one spike of
        // 2x in the second: the median per position keeps the line, the spike is the jitter.
        let line = |i: usize| 5.0 + 0.01 * i as f64;
        let mut lat: Vec<f64> = (0..200).map(|k| line(k % 100)).collect();
        lat[150] *= 2.0;
        let t = trend(&lat, 100).unwrap();
        assert!((t.slope_ms - 0.01).abs() < 1e-9, "{t:?}");
        assert!((t.jitter_max - 2.0).abs() < 1e-9, "{t:?}");
        assert!((t.jitter_p99 - 1.0).abs() < 1e-9, "{t:?}");
        // Flat latencies: no growth, no jitter.
        let t = trend(&[3.0; 64], 32).unwrap();
        assert_eq!((t.slope_ms, t.jitter_p99, t.jitter_max), (0.0, 1.0, 1.0));
        // Too few steps to fit a line.
        assert_eq!(trend(&[1.0, 2.0, 3.0], 3), None);
    }
}
