//! `target/images/<board>/`: the board's tarball, its Debian package and `SHA256SUMS`.

use crate::unit;
use anyhow::{bail, Context, Result};
use edgellm_board::Board;
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The package version (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn write(path: &Path, text: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    write(to, &bytes, mode)
}

/// The README that goes into the tarball.
fn readme(board: &Board, deb: &str) -> String {
    format!(
        "EdgeLLM {VERSION} for the {desc}\n\n\
         Debian-based OS (Raspberry Pi OS, JetPack): copy {deb} to the board, then\n\
         \x20   sudo apt install ./{deb}\n\
         \x20   sudoedit {cfg}      # set model = \"/path/to/model.gguf\" unless one is packaged\n\
         \x20   sudo systemctl restart edgellm\n\
         \x20   systemctl status edgellm\n\n\
         By hand: install edgellm as {bin}, edgellm.toml as {cfg},\n\
         edgellm.service as {unit_path}, create the system user `edgellm`, then\n\
         \x20   sudo systemctl daemon-reload && sudo systemctl enable --now edgellm\n",
        desc = board.description,
        cfg = unit::CONFIG_PATH,
        bin = unit::BIN_PATH,
        unit_path = unit::UNIT_PATH,
    )
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = fs::read(path)?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

fn du_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        total += if meta.is_dir() {
            du_kib(&e.path())?
        } else {
            meta.len().div_ceil(1024)
        };
    }
    Ok(total)
}

