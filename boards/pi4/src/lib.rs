//! Raspberry Pi 4 Model B: four Cortex-A72 cores, 1 to 8 GB of RAM.
#![no_std]

use edgellm_board::{Board, CorePlan, IsaTier, GIB, MIB};

/// The Pi 4's data, for its 2 GB variant (the smallest one sold today).
///
/// Sources: Raspberry Pi 4 Model B product brief (BCM2711: quad-core Cortex-A72 at 1.5/1.8 GHz;
/// 1, 2, 4 or 8 GB LPDDR4); Arm Cortex-A72 TRM (ARMv8.0-A, no dot product; BCM2711 has no crypto
/// extension, so LLVM's cortex-a72 `aes`/`sha2` are turned off); Raspberry Pi OS Bookworm: glibc 2.36.
pub const BOARD: Board = Board {
    name: "pi4",
    description: "Raspberry Pi 4 Model B (4x Cortex-A72, 2 GB and up)",
    target_triple: "aarch64-unknown-linux-gnu",
    target_cpu: "cortex-a72",
    target_features: "-aes,-sha2",
    glibc_floor: (2, 36),
    isa: IsaTier::Neon,
    qemu_cpu: "cortex-a72",
    ram_bytes: 2 * GIB,
    memory_budget_bytes: 1536 * MIB,
    cores: CorePlan {
        inference: &[2, 3],
        system: &[0, 1],
    },
    default_threads: 2,
    default_context: 2048,
    rt_priority: 50,
    cuda_arch: None,
};
