//! Hardware layer: small fallible traits (no_std) and their Linux implementation (feature `std`).
//!
//! Boundary: the crate root (this file) is `no_std`: [`HalError`], [`Telemetry`] and
//! [`CpuFeatures`] can be used by code that knows nothing of an OS. Everything that touches libc,
//! `/proc` or `/sys` lives in the modules behind the `std` feature, on Linux:
//!
//! - [`pool`]: [`pool::ThreadPool`], the persistent, optionally pinned worker pool that implements
//!   [`edgellm_core::parallel::Parallel`] without allocating per job.
//! - [`counters`]: page faults, peak RSS and [`counters::CountingAlloc`], the counting global
//!   allocator the zero-heap tests and the bench install.
//! - [`cpu`]: [`cpu::CpuInfo::detect`]: online CPUs, core model, kernel-relevant features.
//! - [`irq`]: the device interrupts the kernel delivers to given cores.
//! - [`memory`]: `mlockall`, prefaulting, available memory.
//! - [`process`]: process-wide settings of the command-line tool (`SIGPIPE`).
//! - [`realtime`]: SCHED_FIFO for the calling thread, and reading back a thread's policy, priority,
//!   affinity and last CPU.
//! - [`telemetry`]: [`telemetry::LinuxTelemetry`], the sysfs implementation of [`Telemetry`].
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

use core::fmt;

#[cfg(all(feature = "std", target_os = "linux"))]
pub mod counters;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod cpu;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod irq;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod memory;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod pool;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod process;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod realtime;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod telemetry;

/// Errors of the hardware layer. Each message says what was expected, what was found and what to do.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalError {
    /// A thread pool needs at least one thread.
    ZeroThreads,
    /// The core list given to a thread pool does not have one entry per thread.
    CoreListLength {
        /// Threads requested (the length the list must have).
        expected: usize,
        /// Length of the list given.
        found: usize,
    },
    /// A core index is beyond what the affinity mask can express or what the machine has.
    CoreOutOfRange {
        /// The core asked for.
        core: usize,
        /// The first index that is out of range.
        limit: usize,
    },
    /// `sched_setaffinity` refused to pin a thread to a core.
    Pin {
        /// The core asked for.
        core: usize,
        /// The OS error number.
        errno: i32,
    },
    /// The OS refused to create a worker thread.
    Spawn {
        /// The OS error number, 0 if unknown.
        errno: i32,
    },
    /// `mlockall` failed, usually because of the memlock resource limit.
    MemoryLock {
        /// The OS error number.
        errno: i32,
    },
    /// The kernel refused SCHED_FIFO: no CAP_SYS_NICE and `RLIMIT_RTPRIO` below the priority.
    Realtime {
        /// The priority asked for.
        priority: u8,
        /// The OS error number.
        errno: i32,
    },
    /// A SCHED_FIFO priority outside the kernel's range.
    PriorityRange {
        /// The priority asked for.
        priority: u8,
        /// Lowest allowed.
        min: i32,
        /// Highest allowed.
        max: i32,
    },
    /// A system call or a read of a `/proc` or `/sys` file failed.
    Os {
        /// What was being done.
        what: &'static str,
        /// The OS error number, 0 if unknown.
        errno: i32,
    },
    /// A `/proc` or `/sys` file did not have the expected format.
    Parse {
        /// What was being parsed.
        what: &'static str,
    },
    /// The information is not available on this machine or kernel.
    Unsupported {
        /// What was asked for.
        what: &'static str,
    },
}

impl fmt::Display for HalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HalError::ZeroThreads => {
                f.write_str("a thread pool needs at least 1 thread, 0 were requested")
            }
            HalError::CoreListLength { expected, found } => write!(
                f,
                "the core list must name one core per thread ({expected}, the first for the calling \
                 thread), but it has {found} entries"
            ),
            HalError::CoreOutOfRange { core, limit } => write!(
                f,
                "core {core} does not exist here (cores are numbered below {limit}); \
                 pick cores from /sys/devices/system/cpu/online"
            ),
            HalError::Pin { core, errno } => write!(
                f,
                "could not pin a thread to core {core} (errno {errno}): the core may be offline \
                 or outside this process's cpuset (see taskset -p, systemd CPUAffinity=)"
            ),
            HalError::Spawn { errno } => {
                write!(f, "could not start a worker thread (errno {errno})")
            }
            HalError::MemoryLock { errno } => write!(
                f,
                "mlockall(MCL_CURRENT|MCL_FUTURE) failed (errno {errno}): the locked-memory limit \
                 is too low; set LimitMEMLOCK=infinity in the systemd unit, run `ulimit -l \
                 unlimited` in the shell, or grant CAP_IPC_LOCK"
            ),
            HalError::Realtime { priority, errno } => write!(
                f,
                "SCHED_FIFO priority {priority} was refused (errno {errno}): grant CAP_SYS_NICE \
                 (AmbientCapabilities=CAP_SYS_NICE), or set LimitRTPRIO={priority} in the systemd \
                 unit, or run `ulimit -r {priority}` in the shell"
            ),
            HalError::PriorityRange { priority, min, max } => write!(
                f,
                "SCHED_FIFO priority {priority} is outside this kernel's range {min}..={max}: \
                 pick one in that range"
            ),
            HalError::Os { what, errno } => write!(f, "{what} failed (errno {errno})"),
            HalError::Parse { what } => write!(f, "unexpected format while parsing {what}"),
            HalError::Unsupported { what } => {
                write!(f, "{what} is not available on this machine")
            }
        }
    }
}

impl core::error::Error for HalError {}

/// CPU features the kernels choose between. Plain data, filled by [`cpu::CpuInfo::detect`] on Linux.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// x86: AVX2.
    pub avx2: bool,
    /// x86: FMA3.
    pub fma: bool,
    /// x86: F16C (half-float conversion).
    pub f16c: bool,
    /// x86: AVX-512 Foundation.
    pub avx512f: bool,
    /// x86: AVX-512 VNNI (int8 dot products on 512-bit vectors).
    pub avx512vnni: bool,
    /// x86: AVX-VNNI (int8 dot products on 256-bit vectors).
    pub avxvnni: bool,
    /// aarch64: Advanced SIMD (`asimd`).
    pub neon: bool,
    /// aarch64: SDOT/UDOT (`asimddp`), Armv8.2 and later.
    pub dotprod: bool,
    /// aarch64: int8 matrix multiply (`i8mm`).
    pub i8mm: bool,
    /// aarch64: half-precision arithmetic (`fphp` and `asimdhp`).
    pub fp16: bool,
}

/// Board telemetry: temperature and clocks. A reading the board does not offer is `Ok(None)`.
///
/// Implementations must not allocate, so that a service can sample them between tokens.
pub trait Telemetry {
    /// SoC temperature in millidegrees Celsius.
    fn temperature_millicelsius(&self) -> Result<Option<i32>, HalError>;

    /// Current clock of CPU `cpu` in kHz.
    fn cpu_frequency_khz(&self, cpu: usize) -> Result<Option<u32>, HalError>;
}

/// Telemetry for a machine that has none (tests, unknown boards).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTelemetry;

impl Telemetry for NoTelemetry {
    fn temperature_millicelsius(&self) -> Result<Option<i32>, HalError> {
        Ok(None)
    }

    fn cpu_frequency_khz(&self, _cpu: usize) -> Result<Option<u32>, HalError> {
        Ok(None)
    }
}
