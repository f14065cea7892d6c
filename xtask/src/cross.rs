//! `cargo xtask test-cross`: the kernel and runtime test suites built for aarch64 and run under
//! qemu with each board's CPU model, so NEON and dot-product kernels are checked against the scalar
//! specification on the processors they ship on, and the tier each CPU gets is asserted.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "aarch64-unknown-linux-gnu";
pub(crate) const SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// qemu CPU models of the boards, and the kernel tier each must select.
pub const CPUS: &[(&str, &str)] = &[
    ("cortex-a53", "neon"),          // Pi Zero 2 W
    ("cortex-a72", "neon"),          // Pi 4
    ("cortex-a76", "neon-dotprod"),  // Pi 5
    ("neoverse-n1", "neon-dotprod"), // stands in for the Orin's Cortex-A78AE
];

/// Debian packages the cross tests need.
const PACKAGES: &[(&str, &str)] = &[
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("qemu-aarch64", "qemu-user"),
];

pub(crate) fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs the cross linker and qemu with apt when they are missing (as root), or says exactly
/// what to install.
pub(crate) fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() || !PathBuf::from(SYSROOT).join("lib").exists() {
        let mut pkgs = missing.clone();
        pkgs.push("libc6-dev-arm64-cross");
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        if !is_root {
            bail!(
                "the cross tests need these Debian packages: sudo apt-get install {}",
                pkgs.join(" ")
            );
        }
        crate::run(Command::new("apt-get").arg("update"))?;
        crate::run(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&pkgs),
        )?;
    }
    crate::run(Command::new("rustup").args(["target", "add", TARGET]))
}

/// Builds the test executables of `packages` for aarch64 and returns (package, path) pairs.
fn build_tests(packages: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = crate::cargo();
    cmd.args([
        "test",
        "--release",
        "--no-run",
        "--message-format=json",
        "--target",
        TARGET,
    ])
    .env(
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
        "aarch64-linux-gnu-gcc",
    )
    .current_dir(crate::root());
    for p in packages {
        cmd.args(["-p", p]);
    }
    eprintln!("$ {cmd:?}");
    let out = cmd.output().context("cannot run cargo")?;
    if !out.status.success() {
        bail!(
            "cross build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["profile"]["test"] == true {
            if let Some(exe) = v["executable"].as_str() {
                let pkg = v["package_id"].as_str().unwrap_or("").to_string();
                exes.push((pkg, PathBuf::from(exe)));
            }
        }
    }
    Ok(exes)
}

/// Runs one test executable under qemu with `cpu`; returns (passed, failed).
fn qemu(exe: &PathBuf, cpu: &str, tier: &str, filter: &[&str]) -> Result<(u64, u64)> {
    let mut cmd = Command::new("qemu-aarch64");
    cmd.args(["-cpu", cpu, "-L", SYSROOT]).arg(exe).args(filter);
    cmd.env("EDGELLM_EXPECT_TIER", tier);
    let name = exe
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_string();
    eprintln!("== {cpu}: {name} {}", filter.join(" "));
    crate::run_counting(&mut cmd).with_context(|| format!("{name} under qemu -cpu {cpu}"))
}

/// Builds and runs the cross suites; returns (passed, failed) over every CPU model.
pub fn test_cross() -> Result<(u64, u64)> {
    ensure_tools()?;
    let (mut passed, mut failed) = (0, 0);
    // Kernels and the runtime core: every test, on every board CPU.
    let suites = build_tests(&["edgellm-kernels", "edgellm-core"])?;
    for (cpu, tier) in CPUS {
        for (_, exe) in &suites {
            let (p, f) = qemu(exe, cpu, tier, &[])?;
            passed += p;
            failed += f;
        }
    }
    // The end-to-end golden test on the real model (fast path), on the smallest and the largest
    // board CPU.
    let e2e = build_tests(&["edgellm-tests"])?;
    for (_, exe) in e2e.iter().filter(|(_, e)| {
        e.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("reference-"))
    }) {
        for (cpu, tier) in [CPUS[0], CPUS[2]] {
            let (p, f) = qemu(
                exe,
                cpu,
                tier,
                &["fast_path_matches_reference", "prompt_ids_match_reference"],
            )?;
            passed += p;
            failed += f;
        }
    }
    Ok((passed, failed))
}
