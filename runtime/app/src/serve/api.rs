//! What both API dialects share: JSON error bodies, sampling options and their checks, prompt
//! building through the chat template, queueing a job, and reading its text back with stop
//! sequences applied.

use super::engine::{self, Event, SubmitError, Summary, TokenStream};
use super::AppState;
use crate::chat::{self, Message};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use edgellm_core::sampler::SamplerParams;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Which API's conventions an answer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// `{"error": "message"}` (what the `ollama` client reads).
    Ollama,
}

/// An error answer: status and a JSON body in the dialect's shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub code: &'static str,
    pub dialect: Dialect,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            code,
            dialect: Dialect::OpenAi,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn in_dialect(mut self, d: Dialect) -> ApiError {
        self.dialect = d;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.dialect {
            Dialect::Ollama => serde_json::json!({ "error": self.message }),
            Dialect::OpenAi => {
                let kind = if self.status.is_server_error() {
                    "server_error"
                } else {
                    "invalid_request_error"
                };
                serde_json::json!({ "error": {
                    "message": self.message,
                    "type": kind,
                    "param": null,
                    "code": self.code,
                }})
            }
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// Parses a JSON request body, turning every failure (too large, not JSON, wrong types) into a
/// 4xx that says what was wrong.
pub fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    dialect: Dialect,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        let code = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "bad_body"
        };
        ApiError::new(r.status(), code, r.body_text()).in_dialect(dialect)
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let what = if e.is_data() {
            "the request has a field of the wrong type or a missing field"
        } else {
            "the request body is not valid JSON"
        };
        ApiError::bad_request(format!("{what}: {e}")).in_dialect(dialect)
    })
}

/// A string or a list of strings (OpenAI's `stop`, a completion's `prompt`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Sampling options gathered from either dialect; `None` takes `edgellm run`'s default.
#[derive(Debug, Default)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i64>,
    pub seed: Option<i64>,
    /// Tokens to generate at most; `None` or a negative number: until the context is full.
    pub max_tokens: Option<i64>,
    pub stop: Vec<String>,
}

/// Most stop sequences a request may give, and their longest length in bytes.
const MAX_STOPS: usize = 16;
const MAX_STOP_BYTES: usize = 256;

impl Sampling {
    /// The sampler's parameters, each one checked (a 400 names the bad one).
    pub fn params(&self) -> Result<SamplerParams, ApiError> {
        let d = SamplerParams::default();
        let bad = |name: &str, expected: &str, v: f64| {
            Err(ApiError::bad_request(format!(
                "`{name}` must be {expected}, got {v}"
            )))
        };
        let temperature = self.temperature.unwrap_or(d.temperature);
        if !(temperature.is_finite() && temperature >= 0.0) {
            return bad("temperature", "finite and >= 0", temperature as f64);
        }
        let top_p = self.top_p.unwrap_or(d.top_p);
        if !(top_p.is_finite() && (0.0..=1.0).contains(&top_p)) {
            return bad("top_p", "in [0, 1]", top_p as f64);
        }
        let min_p = self.min_p.unwrap_or(d.min_p);
        if !(min_p.is_finite() && (0.0..=1.0).contains(&min_p)) {
            return bad("min_p", "in [0, 1]", min_p as f64);
        }
        let repeat_penalty = self.repeat_penalty.unwrap_or(d.repeat_penalty);
        if !(repeat_penalty.is_finite() && repeat_penalty > 0.0) {
            return bad("repeat_penalty", "finite and > 0", repeat_penalty as f64);
        }
        let top_k = match self.top_k {
            None => d.top_k,
            Some(k) if k <= 0 => 0,
            Some(k) => usize::try_from(k).unwrap_or(usize::MAX),
        };
        let repeat_last_n = match self.repeat_last_n {
            None => d.repeat_last_n,
            Some(n) if (0..=4096).contains(&n) => n as usize,
            Some(n) => return bad("repeat_last_n", "in [0, 4096]", n as f64),
        };
        let seed = match self.seed {
            Some(s) if s >= 0 => s as u64,
            _ => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        };
        if self.stop.len() > MAX_STOPS {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_STOPS} stop sequences, got {}",
                self.stop.len()
            )));
        }
        if self.stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::bad_request(format!(
                "a stop sequence is longer than {MAX_STOP_BYTES} bytes"
            )));
        }
        Ok(SamplerParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            seed,
        })
    }
}

