//! `cargo xtask build --board B`: the release binary for a board, cross-compiled with the board's
//! CPU tuning against the oldest glibc of its OS, checked (ELF machine, GLIBC versions needed,
//! `--version` under qemu with the board's CPU), then packaged by [`crate::package`].

use crate::elf;
use anyhow::{bail, Context, Result};
use edgellm_board::Board;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every board the runtime is built for.
pub const BOARDS: &[Board] = &[
    edgellm_board_pi_zero_2w::BOARD,
    edgellm_board_pi4::BOARD,
    edgellm_board_pi5::BOARD,
    edgellm_board_jetson_nano::BOARD,
    edgellm_board_jetson_orin::BOARD,
    edgellm_board_host::BOARD,
];

/// The board called `name`, or an error listing the names.
pub fn board(name: &str) -> Result<Board> {
    BOARDS
        .iter()
        .copied()
        .find(|b| b.name == name)
        .with_context(|| {
            let names: Vec<&str> = BOARDS.iter().map(|b| b.name).collect();
            format!("unknown board {name:?}; boards: {}", names.join(", "))
        })
}

/// Whether the board is the build machine itself (no cross-compilation, no emulation).
fn is_host(board: &Board) -> bool {
    board.target_triple == "native"
}

/// The target triple cargo builds for.
pub fn triple(board: &Board) -> String {
    if is_host(board) {
        host_triple()
    } else {
        board.target_triple.to_string()
    }
}

fn host_triple() -> String {
    let arch = std::env::consts::ARCH;
    format!("{arch}-unknown-linux-gnu")
}

