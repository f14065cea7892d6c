//! Opening a CUDA device: the driver and NVRTC are loaded at run time, the kernels compiled for
//! the device's compute capability, and the kernel argument structs mirrored from `kernels.cu`.

use crate::repack::Packed;
use crate::CudaError;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use std::sync::Arc;

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(e.to_string())
    }
}

/// The kernels of `kernels.cu`.
pub(crate) struct Funcs {
    pub gemv: CudaFunction,
    pub gemv_prepared: CudaFunction,
    pub gemv_prepared_t2: CudaFunction,
    pub gemv_prepared_t2_narrow: CudaFunction,
    pub prep: CudaFunction,
    pub gemm: CudaFunction,
    pub gemm_t2: CudaFunction,
    pub kv_store: CudaFunction,
    pub quantize_acts: CudaFunction,
    pub t2_isums: CudaFunction,
    pub embed: CudaFunction,
    pub attention: CudaFunction,
    pub attention_tile: CudaFunction,
    pub sample: CudaFunction,
    pub advance: CudaFunction,
    pub stream_read: CudaFunction,
    pub decode_persistent: CudaFunction,
}

/// An opened CUDA device with the kernels compiled and loaded.
pub struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) f: Funcs,
    name: String,
    cc: (i32, i32),
    pub(crate) sms: usize,
    /// The most dynamic shared memory one block may use (after opting in).
    pub(crate) smem_optin: usize,
    /// Whether the device runs cooperative launches (every block resident at once).
    pub(crate) cooperative: bool,
    /// Blocks of `gemv` (with the shared memory of the largest input it prepares),
    /// `gemv_prepared`, `gemv_prepared_t2` and `gemv_prepared_t2_narrow` an SM holds at once.
    pub(crate) gemv_blocks_per_sm: usize,
    pub(crate) prepared_blocks_per_sm: usize,
    pub(crate) t2_blocks_per_sm: usize,
    pub(crate) t2_narrow_blocks_per_sm: usize,
}

