//! `cargo xtask deploy` with stand-in `ssh` and `scp` first on PATH: they log their arguments, so
//! the test checks the command lines a board would receive.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgellm-deploy-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `ssh` and `scp` that append their arguments (one per line, then a blank line) to `log`; `ssh`
/// answers `systemctl is-active` with `state`.
fn fake_clients(dir: &Path, state: &str) -> (PathBuf, PathBuf) {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let log = dir.join("log");
    for name in ["ssh", "scp"] {
        let script = format!(
            "#!/bin/sh\n{{ echo {name}; for a in \"$@\"; do echo \"$a\"; done; echo; }} >> '{}'\n\
             case \"$*\" in *'systemctl is-active'*) echo {state}; [ {state} = active ] ;; esac\n",
            log.display()
        );
        let p = bin.join(name);
        fs::write(&p, script).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    (bin, log)
}

fn deploy(bin: &Path, args: &[&str]) -> Output {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("deploy")
        .args(args)
        .env("PATH", path)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// The logged invocations: each is the program name followed by its arguments.
fn calls(log: &Path) -> Vec<Vec<String>> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .split("\n\n")
        .filter(|c| !c.trim().is_empty())
        .map(|c| c.lines().map(str::to_string).collect())
        .collect()
}

#[test]
fn deploy_copies_installs_and_restarts_with_ssh() {
    let dir = scratch("ok");
    let (bin, log) = fake_clients(&dir, "active");
    let deb = dir.join("edgellm_0.1.0_arm64.deb");
    fs::write(&deb, b"!<arch>\n").unwrap();
    let out = deploy(
        &bin,
        &[
            "--board",
            "jetson-orin",
            "--host",
            "nvidia@orin.local",
            "--deb",
            deb.to_str().unwrap(),
            "--ssh-option",
            "Port=2222",
            "--ssh-option",
            "StrictHostKeyChecking=accept-new",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let opts = ["-o", "Port=2222", "-o", "StrictHostKeyChecking=accept-new"];
    let expect = |prog: &str, rest: &[&str]| -> Vec<String> {
        std::iter::once(prog)
            .chain(opts)
            .chain(rest.iter().copied())
            .map(str::to_string)
            .collect()
    };
    let deb_s = deb.to_str().unwrap();
    assert_eq!(
        calls(&log),
        vec![
            expect(
                "scp",
                &[
                    "--",
                    deb_s,
                    "nvidia@orin.local:/tmp/edgellm_0.1.0_arm64.deb"
                ]
            ),
            expect(
                "ssh",
                &[
                    "--",
                    "nvidia@orin.local",
                    "sudo apt-get install -y '/tmp/edgellm_0.1.0_arm64.deb' && rm -f \
                     '/tmp/edgellm_0.1.0_arm64.deb' && sudo systemctl daemon-reload && sudo \
                     systemctl restart edgellm"
                ]
            ),
            expect(
                "ssh",
                &["--", "nvidia@orin.local", "systemctl is-active edgellm"]
            ),
        ]
    );
    assert!(
        stdout.contains("edgellm.service on nvidia@orin.local: active"),
        "{stdout}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn deploy_reports_an_inactive_service() {
    let dir = scratch("failed");
    let (bin, _) = fake_clients(&dir, "failed");
    let deb = dir.join("edgellm_0.1.0_arm64.deb");
    fs::write(&deb, b"!<arch>\n").unwrap();
    let out = deploy(
        &bin,
        &[
            "--board",
            "pi5",
            "--host",
            "pi@raspberrypi.local",
            "--deb",
            deb.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the service is \"failed\", not active"),
        "{err}"
    );
    assert!(err.contains("journalctl -u edgellm"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn deploy_without_the_package_says_how_to_build_it() {
    let dir = scratch("missing");
    let (bin, log) = fake_clients(&dir, "active");
    let missing = dir.join("edgellm_0.1.0_arm64.deb");
    let out = deploy(
        &bin,
        &[
            "--board",
            "pi5",
            "--host",
            "pi@raspberrypi.local",
            "--deb",
            missing.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such file"), "{err}");
    assert!(err.contains("cargo xtask build --board pi5"), "{err}");
    assert!(calls(&log).is_empty(), "ssh or scp ran: {:?}", calls(&log));
    fs::remove_dir_all(&dir).unwrap();
}