/// `RUSTFLAGS` for the board: its CPU and feature tuning.
pub fn rustflags(board: &Board) -> String {
    let mut flags = Vec::new();
    if !board.target_cpu.is_empty() {
        flags.push(format!("-C target-cpu={}", board.target_cpu));
    }
    if !board.target_features.is_empty() {
        flags.push(format!("-C target-feature={}", board.target_features));
    }
    flags.join(" ")
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Adds the rustup target and installs cargo-zigbuild and zig from PyPI when missing; says
/// exactly what is missing when it cannot.
fn ensure_tools(board: &Board, triple: &str) -> Result<()> {
    if is_host(board) {
        return Ok(());
    }
    crate::run(Command::new("rustup").args(["target", "add", triple]))?;
    let zig_ok = have("zig")
        || Command::new("python3")
            .args(["-m", "ziglang", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !have("cargo-zigbuild") || !zig_ok {
        eprintln!("installing cargo-zigbuild and ziglang from PyPI");
        crate::pip_install(&["cargo-zigbuild", "ziglang"]).context(
            "cargo-zigbuild and zig are needed to link against the board's glibc: \
             python3 -m pip install cargo-zigbuild ziglang",
        )?;
    }
    let mut missing = Vec::new();
    if !have("qemu-aarch64") {
        missing.push("qemu-user (qemu-aarch64)");
    }
    if !Path::new("/usr/aarch64-linux-gnu/lib").exists() {
        missing.push("libc6-arm64-cross (/usr/aarch64-linux-gnu, for qemu -L)");
    }
    if !have("dpkg-deb") {
        missing.push("dpkg (dpkg-deb)");
    }
    if !missing.is_empty() {
        bail!(
            "missing: {}; install with: sudo apt-get install qemu-user libc6-arm64-cross dpkg",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The target directory cargo writes to.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                crate::root().join(p)
            }
        })
        .unwrap_or_else(|| crate::root().join("target"))
}

/// Builds the board's binary and returns its path.
fn compile(board: &Board, triple: &str, features: &[String]) -> Result<PathBuf> {
    let mut cmd = crate::cargo();
    let mut feats = vec![format!("board-{}", board.name)];
    // Boards with a CUDA GPU get the CUDA backend (loaded at run time: no CUDA is needed to
    // build, and the binary falls back to the CPU where no driver is found).
    if board.cuda_arch.is_some() {
        feats.push("cuda".into());
    }
    feats.extend(features.iter().cloned());
    if is_host(board) {
        cmd.args(["build", "--release"]);
    } else {
        // zig links against the board's glibc: the floor is part of the target name.
        let (maj, min) = board.glibc_floor;
        cmd.args(["zigbuild", "--release", "--target"])
            .arg(format!("{triple}.{maj}.{min}"));
        for (k, _) in std::env::vars() {
            if k.starts_with("CARGO_TARGET_") && k.ends_with("_LINKER") {
                cmd.env_remove(k);
            }
        }
    }
    cmd.args(["-p", "edgellm", "--no-default-features", "--features"])
        .arg(feats.join(","));
    cmd.env("RUSTFLAGS", rustflags(board));
    crate::run(&mut cmd)?;
    let dir = if is_host(board) {
        target_dir().join("release")
    } else {
        target_dir().join(triple).join("release")
    };
    Ok(dir.join("edgellm"))
}

/// Fails when a binary needing GLIBC `max` would not start on the board's OS.
pub fn within_floor(board: &Board, max: (u32, u32)) -> Result<()> {
    let (fmaj, fmin) = board.glibc_floor;
    if max > board.glibc_floor {
        bail!(
            "the binary needs GLIBC_{}.{} but the {} ships glibc {fmaj}.{fmin}: it would not start \
             there (link with `cargo zigbuild --target {}.{fmaj}.{fmin}`)",
            max.0,
            max.1,
            board.name,
            board.target_triple
        );
    }
    Ok(())
}

/// The checks a board binary must pass; returns the highest GLIBC version it needs.
fn verify(board: &Board, exe: &Path) -> Result<(u32, u32)> {
    let bytes = std::fs::read(exe).with_context(|| format!("cannot read {}", exe.display()))?;
    let info =
        elf::inspect(&bytes).with_context(|| format!("{} is not a usable ELF", exe.display()))?;
    let want = if is_host(board) {
        match std::env::consts::ARCH {
            "aarch64" => elf::EM_AARCH64,
            _ => elf::EM_X86_64,
        }
    } else {
        elf::EM_AARCH64
    };
    if info.machine != want {
        bail!(
            "{}: ELF machine {} where the {} needs {want}",
            exe.display(),
            info.machine,
            board.name
        );
    }
    println!(
        "ELF machine: {} ({})",
        info.machine,
        if want == elf::EM_AARCH64 {
            "aarch64"
        } else {
            "x86-64"
        }
    );
    let max = info.max_glibc().unwrap_or((0, 0));
    let (fmaj, fmin) = board.glibc_floor;
    println!(
        "GLIBC needed: {}.{} (board floor {fmaj}.{fmin})",
        max.0, max.1
    );
    if is_host(board) {
        println!("host build: runs where it was built; floor not enforced");
    } else {
        within_floor(board, max).with_context(|| exe.display().to_string())?;
    }
    let mut cmd = if is_host(board) {
        Command::new(exe)
    } else {
        let mut c = Command::new("qemu-aarch64");
        c.args(["-cpu", board.qemu_cpu, "-L", "/usr/aarch64-linux-gnu"])
            .arg(exe);
        c
    };
    cmd.arg("--version");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{} --version failed under qemu -cpu {} ({}): {}",
            exe.display(),
            board.qemu_cpu,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "qemu-aarch64 -cpu {} --version: {}",
        board.qemu_cpu,
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(max)
}

/// What `cargo xtask build` made for a board.
pub struct Built {
    /// The board binary (unstripped, in the target directory).
    pub exe: PathBuf,
    /// The highest GLIBC version it needs.
    pub glibc: (u32, u32),
    /// The Debian package.
    pub deb: PathBuf,
}

/// Builds and checks the board's binary (the cross build, the ELF and GLIBC checks and
/// `--version` under qemu); returns it with the highest GLIBC version it needs.
pub fn board_binary(board: &Board, features: &[String]) -> Result<(PathBuf, (u32, u32))> {
    let triple = triple(board);
    ensure_tools(board, &triple)?;
    let exe = compile(board, &triple, features)?;
    let glibc = verify(board, &exe)?;
    Ok((exe, glibc))
}

/// Checks a prebuilt binary for `board` without running it: an ELF for the board's machine that
/// needs no newer glibc than the board's OS ships. Returns the highest GLIBC version it needs.
pub fn check_prebuilt(board: &Board, exe: &Path) -> Result<(u32, u32)> {
    let bytes = std::fs::read(exe).with_context(|| format!("cannot read {}", exe.display()))?;
    let info =
        elf::inspect(&bytes).with_context(|| format!("{} is not a usable ELF", exe.display()))?;
    if !is_host(board) && info.machine != elf::EM_AARCH64 {
        bail!(
            "{}: ELF machine {} where the {} needs aarch64 ({})",
            exe.display(),
            info.machine,
            board.name,
            elf::EM_AARCH64
        );
    }
    let max = info.max_glibc().unwrap_or((0, 0));
    if !is_host(board) {
        within_floor(board, max).with_context(|| exe.display().to_string())?;
    }
    Ok(max)
}

/// The directory `cargo xtask build --board` writes the board's files to.
pub fn images_dir(board: &Board) -> PathBuf {
    crate::root().join("target/images").join(board.name)
}

/// `cargo xtask build`.
pub fn build(name: &str, model: Option<&Path>, features: &[String]) -> Result<Built> {
    let board = board(name)?;
    let triple = triple(&board);
    if let Some(m) = model {
        if !m.is_file() {
            bail!("--model {}: no such file", m.display());
        }
    }
    let (exe, glibc) = board_binary(&board, features)?;
    let out = images_dir(&board);
    let deb = crate::package::package(&board, &triple, &exe, model, glibc, &out)?;
    Ok(Built { exe, glibc, deb })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_floor_is_enforced() {
        let nano = board("jetson-nano").unwrap();
        assert!(within_floor(&nano, (2, 27)).is_ok());
        assert!(within_floor(&nano, (2, 17)).is_ok());
        let err = within_floor(&nano, (2, 34)).unwrap_err().to_string();
        assert!(err.contains("GLIBC_2.34") && err.contains("2.27"), "{err}");
        assert!(within_floor(&board("pi5").unwrap(), (2, 36)).is_ok());
        assert!(within_floor(&board("jetson-orin").unwrap(), (2, 32)).is_err());
    }

    #[test]
    fn boards_resolve_with_their_tuning() {
        assert!(board("pi6").unwrap_err().to_string().contains("pi-zero-2w"));
        assert_eq!(
            rustflags(&board("pi-zero-2w").unwrap()),
            "-C target-cpu=cortex-a53 -C target-feature=-aes,-sha2"
        );
        assert_eq!(
            rustflags(&board("pi5").unwrap()),
            "-C target-cpu=cortex-a76"
        );
        assert_eq!(rustflags(&board("host").unwrap()), "");
        for b in BOARDS.iter().filter(|b| !is_host(b)) {
            assert_eq!(triple(b), "aarch64-unknown-linux-gnu");
        }
    }
}