/// Where a launch through [`Gpu::launch_ex`] may start: only after the work before it on the
/// stream has finished, or as a programmatic dependent launch (compute capability 9.0 and newer):
/// as soon as the kernel before it lets it (`grid_next` in kernels.cu), its blocks reading
/// weights until `grid_wait` returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Start {
    AfterPrevious,
    Overlapped,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Gpu {
    /// Opens device 0: loads the driver and NVRTC, compiles the kernels for its compute
    /// capability. Fails, without panicking, when either library or the device is missing.
    pub fn open() -> Result<Gpu, CudaError> {
        // SAFETY: only tries to load the library; nothing is called through it here.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::Unavailable(
                "no CUDA driver (libcuda.so) could be loaded".into(),
            ));
        }
        // SAFETY: as above.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(CudaError::Unavailable(
                "no NVRTC library (libnvrtc.so, part of the CUDA toolkit) could be loaded".into(),
            ));
        }
        let count = CudaContext::device_count()
            .map_err(|e| CudaError::Unavailable(format!("the driver found no device ({e})")))?;
        if count < 1 {
            return Err(CudaError::Unavailable("the driver found no device".into()));
        }
        let ctx = CudaContext::new(0)?;
        // One stream, so the per-buffer events cudarc records for multi-stream use are not
        // needed (and would be host work on every launch).
        // SAFETY: every buffer is used on the one stream below.
        unsafe { ctx.disable_event_tracking() };
        let cc = ctx.compute_capability()?;
        if cc.0 * 10 + cc.1 < 61 {
            return Err(CudaError::Unavailable(format!(
                "compute capability {}.{} has no __dp4a (6.1 or newer needed)",
                cc.0, cc.1
            )));
        }
        let opts = CompileOptions {
            fmad: Some(false),
            // Line information (no effect on the code) lets a profiler attribute time to lines.
            options: vec![
                format!("--gpu-architecture=compute_{}{}", cc.0, cc.1),
                "--generate-line-info".into(),
            ],
            name: Some("edgellm_kernels.cu".into()),
            ..Default::default()
        };
        let ptx = compile_ptx_with_opts(crate::KERNELS_SOURCE, opts)
            .map_err(|e| CudaError::Driver(format!("NVRTC could not compile the kernels: {e}")))?;
        let module = ctx.load_module(ptx)?;
        let load = |n: &str| module.load_function(n);
        let f = Funcs {
            gemv: load("gemv")?,
            gemv_prepared: load("gemv_prepared")?,
            gemv_prepared_t2: load("gemv_prepared_t2")?,
            gemv_prepared_t2_narrow: load("gemv_prepared_t2_narrow")?,
            prep: load("prep")?,
            gemm: load("gemm")?,
            gemm_t2: load("gemm_t2")?,
            kv_store: load("kv_store")?,
            quantize_acts: load("quantize_acts")?,
            t2_isums: load("t2_isums")?,
            embed: load("embed")?,
            attention: load("attention")?,
            attention_tile: load("attention_tile")?,
            sample: load("sample")?,
            advance: load("advance")?,
            stream_read: load("stream_read")?,
            decode_persistent: load("decode_persistent")?,
        };
        let name = ctx.name()?;
        let sms = ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )? as usize;
        let smem_optin = ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )?
        .max(48 << 10) as usize;
        // The prefill gemm stages GEMM_TOKENS tokens' inputs: let it use what the device allows.
        for gemm in [&f.gemm, &f.gemm_t2] {
            gemm.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem_optin as i32,
            )?;
        }
        f.attention.set_attribute(
            cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            (smem_optin - ATTN_STATIC_SMEM) as i32,
        )?;
        f.decode_persistent.set_attribute(
            cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            (smem_optin - ATTN_STATIC_SMEM) as i32,
        )?;
        f.attention_tile.set_attribute(
            cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem_optin as i32,
        )?;
        let cooperative = ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH,
        )? != 0;
        let per_sm = |f: &CudaFunction, smem: u32| -> Result<usize, CudaError> {
            Ok((f.occupancy_max_active_blocks_per_multiprocessor(
                GEMV_THREADS,
                smem as usize,
                None,
            )? as usize)
                .max(1))
        };
        let gemv_blocks_per_sm = per_sm(&f.gemv, gemv_smem(MAX_INPUT))?;
        let prepared_blocks_per_sm = per_sm(&f.gemv_prepared, 0)?;
        let t2_blocks_per_sm = per_sm(&f.gemv_prepared_t2, 0)?;
        let t2_narrow_blocks_per_sm = per_sm(&f.gemv_prepared_t2_narrow, 0)?;
        // A stream of its own: graphs cannot be captured on the legacy default stream.
        let stream = ctx.new_stream()?;
        Ok(Gpu {
            ctx,
            stream,
            f,
            name,
            cc,
            sms,
            smem_optin,
            cooperative,
            gemv_blocks_per_sm,
            prepared_blocks_per_sm,
            t2_blocks_per_sm,
            t2_narrow_blocks_per_sm,
        })
    }

    /// Whether the device runs programmatic dependent launches ([`Start::Overlapped`]).
    pub(crate) fn overlaps_launches(&self) -> bool {
        self.cc.0 >= 9
    }

    /// One line naming the device, e.g. `NVIDIA H200 (sm_90, 132 SMs)`.
    pub fn describe(&self) -> String {
        format!(
            "{} (sm_{}{}, {} SMs)",
            self.name, self.cc.0, self.cc.1, self.sms
        )
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize), CudaError> {
        Ok(self.ctx.mem_get_info()?)
    }

    pub(crate) fn upload<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>, CudaError> {
        if v.is_empty() {
            // A zero-length allocation has no address; keep one element so pointers stay valid.
            // SAFETY: never read (the kernels check lengths), only its address is passed.
            return Ok(unsafe { self.stream.alloc::<T>(1) }?);
        }
        Ok(self.stream.clone_htod(v)?)
    }

    pub(crate) fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.stream.alloc_zeros::<T>(n.max(1))?)
    }

    /// The device address of a buffer (stable for its lifetime).
    pub(crate) fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    /// The gemv kernel for `jobs` with input `prep`: for an input prepared beforehand
    /// (PREP_INT8), `gemv_prepared_t2` or `gemv_prepared_t2_narrow` when every job is T2
    /// ([`t2_gemv`]), else `gemv_prepared`; `gemv` for one each block prepares.
    pub(crate) fn gemv_fn(&self, jobs: &JobsArg, prep: &PrepArg) -> &CudaFunction {
        if prep.kind != PREP_INT8 {
            &self.f.gemv
        } else {
            match t2_gemv(self, jobs, prep) {
                Some(T2Gemv::Four) => &self.f.gemv_prepared_t2,
                Some(T2Gemv::Two) => &self.f.gemv_prepared_t2_narrow,
                None => &self.f.gemv_prepared,
            }
        }
    }

    /// Launches `f` on the stream with `args`, a pointer to each of its parameters' values in
    /// order, starting as `start` says. The launch goes straight to the driver (no allocation).
    ///
    /// # Safety
    ///
    /// `args` must match the kernel's parameters in number, type and order, every value must
    /// live until the call returns (the driver copies them), and every device pointer in them
    /// must be valid for what the kernel does with it. [`Start::Overlapped`] needs
    /// [`Gpu::overlaps_launches`], and a kernel that calls `grid_wait` before touching anything
    /// an earlier kernel writes.
    pub(crate) unsafe fn launch_ex(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        args: &[*const std::ffi::c_void],
        start: Start,
    ) -> Result<(), CudaError> {
        use cudarc::driver::sys;
        self.ctx.bind_to_thread()?;
        // SAFETY: an all-zero launch attribute value is valid (plain integers and padding).
        let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        value.programmaticStreamSerializationAllowed = 1;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        };
        let overlapped = start == Start::Overlapped;
        let conf = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: if overlapped {
                &mut attr
            } else {
                std::ptr::null_mut()
            },
            numAttrs: overlapped as u32,
        };
        let mut params: [*mut std::ffi::c_void; 4] = [std::ptr::null_mut(); 4];
        assert!(args.len() <= params.len(), "at most 4 kernel parameters");
        for (p, a) in params.iter_mut().zip(args) {
            *p = a.cast_mut();
        }
        // SAFETY: the configuration and its one attribute live on this stack frame through the
        // call; the caller guarantees the parameters.
        unsafe {
            sys::cuLaunchKernelEx(
                &conf,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()?;
        Ok(())
    }

    pub(crate) fn launch<A: DeviceRepr, B: DeviceRepr>(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        a: &A,
        b: &B,
    ) -> Result<(), CudaError> {
        let mut l = self.stream.launch_builder(f);
        l.arg(a).arg(b);
        // SAFETY: the argument structs mirror the kernels' parameter structs field for field
        // (#[repr(C)], checked by size below), and every pointer in them is a live device buffer
        // of the length the kernel reads (the callers build them from their own allocations).
        unsafe { l.launch(cfg) }?;
        Ok(())
    }
}

