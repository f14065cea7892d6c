//! The OpenAI dialect: `POST /v1/chat/completions`, `POST /v1/completions` (server-sent events
//! when `stream` is true, ending with `data: [DONE]`), `GET /v1/models`.

use super::api::{self, ApiError, Dialect, Final, OneOrMany, Out, Sampling};
use super::{stream_response, AppState, Sink};
use crate::chat::Message;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Fields both completion requests share.
#[derive(Debug, Deserialize)]
struct Common {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    seed: Option<i64>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    stop: Option<OneOrMany>,
    n: Option<u32>,
    response_format: Option<Value>,
    tools: Option<Vec<Value>>,
    /// `true` (chat) or a count (completions); `top_logprobs` a count.
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
}

impl Common {
    fn sampling(&mut self) -> Result<Sampling, ApiError> {
        if self.n.unwrap_or(1) != 1 {
            return Err(ApiError::bad_request("only `n` = 1 is supported"));
        }
        // Refused rather than ignored: no constrained decoding, no tool calls.
        if let Some(f) = &self.response_format {
            if !(f.is_null() || f["type"] == "text") {
                return Err(ApiError::bad_request(
                    "`response_format` other than text is not supported",
                ));
            }
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::bad_request("`tools` are not supported"));
        }
        let asks = |v: &Option<Value>| match v {
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            Some(Value::Null) | None => false,
            Some(_) => true,
        };
        if asks(&self.logprobs) || asks(&self.top_logprobs) {
            return Err(ApiError::bad_request(
                "`logprobs` are not supported: send false or leave it out",
            ));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if let Some(m) = max_tokens {
            if m < 1 {
                return Err(ApiError::bad_request(format!(
                    "`max_tokens` must be at least 1, got {m}"
                )));
            }
        }
        Ok(Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: None,
            seed: self.seed,
            max_tokens,
            stop: self
                .stop
                .take()
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
        })
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// A message's content: a string, or a list of parts of which only text is understood.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: OneOrMany,
    #[serde(flatten)]
    common: Common,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}-{:x}{:06x}",
        api::unix_now(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

fn usage(f: &Final) -> Value {
    json!({
        "prompt_tokens": f.summary.prompt_tokens,
        "completion_tokens": f.summary.generated,
        "total_tokens": f.summary.prompt_tokens + f.summary.generated,
    })
}

fn messages(raw: Vec<ChatMessage>) -> Result<Vec<Message>, ApiError> {
    raw.into_iter()
        .map(|m| {
            let role = api::check_role(&m.role)?.to_string();
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => s.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::bad_request(format!(
                                    "message content of type `{kind}` is not supported: text only"
                                )))
                            }
                        }
                    }
                    s
                }
            };
            Ok(Message { role, content })
        })
        .collect()
}

/// `POST /v1/chat/completions`.
pub async fn chat(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let result = (|| {
        let mut req: ChatRequest = api::parse_body(body, Dialect::OpenAi)?;
        api::check_model(&st, req.common.model.as_deref())?;
        let sampling = req.common.sampling()?;
        let msgs = messages(std::mem::take(&mut req.messages))?;
        let ids = api::chat_ids(&st, &msgs)?;
        let gen = api::start(&st, ids, &sampling, arrived)?;
        Ok::<_, ApiError>((req.common, gen))
    })();
    let (common, gen) = match result {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let id = new_id("chatcmpl");
    let created = api::unix_now();
    let model = st.model_name.clone();
    if !common.stream {
        return match gen.collect().await {
            Ok((text, f)) => Json(json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": st.fingerprint,
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": text },
                    "logprobs": null,
                    "finish_reason": f.reason,
                }],
                "usage": usage(&f),
            }))
            .into_response(),
            Err(e) => e.into_response(),
        };
    }
    let include_usage = common.include_usage();
    let fingerprint = st.fingerprint.clone();
    stream_response("text/event-stream", move |sink| async move {
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": fingerprint,
                "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
            })
        };
        if !sse(
            &sink,
            &chunk(json!({"role": "assistant", "content": ""}), None),
        )
        .await
        {
            return;
        }
        let usage_chunk = |f: &Final| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": fingerprint, "choices": [], "usage": usage(f),
            })
        };
        drive(
            sink,
            gen,
            |t| chunk(json!({ "content": t }), None),
            |f| {
                let mut v = vec![chunk(json!({}), Some(f.reason))];
                if include_usage {
                    v.push(usage_chunk(f));
                }
                v
            },
        )
        .await;
    })
}

