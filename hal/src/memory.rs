//! Memory for real-time decoding: lock every page in RAM, fault buffers in before the first token,
//! and read how much memory is available.

use std::fs;

use crate::HalError;

/// Locks all current and future pages of the process in RAM (`mlockall(MCL_CURRENT | MCL_FUTURE)`),
/// so that decoding never waits for a page to come back from swap or the page cache.
///
/// Needs `LimitMEMLOCK=infinity` in a systemd unit, `ulimit -l unlimited` in a shell, or
/// CAP_IPC_LOCK. Under the default 8 MiB limit the call fails, or later allocations do: check the
/// error and say so at start-up.
pub fn lock_all() -> Result<(), HalError> {
    // SAFETY: mlockall has no memory-safety preconditions.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if rc != 0 {
        return Err(HalError::MemoryLock {
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        });
    }
    Ok(())
}

/// Undoes [`lock_all`].
pub fn unlock_all() -> Result<(), HalError> {
    // SAFETY: munlockall has no preconditions.
    let rc = unsafe { libc::munlockall() };
    if rc != 0 {
        return Err(HalError::Os {
            what: "munlockall",
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        });
    }
    Ok(())
}

/// The size of a memory page in bytes.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// Touches every page of `buf` (reads and writes back one byte per page, leaving the contents
/// unchanged) so that the page faults happen now, not during the first token.
pub fn prefault(buf: &mut [u8]) {
    let page = page_size();
    let ptr = buf.as_mut_ptr();
    let mut i = 0;
    while i < buf.len() {
        // SAFETY: `i < buf.len()`, so `ptr + i` is inside `buf`, which we borrow mutably. Volatile
        // accesses keep the compiler from removing the apparently useless write.
        unsafe {
            let p = ptr.add(i);
            p.write_volatile(p.read_volatile());
        }
        i += page;
    }
}

/// Bytes of stack that [`prefault_stack`] faults in below its caller: four times the deepest a
/// decode goes (loading a model and decoding on one and two threads fits in a thread with a
/// 16 KiB stack).
pub const STACK_PREFAULT_BYTES: usize = 64 * 1024;

/// Room left below the calling frame that [`prefault_stack`] leaves untouched, so that it never
/// reaches the guard page, whatever the frames of its callers hold.
const STACK_PREFAULT_MARGIN: usize = 8 * 1024;

/// Faults in the [`STACK_PREFAULT_BYTES`] of the calling thread's stack below its caller (fewer if
/// the stack ends sooner), so that a decode that later runs deeper than the thread has been so far
/// (a worker's share run by the pool's caller, say) takes no page fault on its stack. A locked
/// process (`mlockall`) has its thread stacks resident already, except the main thread's, whose
/// stack grows on demand. Returns the bytes touched: zero where the stack's bounds cannot be read.
pub fn prefault_stack() -> usize {
    let here = 0u8;
    let sp = core::ptr::addr_of!(here) as usize;
    let Some(low) = stack_low_end() else {
        return 0;
    };
    let room = sp.saturating_sub(low).saturating_sub(STACK_PREFAULT_MARGIN);
    let pages = STACK_PREFAULT_BYTES.min(room) / STACK_TOUCH_FRAME;
    touch_stack(pages);
    pages * STACK_TOUCH_FRAME
}

/// The lowest usable address of the calling thread's stack (`pthread_getattr_np`).
fn stack_low_end() -> Option<usize> {
    // SAFETY: an all-zero pthread_attr_t is only written by pthread_getattr_np, which initialises
    // it on success; it is destroyed only then.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = core::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (rc == 0 && !addr.is_null()).then_some(addr as usize)
    }
}

/// The stack one call of [`touch_stack`] writes.
const STACK_TOUCH_FRAME: usize = 4096;

/// Writes `frames` frames of [`STACK_TOUCH_FRAME`] bytes each, one below the other.
#[inline(never)]
fn touch_stack(frames: usize) {
    if frames == 0 {
        return;
    }
    let mut frame = [0u8; STACK_TOUCH_FRAME];
    // The array must exist, written, in this frame: `black_box` may read and write it.
    core::hint::black_box(&mut frame);
    touch_stack(frames - 1);
    // Used after the call, so the call is not a tail call that would reuse this frame.
    core::hint::black_box(&frame);
}

