//! `edgellm serve`: Ollama- and OpenAI-compatible HTTP APIs over one inference thread.
//!
//! Threads: a small tokio runtime (`edgellm-io`, two workers) does all HTTP and JSON work, the
//! chat template and the tokenizer; one inference thread (`edgellm-infer`, see [`engine`]) owns
//! the session and the sampler and decodes one request at a time. Between them: a bounded job
//! queue (`--queue N`; full means 503 with `Retry-After`) and, per job, a fixed-capacity channel
//! of text pieces. A client that goes away drops its stream, which sets the job's cancel flag; the
//! inference thread reads it before every token.

mod api;
pub mod config;
mod engine;
mod listener;
mod metrics;
mod ollama;
mod openai;
mod systemd;

pub use config::ServeArgs;

use crate::load::{self, Loaded, ModelFile};
use anyhow::{Context, Result};
use api::{ApiError, Dialect};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use config::Settings;
use edgellm_core::session::NumericPath;
use engine::{EngineConfig, EngineHandle};
use metrics::Metrics;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

/// What every handler sees.
pub struct AppState {
    loaded: &'static Loaded<'static>,
    engine: EngineHandle,
    metrics: Arc<Metrics>,
    model_name: String,
    context: usize,
    queue_bound: usize,
    /// Set by SIGTERM: new generations get 503 while running ones finish.
    draining: AtomicBool,
    api_key: Option<String>,
    /// Identifies the model file (size and modification time) for `/api/tags` and responses.
    fingerprint: String,
    created: u64,
    modified_at: String,
    model_bytes: u64,
    family: String,
    parameter_size: String,
    quantization: String,
}

/// The writing end of a streamed response body.
pub struct Sink(mpsc::Sender<Bytes>);

impl Sink {
    /// Queues `data` for the client; `false` once the client has gone.
    pub async fn send(&self, data: impl Into<Bytes>) -> bool {
        self.0.send(data.into()).await.is_ok()
    }

    /// Resolves when the client has gone (the response body was dropped).
    pub async fn closed(&self) {
        self.0.closed().await
    }
}

/// A streamed response whose body `f` writes from its own task.
pub fn stream_response<F, Fut>(content_type: &'static str, f: F) -> Response
where
    F: FnOnce(Sink) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    tokio::spawn(f(Sink(tx)));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

fn dialect_of(path: &str) -> Dialect {
    if path.starts_with("/api/") {
        Dialect::Ollama
    } else {
        Dialect::OpenAi
    }
}

/// The endpoint label of `/metrics` (a fixed set, so the label cannot grow without bound).
fn endpoint(path: &str) -> &'static str {
    const KNOWN: [&str; 11] = [
        "/api/generate",
        "/api/chat",
        "/api/tags",
        "/api/show",
        "/api/version",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/health",
        "/metrics",
        "/",
    ];
    KNOWN.into_iter().find(|k| *k == path).unwrap_or("other")
}

/// Counts every answer by endpoint and status.
async fn count(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let ep = endpoint(req.uri().path());
    let resp = next.run(req).await;
    st.metrics.request(ep, resp.status().as_u16());
    resp
}

/// Reads a request's body before the handler runs, within `timeout` and up to `max_body` bytes,
/// so that a client sending its body slowly, or not at all, cannot hold a connection: it gets
/// 408 and the connection is closed.
async fn read_body(req: Request, next: Next, max_body: usize, timeout: Duration) -> Response {
    let dialect = dialect_of(req.uri().path());
    let (parts, body) = req.into_parts();
    let err = match tokio::time::timeout(timeout, axum::body::to_bytes(body, max_body)).await {
        Ok(Ok(bytes)) => {
            return next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the request body is larger than {max_body} bytes (`max_body`)"),
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("cannot read the request body: {e}"),
                )
            }
        }
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s (`request_timeout`)",
                timeout.as_secs()
            ),
        ),
    };
    let mut resp = err.in_dialect(dialect).into_response();
    // The rest of the body is not read: the connection cannot carry another request.
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

