//! Real-time execution settings: which cores the inference threads use, whether they run under
//! SCHED_FIFO and whether memory is locked, from the flags and the board's defaults; and the
//! thread pool built with them.

use crate::ModelArgs;
use anyhow::{bail, Result};
use edgellm_board::Board;
use edgellm_core::parallel::Parallel;
use edgellm_hal::pool::{PoolOptions, ThreadPool, DEFAULT_SPIN};

/// What the flags and the board ask for, before anything is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub threads: usize,
    /// One core per thread, or no pinning.
    pub cores: Option<Vec<usize>>,
    /// SCHED_FIFO priority, or the normal scheduler.
    pub realtime: Option<u8>,
    pub lock_memory: bool,
    pub strict: bool,
    /// Why the board's cores were not used, when they were not.
    pub note: Option<String>,
}

fn list(cores: &[usize]) -> String {
    cores
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether the inference threads run under SCHED_FIFO: `--rt`, `--no-rt`, else on for every
/// board but `host`.
fn realtime_on(args: &ModelArgs, board: &Board) -> bool {
    if args.realtime.rt {
        true
    } else if args.realtime.no_rt {
        false
    } else {
        board.name != "host"
    }
}

/// Whether memory is locked: `--lock-memory`, else with SCHED_FIFO unless `--no-lock-memory`.
pub fn locks_memory(args: &ModelArgs, board: &Board) -> bool {
    args.realtime.lock_memory || (realtime_on(args, board) && !args.realtime.no_lock_memory)
}

/// Whether the model file is read into memory rather than mapped: yes unless `--mmap` (the last
/// of `--mmap` and `--no-mmap` given wins). Every weight is read for every token, so every page
/// of the file is resident while decoding either way; read into memory, the weights sit in huge
/// pages and cost far fewer TLB misses than through the file's 4 KiB pages.
pub fn model_in_memory(args: &ModelArgs, _board: &Board) -> bool {
    !args.mmap || args.no_mmap
}

/// Resolves the flags against `board` on a machine whose process may use `allowed` CPUs.
pub fn plan(args: &ModelArgs, board: &Board, allowed: &[usize]) -> Result<Plan> {
    if args.threads == Some(0) {
        bail!("--threads 0: the forward pass needs at least one thread");
    }
    let threads = args
        .threads
        .or(args.realtime.cores.as_ref().map(Vec::len))
        .unwrap_or(board.default_threads)
        .max(1);
    let mut note = None;
    let cores = match &args.realtime.cores {
        Some(cores) => {
            if cores.len() != threads {
                bail!(
                    "--cores {} names {} cores for {threads} threads: give one core per thread \
                     (the first for the calling thread), or drop --threads",
                    list(cores),
                    cores.len()
                );
            }
            if let Some((i, c)) = cores
                .iter()
                .enumerate()
                .find(|(i, c)| cores[..*i].contains(c))
            {
                bail!(
                    "--cores {} names core {c} twice (entry {}): one core per thread, or the \
                     threads on it take turns and every step waits for them",
                    list(cores),
                    i + 1
                );
            }
            if let Some(c) = cores.iter().find(|c| !allowed.contains(c)) {
                bail!(
                    "--cores: core {c} is not available to this process (available: {}); see \
                     /sys/devices/system/cpu/online, taskset -p and systemd CPUAffinity=",
                    list(allowed)
                );
            }
            Some(cores.clone())
        }
        None if board.name == "host" => None,
        None => {
            // The board's inference cores first, then its system cores, then anything else this
            // process may use; only cores that exist here.
            let mut order: Vec<usize> = Vec::new();
            for &c in board
                .cores
                .inference
                .iter()
                .chain(board.cores.system)
                .chain(allowed)
            {
                if allowed.contains(&c) && !order.contains(&c) {
                    order.push(c);
                }
            }
            if order.len() >= threads {
                order.truncate(threads);
                let planned = &board.cores.inference[..threads.min(board.cores.inference.len())];
                if order[..planned.len()] != *planned {
                    note = Some(format!(
                        "the {} inference cores {} are not all available here",
                        board.name,
                        list(board.cores.inference)
                    ));
                }
                Some(order)
            } else {
                note = Some(format!(
                    "{threads} threads but only {} cores available: not pinning",
                    order.len()
                ));
                None
            }
        }
    };
    if note.is_none() && threads > allowed.len() {
        note = Some(format!(
            "{threads} threads on the {} CPUs this process may use: they take turns on the CPUs \
             and wait for each other at every step, which makes each token slower; --threads {} \
             or fewer",
            allowed.len(),
            allowed.len()
        ));
    }
    let rt_on = realtime_on(args, board);
    let realtime = rt_on.then(|| args.realtime.rt_priority.unwrap_or(board.rt_priority));
    if let Some(p) = args.realtime.rt_priority {
        if !(1..=99).contains(&p) {
            bail!("--rt-priority {p}: SCHED_FIFO priorities go from 1 to 99");
        }
    }
    let lock_memory = locks_memory(args, board);
    Ok(Plan {
        threads,
        cores,
        realtime,
        lock_memory,
        strict: args.realtime.strict_rt,
        note,
    })
}

/// The inference thread pool and the real-time settings actually in effect.
#[derive(Debug)]
pub struct Exec {
    pub pool: ThreadPool,
    pub threads: usize,
    pub cores: Option<Vec<usize>>,
    /// SCHED_FIFO is in effect on every inference thread (read back from the kernel).
    pub realtime: bool,
    pub priority: Option<u8>,
    pub memory_locked: bool,
}

impl Exec {
    pub fn par(&self) -> &dyn Parallel {
        &self.pool
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        format!(
            "threads {}, cores {}, {}, {}",
            self.threads,
            self.cores
                .as_deref()
                .map_or("not pinned".to_string(), |c| format!(
                    "{} (pinned)",
                    list(c)
                )),
            match (self.realtime, self.priority) {
                (true, Some(p)) => format!("SCHED_FIFO priority {p} on all threads"),
                (false, Some(p)) => format!("SCHED_OTHER (SCHED_FIFO {p} refused)"),
                _ => "SCHED_OTHER".to_string(),
            },
            if self.memory_locked {
                "memory locked (mlockall, all pages resident)"
            } else {
                "memory not locked"
            }
        )
    }
}

/// The note for device interrupts that the kernel may deliver to the real-time inference `cores`
/// (each stops a token in its middle), or `None` when there are none; `allowed` are the CPUs the
/// process may use.
fn irq_note(cores: &[usize], allowed: &[usize]) -> Option<String> {
    irq_note_for(&edgellm_hal::irq::device_irqs_on(cores)?, cores, allowed)
}

/// [`irq_note`] for the interrupts `irqs`.
fn irq_note_for(
    irqs: &[edgellm_hal::irq::DeviceIrq],
    cores: &[usize],
    allowed: &[usize],
) -> Option<String> {
    if irqs.is_empty() {
        return None;
    }
    let mut named: Vec<String> = irqs
        .iter()
        .take(4)
        .map(|d| format!("{} {}", d.irq, d.name))
        .collect();
    if irqs.len() > 4 {
        named.push(format!("{} more", irqs.len() - 4));
    }
    let others: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| !cores.contains(c))
        .collect();
    let fix = if others.is_empty() {
        "every core runs inference here, so they cannot be moved off".to_string()
    } else {
        format!(
            "irqaffinity={} on the kernel command line (or /proc/irq/N/smp_affinity_list) keeps \
             them on the other cores",
            list(&others)
        )
    };
    Some(format!(
        "{} device interrupts can be delivered to inference core(s) {} (irq {}); each stops a \
         token in its middle: {fix}",
        irqs.len(),
        list(cores),
        named.join(", ")
    ))
}