/// `POST /v1/completions`: the prompt is fed as is, without the chat template.
pub async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let result = (|| {
        let mut req: CompletionRequest = api::parse_body(body, Dialect::OpenAi)?;
        api::check_model(&st, req.common.model.as_deref())?;
        let sampling = req.common.sampling()?;
        let prompt = match req.prompt {
            OneOrMany::One(p) => p,
            OneOrMany::Many(mut v) if v.len() == 1 => v.remove(0),
            OneOrMany::Many(_) => {
                return Err(ApiError::bad_request(
                    "`prompt` must be one string (batches are not supported)",
                ))
            }
        };
        let ids = api::encode(&st, &prompt);
        let gen = api::start(&st, ids, &sampling, arrived)?;
        Ok::<_, ApiError>((req.common, gen))
    })();
    let (common, gen) = match result {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let id = new_id("cmpl");
    let created = api::unix_now();
    let model = st.model_name.clone();
    if !common.stream {
        return match gen.collect().await {
            Ok((text, f)) => Json(json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": st.fingerprint,
                "choices": [{ "index": 0, "text": text, "logprobs": null, "finish_reason": f.reason }],
                "usage": usage(&f),
            }))
            .into_response(),
            Err(e) => e.into_response(),
        };
    }
    let include_usage = common.include_usage();
    let fingerprint = st.fingerprint.clone();
    stream_response("text/event-stream", move |sink| async move {
        let chunk = |text: &str, finish: Option<&str>| {
            json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": fingerprint,
                "choices": [{ "index": 0, "text": text, "logprobs": null, "finish_reason": finish }],
            })
        };
        drive(
            sink,
            gen,
            |t| chunk(t, None),
            |f| {
                let mut v = vec![chunk("", Some(f.reason))];
                if include_usage {
                    v.push(json!({
                        "id": id, "object": "text_completion", "created": created, "model": model,
                        "system_fingerprint": fingerprint, "choices": [], "usage": usage(f),
                    }));
                }
                v
            },
        )
        .await;
    })
}

/// Sends one server-sent event; `false` once the client has gone.
async fn sse(sink: &Sink, v: &Value) -> bool {
    sink.send(format!("data: {v}\n\n")).await
}

/// Streams a generation as events: one per text, the closing ones, then `data: [DONE]`. Stops
/// (and so cancels the generation) as soon as the client goes away.
async fn drive(
    sink: Sink,
    mut gen: api::Generation,
    text: impl Fn(&str) -> Value,
    done: impl Fn(&Final) -> Vec<Value>,
) {
    loop {
        let out = tokio::select! {
            out = gen.next() => out,
            _ = sink.closed() => return,
        };
        match out {
            Some(Out::Text(t)) => {
                if !sse(&sink, &text(&t)).await {
                    return;
                }
            }
            Some(Out::Done(f)) => {
                for v in done(&f) {
                    if !sse(&sink, &v).await {
                        return;
                    }
                }
                break;
            }
            Some(Out::Error(e)) => {
                let v = json!({ "error": { "message": e, "type": "server_error", "param": null, "code": "generation_failed" } });
                let _ = sse(&sink, &v).await;
                break;
            }
            None => break,
        }
    }
    let _ = sink.send("data: [DONE]\n\n".to_string()).await;
}

/// `GET /v1/models`.
pub async fn models(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({ "object": "list", "data": [model_object(&st)] })).into_response()
}

/// `GET /v1/models/{id}`: the served model, or 404 for any other id.
pub async fn model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match api::check_model(&st, Some(&id)) {
        Ok(()) => Json(model_object(&st)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn model_object(st: &AppState) -> Value {
    json!({
        "id": st.model_name,
        "object": "model",
        "created": st.created,
        "owned_by": "edgellm",
    })
}
