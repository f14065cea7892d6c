//! The `host` board: the development machine the binary was built on (x86-64 or aarch64 Linux).
#![no_std]

use edgellm_board::{Board, CorePlan, IsaTier, GIB};

/// The host board's data. Its memory budget is a ceiling; the runtime also checks the memory the
/// machine has available when it starts.
pub const BOARD: Board = Board {
    name: "host",
    description: "the machine this binary was built on",
    target_triple: "native",
    target_cpu: "",
    target_features: "",
    glibc_floor: (2, 17),
    isa: IsaTier::Native,
    qemu_cpu: "max",
    ram_bytes: 16 * GIB,
    memory_budget_bytes: 16 * GIB,
    cores: CorePlan {
        inference: &[0, 1],
        system: &[],
    },
    default_threads: 2,
    default_context: 2048,
    rt_priority: 50,
    cuda_arch: None,
};
