//! `edgellm serve`'s options: the command-line flags, the TOML config file
//! (`/etc/edgellm/edgellm.toml` when present, or `--config FILE`), and the settings that result
//! (a flag overrides the file, the file overrides the default).

use crate::{ModelArgs, RtArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The config file read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG: &str = "/etc/edgellm/edgellm.toml";

#[derive(Args, Clone, Debug, Default)]
pub struct ServeArgs {
    /// Model file (GGUF); may come from the config file instead.
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1: loopback only).
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (default 11434, Ollama's).
    #[arg(long)]
    pub port: Option<u16>,
    /// TOML config file (default: /etc/edgellm/edgellm.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health (also settable with
    /// EDGELLM_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Requests that may wait for the inference thread; one more is refused with 503 (default 8).
    #[arg(long)]
    pub queue: Option<usize>,
    /// The name clients use for the model (default: the file name without `.gguf`).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Largest request body in bytes (default 1 MiB).
    #[arg(long)]
    pub max_body: Option<usize>,
    /// Seconds SIGTERM waits for running requests before cancelling them (default 10).
    #[arg(long)]
    pub drain_seconds: Option<u64>,
    /// Open connections at most; more wait to be accepted (default 64).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a request's headers, and then its body; also how long an
    /// idle connection is kept open (default 30).
    #[arg(long)]
    pub request_timeout: Option<u64>,
    /// Worker threads for the forward pass (default: the board's).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Kernel tier to force: scalar, avx2, avx-vnni, avx512, neon, neon-dotprod.
    #[arg(long)]
    pub kernels: Option<String>,
    /// Context length in tokens (default: the board's, at most the model's).
    #[arg(short, long)]
    pub context: Option<usize>,
    /// Reference numeric path (dequantized weights, f32 activations).
    #[arg(long)]
    pub exact: bool,
    /// Read the model into memory backed by transparent huge pages instead of mapping the file
    /// (the default).
    #[arg(long, overrides_with = "mmap")]
    pub no_mmap: bool,
    /// Map the model file instead of reading it into memory (starts at once, decodes slower).
    #[arg(long, overrides_with = "no_mmap")]
    pub mmap: bool,
    /// Apply another board's defaults and memory budget.
    #[arg(long)]
    pub board: Option<String>,
    /// Where the forward pass runs: auto (CUDA on boards with a GPU and on the host, when the
    /// binary has the `cuda` feature and a usable device is present; else the CPU), cpu, cuda.
    #[arg(long, value_parser = ["auto", "cpu", "cuda"])]
    pub device: Option<String>,
    /// KV cache type: f16 or int8 (one scale per position and KV head).
    #[arg(long, value_parser = ["f16", "int8"])]
    pub kv_cache: Option<String>,
    /// Real-time execution of the inference thread(s).
    #[command(flatten)]
    pub realtime: RtArgs,
}

/// The config file: every key optional, unknown keys refused (a typo should not pass silently).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub model: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub api_key: Option<String>,
    pub queue: Option<usize>,
    pub model_name: Option<String>,
    pub max_body: Option<usize>,
    pub drain_seconds: Option<u64>,
    pub max_connections: Option<usize>,
    pub request_timeout: Option<u64>,
    pub threads: Option<usize>,
    pub kernels: Option<String>,
    pub context: Option<usize>,
    pub exact: Option<bool>,
    pub mmap: Option<bool>,
    pub board: Option<String>,
    pub device: Option<String>,
    pub kv_cache: Option<String>,
    /// Cores of the inference threads, the first for the inference thread itself.
    pub cores: Option<Vec<usize>>,
    /// SCHED_FIFO on (true) or off (false); unset: the board's default.
    pub rt: Option<bool>,
    pub rt_priority: Option<u8>,
    /// Lock memory (true) or not (false); unset: with SCHED_FIFO.
    pub lock_memory: Option<bool>,
    pub strict_rt: Option<bool>,
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        FileConfig::parse(&text).with_context(|| format!("in the config file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<FileConfig> {
        Ok(toml::from_str(text)?)
    }
}

/// A pair of flags (`--x`, `--no-x`) over the file's `x = true|false`: a flag given wins, else
/// the file's value turns on the matching flag, else neither is set (the default applies).
fn on_off((on, off): (bool, bool), file: Option<bool>) -> (bool, bool) {
    (
        on || (!off && file == Some(true)),
        off || (!on && file == Some(false)),
    )
}

/// The settings the service runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub model: ModelArgs,
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    pub queue: usize,
    pub model_name: String,
    pub max_body: usize,
    pub drain_seconds: u64,
    pub max_connections: usize,
    pub request_timeout: std::time::Duration,
}

