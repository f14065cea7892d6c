//! `cargo xtask cycles`: a cycle model of the CPU kernels on the boards' cores, for the boards
//! this machine cannot time.
//!
//! For each board and kernel case, the `trace_kernel` example (kernels crate) is built with the
//! board's CPU tuning and run once under `qemu-aarch64 -cpu <board's model> -d
//! in_asm,exec,nochain`: qemu logs every translated block's instructions and every execution of a
//! block, so the blocks run between the example's two marker calls, and how often each ran, are
//! exactly those of the kernel call (its dispatch included). Each block is then given to
//! `llvm-mca` with the LLVM scheduling model of the board's core, which says how many cycles one
//! pass of it takes in a steady loop; the sum over blocks of runs x cycles is the call's
//! predicted time, reported per multiply-accumulate and per byte of weights. qemu ends a block at
//! each 4 KiB page boundary; the halves of a loop body split that way are joined again
//! ([`join_page_splits`]), so the figures do not depend on where the linker put a kernel.
//!
//! It is a model, not a measurement: the caches are assumed to hit (so it is the compute-bound
//! time; memory bandwidth is the other bound), a block is modelled as if it looped on itself, and
//! LLVM's models are approximate (the A72 is scheduled with its A57 model, the A76 and A78 with
//! the Neoverse N1's, the core derived from the A76). It is what this project has to compare
//! kernel designs on the boards' cores, e.g. a table-lookup against a multiply-add kernel on the
//! in-order Cortex-A53.

use anyhow::{bail, Context, Result};
use edgellm_board::Board;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

const TARGET: &str = "aarch64-unknown-linux-gnu";

/// The cases run when none is given: SmolLM2's feed-forward shape for the types of its images and
/// llama.cpp files (Q5_0 for the Q4_K_M files, whose odd widths fall back to it), the BitNet-2B
/// width for llama.cpp's ternary types and the K-quants, and a prefill tile.
pub const DEFAULT_CASES: &[&str] = &[
    "T2:1536x576",
    "T2-LUT:1536x576",
    "Q4W:1536x576",
    "Q4_0:1536x576",
    "Q4_1:1536x576",
    "Q5_0:1536x576",
    "Q8_0:1536x576",
    "TQ2_0:256x2560",
    "TQ2W:256x2560",
    "TQ1_0:256x2560",
    "Q4_K:256x2560",
    "Q6_K:256x2560",
    "T2:32x576x16",
];

/// LLVM's scheduling model for a board's `target_cpu`.
fn mca_model(target_cpu: &str) -> Option<&'static str> {
    match target_cpu {
        "cortex-a53" => Some("cortex-a53"),
        "cortex-a57" => Some("cortex-a57"),
        // LLVM schedules the A72 with its A57 model.
        "cortex-a72" => Some("cortex-a72"),
        // No A76 or A78 model of their own: the Neoverse N1 is the server core derived from the
        // A76 (the same pipelines: four integer ALUs, two 128-bit ASIMD units).
        "cortex-a76" | "cortex-a78" => Some("neoverse-n1"),
        _ => None,
    }
}

/// One kernel call: `kernel` (a type name, or `T2-LUT`) on `rows x cols` weights, `tokens` > 1
/// for a gemm; or (`ATTN-F16`, `ATTN-I8`) one KV head's attention over `rows` cached positions
/// of `cols` values for `tokens` query heads (multiply-accumulates then count position x value x
/// head, once for the scores and the weighted values together).
#[derive(Clone, Debug)]
pub struct Case {
    kernel: String,
    rows: usize,
    cols: usize,
    tokens: usize,
}

