//! What a board is: plain data that every board crate fills in. No algorithms live here.
#![no_std]

/// Which CPU kernels a board's processor can run (the highest tier; lower ones work too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsaTier {
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// ARMv8.0 Advanced SIMD, no dot product (Cortex-A53, A57, A72).
    Neon,
    /// ARMv8.2 with the `sdot`/`udot` instructions (Cortex-A76, A78AE).
    NeonDotprod,
    /// Whatever the build machine has (the host board).
    Native,
}

impl IsaTier {
    /// The kernel tier name `--kernels` accepts.
    pub const fn kernel_tier(self) -> Option<&'static str> {
        match self {
            IsaTier::Avx2 => Some("avx2"),
            IsaTier::Neon => Some("neon"),
            IsaTier::NeonDotprod => Some("neon-dotprod"),
            IsaTier::Native => None,
        }
    }
}

/// Which cores do what. Inference threads are pinned to `inference` in order; the OS, the HTTP
/// service and everything else live on `system`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorePlan {
    pub inference: &'static [usize],
    pub system: &'static [usize],
}

/// A board the runtime is built for: its CPU, memory, software floor and core plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Board {
    /// Short name used on the command line (`--board`), e.g. `pi5`.
    pub name: &'static str,
    /// Human-readable description.
    pub description: &'static str,
    /// Rust target triple of the board's binary.
    pub target_triple: &'static str,
    /// `-C target-cpu` for the board's binary (empty: the toolchain's default).
    pub target_cpu: &'static str,
    /// `-C target-feature` for the board's binary (e.g. `-aes,-sha2` where LLVM's CPU model claims
    /// crypto the chip does not have).
    pub target_features: &'static str,
    /// Oldest glibc of the board's OS, as (major, minor); the binary may need nothing newer.
    pub glibc_floor: (u32, u32),
    /// The CPU kernels the board can run.
    pub isa: IsaTier,
    /// The CPU model qemu emulates for this board in cross tests.
    pub qemu_cpu: &'static str,
    /// Physical memory of the smallest variant of the board, in bytes.
    pub ram_bytes: u64,
    /// Memory the runtime may use (model image, KV cache, arena and overhead) on that variant.
    pub memory_budget_bytes: u64,
    /// Which cores run inference and which run the rest.
    pub cores: CorePlan,
    /// Default number of inference threads.
    pub default_threads: usize,
    /// Default context length in tokens.
    pub default_context: usize,
    /// SCHED_FIFO priority of the inference thread when real-time scheduling is allowed.
    pub rt_priority: u8,
    /// CUDA compute capability (`sm_87`) where the board has a GPU cudarc supports.
    pub cuda_arch: Option<&'static str>,
}

/// Mebibytes, for board data.
pub const MIB: u64 = 1 << 20;
/// Gibibytes, for board data.
pub const GIB: u64 = 1 << 30;