/// A weight matrix on the device: its buffers and the `Mat` argument pointing at them.
pub(crate) struct DevMat {
    pub arg: MatArg,
    _bufs: (
        CudaSlice<u8>,
        CudaSlice<f32>,
        CudaSlice<f32>,
        CudaSlice<f32>,
    ),
}

impl DevMat {
    pub fn upload(gpu: &Gpu, p: &Packed) -> Result<DevMat, CudaError> {
        let qs = gpu.upload(&p.qs)?;
        let d = gpu.upload(&p.d)?;
        let m = gpu.upload(&p.m)?;
        let rs = gpu.upload(&p.rs)?;
        let arg = MatArg {
            qs: gpu.ptr(&qs),
            d: if p.d.is_empty() { 0 } else { gpu.ptr(&d) },
            m: if p.m.is_empty() { 0 } else { gpu.ptr(&m) },
            rs: if p.rs.is_empty() { 0 } else { gpu.ptr(&rs) },
            stride: p.stride as i64,
            fmt: p.format as i32,
            rows: p.rows as i32,
            cols: p.cols as i32,
            pad: 0,
        };
        Ok(DevMat {
            arg,
            _bufs: (qs, d, m, rs),
        })
    }
}

/// `struct Mat` of kernels.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MatArg {
    pub qs: u64,
    pub d: u64,
    pub m: u64,
    pub rs: u64,
    pub stride: i64,
    pub fmt: i32,
    pub rows: i32,
    pub cols: i32,
    pub pad: i32,
}

/// `struct Job` of kernels.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct JobArg {
    pub w: MatArg,
    pub out: u64,
    pub bias: u64,
    pub mode: i32,
    pub first_block: i32,
}

/// `struct Jobs` of kernels.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct JobsArg {
    pub j: [JobArg; 3],
    pub n: i32,
    pub rows_per_block: i32,
}

