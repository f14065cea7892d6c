//! A persistent pool of (optionally pinned) worker threads that runs one job on all of them at once,
//! without allocating: the Linux implementation of [`Parallel`].
//!
//! Protocol, all through atomics in `Shared`:
//!
//! 1. The caller stores a pointer to the job, resets the completion counter `done` and increments
//!    `generation` (release). If any worker is asleep, it wakes them with one `futex` call.
//! 2. Each worker spins on `generation` for a while, then sleeps on it with `FUTEX_WAIT`. When it sees
//!    a new generation it claims its index (`claims[i]`, compare-and-swap to the generation), loads
//!    the job pointer, runs `job(i)` and increments `done`.
//! 3. The caller runs `job(0)` itself, then claims and runs every index no worker has claimed yet
//!    (a worker that is asleep, still waking up, or descheduled by another process), then spins
//!    (and eventually sleeps) until `done` reaches `threads - 1`. Only then does `run` return, so the
//!    job outlives every use of it. Workers that finish early help the same way.
//!
//! Work sharing bounds what a worker that has not started costs (asleep and slow to wake, or
//! descheduled before it saw the job) to one share of work instead of its wake-up or scheduling
//! delay. It cannot help once a worker has started its share: under the normal scheduler, a worker
//! whose core another busy process shares is preempted mid-share about once per time slice, and the
//! run waits a whole slice of the other process (about 4 ms measured with `examples/pool_jitter`).
//! Only SCHED_FIFO ([`PoolOptions::realtime`]) on cores kept for inference removes that wait.
//!
//! Invariant: [`ThreadPool::run`] allocates nothing and makes no system call while the workers are
//! spinning; a `futex` wake is made only for workers that went to sleep. Every thread of the pool
//! (the caller included) has [`crate::memory::STACK_PREFAULT_BYTES`] of stack faulted in when the
//! pool starts, so that running another thread's share, a few frames deeper, takes no page fault.

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use edgellm_core::parallel::Parallel;

use crate::realtime;
use crate::HalError;

/// The job type the pool runs: the same as [`Parallel::run`]'s argument.
type Job<'a> = dyn Fn(usize) + Sync + 'a;

/// How long a thread busy-waits before it sleeps: long enough to cover the gap between two
/// matrix-vector products of a decode step (and usually sampling), short enough not to burn a
/// core for long between tokens.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(100);

/// Busy-wait budget of one wait. The clock (vDSO, no system call) is read every 64 iterations and
/// only once spinning has started, so a wait that is over at once costs no clock read.
struct Spin {
    limit: Duration,
    start: Option<Instant>,
    iterations: u32,
}

impl Spin {
    fn new(limit: Duration) -> Spin {
        Spin {
            limit,
            start: None,
            iterations: 0,
        }
    }

    /// Spins once and returns true, or returns false when the budget is spent.
    fn keep_spinning(&mut self) -> bool {
        if self.limit.is_zero() {
            return false;
        }
        self.iterations = self.iterations.wrapping_add(1);
        if self.iterations % 64 == 1 {
            let now = Instant::now();
            let start = *self.start.get_or_insert(now);
            if now.duration_since(start) >= self.limit {
                return false;
            }
        }
        core::hint::spin_loop();
        true
    }
}

/// State shared by the caller and the workers.
struct Shared {
    /// Incremented (wrapping) once per job and once at shutdown; workers sleep on it.
    generation: AtomicU32,
    /// Workers that finished the current job; the caller sleeps on it.
    done: AtomicU32,
    /// Workers currently in (or about to enter) `FUTEX_WAIT` on `generation`.
    sleepers: AtomicU32,
    /// Whether the caller is in (or about to enter) `FUTEX_WAIT` on `done`.
    caller_sleeping: AtomicBool,
    /// Set before the last generation increment: workers exit instead of running a job.
    shutdown: AtomicBool,
    /// Whether a `run` is in progress (guards against concurrent and nested `run`).
    busy: AtomicBool,
    /// Set by a worker whose job panicked; the caller re-raises the panic.
    panicked: AtomicBool,
    /// Points to a `&Job` on the stack of the thread inside `run`; valid only during that `run`.
    job: AtomicPtr<()>,
    /// Busy-wait time before sleeping.
    spin: Duration,
    /// Number of indices (threads, the caller included).
    threads: usize,
    /// Per index: the last generation whose `job(index)` some thread claimed (index 0 unused).
    claims: Box<[AtomicU32]>,
}