/// Asks the kernel to back `buf` with transparent huge pages (`madvise(MADV_HUGEPAGE)` on the
/// whole pages inside it), so that walking a large buffer (the KV cache) needs one TLB entry per
/// 2 MiB instead of per 4 KiB. Call it before the pages are first touched: pages already
/// faulted in are only merged later, in the background. Under the system setting `never` the
/// advice has no effect; the huge pages the process holds are reported by
/// [`anon_huge_page_bytes`].
pub fn advise_huge_pages(buf: &mut [u8]) -> Result<(), HalError> {
    let page = page_size();
    let start = (buf.as_ptr() as usize).next_multiple_of(page);
    let end = (buf.as_ptr() as usize + buf.len()) / page * page;
    if end <= start {
        return Ok(());
    }
    // SAFETY: [start, end) is page-aligned and inside `buf`, which we borrow mutably; the advice
    // changes how the pages are backed, not their contents.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    if rc != 0 {
        return Err(HalError::Os {
            what: "madvise(MADV_HUGEPAGE)",
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        });
    }
    Ok(())
}

/// Tells the kernel that the page cache need not keep `file`'s pages
/// (`posix_fadvise(POSIX_FADV_DONTNEED)`): after a file has been read into memory of the
/// process's own, its cached copy would only take memory that a small board needs.
pub fn drop_file_cache(file: &std::fs::File) -> Result<(), HalError> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for as long as `file` is borrowed; the advice does not change
    // the file's contents.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(HalError::Os {
            what: "posix_fadvise(POSIX_FADV_DONTNEED)",
            errno: rc,
        });
    }
    Ok(())
}

/// The value of the `key:` line of a `/proc` file's text (`/proc/meminfo`,
/// `/proc/self/smaps_rollup`) in bytes: a number followed by `kB`, or by nothing.
fn proc_field_bytes(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let mut words = rest.split_ascii_whitespace();
        let value: u64 = words.next()?.parse().ok()?;
        let scale = match words.next() {
            Some("kB") => 1024,
            None => 1,
            Some(_) => return None,
        };
        value.checked_mul(scale)
    })
}

/// [`proc_field_bytes`] of the file at `path`; the errors name `path` and `key` (`what`).
fn read_proc_field(
    path: &str,
    key: &str,
    reading: &'static str,
    what: &'static str,
) -> Result<u64, HalError> {
    let text = fs::read_to_string(path).map_err(|e| HalError::Os {
        what: reading,
        errno: e.raw_os_error().unwrap_or(0),
    })?;
    proc_field_bytes(&text, key).ok_or(HalError::Parse { what })
}

/// `AnonHugePages` from the text of `/proc/self/smaps_rollup` (or `/proc/meminfo`), in bytes.
pub fn parse_anon_huge_pages(text: &str) -> Option<u64> {
    proc_field_bytes(text, "AnonHugePages")
}

/// Bytes of this process's anonymous memory backed by transparent huge pages.
pub fn anon_huge_page_bytes() -> Result<u64, HalError> {
    read_proc_field(
        "/proc/self/smaps_rollup",
        "AnonHugePages",
        "reading /proc/self/smaps_rollup",
        "AnonHugePages in /proc/self/smaps_rollup",
    )
}

/// `MemAvailable` from the text of `/proc/meminfo`, in bytes.
pub fn parse_meminfo_available(text: &str) -> Option<u64> {
    proc_field_bytes(text, "MemAvailable")
}