impl FromStr for Case {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Case> {
        let (kernel, shape) = s
            .split_once(':')
            .with_context(|| format!("{s:?}: expected KERNEL:ROWSxCOLS[xTOKENS]"))?;
        let dims: Vec<usize> = shape
            .split('x')
            .map(|d| {
                d.parse()
                    .with_context(|| format!("{s:?}: bad number {d:?}"))
            })
            .collect::<Result<_>>()?;
        let (rows, cols, tokens) = match dims[..] {
            [r, c] => (r, c, 1),
            [r, c, t] => (r, c, t),
            _ => bail!("{s:?}: expected KERNEL:ROWSxCOLS[xTOKENS]"),
        };
        if rows == 0 || cols == 0 || tokens == 0 {
            bail!("{s:?}: every dimension must be at least 1");
        }
        Ok(Case {
            kernel: kernel.to_string(),
            rows,
            cols,
            tokens,
        })
    }
}

/// The first of `names` on the PATH.
fn find_tool(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find(|n| crate::cross::have(n))
        .map(|n| n.to_string())
}

/// `llvm-mc` and `llvm-mca` of one LLVM release new enough for the Neoverse N1 model.
fn llvm_tools() -> Result<(String, String)> {
    for v in ["-19", "-18", "-17", "-16", ""] {
        let (mc, mca) = (format!("llvm-mc{v}"), format!("llvm-mca{v}"));
        if let (Some(mc), Some(mca)) = (find_tool(&[&mc]), find_tool(&[&mca])) {
            let out = Command::new(&mca).arg("--version").output();
            let text = out.map(|o| String::from_utf8_lossy(&o.stdout).to_string());
            let major = text.ok().and_then(|t| {
                let i = t.find("version ")? + 8;
                t[i..].split('.').next()?.trim().parse::<u32>().ok()
            });
            if major.is_some_and(|m| m >= 16) {
                return Ok((mc, mca));
            }
        }
    }
    bail!("cycles needs llvm-mc and llvm-mca 16 or newer (Debian 12: sudo apt-get install llvm-19)")
}

/// Builds `example` of `package` with `board`'s tuning and returns its path.
fn build(board: &Board, package: &str, example: &str) -> Result<PathBuf> {
    let dir = crate::root().join("target/cycles").join(board.name);
    let mut cmd = crate::cargo();
    cmd.args([
        "build",
        "--release",
        "--quiet",
        "-p",
        package,
        "--example",
        example,
    ])
    .args(["--target", TARGET])
    .env("RUSTFLAGS", crate::build::rustflags(board))
    .env("CARGO_TARGET_DIR", &dir)
    .env(
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
        "aarch64-linux-gnu-gcc",
    );
    crate::run(&mut cmd)?;
    Ok(dir.join(TARGET).join("release/examples").join(example))
}

/// A traced run: each executed block's instruction words, how often it ran between the markers,
/// and the function it belongs to; plus the figures the traced program printed.
struct Trace {
    blocks: HashMap<u64, Vec<u32>>,
    runs: HashMap<u64, u64>,
    symbols: HashMap<u64, String>,
    /// `key value` pairs of the program's output (`bytes`, `macs`, ...).
    printed: HashMap<String, u64>,
}

impl Trace {
    fn get(&self, key: &str) -> Result<u64> {
        self.printed
            .get(key)
            .copied()
            .with_context(|| format!("the traced program printed no {key}"))
    }
}