/// Applies `plan`: locks memory, then starts the pool with its cores and priority. Privilege
/// problems are errors under `strict`, otherwise one warning line on stderr each.
pub fn apply(plan: &Plan) -> Result<Exec> {
    if let Some(n) = &plan.note {
        eprintln!("note: {n}");
    }
    // Before the pool pins this thread.
    let allowed = edgellm_hal::cpu::allowed_cpus().unwrap_or_default();
    let mut memory_locked = false;
    if plan.lock_memory {
        match edgellm_hal::memory::lock_all() {
            Ok(()) => memory_locked = true,
            Err(e) if plan.strict => bail!("{e} (--strict-rt)"),
            Err(e) => eprintln!("warning: {e}; going on with memory not locked"),
        }
    }
    let pool = ThreadPool::with_options(PoolOptions {
        threads: plan.threads,
        cores: plan.cores.clone(),
        realtime: plan.realtime,
        spin: DEFAULT_SPIN,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Err(e) = pool.realtime() {
        if plan.strict {
            bail!("{e} (--strict-rt)");
        }
        eprintln!("warning: {e}; going on under the normal scheduler");
    }
    let realtime = pool.realtime_in_effect();
    if let (true, Some((runtime, period))) = (realtime, edgellm_hal::realtime::rt_throttle()) {
        eprintln!(
            "note: the kernel throttles real-time threads to {} of every {} ms per CPU: a token \
             that meets a throttled period waits up to {} ms while normal tasks run; isolate the \
             inference cores (isolcpus=) or set kernel.sched_rt_runtime_us=-1 on the board",
            runtime / 1000,
            period / 1000,
            (period - runtime) / 1000
        );
    }
    if let (true, Some(cores)) = (realtime, &plan.cores) {
        if let Some(n) = irq_note(cores, &allowed) {
            eprintln!("note: {n}");
        }
    }
    Ok(Exec {
        threads: plan.threads,
        cores: plan.cores.clone(),
        realtime,
        priority: plan.realtime,
        memory_locked,
        pool,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        m: ModelArgs,
    }

    fn args(extra: &[&str]) -> ModelArgs {
        let mut v = vec!["t", "-m", "x.gguf"];
        v.extend_from_slice(extra);
        T::try_parse_from(v).unwrap().m
    }

    fn board(name: &str) -> Board {
        crate::boards::by_name(name).unwrap()
    }

    #[test]
    fn host_defaults_pin_nothing_and_stay_normal() {
        let p = plan(&args(&[]), &board("host"), &[0, 1]).unwrap();
        assert_eq!(p.cores, None);
        assert_eq!(p.realtime, None);
        assert!(!p.lock_memory);
        assert_eq!(p.threads, 2);
    }

    #[test]
    fn board_defaults_use_its_inference_cores() {
        let all = [0, 1, 2, 3];
        let p = plan(&args(&[]), &board("pi4"), &all).unwrap();
        assert_eq!(p.cores, Some(vec![2, 3]));
        assert_eq!(p.realtime, Some(50));
        assert!(p.lock_memory);
        assert_eq!(p.note, None);
        // Fewer threads: truncated; more: the system cores follow.
        let p = plan(&args(&["-t", "1"]), &board("pi4"), &all).unwrap();
        assert_eq!(p.cores, Some(vec![2]));
        let p = plan(&args(&["-t", "4"]), &board("pi4"), &all).unwrap();
        assert_eq!(p.cores, Some(vec![2, 3, 0, 1]));
        // A machine without the board's cores: what exists, with a note.
        let p = plan(&args(&[]), &board("pi4"), &[0, 1]).unwrap();
        assert_eq!(p.cores, Some(vec![0, 1]));
        assert!(p.note.is_some());
        let p = plan(&args(&["-t", "3"]), &board("pi4"), &[0, 1]).unwrap();
        assert_eq!(p.cores, None);
    }

    #[test]
    fn a_core_named_twice_is_refused() {
        let e = plan(&args(&["--cores", "1,1"]), &board("host"), &[0, 1]).unwrap_err();
        assert!(e.to_string().contains("names core 1 twice"), "{e}");
        let p = plan(&args(&["--cores", "1,0"]), &board("host"), &[0, 1]).unwrap();
        assert_eq!(p.cores, Some(vec![1, 0]));
    }

    #[test]
    fn zero_threads_are_refused_and_more_threads_than_cpus_noted() {
        let e = plan(&args(&["-t", "0"]), &board("host"), &[0, 1]).unwrap_err();
        assert!(e.to_string().contains("--threads 0"), "{e}");
        let p = plan(&args(&["-t", "2"]), &board("host"), &[0, 1]).unwrap();
        assert_eq!(p.note, None);
        let p = plan(&args(&["-t", "8"]), &board("host"), &[0, 1]).unwrap();
        assert_eq!(p.threads, 8);
        let note = p.note.expect("a note");
        assert!(
            note.contains("8 threads on the 2 CPUs") && note.contains("--threads 2"),
            "{note}"
        );
    }

    #[test]
    fn flags_override() {
        let p = plan(
            &args(&[
                "--cores",
                "1,0",
                "--rt",
                "--rt-priority",
                "70",
                "--no-lock-memory",
            ]),
            &board("host"),
            &[0, 1],
        )
        .unwrap();
        assert_eq!(p.threads, 2);
        assert_eq!(p.cores, Some(vec![1, 0]));
        assert_eq!(p.realtime, Some(70));
        assert!(!p.lock_memory);
        let p = plan(&args(&["--no-rt"]), &board("pi5"), &[0, 1, 2, 3]).unwrap();
        assert_eq!(p.realtime, None);
        assert!(!p.lock_memory);
        let p = plan(&args(&["--rt", "--strict-rt"]), &board("host"), &[0]).unwrap();
        assert!(p.lock_memory && p.strict && p.realtime == Some(50));
    }

    #[test]
    fn the_model_is_read_into_memory_unless_mapping_is_asked_for() {
        let in_mem = |extra: &[&str], b: &str| model_in_memory(&args(extra), &board(b));
        for b in ["host", "pi4"] {
            assert!(in_mem(&[], b));
            assert!(in_mem(&["--rt"], b));
            assert!(in_mem(&["--no-rt", "--no-lock-memory"], b));
            assert!(!in_mem(&["--mmap"], b));
            assert!(!in_mem(&["--rt", "--mmap"], b));
            // The last one given wins.
            assert!(in_mem(&["--mmap", "--no-mmap"], b));
            assert!(!in_mem(&["--no-mmap", "--mmap"], b));
        }
    }

    #[test]
    fn bad_core_lists_say_what_to_do() {
        let e = plan(&args(&["-t", "2", "--cores", "0"]), &board("host"), &[0, 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("one core per thread"), "{e}");
        let e = plan(&args(&["--cores", "0,7"]), &board("host"), &[0, 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("core 7") && e.contains("available: 0,1"), "{e}");
        let e = plan(&args(&["--rt-priority", "0"]), &board("host"), &[0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 to 99"), "{e}");
    }

    #[test]
    fn irq_note_names_the_interrupts_and_the_fix() {
        use edgellm_hal::irq::DeviceIrq;
        let irq = |irq, name: &str| DeviceIrq {
            irq,
            count: 7,
            name: name.into(),
        };
        assert_eq!(irq_note_for(&[], &[2, 3], &[0, 1, 2, 3]), None);
        let two = [irq(40, "mailbox"), irq(56, "eth0")];
        let n = irq_note_for(&two, &[2, 3], &[0, 1, 2, 3]).unwrap();
        assert!(n.starts_with("2 device interrupts"), "{n}");
        assert!(n.contains("core(s) 2,3 (irq 40 mailbox, 56 eth0)"), "{n}");
        assert!(n.contains("irqaffinity=0,1 "), "{n}");
        let six: Vec<DeviceIrq> = (0..6).map(|i| irq(30 + i, "dev")).collect();
        let n = irq_note_for(&six, &[0, 1], &[0, 1]).unwrap();
        assert!(n.contains("33 dev, 2 more)"), "{n}");
        assert!(n.contains("cannot be moved off"), "{n}");
    }
}
