//! The inference thread: it alone owns the session (created once, reset per request) and the
//! sampler (re-parameterised per request), takes one job at a time from the bounded job queue and
//! streams the text of each token back through the job's own fixed-capacity channel.
//!
//! Invariant: between a job's first and last token the inference thread allocates nothing. Text
//! travels in fixed-size [`Piece`]s through a `std::sync::mpsc::sync_channel` whose buffer is
//! allocated when the job is made (on an I/O thread) and is large enough for every piece the job
//! can produce, so a send never blocks and never allocates; a slow client therefore cannot stall
//! the thread. The heap operations of every decode are counted with the thread's allocation
//! counters and exported as `edgellm_decode_heap_operations_total` (a test holds it at zero).

use super::metrics::Metrics;
use crate::generate::{generate_with_step, StopReason};
use crate::load::Loaded;
use anyhow::Result;
use edgellm_core::parallel::Parallel;
use edgellm_core::sampler::{Sampler, SamplerParams};
use edgellm_core::session::{KvType, NumericPath, Session, SessionOptions};
use edgellm_cuda::GpuEngine;
use edgellm_hal::counters::CountingAlloc;
use edgellm_kernels::Kernels;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Bytes of text one [`Piece`] carries; a longer token text is split over several pieces.
pub const PIECE_BYTES: usize = 62;

/// A fragment of generated text in a fixed buffer: sent per token without touching the heap.
#[derive(Clone, Copy)]
pub struct Piece {
    len: u8,
    buf: [u8; PIECE_BYTES],
}

impl Piece {
    /// The text (always whole UTF-8 characters).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

/// Splits `text` at character boundaries into pieces of at most [`PIECE_BYTES`] bytes.
fn for_each_piece(mut text: &str, mut f: impl FnMut(Piece) -> bool) -> bool {
    while !text.is_empty() {
        let mut cut = text.len().min(PIECE_BYTES);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut p = Piece {
            len: cut as u8,
            buf: [0; PIECE_BYTES],
        };
        p.buf[..cut].copy_from_slice(&text.as_bytes()[..cut]);
        if !f(p) {
            return false;
        }
        text = &text[cut..];
    }
    true
}

/// What happened to a finished job.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub prompt_tokens: usize,
    /// Tokens generated, a final end-of-generation token included.
    pub generated: usize,
    pub stop: StopReason,
    /// Seconds the job waited in the queue.
    pub queue_s: f64,
    /// Seconds of prefill (prompt evaluation).
    pub prefill_s: f64,
    /// Seconds from the end of prefill to the last token.
    pub decode_s: f64,
}

/// A message from the inference thread to the request that owns the job.
pub enum Event {
    Text(Piece),
    Done(Summary),
    Failed(String),
}

/// One generation request, ready to run: everything here was checked on the I/O side.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: SamplerParams,
    pub max_new: usize,
    pub enqueued: Instant,
    cancel: Arc<AtomicBool>,
    events: SyncSender<Event>,
    wake: Arc<Notify>,
}

/// The receiving end of a job: yields its events; dropping it cancels the generation.
pub struct TokenStream {
    events: Receiver<Event>,
    wake: Arc<Notify>,
    cancel: Arc<AtomicBool>,
}

impl TokenStream {
    /// The next event, or `None` when the inference thread has let go of the job.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            match self.events.try_recv() {
                Ok(ev) => return Some(ev),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => self.wake.notified().await,
            }
        }
    }

    /// Asks the inference thread to stop this job before its next token.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Makes a job and the stream of its events. The channel holds every piece the job can produce.