/// `struct Prep` of kernels.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PrepArg {
    pub kind: i32,
    pub n: i32,
    pub x: u64,
    pub x2: u64,
    pub w: u64,
    pub eps: f32,
    pub pad: i32,
    pub am: u64,
    pub al: u64,
    pub ao: u64,
    pub nsplit: i32,
    pub hd: i32,
    pub qq: u64,
    pub qd: u64,
    pub qsum: u64,
    pub pos: u64,
    pub chunk: i32,
    pub tok: i32,
    /// Post-norm weights (BitNet's sub-norms), 0 for none.
    pub w2: u64,
}

/// `struct Attn` of kernels.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AttnArg {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub kc: u64,
    pub vc: u64,
    pub ks: u64,
    pub vs: u64,
    pub pos: u64,
    pub om: u64,
    pub ol: u64,
    pub oo: u64,
    pub n_heads: i32,
    pub n_kv: i32,
    pub hd: i32,
    pub chunk: i32,
    pub nsplit: i32,
    pub int8_kv: i32,
    pub rope_halves: i32,
    pub theta: f32,
    pub q_stride: i32,
    pub kv_stride: i32,
    pub stored: i32,
    pub ntok: i32,
    pub tile: i32,
    pub pad: i32,
}

/// `struct PrepOut` of kernels.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PrepOutArg {
    pub xs: u64,
    pub q: u64,
    pub d: u64,
    pub s: u64,
    pub x_stride: i32,
    pub attn_stride: i32,
}

/// `struct Acts` of kernels.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ActsArg {
    pub xs: u64,
    pub q: u64,
    pub d: u64,
    pub s: u64,
    pub n: i32,
    pub ntok: i32,
}

/// `struct Sample` of kernels.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SampleArg {
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub seed: u64,
}

/// `struct Phase` of kernels.cu: one gemv of the persistent decode kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PhaseArg {
    pub jobs: JobsArg,
    pub prep: PrepArg,
}

/// `struct PLayer` of kernels.cu: one layer's decode kernels' arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PLayerArg {
    pub qkv: PhaseArg,
    pub attn: AttnArg,
    pub o: PhaseArg,
    pub gu: PhaseArg,
    pub down: PhaseArg,
}

/// `struct Persist` of kernels.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PersistArg {
    pub layers: u64,
    pub embed: MatArg,
    pub head: PhaseArg,
    pub x: u64,
    pub logits: u64,
    pub sample: u64,
    pub state: u64,
    pub bar: u64,
    pub times: u64,
    pub best_v: u64,
    pub best_i: u64,
    pub n_layers: i32,
    pub vocab: i32,
    pub with_head: i32,
    pub barriers: i32,
    pub pad: i32,
}

// SAFETY: plain #[repr(C)] structs of integers and floats, laid out as their kernels.cu
// counterparts (sizes checked in the tests below).
unsafe impl DeviceRepr for MatArg {}
// SAFETY: as above.
unsafe impl DeviceRepr for JobsArg {}
// SAFETY: as above.
unsafe impl DeviceRepr for PrepArg {}
// SAFETY: as above.
unsafe impl DeviceRepr for AttnArg {}
// SAFETY: as above.
unsafe impl DeviceRepr for SampleArg {}
// SAFETY: as above.
unsafe impl DeviceRepr for PrepOutArg {}
// SAFETY: as above.
unsafe impl DeviceRepr for ActsArg {}
// SAFETY: as above.
unsafe impl DeviceRepr for PLayerArg {}
// SAFETY: as above.
unsafe impl DeviceRepr for PersistArg {}

/// Threads per gemv block (8 warps).
pub(crate) const GEMV_THREADS: u32 = 256;

/// Shared memory a gemv block needs for an input of `n` values: f32 copy, scales, sums, int8.
pub(crate) fn gemv_smem(n: usize) -> u32 {
    (4 * n + 8 * (n / 16) + n) as u32
}

/// Largest input a gemv block prepares in shared memory (5.5 bytes per value).
pub(crate) const MAX_INPUT: usize = 8192;

/// Shared memory of a gemv launch with input `prep` (none when the input is already prepared).
pub(crate) fn gemv_smem_for(prep: &PrepArg) -> u32 {
    if prep.kind == PREP_INT8 {
        0
    } else {
        gemv_smem(prep.n as usize)
    }
}

