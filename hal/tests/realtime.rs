//! Pinning and SCHED_FIFO of a pool's threads, read back from the kernel: `sched_getaffinity`,
//! `sched_getscheduler` and `/proc/self/task/<tid>/stat` (processor, rt_priority, policy) for every
//! worker. SCHED_FIFO is checked both where it is allowed (root, CAP_SYS_NICE) and where it is not
//! (the same test run again as user `nobody` through `setpriv`, when that is possible).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use edgellm_core::parallel::Parallel;
use edgellm_hal::pool::{PoolOptions, ThreadPool};
use edgellm_hal::realtime::{self, Policy};
use edgellm_hal::HalError;

/// Up to `n` CPUs this process may use (repeating the last when there are fewer).
fn some_cores(n: usize) -> Vec<usize> {
    let allowed = realtime::thread_affinity(0).unwrap();
    assert!(!allowed.is_empty());
    (0..n).map(|i| allowed[i.min(allowed.len() - 1)]).collect()
}

fn run_some_jobs(pool: &ThreadPool) {
    let hits = AtomicUsize::new(0);
    for _ in 0..200 {
        pool.run(&|_| {
            // Enough work that every worker runs (and so is seen on its core).
            let mut x = 0u64;
            for k in 0..2000u64 {
                x = x.wrapping_mul(31).wrapping_add(k);
            }
            std::hint::black_box(x);
            hits.fetch_add(1, Ordering::Relaxed);
        });
    }
    assert_eq!(hits.load(Ordering::Relaxed), 200 * pool.threads());
}

#[test]
fn every_worker_is_pinned_to_its_core() {
    // In a scratch thread: worker 0 is the creating thread and keeps its pinning.
    thread::spawn(|| {
        let cores = some_cores(2);
        let pool = ThreadPool::with_options(PoolOptions {
            cores: Some(cores.clone()),
            ..PoolOptions::new(2)
        })
        .unwrap();
        run_some_jobs(&pool);
        assert_eq!(pool.setup().len(), 2);
        for s in pool.setup() {
            assert_eq!(s.core, Some(cores[s.index]));
            assert_eq!(s.realtime, None);
            assert_eq!(
                realtime::thread_affinity(s.tid).unwrap(),
                vec![cores[s.index]],
                "affinity of worker {}",
                s.index
            );
            let st = realtime::thread_stat(s.tid).unwrap();
            assert_eq!(
                st.processor, cores[s.index],
                "worker {} last ran elsewhere",
                s.index
            );
            assert_eq!(st.policy, Policy::Other);
            assert_eq!(st.rt_priority, 0);
        }
        assert_eq!(pool.realtime(), Ok(None));
        assert!(!pool.realtime_in_effect());
    })
    .join()
    .unwrap();
}

/// Builds a 2-thread SCHED_FIFO pool and checks, thread by thread, that the kernel agrees with what
/// the pool reported: FIFO at the priority where allowed, the normal policy and an error naming the
/// fix where not. Returns whether SCHED_FIFO was granted.
fn fifo_pool_reports_the_truth() -> bool {
    thread::spawn(|| {
        let priority = 10u8;
        let cores = some_cores(2);
        let pool = ThreadPool::with_options(PoolOptions {
            cores: Some(cores.clone()),
            realtime: Some(priority),
            ..PoolOptions::new(2)
        })
        .unwrap();
        run_some_jobs(&pool);
        let granted = match pool.realtime() {
            Ok(p) => {
                assert_eq!(p, Some(priority));
                for s in pool.setup() {
                    assert_eq!(s.realtime, Some(Ok(())));
                    // SAFETY: no memory is passed.
                    let raw = unsafe { libc::sched_getscheduler(s.tid) };
                    assert_eq!(raw, libc::SCHED_FIFO, "worker {}", s.index);
                    let st = realtime::thread_stat(s.tid).unwrap();
                    assert_eq!(st.policy, Policy::Fifo);
                    assert_eq!(st.rt_priority, u32::from(priority));
                    assert_eq!(st.processor, cores[s.index]);
                }
                assert!(pool.realtime_in_effect());
                assert_eq!(
                    realtime::current_policy().unwrap(),
                    (Policy::Fifo, i32::from(priority))
                );
                true
            }
            Err(e) => {
                assert!(matches!(e, HalError::Realtime { .. }), "{e}");
                let msg = e.to_string();
                assert!(
                    msg.contains("CAP_SYS_NICE")
                        && msg.contains("LimitRTPRIO=10")
                        && msg.contains("ulimit -r 10"),
                    "{msg}"
                );
                for s in pool.setup() {
                    assert!(matches!(s.realtime, Some(Err(_))));
                    let st = realtime::thread_stat(s.tid).unwrap();
                    assert_eq!(st.policy, Policy::Other);
                    assert_eq!(st.rt_priority, 0);
                    assert_eq!(
                        realtime::thread_affinity(s.tid).unwrap(),
                        vec![cores[s.index]]
                    );
                }
                assert!(!pool.realtime_in_effect());
                false
            }
        };
        // The pool still works either way.
        run_some_jobs(&pool);
        granted
    })
    .join()
    .unwrap()
}

