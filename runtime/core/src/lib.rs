//! EdgeLLM runtime core: everything needed to run a model from bytes in memory, with no OS.
//!
//! Boundary: `no_std` + `alloc`. Knows nothing of files, threads, Linux or CUDA. Allocation happens
//! only while loading a model and creating a session; decoding allocates nothing.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub use edgellm_kernels as kernels;

pub mod gguf;
pub mod model;
pub mod parallel;
pub mod sampler;
pub mod session;
pub mod tokenizer;
