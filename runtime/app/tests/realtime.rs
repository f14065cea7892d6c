//! `edgellm bench --rt` on the real model: it reports real-time scheduling exactly when the kernel
//! grants SCHED_FIFO to this process, the cores it pinned to, and a decode with no heap allocation
//! and no page fault; without the privilege it warns once per problem and goes on, and
//! `--strict-rt` makes that fatal. Also `--trace`, the per-step latencies behind the quantiles.

use edgellm_tests::smollm2_path;
use std::process::{Command, Output};

fn bench_args(model: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "bench", "--json", "-m", model, "-p", "8", "-g", "8", "-r", "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "edgellm failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("one JSON object")
}

/// Whether this process may use SCHED_FIFO at `priority` (tried on a scratch thread).
fn fifo_allowed(priority: u8) -> bool {
    std::thread::spawn(move || {
        let ok = edgellm_hal::realtime::set_fifo(priority).is_ok();
        if ok {
            edgellm_hal::realtime::set_normal().unwrap();
        }
        ok
    })
    .join()
    .unwrap()
}

fn check_decode_is_clean(v: &serde_json::Value) {
    assert_eq!(v["decode_heap_allocations"], 0, "{v}");
    assert_eq!(v["decode_page_faults"], 0, "{v}");
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["token_latency_ms"][key].as_f64().unwrap() > 0.0, "{v}");
    }
}

#[test]
fn bench_rt_reports_what_the_kernel_granted() {
    let Some(model) = smollm2_path() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_edgellm"))
        .args(bench_args(
            model.to_str().unwrap(),
            &["--rt", "--cores", "0", "--rt-priority", "20"],
        ))
        .output()
        .unwrap();
    let v = json(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let allowed = fifo_allowed(20);
    assert_eq!(v["realtime"], allowed, "{v}\n{stderr}");
    assert_eq!(
        v["rt_priority"],
        if allowed {
            20.into()
        } else {
            serde_json::Value::Null
        }
    );
    assert_eq!(v["cores"], serde_json::json!([0]));
    assert_eq!(v["threads"], 1);
    if !allowed {
        assert!(stderr.contains("CAP_SYS_NICE"), "{stderr}");
    }
    if v["memory_locked"] == false {
        assert!(stderr.contains("LimitMEMLOCK=infinity"), "{stderr}");
    }
    let line = stderr
        .lines()
        .find(|l| l.starts_with("execution: "))
        .expect("the execution line");
    assert!(
        line.contains("threads 1") && line.contains("cores 0"),
        "{line}"
    );
    check_decode_is_clean(&v);
}

#[test]
fn bench_without_rt_on_host_is_not_realtime() {
    let Some(model) = smollm2_path() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_edgellm"))
        .args(bench_args(model.to_str().unwrap(), &["-t", "2"]))
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["realtime"], false);
    assert_eq!(v["cores"], serde_json::Value::Null);
    assert_eq!(v["memory_locked"], false);
    assert_eq!(v["threads"], 2);
    check_decode_is_clean(&v);
}

/// `--trace` writes one `rep,position,ms` line per timed decode step, repetition after
/// repetition, each step at the position it decodes; the int8 cache is reported as such.
#[test]
fn bench_trace_has_every_timed_step() {
    let Some(model) = smollm2_path() else { return };
    let trace = std::env::temp_dir().join(format!("edgellm-trace-{}.csv", std::process::id()));
    let mut args = bench_args(model.to_str().unwrap(), &["-t", "1", "--kv-cache", "int8"]);
    let reps = args.iter().position(|a| a == "-r").unwrap() + 1;
    args[reps] = "2".into();
    let out = Command::new(env!("CARGO_BIN_EXE_edgellm"))
        .args(args)
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["kv_cache_type"], "int8", "{v}");
    check_decode_is_clean(&v);
    let text = std::fs::read_to_string(&trace).unwrap();
    std::fs::remove_file(&trace).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("rep,position,ms"));
    let rows: Vec<(u32, u32, f64)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 3, "{l}");
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    let want: Vec<(u32, u32)> = (1..=2).flat_map(|r| (8..16).map(move |p| (r, p))).collect();
    let got: Vec<(u32, u32)> = rows.iter().map(|&(r, p, _)| (r, p)).collect();
    assert_eq!(got, want);
    // The slowest traced step is the quantiles' maximum (printed to 3 decimals, traced to 4).
    let max = rows.iter().map(|r| r.2).fold(0.0, f64::max);
    let reported = v["token_latency_ms"]["max"].as_f64().unwrap();
    assert!(rows.iter().all(|r| r.2 > 0.0));
    assert!(
        (max - reported).abs() < 1e-3,
        "trace max {max} vs reported {reported}"
    );
    // The trend splits the same steps into growth with the position and jitter around it.
    let trend = &v["token_latency_trend"];
    let p99 = trend["jitter_p99"].as_f64().unwrap();
    let jmax = trend["jitter_max"].as_f64().unwrap();
    assert!(0.0 < p99 && p99 <= jmax, "{trend}");
    let growth = trend["growth_us_per_position"].as_f64().unwrap();
    assert!(growth.is_finite(), "{trend}");
}