impl Shared {
    /// Claims index `i` of generation `gen`: true for exactly one thread per index and run. Fails
    /// if the index was claimed for `gen` or a later generation (a worker that wakes up late).
    fn claim(&self, i: usize, gen: u32) -> bool {
        let slot = &self.claims[i];
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            // Generations wrap; claims are never more than one generation apart from `gen`.
            if gen.wrapping_sub(cur) as i32 <= 0 {
                return false;
            }
            match slot.compare_exchange_weak(cur, gen, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    /// Claims and runs every unclaimed index of generation `gen`, starting at `first` and wrapping
    /// (index 0 belongs to the caller), counting each in `done`. Returns how many it ran.
    fn help(&self, gen: u32, first: usize) -> usize {
        let others = self.threads - 1;
        let mut ran = 0;
        for k in 0..others {
            let i = 1 + (first - 1 + k) % others;
            if !self.claim(i, gen) {
                continue;
            }
            let job_ptr = self.job.load(Ordering::Relaxed) as *const &Job<'_>;
            // SAFETY: the claim of index `i` for `gen` succeeded, so `run` for `gen` is still in
            // progress: the caller returns only after `done` counts index `i`, below. This thread
            // saw `gen` through an acquire load of `generation` (or is the caller, which stored
            // the pointer), and the caller stores `job` before incrementing `generation` (release),
            // so `job_ptr` is this run's pointer to the caller's `&Job`, not null, and valid until
            // the `done` increment below, after the last use of `job`.
            let job: &Job<'_> = unsafe { *job_ptr };
            if panic::catch_unwind(AssertUnwindSafe(|| job(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            ran += 1;
            // SeqCst pairs with the caller's `caller_sleeping` store and re-check of `done`.
            self.done.fetch_add(1, Ordering::SeqCst);
            if self.caller_sleeping.load(Ordering::SeqCst) {
                futex_wake(&self.done, 1);
            }
        }
        ran
    }
}

/// How to build a [`ThreadPool`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    /// Threads, the caller (worker 0) included. At least 1.
    pub threads: usize,
    /// One core per thread: `cores[0]` for the calling thread, `cores[i]` for worker `i`. `None`:
    /// no pinning.
    pub cores: Option<Vec<usize>>,
    /// SCHED_FIFO priority for every thread, the caller included. `None`: the normal policy.
    /// A refusal does not fail the pool: it is reported by [`ThreadPool::realtime`].
    pub realtime: Option<u8>,
    /// Busy waiting before a thread sleeps (see [`DEFAULT_SPIN`]).
    pub spin: Duration,
}

impl PoolOptions {
    /// `threads` threads, no pinning, normal policy, [`DEFAULT_SPIN`].
    pub fn new(threads: usize) -> PoolOptions {
        PoolOptions {
            threads,
            cores: None,
            realtime: None,
            spin: DEFAULT_SPIN,
        }
    }
}

/// What one thread of a pool did when it started: its kernel thread id, the core it was pinned to,
/// and the outcome of the SCHED_FIFO request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSetup {
    /// Worker index (0 is the thread that created the pool).
    pub index: usize,
    /// Kernel thread id (`gettid`), for `/proc/self/task/<tid>`.
    pub tid: i32,
    /// The core it is pinned to.
    pub core: Option<usize>,
    /// `None` if real-time scheduling was not asked for, else the result of [`realtime::set_fifo`].
    pub realtime: Option<Result<(), HalError>>,
}

/// A fixed set of worker threads, created once, that [`Parallel::run`] dispatches to.
///
/// Worker 0 is the thread that calls `run`; `threads - 1` OS threads are spawned by [`ThreadPool::new`]
/// and joined when the pool is dropped.
///
/// `run` from inside a job (nested) or from a second thread while a `run` is in progress does not
/// deadlock: it runs every index on the calling thread, one after another.
pub struct ThreadPool {
    shared: Arc<Shared>,
    threads: usize,
    workers: Vec<JoinHandle<()>>,
    setup: Vec<WorkerSetup>,
    options: PoolOptions,
}

impl core::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads)
            .field("spin", &self.shared.spin)
            .finish_non_exhaustive()
    }
}