/// Runs `exe args` under qemu with `cpu`, its log going through a FIFO (a decode step logs
/// gigabytes) into [`read_log`].
fn trace(exe: &Path, cpu: &str, args: &[String]) -> Result<Trace> {
    let dir = std::env::temp_dir().join(format!("edgellm-cycles-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let fifo = dir.join("qemu.log");
    let _ = std::fs::remove_file(&fifo);
    crate::run(Command::new("mkfifo").arg(&fifo))?;
    let child = Command::new("qemu-aarch64")
        .args(["-cpu", cpu, "-L", crate::cross::SYSROOT])
        .args(["-d", "in_asm,exec,nochain", "-D"])
        .arg(&fifo)
        .arg(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run qemu-aarch64")?;
    // Opening the FIFO waits for qemu to open it for writing.
    let log = std::fs::File::open(&fifo).context("cannot open the qemu log FIFO")?;
    let read = read_log(BufReader::new(log), MARK_BEGIN, MARK_END);
    let out = child.wait_with_output()?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!(
            "{} {} under qemu -cpu {cpu} failed: {}",
            exe.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (mut blocks, mut runs, symbols) = read?;
    join_page_splits(&mut blocks, &mut runs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = stdout.split_whitespace().collect();
    let printed = words
        .windows(2)
        .filter_map(|w| Some((w[0].to_string(), w[1].parse::<u64>().ok()?)))
        .collect();
    Ok(Trace {
        blocks,
        runs,
        symbols,
        printed,
    })
}

/// The functions the traced programs call just before and just after the traced code.
const MARK_BEGIN: &str = "edgellm_trace_begin";
const MARK_END: &str = "edgellm_trace_end";

/// Each executed block's instruction words, run count and function (see [`read_log`]).
type Blocks = (
    HashMap<u64, Vec<u32>>,
    HashMap<u64, u64>,
    HashMap<u64, String>,
);

/// Reads a `-d in_asm,exec,nochain` log of qemu: `IN:` sections list a translated block's
/// instructions as `0x<address>:  <word>  <text>` lines, `Trace N: 0x<host> [<flags>/<guest
/// pc>/..] <function>` lines each execution of one. The runs counted are those after the first
/// run of a block of function `begin` and before the first of `end`; the log is read to its end.
fn read_log(mut log: impl BufRead, begin: &str, end: &str) -> Result<Blocks> {
    let mut blocks: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut runs: HashMap<u64, u64> = HashMap::new();
    let mut symbols: HashMap<u64, String> = HashMap::new();
    // The block being read from an `IN:` section: its address and instruction words.
    let mut current: Option<(u64, Vec<u32>)> = None;
    let (mut counting, mut done) = (false, false);
    let mut line = String::new();
    loop {
        line.clear();
        if log.read_line(&mut line)? == 0 {
            break;
        }
        if done {
            continue;
        }
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("0x") {
            let mut parts = rest.split_whitespace();
            let addr = parts
                .next()
                .and_then(|a| u64::from_str_radix(a.trim_end_matches(':'), 16).ok());
            let word = parts.next().and_then(|w| u32::from_str_radix(w, 16).ok());
            if let (Some(addr), Some(word)) = (addr, word) {
                current
                    .get_or_insert_with(|| (addr, Vec::new()))
                    .1
                    .push(word);
            }
            continue;
        }
        if let Some((pc, words)) = current.take() {
            // A block translated again keeps its first listing.
            blocks.entry(pc).or_insert(words);
        }
        if let Some(rest) = line.strip_prefix("Trace ") {
            let (_, fields) = rest
                .split_once('[')
                .with_context(|| format!("unexpected qemu log line {line:?}"))?;
            let (fields, symbol) = fields.split_once(']').unwrap_or((fields, ""));
            let pc = fields
                .split('/')
                .nth(1)
                .and_then(|p| u64::from_str_radix(p, 16).ok())
                .with_context(|| format!("unexpected qemu log line {line:?}"))?;
            let symbol = symbol.trim();
            if counting && symbol == end {
                done = true;
                continue;
            }
            if counting {
                *runs.entry(pc).or_default() += 1;
                symbols.entry(pc).or_insert_with(|| symbol.to_string());
            }
            counting |= symbol == begin;
        }
    }
    if let Some((pc, words)) = current.take() {
        blocks.entry(pc).or_insert(words);
    }
    if runs.is_empty() {
        bail!("no block ran between {begin} and {end} (is qemu's log format the expected one?)");
    }
    if let Some(pc) = runs.keys().find(|pc| !blocks.contains_key(pc)) {
        bail!("block {pc:#x} ran but qemu never listed its instructions");
    }
    Ok((blocks, runs, symbols))
}

/// qemu ends a translated block at a 4 KiB page boundary, so a loop whose body crosses one is
/// listed as two or more blocks, and llvm-mca would then model each part as a loop of its own (a
/// kernel's modelled time moved by up to half with where the linker put it). The block that
/// starts at a page boundary is appended to every block that ends there when their run counts
/// add up to its own (every run of it followed one of them: the loop's block and the one that
/// entered the loop from above, say), and dropped; a chain of such splits joins into one.
fn join_page_splits(blocks: &mut HashMap<u64, Vec<u32>>, runs: &mut HashMap<u64, u64>) {
    const PAGE: u64 = 4096;
    let mut ending: HashMap<u64, Vec<u64>> = HashMap::new();
    for (&pc, words) in blocks.iter() {
        let end = pc + 4 * words.len() as u64;
        if end.is_multiple_of(PAGE) && runs.contains_key(&pc) {
            ending.entry(end).or_default().push(pc);
        }
    }
    // From the highest boundary down, so that a block joined at one boundary is whole before it
    // is appended at the one below.
    let mut bounds: Vec<u64> = ending.keys().copied().collect();
    bounds.sort_unstable_by(|a, b| b.cmp(a));
    for end in bounds {
        let before = &ending[&end];
        let total: u64 = before.iter().map(|pc| runs[pc]).sum();
        if runs.get(&end) != Some(&total) {
            continue;
        }
        let Some(next) = blocks.remove(&end) else {
            continue;
        };
        runs.remove(&end);
        for pc in before {
            blocks
                .get_mut(pc)
                .expect("listed above")
                .extend_from_slice(&next);
        }
    }
}

/// The instruction set extensions the blocks may use (the dot-product tier's `sdot`).
const MATTR: &str = "-mattr=+dotprod,+fullfp16";

/// Cycles of one pass of `words` in a steady loop on `model`, by llvm-mca.
fn block_cycles(tools: &(String, String), words: &[u32], model: &str) -> Result<f64> {
    const ITER: u32 = 100;
    let asm = disassemble(tools, words)?;
    let report = pipe(
        Command::new(&tools.1)
            .args(["-mtriple=aarch64", MATTR])
            .arg(format!("-mcpu={model}"))
            .arg(format!("-iterations={ITER}")),
        &asm,
    )?;
    let total = report
        .lines()
        .find_map(|l| l.strip_prefix("Total Cycles:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no cycle count from llvm-mca for:\n{asm}"))?;
    Ok(total / f64::from(ITER))
}

/// Runs `cmd` with `input` on its standard input and returns its standard output.
fn pipe(cmd: &mut Command, input: &str) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The model's figures for one traced run.
struct Figures {
    instructions: u64,
    cycles: f64,
    /// (runs, instructions, cycles per pass, address) of the modelled blocks, most time first.
    hot: Vec<(u64, usize, f64, u64)>,
}

/// Blocks covering 99.9% of the executed instructions are modelled one by one; the rest (setup,
/// tails) take the modelled blocks' mean cycles per instruction.
fn model(tools: &(String, String), t: &Trace, model: &str) -> Result<Figures> {
    let mut order: Vec<(u64, u64)> = t.runs.iter().map(|(&pc, &n)| (pc, n)).collect();
    let len = |pc: u64| t.blocks.get(&pc).map_or(0, Vec::len) as u64;
    order.sort_by_key(|&(pc, n)| std::cmp::Reverse(n * len(pc)));
    let instructions: u64 = order.iter().map(|&(pc, n)| n * len(pc)).sum();
    let (mut done, mut cycles) = (0u64, 0f64);
    let mut hot = Vec::new();
    for &(pc, n) in &order {
        if done as f64 >= 0.999 * instructions as f64 {
            break;
        }
        let words = &t.blocks[&pc];
        let c = block_cycles(tools, words, model)?;
        cycles += n as f64 * c;
        done += n * words.len() as u64;
        hot.push((n, words.len(), c, pc));
    }
    hot.sort_by(|a, b| (b.0 as f64 * b.2).total_cmp(&(a.0 as f64 * a.2)));
    let rest = instructions - done;
    if done > 0 {
        cycles += rest as f64 * cycles / done as f64;
    }
    Ok(Figures {
        instructions,
        cycles,
        hot,
    })
}

/// The boards named (every aarch64 board when none is).
fn boards(names: &[String]) -> Result<Vec<Board>> {
    let boards: Vec<Board> = if names.is_empty() {
        crate::build::BOARDS
            .iter()
            .copied()
            .filter(|b| b.target_triple == TARGET)
            .collect()
    } else {
        names
            .iter()
            .map(|b| crate::build::board(b))
            .collect::<Result<_>>()?
    };
    if let Some(b) = boards.iter().find(|b| b.target_triple != TARGET) {
        bail!("{} is not an aarch64 board", b.name);
    }
    Ok(boards)
}

/// The LLVM model and kernel tier of `board`.
fn model_and_tier(board: &Board) -> Result<(&'static str, &'static str)> {
    let model = mca_model(board.target_cpu)
        .with_context(|| format!("no LLVM model for {}", board.target_cpu))?;
    let tier = board
        .isa
        .kernel_tier()
        .context("the board names no kernel tier")?;
    Ok((model, tier))
}

/// What `cargo xtask cycles` models: kernel calls, or one decode step of a model file.
pub enum Subject {
    Kernels(Vec<String>),
    Step { model: PathBuf, position: usize },
}

/// `cargo xtask cycles`: the model of every case (or of the decode step) on every board given,
/// one line each; `show` prints the hottest blocks (kernel cases) or functions (a step) too.
pub fn cycles(board_names: &[String], subject: &Subject, show: usize) -> Result<()> {
    crate::cross::ensure_tools()?;
    let tools = llvm_tools()?;
    let boards = boards(board_names)?;
    match subject {
        Subject::Kernels(cases) => kernels(&tools, &boards, cases, show),
        Subject::Step { model, position } => step(&tools, &boards, model, *position, show),
    }
}

fn kernels(
    tools: &(String, String),
    boards: &[Board],
    cases: &[String],
    show: usize,
) -> Result<()> {
    let cases: Vec<Case> = if cases.is_empty() {
        DEFAULT_CASES
            .iter()
            .map(|c| c.parse())
            .collect::<Result<_>>()?
    } else {
        cases.iter().map(|c| c.parse()).collect::<Result<_>>()?
    };
    println!(
        "{:<11} {:<11} {:<8} {:<13} {:>7} {:>7} {:>9} {:>10}",
        "board", "llvm model", "kernel", "shape", "instr/w", "cyc/w", "MAC/cycle", "B/kcycle"
    );
    for board in boards {
        let (model_name, tier) = model_and_tier(board)?;
        let exe = build(board, "edgellm-kernels", "trace_kernel")?;
        for case in &cases {
            let args = [tier.to_string(), case.kernel.clone()]
                .into_iter()
                .chain([case.rows, case.cols, case.tokens].map(|n| n.to_string()))
                .collect::<Vec<_>>();
            let t = trace(&exe, board.qemu_cpu, &args)?;
            let f = model(tools, &t, model_name)?;
            let macs = (case.rows * case.cols * case.tokens) as f64;
            let shape = if case.tokens > 1 {
                format!("{}x{}x{}", case.rows, case.cols, case.tokens)
            } else {
                format!("{}x{}", case.rows, case.cols)
            };
            println!(
                "{:<11} {:<11} {:<8} {:<13} {:>7.3} {:>7.3} {:>9.2} {:>10.1}",
                board.name,
                model_name,
                case.kernel,
                shape,
                f.instructions as f64 / macs,
                f.cycles / macs,
                macs / f.cycles,
                // Weight bytes per thousand cycles (= MB/s at 1 GHz): the rate at which a
                // compute-bound gemv consumes the matrix.
                t.get("bytes")? as f64 / f.cycles * 1e3,
            );
            print_blocks(tools, &t, &f, show)?;
        }
    }
    Ok(())
}

/// One decode step of `model_path` at `position` on each board: predicted cycles per token, and
/// the `show` functions that take most of them.
fn step(
    tools: &(String, String),
    boards: &[Board],
    model_path: &Path,
    position: usize,
    show: usize,
) -> Result<()> {
    let model_path = model_path
        .canonicalize()
        .with_context(|| format!("cannot find {}", model_path.display()))?;
    println!(
        "{:<11} {:<11} {:>9} {:>12} {:>7} {:>9} {:>10}",
        "board", "llvm model", "position", "Mcycles/tok", "cyc/w", "MAC/cycle", "B/kcycle"
    );
    for board in boards {
        let (model_name, tier) = model_and_tier(board)?;
        let exe = build(board, "edgellm-core", "trace_step")?;
        let args = [
            model_path.display().to_string(),
            tier.to_string(),
            position.to_string(),
        ];
        let t = trace(&exe, board.qemu_cpu, &args)?;
        let f = model(tools, &t, model_name)?;
        let macs = t.get("macs")? as f64;
        println!(
            "{:<11} {:<11} {:>9} {:>12.1} {:>7.3} {:>9.2} {:>10.1}",
            board.name,
            model_name,
            position,
            f.cycles / 1e6,
            f.cycles / macs,
            macs / f.cycles,
            t.get("bytes")? as f64 / f.cycles * 1e3,
        );
        // The modelled cycles by function (the rest, under 0.1% of the instructions, aside).
        let mut by_fn: HashMap<String, f64> = HashMap::new();
        for &(runs, _, c, pc) in &f.hot {
            let sym = t.symbols.get(&pc).map_or("?", String::as_str);
            let name = format!("{:#}", rustc_demangle::demangle(sym));
            *by_fn.entry(name).or_default() += runs as f64 * c;
        }
        let mut by_fn: Vec<(String, f64)> = by_fn.into_iter().collect();
        by_fn.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (name, c) in by_fn.iter().take(show) {
            println!("    {:5.1}%  {name}", 100.0 * c / f.cycles);
        }
        print_blocks(tools, &t, &f, show)?;
    }
    Ok(())
}

/// The `n` blocks that take most time, with their instructions.
fn print_blocks(tools: &(String, String), t: &Trace, f: &Figures, n: usize) -> Result<()> {
    for &(runs, len, c, pc) in f.hot.iter().take(n) {
        let sym = t.symbols.get(&pc).map_or("?", String::as_str);
        println!(
            "    block {pc:#x} ({:#}): {runs} runs x {len} instructions, {c:.1} cycles a pass \
             ({:.1}% of the time)",
            rustc_demangle::demangle(sym),
            100.0 * runs as f64 * c / f.cycles
        );
        let asm = disassemble(tools, &t.blocks[&pc])?;
        for l in asm.lines().filter(|l| !l.trim_start().starts_with('.')) {
            println!("      {}", l.trim());
        }
    }
    Ok(())
}

/// The instructions of `words` in LLVM's assembly syntax.
fn disassemble(tools: &(String, String), words: &[u32]) -> Result<String> {
    let bytes: Vec<String> = words
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .map(|b| format!("{b:#04x}"))
        .collect();
    pipe(
        Command::new(&tools.0).args(["--disassemble", "-triple=aarch64", MATTR]),
        &bytes.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_parse_and_bad_ones_are_refused() {
        let c: Case = "T2:1536x576".parse().unwrap();
        assert_eq!(
            (c.kernel.as_str(), c.rows, c.cols, c.tokens),
            ("T2", 1536, 576, 1)
        );
        let c: Case = "Q4W:32x576x16".parse().unwrap();
        assert_eq!((c.rows, c.cols, c.tokens), (32, 576, 16));
        for bad in ["T2", "T2:1536", "T2:0x576", "T2:1x2x3x4", "T2:ax576"] {
            assert!(bad.parse::<Case>().is_err(), "{bad} parsed");
        }
        for c in DEFAULT_CASES {
            c.parse::<Case>().unwrap();
        }
    }

    /// A log in qemu 7.2's format: the markers' blocks, a loop block run three times between
    /// them (listed once, retranslated once), and runs outside the markers that do not count.
    #[test]
    fn log_runs_between_the_markers_are_counted() {
        let log = "\
IN: main
0x5500000100:  d503201f  nop
0x5500000104:  14000001  b #0x4

Trace 0: 0x7f00 [00000000/0000005500000100/00000001/00000200] main
----------------
IN: edgellm_trace_begin
0x5500000200:  d65f03c0  ret

Trace 0: 0x7f10 [00000000/0000005500000200/00000001/00000200] edgellm_trace_begin
IN: kernel
0x5500000300:  91000421  add x1, x1, #1
0x5500000304:  54ffffe1  b.ne #0x5500000300

Trace 0: 0x7f20 [00000000/0000005500000300/00000001/00000200] kernel
Trace 0: 0x7f20 [00000000/0000005500000300/00000001/00000200] kernel
IN: kernel
0x5500000300:  d503201f  nop

Trace 0: 0x7f20 [00000000/0000005500000300/00000001/00000200] kernel
Trace 0: 0x7f30 [00000000/0000005500000400/00000001/00000200] edgellm_trace_end
Trace 0: 0x7f20 [00000000/0000005500000300/00000001/00000200] kernel
";
        let (blocks, runs, symbols) = read_log(log.as_bytes(), MARK_BEGIN, MARK_END).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[&0x5500000300], 3);
        assert_eq!(symbols[&0x5500000300], "kernel");
        assert_eq!(blocks[&0x5500000300], vec![0x91000421, 0x54ffffe1]);
        assert_eq!(blocks[&0x5500000100].len(), 2);
        // No run between the markers, or a run of an unlisted block: errors.
        assert!(read_log(log.as_bytes(), "absent", MARK_END).is_err());
        let unlisted =
            "Trace 0: 0x1 [0/10/0/0] b\nTrace 0: 0x1 [0/20/0/0] k\nTrace 0: 0x1 [0/30/0/0] e\n";
        assert!(read_log(unlisted.as_bytes(), "b", "e").is_err());
    }

    /// A loop body split by a page boundary is joined, also to the block that entered the loop
    /// from above; a block ending elsewhere, or followers whose run counts do not add up, are
    /// left alone.
    #[test]
    fn blocks_split_at_a_page_boundary_are_joined() {
        let mut blocks = HashMap::from([
            (0x1ff8, vec![1, 2]),
            (0x2000, vec![3]),
            (0x2004, vec![4]),
            (0x2ffc, vec![5]),
            (0x3000, vec![6]),
            (0x3ff0, vec![7, 8, 9, 10]),
            (0x3ffc, vec![11]),
            (0x4000, vec![12]),
            (0x4ffc, vec![13]),
            (0x5000, vec![14]),
        ]);
        let mut runs = HashMap::from([
            (0x1ff8, 10),
            (0x2000, 10),
            (0x2004, 10),
            (0x2ffc, 3),
            (0x3000, 4),
            (0x3ff0, 2),
            (0x3ffc, 7),
            (0x4000, 9),
            (0x4ffc, 7),
            (0x5000, 7),
        ]);
        join_page_splits(&mut blocks, &mut runs);
        assert_eq!(blocks[&0x1ff8], vec![1, 2, 3]);
        assert!(!blocks.contains_key(&0x2000) && !runs.contains_key(&0x2000));
        assert_eq!(blocks[&0x2004], vec![4]);
        assert_eq!((blocks[&0x2ffc].len(), blocks[&0x3000].len()), (1, 1));
        // The loop (0x3ffc, 7 runs) and its entry from above (0x3ff0, 2 runs) both run on into
        // 0x4000 (9 runs).
        assert_eq!(blocks[&0x3ff0], vec![7, 8, 9, 10, 12]);
        assert_eq!(blocks[&0x3ffc], vec![11, 12]);
        assert!(!blocks.contains_key(&0x4000));
        assert_eq!(blocks[&0x4ffc], vec![13, 14]);
        assert_eq!(runs.len(), 7);
    }
}
