//! Raspberry Pi Zero 2 W: four Cortex-A53 cores and 512 MB of RAM; the smallest board supported.
#![no_std]

use edgellm_board::{Board, CorePlan, IsaTier, MIB};

/// The Pi Zero 2 W's data.
///
/// Sources: Raspberry Pi Zero 2 W product brief (RP3A0 SiP: quad-core 64-bit Arm Cortex-A53 at
/// 1 GHz, 512 MB LPDDR2); Arm Cortex-A53 TRM (ARMv8.0-A, no dot product; the crypto extension is
/// optional and absent on the RP3A0, so LLVM's cortex-a53 `aes`/`sha2` are turned off); Raspberry
/// Pi OS Bookworm 64-bit ships glibc 2.36.
pub const BOARD: Board = Board {
    name: "pi-zero-2w",
    description: "Raspberry Pi Zero 2 W (4x Cortex-A53, 512 MB)",
    target_triple: "aarch64-unknown-linux-gnu",
    target_cpu: "cortex-a53",
    target_features: "-aes,-sha2",
    glibc_floor: (2, 36),
    isa: IsaTier::Neon,
    qemu_cpu: "cortex-a53",
    ram_bytes: 512 * MIB,
    // A headless Bookworm Lite system uses about 90 MB; the GPU firmware reserves 64 MB by default.
    memory_budget_bytes: 320 * MIB,
    cores: CorePlan {
        inference: &[2, 3],
        system: &[0, 1],
    },
    default_threads: 2,
    default_context: 1024,
    rt_priority: 50,
    cuda_arch: None,
};
