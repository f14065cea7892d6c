//! `cargo xtask deploy --board B --host user@address`: copies the board's .deb with `scp`, installs
//! it with `ssh` (`sudo apt-get install -y`), restarts the service and shows whether it is active.
//! The system's OpenSSH clients do the transport, so keys, `~/.ssh/config` and agents work as
//! they do for the user.

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The .deb `cargo xtask build --board` left for `board` in `target/images/<board>/`.
fn built_deb(board: &edgellm_board::Board) -> Result<PathBuf> {
    let dir = crate::build::images_dir(board);
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    match debs.len() {
        0 => bail!(
            "no .deb in {}: run `cargo xtask build --board {}` first",
            dir.display(),
            board.name
        ),
        1 => Ok(debs.remove(0)),
        _ => bail!(
            "several .deb files in {}; name one with --deb",
            dir.display()
        ),
    }
}

/// `s` quoted for the remote POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn run_echoed(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?} (is OpenSSH's client installed?)"))?;
    ensure!(status.success(), "{cmd:?} failed ({status})");
    Ok(())
}

/// `cargo xtask deploy`.
pub fn deploy(board: &str, host: &str, deb: Option<&Path>, ssh_options: &[String]) -> Result<()> {
    let board = crate::build::board(board)?;
    let deb = match deb {
        Some(d) => {
            ensure!(
                d.is_file(),
                "--deb {}: no such file; build it with `cargo xtask build --board {}`",
                d.display(),
                board.name
            );
            d.to_path_buf()
        }
        None => built_deb(&board)?,
    };
    ensure!(
        !host.is_empty() && !host.starts_with('-'),
        "--host {host:?}: give user@address"
    );
    let name = deb
        .file_name()
        .context("the .deb path has no file name")?
        .to_string_lossy()
        .into_owned();
    let remote = format!("/tmp/{name}");
    let opts: Vec<String> = ssh_options
        .iter()
        .flat_map(|o| ["-o".to_string(), o.clone()])
        .collect();

    println!("copying {} to {host}:{remote}", deb.display());
    run_echoed(
        Command::new("scp")
            .args(&opts)
            .arg("--")
            .arg(&deb)
            .arg(format!("{host}:{remote}")),
    )?;
    let r = sh_quote(&remote);
    let install = format!(
        "sudo apt-get install -y {r} && rm -f {r} && sudo systemctl daemon-reload && sudo systemctl restart edgellm"
    );
    println!("installing on {host}");
    run_echoed(
        Command::new("ssh")
            .args(&opts)
            .arg("--")
            .arg(host)
            .arg(&install),
    )?;

    let mut status = Command::new("ssh");
    status
        .args(&opts)
        .arg("--")
        .arg(host)
        .arg("systemctl is-active edgellm");
    eprintln!("$ {status:?}");
    let out = status
        .output()
        .with_context(|| format!("cannot start {status:?}"))?;
    let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
    println!("edgellm.service on {host}: {state}");
    if state != "active" {
        bail!(
            "the service is {state:?}, not active: see `ssh {host} journalctl -u edgellm`; it does \
             not start until /etc/edgellm/edgellm.toml names a model (or the package ships one: \
             `cargo xtask build --board {} --model ...`)",
            board.name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_for_the_remote_shell() {
        assert_eq!(super::sh_quote("/tmp/a b.deb"), "'/tmp/a b.deb'");
        assert_eq!(super::sh_quote("it's"), "'it'\\''s'");
    }
}