/// Checks the `model` a request names against the one served (`NAME` or `NAME:latest`; absent
/// means the served one).
pub fn check_model(st: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        None | Some("") => Ok(()),
        Some(m) if m == st.model_name || m.strip_suffix(":latest") == Some(&st.model_name) => {
            Ok(())
        }
        Some(m) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "model `{m}` is not served here: this server runs `{}` (see /v1/models or /api/tags)",
                st.model_name
            ),
        )),
    }
}

/// Checks a chat role, mapping OpenAI's `developer` to `system`.
pub fn check_role(role: &str) -> Result<&str, ApiError> {
    match role {
        "system" | "user" | "assistant" | "tool" => Ok(role),
        "developer" => Ok("system"),
        other => Err(ApiError::bad_request(format!(
            "unknown message role `{other}`: expected system, user, assistant or tool"
        ))),
    }
}

/// Prompt ids for a conversation, through the model's chat template (the same path as
/// `edgellm run`), ending with the assistant's turn.
pub fn chat_ids(st: &AppState, messages: &[Message]) -> Result<Vec<u32>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request("`messages` is empty"));
    }
    let loaded = st.loaded;
    let tok = &loaded.tokenizer;
    let text = match loaded.chat_template() {
        Some(template) => {
            let name = |id: Option<u32>| {
                id.map(|i| tok.token_text(i).to_string())
                    .unwrap_or_default()
            };
            chat::render(
                template,
                messages,
                &name(tok.bos_id()),
                &name(tok.eos_id()),
                true,
            )
            .map_err(|e| ApiError::bad_request(format!("{e:#}")))?
        }
        None => messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    };
    Ok(encode(st, &text))
}

/// Ids of `text` fed as is (special-token text parsed), with BOS when the model wants one.
pub fn encode(st: &AppState, text: &str) -> Vec<u32> {
    let tok = &st.loaded.tokenizer;
    let mut ids = Vec::new();
    tok.encode(text, true, &mut ids);
    if let (true, Some(bos)) = (tok.add_bos(), tok.bos_id()) {
        if ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    ids
}

/// A queued generation, read from the I/O side.
pub struct Generation {
    stream: TokenStream,
    stops: StopFilter,
    hit_stop: bool,
    pending_done: Option<Summary>,
    finished: bool,
    /// When the request arrived.
    pub arrived: Instant,
    /// Seconds spent preparing the prompt (template and tokenizer).
    pub setup_s: f64,
}

/// What a [`Generation`] yields.
pub enum Out {
    Text(String),
    Done(Final),
    Error(String),
}

/// The end of a generation.
#[derive(Clone, Copy, Debug)]
pub struct Final {
    pub summary: Summary,
    /// `stop` (end of generation or a stop sequence) or `length`.
    pub reason: &'static str,
}

/// Checks the prompt's length against the context, caps `max_tokens`, and queues the job.
pub fn start(
    st: &AppState,
    prompt: Vec<u32>,
    sampling: &Sampling,
    arrived: Instant,
) -> Result<Generation, ApiError> {
    if st.draining.load(Ordering::Acquire) {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        );
        e.retry_after = Some(5);
        return Err(e);
    }
    let params = sampling.params()?;
    let ctx = st.context;
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty"));
    }
    if prompt.len() >= ctx {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "context_length_exceeded",
            format!(
                "the prompt has {} tokens but the context holds {ctx} (with room for at least one \
                 generated token): shorten it by {} tokens",
                prompt.len(),
                prompt.len() + 1 - ctx
            ),
        ));
    }
    let room = ctx - prompt.len();
    let max_new = match sampling.max_tokens {
        Some(n) if n >= 0 => (n as u64).min(room as u64) as usize,
        _ => room,
    };
    let (job, stream) = engine::job(
        prompt,
        params,
        max_new,
        st.loaded.tokenizer.max_token_bytes(),
    );
    match st.engine.submit(job) {
        Ok(()) => {}
        Err(SubmitError::Full) => {
            st.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                format!(
                    "{} requests are already waiting: retry later",
                    st.queue_bound
                ),
            );
            e.retry_after = Some(1);
            return Err(e);
        }
        Err(SubmitError::Stopped) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "stopped",
                "the inference thread has stopped",
            ))
        }
    }
    Ok(Generation {
        stream,
        stops: StopFilter::new(sampling.stop.clone()),
        hit_stop: false,
        pending_done: None,
        finished: false,
        setup_s: arrived.elapsed().as_secs_f64(),
        arrived,
    })
}