impl ThreadPool {
    /// Starts a pool of `threads` workers (the caller counts as worker 0), spinning
    /// [`DEFAULT_SPIN`] iterations before sleeping.
    ///
    /// With `cores`, the list must have one entry per thread: `cores[0]` is applied to the calling
    /// thread (the one that will call `run`), `cores[i]` to worker `i`. Errors if a core does not
    /// exist or cannot be used by this process; no threads are left running then.
    pub fn new(threads: usize, cores: Option<&[usize]>) -> Result<ThreadPool, HalError> {
        ThreadPool::with_spin(threads, cores, DEFAULT_SPIN)
    }

    /// Like [`ThreadPool::new`], with `spin` of busy waiting before a thread sleeps (zero sleeps
    /// at once: lowest CPU use, highest wake-up latency). Keep `threads` at most the number of
    /// cores available: a spinning thread takes the core a descheduled one needs.
    pub fn with_spin(
        threads: usize,
        cores: Option<&[usize]>,
        spin: Duration,
    ) -> Result<ThreadPool, HalError> {
        ThreadPool::with_options(PoolOptions {
            threads,
            cores: cores.map(<[usize]>::to_vec),
            realtime: None,
            spin,
        })
    }

    /// Starts a pool as `options` say. Each worker pins itself and asks for SCHED_FIFO as its first
    /// act, and reports the outcome before the pool is returned; then the calling thread (worker 0)
    /// does the same. A pinning failure is an error (no threads are left running); a SCHED_FIFO
    /// refusal is not: [`ThreadPool::realtime`] reports it, so the caller decides before the first
    /// token whether to go on.
    ///
    /// The calling thread keeps its pinning and policy after the pool is dropped.
    pub fn with_options(options: PoolOptions) -> Result<ThreadPool, HalError> {
        let threads = options.threads;
        if threads == 0 {
            return Err(HalError::ZeroThreads);
        }
        if let Some(cores) = &options.cores {
            if cores.len() != threads {
                return Err(HalError::CoreListLength {
                    expected: threads,
                    found: cores.len(),
                });
            }
            for &core in cores {
                check_core(core)?;
            }
        }
        if let Some(p) = options.realtime {
            let (min, max) = realtime::fifo_priority_range();
            if i32::from(p) < min || i32::from(p) > max {
                return Err(HalError::PriorityRange {
                    priority: p,
                    min,
                    max,
                });
            }
        }
        let shared = Arc::new(Shared {
            generation: AtomicU32::new(0),
            done: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            caller_sleeping: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            job: AtomicPtr::new(ptr::null_mut()),
            spin: options.spin,
            threads,
            claims: (0..threads).map(|_| AtomicU32::new(0)).collect(),
        });
        let mut pool = ThreadPool {
            shared,
            threads,
            workers: Vec::with_capacity(threads - 1),
            setup: Vec::with_capacity(threads),
            options,
        };
        // Each worker reports pinning and scheduling before it waits for jobs. On any error the
        // pool is dropped here, which stops and joins the workers already started.
        let (ready_tx, ready_rx) = mpsc::channel::<Result<WorkerSetup, HalError>>();
        for index in 1..threads {
            let shared = Arc::clone(&pool.shared);
            let core = pool.options.cores.as_ref().map(|c| c[index]);
            let rt = pool.options.realtime;
            let ready = ready_tx.clone();
            let handle = thread::Builder::new()
                .name(format!("edgellm-worker-{index}"))
                .spawn(move || {
                    let report = setup_current_thread(index, core, rt);
                    let ok = report.is_ok();
                    // The receiver lives until every worker has reported.
                    let _ = ready.send(report);
                    drop(ready);
                    if ok {
                        worker_loop(&shared, index);
                    }
                })
                .map_err(|e| HalError::Spawn {
                    errno: e.raw_os_error().unwrap_or(0),
                })?;
            pool.workers.push(handle);
        }
        drop(ready_tx);
        let mut reports = Vec::with_capacity(threads);
        for _ in 1..threads {
            match ready_rx.recv() {
                Ok(Ok(setup)) => reports.push(setup),
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(HalError::Spawn { errno: 0 });
                }
            }
        }
        let core0 = pool.options.cores.as_ref().map(|c| c[0]);
        reports.push(setup_current_thread(0, core0, pool.options.realtime)?);
        reports.sort_by_key(|r| r.index);
        pool.setup = reports;
        Ok(pool)
    }

    /// What each thread did at start, by index (0 is the thread that created the pool).
    pub fn setup(&self) -> &[WorkerSetup] {
        &self.setup
    }

    /// The options the pool was built with.
    pub fn options(&self) -> &PoolOptions {
        &self.options
    }

    /// `Ok(None)` if SCHED_FIFO was not asked for, `Ok(Some(priority))` if every thread got it,
    /// else the first refusal (its message names the fix).
    pub fn realtime(&self) -> Result<Option<u8>, HalError> {
        let Some(p) = self.options.realtime else {
            return Ok(None);
        };
        for s in &self.setup {
            if let Some(Err(e)) = s.realtime {
                return Err(e);
            }
        }
        Ok(Some(p))
    }

    /// Whether every thread of the pool runs under SCHED_FIFO at the priority asked for now, as the
    /// kernel reports it (`sched_getscheduler` and `sched_getparam` on each thread id).
    pub fn realtime_in_effect(&self) -> bool {
        let Some(p) = self.options.realtime else {
            return false;
        };
        self.setup.iter().all(|s| {
            matches!(realtime::thread_policy(s.tid),
                Ok((realtime::Policy::Fifo, prio)) if prio == i32::from(p))
        })
    }

    /// Workers currently asleep in the kernel (for tests and diagnostics).
    pub fn sleeping_workers(&self) -> usize {
        self.shared.sleepers.load(Ordering::SeqCst) as usize
    }

    /// Runs every index on the calling thread, in order (nested or concurrent `run`).
    fn run_serial(&self, job: &Job<'_>) {
        for i in 0..self.threads {
            job(i);
        }
    }
}

