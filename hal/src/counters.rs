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