pub fn job(
    prompt: Vec<u32>,
    params: SamplerParams,
    max_new: usize,
    max_token_bytes: usize,
) -> (Job, TokenStream) {
    // A token's text plus up to 3 carried bytes of a split character, in pieces; plus the summary.
    let per_token = (max_token_bytes + 3).div_ceil(PIECE_BYTES) + 1;
    let capacity = max_new.saturating_mul(per_token).saturating_add(2);
    let (tx, rx) = mpsc::sync_channel(capacity);
    let cancel = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let job = Job {
        prompt,
        params,
        max_new,
        enqueued: Instant::now(),
        cancel: cancel.clone(),
        events: tx,
        wake: wake.clone(),
    };
    (
        job,
        TokenStream {
            events: rx,
            wake,
            cancel,
        },
    )
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue holds as many jobs as it may.
    Full,
    /// The inference thread has stopped.
    Stopped,
}

/// The I/O side's handle on the inference thread.
pub struct EngineHandle {
    jobs: SyncSender<Job>,
    metrics: Arc<Metrics>,
    /// Set to cancel every running and queued job (the end of a drain).
    pub cancel_all: Arc<AtomicBool>,
    /// Milliseconds since start at the thread's last sign of life (for the systemd watchdog).
    pub heartbeat_ms: Arc<AtomicU64>,
}

impl EngineHandle {
    /// Queues `job` without waiting.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.metrics.queue_depth.fetch_add(1, Ordering::AcqRel);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::AcqRel);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }
}

/// What the inference thread needs to build its session.
pub struct EngineConfig {
    pub loaded: &'static Loaded<'static>,
    pub kernels: Kernels,
    pub context: usize,
    pub path: NumericPath,
    /// The CPU session's KV cache type.
    pub kv: KvType,
    pub queue: usize,
    /// Builds the inference workers (pinned and real-time as the model options say) on the
    /// inference thread itself, so the calling thread is worker 0.
    pub make_pool: Box<dyn FnOnce() -> Result<crate::rt::Exec> + Send>,
    /// Opens the GPU engine when `--device` and the board say so and a device is usable, on
    /// the inference thread (which then owns the CUDA context); `None`: the CPU.
    pub make_gpu: Box<dyn FnOnce() -> Result<Option<GpuEngine>> + Send>,
}

/// Where the inference thread runs the model (one value, on that thread's stack, for its
/// whole life: the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum Backend<'a> {
    Cpu(Session<'a, 'a>),
    Gpu(GpuEngine),
}