impl Parallel for ThreadPool {
    fn threads(&self) -> usize {
        self.threads
    }

    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let shared = &*self.shared;
        if self.threads == 1 {
            job(0);
            return;
        }
        if shared
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // Nested (from inside a job) or concurrent (another thread) call: the workers belong
            // to the run in progress, so do the work here rather than wait for them.
            self.run_serial(job);
            return;
        }

        // Publish the job. `job_ref` lives on this stack frame until the end of `run`, and `run`
        // does not return (nor unwind) before every worker has incremented `done` for this
        // generation, which each does only after its last use of the pointer. So every
        // dereference of the pointer by a worker happens while `job_ref` and `*job` are alive:
        // the erased lifetime is never outlived.
        let job_ref: &Job<'_> = job;
        shared
            .job
            .store(&job_ref as *const &Job<'_> as *mut (), Ordering::Relaxed);
        shared.done.store(0, Ordering::Relaxed);
        shared.panicked.store(false, Ordering::Relaxed);
        // SeqCst: ordered before the `sleepers` load below (see `worker_loop` for the pairing).
        let gen = shared
            .generation
            .fetch_add(1, Ordering::SeqCst)
            .wrapping_add(1);
        if shared.sleepers.load(Ordering::SeqCst) != 0 {
            futex_wake(&shared.generation, i32::MAX);
        }

        // Worker 0 is this thread. A panic here must not unwind past the workers still using
        // `job`, so catch it, wait, then resume it.
        let mine = panic::catch_unwind(AssertUnwindSafe(|| job(0)));
        // Do the share of any worker that has not started yet.
        shared.help(gen, 1);

        let others = (self.threads - 1) as u32;
        let mut spin = Spin::new(shared.spin);
        loop {
            let done = shared.done.load(Ordering::Acquire);
            if done == others {
                break;
            }
            if spin.keep_spinning() {
                continue;
            }
            shared.caller_sleeping.store(true, Ordering::SeqCst);
            // Re-check after announcing the sleep: a worker that finished in between saw the flag
            // clear and did not wake us.
            let done = shared.done.load(Ordering::SeqCst);
            if done != others {
                futex_wait(&shared.done, done);
            }
            shared.caller_sleeping.store(false, Ordering::Relaxed);
        }
        shared.job.store(ptr::null_mut(), Ordering::Relaxed);
        let worker_panicked = shared.panicked.load(Ordering::Relaxed);
        shared.busy.store(false, Ordering::Release);

        if let Err(payload) = mine {
            panic::resume_unwind(payload);
        }
        if worker_panicked {
            panic!("a job panicked on a ThreadPool worker thread");
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        let shared = &*self.shared;
        shared.shutdown.store(true, Ordering::SeqCst);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        futex_wake(&shared.generation, i32::MAX);
        for handle in self.workers.drain(..) {
            // A worker never panics outside `catch_unwind`; nothing to report if it did.
            let _ = handle.join();
        }
    }
}

