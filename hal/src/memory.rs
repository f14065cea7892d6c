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

/// `MemAvailable` from the text of `/proc/meminfo`, in bytes.
pub fn parse_meminfo_available(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
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

/// Memory available to start new programs without swapping (`MemAvailable` in `/proc/meminfo`).
pub fn available_memory_bytes() -> Result<u64, HalError> {
    let text = fs::read_to_string("/proc/meminfo").map_err(|e| HalError::Os {
        what: "reading /proc/meminfo",
        errno: e.raw_os_error().unwrap_or(0),
    })?;
    parse_meminfo_available(&text).ok_or(HalError::Parse {
        what: "MemAvailable in /proc/meminfo",
    })
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
