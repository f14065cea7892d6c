//! The `host` board: the development machine the binary was built on (x86-64 or aarch64 Linux).
#![no_std]

use edgellm_board::Board;

/// The host board's data.
pub const BOARD: Board = Board {
    name: "host",
    description: "the machine this binary was built on",
    target_triple: "native",
    default_threads: 2,
    default_context: 2048,
};