/// The loop of worker `index`: wait for a new generation, run the job, report completion.
fn worker_loop(shared: &Shared, index: usize) {
    // Generation 0 is the initial value, not a load: a job published before this thread gets here
    // must still be seen as new.
    let mut seen = 0u32;
    loop {
        // Wait for the next generation: spin, then sleep.
        let mut spin = Spin::new(shared.spin);
        let current = loop {
            let g = shared.generation.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            if spin.keep_spinning() {
                continue;
            }
            // Announce the sleep before checking `generation` again. The caller increments
            // `generation` then reads `sleepers` (both SeqCst): either it sees this increment and
            // wakes us, or our re-check (inside FUTEX_WAIT, after this full barrier) sees the new
            // generation. No wake-up is lost.
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            futex_wait(&shared.generation, seen);
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
        };
        seen = current;
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        // Own index first, then any other that nobody has started.
        shared.help(current, index);
    }
}

/// Pins the calling thread, asks for SCHED_FIFO and faults in its stack, as worker `index` of a
/// pool. The stack is prefaulted because which thread runs which share changes from run to run:
/// the caller runs a late worker's share a few frames deeper than its own.
fn setup_current_thread(
    index: usize,
    core: Option<usize>,
    rt: Option<u8>,
) -> Result<WorkerSetup, HalError> {
    if let Some(core) = core {
        pin_current_thread(core)?;
    }
    crate::memory::prefault_stack();
    Ok(WorkerSetup {
        index,
        tid: realtime::current_tid(),
        core,
        realtime: rt.map(realtime::set_fifo),
    })
}

/// Fails if `core` cannot be put in a `cpu_set_t` or is not a configured CPU.
fn check_core(core: usize) -> Result<(), HalError> {
    let set_limit = 8 * core::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: sysconf has no preconditions.
    let configured = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    let limit = if configured > 0 {
        (configured as usize).min(set_limit)
    } else {
        set_limit
    };
    if core >= limit {
        return Err(HalError::CoreOutOfRange { core, limit });
    }
    Ok(())
}

/// Pins the calling thread to `core` with `sched_setaffinity`.
pub fn pin_current_thread(core: usize) -> Result<(), HalError> {
    check_core(core)?;
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `core` was checked to be below the number of bits in `set`.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 means the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(HalError::Pin {
            core,
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        });
    }
    Ok(())
}

/// Sleeps while `*word == expected` (or until woken, or spuriously).
fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: `word` is a valid, aligned 32-bit atomic for the duration of the call; a null timeout
    // means wait without limit. The kernel only reads the word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes up to `count` threads sleeping on `word`.