/// `Authorization: Bearer KEY` on every endpoint but `/health`, compared in constant time.
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        if req.uri().path() != "/health" {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            let ok = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(key.as_bytes())));
            if !ok {
                let mut resp = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    "a valid API key is required: send `Authorization: Bearer KEY`",
                )
                .in_dialect(dialect_of(req.uri().path()))
                .into_response();
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("header"));
                return resp;
            }
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> Response {
    let path = req.uri().path();
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint at {path}"),
    )
    .in_dialect(dialect_of(path))
    .into_response()
}

async fn wrong_method(req: Request) -> Response {
    let path = req.uri().path();
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {path}", req.method()),
    )
    .in_dialect(dialect_of(path))
    .into_response()
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let draining = st.draining.load(Ordering::Acquire);
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "status": if draining { "draining" } else { "ok" },
        "model": st.model_name,
        "context": st.context,
        "queue_depth": st.metrics.queue_depth.load(Ordering::Relaxed),
        "queue_bound": st.queue_bound,
    });
    (status, Json(body)).into_response()
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(&st.model_name),
    )
        .into_response()
}

async fn root() -> &'static str {
    "edgellm is running\n"
}

/// The routes.
fn router(st: Arc<AppState>, max_body: usize, timeout: Duration) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/version", get(ollama::version))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            read_body(req, next, max_body, timeout)
        }))
        .layer(middleware::from_fn_with_state(st.clone(), auth))
        .layer(middleware::from_fn_with_state(st.clone(), count))
        .with_state(st)
}

/// What `/api/tags` says about the file: family, size label, dominant tensor type.
fn describe(loaded: &Loaded<'_>) -> (String, String, String) {
    let family = loaded.model.config.arch.name().to_string();
    let size = loaded
        .gguf
        .get_str("general.size_label")
        .unwrap_or("")
        .to_string();
    let mut by_type = std::collections::BTreeMap::<&str, usize>::new();
    for t in loaded.gguf.tensors() {
        *by_type.entry(t.ty.name()).or_default() += t.data.len();
    }
    let quant = by_type
        .into_iter()
        .max_by_key(|(_, b)| *b)
        .map(|(t, _)| t.to_string())
        .unwrap_or_default();
    (family, size, quant)
}

/// SIGTERM and SIGINT handlers, installed before the service says it is ready: a signal that
/// arrives any time after `READY=1` starts a drain instead of killing the process.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    /// Resolves when SIGTERM or SIGINT arrives.
    async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// `edgellm serve`.
