//! Service counters, kept in atomics (the inference thread updates them without locking or
//! allocating) and written in the Prometheus text format for `GET /metrics`.

use edgellm_hal::Telemetry;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the per-token latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5,
];

/// A cumulative histogram with fixed buckets, updated with atomics only.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one observation of `secs` seconds.
    pub fn observe(&self, secs: f64) {
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add((secs * 1e9) as u64, Ordering::Relaxed);
    }
}

/// Everything `/metrics` reports.
pub struct Metrics {
    /// Requests by (endpoint, status code).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Decode speed of the last request, f64 bits.
    tokens_per_second: AtomicU64,
    pub token_latency: Histogram,
    /// Jobs waiting in the queue.
    pub queue_depth: AtomicUsize,
    /// 1 while a job decodes.
    pub busy: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Generations stopped early by their client (disconnect, stop sequence) or a drain.
    pub cancelled: AtomicU64,
    /// Heap operations made by the inference thread while decoding (must stay 0).
    pub decode_heap_ops: AtomicU64,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            tokens_per_second: AtomicU64::new(0),
            token_latency: Histogram::new(),
            queue_depth: AtomicUsize::new(0),
            busy: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            decode_heap_ops: AtomicU64::new(0),
        }
    }

    pub fn set_tokens_per_second(&self, v: f64) {
        self.tokens_per_second.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Counts one answered request.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((endpoint, status)).or_default() += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(&self, model: &str) -> String {
        let mut s = String::with_capacity(4096);
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        s.push_str(
            "# HELP edgellm_requests_total HTTP requests answered, by endpoint and status.\n",
        );
        s.push_str("# TYPE edgellm_requests_total counter\n");
        {
            let map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            for ((ep, code), n) in map.iter() {
                let _ = writeln!(
                    s,
                    "edgellm_requests_total{{endpoint=\"{ep}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{model=\"{model}\"}} {v}"
            );
        };
        counter(
            "edgellm_prompt_tokens_total",
            "Prompt tokens evaluated.",
            g(&self.prompt_tokens),
        );
        counter(
            "edgellm_generated_tokens_total",
            "Tokens generated.",
            g(&self.generated_tokens),
        );
        counter(
            "edgellm_rejected_total",
            "Requests refused with 503 because the queue was full.",
            g(&self.rejected),
        );
        counter(
            "edgellm_cancelled_total",
            "Generations stopped early (client gone, stop sequence, shutdown).",
            g(&self.cancelled),
        );
        counter(
            "edgellm_decode_heap_operations_total",
            "Heap allocations made by the inference thread while decoding (0 by design).",
            g(&self.decode_heap_ops),
        );
        let _ = writeln!(
            s,
            "# HELP edgellm_tokens_per_second Decode speed of the last request.\n\
             # TYPE edgellm_tokens_per_second gauge\n\
             edgellm_tokens_per_second{{model=\"{model}\"}} {}",
            f64::from_bits(g(&self.tokens_per_second))
        );
        let _ = writeln!(
            s,
            "# HELP edgellm_queue_depth Requests waiting for the inference thread.\n\
             # TYPE edgellm_queue_depth gauge\nedgellm_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP edgellm_busy 1 while a request decodes.\n# TYPE edgellm_busy gauge\nedgellm_busy {}",
            g(&self.busy)
        );
        s.push_str(
            "# HELP edgellm_token_latency_seconds Time per generated token after the first.\n",
        );
        s.push_str("# TYPE edgellm_token_latency_seconds histogram\n");
        let mut cum = 0u64;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += g(&self.token_latency.counts[i]);
            let _ = writeln!(
                s,
                "edgellm_token_latency_seconds_bucket{{le=\"{b}\"}} {cum}"
            );
        }
        cum += g(&self.token_latency.counts[BUCKETS.len()]);
        let _ = writeln!(
            s,
            "edgellm_token_latency_seconds_bucket{{le=\"+Inf\"}} {cum}"
        );
        let _ = writeln!(
            s,
            "edgellm_token_latency_seconds_sum {}",
            g(&self.token_latency.sum_ns) as f64 / 1e9
        );
        let _ = writeln!(s, "edgellm_token_latency_seconds_count {cum}");
        // Hardware: temperature and clock, where the board exposes them.
        let t = edgellm_hal::telemetry::LinuxTelemetry::default();
        if let Ok(Some(mc)) = t.temperature_millicelsius() {
            let _ = writeln!(
                s,
                "# HELP edgellm_soc_temperature_celsius SoC temperature.\n\
                 # TYPE edgellm_soc_temperature_celsius gauge\n\
                 edgellm_soc_temperature_celsius {}",
                mc as f64 / 1000.0
            );
        }
        if let Ok(Some(khz)) = t.cpu_frequency_khz(0) {
            let _ = writeln!(
                s,
                "# HELP edgellm_cpu_frequency_hertz Current clock of CPU 0 (drops when throttled).\n\
                 # TYPE edgellm_cpu_frequency_hertz gauge\n\
                 edgellm_cpu_frequency_hertz {}",
                khz as u64 * 1000
            );
        }
        s
    }
}
