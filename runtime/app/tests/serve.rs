//! `edgellm serve` end to end on the real SmolLM2 model: the official `openai` and `ollama` Python
//! clients against greedy `edgellm run`, hostile requests, a load of concurrent streaming
//! clients, cancellation by a client that goes away, and a SIGTERM drain.
//!
//! Every request goes to 127.0.0.1 only, with bounded counts and timeouts. The tests take a lock so
//! that only one server decodes at a time (the machines running them have few cores).

use edgellm_tests::smollm2_path;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const PROMPT: &str = "What is a Raspberry Pi?";
/// A prompt fed without the chat template (the one above would end at once).
const RAW_PROMPT: &str = "Once upon a time";

/// A server process on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(model, extra, &[])
    }

    fn start_with_env(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_edgellm"))
            .args(["serve", "--config", "/dev/null", "-t", "1", "--port"])
            .arg(port.to_string())
            .arg("--model")
            .arg(model)
            .args(extra)
            .env_remove("EDGELLM_API_KEY")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start edgellm serve");
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = server.try_request("GET", "/health", &[], b"") {
                if r.status == 200 {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "the server did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    /// Sends raw bytes and reads the whole answer (the connection is closed after it).
    fn raw(&self, bytes: &[u8]) -> Reply {
        let mut s = self.connect();
        // The server may answer and close before it has read everything (e.g. a body too large).
        let _ = s.write_all(bytes);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        Reply::parse(&buf)
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Reply> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        s.write_all(&request_bytes(method, path, headers, body))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(Reply::parse(&buf))
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.try_request(method, path, headers, body.as_bytes())
            .expect("request")
    }

    fn metric(&self, name: &str, headers: &[(&str, &str)]) -> f64 {
        let r = self.request("GET", "/metrics", headers, "");
        assert_eq!(r.status, 200);
        r.body
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in\n{}", r.body))
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn parse(buf: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        Reply {
            status,
            head: head.to_string(),
            body: if chunked {
                dechunk(body)
            } else {
                body.to_string()
            },
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {}", self.status, self.body))
    }
}

/// Undoes chunked transfer encoding (test-side only: the server uses hyper).
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `edgellm run --temp 0 --json` for the prompt: its text and prompt ids.
fn greedy_run(model: &Path, prompt: &str, n: usize, raw: bool) -> (String, usize) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgellm"));
    cmd.args(["run", "-t", "1", "--temp", "0", "--json", "-n"])
        .arg(n.to_string())
        .args(["-p", prompt, "-m"])
        .arg(model);
    if raw {
        cmd.arg("--raw");
    }
    let out = cmd.output().expect("edgellm run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["text"].as_str().unwrap().to_string(),
        v["prompt_ids"].as_array().unwrap().len(),
    )
}

fn model_name(server: &Server, headers: &[(&str, &str)]) -> String {
    let r = server.request("GET", "/v1/models", headers, "");
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["data"][0]["id"].as_str().unwrap().to_string()
}

#[test]
fn python_clients_match_greedy_run() {
    let Some(model) = smollm2_path() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let n = 12;
    let server = Server::start(&model, &["--context", "512"]);
    let name = model_name(&server, &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_clients.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([&server.url(), &name, PROMPT, RAW_PROMPT, &n.to_string()])
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return skip(&format!("python3 cannot run: {e}")),
    };
    if out.status.code() == Some(3) {
        return skip(&format!(
            "the openai and ollama Python packages are missing (pip install openai ollama): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    assert!(
        out.status.success(),
        "client script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let (chat, chat_prompt) = greedy_run(&model, PROMPT, n, false);
    let (raw, raw_prompt) = greedy_run(&model, RAW_PROMPT, n, true);
    assert!(!chat.is_empty() && !raw.is_empty());
    for key in [
        "openai_chat",
        "openai_chat_stream",
        "ollama_generate",
        "ollama_generate_stream",
        "ollama_chat",
        "ollama_chat_stream",
    ] {
        assert_eq!(v[key].as_str(), Some(chat.as_str()), "{key}: {v}");
    }
    for key in [
        "openai_completion",
        "openai_completion_stream",
        "ollama_generate_raw",
    ] {
        assert_eq!(v[key].as_str(), Some(raw.as_str()), "{key}: {v}");
    }
    let (p, n) = (chat_prompt as u64, n as u64);
    assert_eq!(v["openai_chat_usage"], serde_json::json!([p, n, p + n]));
    assert_eq!(v["openai_chat_finish"], "length");
    assert_eq!(v["openai_chat_stream_finish"], "length");
    assert_eq!(v["openai_chat_stream_usage"], serde_json::json!([p, n]));
    assert_eq!(v["openai_chat_stream_roles"], 1);
    assert_eq!(
        v["openai_completion_usage"],
        serde_json::json!([raw_prompt, n])
    );
    assert_eq!(v["openai_models"], serde_json::json!([name]));
    assert_eq!(
        v["ollama_generate_done"],
        serde_json::json!([true, "length", p, n])
    );
    assert_eq!(v["ollama_generate_durations_positive"], true);
    assert_eq!(
        v["ollama_generate_stream_done"],
        serde_json::json!([true, "length", n])
    );
    assert_eq!(v["ollama_chat_role"], "assistant");
    assert_eq!(
        v["ollama_chat_stream_done"],
        serde_json::json!([true, "length"])
    );
    assert_eq!(v["ollama_tags"], serde_json::json!([name]));
    // `ollama show`: SmolLM2 is a llama model trained on 8192 positions, with a chat template.
    assert_eq!(
        v["ollama_show"],
        serde_json::json!(["llama", "llama", 8192, true])
    );
    assert_eq!(v["ollama_unknown_model"], 404);
    assert_eq!(v["openai_unknown_model"], 404);
    assert_eq!(v["openai_model"], name);
    assert_eq!(v["openai_model_unknown"], 404);
    // The decode loop of every one of those requests allocated nothing.
    assert_eq!(
        server.metric("edgellm_decode_heap_operations_total", &[]),
        0.0
    );
}

fn skip(msg: &str) {
    if std::env::var("EDGELLM_REQUIRE_DATA").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    eprintln!("skipped: {msg}");
}

#[test]
fn stop_sequences_and_sampling_options() {
    let Some(model) = smollm2_path() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&model, &["--context", "256"]);
    let (greedy, _) = greedy_run(&model, PROMPT, 12, false);
    // Stop at the second word of the greedy answer: the text ends before it.
    let word = greedy.split_whitespace().nth(2).expect("three words");
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0, "max_tokens": 12, "stop": [word],
    });
    let r = server.request("POST", "/v1/chat/completions", &[], &body.to_string());
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(
        greedy.starts_with(text) && !text.contains(word),
        "{text:?} / {greedy:?}"
    );
    // Seeded sampling repeats itself; Ollama's options are understood.
    let body = serde_json::json!({
        "prompt": PROMPT, "stream": false,
        "options": {"temperature": 1.2, "top_k": 50, "top_p": 0.9, "min_p": 0.02,
                    "repeat_penalty": 1.1, "seed": 42, "num_predict": 8},
    });
    let a = server.request("POST", "/api/generate", &[], &body.to_string());
    let b = server.request("POST", "/api/generate", &[], &body.to_string());
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["response"], b.json()["response"]);
    assert_eq!(a.json()["eval_count"], 8);
}

/// One hostile request and the status it must get.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
}

fn case(name: &'static str, bytes: Vec<u8>, status: u16) -> Case {
    Case {
        name,
        bytes,
        status,
    }
}

#[test]
fn hostile_requests_get_4xx_and_the_server_keeps_serving() {
    let Some(model) = smollm2_path() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const KEY: &str = "s3cret-key";
    let server = Server::start(
        &model,
        &["--context", "128", "--api-key", KEY, "--max-body", "65536"],
    );
    let auth = format!("Bearer {KEY}");
    let ok_auth: &[(&str, &str)] = &[("Authorization", &auth)];
    let post = |path: &str, body: &str| request_bytes("POST", path, ok_auth, body.as_bytes());
    let chat = |extra: &str| {
        post(
            "/v1/chat/completions",
            &format!(r#"{{"messages":[{{"role":"user","content":"Hi"}}]{extra}}}"#),
        )
    };
    let long_prompt = "one two three four five six seven eight nine ten ".repeat(30);
    let mut cases = vec![
        case(
            "no API key",
            request_bytes("POST", "/v1/chat/completions", &[], br#"{"messages":[]}"#),
            401,
        ),
        case(
            "wrong API key",
            request_bytes(
                "GET",
                "/v1/models",
                &[("Authorization", "Bearer nope")],
                b"",
            ),
            401,
        ),
        case(
            "key without Bearer",
            request_bytes("GET", "/api/tags", &[("Authorization", KEY)], b""),
            401,
        ),
        case(
            "key prefix only",
            request_bytes(
                "GET",
                "/metrics",
                &[("Authorization", "Bearer s3cret")],
                b"",
            ),
            401,
        ),
        case(
            "broken JSON",
            post("/v1/chat/completions", r#"{"messages": ["#),
            400,
        ),
        case("empty body", post("/v1/chat/completions", ""), 400),
        case(
            "array instead of object",
            post("/v1/completions", "[]"),
            400,
        ),
        case(
            "messages is a string",
            post("/v1/chat/completions", r#"{"messages":"hi"}"#),
            400,
        ),
        case(
            "temperature is a string",
            chat(r#","temperature":"hot""#),
            400,
        ),
        case("negative max_tokens", chat(r#","max_tokens":-5"#), 400),
        case("fractional max_tokens", chat(r#","max_tokens":1.5"#), 400),
        case(
            "max_tokens beyond 64 bits",
            chat(r#","max_tokens":1e30"#),
            400,
        ),
        case("negative temperature", chat(r#","temperature":-1"#), 400),
        case("top_p above 1", chat(r#","top_p":2"#), 400),
        case("n = 3", chat(r#","n":3"#), 400),
        case(
            "17 stop sequences",
            chat(&format!(r#","stop":{}"#, serde_json::json!(vec!["x"; 17]))),
            400,
        ),
        case(
            "unknown role",
            post(
                "/v1/chat/completions",
                r#"{"messages":[{"role":"wizard","content":"hi"}]}"#,
            ),
            400,
        ),
        case(
            "image content",
            post(
                "/v1/chat/completions",
                r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
            ),
            400,
        ),
        case("logprobs (chat)", chat(r#","logprobs":true"#), 400),
        case(
            "logprobs (completions)",
            post("/v1/completions", r#"{"prompt":"hi","logprobs":2}"#),
            400,
        ),
        case(
            "JSON mode (OpenAI)",
            chat(r#","response_format":{"type":"json_object"}"#),
            400,
        ),
        case(
            "tools (Ollama)",
            post(
                "/api/chat",
                r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function"}]}"#,
            ),
            400,
        ),
        case(
            "no messages",
            post("/v1/chat/completions", r#"{"messages":[]}"#),
            400,
        ),
        case(
            "batch of prompts",
            post("/v1/completions", r#"{"prompt":["a","b"]}"#),
            400,
        ),
        case("unknown model (OpenAI)", chat(r#","model":"gpt-9""#), 404),
        case(
            "show an unknown model",
            post("/api/show", r#"{"model":"llama9"}"#),
            404,
        ),
        case("show without a model", post("/api/show", "{}"), 400),
        case(
            "unknown model (Ollama)",
            post("/api/generate", r#"{"model":"llama9","prompt":"hi"}"#),
            404,
        ),
        case(
            "Ollama option of the wrong type",
            post(
                "/api/generate",
                r#"{"prompt":"hi","options":{"num_predict":"ten"}}"#,
            ),
            400,
        ),
        case(
            "Ollama repeat_last_n too large",
            post(
                "/api/generate",
                r#"{"prompt":"hi","options":{"repeat_last_n":1000000}}"#,
            ),
            400,
        ),
        case(
            "Ollama messages not a list",
            post("/api/chat", r#"{"messages":{"role":"user"}}"#),
            400,
        ),
        case(
            "invalid UTF-8",
            post("/api/generate", "{\"prompt\":\"\u{1}\"}")
                .into_iter()
                .map(|b| if b == 1 { 0xff } else { b })
                .collect(),
            400,
        ),
        case(
            "prompt over the context",
            post(
                "/v1/completions",
                &serde_json::json!({"prompt": long_prompt}).to_string(),
            ),
            400,
        ),
        case(
            "body over the limit",
            post(
                "/v1/completions",
                &serde_json::json!({"prompt": "x".repeat(100_000)}).to_string(),
            ),
            413,
        ),
        case(
            "wrong method",
            request_bytes("GET", "/v1/chat/completions", ok_auth, b""),
            405,
        ),
        case(
            "DELETE on tags",
            request_bytes("DELETE", "/api/tags", ok_auth, b""),
            405,
        ),
        case(
            "unknown path",
            request_bytes("GET", "/v2/everything", ok_auth, b""),
            404,
        ),
        case(
            "not HTTP",
            b"\x16\x03\x01\x02\x00 hello\r\n\r\n".to_vec(),
            400,
        ),
    ];
    let mut flood = String::from("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..500 {
        flood.push_str(&format!("X-Flood-{i}: {}\r\n", "y".repeat(20)));
    }
    flood.push_str("\r\n");
    cases.push(case("header flood", flood.into_bytes(), 431));
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "z".repeat(1 << 20)
    );
    cases.push(case("one huge header", huge.into_bytes(), 431));

    let mut failures = Vec::new();
    for c in &cases {
        let r = server.raw(&c.bytes);
        if r.status != c.status {
            failures.push(format!(
                "{}: expected {}, got {} {:?}",
                c.name, c.status, r.status, r.body
            ));
            continue;
        }
        // Answers from the application carry a JSON error (hyper answers protocol errors itself).
        if ![400, 431].contains(&c.status) || r.head.contains("application/json") {
            let v: Value = match serde_json::from_str(&r.body) {
                Ok(v) => v,
                Err(_) if c.name == "not HTTP" => continue,
                Err(e) => {
                    failures.push(format!("{}: body is not JSON ({e}): {:?}", c.name, r.body));
                    continue;
                }
            };
            if v.get("error").is_none() {
                failures.push(format!("{}: no `error` in {}", c.name, r.body));
            }
        }
        let h = server.request("GET", "/health", &[], "");
        assert_eq!(
            h.status, 200,
            "the server stopped answering after {}",
            c.name
        );
    }
    assert!(cases.len() >= 25, "{} cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Specific messages: how many tokens too many, and the dialects' error shapes.
    let r = server.raw(&post(
        "/v1/completions",
        &serde_json::json!({"prompt": long_prompt}).to_string(),
    ));
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("shorten it by") && msg.contains("context holds 128"),
        "{msg}"
    );
    let r = server.raw(&request_bytes("POST", "/api/chat", &[], b"{}"));
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"].is_string(),
        "Ollama errors are strings: {}",
        r.body
    );
    assert!(r
        .head
        .to_ascii_lowercase()
        .contains("www-authenticate: bearer"));

    // A huge max_tokens is capped to the room left in the context, not refused.
    let prompt = "one two three four five six seven eight nine ten ".repeat(11);
    let r = server.raw(&post(
        "/v1/completions",
        &serde_json::json!({"prompt": prompt, "max_tokens": 1_000_000_000_000i64, "temperature": 0}).to_string(),
    ));
    assert_eq!(r.status, 200, "{r:?}");
    let u = &r.json()["usage"];
    assert!(
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap() <= 128,
        "{u}"
    );

    // Still serving, and requests were counted.
    assert_eq!(server.request("GET", "/health", &[], "").status, 200);
    assert!(
        server.metric(
            "edgellm_requests_total{endpoint=\"/v1/chat/completions\",code=\"400\"}",
            ok_auth
        ) >= 10.0
    );
}

/// Ollama stream objects (one per token) in what a client has read so far.
fn count_tokens(raw: &[u8]) -> usize {
    String::from_utf8_lossy(raw)
        .matches("\"done\":false")
        .count()
}

/// One streaming client: the status and whether the stream ended properly.
fn stream_client(port: u16, i: usize) -> (u16, bool, bool) {
    let body = if i.is_multiple_of(2) {
        serde_json::json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4,
                           "temperature": 0, "stream": true})
        .to_string()
    } else {
        serde_json::json!({"prompt": PROMPT, "options": {"num_predict": 4, "temperature": 0}})
            .to_string()
    };
    let path = if i.is_multiple_of(2) {
        "/v1/chat/completions"
    } else {
        "/api/generate"
    };
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, false, false);
    };
    s.set_read_timeout(Some(Duration::from_secs(180))).unwrap();
    if s.write_all(&request_bytes("POST", path, &[], body.as_bytes()))
        .is_err()
    {
        return (0, false, false);
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let r = Reply::parse(&buf);
    let complete = if i.is_multiple_of(2) {
        r.body.trim_end().ends_with("data: [DONE]")
    } else {
        r.body
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
            .is_some_and(|v| v["done"] == true && v["eval_count"] == 4)
    };
    let retry_after = r.head.to_ascii_lowercase().contains("retry-after:");
    (r.status, complete, retry_after)
}

#[test]
fn load_cancellation_and_drain() {
    let Some(model) = smollm2_path() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(
        &model,
        &["--context", "1024", "--queue", "8", "--drain-seconds", "60"],
    );
    let port = server.port;
    // Warm up, then take the memory baseline.
    assert_eq!(stream_client(port, 0).0, 200);
    let rss_before = server.rss_kib();

    // 32 concurrent streaming clients against a queue of 8: each completes or gets a 503.
    let started = Instant::now();
    let clients: Vec<_> = (0..32)
        .map(|i| std::thread::spawn(move || stream_client(port, i)))
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let done = results.iter().filter(|r| r.0 == 200 && r.1).count();
    let busy = results.iter().filter(|r| r.0 == 503 && r.2).count();
    assert_eq!(done + busy, 32, "{results:?}");
    // At least the 8 the queue holds (the one decoding may not have been taken off it yet).
    assert!(done >= 8, "a queue of 8 must be served: {results:?}");
    assert!(busy >= 1, "a full queue must refuse: {results:?}");
    assert!(started.elapsed() < Duration::from_secs(300));
    assert_eq!(server.metric("edgellm_rejected_total", &[]), busy as f64);
    assert_eq!(server.metric("edgellm_queue_depth", &[]), 0.0);
    assert_eq!(
        server.metric("edgellm_decode_heap_operations_total", &[]),
        0.0
    );
    let rss_after = server.rss_kib();
    eprintln!("RSS before the load {rss_before} KiB, after {rss_after} KiB");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory grew: {rss_before} -> {rss_after} KiB"
    );

    // A client that goes away mid-stream frees the inference thread at once: the next request
    // does not wait for the ~1000 tokens the first asked for.
    let cancelled_before = server.metric("edgellm_cancelled_total", &[]);
    let tokens_before = server.metric("edgellm_generated_tokens_total", &[]);
    let mut s = server.connect();
    let body =
        serde_json::json!({"prompt": PROMPT, "options": {"num_predict": 1000, "temperature": 0}});
    s.write_all(&request_bytes(
        "POST",
        "/api/generate",
        &[],
        body.to_string().as_bytes(),
    ))
    .unwrap();
    // Read until three tokens have arrived, then hang up.
    let mut seen = Vec::new();
    let mut first = [0u8; 512];
    while count_tokens(&seen) < 3 {
        let n = s.read(&mut first).unwrap();
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&first[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    let seen_tokens = count_tokens(&seen) as f64;
    let _ = s.shutdown(Shutdown::Both);
    drop(s);
    let t = Instant::now();
    let r = server.request(
        "POST",
        "/v1/completions",
        &[],
        &serde_json::json!({"prompt": "Hi", "max_tokens": 2}).to_string(),
    );
    let waited = t.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        waited < Duration::from_secs(15),
        "the dropped stream held the slot for {waited:?}"
    );
    assert_eq!(
        server.metric("edgellm_cancelled_total", &[]),
        cancelled_before + 1.0
    );
    // Tokens the dropped request made: those before the disconnect was seen, plus at most one.
    let next_tokens = r.json()["usage"]["completion_tokens"].as_f64().unwrap();
    let dropped_tokens =
        server.metric("edgellm_generated_tokens_total", &[]) - tokens_before - next_tokens;
    eprintln!(
        "the dropped stream generated {dropped_tokens} tokens; the next request waited {waited:?}"
    );
    assert!(
        dropped_tokens >= seen_tokens && dropped_tokens <= seen_tokens + 8.0,
        "{dropped_tokens} tokens after the client left"
    );

    // SIGTERM while a stream runs: the stream finishes, new requests are refused, exit 0.
    let mut s = server.connect();
    let body =
        serde_json::json!({"prompt": PROMPT, "options": {"num_predict": 16, "temperature": 0}});
    s.write_all(&request_bytes(
        "POST",
        "/api/generate",
        &[],
        body.to_string().as_bytes(),
    ))
    .unwrap();
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let mut server = server;
    let kill = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let mut all = first[..n].to_vec();
    all.extend_from_slice(&rest);
    let r = Reply::parse(&all);
    let last: Value = serde_json::from_str(r.body.lines().last().unwrap()).unwrap();
    assert_eq!(last["done"], true, "{}", r.body);
    assert_eq!(last["eval_count"], 16);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn idle_connections_are_capped() {
    let Some(model) = smollm2_path() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&model, &["--context", "128", "--max-connections", "2"]);
    // The health check's connection has closed; take both slots with idle connections.
    std::thread::sleep(Duration::from_millis(200));
    let idle: Vec<TcpStream> = (0..2).map(|_| server.connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    // A third client connects (the kernel's backlog) but is not served while both are held.
    let mut third = server.connect();
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    third
        .write_all(&request_bytes("GET", "/health", &[], b""))
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        third.read(&mut buf).is_err(),
        "a third connection was served"
    );
    // One slot frees: the waiting client is answered.
    drop(idle);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut all = Vec::new();
    let _ = third.read_to_end(&mut all);
    assert_eq!(Reply::parse(&all).status, 200);
}

#[test]
fn slow_clients_are_timed_out() {
    let Some(model) = smollm2_path() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(
        &model,
        &[
            "--context",
            "128",
            "--max-connections",
            "2",
            "--request-timeout",
            "1",
        ],
    );
    std::thread::sleep(Duration::from_millis(200));
    // Both slots held: one connection sends nothing, the other half a request line.
    let silent = server.connect();
    let mut dribbling = server.connect();
    dribbling.write_all(b"GET /health HT").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // A third client waits in the backlog until the server closes those two.
    let t0 = Instant::now();
    let mut third = server.connect();
    third
        .write_all(&request_bytes("GET", "/health", &[], b""))
        .unwrap();
    let mut all = Vec::new();
    let _ = third.read_to_end(&mut all);
    assert_eq!(Reply::parse(&all).status, 200);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "served after {waited:?}: the slots were not held"
    );
    // Closed at the 1 s deadline (with room for a slow machine), not at hyper's default 30 s.
    assert!(
        waited < Duration::from_secs(10),
        "served after {waited:?}: the idle connections were kept"
    );
    for mut s in [silent, dribbling] {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(
            !buf.starts_with(b"HTTP/1.1 200"),
            "a request never completed was answered: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    // Headers in time, but only part of the body: 408, in each API's error format.
    for (path, code) in [
        ("/v1/completions", Some("request_timeout")),
        ("/api/generate", None),
    ] {
        let body = br#"{"prompt":"Hi","max_tokens":3}"#;
        let mut bytes = request_bytes("POST", path, &[], body);
        bytes.truncate(bytes.len() - body.len() + 5);
        let mut s = server.connect();
        s.write_all(&bytes).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let reply = Reply::parse(&buf);
        assert_eq!(reply.status, 408, "{reply:?}");
        let v = reply.json();
        let message = match code {
            Some(c) => {
                assert_eq!(v["error"]["code"], c);
                v["error"]["message"].as_str().unwrap().to_string()
            }
            None => v["error"].as_str().unwrap().to_string(),
        };
        assert!(message.contains("within 1 s"), "{message}");
    }
    // And the server goes on answering.
    assert_eq!(server.request("GET", "/health", &[], "").status, 200);
}

#[test]
fn systemd_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let Some(model) = smollm2_path() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("edgellm-serve-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut server = Server::start_with_env(
        &model,
        &["--context", "128"],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let next = || {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next().starts_with("READY=1\n"));
    // Pings every 200 ms while the inference thread is alive.
    assert_eq!(next(), "WATCHDOG=1");
    assert_eq!(next(), "WATCHDOG=1");
    let kill = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut stopping = false;
    for _ in 0..10 {
        if next() == "STOPPING=1" {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let _ = std::fs::remove_dir_all(&dir);
}
