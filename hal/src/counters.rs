//! Process and thread counters for the zero-heap / zero-fault invariants: page faults and peak RSS
//! from `getrusage`, and [`CountingAlloc`], a counting global allocator.
//!
//! Tests and the bench install the allocator with
//! `#[global_allocator] static A: CountingAlloc = CountingAlloc::new();` and compare
//! [`CountingAlloc::thread_stats`] (this thread only: immune to the test harness running other
//! tests on other threads) or [`CountingAlloc::stats`] (all threads) before and after the code
//! under test.

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};
use std::alloc::{GlobalAlloc, Layout, System};
use std::time::Duration;

use crate::HalError;

/// A snapshot of `getrusage` for the process or one thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Page faults served without I/O.
    pub minor_faults: u64,
    /// Page faults that needed I/O.
    pub major_faults: u64,
    /// Voluntary context switches (blocking).
    pub voluntary_switches: u64,
    /// Involuntary context switches (preemption).
    pub involuntary_switches: u64,
    /// CPU time in user mode.
    pub user_time: Duration,
    /// CPU time in kernel mode.
    pub system_time: Duration,
    /// Peak resident set size in bytes (process-wide even for a thread snapshot).
    pub peak_rss_bytes: u64,
}

impl Usage {
    /// Minor plus major page faults.
    pub fn page_faults(&self) -> u64 {
        self.minor_faults + self.major_faults
    }
}

fn getrusage(who: libc::c_int, what: &'static str) -> Result<Usage, HalError> {
    // SAFETY: rusage is plain integers; all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    if rc != 0 {
        return Err(HalError::Os {
            what,
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        });
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(Usage {
        minor_faults: ru.ru_minflt.max(0) as u64,
        major_faults: ru.ru_majflt.max(0) as u64,
        voluntary_switches: ru.ru_nvcsw.max(0) as u64,
        involuntary_switches: ru.ru_nivcsw.max(0) as u64,
        user_time: tv(ru.ru_utime),
        system_time: tv(ru.ru_stime),
        // Linux reports ru_maxrss in KiB.
        peak_rss_bytes: (ru.ru_maxrss.max(0) as u64) * 1024,
    })
}

/// `getrusage(RUSAGE_SELF)`: the whole process.
pub fn process_usage() -> Result<Usage, HalError> {
    getrusage(libc::RUSAGE_SELF, "getrusage(RUSAGE_SELF)")
}

/// `getrusage(RUSAGE_THREAD)`: the calling thread only.
pub fn thread_usage() -> Result<Usage, HalError> {
    getrusage(libc::RUSAGE_THREAD, "getrusage(RUSAGE_THREAD)")
}

/// Minor page faults of the process so far.
pub fn minor_faults() -> Result<u64, HalError> {
    process_usage().map(|u| u.minor_faults)
}

/// Major page faults of the process so far.
pub fn major_faults() -> Result<u64, HalError> {
    process_usage().map(|u| u.major_faults)
}

/// Minor plus major page faults of the process so far.
pub fn page_faults() -> Result<u64, HalError> {
    process_usage().map(|u| u.page_faults())
}

/// Minor plus major page faults of the calling thread so far.
pub fn thread_page_faults() -> Result<u64, HalError> {
    thread_usage().map(|u| u.page_faults())
}

/// Peak resident set size of the process in bytes (`ru_maxrss`).
pub fn peak_rss_bytes() -> Result<u64, HalError> {
    process_usage().map(|u| u.peak_rss_bytes)
}

/// CPU time stolen from `cpus` (all CPUs when empty) so far: the `steal` column of `/proc/stat`,
/// time a virtual CPU was ready to run while the hypervisor ran something else. `None` where the
/// kernel does not report it (no `/proc/stat`, or no such column). On real boards it stays zero;
/// on a shared virtual machine it says how much of a measurement the host took away, though a
/// hypervisor may also slow a virtual CPU without counting it here.
pub fn steal_time(cpus: &[usize]) -> Result<Option<Duration>, HalError> {
    let stat = match std::fs::read_to_string("/proc/stat") {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(HalError::Os {
                what: "/proc/stat",
                errno: e.raw_os_error().unwrap_or(0),
            })
        }
    };
    let Some(ticks) = steal_ticks(&stat, cpus) else {
        return Ok(None);
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return Err(HalError::Parse {
            what: "_SC_CLK_TCK",
        });
    }
    Ok(Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz as u64,
    )))
}