/// Starts the inference thread; returns its handle and the thread, which ends once every
/// [`EngineHandle`] is dropped and the queue is empty. Fails if the session cannot be made.
pub fn start(
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
    epoch: Instant,
) -> Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(cfg.queue.max(1));
    let cancel_all = Arc::new(AtomicBool::new(false));
    let heartbeat_ms = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let handle = EngineHandle {
        jobs: jobs_tx,
        metrics: metrics.clone(),
        cancel_all: cancel_all.clone(),
        heartbeat_ms: heartbeat_ms.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("edgellm-infer".into())
        .spawn(move || {
            let loaded = cfg.loaded;
            let setup = (|| -> Result<_> {
                let backend = match (cfg.make_gpu)()? {
                    Some(engine) => Backend::Gpu(engine),
                    None => Backend::Cpu(Session::with_kv_advised(
                        &loaded.model,
                        cfg.kernels,
                        SessionOptions {
                            context: cfg.context,
                            path: cfg.path,
                        },
                        cfg.kv,
                        crate::run::advise_arena,
                    )?),
                };
                let sampler =
                    Sampler::new(SamplerParams::default(), loaded.model.config.vocab_size)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                let pool = (cfg.make_pool)()?;
                Ok((backend, sampler, pool))
            })();
            let (mut backend, mut sampler, pool) = match setup {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let worker = Worker {
                loaded,
                metrics,
                cancel_all,
                heartbeat_ms,
                epoch,
            };
            worker.serve(&mut backend, &mut sampler, pool.par(), jobs_rx);
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((handle, thread)),
        Ok(Err(e)) => Err(e),
        Err(_) => anyhow::bail!("the inference thread died while starting"),
    }
}

struct Worker {
    loaded: &'static Loaded<'static>,
    metrics: Arc<Metrics>,
    cancel_all: Arc<AtomicBool>,
    heartbeat_ms: Arc<AtomicU64>,
    epoch: Instant,
}

impl Worker {
    fn beat(&self) {
        self.heartbeat_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn serve(
        &self,
        backend: &mut Backend<'_>,
        sampler: &mut Sampler,
        par: &dyn Parallel,
        jobs: Receiver<Job>,
    ) {
        loop {
            self.beat();
            let job = match jobs.recv_timeout(Duration::from_millis(250)) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout) if self.cancel_all.load(Ordering::Acquire) => return,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.metrics.queue_depth.fetch_sub(1, Ordering::AcqRel);
            if job.cancel.load(Ordering::Acquire) || self.cancel_all.load(Ordering::Acquire) {
                // Its client left while it waited: dropping the job ends its stream.
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                job.wake.notify_one();
                continue;
            }
            self.metrics.busy.store(1, Ordering::Relaxed);
            let ev = match self.run(backend, sampler, par, &job) {
                Ok(s) => Event::Done(s),
                Err(e) => Event::Failed(format!("{e:#}")),
            };
            let _ = job.events.try_send(ev);
            job.wake.notify_one();
            self.metrics.busy.store(0, Ordering::Relaxed);
        }
    }

    fn run(
        &self,
        backend: &mut Backend<'_>,
        sampler: &mut Sampler,
        par: &dyn Parallel,
        job: &Job,
    ) -> Result<Summary> {
        let queue_s = job.enqueued.elapsed().as_secs_f64();
        sampler
            .set_params(job.params)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let m = &*self.metrics;
        let mut last = Instant::now();
        let mut decode_start = last;
        let mut allocs_before = CountingAlloc::thread_stats();
        let on_step = |i: usize| {
            let now = Instant::now();
            if i == 0 {
                decode_start = now;
                allocs_before = CountingAlloc::thread_stats();
            } else {
                m.token_latency.observe((now - last).as_secs_f64());
            }
            last = now;
            self.beat();
            !(job.cancel.load(Ordering::Acquire) || self.cancel_all.load(Ordering::Acquire))
        };
        let on_text = |text: &str| {
            let sent = for_each_piece(text, |p| job.events.try_send(Event::Text(p)).is_ok());
            job.wake.notify_one();
            sent
        };
        let tokenizer = &self.loaded.tokenizer;
        let gen = match backend {
            Backend::Cpu(session) => {
                session.reset();
                generate_with_step(
                    session,
                    tokenizer,
                    sampler,
                    par,
                    &job.prompt,
                    job.max_new,
                    on_step,
                    on_text,
                )?
            }
            Backend::Gpu(engine) => {
                engine.reset()?;
                crate::device::generate_gpu(
                    engine,
                    tokenizer,
                    sampler,
                    &job.prompt,
                    job.max_new,
                    on_step,
                    on_text,
                )?
            }
        };
        let heap = CountingAlloc::thread_stats().since(&allocs_before);
        m.decode_heap_ops
            .fetch_add(heap.heap_operations(), Ordering::Relaxed);
        let decode_s = last.duration_since(decode_start).as_secs_f64();
        let n = gen.ids.len();
        m.prompt_tokens
            .fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
        m.generated_tokens.fetch_add(n as u64, Ordering::Relaxed);
        if n > 1 && decode_s > 0.0 {
            m.set_tokens_per_second((n - 1) as f64 / decode_s);
        }
        if gen.stop == StopReason::Cancelled {
            m.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Summary {
            prompt_tokens: job.prompt.len(),
            generated: n,
            stop: gen.stop,
            queue_s,
            prefill_s: gen.prefill_s,
            decode_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_character_boundaries() {
        let text = "é".repeat(40); // 80 bytes
        let mut out = String::new();
        let mut n = 0;
        for_each_piece(&text, |p| {
            assert!(p.as_str().len() <= PIECE_BYTES);
            out.push_str(p.as_str());
            n += 1;
            true
        });
        assert_eq!(out, text);
        assert_eq!(n, 2);
    }
}