fn tool(cmd: &mut Command) -> Result<String> {
    eprintln!("$ {cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes the files the package installs under `root` (as they lie under `/` on the board): the
/// stripped binary, the config with the board's defaults, the systemd unit, the model when given,
/// and the Debian copyright and changelog. `cargo xtask image` copies the same tree into an SD
/// card image.
pub fn stage(board: &Board, exe: &Path, model: Option<&Path>, root: &Path) -> Result<()> {
    let rel = |p: &str| root.join(p.trim_start_matches('/'));
    let model_name = model
        .and_then(|m| m.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    let config = unit::config(board, model_name.as_deref());
    let service = unit::unit(board);
    copy(exe, &rel(unit::BIN_PATH), 0o755)?;
    // A stripped binary: the board does not need the symbols, and lintian asks for it.
    let _ = tool(Command::new("llvm-strip").arg(rel(unit::BIN_PATH)))
        .or_else(|_| tool(Command::new("aarch64-linux-gnu-strip").arg(rel(unit::BIN_PATH))))
        .or_else(|_| {
            tool(
                Command::new("python3")
                    .args(["-m", "ziglang", "objcopy", "--strip-all"])
                    .arg(rel(unit::BIN_PATH))
                    .arg(rel(unit::BIN_PATH)),
            )
        });
    write(&rel(unit::CONFIG_PATH), config.as_bytes(), 0o644)?;
    write(&rel(unit::UNIT_PATH), service.as_bytes(), 0o644)?;
    if let (Some(m), Some(name)) = (model, &model_name) {
        let to = rel(&format!("{}/{name}", unit::MODEL_DIR));
        fs::create_dir_all(to.parent().context("model path has a parent")?)?;
        fs::copy(m, &to).with_context(|| format!("cannot copy {}", m.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o644))?;
    }
    let doc = rel("/usr/share/doc/edgellm");
    write(&doc.join("copyright"), copyright().as_bytes(), 0o644)?;
    write(&doc.join("changelog"), changelog().as_bytes(), 0o644)?;
    tool(
        Command::new("gzip")
            .args(["-9nf"])
            .arg(doc.join("changelog")),
    )?;
    for dir in walk_dirs(root)? {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Writes the tarball, the .deb and SHA256SUMS for `board` into `out`; returns the .deb's path.
pub fn package(
    board: &Board,
    triple: &str,
    exe: &Path,
    model: Option<&Path>,
    glibc: (u32, u32),
    out: &Path,
) -> Result<PathBuf> {
    if out.exists() {
        fs::remove_dir_all(out)?;
    }
    fs::create_dir_all(out)?;
    let arch = if board.target_triple == "native" {
        tool(Command::new("dpkg").arg("--print-architecture"))?
            .trim()
            .to_string()
    } else {
        unit::deb_arch(triple).to_string()
    };
    let model_name = model
        .and_then(|m| m.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    let config = unit::config(board, model_name.as_deref());
    let service = unit::unit(board);
    let deb_name = format!("edgellm_{VERSION}_{arch}.deb");

    // The package tree.
    let staging = out.join(".staging");
    let root = staging.join("deb");
    let rel = |p: &str| root.join(p.trim_start_matches('/'));
    stage(board, exe, model, &root)?;
    let size = du_kib(&root)?;
    let debian = root.join("DEBIAN");
    write(
        &debian.join("control"),
        unit::control(board, VERSION, &arch, glibc, size).as_bytes(),
        0o644,
    )?;
    write(
        &debian.join("conffiles"),
        format!("{}\n", unit::CONFIG_PATH).as_bytes(),
        0o644,
    )?;
    // md5sums of every file outside DEBIAN, as dpkg records them.
    let files = tool(
        Command::new("sh")
            .arg("-c")
            .arg("find . -path ./DEBIAN -prune -o -type f -printf '%P\\n' | LC_ALL=C sort | xargs md5sum")
            .current_dir(&root),
    )?;
    write(&debian.join("md5sums"), files.as_bytes(), 0o644)?;
    for (name, text) in unit::maintainer_scripts() {
        write(&debian.join(name), text.as_bytes(), 0o755)?;
    }
    for dir in walk_dirs(&root)? {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    }
    let deb = out.join(&deb_name);
    tool(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group", "-Zxz"])
            .arg(&root)
            .arg(&deb),
    )?;

    // The tarball: binary, unit, config, README (and the model when given).
    let tar_dir_name = format!("edgellm-{VERSION}-{}", board.name);
    let tar_dir = staging.join(&tar_dir_name);
    copy(&rel(unit::BIN_PATH), &tar_dir.join("edgellm"), 0o755)?;
    write(&tar_dir.join("edgellm.service"), service.as_bytes(), 0o644)?;
    write(&tar_dir.join("edgellm.toml"), config.as_bytes(), 0o644)?;
    write(
        &tar_dir.join("README"),
        readme(board, &deb_name).as_bytes(),
        0o644,
    )?;
    if let (Some(m), Some(name)) = (model, &model_name) {
        copy(m, &tar_dir.join(name), 0o644)?;
    }
    let tarball = out.join(format!("{tar_dir_name}.tar.gz"));
    tool(
        Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner", "-czf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&staging)
            .arg(&tar_dir_name),
    )?;
    fs::remove_dir_all(&staging)?;

    let mut sums = String::new();
    for f in [&tarball, &deb] {
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        sums.push_str(&format!("{}  {name}\n", sha256_file(f)?));
    }
    write(&out.join("SHA256SUMS"), sums.as_bytes(), 0o644)?;
    println!("wrote {}:", out.display());
    for f in [&tarball, &deb] {
        println!(
            "  {} ({} KiB)",
            f.file_name().unwrap_or_default().to_string_lossy(),
            fs::metadata(f)?.len().div_ceil(1024)
        );
    }
    println!("  SHA256SUMS");
    Ok(deb)
}

fn walk_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = vec![dir.to_path_buf()];
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            dirs.extend(walk_dirs(&e.path())?);
        }
    }
    Ok(dirs)
}

fn copyright() -> String {
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
     Upstream-Name: edgellm\n\
     \n\
     Files: *\n\
     Copyright: 2026 EdgeLLM contributors\n\
     License: Apache-2.0\n\
     \x20On Debian systems the full text of the Apache License 2.0 is in\n\
     \x20/usr/share/common-licenses/Apache-2.0.\n"
        .to_string()
}

/// The Debian changelog of the (native) package: one entry for this version.
fn changelog() -> String {
    format!(
        "edgellm ({VERSION}) stable; urgency=medium\n\n\
         \x20 * Release {VERSION}.\n\n\
         \x20-- EdgeLLM maintainers <edgellm@example.invalid>  Sun, 29 Nov 2026 00:00:00 +0000\n"
    )
}

/// The checks a board's .deb must pass in CI: `dpkg-deb --info` and `--contents` show the package
/// and the files it installs, `lintian` finds no errors (its warnings are printed), and where
/// systemd-analyze exists (`analyze`) the unit passes `verify` and `security --offline=true` rates
/// it 2.5 or better. Returns the exposure score when measured.
pub fn check_deb(board: &Board, deb: &Path, analyze: bool) -> Result<Option<f64>> {
    let info = tool(Command::new("dpkg-deb").arg("--info").arg(deb))?;
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{k}: ")))
            .map(str::to_string)
    };
    let arch = field("Architecture").unwrap_or_default();
    if field("Package").as_deref() != Some("edgellm") || field("Version").is_none() {
        bail!(
            "{}: dpkg-deb --info shows no edgellm package:\n{info}",
            deb.display()
        );
    }
    if board.target_triple != "native" && arch != "arm64" {
        bail!("{}: Architecture {arch:?}, not arm64", deb.display());
    }
    let depends = field("Depends").unwrap_or_default();
    println!(
        "dpkg-deb --info: edgellm {} {arch}, Depends: {depends}, Installed-Size: {} KiB",
        field("Version").unwrap_or_default(),
        field("Installed-Size").unwrap_or_default()
    );
    for script in ["postinst", "prerm", "postrm", "conffiles", "md5sums"] {
        if !info.contains(script) {
            bail!("{}: no {script} in the control archive", deb.display());
        }
    }
    let contents = tool(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let paths: Vec<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for want in [
        unit::BIN_PATH,
        unit::CONFIG_PATH,
        unit::UNIT_PATH,
        "/usr/share/doc/edgellm/copyright",
    ] {
        if !paths.iter().any(|p| p.trim_start_matches('.') == want) {
            bail!("{}: dpkg-deb --contents has no {want}", deb.display());
        }
    }
    let root_owned = contents.lines().all(|l| l.contains(" root/root "));
    if !root_owned {
        bail!(
            "{}: files not owned by root/root:\n{contents}",
            deb.display()
        );
    }
    println!(
        "dpkg-deb --contents: {} entries, all root/root",
        paths.len()
    );

    let out = Command::new("lintian")
        .args([
            "--fail-on",
            "error",
            "--allow-root",
            "--no-tag-display-limit",
        ])
        .arg(deb)
        .output()
        .context("cannot start lintian (sudo apt-get install lintian)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E: ")).collect();
    let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("W: ")).collect();
    for l in warnings.iter().chain(&errors) {
        println!("  {l}");
    }
    println!(
        "lintian: {} errors, {} warnings",
        errors.len(),
        warnings.len()
    );
    if !out.status.success() || !errors.is_empty() {
        bail!(
            "lintian finds errors in {}: {}{}",
            deb.display(),
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    if !analyze {
        println!("systemd-analyze: not installed here; verify and security skipped");
        return Ok(None);
    }
    let dir = std::env::temp_dir().join(format!("edgellm-ci-unit-{}", std::process::id()));
    let result = unit::analyze(board, &dir);
    let _ = fs::remove_dir_all(&dir);
    let (report, score) = result?;
    println!("systemd-analyze verify: ok; security --offline=true: exposure {score}");
    if score > 2.5 {
        bail!("{}: exposure {score} > 2.5:\n{report}", board.name);
    }
    Ok(Some(score))
}
