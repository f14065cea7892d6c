//! Raspberry Pi 5: four Cortex-A76 cores with the dot-product extension, 2 to 16 GB of RAM.
#![no_std]

use edgellm_board::{Board, CorePlan, IsaTier, GIB};

/// The Pi 5's data, for its 4 GB variant.
///
/// Sources: Raspberry Pi 5 product brief (BCM2712: quad-core Cortex-A76 at 2.4 GHz; 2, 4, 8 or
/// 16 GB LPDDR4X); Arm Cortex-A76 TRM (ARMv8.2-A with dot product and half-precision arithmetic,
/// no i8mm); Raspberry Pi OS Bookworm: glibc 2.36.
pub const BOARD: Board = Board {
    name: "pi5",
    description: "Raspberry Pi 5 (4x Cortex-A76, 4 GB and up)",
    target_triple: "aarch64-unknown-linux-gnu",
    target_cpu: "cortex-a76",
    target_features: "",
    glibc_floor: (2, 36),
    isa: IsaTier::NeonDotprod,
    qemu_cpu: "cortex-a76",
    ram_bytes: 4 * GIB,
    memory_budget_bytes: 3 * GIB,
    cores: CorePlan {
        inference: &[2, 3],
        system: &[0, 1],
    },
    default_threads: 2,
    default_context: 4096,
    rt_priority: 50,
    cuda_arch: None,
};