impl Settings {
    /// Flags over the file (`--config`, else the default file if it exists) over the defaults.
    pub fn resolve(args: ServeArgs) -> Result<Settings> {
        let file = match &args.config {
            Some(p) => FileConfig::read(p)?,
            None if Path::new(DEFAULT_CONFIG).exists() => {
                FileConfig::read(Path::new(DEFAULT_CONFIG))?
            }
            None => FileConfig::default(),
        };
        Settings::merge(args, file)
    }

    pub fn merge(args: ServeArgs, file: FileConfig) -> Result<Settings> {
        let Some(model) = args.model.or(file.model) else {
            bail!("no model: give --model PATH or `model = \"PATH\"` in the config file");
        };
        if let Some(d) = file.device.as_deref() {
            if !["auto", "cpu", "cuda"].contains(&d) {
                bail!("device = \"{d}\": expected \"auto\", \"cpu\" or \"cuda\"");
            }
        }
        if let Some(k) = file.kv_cache.as_deref() {
            if !["f16", "int8"].contains(&k) {
                bail!("kv_cache = \"{k}\": expected \"f16\" or \"int8\"");
            }
        }
        let rt = args.realtime;
        let (mmap, no_mmap) = on_off((args.mmap, args.no_mmap), file.mmap);
        let (rt_on, rt_off) = on_off((rt.rt, rt.no_rt), file.rt);
        let (lock_on, lock_off) = on_off((rt.lock_memory, rt.no_lock_memory), file.lock_memory);
        let queue = args.queue.or(file.queue).unwrap_or(8);
        if queue == 0 {
            bail!("the queue must hold at least one request (--queue 1 or more)");
        }
        let request_timeout = args.request_timeout.or(file.request_timeout).unwrap_or(30);
        if request_timeout == 0 {
            bail!("the request timeout must be at least one second (--request-timeout 1 or more)");
        }
        let api_key = args
            .api_key
            .or(file.api_key)
            .or_else(|| std::env::var("EDGELLM_API_KEY").ok())
            .filter(|k| !k.is_empty());
        let model_name = args.model_name.or(file.model_name).unwrap_or_else(|| {
            model
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
                .trim_end_matches(".gguf")
                .to_string()
        });
        Ok(Settings {
            model: ModelArgs {
                model,
                threads: args.threads.or(file.threads),
                kernels: args.kernels.or(file.kernels),
                context: args.context.or(file.context),
                exact: args.exact || file.exact.unwrap_or(false),
                mmap,
                no_mmap,
                board: args.board.or(file.board),
                // Real-time settings: flags over the file over the board's defaults (on for the
                // real boards, off on the host).
                realtime: RtArgs {
                    cores: rt.cores.or(file.cores),
                    rt: rt_on,
                    no_rt: rt_off,
                    rt_priority: rt.rt_priority.or(file.rt_priority),
                    lock_memory: lock_on,
                    no_lock_memory: lock_off,
                    strict_rt: rt.strict_rt || file.strict_rt.unwrap_or(false),
                },
                device: args.device.or(file.device).unwrap_or_else(|| "auto".into()),
                kv_cache: args
                    .kv_cache
                    .or(file.kv_cache)
                    .unwrap_or_else(|| "f16".into()),
            },
            host: args
                .host
                .or(file.host)
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: args.port.or(file.port).unwrap_or(11434),
            api_key,
            queue,
            model_name,
            max_body: args.max_body.or(file.max_body).unwrap_or(1 << 20),
            drain_seconds: args.drain_seconds.or(file.drain_seconds).unwrap_or(10),
            max_connections: args.max_connections.or(file.max_connections).unwrap_or(64),
            request_timeout: std::time::Duration::from_secs(request_timeout),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig::parse(
            "model = \"/m/a.gguf\"\nport = 9000\nqueue = 4\nhost = \"0.0.0.0\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            port: Some(9100),
            ..ServeArgs::default()
        };
        let s = Settings::merge(args, file).unwrap();
        assert_eq!(s.port, 9100);
        assert_eq!(s.queue, 4);
        assert_eq!(s.host, "0.0.0.0");
        assert_eq!(s.model_name, "a");
        assert_eq!(s.model.model, PathBuf::from("/m/a.gguf"));
    }

    #[test]
    fn the_real_time_keys_and_their_flags() {
        let parse = |text: &str| FileConfig::parse(text).unwrap();
        let args = |flags: &[&str]| {
            let mut v = vec!["serve", "--model", "x.gguf"];
            v.extend_from_slice(flags);
            #[derive(clap::Parser)]
            struct T {
                #[command(flatten)]
                s: ServeArgs,
            }
            <T as clap::Parser>::try_parse_from(v).unwrap().s
        };
        let file = parse(
            "cores = [1]\nrt = true\nrt_priority = 60\nlock_memory = false\nstrict_rt = true",
        );
        let s = Settings::merge(args(&[]), file).unwrap();
        let r = &s.model.realtime;
        assert_eq!(r.cores, Some(vec![1]));
        assert!(r.rt && !r.no_rt && r.rt_priority == Some(60) && r.strict_rt);
        assert!(r.no_lock_memory && !r.lock_memory);
        // Flags over the file.
        let file = parse("cores = [1]\nrt = true\nlock_memory = false");
        let s = Settings::merge(
            args(&[
                "--no-rt",
                "--cores",
                "0",
                "--lock-memory",
                "--rt-priority",
                "70",
            ]),
            file,
        )
        .unwrap();
        let r = &s.model.realtime;
        assert_eq!(r.cores, Some(vec![0]));
        assert!(r.no_rt && !r.rt && r.rt_priority == Some(70));
        assert!(r.lock_memory && !r.no_lock_memory && !r.strict_rt);
        // Unset: the board decides.
        let s = Settings::merge(args(&[]), parse("")).unwrap();
        let r = &s.model.realtime;
        assert!(r.cores.is_none() && !r.rt && !r.no_rt && r.rt_priority.is_none());
        assert!(!r.lock_memory && !r.no_lock_memory && !r.strict_rt);
        // The plan applies them: the file's real-time settings on the host board.
        let s = Settings::merge(args(&[]), parse("rt = true\ncores = [0]")).unwrap();
        let board = crate::boards::by_name("host").unwrap();
        let p = crate::rt::plan(&s.model, &board, &[0, 1]).unwrap();
        assert_eq!(p.cores, Some(vec![0]));
        assert!(p.realtime.is_some() && p.lock_memory && p.threads == 1);
    }

    #[test]
    fn the_mmap_key_and_its_flags() {
        let parse = |text: &str| FileConfig::parse(text).unwrap();
        let args = || ServeArgs {
            model: Some("x.gguf".into()),
            ..ServeArgs::default()
        };
        let s = Settings::merge(args(), parse("mmap = false")).unwrap();
        assert!(s.model.no_mmap && !s.model.mmap);
        let s = Settings::merge(args(), parse("mmap = true")).unwrap();
        assert!(!s.model.no_mmap && s.model.mmap);
        let s = Settings::merge(args(), parse("")).unwrap();
        assert!(
            !s.model.no_mmap && !s.model.mmap,
            "unset: the default (read into memory) applies"
        );
        let flag = ServeArgs {
            mmap: true,
            ..args()
        };
        let s = Settings::merge(flag, parse("mmap = false")).unwrap();
        assert!(
            !s.model.no_mmap && s.model.mmap,
            "the flag wins over the file"
        );
    }

    #[test]
    fn defaults_bind_loopback() {
        let args = ServeArgs {
            model: Some("x.gguf".into()),
            ..ServeArgs::default()
        };
        let s = Settings::merge(args, FileConfig::default()).unwrap();
        assert_eq!(s.host, "127.0.0.1");
        assert_eq!(s.queue, 8);
    }

    #[test]
    fn request_timeout_defaults_to_30_s_and_zero_is_refused() {
        let args = |t: Option<u64>| ServeArgs {
            model: Some("x.gguf".into()),
            request_timeout: t,
            ..ServeArgs::default()
        };
        let secs = |a, f: &str| {
            Settings::merge(a, FileConfig::parse(f).unwrap()).map(|s| s.request_timeout.as_secs())
        };
        assert_eq!(secs(args(None), "").unwrap(), 30);
        assert_eq!(secs(args(None), "request_timeout = 5").unwrap(), 5);
        assert_eq!(secs(args(Some(7)), "request_timeout = 5").unwrap(), 7);
        let e = secs(args(Some(0)), "").unwrap_err().to_string();
        assert!(e.contains("--request-timeout"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_types_are_refused() {
        assert!(FileConfig::parse("prot = 1\n").is_err());
        assert!(FileConfig::parse("port = \"x\"\n").is_err());
        let e = Settings::merge(ServeArgs::default(), FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("--model"));
    }

    #[test]
    fn device_defaults_to_auto_and_the_file_value_is_checked() {
        let args = || ServeArgs {
            model: Some("x.gguf".into()),
            ..ServeArgs::default()
        };
        let s = Settings::merge(args(), FileConfig::default()).unwrap();
        assert_eq!(
            (s.model.device.as_str(), s.model.kv_cache.as_str()),
            ("auto", "f16")
        );
        let file = FileConfig::parse("device = \"cpu\"\nkv_cache = \"int8\"\n").unwrap();
        let s = Settings::merge(args(), file).unwrap();
        assert_eq!(
            (s.model.device.as_str(), s.model.kv_cache.as_str()),
            ("cpu", "int8")
        );
        let file = FileConfig::parse("device = \"gpu\"\n").unwrap();
        let e = Settings::merge(args(), file).unwrap_err().to_string();
        assert!(e.contains("\"cuda\""), "{e}");
        let file = FileConfig::parse("kv_cache = \"q4\"\n").unwrap();
        assert!(Settings::merge(args(), file).is_err());
    }
}
