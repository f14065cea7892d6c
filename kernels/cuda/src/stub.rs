//! The API without the `cuda` feature: opening a device says the program was not built with CUDA.

use crate::{CudaError, KvCache};
use edgellm_core::model::Model;
use edgellm_core::sampler::SamplerParams;

/// A CUDA device (not available: built without the `cuda` feature).
#[derive(Debug)]
pub struct Gpu(());

impl Gpu {
    /// Always [`CudaError::NotBuilt`].
    pub fn open() -> Result<Gpu, CudaError> {
        Err(CudaError::NotBuilt)
    }

    /// Never called: no `Gpu` exists without the `cuda` feature.
    pub fn describe(&self) -> String {
        String::new()
    }
}

/// A model on the GPU (not available: built without the `cuda` feature).
#[derive(Debug)]
pub struct GpuEngine(());

impl GpuEngine {
    /// Always [`CudaError::NotBuilt`].
    pub fn new(
        _gpu: Gpu,
        _model: &Model<'_>,
        _context: usize,
        _kv: KvCache,
    ) -> Result<Self, CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn prefill(&mut self, _tokens: &[u32]) -> Result<(), CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn step(&mut self) -> Result<(), CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn feed(&mut self, _token: u32) -> Result<(), CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn sampled(&mut self) -> Result<u32, CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn logits(&mut self, _out: &mut [f32]) -> Result<(), CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn set_sampling(&mut self, _p: &SamplerParams, _seed: u64) -> Result<bool, CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn profile(&mut self) -> Result<Vec<(&'static str, f64)>, CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn profile_prefill(
        &mut self,
        _tokens: &[u32],
    ) -> Result<Vec<(&'static str, f64)>, CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn prefill_sequential(&mut self, _tokens: &[u32]) -> Result<(), CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn prefill_batch(&self) -> usize {
        0
    }
    /// Unreachable without the `cuda` feature.
    pub fn set_prefill_batch(&mut self, _n: usize) {}
    /// Unreachable without the `cuda` feature.
    pub fn set_attention_tiles(&mut self, _on: bool) {}

    /// Unreachable without the `cuda` feature.
    pub fn persistent_info(&self) -> Result<String, CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn set_persistent(&mut self, _per_sm: usize) -> Result<(), CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn set_overlap(&mut self, _on: bool) -> Result<(), CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn overlap(&self) -> bool {
        false
    }
    /// Unreachable without the `cuda` feature.
    pub fn set_shared_input_from(&mut self, _n: usize) -> Result<(), CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn reset(&mut self) -> Result<(), CudaError> {
        Err(CudaError::NotBuilt)
    }
    /// Unreachable without the `cuda` feature.
    pub fn pos(&self) -> usize {
        0
    }
    /// Unreachable without the `cuda` feature.
    pub fn context(&self) -> usize {
        0
    }
    /// Unreachable without the `cuda` feature.
    pub fn describe(&self) -> String {
        String::new()
    }
}
