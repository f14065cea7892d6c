//! Real-time scheduling of the calling thread (SCHED_FIFO) and what the kernel reports about a
//! thread: its policy, real-time priority, affinity and the CPU it last ran on.
//!
//! SCHED_FIFO needs CAP_SYS_NICE or a real-time priority limit (`RLIMIT_RTPRIO`) at least as high as
//! the priority asked for: `LimitRTPRIO=` in a systemd unit, `ulimit -r` in a shell. A refusal is a
//! [`HalError::Realtime`] whose message names those fixes.

use std::fs;

use crate::HalError;

/// A scheduling policy, as `sched_getscheduler` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// SCHED_OTHER: the normal time-sharing policy.
    Other,
    /// SCHED_FIFO: real-time, first in first out.
    Fifo,
    /// SCHED_RR: real-time, round robin.
    RoundRobin,
    /// SCHED_BATCH.
    Batch,
    /// SCHED_IDLE.
    Idle,
    /// SCHED_DEADLINE (6).
    Deadline,
    /// A value this code does not know.
    Unknown(i32),
}

impl Policy {
    /// The policy of a `sched_getscheduler` value (the reset-on-fork flag is ignored).
    pub fn from_raw(raw: i32) -> Policy {
        match raw & !libc::SCHED_RESET_ON_FORK {
            libc::SCHED_OTHER => Policy::Other,
            libc::SCHED_FIFO => Policy::Fifo,
            libc::SCHED_RR => Policy::RoundRobin,
            libc::SCHED_BATCH => Policy::Batch,
            libc::SCHED_IDLE => Policy::Idle,
            6 => Policy::Deadline,
            other => Policy::Unknown(other),
        }
    }

    /// The name used in logs (`SCHED_FIFO`).
    pub fn name(self) -> &'static str {
        match self {
            Policy::Other => "SCHED_OTHER",
            Policy::Fifo => "SCHED_FIFO",
            Policy::RoundRobin => "SCHED_RR",
            Policy::Batch => "SCHED_BATCH",
            Policy::Idle => "SCHED_IDLE",
            Policy::Deadline => "SCHED_DEADLINE",
            Policy::Unknown(_) => "unknown policy",
        }
    }

    /// Whether this is a real-time policy (FIFO, round robin or deadline).
    pub fn is_realtime(self) -> bool {
        matches!(self, Policy::Fifo | Policy::RoundRobin | Policy::Deadline)
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The SCHED_FIFO priority range of this kernel (1..=99 on Linux).
pub fn fifo_priority_range() -> (i32, i32) {
    // SAFETY: these calls have no preconditions.
    let (min, max) = unsafe {
        (
            libc::sched_get_priority_min(libc::SCHED_FIFO),
            libc::sched_get_priority_max(libc::SCHED_FIFO),
        )
    };
    if min < 0 || max < min {
        (1, 99)
    } else {
        (min, max)
    }
}

/// Puts the calling thread under SCHED_FIFO at `priority`.
///
/// Errors: [`HalError::PriorityRange`] for a priority outside the kernel's range;
/// [`HalError::Realtime`] when the kernel refuses (no CAP_SYS_NICE and `RLIMIT_RTPRIO` below
/// `priority`), its message naming the fixes.
pub fn set_fifo(priority: u8) -> Result<(), HalError> {
    let (min, max) = fifo_priority_range();
    let p = i32::from(priority);
    if p < min || p > max {
        return Err(HalError::PriorityRange { priority, min, max });
    }
    let param = libc::sched_param { sched_priority: p };
    // SAFETY: `pthread_self()` is the calling thread, alive during the call; `param` is a valid
    // sched_param the call only reads.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        return Err(HalError::Realtime {
            priority,
            errno: rc,
        });
    }
    Ok(())
}

/// Puts the calling thread back under SCHED_OTHER (nice value unchanged). Always allowed.
pub fn set_normal() -> Result<(), HalError> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: as in `set_fifo`.
    let rc =
        unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_OTHER, &param) };
    if rc != 0 {
        return Err(HalError::Os {
            what: "pthread_setschedparam(SCHED_OTHER)",
            errno: rc,
        });
    }
    Ok(())
}

/// The calling thread's scheduling policy and real-time priority (0 for the normal policies).
pub fn current_policy() -> Result<(Policy, i32), HalError> {
    thread_policy(0)
}

/// The scheduling policy and real-time priority of thread `tid` of this process (0: the caller),
/// from `sched_getscheduler` and `sched_getparam`.
pub fn thread_policy(tid: i32) -> Result<(Policy, i32), HalError> {
    // SAFETY: no memory is passed.
    let raw = unsafe { libc::sched_getscheduler(tid) };
    if raw < 0 {
        return Err(HalError::Os {
            what: "sched_getscheduler",
            errno: errno(),
        });
    }
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, writable sched_param.
    let rc = unsafe { libc::sched_getparam(tid, &mut param) };
    if rc != 0 {
        return Err(HalError::Os {
            what: "sched_getparam",
            errno: errno(),
        });
    }
    Ok((Policy::from_raw(raw), param.sched_priority))
}

/// The real-time priority limit (`RLIMIT_RTPRIO`, soft) of this process; `None` if unlimited.
pub fn rtprio_limit() -> Result<Option<u64>, HalError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &mut lim) };
    if rc != 0 {
        return Err(HalError::Os {
            what: "getrlimit(RLIMIT_RTPRIO)",
            errno: errno(),
        });
    }
    // `rlim_t` is not u64 on every target.
    #[allow(clippy::unnecessary_cast)]
    Ok(if lim.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(lim.rlim_cur as u64)
    })
}