fn futex_wake(word: &AtomicU32, count: i32) {
    // SAFETY: `word` is a valid, aligned 32-bit atomic; FUTEX_WAKE does not access memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            count,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicUsize;

    #[test]
    fn threads_1_spawns_nothing() {
        let pool = ThreadPool::new(1, None).unwrap();
        assert_eq!(pool.workers.len(), 0);
        let hits = AtomicUsize::new(0);
        for _ in 0..100 {
            pool.run(&|i| {
                assert_eq!(i, 0);
                hits.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(hits.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn zero_threads_is_an_error() {
        assert_eq!(ThreadPool::new(0, None).unwrap_err(), HalError::ZeroThreads);
    }

    #[test]
    fn core_list_is_checked() {
        assert!(matches!(
            ThreadPool::new(2, Some(&[0])),
            Err(HalError::CoreListLength {
                expected: 2,
                found: 1
            })
        ));
        assert!(matches!(
            ThreadPool::new(2, Some(&[0, 1 << 20])),
            Err(HalError::CoreOutOfRange { .. })
        ));
    }

    #[test]
    fn many_runs_sum_and_each_index_once() {
        for (threads, runs) in [(2usize, 10_000usize), (3, 10_000), (4, 2_000)] {
            let pool = ThreadPool::new(threads, None).unwrap();
            let per_index: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            let sum = AtomicUsize::new(0);
            for run in 0..runs {
                pool.run(&|i| {
                    per_index[i].fetch_add(1, Ordering::Relaxed);
                    sum.fetch_add(run * threads + i, Ordering::Relaxed);
                });
                // After `run` returns, every index ran exactly once more.
                for c in &per_index {
                    assert_eq!(c.load(Ordering::Relaxed), run + 1);
                }
            }
            let n = runs * threads;
            assert_eq!(sum.load(Ordering::Relaxed), n * (n - 1) / 2);
        }
    }

    #[test]
    fn many_runs_always_sleeping() {
        // No spinning: every wait goes through the futex, exercising the wake-up protocol.
        for threads in [2usize, 3] {
            let pool = ThreadPool::with_spin(threads, None, Duration::ZERO).unwrap();
            let sum = AtomicUsize::new(0);
            let runs = 5_000;
            for _ in 0..runs {
                pool.run(&|i| {
                    sum.fetch_add(i + 1, Ordering::Relaxed);
                });
            }
            assert_eq!(
                sum.load(Ordering::Relaxed),
                runs * threads * (threads + 1) / 2
            );
        }
    }

    #[test]
    fn results_are_visible_after_run() {
        let pool = ThreadPool::new(3, None).unwrap();
        let cells: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for round in 1..1000 {
            pool.run(&|i| cells[i].store(round * 10 + i, Ordering::Relaxed));
            for (i, c) in cells.iter().enumerate() {
                assert_eq!(c.load(Ordering::Relaxed), round * 10 + i);
            }
        }
    }

    #[test]
    fn runs_after_workers_slept_and_drop_with_workers_parked() {
        let pool = ThreadPool::with_spin(3, None, Duration::ZERO).unwrap();
        let start = Instant::now();
        while pool.sleeping_workers() < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "workers never slept"
            );
            thread::sleep(Duration::from_millis(1));
        }
        let hits = AtomicUsize::new(0);
        for _ in 0..200 {
            pool.run(&|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(hits.load(Ordering::Relaxed), 600);
        while pool.sleeping_workers() < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "workers never slept"
            );
            thread::sleep(Duration::from_millis(1));
        }
        drop(pool);
    }

    #[test]
    fn drop_right_after_creation() {
        for _ in 0..50 {
            drop(ThreadPool::new(3, None).unwrap());
        }
    }

    #[test]
    fn nested_run_runs_serially() {
        let pool = ThreadPool::new(2, None).unwrap();
        let hits = AtomicUsize::new(0);
        pool.run(&|_| {
            pool.run(&|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(hits.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn worker_panic_reaches_the_caller_and_pool_survives() {
        let pool = ThreadPool::new(2, None).unwrap();
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i| {
                if i == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let hits = AtomicUsize::new(0);
        pool.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn pinning_to_an_allowed_core() {
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
        // SAFETY: `set` is valid and of the size passed; pid 0 is this thread.
        let rc = unsafe {
            libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set)
        };
        assert_eq!(rc, 0);
        let allowed = (0..64)
            // SAFETY: 0..64 is within the bits of a cpu_set_t.
            .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .unwrap();
        // Pin in a scratch thread so the test harness's threads keep their affinity.
        thread::spawn(move || {
            let pool = ThreadPool::new(2, Some(&[allowed, allowed])).unwrap();
            let hits = AtomicUsize::new(0);
            pool.run(&|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 2);
        })
        .join()
        .unwrap();
    }
}
