//! Latency of one `ThreadPool::run` with a fixed amount of work per index, as a distribution:
//! run it with another process on one of the cores (`taskset -c 1 sh -c 'while :; do :; done'`)
//! to see what a descheduled worker costs.
//!
//! `cargo run --release -p edgellm-hal --example pool_jitter -- [CORES] [WORK_US] [RUNS] [RT_PRIO]`
//! (defaults: `0,1`, 50 µs, 20000 runs, no SCHED_FIFO).

use std::hint::black_box;
use std::time::Instant;

use edgellm_core::parallel::Parallel;
use edgellm_hal::pool::{PoolOptions, ThreadPool};

fn spin_work(iterations: u64) -> u64 {
    let mut x = 0u64;
    for k in 0..iterations {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(k));
    }
    x
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cores: Vec<usize> = args
        .get(1)
        .map_or("0,1", String::as_str)
        .split(',')
        .map(|c| c.parse().expect("a core number"))
        .collect();
    let work_us: f64 = args
        .get(2)
        .map_or(50.0, |s| s.parse().expect("microseconds"));
    let runs: usize = args.get(3).map_or(20_000, |s| s.parse().expect("a count"));
    let rt: Option<u8> = args.get(4).map(|s| s.parse().expect("a priority"));

    // Calibrate: iterations per microsecond on this thread.
    let t = Instant::now();
    black_box(spin_work(10_000_000));
    let per_us = 10_000_000.0 / (t.elapsed().as_secs_f64() * 1e6);
    let iterations = (per_us * work_us) as u64;

    let pool = ThreadPool::with_options(PoolOptions {
        cores: Some(cores.clone()),
        realtime: rt,
        ..PoolOptions::new(cores.len())
    })
    .expect("pool");
    if let Err(e) = pool.realtime() {
        eprintln!("warning: {e}");
    }
    let mut lat = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        pool.run(&|_| {
            black_box(spin_work(iterations));
        });
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((p * runs as f64) as usize).min(runs - 1)];
    let slow = lat.iter().filter(|&&l| l > 4.0 * work_us).count();
    println!(
        "threads {} cores {:?} rt {:?} work {work_us} us/index, {runs} runs: p50 {:.0} p90 {:.0} \
         p99 {:.0} p99.9 {:.0} max {:.0} us; runs over {:.0} us: {slow}; mean {:.1} us",
        cores.len(),
        cores,
        rt,
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        lat[runs - 1],
        4.0 * work_us,
        lat.iter().sum::<f64>() / runs as f64
    );
}