/// The steal ticks of `cpus` (the `cpu` total line when empty) in the text of `/proc/stat`:
/// the eighth number of each `cpuN` line. `None` when a wanted line or its column is missing.
fn steal_ticks(stat: &str, cpus: &[usize]) -> Option<u64> {
    let steal = |line: &str| line.split_ascii_whitespace().nth(8)?.parse::<u64>().ok();
    if cpus.is_empty() {
        return stat
            .lines()
            .find(|l| l.split_ascii_whitespace().next() == Some("cpu"))
            .and_then(steal);
    }
    let mut total = 0u64;
    for &cpu in cpus {
        let line = stat.lines().find(|l| {
            l.split_ascii_whitespace()
                .next()
                .and_then(|name| name.strip_prefix("cpu"))
                .and_then(|n| n.parse::<usize>().ok())
                == Some(cpu)
        })?;
        total = total.saturating_add(steal(line)?);
    }
    Some(total)
}

/// Allocation counts, cumulative since the program started (or since the thread started, for
/// [`CountingAlloc::thread_stats`]). Subtract two snapshots with [`AllocStats::since`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Calls to `alloc` and `alloc_zeroed`.
    pub allocations: u64,
    /// Calls to `realloc`.
    pub reallocations: u64,
    /// Calls to `dealloc`.
    pub deallocations: u64,
    /// Bytes requested by `alloc`, `alloc_zeroed` and the growth of `realloc`.
    pub bytes_allocated: u64,
}

impl AllocStats {
    /// The counts between `earlier` and `self`.
    pub fn since(&self, earlier: &AllocStats) -> AllocStats {
        AllocStats {
            allocations: self.allocations.wrapping_sub(earlier.allocations),
            reallocations: self.reallocations.wrapping_sub(earlier.reallocations),
            deallocations: self.deallocations.wrapping_sub(earlier.deallocations),
            bytes_allocated: self.bytes_allocated.wrapping_sub(earlier.bytes_allocated),
        }
    }

    /// Allocations plus reallocations: the number that must be zero on the hot path.
    pub fn heap_operations(&self) -> u64 {
        self.allocations + self.reallocations
    }
}

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static REALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static DEALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// Per-thread counters. Const-initialised `Cell`s without `Drop`: reading them from inside the
/// allocator neither allocates nor registers a destructor.
struct ThreadCounts {
    allocations: Cell<u64>,
    reallocations: Cell<u64>,
    deallocations: Cell<u64>,
    bytes: Cell<u64>,
}

std::thread_local! {
    static THREAD: ThreadCounts = const {
        ThreadCounts {
            allocations: Cell::new(0),
            reallocations: Cell::new(0),
            deallocations: Cell::new(0),
            bytes: Cell::new(0),
        }
    };
}

#[inline]
fn bump(cell: &Cell<u64>, by: u64) {
    cell.set(cell.get().wrapping_add(by));
}

/// A global allocator that forwards to [`System`] and counts, process-wide (relaxed atomics) and
/// per thread (thread-locals).
///
/// All instances share the same counters; there is only ever one global allocator.
#[derive(Debug, Default)]
pub struct CountingAlloc {
    _private: (),
}

impl CountingAlloc {
    /// The allocator, for `#[global_allocator] static A: CountingAlloc = CountingAlloc::new();`.
    pub const fn new() -> CountingAlloc {
        CountingAlloc { _private: () }
    }

    /// Allocations (`alloc` + `alloc_zeroed`) by all threads so far.
    pub fn allocations() -> u64 {
        ALLOCATIONS.load(Ordering::Relaxed)
    }

    /// Reallocations by all threads so far.
    pub fn reallocations() -> u64 {
        REALLOCATIONS.load(Ordering::Relaxed)
    }

    /// Bytes allocated by all threads so far.
    pub fn bytes_allocated() -> u64 {
        BYTES.load(Ordering::Relaxed)
    }

    /// All counters, all threads. Only meaningful while [`CountingAlloc`] is the global allocator.
    pub fn stats() -> AllocStats {
        AllocStats {
            allocations: ALLOCATIONS.load(Ordering::Relaxed),
            reallocations: REALLOCATIONS.load(Ordering::Relaxed),
            deallocations: DEALLOCATIONS.load(Ordering::Relaxed),
            bytes_allocated: BYTES.load(Ordering::Relaxed),
        }
    }

