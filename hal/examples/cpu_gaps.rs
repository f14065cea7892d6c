//! The floor of latency jitter on one core: a thread pinned to the core (under SCHED_FIFO when a
//! priority is given) reads the monotonic clock in a loop and reports every gap between two reads
//! longer than a threshold. With the thread at real-time priority nothing in the guest can take
//! the core from it, so the gaps left are interrupts and, in a virtual machine, the time the host
//! deschedules the virtual CPU: no inference runtime can have a worst token below them.
//!
//! `cargo run --release -p edgellm-hal --example cpu_gaps -- [CORE] [SECONDS] [RT_PRIO] [MIN_MS]`
//! (defaults: core 1, 10 s, no SCHED_FIFO, 0.5 ms). Real-time throttling stops a SCHED_FIFO
//! thread for 50 ms per second once it used 95% of it: turn it off for the measurement
//! (`sysctl kernel.sched_rt_runtime_us=-1`, and on kernels with RT group scheduling
//! `/sys/fs/cgroup/cpu/cpu.rt_runtime_us` too).

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let core: usize = args.get(1).map_or(1, |s| s.parse().expect("a core number"));
    let seconds: f64 = args.get(2).map_or(10.0, |s| s.parse().expect("seconds"));
    let rt: Option<u8> = args.get(3).map(|s| s.parse().expect("a priority"));
    let min_ms: f64 = args
        .get(4)
        .map_or(0.5, |s| s.parse().expect("milliseconds"));

    edgellm_hal::pool::pin_current_thread(core).expect("pinning");
    if let Some(p) = rt {
        edgellm_hal::realtime::set_fifo(p).expect("SCHED_FIFO");
    }
    let min = Duration::from_secs_f64(min_ms / 1e3);
    let end = Duration::from_secs_f64(seconds);
    let mut gaps: Vec<(f64, f64)> = Vec::with_capacity(1 << 16);
    let start = Instant::now();
    let mut last = start;
    loop {
        let now = Instant::now();
        let gap = now - last;
        if gap > min && gaps.len() < gaps.capacity() {
            gaps.push(((now - start).as_secs_f64(), gap.as_secs_f64() * 1e3));
        }
        last = now;
        if now - start > end {
            break;
        }
    }
    let total: f64 = gaps.iter().map(|g| g.1).sum::<f64>() + 0.0;
    let mut sizes: Vec<f64> = gaps.iter().map(|g| g.1).collect();
    sizes.sort_by(f64::total_cmp);
    println!(
        "core {core}, {}, {seconds} s: {} gaps over {min_ms} ms, {total:.1} ms in all ({:.2}% of the time)",
        rt.map_or("SCHED_OTHER".to_string(), |p| format!("SCHED_FIFO {p}")),
        gaps.len(),
        total / (seconds * 10.0),
    );
    for (label, q) in [("p50", 0.5), ("p90", 0.9), ("max", 1.0)] {
        if let Some(&v) =
            sizes.get(((sizes.len() as f64 * q) as usize).min(sizes.len().saturating_sub(1)))
        {
            println!("  gap {label}: {v:.2} ms");
        }
    }
    for (at, ms) in gaps.iter().filter(|g| g.1 >= 5.0) {
        println!("  at {at:7.3} s: {ms:.2} ms");
    }
}
