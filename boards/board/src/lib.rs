//! What a board is: plain data that every board crate fills in. No algorithms live here.
#![no_std]

/// A board the runtime is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Board {
    /// Short name used on the command line (`--board`), e.g. `pi5`.
    pub name: &'static str,
    /// Human-readable description.
    pub description: &'static str,
    /// Rust target triple of the board's binary.
    pub target_triple: &'static str,
    /// Default number of inference threads.
    pub default_threads: usize,
    /// Default context length in tokens.
    pub default_context: usize,
}
