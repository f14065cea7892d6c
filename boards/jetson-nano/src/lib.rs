//! NVIDIA Jetson Nano: four Cortex-A57 cores and 4 GB shared with a Maxwell GPU (CPU kernels only).
#![no_std]

use edgellm_board::{Board, CorePlan, IsaTier, GIB};

/// The Jetson Nano's data.
///
/// Sources: NVIDIA Jetson Nano module data sheet (quad-core Cortex-A57 at 1.43 GHz, 4 GB LPDDR4
/// shared with a 128-core Maxwell GPU, compute capability 5.3); JetPack 4.6 (Ubuntu 18.04, glibc 2.27,
/// CUDA 10.2). cudarc supports CUDA 11.4 and newer, so the Nano runs the NEON kernels.
pub const BOARD: Board = Board {
    name: "jetson-nano",
    description: "NVIDIA Jetson Nano (4x Cortex-A57, 4 GB shared; CPU kernels)",
    target_triple: "aarch64-unknown-linux-gnu",
    target_cpu: "cortex-a57",
    target_features: "",
    glibc_floor: (2, 27),
    isa: IsaTier::Neon,
    qemu_cpu: "cortex-a57",
    ram_bytes: 4 * GIB,
    memory_budget_bytes: 2 * GIB,
    cores: CorePlan {
        inference: &[2, 3],
        system: &[0, 1],
    },
    default_threads: 2,
    default_context: 2048,
    rt_priority: 50,
    cuda_arch: None,
};