/// Without any capability and with RLIMIT_RTPRIO 0 (root dropping its privileges through
/// `setpriv`), SCHED_FIFO and mlockall are refused: a warning naming the fix, `realtime: false`,
/// and a clean decode; `--strict-rt` turns the refusal into an error.
#[test]
fn bench_rt_without_privilege_warns_or_fails_strictly() {
    let Some(model) = smollm2_path() else { return };
    // SAFETY: getuid has no preconditions.
    if unsafe { libc_getuid() } != 0 || Command::new("setpriv").arg("--help").output().is_err() {
        eprintln!("skipped: needs root and setpriv to drop privileges");
        return;
    }
    let run = |extra: &[&str]| {
        Command::new("setpriv")
            .args([
                "--bounding-set=-all",
                "--inh-caps=-all",
                "prlimit",
                "--rtprio=0",
            ])
            .arg(env!("CARGO_BIN_EXE_edgellm"))
            .args(bench_args(model.to_str().unwrap(), extra))
            .output()
            .unwrap()
    };
    let out = run(&["--rt", "--cores", "0"]);
    let v = json(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(v["realtime"], false, "{stderr}");
    assert!(
        stderr.contains("LimitRTPRIO=50") && stderr.contains("CAP_SYS_NICE"),
        "{stderr}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("warning: "))
            .count(),
        if v["memory_locked"] == true { 1 } else { 2 },
        "{stderr}"
    );
    check_decode_is_clean(&v);

    let out = run(&["--rt", "--cores", "0", "--strict-rt", "--no-lock-memory"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SCHED_FIFO") && stderr.contains("--strict-rt"),
        "{stderr}"
    );
}

extern "C" {
    #[link_name = "getuid"]
    fn libc_getuid() -> u32;
}

/// `--compare-llamacpp --llamacpp-bench PATH` runs that `llama-bench` with the same settings:
/// threads, lengths, repetitions, the KV cache type, and the model read into memory (`-mmp 0`)
/// exactly when ours is, on the cores ours was pinned to under the normal scheduler (not on the
/// one core of the pinned, perhaps real-time, calling thread), and reports its figures and the
/// ratios under `llamacpp`. A stand-in `llama-bench` records its arguments, allowed cores and
/// scheduling policy, and prints fixed figures.
#[test]
fn llama_bench_runs_with_the_same_settings() {
    use std::os::unix::fs::PermissionsExt;
    let Some(model) = smollm2_path() else { return };
    let dir = std::env::temp_dir().join(format!("edgellm-fake-llama-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (bin, log) = (dir.join("llama-bench"), dir.join("args"));
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\necho \"$@\" > '{}'\necho run >> '{}.count'\n\
             grep Cpus_allowed_list /proc/$$/status | cut -f2 > '{}.cpus'\n\
             cut -d' ' -f41 /proc/$$/stat > '{}.policy'\necho '[{{\"n_prompt\": 8, \"n_gen\": 0, \
             \"avg_ts\": 400.0, \"stddev_ts\": 4.0}}, {{\"n_prompt\": 0, \"n_gen\": 8, \
             \"avg_ts\": 50.0, \"stddev_ts\": 0.5}}]'\n",
            log.display(),
            log.display(),
            log.display(),
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |extra: &[&str]| {
        let args = bench_args(model.to_str().unwrap(), extra);
        let out = Command::new(env!("CARGO_BIN_EXE_edgellm"))
            .args(args)
            .args(["--compare-llamacpp", "--llamacpp-bench"])
            .arg(&bin)
            .output()
            .unwrap();
        let v = json(&out);
        let argv = std::fs::read_to_string(&log).unwrap();
        let argv: Vec<String> = argv.split_whitespace().map(str::to_string).collect();
        (v, argv)
    };
    let has = |argv: &[String], pair: [&str; 2]| {
        argv.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1])
    };

    let (v, argv) = run(&["-t", "1"]);
    for pair in [
        ["-p", "8"],
        ["-n", "8"],
        ["-r", "1"],
        ["-t", "1"],
        ["-mmp", "0"],
    ] {
        assert!(has(&argv, pair), "{pair:?} missing from {argv:?}");
    }
    assert!(!argv.iter().any(|a| a == "-ctk"), "{argv:?}");
    assert_eq!(v["model_in_memory"], true, "{v}");
    let peer = &v["llamacpp"];
    assert_eq!(peer["model_in_memory"], true, "{peer}");
    assert_eq!(peer["decode_tps"], 50.0, "{peer}");
    assert_eq!(peer["prefill_tps"], 400.0, "{peer}");
    let ratio = v["decode_tps"].as_f64().unwrap() / 50.0;
    assert!(
        (peer["decode_ratio"].as_f64().unwrap() - ratio).abs() < 1e-9,
        "{v}"
    );

    // A mapped model is compared with llama.cpp mapping its file; an int8 cache with its q8_0.
    let (v, argv) = run(&["-t", "1", "--mmap", "--kv-cache", "int8"]);
    assert!(has(&argv, ["-mmp", "1"]), "{argv:?}");
    for pair in [["-ctk", "q8_0"], ["-ctv", "q8_0"], ["-fa", "1"]] {
        assert!(has(&argv, pair), "{pair:?} missing from {argv:?}");
    }
    assert_eq!(v["model_in_memory"], false, "{v}");
    assert_eq!(v["llamacpp"]["model_in_memory"], false, "{v}");
    assert_eq!(v["llamacpp"]["kv_cache_type"], "q8_0", "{v}");

    // Pinned to two cores (at real-time priority where allowed): llama.cpp gets both cores and
    // the normal policy (0), not the calling thread's single core and SCHED_FIFO (1).
    let allowed = edgellm_hal::cpu::allowed_cpus().unwrap();
    if allowed.len() >= 2 {
        let cores = format!("{},{}", allowed[0], allowed[1]);
        let (v, _) = run(&["-t", "2", "--cores", &cores, "--rt"]);
        assert_eq!(v["threads"], 2, "{v}");
        let read = |ext: &str| {
            let p = format!("{}.{ext}", log.display());
            std::fs::read_to_string(p).unwrap().trim().to_string()
        };
        let list = read("cpus");
        let want = if allowed[1] == allowed[0] + 1 {
            format!("{}-{}", allowed[0], allowed[1])
        } else {
            cores.clone()
        };
        assert_eq!(list, want, "llama.cpp's allowed cores");
        assert_eq!(read("policy"), "0", "llama.cpp's scheduling policy");
    }

    // `--rounds 3`: llama.cpp runs three times, after each of our rounds; each round's figures
    // and ratios, and their medians, come under `llamacpp`.
    let count = dir.join("args.count");
    let _ = std::fs::remove_file(&count);
    let (v, _) = run(&["-t", "1", "--rounds", "3"]);
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3);
    assert_eq!(v["rounds"], 3, "{v}");
    let peer = &v["llamacpp"];
    let rounds = peer["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3, "{peer}");
    let mut ratios: Vec<f64> = rounds
        .iter()
        .map(|r| {
            assert_eq!(r["decode_tps"], 50.0, "{r}");
            let ours = r["edgellm_decode_tps"].as_f64().unwrap();
            let ratio = r["decode_ratio"].as_f64().unwrap();
            assert!((ratio - ours / 50.0).abs() < 1e-9, "{r}");
            // The host's steal during each engine's run: Linux counts it in /proc/stat.
            for key in ["edgellm_cpu_steal_pct", "cpu_steal_pct"] {
                let pct = r[key].as_f64().unwrap_or(-1.0);
                assert!((0.0..=100.0).contains(&pct), "{key}: {r}");
            }
            ratio
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    assert_eq!(peer["decode_ratio_median"].as_f64().unwrap(), ratios[1]);
    let steal = v["cpu_steal_pct"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=100.0).contains(&steal), "{v}");
    assert_eq!(peer["decode_tps"], 50.0, "{peer}");
    assert_eq!(peer["decode_tps_stddev"], 0.0, "{peer}");
    std::fs::remove_dir_all(&dir).unwrap();
}