    /// All counters for the calling thread only: what a test that decodes on one thread compares,
    /// unaffected by other tests the harness runs at the same time.
    pub fn thread_stats() -> AllocStats {
        THREAD
            .try_with(|t| AllocStats {
                allocations: t.allocations.get(),
                reallocations: t.reallocations.get(),
                deallocations: t.deallocations.get(),
                bytes_allocated: t.bytes.get(),
            })
            .unwrap_or_default()
    }

    #[inline]
    fn count_alloc(size: usize) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
        let _ = THREAD.try_with(|t| {
            bump(&t.allocations, 1);
            bump(&t.bytes, size as u64);
        });
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees are this allocator's; the counting touches only atomics and const thread-locals,
// which neither allocate nor unwind.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        CountingAlloc::count_alloc(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which is forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        CountingAlloc::count_alloc(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        DEALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        let _ = THREAD.try_with(|t| bump(&t.deallocations, 1));
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract, which is forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let growth = new_size.saturating_sub(layout.size()) as u64;
        REALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(growth, Ordering::Relaxed);
        let _ = THREAD.try_with(|t| {
            bump(&t.reallocations, 1);
            bump(&t.bytes, growth);
        });
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, which is forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_ticks_of_the_total_or_of_chosen_cpus() {
        let stat = "cpu  10 0 5 100 1 0 2 7 0 0\n\
                    cpu0 5 0 3 50 1 0 1 3 0 0\n\
                    cpu1 5 0 2 50 0 0 1 4 0 0\n\
                    cpu12 1 0 0 1 0 0 0 40 0 0\n\
                    intr 12345 0 1 2\n";
        assert_eq!(steal_ticks(stat, &[]), Some(7));
        assert_eq!(steal_ticks(stat, &[1]), Some(4));
        assert_eq!(steal_ticks(stat, &[0, 1]), Some(7));
        // `cpu1` is not a prefix match of `cpu12`.
        assert_eq!(steal_ticks(stat, &[12]), Some(40));
        // A CPU with no line, or a kernel without the column: unknown, not zero.
        assert_eq!(steal_ticks(stat, &[2]), None);
        assert_eq!(
            steal_ticks("cpu  1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7\n", &[]),
            None
        );
        assert_eq!(
            steal_ticks("cpu  1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7\n", &[0]),
            None
        );
        assert_eq!(steal_ticks("", &[]), None);
    }

    #[test]
    fn steal_time_reads_this_machine() {
        // Linux has reported the column since 2.6.11; it only grows.
        let a = steal_time(&[])
            .unwrap()
            .expect("/proc/stat has a steal column");
        let b = steal_time(&[]).unwrap().unwrap();
        assert!(b >= a);
        assert!(steal_time(&[0]).unwrap().is_some());
        assert_eq!(steal_time(&[1 << 20]).unwrap(), None);
    }

    #[test]
    fn rusage_reads() {
        let p = process_usage().unwrap();
        let t = thread_usage().unwrap();
        assert!(p.peak_rss_bytes > 0);
        assert!(p.page_faults() >= t.page_faults());
        assert!(peak_rss_bytes().unwrap() >= p.peak_rss_bytes);
    }

    #[test]
    fn touching_fresh_memory_faults_on_this_thread() {
        let before = thread_page_faults().unwrap();
        let pages = 256;
        let mut v = vec![0u8; pages * 4096];
        for i in (0..v.len()).step_by(4096) {
            // SAFETY: `i` is in bounds; volatile keeps the write from being optimised away.
            unsafe { core::ptr::write_volatile(v.as_mut_ptr().add(i), 1) };
        }
        let after = thread_page_faults().unwrap();
        assert!(after > before, "no faults counted: {before} -> {after}");
        assert!(minor_faults().unwrap() + major_faults().unwrap() >= after - before);
    }

    #[test]
    fn stats_since() {
        let a = AllocStats {
            allocations: 5,
            reallocations: 1,
            deallocations: 2,
            bytes_allocated: 100,
        };
        let b = AllocStats {
            allocations: 7,
            reallocations: 1,
            deallocations: 3,
            bytes_allocated: 164,
        };
        let d = b.since(&a);
        assert_eq!(d.allocations, 2);
        assert_eq!(d.heap_operations(), 2);
        assert_eq!(d.bytes_allocated, 64);
    }
}