#[test]
fn fifo_pool_matches_the_kernel() {
    let granted = fifo_pool_reports_the_truth();
    // Whether it was allowed must agree with the privileges: CAP_SYS_NICE (root here) or an
    // RLIMIT_RTPRIO of at least 10.
    let limit_allows = realtime::rtprio_limit().unwrap().is_none_or(|l| l >= 10);
    if limit_allows {
        assert!(
            granted,
            "RLIMIT_RTPRIO allows priority 10 but SCHED_FIFO was refused"
        );
    }
    if std::env::var_os("EDGELLM_FIFO_CHILD").is_some() {
        println!("fifo granted: {granted}");
    }
}

/// Runs [`fifo_pool_matches_the_kernel`] again as user `nobody` with no capabilities and
/// RLIMIT_RTPRIO 0, where the kernel must refuse: the refusal path is checked even under root.
#[test]
fn fifo_refused_without_privilege() {
    if std::env::var_os("EDGELLM_FIFO_CHILD").is_some() {
        return;
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 || Command::new("setpriv").arg("--help").output().is_err() {
        eprintln!("skipped: needs root and setpriv to drop privileges");
        return;
    }
    // The unprivileged user may not be able to reach this executable (a build directory under
    // /root, say): run a copy from a world-readable temporary directory.
    let dir = std::env::temp_dir().join(format!("edgellm-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("realtime-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg("prlimit")
        .arg("--rtprio=0")
        .arg(&exe)
        .args(["--exact", "fifo_pool_matches_the_kernel", "--nocapture"])
        .env("EDGELLM_FIFO_CHILD", "1")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("fifo granted: false"), "{stdout}");
}

#[test]
fn set_fifo_on_this_thread_reads_back() {
    thread::spawn(|| match realtime::set_fifo(5) {
        Ok(()) => {
            assert_eq!(realtime::current_policy().unwrap(), (Policy::Fifo, 5));
            // SAFETY: no memory is passed; 0 is the calling thread.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_FIFO);
            realtime::set_normal().unwrap();
            assert_eq!(realtime::current_policy().unwrap(), (Policy::Other, 0));
        }
        Err(e) => {
            assert!(e.to_string().contains("CAP_SYS_NICE"), "{e}");
            assert_eq!(realtime::current_policy().unwrap().0, Policy::Other);
        }
    })
    .join()
    .unwrap();
}

#[test]
fn caller_takes_over_the_share_of_a_sleeping_worker() {
    // Workers sleep at once (no spinning); the caller finishes job(0) before a woken worker gets
    // going often enough that it must run some of their indices itself. Every index still runs
    // exactly once per run.
    let pool = ThreadPool::with_spin(3, None, Duration::ZERO).unwrap();
    let me = realtime::current_tid();
    let by_caller = AtomicUsize::new(0);
    let per_index: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
    let runs = 3000;
    for run in 0..runs {
        pool.run(&|i| {
            per_index[i].fetch_add(1, Ordering::Relaxed);
            if i != 0 && realtime::current_tid() == me {
                by_caller.fetch_add(1, Ordering::Relaxed);
            }
        });
        for c in &per_index {
            assert_eq!(c.load(Ordering::Relaxed), run + 1);
        }
    }
    assert!(
        by_caller.load(Ordering::Relaxed) > 0,
        "the caller never ran a sleeping worker's share"
    );
}

#[test]
fn bad_priority_is_refused_at_creation() {
    let e = ThreadPool::with_options(PoolOptions {
        realtime: Some(0),
        ..PoolOptions::new(2)
    })
    .unwrap_err();
    assert!(matches!(e, HalError::PriorityRange { .. }), "{e}");
}
