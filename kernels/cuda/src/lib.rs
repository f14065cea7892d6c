//! EdgeLLM's CUDA backend: the weights uploaded once, every buffer allocated before the first
//! token, and the whole decode step (embedding, every layer, the output layer and sampling)
//! captured in one CUDA graph that is replayed for each token, so only the token id crosses to
//! the host.
//!
//! The kernels (`src/kernels.cu`) are CUDA C compiled at start by NVRTC for the device's compute
//! capability; the CUDA libraries are loaded at run time (cudarc's dynamic loading), so the
//! `cuda` feature builds on machines without CUDA and the binary runs on machines without a GPU.
//! Without the `cuda` feature, [`Gpu::open`] returns [`CudaError::NotBuilt`].
//!
//! [`repack`] (plain Rust, always built) turns GGUF weight blocks into the device layout.

pub mod repack;

#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod engine;
#[cfg(feature = "cuda")]
pub mod testing;

#[cfg(feature = "cuda")]
pub use device::Gpu;
#[cfg(feature = "cuda")]
pub use engine::GpuEngine;

#[cfg(not(feature = "cuda"))]
mod stub;
#[cfg(not(feature = "cuda"))]
pub use stub::{Gpu, GpuEngine};

/// The CUDA C source of every kernel, compiled by NVRTC when a device is opened.
pub const KERNELS_SOURCE: &str = include_str!("kernels.cu");

/// How the GPU stores the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCache {
    /// IEEE half precision.
    F16,
    /// int8 with one f32 scale per position and KV head; attention scores by `__dp4a`.
    Int8,
}

impl KvCache {
    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            KvCache::F16 => 2,
            KvCache::Int8 => 1,
        }
    }
}

/// Why the GPU cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// The program was built without the `cuda` feature.
    #[error("not built with CUDA (rebuild with `--features cuda`)")]
    NotBuilt,
    /// No driver or NVRTC library, or no device.
    #[error("no usable CUDA device: {0}")]
    Unavailable(String),
    /// The model has a tensor type or shape the GPU kernels do not handle.
    #[error("the GPU path does not support this model: {0}")]
    Unsupported(String),
    /// The device does not have the memory the model and its buffers need.
    #[error("not enough GPU memory: {0}")]
    OutOfMemory(String),
    /// A CUDA call failed.
    #[error("CUDA error: {0}")]
    Driver(String),
}