/// The kernel's real-time throttling: `Some((runtime_us, period_us))` when real-time threads may
/// use at most `runtime_us` of every `period_us` on a CPU (`/proc/sys/kernel/sched_rt_*`), `None`
/// when throttling is off (`sched_rt_runtime_us = -1`) or unknown.
///
/// With the default 950000 of 1000000, a SCHED_FIFO thread that computes without a pause is
/// stopped for 50 ms every second whenever normal tasks wait for its CPU: a 50 ms token. Isolated
/// inference cores (`isolcpus=`) have no such tasks; `sysctl kernel.sched_rt_runtime_us=-1` turns
/// throttling off on a board whose inference cores are isolated.
pub fn rt_throttle() -> Option<(u64, u64)> {
    let read = |name: &str| -> Option<i64> {
        fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let runtime = read("sched_rt_runtime_us")?;
    let period = read("sched_rt_period_us")?;
    if runtime < 0 || period <= 0 || runtime >= period {
        return None;
    }
    Some((runtime as u64, period as u64))
}

/// The kernel's id of the calling thread (`gettid`).
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The CPUs thread `tid` of this process (0: the caller) may run on, from `sched_getaffinity`.
pub fn thread_affinity(tid: i32) -> Result<Vec<usize>, HalError> {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `set` is valid, writable and of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(tid, core::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(HalError::Os {
            what: "sched_getaffinity",
            errno: errno(),
        });
    }
    let bits = 8 * core::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: every index is below the number of bits in `set`.
    Ok((0..bits)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// What `/proc/self/task/<tid>/stat` says about a thread's scheduling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadStat {
    /// Field 39: the CPU the thread last ran on.
    pub processor: usize,
    /// Field 40: real-time priority (1..99 under a real-time policy, else 0).
    pub rt_priority: u32,
    /// Field 41: scheduling policy.
    pub policy: Policy,
}

/// Parses fields 39 to 41 of a `stat` line. The command name (field 2) may hold spaces and
/// parentheses, so counting starts after the last `)`.
pub fn parse_thread_stat(line: &str) -> Option<ThreadStat> {
    let rest = &line[line.rfind(')')? + 1..];
    // `rest` starts with field 3 (state).
    let mut fields = rest.split_ascii_whitespace().skip(39 - 3);
    let processor = fields.next()?.parse().ok()?;
    let rt_priority = fields.next()?.parse().ok()?;
    let policy = Policy::from_raw(fields.next()?.parse().ok()?);
    Some(ThreadStat {
        processor,
        rt_priority,
        policy,
    })
}

/// Reads [`ThreadStat`] of thread `tid` of this process.
pub fn thread_stat(tid: i32) -> Result<ThreadStat, HalError> {
    let text =
        fs::read_to_string(format!("/proc/self/task/{tid}/stat")).map_err(|e| HalError::Os {
            what: "reading /proc/self/task/<tid>/stat",
            errno: e.raw_os_error().unwrap_or(0),
        })?;
    parse_thread_stat(&text).ok_or(HalError::Parse {
        what: "/proc/self/task/<tid>/stat",
    })
}

/// Makes the process `cmd` spawns start under SCHED_OTHER and, when `cores` is not empty, allowed
/// on exactly those cores, instead of inheriting the spawning thread's real-time policy and its
/// pinning to one core (so that a program compared with ours, run from a pinned real-time thread,
/// gets the same cores and the normal scheduler rather than one core at real-time priority). A
/// core past the size of a CPU set is left out.
pub fn spawn_on_cores(cmd: &mut std::process::Command, cores: &[usize]) {
    use std::os::unix::process::CommandExt;
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    let bits = 8 * core::mem::size_of::<libc::cpu_set_t>();
    for &c in cores.iter().filter(|&&c| c < bits) {
        // SAFETY: `c` is below the number of bits in `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let pin = cores.iter().any(|&c| c < bits);
    // SAFETY: the hook runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it makes two system calls on data prepared before the fork and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let param = libc::sched_param { sched_priority: 0 };
            if libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if pin && libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        // A real line (kernel 6.x) with a command name holding a space and a parenthesis.
        let line = "4242 (edgellm (w 1)) S 1 4242 1 0 -1 4194560 100 0 0 0 5 1 0 0 -51 0 3 0 \
                    1234 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 -1 1 50 1 0 0 \
                    0 0 0 0 0 0 0 0 0";
        assert_eq!(
            parse_thread_stat(line),
            Some(ThreadStat {
                processor: 1,
                rt_priority: 50,
                policy: Policy::Fifo
            })
        );
        assert_eq!(parse_thread_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn own_stat_matches_getscheduler() {
        let tid = current_tid();
        let st = thread_stat(tid).unwrap();
        let (policy, prio) = current_policy().unwrap();
        assert_eq!(st.policy, policy);
        assert_eq!(st.rt_priority as i32, prio);
        assert!(thread_affinity(0).unwrap().contains(&st.processor) || st.processor < 1024);
    }

    #[test]
    fn out_of_range_priority_is_refused_before_the_kernel() {
        let (_, max) = fifo_priority_range();
        if max < 255 {
            let e = set_fifo(255).unwrap_err();
            assert!(matches!(e, HalError::PriorityRange { .. }), "{e}");
        }
        assert!(matches!(set_fifo(0), Err(HalError::PriorityRange { .. })));
    }

    #[test]
    fn refusal_names_the_fix() {
        let msg = HalError::Realtime {
            priority: 50,
            errno: libc::EPERM,
        }
        .to_string();
        assert!(
            msg.contains("CAP_SYS_NICE")
                && msg.contains("LimitRTPRIO=50")
                && msg.contains("ulimit -r 50"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }
}