/// Memory available to start new programs without swapping (`MemAvailable` in `/proc/meminfo`).
pub fn available_memory_bytes() -> Result<u64, HalError> {
    read_proc_field(
        "/proc/meminfo",
        "MemAvailable",
        "reading /proc/meminfo",
        "MemAvailable in /proc/meminfo",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let text = "MemTotal:        8245316 kB\nMemFree:          512000 kB\n\
                    MemAvailable:    6123456 kB\nBuffers:           1000 kB\n";
        assert_eq!(parse_meminfo_available(text), Some(6_123_456 * 1024));
        assert_eq!(parse_meminfo_available("MemTotal: 1 kB\n"), None);
        assert!(available_memory_bytes().unwrap() > 0);
    }

    #[test]
    fn prefault_keeps_contents_and_faults_pages() {
        let page = page_size();
        let mut v: Vec<u8> = Vec::with_capacity(64 * page);
        v.resize(64 * page, 7);
        v[page + 3] = 9;
        prefault(&mut v);
        assert!(v
            .iter()
            .enumerate()
            .all(|(i, &b)| b == if i == page + 3 { 9 } else { 7 }));
        prefault(&mut []);
        prefault(&mut [1u8; 3]);
    }

    /// Page faults this thread takes while it runs `frames` stack frames of 4 KiB below here.
    fn faults_of_deeper_stack(frames: usize) -> u64 {
        let before = crate::counters::thread_page_faults().unwrap();
        touch_stack(frames);
        crate::counters::thread_page_faults().unwrap() - before
    }

    #[test]
    fn prefaulted_stack_takes_no_fault() {
        // 1 MiB stacks: too small to be one transparent huge page, so every fresh 4 KiB page of
        // stack is a fault of its own.
        let on_thread = |f: fn() -> (usize, u64)| {
            std::thread::Builder::new()
                .stack_size(1 << 20)
                .spawn(f)
                .unwrap()
                .join()
                .unwrap()
        };
        // Most of the prefaulted stack: what a frame's own locals and callers take is left over.
        const FRAMES: usize = STACK_PREFAULT_BYTES / STACK_TOUCH_FRAME - 4;
        let (_, cold) = on_thread(move || (0, faults_of_deeper_stack(12)));
        assert!(cold >= 6, "a fresh stack took {cold} faults for 48 KiB");
        let (touched, warm) = on_thread(|| {
            let touched = prefault_stack();
            (touched, faults_of_deeper_stack(FRAMES))
        });
        assert_eq!(touched, STACK_PREFAULT_BYTES);
        assert_eq!(warm, 0, "{FRAMES} frames of stack after prefault_stack");
    }

    #[test]
    fn prefault_stack_stays_inside_a_small_stack() {
        let touched = std::thread::Builder::new()
            .stack_size(32 << 10)
            .spawn(prefault_stack)
            .unwrap()
            .join()
            .unwrap();
        assert!(
            touched < 32 << 10,
            "{touched} bytes touched in a 32 KiB stack"
        );
    }

    /// The `VmFlags` of the mapping that holds `addr`, from `/proc/self/smaps`.
    fn vm_flags(addr: usize) -> Vec<String> {
        let text = fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in text.lines() {
            let first = line.split_ascii_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&addr);
                    continue;
                }
            }
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                if inside {
                    return flags.split_ascii_whitespace().map(String::from).collect();
                }
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn huge_page_advice_is_recorded_on_the_buffer() {
        // 8 MiB plus a little: large enough for glibc to map it on its own, with whole huge
        // pages inside, and with ends that are not page-aligned.
        let mut v = vec![0u8; (8 << 20) + 100];
        let mid = v.as_ptr() as usize + (4 << 20);
        assert!(
            !vm_flags(mid).iter().any(|f| f == "hg"),
            "advised before the call"
        );
        advise_huge_pages(&mut v[10..]).unwrap();
        assert!(
            vm_flags(mid).iter().any(|f| f == "hg"),
            "{:?}",
            vm_flags(mid)
        );
        // Buffers without a whole page inside are left alone.
        advise_huge_pages(&mut v[1..100]).unwrap();
        advise_huge_pages(&mut []).unwrap();
        prefault(&mut v);
        assert!(v.iter().all(|&b| b == 0));
        assert!(anon_huge_page_bytes().is_ok());
    }

    #[test]
    fn anon_huge_pages_parse() {
        let text =
            "Rss:              145000 kB\nAnonHugePages:     40960 kB\nShmemPmdMapped: 0 kB\n";
        assert_eq!(parse_anon_huge_pages(text), Some(40960 * 1024));
        assert_eq!(parse_anon_huge_pages("Rss: 1 kB\n"), None);
        assert_eq!(parse_anon_huge_pages("AnonHugePages: 4 MB\n"), None);
    }

    #[test]
    fn lock_error_names_the_fix() {
        // Not calling lock_all here: MCL_FUTURE under a low limit would make the allocations of
        // tests running concurrently fail.
        let msg = HalError::MemoryLock { errno: 12 }.to_string();
        assert!(
            msg.contains("LimitMEMLOCK") && msg.contains("ulimit -l"),
            "{msg}"
        );
    }
}