impl Generation {
    /// The next text, then one `Done` (or `Error`), then `None`.
    pub async fn next(&mut self) -> Option<Out> {
        if let Some(summary) = self.pending_done.take() {
            self.finished = true;
            return Some(Out::Done(self.finalize(summary)));
        }
        if self.finished {
            return None;
        }
        loop {
            match self.stream.next().await {
                Some(Event::Text(p)) => {
                    if self.hit_stop {
                        continue; // draining what came before the cancel took effect
                    }
                    let (emit, hit) = self.stops.push(p.as_str());
                    if hit {
                        self.hit_stop = true;
                        self.stream.cancel();
                    }
                    if !emit.is_empty() {
                        return Some(Out::Text(emit));
                    }
                }
                Some(Event::Done(summary)) => {
                    let rest = if self.hit_stop {
                        String::new()
                    } else {
                        self.stops.flush()
                    };
                    if rest.is_empty() {
                        self.finished = true;
                        return Some(Out::Done(self.finalize(summary)));
                    }
                    self.pending_done = Some(summary);
                    return Some(Out::Text(rest));
                }
                Some(Event::Failed(msg)) => {
                    self.finished = true;
                    return Some(Out::Error(msg));
                }
                None => {
                    self.finished = true;
                    return Some(Out::Error("the generation was cancelled".into()));
                }
            }
        }
    }

    fn finalize(&self, summary: Summary) -> Final {
        let reason = if self.hit_stop {
            "stop"
        } else {
            summary.stop.name()
        };
        Final { summary, reason }
    }

    /// Reads everything: the whole text and the end (or the error).
    pub async fn collect(mut self) -> Result<(String, Final), ApiError> {
        let mut text = String::new();
        while let Some(out) = self.next().await {
            match out {
                Out::Text(t) => text.push_str(&t),
                Out::Done(f) => return Ok((text, f)),
                Out::Error(e) => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "generation_failed",
                        e,
                    ))
                }
            }
        }
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generation_failed",
            "the generation ended without a result",
        ))
    }
}

/// Holds back text that could be the start of a stop sequence; cuts the text at the first one.
pub struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

impl StopFilter {
    pub fn new(stops: Vec<String>) -> StopFilter {
        StopFilter {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Adds `piece`; returns the text that is safe to send and whether a stop sequence was found
    /// (the text before it is sent, the rest dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (piece.to_string(), false);
        }
        self.pending.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s)).min() {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest tail that is a proper prefix of some stop sequence.
        let mut keep = 0;
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if k <= keep {
                    break;
                }
                if s.is_char_boundary(k) && self.pending.ends_with(&s[..k]) {
                    keep = k;
                    break;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// What is held back, at the end of the text.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Seconds to whole nanoseconds (Ollama's durations).
pub fn ns(s: f64) -> u64 {
    (s * 1e9) as u64
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An RFC 3339 UTC timestamp (`2026-01-02T03:04:05.123456789Z`) for `t`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut f = StopFilter::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = f.push(p);
            out.push_str(&t);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&f.flush());
        (out, false)
    }

    #[test]
    fn stop_sequences_across_pieces() {
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dxy"]),
            ("abc".into(), true)
        );
        assert_eq!(run(&["END"], &["ab", "cE", "N"]), ("abcEN".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(
            run(&["\n\n", "x"], &["hi\n", "\nthere"]),
            ("hi".into(), true)
        );
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
    }

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_251_200); // 2024-03-01
        assert_eq!(rfc3339(t), "2024-03-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn sampling_checks() {
        let s = Sampling {
            temperature: Some(-1.0),
            ..Sampling::default()
        };
        assert!(s.params().unwrap_err().message.contains("temperature"));
        let s = Sampling {
            top_k: Some(-1),
            seed: Some(7),
            ..Sampling::default()
        };
        let p = s.params().unwrap();
        assert_eq!((p.top_k, p.seed), (0, 7));
    }
}