/// `PREP_INT8` of kernels.cu: the gemv's input is already prepared in global memory.
pub(crate) const PREP_INT8: i32 = 4;

/// Shared memory `attention` (and `decode_persistent`) declares statically (rounded up), besides
/// its staged rows.
pub(crate) const ATTN_STATIC_SMEM: usize = 16 << 10;

/// Shared memory `attention` stages one split's rows in (`stage_rows` of kernels.cu).
pub(crate) fn attention_rows_smem(chunk: usize, hd: usize, kv_bytes: usize) -> usize {
    chunk * (2 * hd * kv_bytes + 16) + 8 * chunk
}

/// Threads of a decode attention block (`ATTN_THREADS` of kernels.cu).
pub(crate) const ATTN_THREADS: u32 = 256;

/// Queries (one per warp) per `attention_tile` block (`ATTN_WARPS` of kernels.cu).
pub(crate) const ATTN_WARPS: usize = 8;

/// Shared memory of an `attention_tile` block: one split's keys (rows padded by 16 bytes) and
/// values (and int8 scales), and per warp its query (f32 and int8) and probabilities.
pub(crate) fn attention_tile_smem(chunk: usize, hd: usize, kv_bytes: usize) -> usize {
    chunk * (2 * hd * kv_bytes + 16) + 8 * chunk + ATTN_WARPS * 4 * (hd + hd / 4 + chunk)
}

/// Tokens per prefill gemm block (`GEMM_TOKENS` of kernels.cu).
pub(crate) const GEMM_TOKENS: usize = 16;

/// Shared memory a prefill gemm block needs for inputs of `n` values: int8, scales, sums, and
/// the Q4_1 offset terms.
pub(crate) fn gemm_smem(n: usize) -> usize {
    GEMM_TOKENS * (n + 8 * (n / 16) + 4 * (n / 32))
}

/// The grid's x extent for the prefill gemm of `jobs`: 4 rows per warp when that still gives
/// every SM a few blocks over the `tiles` token tiles, else 1.
pub(crate) fn plan_gemm(gpu: &Gpu, jobs: &mut JobsArg, tiles: usize) -> u32 {
    let warps = (GEMV_THREADS / 32) as usize;
    let rpb = if total_rows(jobs).div_ceil(4 * warps) * tiles < 4 * gpu.sms {
        warps
    } else {
        4 * warps
    };
    assign_blocks(jobs, rpb)
}

/// The two T2-only gemv kernels: warps taking passes of four rows (`gemv_prepared_t2`) or of two
/// (`gemv_prepared_t2_narrow`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum T2Gemv {
    Four,
    Two,
}

impl T2Gemv {
    fn rows_per_pass(self) -> usize {
        match self {
            T2Gemv::Four => 4,
            T2Gemv::Two => 2,
        }
    }
}

/// Columns from which `gemv_prepared_t2_narrow` may run a matrix: its loop takes four whole
/// interleaved chunks (4 x 128 groups of 16) at once.
const T2_NARROW_MIN_COLS: i32 = 4 * 128 * 16;

/// Which T2-only kernel runs the gemv of `jobs` with input `prep`, if any: it needs a prepared
/// input and every job a T2 matrix. Passes of two rows when passes of four would keep at most
/// half a wave of warps busy and every matrix is wide enough for its loop (on an H200, 8192 x
/// 8192 goes from 37% to 47-53% of the copy bandwidth; 16384 x 16384 is faster in passes of
/// four).
pub(crate) fn t2_gemv(gpu: &Gpu, jobs: &JobsArg, prep: &PrepArg) -> Option<T2Gemv> {
    let js = &jobs.j[..jobs.n as usize];
    if prep.kind != PREP_INT8
        || !js
            .iter()
            .all(|j| j.w.fmt == crate::repack::Format::T2 as i32)
    {
        return None;
    }
    let warps = (GEMV_THREADS / 32) as usize;
    let passes = js
        .iter()
        .map(|j| (j.w.rows as usize).div_ceil(4))
        .sum::<usize>();
    let wave = gpu.sms * gpu.t2_blocks_per_sm * warps;
    let wide = js.iter().all(|j| j.w.cols >= T2_NARROW_MIN_COLS);
    Some(if wide && 2 * passes <= wave {
        T2Gemv::Two
    } else {
        T2Gemv::Four
    })
}