pub fn serve(args: ServeArgs) -> Result<()> {
    let s = Settings::resolve(args)?;
    let started = Instant::now();
    let file: &'static ModelFile = Box::leak(Box::new(load::open_model(&s.model)?));
    let kernels = load::kernels(s.model.kernels.as_deref())?;
    let loaded: &'static Loaded<'static> =
        Box::leak(Box::new(Loaded::new(file.gguf()?, &kernels)?));
    // What a session over this model runs (its attention kernels follow its weight types).
    let kernels = kernels.for_weights(loaded.model.matmul_types());
    eprintln!("kernels: {}", kernels.describe());
    let context = crate::run::context_len(&s.model, loaded, file.len(), 2)?;
    let path = if s.model.exact {
        NumericPath::Exact
    } else {
        NumericPath::Fast
    };
    let metrics = Arc::new(Metrics::new());
    let model_args = s.model.clone();
    let gpu_args = s.model.clone();
    let (engine, thread) = engine::start(
        EngineConfig {
            loaded,
            kernels,
            context,
            path,
            kv: crate::run::kv_type(&s.model),
            queue: s.queue,
            make_pool: Box::new(move || crate::run::make_pool(&model_args)),
            make_gpu: Box::new(move || crate::device::select(&gpu_args, loaded, context)),
        },
        metrics.clone(),
        started,
    )?;
    let meta = std::fs::metadata(&s.model.model).ok();
    let modified = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .unwrap_or(std::time::UNIX_EPOCH);
    let mtime = modified
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (family, parameter_size, quantization) = describe(loaded);
    let cancel_all = engine.cancel_all.clone();
    let heartbeat = engine.heartbeat_ms.clone();
    let state = Arc::new(AppState {
        loaded,
        engine,
        metrics,
        model_name: s.model_name.clone(),
        context,
        queue_bound: s.queue,
        draining: AtomicBool::new(false),
        api_key: s.api_key.clone(),
        fingerprint: format!("edgellm-{:x}-{mtime:x}", file.len()),
        created: mtime,
        modified_at: api::rfc3339(modified),
        model_bytes: file.len(),
        family,
        parameter_size,
        quantization,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("edgellm-io")
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    let result = rt.block_on(run_server(s, state, started, heartbeat, cancel_all.clone()));
    // Whatever is still queued or running is cancelled; the inference thread then exits.
    cancel_all.store(true, Ordering::Release);
    rt.shutdown_timeout(Duration::from_secs(1));
    let _ = thread.join();
    eprintln!("stopped");
    result
}

/// A warning when the service listens beyond this machine with no API key.
fn exposure_warning(addr: std::net::SocketAddr, api_key: bool) -> Option<String> {
    (!addr.ip().is_loopback() && !api_key).then(|| {
        format!(
            "warning: listening on {addr} without an API key: anyone who can reach this address \
             can use the model (set --api-key, api_key in the config file, or EDGELLM_API_KEY)"
        )
    })
}

async fn run_server(
    s: Settings,
    state: Arc<AppState>,
    started: Instant,
    heartbeat: Arc<std::sync::atomic::AtomicU64>,
    cancel_all: Arc<AtomicBool>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((s.host.as_str(), s.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", s.host, s.port))?;
    let addr = listener.local_addr()?;
    if let Some(w) = exposure_warning(addr, s.api_key.is_some()) {
        eprintln!("{w}");
    }
    let signals = Signals::install()?;
    eprintln!(
        "serving {} (context {}, queue {}) on http://{addr}{}",
        s.model_name,
        state.context,
        s.queue,
        if s.api_key.is_some() {
            " (API key required)"
        } else {
            ""
        }
    );
    systemd::notify(&format!(
        "READY=1\nSTATUS=serving {} on {addr}",
        s.model_name
    ));
    if let Some(period) = systemd::watchdog_period() {
        tokio::spawn(systemd::watchdog(period, started, heartbeat));
    }
    let (sig_tx, sig_rx) = tokio::sync::watch::channel(false);
    let sig_st = state.clone();
    tokio::spawn(async move {
        signals.recv().await;
        // Before anything is woken: with no connection open the server future can finish at
        // once, and the drain below would then never run.
        sig_st.draining.store(true, Ordering::Release);
        systemd::notify("STOPPING=1");
        let _ = sig_tx.send(true);
    });
    let listener = listener::Limited::new(listener, s.max_connections);
    let app = router(state.clone(), s.max_body, s.request_timeout);
    let server = listener::serve(listener, app, s.request_timeout, sig_rx.clone());
    let mut on_signal = sig_rx.clone();
    let drain = async move {
        if on_signal.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
        eprintln!(
            "draining: finishing running requests (at most {} s)",
            s.drain_seconds
        );
        tokio::time::sleep(Duration::from_secs(s.drain_seconds)).await;
        eprintln!("drain time is up: cancelling what still runs");
        cancel_all.store(true, Ordering::Release);
        // Streams end within a token; give slow connections a moment to take their last bytes.
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    tokio::select! {
        () = server => {}
        _ = drain => eprintln!("closing the connections that remain"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::exposure_warning;

    #[test]
    fn listening_beyond_loopback_without_a_key_is_warned() {
        let addr = |a: &str| a.parse().unwrap();
        let w = exposure_warning(addr("0.0.0.0:11434"), false).expect("a warning");
        assert!(
            w.contains("0.0.0.0:11434") && w.contains("--api-key"),
            "{w}"
        );
        assert!(exposure_warning(addr("192.168.1.5:80"), false).is_some());
        assert!(exposure_warning(addr("0.0.0.0:11434"), true).is_none());
        assert!(exposure_warning(addr("127.0.0.1:11434"), false).is_none());
        assert!(exposure_warning(addr("[::1]:11434"), false).is_none());
    }
}
