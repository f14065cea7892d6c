//! The Ollama dialect: `POST /api/generate` and `POST /api/chat` (newline-delimited JSON by
//! default, one object with `"stream": false`; the last object carries `done`, `done_reason`,
//! the counts and the nanosecond durations), `GET /api/tags`, `GET /api/version`.

use super::api::{self, ApiError, Dialect, Final, Generation, Out, Sampling};
use super::{stream_response, AppState, Sink};
use crate::chat::Message;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// `options` of a request: the sampling ones are used, the others (e.g. `num_ctx`) ignored.
#[derive(Debug, Default, Deserialize)]
struct Options {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<i64>,
    seed: Option<i64>,
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
}

impl Options {
    fn sampling(self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
            max_tokens: self.num_predict,
            stop: self.stop.unwrap_or_default(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct GenerateRequest {
    model: Option<String>,
    prompt: Option<String>,
    system: Option<String>,
    stream: Option<bool>,
    #[serde(default)]
    raw: bool,
    options: Option<Options>,
    format: Option<Value>,
    images: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: String,
    images: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: Option<String>,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    stream: Option<bool>,
    options: Option<Options>,
    format: Option<Value>,
    tools: Option<Vec<Value>>,
}

/// Refuses what a text-only model without constrained decoding cannot honour, rather than
/// ignoring it: images, a structured `format`, tools.
fn unsupported(
    format: Option<&Value>,
    images: bool,
    tools: Option<&Vec<Value>>,
) -> Result<(), ApiError> {
    if images {
        return Err(ApiError::bad_request(
            "images are not supported: this model reads text",
        ));
    }
    if format.is_some_and(|f| !(f.is_null() || f == "")) {
        return Err(ApiError::bad_request(
            "`format` (structured output) is not supported",
        ));
    }
    if tools.is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::bad_request("`tools` are not supported"));
    }
    Ok(())
}

fn now() -> String {
    api::rfc3339(SystemTime::now())
}

/// The fields of the last object.
fn done_fields(obj: &mut Map<String, Value>, gen_arrived: Instant, setup_s: f64, f: &Final) {
    let s = &f.summary;
    obj.insert("done".into(), json!(true));
    obj.insert("done_reason".into(), json!(f.reason));
    obj.insert(
        "total_duration".into(),
        json!(api::ns(gen_arrived.elapsed().as_secs_f64())),
    );
    obj.insert("load_duration".into(), json!(api::ns(setup_s + s.queue_s)));
    obj.insert("prompt_eval_count".into(), json!(s.prompt_tokens));
    obj.insert("prompt_eval_duration".into(), json!(api::ns(s.prefill_s)));
    obj.insert("eval_count".into(), json!(s.generated));
    obj.insert("eval_duration".into(), json!(api::ns(s.decode_s)));
}

/// Builds one object: `text` in the dialect's place (`response` or `message.content`).
fn object(model: &str, chat: bool, text: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("model".into(), json!(model));
    m.insert("created_at".into(), json!(now()));
    if chat {
        m.insert(
            "message".into(),
            json!({ "role": "assistant", "content": text }),
        );
    } else {
        m.insert("response".into(), json!(text));
    }
    m.insert("done".into(), json!(false));
    m
}

/// Answers a started generation: a stream of objects, or one.
async fn respond(st: &AppState, gen: Generation, stream: bool, chat: bool) -> Response {
    let model = st.model_name.clone();
    let (arrived, setup_s) = (gen.arrived, gen.setup_s);
    if !stream {
        return match gen.collect().await {
            Ok((text, f)) => {
                let mut obj = object(&model, chat, &text);
                done_fields(&mut obj, arrived, setup_s, &f);
                Json(Value::Object(obj)).into_response()
            }
            Err(e) => e.in_dialect(Dialect::Ollama).into_response(),
        };
    }
    stream_response("application/x-ndjson", move |sink| async move {
        drive(sink, gen, model, chat, arrived, setup_s).await
    })
}

async fn line(sink: &Sink, v: Value) -> bool {
    sink.send(format!("{v}\n")).await
}

async fn drive(
    sink: Sink,
    mut gen: Generation,
    model: String,
    chat: bool,
    arrived: Instant,
    setup_s: f64,
) {
    loop {
        let out = tokio::select! {
            out = gen.next() => out,
            _ = sink.closed() => return,
        };
        match out {
            Some(Out::Text(t)) => {
                if !line(&sink, Value::Object(object(&model, chat, &t))).await {
                    return;
                }
            }
            Some(Out::Done(f)) => {
                let mut obj = object(&model, chat, "");
                done_fields(&mut obj, arrived, setup_s, &f);
                let _ = line(&sink, Value::Object(obj)).await;
                return;
            }
            Some(Out::Error(e)) => {
                let _ = line(&sink, json!({ "error": e })).await;
                return;
            }
            None => return,
        }
    }
}

/// The answer to a request that only loads the model (no prompt, no messages).
fn loaded(st: &AppState, chat: bool) -> Response {
    let mut obj = object(&st.model_name, chat, "");
    obj.insert("done".into(), json!(true));
    obj.insert("done_reason".into(), json!("load"));
    Json(Value::Object(obj)).into_response()
}

/// `POST /api/generate`: the prompt goes through the chat template (with `system` first, if
/// given) unless `raw` is set.
pub async fn generate(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let result = (|| {
        let req: GenerateRequest = api::parse_body(body, Dialect::Ollama)?;
        api::check_model(&st, req.model.as_deref())?;
        let images = req.images.as_ref().is_some_and(|i| !i.is_empty());
        unsupported(req.format.as_ref(), images, None)?;
        let prompt = req.prompt.unwrap_or_default();
        if prompt.is_empty() && req.system.is_none() {
            return Ok(None);
        }
        let sampling = req.options.unwrap_or_default().sampling();
        let ids = if req.raw {
            api::encode(&st, &prompt)
        } else {
            let mut msgs = Vec::with_capacity(2);
            if let Some(system) = req.system {
                msgs.push(Message {
                    role: "system".into(),
                    content: system,
                });
            }
            msgs.push(Message {
                role: "user".into(),
                content: prompt,
            });
            api::chat_ids(&st, &msgs)?
        };
        let gen = api::start(&st, ids, &sampling, arrived)?;
        Ok::<_, ApiError>(Some((req.stream.unwrap_or(true), gen)))
    })();
    match result {
        Ok(Some((stream, gen))) => respond(&st, gen, stream, false).await,
        Ok(None) => loaded(&st, false),
        Err(e) => e.in_dialect(Dialect::Ollama).into_response(),
    }
}

/// `POST /api/chat`.
pub async fn chat(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let result = (|| {
        let req: ChatRequest = api::parse_body(body, Dialect::Ollama)?;
        api::check_model(&st, req.model.as_deref())?;
        let images = req
            .messages
            .iter()
            .any(|m| m.images.as_ref().is_some_and(|i| !i.is_empty()));
        unsupported(req.format.as_ref(), images, req.tools.as_ref())?;
        if req.messages.is_empty() {
            return Ok(None);
        }
        let msgs = req
            .messages
            .into_iter()
            .map(|m| {
                Ok(Message {
                    role: api::check_role(&m.role)?.to_string(),
                    content: m.content,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let sampling = req.options.unwrap_or_default().sampling();
        let ids = api::chat_ids(&st, &msgs)?;
        let gen = api::start(&st, ids, &sampling, arrived)?;
        Ok::<_, ApiError>(Some((req.stream.unwrap_or(true), gen)))
    })();
    match result {
        Ok(Some((stream, gen))) => respond(&st, gen, stream, true).await,
        Ok(None) => loaded(&st, true),
        Err(e) => e.in_dialect(Dialect::Ollama).into_response(),
    }
}

/// The `details` object of `/api/tags` and `/api/show`.
fn details(st: &AppState) -> Value {
    json!({
        "format": "gguf",
        "family": st.family,
        "families": [st.family],
        "parameter_size": st.parameter_size,
        "quantization_level": st.quantization,
    })
}

/// `GET /api/tags`: the one model served.
pub async fn tags(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({ "models": [{
        "name": st.model_name,
        "model": st.model_name,
        "modified_at": st.modified_at,
        "size": st.model_bytes,
        "digest": st.fingerprint,
        "details": details(&st),
    }]}))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct ShowRequest {
    model: Option<String>,
    /// The older name of `model`.
    name: Option<String>,
}

/// `POST /api/show`: the served model's details, its shape as GGUF keys, and its chat template
/// (what `ollama show` prints, and what `ollama run` asks for before it chats).
pub async fn show(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = (|| {
        let req: ShowRequest = api::parse_body(body, Dialect::Ollama)?;
        let model = req.model.or(req.name).filter(|m| !m.is_empty());
        let Some(model) = model else {
            return Err(ApiError::bad_request("`model` is required"));
        };
        api::check_model(&st, Some(&model))?;
        let c = &st.loaded.model.config;
        let a = &st.family;
        let mut info = Map::new();
        info.insert("general.architecture".into(), json!(a));
        for (key, v) in [
            ("context_length", c.train_context),
            ("embedding_length", c.dim),
            ("block_count", c.n_layers),
            ("feed_forward_length", c.ffn_dim),
            ("attention.head_count", c.n_heads),
            ("attention.head_count_kv", c.n_kv_heads),
            ("vocab_size", c.vocab_size),
        ] {
            info.insert(format!("{a}.{key}"), json!(v));
        }
        Ok(json!({
            "modelfile": format!("FROM {}\n", st.model_name),
            "parameters": "",
            "template": st.loaded.chat_template().unwrap_or_default(),
            "details": details(&st),
            "model_info": info,
            "capabilities": ["completion"],
            "modified_at": st.modified_at,
        }))
    })();
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.in_dialect(Dialect::Ollama).into_response(),
    }
}

/// `GET /api/version`.
pub async fn version() -> Response {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") })).into_response()
}
