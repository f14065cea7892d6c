//! NVIDIA Jetson Orin (Nano, NX, AGX): Cortex-A78AE cores and an Ampere GPU sharing 8 to 64 GB.
#![no_std]

use edgellm_board::{Board, CorePlan, IsaTier, GIB};

/// The Jetson Orin's data, for the Orin Nano 8 GB (the smallest module with six CPU cores).
///
/// Sources: NVIDIA Jetson Orin Nano / NX / AGX module data sheets (6 to 12 Cortex-A78AE cores,
/// ARMv8.2-A with dot product; Ampere GPU of compute capability 8.7; 8 to 64 GB LPDDR5 shared);
/// JetPack 5 (Ubuntu 20.04, glibc 2.31, CUDA 11.4) and JetPack 6 (Ubuntu 22.04, glibc 2.35, CUDA 12).
pub const BOARD: Board = Board {
    name: "jetson-orin",
    description: "NVIDIA Jetson Orin (6-12x Cortex-A78AE, 8 GB and up shared, CUDA sm_87)",
    target_triple: "aarch64-unknown-linux-gnu",
    // LLVM has no cortex-a78ae model; cortex-a78 has the same instruction set.
    target_cpu: "cortex-a78",
    target_features: "",
    glibc_floor: (2, 31),
    isa: IsaTier::NeonDotprod,
    qemu_cpu: "neoverse-n1",
    ram_bytes: 8 * GIB,
    memory_budget_bytes: 6 * GIB,
    cores: CorePlan {
        inference: &[4, 5],
        system: &[0, 1, 2, 3],
    },
    default_threads: 2,
    default_context: 4096,
    rt_priority: 50,
    cuda_arch: Some("sm_87"),
};