/// The grid for `jobs` (their row counts) with input `prep`: every job gets
/// `ceil(rows / rows_per_block)` blocks. Rows per block: about as many blocks as the SMs hold at
/// once of the kernel that runs them (one wave: a second would wait for the first), at least one
/// row per warp; for the T2-only kernels, whole passes of their four or two rows per warp (their
/// loop for full passes is the fast one).
pub(crate) fn plan_jobs(gpu: &Gpu, jobs: &mut JobsArg, prep: &PrepArg) -> u32 {
    // The warps of a block split its rows.
    let warps = (GEMV_THREADS / 32) as usize;
    let t2 = t2_gemv(gpu, jobs, prep);
    let per_sm = match (prep.kind != PREP_INT8, t2) {
        (true, _) => gpu.gemv_blocks_per_sm,
        (false, Some(T2Gemv::Four)) => gpu.t2_blocks_per_sm,
        (false, Some(T2Gemv::Two)) => gpu.t2_narrow_blocks_per_sm,
        (false, None) => gpu.prepared_blocks_per_sm,
    };
    let unit = warps * t2.map_or(1, T2Gemv::rows_per_pass);
    let rpb = total_rows(jobs)
        .div_ceil(per_sm * gpu.sms)
        .div_ceil(unit)
        .max(1)
        * unit;
    assign_blocks(jobs, rpb)
}

/// The Jobs argument for `jobs`: (matrix, output, bias, OUT_STORE or OUT_ADD) each.
pub(crate) fn jobs_arg(jobs: &[(MatArg, u64, u64, i32)]) -> JobsArg {
    let mut ja = JobsArg {
        n: jobs.len() as i32,
        ..Default::default()
    };
    for (slot, &(w, out, bias, mode)) in ja.j.iter_mut().zip(jobs) {
        *slot = JobArg {
            w,
            out,
            bias,
            mode,
            first_block: 0,
        };
    }
    ja
}

fn total_rows(jobs: &JobsArg) -> usize {
    jobs.j[..jobs.n as usize]
        .iter()
        .map(|j| j.w.rows as usize)
        .sum()
}

/// Sets `rpb` rows per block and each job's first block; returns the number of blocks.
pub(crate) fn assign_blocks(jobs: &mut JobsArg, rpb: usize) -> u32 {
    jobs.rows_per_block = rpb as i32;
    let mut first = 0;
    for j in jobs.j[..jobs.n as usize].iter_mut() {
        j.first_block = first;
        first += (j.w.rows as usize).div_ceil(rpb) as i32;
    }
    first as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_gets_consecutive_blocks_covering_its_rows() {
        let m = |rows| MatArg {
            rows,
            ..Default::default()
        };
        let mut ja = jobs_arg(&[(m(576), 1, 0, 0), (m(192), 2, 3, 1), (m(1), 4, 0, 0)]);
        assert_eq!(
            (ja.n, ja.j[1].out, ja.j[1].bias, ja.j[1].mode),
            (3, 2, 3, 1)
        );
        assert_eq!(total_rows(&ja), 769);
        let blocks = assign_blocks(&mut ja, 64);
        assert_eq!(ja.rows_per_block, 64);
        let firsts: Vec<i32> = ja.j[..3].iter().map(|j| j.first_block).collect();
        assert_eq!(firsts, [0, 9, 12]);
        assert_eq!(blocks, 13);
    }

    #[test]
    fn argument_structs_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<MatArg>(), 56);
        assert_eq!(std::mem::size_of::<JobArg>(), 80);
        assert_eq!(std::mem::size_of::<JobsArg>(), 248);
        assert_eq!(std::mem::size_of::<PrepArg>(), 120);
        assert_eq!(std::mem::size_of::<AttnArg>(), 144);
        assert_eq!(std::mem::size_of::<PrepOutArg>(), 40);
        assert_eq!(std::mem::size_of::<ActsArg>(), 40);
        assert_eq!(std::mem::size_of::<SampleArg>(), 24);
        assert_eq!(std::mem::size_of::<PhaseArg>(), 368);
        assert_eq!(std::mem::size_of::<PLayerArg>(), 1616);
        assert_eq!(std::mem::size_of::<PersistArg>(), 520);
    }
}
