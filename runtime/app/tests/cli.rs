//! The `edgellm` binary end to end on the real SmolLM2 model: chat template, greedy run, logits,
//! tokenize, inspect, and clear errors for bad input.

use edgellm_tests::{rel_l2, smollm2_path, smollm2_reference};
use std::process::{Command, Output};

fn edgellm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgellm"))
        .args(args)
        .output()
        .expect("run edgellm")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "edgellm failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn reference(name: &str) -> edgellm_tests::RefPrompt {
    smollm2_reference()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .expect("prompt")
        .1
}

#[test]
fn chat_template_reproduces_reference_prompt() {
    let Some(model) = smollm2_path() else { return };
    let m = model.to_str().unwrap();
    // SmolLM2's template adds its default system prompt: exactly the reference `chat_pi` prompt.
    let out = ok(&edgellm(&[
        "run",
        "-m",
        m,
        "-p",
        "What is a Raspberry Pi?",
        "--temp",
        "0",
        "-n",
        "8",
        "--json",
        "-t",
        "1",
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    let ids: Vec<u32> = serde_json::from_value(v["prompt_ids"].clone()).unwrap();
    assert_eq!(ids, reference("chat_pi").prompt_ids);
    assert_eq!(v["ids"].as_array().unwrap().len(), 8);
    assert!(!v["text"].as_str().unwrap().is_empty());
}

#[test]
fn greedy_run_is_deterministic_and_independent_of_threads() {
    let Some(model) = smollm2_path() else { return };
    let m = model.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut a = vec![
            "run",
            "-m",
            m,
            "-p",
            "The capital of France is",
            "--raw",
            "--temp",
            "0",
            "-n",
            "16",
            "--json",
        ];
        a.extend_from_slice(extra);
        let out = ok(&edgellm(&a));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        (
            v["prompt_ids"].clone(),
            v["ids"].clone(),
            v["text"].as_str().unwrap().to_string(),
        )
    };
    let (p1, ids1, text1) = run(&["-t", "1"]);
    let (_, ids2, _) = run(&["-t", "2"]);
    assert_eq!(
        ids1, ids2,
        "1 and 2 threads must give the same greedy tokens"
    );
    // The model read into memory instead of mapped: the same bytes, the same tokens.
    let (_, ids3, _) = run(&["-t", "1", "--no-mmap"]);
    assert_eq!(ids1, ids3, "--no-mmap must give the same greedy tokens");
    let r = reference("capital");
    assert_eq!(
        serde_json::from_value::<Vec<u32>>(p1).unwrap(),
        r.prompt_ids
    );
    // The first greedy token has a margin of 2.5 in the reference: the fast path must agree.
    assert_eq!(ids1[0].as_u64().unwrap() as u32, r.greedy40_ids[0]);
    assert!(text1.starts_with(" Paris"), "text: {text1:?}");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let Some(model) = smollm2_path() else { return };
    let m = model.to_str().unwrap();
    let run = |seed: &str| {
        let out = ok(&edgellm(&[
            "run",
            "-m",
            m,
            "-p",
            "Once upon a time",
            "--raw",
            "--temp",
            "1.0",
            "--seed",
            seed,
            "-n",
            "12",
            "--json",
        ]));
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["ids"].clone()
    };
    assert_eq!(run("42"), run("42"));
}

#[test]
fn exact_logits_match_reference() {
    let Some(model) = smollm2_path() else { return };
    let m = model.to_str().unwrap();
    let dir = std::env::temp_dir().join(format!("edgellm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("capital.f32");
    let (_, p, want) = smollm2_reference()
        .into_iter()
        .find(|(n, _, _)| n == "capital")
        .unwrap();
    ok(&edgellm(&[
        "logits",
        "-m",
        m,
        "-p",
        &p.text,
        "--out",
        file.to_str().unwrap(),
        "--exact",
        "-t",
        "1",
    ]));
    let got: Vec<f32> = std::fs::read(&file)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(got.len(), want.len());
    let err = rel_l2(&got, &want);
    assert!(err <= 1e-3, "relative L2 error {err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokenize_prints_ids() {
    let Some(model) = smollm2_path() else { return };
    let m = model.to_str().unwrap();
    let p = reference("chat_pi");
    let out = ok(&edgellm(&[
        "tokenize",
        "-m",
        m,
        "--text",
        &p.text,
        "--parse-special",
    ]));
    let ids: Vec<u32> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ids, p.prompt_ids);
    // Without --parse-special, special-token text is plain text: more, different tokens.
    let out = ok(&edgellm(&["tokenize", "-m", m, "--text", "<|im_start|>"]));
    let ids: Vec<u32> = serde_json::from_str(out.trim()).unwrap();
    assert!(ids.len() > 1 && !ids.contains(&1), "{ids:?}");
}

#[test]
fn inspect_shows_metadata_and_tensors() {
    let Some(model) = smollm2_path() else { return };
    let out = ok(&edgellm(&["inspect", model.to_str().unwrap()]));
    for needle in [
        "general.architecture = \"llama\"",
        "token_embd.weight",
        "Q8_0",
        "Q4_1",
        "272 tensors",
        "30 layers",
    ] {
        assert!(
            out.contains(needle),
            "inspect output lacks {needle:?}:\n{out}"
        );
    }
}

/// A reader that stops early (`edgellm inspect --full M | head`) ends the command quietly, by
/// SIGPIPE as Unix tools end, not with a panic about a failed write.
#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let Some(model) = smollm2_path() else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgellm"))
        .args(["inspect", "--full", model.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run edgellm");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("file: "), "{first}");
    // The reader is dropped here; the full listing is megabytes, far more than a pipe holds.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    const SIGPIPE: i32 = 13;
    assert_eq!(out.status.signal(), Some(SIGPIPE), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let out = edgellm(&["run", "-m", "/nonexistent/model.gguf", "-p", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open model /nonexistent/model.gguf"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("edgellm-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.gguf");
    std::fs::write(
        &bad,
        b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
    )
    .unwrap();
    let out = edgellm(&["inspect", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a valid GGUF file"), "{err}");

    let out = edgellm(&[
        "run",
        "-m",
        bad.to_str().unwrap(),
        "--kernels",
        "sparc",
        "-p",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));

    // A directory: a Hugging Face one is pointed at `convert`.
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::write(hf.join("config.json"), "{}").unwrap();
    for (path, want) in [
        (&hf, "is a Hugging Face model directory: convert it"),
        (&dir, "is a directory, not a GGUF model file"),
    ] {
        let out = edgellm(&["run", "-m", path.to_str().unwrap(), "-p", "x"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();

    // Zero threads or a context of zero tokens: refused, not silently raised to one.
    let Some(model) = smollm2_path() else { return };
    for (flag, want) in [("-t", "--threads 0"), ("-c", "--context 0")] {
        let out = edgellm(&["run", "-m", model.to_str().unwrap(), flag, "0", "-p", "x"]);
        assert_eq!(out.status.code(), Some(1), "{flag} 0");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn prompt_longer_than_context_is_refused() {
    let Some(model) = smollm2_path() else { return };
    let m = model.to_str().unwrap();
    let long = "word ".repeat(100);
    let out = edgellm(&[
        "run",
        "-m",
        m,
        "-p",
        &long,
        "--raw",
        "--context",
        "32",
        "-n",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fit in the context") && err.contains("shorten it by"),
        "{err}"
    );
}
