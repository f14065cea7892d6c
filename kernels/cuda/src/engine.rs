//! A model on the GPU: weights uploaded once, every buffer allocated up front, and the decode
//! step captured in CUDA graphs that are replayed for every token.
//!
//! One step is 5 kernels per layer plus 3 (embedding, output layer, sampling):
//!
//! 1. `gemv` Q, K, V: each block normalizes `x` (RMSNorm) and quantizes it in shared memory,
//!    then computes its rows of the three matrices (biases added);
//! 2. `attention`: one block per (head, split of the positions); the block holding the current
//!    position applies RoPE to the new key, stores key and value in the cache;
//! 3. `gemv` O: each block combines the attention's splits (BitNet: then RMS-normalizes them by
//!    `attn_sub_norm`), quantizes, adds its rows into `x`;
//! 4. `gemv` gate and up (RMSNorm of `x` again in every block);
//! 5. `gemv` down: SwiGLU of gate and up in every block (BitNet: `relu(gate)² * up`, then
//!    RMS-normalized by `ffn_sub_norm`), rows added into `x`.
//!
//! The position and the token live in device memory (`state`), so the graph never changes:
//! the sampling kernel writes the next token and advances the position, and the next replay's
//! embedding reads it. The host reads back 4 bytes per token.
//!
//! The same step can run as one persistent kernel (`decode_persistent`, turned on with
//! [`GpuEngine::set_persistent`]): as many blocks as the device holds at once go through the
//! step's phases (the five kernels' work, each calling the same device functions) separated by
//! grid barriers, and give the same values bit for bit (tested). It saves the launches, but on
//! an H200 its phases are slower than the kernels (fewer warps in flight per phase), so the
//! graph stays the default; `EDGELLM_CUDA_PROFILE` times its phases.
//!
//! A prompt is prefilled in batches of up to [`GpuEngine::prefill_batch`] tokens that go through
//! each layer together: `prep` builds every token's input, `gemm` reads each weight row once per
//! tile of 16 tokens, `kv_store` writes the batch's keys and values, and `attention` runs one
//! grid over every (head, split, token). Each product is summed in the same order as the decode
//! gemv's, so a batched prefill leaves the same KV cache and logits, bit for bit, as feeding the
//! tokens one at a time (tested).

use crate::device::{
    attention_rows_smem, attention_tile_smem, gemm_smem, gemv_smem, gemv_smem_for, jobs_arg,
    plan_gemm, plan_jobs, ActsArg, AttnArg, DevMat, Gpu, MatArg, PLayerArg, PersistArg, PhaseArg,
    PrepArg, PrepOutArg, SampleArg, Start, ATTN_STATIC_SMEM, ATTN_THREADS, ATTN_WARPS, GEMM_TOKENS,
    GEMV_THREADS, MAX_INPUT, PREP_INT8,
};
use crate::repack::{repack, Format};
use crate::{CudaError, KvCache};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use edgellm_core::model::{Config, FfnAct, Model, RopeStyle};
use edgellm_core::sampler::SamplerParams;

const PREP_RMSNORM: i32 = 1;
const PREP_SWIGLU: i32 = 2;
const PREP_ATTN: i32 = 3;
const PREP_RELU2: i32 = 5;
const OUT_STORE: i32 = 0;
const OUT_ADD: i32 = 1;

/// Decode gemv inputs of at least this many values are prepared once per step by one block
/// (large models); smaller ones by every gemv block in its shared memory (fewer launches).
pub const SHARED_INPUT_MIN: usize = 2048;

/// Blocks per SM of the persistent decode kernel when it is turned on (at most what fits; one
/// measured fastest on an H200).
pub const PERSIST_BLOCKS_PER_SM: usize = 1;

/// The most tokens one prefill batch takes.
const MAX_BATCH: usize = 512;
/// Device memory the prefill batch buffers may use.
const BATCH_BYTES: usize = 256 << 20;

/// The most candidates the device sampler keeps (`top_k` above this samples on the host).
pub const DEVICE_TOP_K: usize = 64;

struct LayerArgs {
    wq: MatArg,
    wk: MatArg,
    wv: MatArg,
    wo: MatArg,
    gate: MatArg,
    up: MatArg,
    down: MatArg,
    attn_norm: u64,
    ffn_norm: u64,
    bq: u64,
    bk: u64,
    bv: u64,
    /// BitNet's sub-norms (0 for none): of the heads' outputs before `wo`, of the gated product
    /// before `down`.
    attn_sub_norm: u64,
    ffn_sub_norm: u64,
}

/// A model resident on the GPU with its KV cache and decode graphs.
pub struct GpuEngine {
    gpu: Gpu,
    cfg: Config,
    context: usize,
    kv: KvCache,
    _mats: Vec<DevMat>,
    _vecs: Vec<CudaSlice<f32>>,
    embed: MatArg,
    layers: Vec<LayerArgs>,
    out_norm: u64,
    output: MatArg,
    x: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    g: CudaSlice<f32>,
    u: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    am: CudaSlice<f32>,
    al: CudaSlice<f32>,
    ao: CudaSlice<f32>,
    kc: CudaSlice<u8>,
    vc: CudaSlice<u8>,
    ks: CudaSlice<f32>,
    vs: CudaSlice<f32>,
    state: CudaSlice<i32>,
    sample: CudaSlice<SampleArg>,
    chunk: usize,
    nsplit: usize,
    step_graph: Option<CudaGraph>,
    fill_graph: Option<CudaGraph>,
    /// The persistent decode kernel's arguments, when the device can run it.
    persist: Result<Persistent, String>,
    /// Whether decode steps run the persistent kernel (else the graphs).
    use_persist: bool,
    head_graph: Option<CudaGraph>,
    batch: Batch,
    shared_from: usize,
    /// Whether each decode kernel after the first starts as a programmatic dependent launch
    /// (overlapping the one before it; compute capability 9.0 and newer).
    overlap: bool,
    /// Shared memory of a decode attention block that stages its split's rows (0: they do not
    /// fit, the block reads the cache in place).
    rows_smem: usize,
    sx: CudaSlice<f32>,
    sq: CudaSlice<i8>,
    sd: CudaSlice<f32>,
    ss: CudaSlice<i32>,
    pos: usize,
    host_sampling: bool,
    weight_bytes: usize,
}

/// The persistent decode kernel (`decode_persistent`): its layer table in device memory, its
/// grid barrier, its launch shape and arguments (with and without the output layer).
struct Persistent {
    _bufs: (
        CudaSlice<PLayerArg>,
        CudaSlice<u32>,
        CudaSlice<f32>,
        CudaSlice<i32>,
    ),
    cfg: LaunchConfig,
    step: PersistArg,
    fill: PersistArg,
}

/// The graphs captured at load.
#[derive(Clone, Copy)]
enum Graph {
    /// Embedding, every layer, output layer and sampling.
    Step,
    /// Embedding and every layer (prompt positions whose logits nobody needs).
    Fill,
    /// Output layer and sampling of `x` (after a batched prefill).
    Head,
}

/// Buffers of a prefill batch: `cap` tokens of every activation (0: prefill token by token,
/// `why` says why).
struct Batch {
    cap: usize,
    limit: usize,
    /// Whether prefill attention may stage K/V tiles (`attention_tile`).
    tiles: bool,
    why: String,
    tok: CudaSlice<i32>,
    host_tok: Vec<i32>,
    x: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    g: CudaSlice<f32>,
    u: CudaSlice<f32>,
    xs: CudaSlice<f32>,
    aq: CudaSlice<i8>,
    ad: CudaSlice<f32>,
    asum: CudaSlice<i32>,
    am: CudaSlice<f32>,
    al: CudaSlice<f32>,
    ao: CudaSlice<f32>,
}

impl Batch {
    /// Tokens per batch for `cfg` within [`BATCH_BYTES`], and the bytes per token.
    fn size(cfg: &Config, nsplit: usize) -> (usize, usize) {
        let maxn = cfg.dim.max(cfg.q_dim()).max(cfg.ffn_dim);
        let per_token = 4 * (cfg.dim + cfg.q_dim() + 2 * cfg.kv_dim() + 2 * cfg.ffn_dim + maxn)
            + maxn
            + 8 * (maxn / 16)
            + 4 * cfg.n_heads * nsplit * (2 + cfg.head_dim)
            + 4;
        let cap = (BATCH_BYTES / per_token).min(MAX_BATCH) / GEMM_TOKENS * GEMM_TOKENS;
        (cap, per_token)
    }

    fn new(
        gpu: &Gpu,
        cfg: &Config,
        nsplit: usize,
        cap: usize,
        why: String,
    ) -> Result<Self, CudaError> {
        let maxn = cfg.dim.max(cfg.q_dim()).max(cfg.ffn_dim);
        let nh = cfg.n_heads;
        Ok(Batch {
            cap,
            limit: cap,
            tiles: true,
            why,
            tok: gpu.zeros(cap)?,
            host_tok: Vec::with_capacity(cap),
            x: gpu.zeros(cap * cfg.dim)?,
            q: gpu.zeros(cap * cfg.q_dim())?,
            k: gpu.zeros(cap * cfg.kv_dim())?,
            v: gpu.zeros(cap * cfg.kv_dim())?,
            g: gpu.zeros(cap * cfg.ffn_dim)?,
            u: gpu.zeros(cap * cfg.ffn_dim)?,
            xs: gpu.zeros(cap * maxn)?,
            aq: gpu.zeros(cap * maxn)?,
            ad: gpu.zeros(cap * maxn / 16)?,
            asum: gpu.zeros(cap * maxn / 16)?,
            am: gpu.zeros(cap * nh * nsplit)?,
            al: gpu.zeros(cap * nh * nsplit)?,
            ao: gpu.zeros(cap * nh * nsplit * cfg.head_dim)?,
        })
    }
}

impl std::fmt::Debug for GpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The prep kind of the feed-forward gate: SwiGLU, or BitNet's squared ReLU.
fn gate_kind(c: &Config) -> i32 {
    match c.ffn_act {
        FfnAct::Silu => PREP_SWIGLU,
        FfnAct::Relu2 => PREP_RELU2,
    }
}

fn vec_arg(gpu: &Gpu, keep: &mut Vec<CudaSlice<f32>>, v: &[f32]) -> Result<u64, CudaError> {
    if v.is_empty() {
        return Ok(0);
    }
    let s = gpu.upload(v)?;
    let p = gpu.ptr(&s);
    keep.push(s);
    Ok(p)
}

/// A mark that waits for the stream and adds the time since the previous mark to its name.
type Mark<'a> = dyn FnMut(&'static str) -> Result<(), CudaError> + 'a;

/// Runs `enqueue` with such a mark after every kernel, and returns each name's total seconds
/// (host round trips included: a diagnostic, not a benchmark).
/// A kernel parameter's address, as [`Gpu::launch_ex`] takes it.
fn arg<T>(v: &T) -> *const std::ffi::c_void {
    (v as *const T).cast()
}

fn time_marks(
    stream: &CudaStream,
    enqueue: impl FnOnce(&mut Mark<'_>) -> Result<(), CudaError>,
) -> Result<Vec<(&'static str, f64)>, CudaError> {
    let mut times: Vec<(&'static str, f64)> = Vec::new();
    stream.synchronize()?;
    let mut last = std::time::Instant::now();
    enqueue(&mut |name| {
        stream.synchronize()?;
        let now = std::time::Instant::now();
        let dt = (now - last).as_secs_f64();
        last = now;
        match times.iter_mut().find(|(n, _)| *n == name) {
            Some(t) => t.1 += dt,
            None => times.push((name, dt)),
        }
        Ok(())
    })?;
    Ok(times)
}

impl GpuEngine {
    /// Uploads `model`, allocates a KV cache of `context` positions and every buffer, and
    /// captures the decode graphs.
    pub fn new(
        gpu: Gpu,
        model: &Model<'_>,
        context: usize,
        kv: KvCache,
    ) -> Result<Self, CudaError> {
        let cfg = model.config.clone();
        let hd = cfg.head_dim;
        if !hd.is_multiple_of(16) || hd > 256 || !cfg.n_heads.is_multiple_of(cfg.n_kv_heads) {
            return Err(CudaError::Unsupported(format!(
                "head size {hd} (the attention kernel takes multiples of 16 up to 256)"
            )));
        }
        for n in [cfg.dim, cfg.q_dim(), cfg.ffn_dim] {
            if n > MAX_INPUT || !n.is_multiple_of(32) {
                return Err(CudaError::Unsupported(format!(
                    "a matrix input of {n} values (at most {MAX_INPUT}, a multiple of 32)"
                )));
            }
        }
        if context == 0 {
            return Err(CudaError::Unsupported("a context of 0 positions".into()));
        }
        let kv_dim = cfg.kv_dim();
        let cache_bytes = 2 * cfg.n_layers * context * kv_dim * kv.bytes();
        let weight_bytes = model.layers.iter().fold(0usize, |a, l| {
            a + [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                .iter()
                .map(|m| m.data.len())
                .sum::<usize>()
        }) + model.token_embd.data.len()
            + if model.tied_output {
                0
            } else {
                model.output.data.len()
            };
        let chunk = 128.max(hd.next_power_of_two());
        let nsplit = context.div_ceil(chunk);
        let maxn = cfg.dim.max(cfg.q_dim()).max(cfg.ffn_dim);
        let (mut cap, per_token) = Batch::size(&cfg, nsplit);
        let mut why = String::new();
        if gemm_smem(maxn) > gpu.smem_optin {
            why = format!(
                "an input of {maxn} values needs {} KiB of shared memory per block, the device allows {}",
                gemm_smem(maxn) >> 10,
                gpu.smem_optin >> 10
            );
            cap = 0;
        } else if cap == 0 {
            why = format!("one token's prefill buffers need {per_token} bytes");
        }
        let (free, _) = gpu.memory()?;
        let need = cache_bytes + weight_bytes * 3 / 2 + cap * per_token + (64 << 20);
        if need > free {
            return Err(CudaError::OutOfMemory(format!(
                "the model and a {context}-position KV cache need about {} MiB, {} MiB are free",
                need >> 20,
                free >> 20
            )));
        }

        let mut mats = Vec::new();
        let mut vecs = Vec::new();
        let mut up = |m: &edgellm_core::model::Matrix<'_>| -> Result<MatArg, CudaError> {
            let p = repack(m).map_err(CudaError::Unsupported)?;
            let d = DevMat::upload(&gpu, &p)?;
            let a = d.arg;
            mats.push(d);
            Ok(a)
        };
        let embed = up(&model.token_embd)?;
        let output = if model.tied_output {
            embed
        } else {
            up(&model.output)?
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in &model.layers {
            layers.push((
                up(&l.wq)?,
                up(&l.wk)?,
                up(&l.wv)?,
                up(&l.wo)?,
                up(&l.w_gate)?,
                up(&l.w_up)?,
                up(&l.w_down)?,
            ));
        }
        let layers = layers
            .into_iter()
            .zip(&model.layers)
            .map(|((wq, wk, wv, wo, gate, upm, down), l)| {
                Ok(LayerArgs {
                    wq,
                    wk,
                    wv,
                    wo,
                    gate,
                    up: upm,
                    down,
                    attn_norm: vec_arg(&gpu, &mut vecs, &l.attn_norm)?,
                    ffn_norm: vec_arg(&gpu, &mut vecs, &l.ffn_norm)?,
                    bq: vec_arg(&gpu, &mut vecs, &l.bq)?,
                    bk: vec_arg(&gpu, &mut vecs, &l.bk)?,
                    bv: vec_arg(&gpu, &mut vecs, &l.bv)?,
                    attn_sub_norm: vec_arg(&gpu, &mut vecs, &l.attn_sub_norm)?,
                    ffn_sub_norm: vec_arg(&gpu, &mut vecs, &l.ffn_sub_norm)?,
                })
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        let out_norm = vec_arg(&gpu, &mut vecs, &model.output_norm)?;
        let batch = Batch::new(&gpu, &cfg, nsplit, cap, why)?;
        let nh = cfg.n_heads;
        let maxn = cfg.dim.max(cfg.q_dim()).max(cfg.ffn_dim);
        let rows_smem = match attention_rows_smem(chunk, hd, kv.bytes()) {
            r if r + ATTN_STATIC_SMEM <= gpu.smem_optin => r,
            _ => 0,
        };
        let gpu_overlaps = gpu.overlaps_launches();
        let mut e = GpuEngine {
            x: gpu.zeros(cfg.dim)?,
            q: gpu.zeros(cfg.q_dim())?,
            k: gpu.zeros(kv_dim)?,
            v: gpu.zeros(kv_dim)?,
            g: gpu.zeros(cfg.ffn_dim)?,
            u: gpu.zeros(cfg.ffn_dim)?,
            logits: gpu.zeros(cfg.vocab_size)?,
            am: gpu.zeros(nh * nsplit)?,
            al: gpu.zeros(nh * nsplit)?,
            ao: gpu.zeros(nh * nsplit * hd)?,
            kc: gpu.zeros(cfg.n_layers * context * kv_dim * kv.bytes())?,
            vc: gpu.zeros(cfg.n_layers * context * kv_dim * kv.bytes())?,
            ks: gpu.zeros(cfg.n_layers * context * cfg.n_kv_heads)?,
            vs: gpu.zeros(cfg.n_layers * context * cfg.n_kv_heads)?,
            state: gpu.zeros(4)?,
            sample: gpu.upload(&[SampleArg::default()])?,
            sx: gpu.zeros(maxn)?,
            sq: gpu.zeros(maxn)?,
            sd: gpu.zeros(maxn / 16)?,
            ss: gpu.zeros(maxn / 16)?,
            gpu,
            cfg,
            context,
            kv,
            _mats: mats,
            _vecs: vecs,
            embed,
            layers,
            out_norm,
            output,
            chunk,
            nsplit,
            step_graph: None,
            fill_graph: None,
            persist: Err(String::new()),
            use_persist: false,
            head_graph: None,
            batch,
            shared_from: SHARED_INPUT_MIN,
            overlap: gpu_overlaps,
            rows_smem,
            pos: 0,
            host_sampling: false,
            weight_bytes,
        };
        e.set_sampling(&SamplerParams::greedy(), 0)?;
        e.step_graph = Some(e.capture(Graph::Step)?);
        e.fill_graph = Some(e.capture(Graph::Fill)?);
        e.persist = e.persistent(PERSIST_BLOCKS_PER_SM)?;
        e.head_graph = Some(e.capture(Graph::Head)?);
        Ok(e)
    }

    /// The attention arguments of layer `i` that every launch shares: its caches, the position
    /// in `state`, the shapes and RoPE (the caller adds buffers, splits and batch fields).
    fn layer_attn(&self, i: usize) -> AttnArg {
        let (gpu, c) = (&self.gpu, &self.cfg);
        let layer_cache = (i * self.context * c.kv_dim() * self.kv.bytes()) as u64;
        let layer_scales = (i * self.context * c.n_kv_heads * 4) as u64;
        AttnArg {
            kc: gpu.ptr(&self.kc) + layer_cache,
            vc: gpu.ptr(&self.vc) + layer_cache,
            ks: gpu.ptr(&self.ks) + layer_scales,
            vs: gpu.ptr(&self.vs) + layer_scales,
            pos: gpu.ptr(&self.state) + 4,
            n_heads: c.n_heads as i32,
            n_kv: c.n_kv_heads as i32,
            hd: c.head_dim as i32,
            chunk: self.chunk as i32,
            nsplit: self.nsplit as i32,
            int8_kv: (self.kv == KvCache::Int8) as i32,
            rope_halves: (c.rope_style == RopeStyle::Halves) as i32,
            theta: c.rope_theta,
            ..Default::default()
        }
    }

    /// Sets up the persistent decode kernel with at most `per_sm` blocks per SM, or says why
    /// the device cannot run it.
    fn persistent(&self, per_sm: usize) -> Result<Result<Persistent, String>, CudaError> {
        let gpu = &self.gpu;
        if !gpu.cooperative {
            return Ok(Err("the device has no cooperative launch".into()));
        }
        let maxn = self.cfg.dim.max(self.cfg.q_dim()).max(self.cfg.ffn_dim);
        let smem = (gemv_smem(maxn) as usize).max(self.rows_smem);
        if smem + ATTN_STATIC_SMEM > gpu.smem_optin {
            return Ok(Err(format!(
                "a block would need {} KiB of shared memory",
                (smem + ATTN_STATIC_SMEM) >> 10
            )));
        }
        let threads = ATTN_THREADS;
        let fits = gpu
            .f
            .decode_persistent
            .occupancy_max_active_blocks_per_multiprocessor(threads, smem, None)?
            as usize;
        if fits == 0 {
            return Ok(Err("no block of it fits on an SM".into()));
        }
        let blocks = (gpu.sms * fits.min(per_sm).max(1)) as u32;
        let plans: Vec<PLayerArg> = (0..self.layers.len()).map(|i| self.layer_plan(i)).collect();
        let layers = gpu.upload(&plans)?;
        let bar = gpu.zeros::<u32>(1)?;
        let best_v = gpu.zeros::<f32>(blocks as usize)?;
        let best_i = gpu.zeros::<i32>(blocks as usize)?;
        let step = PersistArg {
            layers: gpu.ptr(&layers),
            embed: self.embed,
            head: self.head_phase(),
            x: gpu.ptr(&self.x),
            logits: gpu.ptr(&self.logits),
            sample: gpu.ptr(&self.sample),
            state: gpu.ptr(&self.state),
            bar: gpu.ptr(&bar),
            best_v: gpu.ptr(&best_v),
            best_i: gpu.ptr(&best_i),
            n_layers: self.layers.len() as i32,
            vocab: self.cfg.vocab_size as i32,
            with_head: 1,
            ..Default::default()
        };
        Ok(Ok(Persistent {
            _bufs: (layers, bar, best_v, best_i),
            cfg: LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: smem as u32,
            },
            step,
            fill: PersistArg {
                with_head: 0,
                ..step
            },
        }))
    }

    /// Runs decode steps in the persistent kernel with at most `per_sm` blocks per SM (0: in
    /// the graphs of kernels, the default). Both compute the same values (tested); an error says
    /// why the device cannot run the persistent kernel.
    pub fn set_persistent(&mut self, per_sm: usize) -> Result<(), CudaError> {
        if per_sm == 0 {
            self.use_persist = false;
            return Ok(());
        }
        self.persist = self.persistent(per_sm)?;
        match &self.persist {
            Ok(_) => {
                self.use_persist = true;
                Ok(())
            }
            Err(why) => Err(CudaError::Unsupported(format!(
                "the persistent decode kernel: {why}"
            ))),
        }
    }

    /// Launches one decode step (with the output layer and sampling, or only advancing the
    /// position) on the stream.
    fn launch_step(&self, with_head: bool) -> Result<(), CudaError> {
        match (&self.persist, self.use_persist) {
            (Ok(p), true) => self.launch_persistent(p, if with_head { &p.step } else { &p.fill }),
            _ => {
                let g = if with_head {
                    &self.step_graph
                } else {
                    &self.fill_graph
                };
                g.as_ref().expect("captured in new").launch()?;
                Ok(())
            }
        }
    }

    /// Launches the persistent kernel with `arg` (no heap allocation: the launch is made
    /// through the driver call itself, its one argument pointer on the stack).
    fn launch_persistent(&self, p: &Persistent, arg: &PersistArg) -> Result<(), CudaError> {
        let gpu = &self.gpu;
        gpu.ctx.bind_to_thread()?;
        let stream = gpu.stream.cu_stream();
        // SAFETY: zeroes the barrier's arrival count (4 bytes of a live 4-byte buffer).
        unsafe { cudarc::driver::result::memset_d8_async(arg.bar, 0, 4, stream) }?;
        let mut params = [arg as *const PersistArg as *mut std::ffi::c_void];
        let c = &p.cfg;
        // SAFETY: `arg` mirrors `struct Persist` and points at this engine's buffers and layer
        // table (built by `layer_plan`, as for the graph's kernels); it outlives the call, which
        // copies the parameters. The cooperative launch makes every block resident at once, as
        // the kernel's grid barrier needs.
        unsafe {
            cudarc::driver::result::launch_cooperative_kernel(
                gpu.f.decode_persistent.cu_function(),
                c.grid_dim,
                c.block_dim,
                c.shared_mem_bytes,
                stream,
                &mut params,
            )
        }?;
        Ok(())
    }

    /// Profiles the persistent kernel: one step with block 0 timing every phase (preparing the
    /// input, its rows, waiting at the barrier), and the cost of one grid barrier alone (1000 in
    /// a launch). Advances the position by 1.
    fn profile_persistent(&mut self) -> Result<Vec<(&'static str, f64)>, CudaError> {
        let Ok(p) = &self.persist else {
            return Ok(Vec::new());
        };
        let nl = self.layers.len();
        // Phases: embed, 5 per layer, output layer, sampling.
        let phases = 3 + 5 * nl;
        let times = self.gpu.zeros::<i64>(3 * phases)?;
        let clock_khz =
            self.gpu.ctx.attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE,
            )? as f64;
        let arg = PersistArg {
            times: self.gpu.ptr(&times),
            ..p.step
        };
        self.launch_persistent(p, &arg)?;
        let mut t = vec![0i64; 3 * phases];
        self.gpu.stream.memcpy_dtoh(&times, &mut t)?;
        self.gpu.stream.synchronize()?;
        self.pos += 1;
        let secs = |a: usize, b: usize| (t[b] - t[a]) as f64 / (clock_khz * 1e3);
        // Phase ph runs from stamp 3 ph to 3 ph + 2 (its input ready at 3 ph + 1 for a gemv),
        // then waits until 3 (ph + 1).
        let mut out = vec![("persistent: embed", secs(0, 3))];
        let names = [
            [
                "persistent: qkv input",
                "persistent: qkv rows",
                "persistent: qkv barrier",
            ],
            ["persistent: attention", "", "persistent: attention barrier"],
            [
                "persistent: o input",
                "persistent: o rows",
                "persistent: o barrier",
            ],
            [
                "persistent: gate/up input",
                "persistent: gate/up rows",
                "persistent: gate/up barrier",
            ],
            [
                "persistent: down input",
                "persistent: down rows",
                "persistent: down barrier",
            ],
        ];
        for (j, n) in names.iter().enumerate() {
            let (mut a, mut b, mut c) = (0.0, 0.0, 0.0);
            for l in 0..nl {
                let ph = 1 + 5 * l + j;
                if j == 1 {
                    a += secs(3 * ph, 3 * ph + 2);
                } else {
                    a += secs(3 * ph, 3 * ph + 1);
                    b += secs(3 * ph + 1, 3 * ph + 2);
                }
                c += secs(3 * ph + 2, 3 * ph + 3);
            }
            out.push((n[0], a));
            if j != 1 {
                out.push((n[1], b));
            }
            out.push((n[2], c));
        }
        let ph = 1 + 5 * nl;
        out.push(("persistent: output", secs(3 * ph, 3 * ph + 3)));
        out.push(("persistent: sample", secs(3 * ph + 3, 3 * ph + 5)));
        let arg = PersistArg {
            barriers: 1000,
            ..p.step
        };
        self.gpu.stream.synchronize()?;
        let t0 = std::time::Instant::now();
        self.launch_persistent(p, &arg)?;
        self.gpu.stream.synchronize()?;
        out.push((
            "persistent: one barrier",
            t0.elapsed().as_secs_f64() / 1000.0,
        ));
        Ok(out)
    }

    /// The persistent kernel's registers per thread, local memory per thread (spills) and
    /// blocks per SM that fit, or why it does not run.
    pub fn persistent_info(&self) -> Result<String, CudaError> {
        use cudarc::driver::sys::CUfunction_attribute as A;
        let f = &self.gpu.f.decode_persistent;
        let regs = f.get_attribute(A::CU_FUNC_ATTRIBUTE_NUM_REGS)?;
        let local = f.get_attribute(A::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?;
        let stat = f.get_attribute(A::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?;
        Ok(match &self.persist {
            Ok(p) => format!(
                "persistent kernel: {regs} registers and {local} bytes of local memory per thread, {} + {} bytes of shared memory per block, {} blocks of {}",
                stat, p.cfg.shared_mem_bytes, p.cfg.grid_dim.0, p.cfg.block_dim.0
            ),
            Err(why) => format!("persistent kernel: {regs} registers; not used: {why}"),
        })
    }

    fn capture(&self, which: Graph) -> Result<CudaGraph, CudaError> {
        let s = &self.gpu.stream;
        s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let r = match which {
            Graph::Step => self.enqueue(true),
            Graph::Fill => self.enqueue(false),
            Graph::Head => self.enqueue_head(true, &mut |_| Ok(())),
        };
        let g = s.end_capture(CUgraphInstantiate_flags(0))?;
        r?;
        let g = g.ok_or_else(|| CudaError::Driver("stream capture produced no graph".into()))?;
        g.upload()?;
        Ok(g)
    }

    /// How a decode kernel starts: the step's first after everything before it, the others
    /// overlapping the kernel before them where [`GpuEngine::set_overlap`] allows.
    fn start(&self, first: bool) -> Start {
        if self.overlap && !first {
            Start::Overlapped
        } else {
            Start::AfterPrevious
        }
    }

    /// Decode kernels after the first start before the kernel before them finishes (programmatic
    /// dependent launches: their blocks prefetch weights and stage cached rows, then wait for
    /// it), where the device runs them (compute capability 9.0 and newer; the default there).
    /// The results are the same. Recaptures the decode graphs.
    pub fn set_overlap(&mut self, on: bool) -> Result<(), CudaError> {
        self.overlap = on && self.gpu.overlaps_launches();
        self.recapture()
    }

    /// Whether decode kernels overlap (see [`GpuEngine::set_overlap`]).
    pub fn overlap(&self) -> bool {
        self.overlap
    }

    fn recapture(&mut self) -> Result<(), CudaError> {
        self.step_graph = Some(self.capture(Graph::Step)?);
        self.fill_graph = Some(self.capture(Graph::Fill)?);
        self.head_graph = Some(self.capture(Graph::Head)?);
        Ok(())
    }

    /// Enqueues the gemv of phase `ph` (with the kernel preparing its input first, for a large
    /// input); `first`: it is the first kernel of what is captured.
    fn gemv(&self, ph: &PhaseArg, first: bool) -> Result<(), CudaError> {
        let mut ja = ph.jobs;
        let mut prep = ph.prep;
        if prep.n as usize >= self.shared_from && prep.kind != PREP_INT8 {
            // A large input: prepared once by one block (the same `prepare`, so the same
            // values) instead of by every gemv block, which then start on their weights at once.
            let gpu = &self.gpu;
            let out = PrepOutArg {
                xs: gpu.ptr(&self.sx),
                q: gpu.ptr(&self.sq),
                d: gpu.ptr(&self.sd),
                s: gpu.ptr(&self.ss),
                x_stride: 0,
                attn_stride: 0,
            };
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (GEMV_THREADS, 1, 1),
                shared_mem_bytes: gemv_smem(prep.n as usize),
            };
            // SAFETY: `prep` reads the input `prep` describes and writes n values (and their
            // scales and sums) into the engine's shared-input buffers, sized for the largest.
            unsafe {
                gpu.launch_ex(
                    &gpu.f.prep,
                    cfg,
                    &[arg(&prep), arg(&out)],
                    self.start(first),
                )
            }?;
            prep = PrepArg {
                kind: PREP_INT8,
                n: prep.n,
                x: out.xs,
                qq: out.q,
                qd: out.d,
                qsum: out.s,
                ..Default::default()
            };
        }
        let blocks = plan_jobs(&self.gpu, &mut ja, &prep);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (GEMV_THREADS, 1, 1),
            shared_mem_bytes: gemv_smem_for(&prep),
        };
        let start = if prep.kind == PREP_INT8 && ph.prep.kind != PREP_INT8 {
            // After its own `prep` kernel.
            self.start(false)
        } else {
            self.start(first)
        };
        // SAFETY: the jobs' matrices and outputs are this engine's buffers, and the input is
        // what `prep` describes (the layer plan's buffers, or the shared input just prepared).
        unsafe {
            self.gpu.launch_ex(
                self.gpu.gemv_fn(&ja, &prep),
                cfg,
                &[arg(&ja), arg(&prep)],
                start,
            )
        }
    }

    /// Decode gemvs whose input has at least `n` values get it prepared once, by one block,
    /// instead of by each of their blocks (default [`SHARED_INPUT_MIN`]; the results are the
    /// same). Recaptures the decode graphs.
    pub fn set_shared_input_from(&mut self, n: usize) -> Result<(), CudaError> {
        self.shared_from = n;
        self.recapture()
    }

    /// Enqueues one decode step on the stream (captured into a graph; run directly only by
    /// [`GpuEngine::profile`], which passes `mark` to time each kernel).
    fn enqueue(&self, with_head: bool) -> Result<(), CudaError> {
        self.enqueue_marked(with_head, &mut |_| Ok(()))
    }

    /// The arguments of layer `i`'s five decode kernels (see the module comment), which the
    /// graph launches one by one and the persistent kernel runs as phases.
    fn layer_plan(&self, i: usize) -> PLayerArg {
        let gpu = &self.gpu;
        let c = &self.cfg;
        let l = &self.layers[i];
        let (x, q, k, v, g, u) = (
            gpu.ptr(&self.x),
            gpu.ptr(&self.q),
            gpu.ptr(&self.k),
            gpu.ptr(&self.v),
            gpu.ptr(&self.g),
            gpu.ptr(&self.u),
        );
        let (am, al, ao) = (gpu.ptr(&self.am), gpu.ptr(&self.al), gpu.ptr(&self.ao));
        let norm = |w: u64| PrepArg {
            kind: PREP_RMSNORM,
            n: c.dim as i32,
            x,
            w,
            eps: c.rms_eps,
            ..Default::default()
        };
        let phase = |jobs: &[(MatArg, u64, u64, i32)], prep| PhaseArg {
            jobs: jobs_arg(jobs),
            prep,
        };
        PLayerArg {
            qkv: phase(
                &[
                    (l.wq, q, l.bq, OUT_STORE),
                    (l.wk, k, l.bk, OUT_STORE),
                    (l.wv, v, l.bv, OUT_STORE),
                ],
                norm(l.attn_norm),
            ),
            attn: AttnArg {
                q,
                k,
                v,
                om: am,
                ol: al,
                oo: ao,
                tile: (self.rows_smem > 0) as i32,
                ..self.layer_attn(i)
            },
            o: phase(
                &[(l.wo, x, 0, OUT_ADD)],
                PrepArg {
                    kind: PREP_ATTN,
                    n: c.q_dim() as i32,
                    am,
                    al,
                    ao,
                    nsplit: self.nsplit as i32,
                    hd: c.head_dim as i32,
                    pos: gpu.ptr(&self.state) + 4,
                    chunk: self.chunk as i32,
                    w2: l.attn_sub_norm,
                    eps: c.rms_eps,
                    ..Default::default()
                },
            ),
            gu: phase(
                &[(l.gate, g, 0, OUT_STORE), (l.up, u, 0, OUT_STORE)],
                norm(l.ffn_norm),
            ),
            down: phase(
                &[(l.down, x, 0, OUT_ADD)],
                PrepArg {
                    kind: gate_kind(c),
                    n: c.ffn_dim as i32,
                    x: g,
                    x2: u,
                    w2: l.ffn_sub_norm,
                    eps: c.rms_eps,
                    ..Default::default()
                },
            ),
        }
    }

    /// The output layer's gemv: RMSNorm of `x`, logits stored.
    fn head_phase(&self) -> PhaseArg {
        let gpu = &self.gpu;
        PhaseArg {
            jobs: jobs_arg(&[(self.output, gpu.ptr(&self.logits), 0, OUT_STORE)]),
            prep: PrepArg {
                kind: PREP_RMSNORM,
                n: self.cfg.dim as i32,
                x: gpu.ptr(&self.x),
                w: self.out_norm,
                eps: self.cfg.rms_eps,
                ..Default::default()
            },
        }
    }

    fn enqueue_marked(&self, with_head: bool, mark: &mut Mark<'_>) -> Result<(), CudaError> {
        let gpu = &self.gpu;
        let c = &self.cfg;
        let state = gpu.ptr(&self.state);
        let x = gpu.ptr(&self.x);
        let cfg = LaunchConfig {
            grid_dim: (c.dim.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `embed` reads one row (index state[0] < vocab, written by the host or the
        // sampler) of the embedding matrix and writes `dim` floats of `x`.
        unsafe {
            gpu.launch_ex(
                &gpu.f.embed,
                cfg,
                &[arg(&self.embed), arg(&state), arg(&x)],
                self.start(true),
            )
        }?;
        mark("embed")?;
        for i in 0..self.layers.len() {
            let l = self.layer_plan(i);
            self.gemv(&l.qkv, false)?;
            mark("gemv qkv")?;
            let cfg = LaunchConfig {
                grid_dim: (c.n_heads as u32, self.nsplit as u32, 1),
                block_dim: (ATTN_THREADS, 1, 1),
                shared_mem_bytes: self.rows_smem as u32,
            };
            // SAFETY: the cache, scratch and partial buffers were allocated for this
            // configuration (context, heads, splits) in `new`.
            unsafe { gpu.launch_ex(&gpu.f.attention, cfg, &[arg(&l.attn)], self.start(false)) }?;
            mark("attention")?;
            self.gemv(&l.o, false)?;
            mark("gemv o")?;
            self.gemv(&l.gu, false)?;
            mark("gemv gate/up")?;
            self.gemv(&l.down, false)?;
            mark("gemv down")?;
        }
        if with_head {
            self.enqueue_head(false, mark)?;
        } else {
            // SAFETY: increments state[1].
            unsafe {
                gpu.launch_ex(
                    &gpu.f.advance,
                    LaunchConfig::for_num_elems(1),
                    &[arg(&state)],
                    self.start(false),
                )
            }?;
        }
        Ok(())
    }

    /// Enqueues the output layer (RMSNorm of `x`) and the sampler, which writes the next token
    /// and advances the position.
    fn enqueue_head(&self, first: bool, mark: &mut Mark<'_>) -> Result<(), CudaError> {
        let gpu = &self.gpu;
        self.gemv(&self.head_phase(), first)?;
        mark("gemv output")?;
        let state = gpu.ptr(&self.state);
        let logits = gpu.ptr(&self.logits);
        let sp = gpu.ptr(&self.sample);
        let n = self.cfg.vocab_size as i32;
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: reads `vocab` logits and one Sample struct, writes state[0..4].
        unsafe {
            gpu.launch_ex(
                &gpu.f.sample,
                cfg,
                &[arg(&logits), arg(&n), arg(&state), arg(&sp)],
                self.start(false),
            )
        }?;
        mark("sample")
    }

    /// Runs one decode step kernel by kernel, waiting for each, and returns the seconds spent
    /// in each kind of kernel (host round trips included: a diagnostic, not a benchmark), plus
    /// the wall time of one replay of the whole graph and (where the device runs it) of one
    /// persistent-kernel step for comparison, and the persistent kernel's phases. Advances the
    /// position by 4.
    pub fn profile(&mut self) -> Result<Vec<(&'static str, f64)>, CudaError> {
        self.check_room(4)?;
        let stream = self.gpu.stream.clone();
        let mut times = time_marks(&stream, |mark| self.enqueue_marked(true, mark))?;
        self.pos += 1;
        let keep = self.use_persist;
        for (name, persist) in [
            ("whole graph replay", false),
            ("persistent kernel step", true),
        ] {
            self.use_persist = persist;
            if persist && self.persist.is_err() {
                continue;
            }
            let t = std::time::Instant::now();
            self.step()?;
            self.sampled()?;
            times.push((name, t.elapsed().as_secs_f64()));
        }
        self.use_persist = keep;
        times.extend(self.profile_persistent()?);
        Ok(times)
    }

    fn write_token(&mut self, token: u32) -> Result<(), CudaError> {
        if token as usize >= self.cfg.vocab_size {
            return Err(CudaError::Unsupported(format!(
                "token {token} is outside the vocabulary ({})",
                self.cfg.vocab_size
            )));
        }
        let mut dst = self.state.slice_mut(0..1);
        self.gpu.stream.memcpy_htod(&[token as i32], &mut dst)?;
        Ok(())
    }

    fn check_room(&self, n: usize) -> Result<(), CudaError> {
        if self.pos + n > self.context {
            return Err(CudaError::Unsupported(format!(
                "{} more positions do not fit in the context ({} of {} used)",
                n, self.pos, self.context
            )));
        }
        Ok(())
    }

    /// Runs `tokens` from the current position; the last one's logits are computed and the next
    /// token sampled on the device ([`GpuEngine::sampled`]). Batched (see the module comment)
    /// unless the engine has no batch buffers or there is one token.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<(), CudaError> {
        self.check_room(tokens.len())?;
        self.check_tokens(tokens)?;
        if self.batch.limit == 0 || tokens.len() < 2 {
            return self.prefill_sequential(tokens);
        }
        let n = tokens.len().div_ceil(self.batch.limit);
        for (i, chunk) in tokens.chunks(self.batch.limit).enumerate() {
            self.run_batch(chunk, i + 1 == n, &mut |_| Ok(()))?;
        }
        Ok(())
    }

    /// Prefills `tokens` (at most one batch) from position 0 kernel by kernel, waiting for
    /// each, and returns the seconds spent in each kind of kernel (a diagnostic, like
    /// [`GpuEngine::profile`]).
    pub fn profile_prefill(
        &mut self,
        tokens: &[u32],
    ) -> Result<Vec<(&'static str, f64)>, CudaError> {
        self.reset()?;
        self.check_room(tokens.len())?;
        self.check_tokens(tokens)?;
        if tokens.len() > self.batch.limit {
            return Err(CudaError::Unsupported(format!(
                "{} tokens do not fit one prefill batch ({})",
                tokens.len(),
                self.batch.limit
            )));
        }
        let stream = self.gpu.stream.clone();
        time_marks(&stream, |mark| self.run_batch(tokens, true, mark))
    }

    /// [`GpuEngine::prefill`] one token at a time through the decode graphs (the reference the
    /// batched prefill is tested against).
    pub fn prefill_sequential(&mut self, tokens: &[u32]) -> Result<(), CudaError> {
        self.check_room(tokens.len())?;
        self.check_tokens(tokens)?;
        for (i, &t) in tokens.iter().enumerate() {
            self.write_token(t)?;
            let last = i + 1 == tokens.len();
            self.launch_step(last)?;
            self.pos += 1;
        }
        Ok(())
    }

    /// Most tokens one prefill batch takes (0: prefill runs token by token).
    pub fn prefill_batch(&self) -> usize {
        self.batch.limit
    }

    /// Limits prefill batches to `n` tokens (at most the buffers' capacity; 0: token by token).
    pub fn set_prefill_batch(&mut self, n: usize) {
        self.batch.limit = n.min(self.batch.cap);
    }

    /// Whether prefill attention stages each split's keys and values in shared memory for
    /// several queries (the default, where they fit) or runs one block per query (the two give
    /// the same results; tested).
    pub fn set_attention_tiles(&mut self, on: bool) {
        self.batch.tiles = on;
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), CudaError> {
        match tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            Some(t) => Err(CudaError::Unsupported(format!(
                "token {t} is outside the vocabulary ({})",
                self.cfg.vocab_size
            ))),
            None => Ok(()),
        }
    }

    fn write_pos(&mut self, pos: usize) -> Result<(), CudaError> {
        let mut dst = self.state.slice_mut(1..2);
        self.gpu.stream.memcpy_htod(&[pos as i32], &mut dst)?;
        Ok(())
    }

    /// `prep`: every token's input to the next gemm, in the batch activation buffers.
    fn prep_batch(
        &self,
        prep: PrepArg,
        x_stride: usize,
        attn_stride: usize,
        t: usize,
    ) -> Result<ActsArg, CudaError> {
        let gpu = &self.gpu;
        let b = &self.batch;
        let out = PrepOutArg {
            xs: gpu.ptr(&b.xs),
            q: gpu.ptr(&b.aq),
            d: gpu.ptr(&b.ad),
            s: gpu.ptr(&b.asum),
            x_stride: x_stride as i32,
            attn_stride: attn_stride as i32,
        };
        let cfg = LaunchConfig {
            grid_dim: (t as u32, 1, 1),
            block_dim: (GEMV_THREADS, 1, 1),
            shared_mem_bytes: gemv_smem(prep.n as usize),
        };
        gpu.launch(&gpu.f.prep, cfg, &prep, &out)?;
        Ok(ActsArg {
            xs: out.xs,
            q: out.q,
            d: out.d,
            s: out.s,
            n: prep.n,
            ntok: t as i32,
        })
    }

    /// The prefill products of `jobs` (at most MAX_JOBS): T2 matrices by `gemm_t2`, the others by
    /// `gemm`, so a list that mixes them takes two launches.
    fn gemm(&self, jobs: &[(MatArg, u64, u64, i32)], acts: ActsArg) -> Result<(), CudaError> {
        let tiles = (acts.ntok as usize).div_ceil(GEMM_TOKENS);
        let cfg = |blocks| LaunchConfig {
            grid_dim: (blocks, tiles as u32, 1),
            block_dim: (GEMV_THREADS, 1, 1),
            shared_mem_bytes: gemm_smem(acts.n as usize) as u32,
        };
        for t2 in [false, true] {
            let mut part = [(MatArg::default(), 0, 0, 0); 3];
            let mut n = 0;
            for j in jobs.iter().filter(|j| (j.0.fmt == Format::T2 as i32) == t2) {
                part[n] = *j;
                n += 1;
            }
            if n == 0 {
                continue;
            }
            let mut ja = jobs_arg(&part[..n]);
            let blocks = plan_gemm(&self.gpu, &mut ja, tiles);
            let f = if t2 {
                &self.gpu.f.gemm_t2
            } else {
                &self.gpu.f.gemm
            };
            self.gpu.launch(f, cfg(blocks), &ja, &acts)?;
        }
        Ok(())
    }

    /// Prefills `tokens` (at most the batch capacity) together; after the `last` batch, the
    /// output layer and the sampler run on the last token.
    fn run_batch(
        &mut self,
        tokens: &[u32],
        last: bool,
        mark: &mut Mark<'_>,
    ) -> Result<(), CudaError> {
        let t = tokens.len();
        debug_assert!(t <= self.batch.cap);
        self.batch.host_tok.clear();
        self.batch.host_tok.extend(tokens.iter().map(|&x| x as i32));
        {
            let mut dst = self.batch.tok.slice_mut(0..t);
            self.gpu
                .stream
                .memcpy_htod(&self.batch.host_tok[..], &mut dst)?;
        }
        self.write_pos(self.pos)?;
        let gpu = &self.gpu;
        let c = &self.cfg;
        let b = &self.batch;
        let (x, q, k, v, g, u) = (
            gpu.ptr(&b.x),
            gpu.ptr(&b.q),
            gpu.ptr(&b.k),
            gpu.ptr(&b.v),
            gpu.ptr(&b.g),
            gpu.ptr(&b.u),
        );
        let state = gpu.ptr(&self.state);
        {
            let tok = gpu.ptr(&b.tok);
            let mut l = gpu.stream.launch_builder(&gpu.f.embed);
            l.arg(&self.embed).arg(&tok).arg(&x);
            let cfg = LaunchConfig {
                grid_dim: (c.dim.div_ceil(256) as u32, t as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: `embed` reads t token ids (checked < vocab) and writes t rows of `dim`
            // floats of the batch's x (capacity `cap` >= t rows).
            unsafe { l.launch(cfg) }?;
        }
        mark("embed")?;
        // Splits that hold any of the batch's positions: the attention grid and the combination
        // in `prep` use only these (the others would be empty and change nothing).
        let nsplit = (self.pos + t).div_ceil(self.chunk);
        let kv_dim = c.kv_dim();
        let norm = |w: u64| PrepArg {
            kind: PREP_RMSNORM,
            n: c.dim as i32,
            x,
            w,
            eps: c.rms_eps,
            ..Default::default()
        };
        for (i, l) in self.layers.iter().enumerate() {
            let a = self.prep_batch(norm(l.attn_norm), c.dim, 0, t)?;
            mark("prep")?;
            self.gemm(
                &[
                    (l.wq, q, l.bq, OUT_STORE),
                    (l.wk, k, l.bk, OUT_STORE),
                    (l.wv, v, l.bv, OUT_STORE),
                ],
                a,
            )?;
            mark("gemm qkv")?;
            let arg = AttnArg {
                q,
                k,
                v,
                om: gpu.ptr(&b.am),
                ol: gpu.ptr(&b.al),
                oo: gpu.ptr(&b.ao),
                nsplit: nsplit as i32,
                q_stride: c.q_dim() as i32,
                kv_stride: kv_dim as i32,
                stored: 1,
                ntok: t as i32,
                ..self.layer_attn(i)
            };
            let mut lb = gpu.stream.launch_builder(&gpu.f.kv_store);
            lb.arg(&arg);
            let cfg = LaunchConfig {
                grid_dim: (c.n_kv_heads as u32, t as u32, 1),
                block_dim: (self.chunk as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: writes positions pos..pos + t (checked to fit the context) of this layer's
            // cache from t rows of the batch's k and v.
            unsafe { lb.launch(cfg) }?;
            mark("kv store")?;
            // Each split's keys and values staged once for ATTN_QUERIES queries when the tile
            // fits in shared memory, else one block per (head, split, token).
            let tile = attention_tile_smem(self.chunk, c.head_dim, self.kv.bytes());
            let tiled = b.tiles && tile <= gpu.smem_optin;
            let (f, z, threads, smem) = if tiled {
                let warps = ATTN_WARPS as u32;
                (
                    &gpu.f.attention_tile,
                    t.div_ceil(ATTN_WARPS),
                    32 * warps,
                    tile,
                )
            } else {
                (&gpu.f.attention, t, ATTN_THREADS, self.rows_smem)
            };
            let arg = AttnArg {
                tile: (!tiled && self.rows_smem > 0) as i32,
                ..arg
            };
            let mut lb = gpu.stream.launch_builder(f);
            lb.arg(&arg);
            let cfg = LaunchConfig {
                grid_dim: (c.n_heads as u32, nsplit as u32, z as u32),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            // SAFETY: reads positions up to pos + t - 1 of the cache and t rows of q; writes
            // t * n_heads * nsplit partial results (the buffers hold `cap` times the context's
            // splits); the tile kernel's shared memory holds `chunk` positions of K and V.
            unsafe { lb.launch(cfg) }?;
            mark("attention")?;
            let attn_stride = c.n_heads * nsplit;
            let a = self.prep_batch(
                PrepArg {
                    kind: PREP_ATTN,
                    n: c.q_dim() as i32,
                    am: gpu.ptr(&b.am),
                    al: gpu.ptr(&b.al),
                    ao: gpu.ptr(&b.ao),
                    nsplit: nsplit as i32,
                    hd: c.head_dim as i32,
                    pos: state + 4,
                    chunk: self.chunk as i32,
                    w2: l.attn_sub_norm,
                    eps: c.rms_eps,
                    ..Default::default()
                },
                0,
                attn_stride,
                t,
            )?;
            mark("prep")?;
            self.gemm(&[(l.wo, x, 0, OUT_ADD)], a)?;
            mark("gemm o")?;
            let a = self.prep_batch(norm(l.ffn_norm), c.dim, 0, t)?;
            mark("prep")?;
            self.gemm(&[(l.gate, g, 0, OUT_STORE), (l.up, u, 0, OUT_STORE)], a)?;
            mark("gemm gate/up")?;
            let a = self.prep_batch(
                PrepArg {
                    kind: gate_kind(c),
                    n: c.ffn_dim as i32,
                    x: g,
                    x2: u,
                    w2: l.ffn_sub_norm,
                    eps: c.rms_eps,
                    ..Default::default()
                },
                c.ffn_dim,
                0,
                t,
            )?;
            mark("prep")?;
            self.gemm(&[(l.down, x, 0, OUT_ADD)], a)?;
            mark("gemm down")?;
        }
        if last {
            let src = self.batch.x.slice((t - 1) * c.dim..t * c.dim);
            self.gpu.stream.memcpy_dtod(&src, &mut self.x)?;
            self.write_pos(self.pos + t - 1)?;
            self.head_graph
                .as_ref()
                .expect("captured in new")
                .launch()?;
            mark("output and sample")?;
        }
        self.pos += t;
        Ok(())
    }

    /// Feeds the token the device sampled last and computes the next one.
    pub fn step(&mut self) -> Result<(), CudaError> {
        self.check_room(1)?;
        self.launch_step(true)?;
        self.pos += 1;
        Ok(())
    }

    /// Feeds `token` (chosen on the host) and computes the next logits and sample.
    pub fn feed(&mut self, token: u32) -> Result<(), CudaError> {
        self.check_room(1)?;
        self.write_token(token)?;
        self.launch_step(true)?;
        self.pos += 1;
        Ok(())
    }

    /// The token the device sampled after the last step (waits for the step to finish).
    pub fn sampled(&mut self) -> Result<u32, CudaError> {
        let mut t = [0i32; 1];
        self.gpu
            .stream
            .memcpy_dtoh(&self.state.slice(0..1), &mut t)?;
        self.gpu.stream.synchronize()?;
        Ok(t[0] as u32)
    }

    /// Copies the last step's logits to `out` (`vocab_size` values).
    pub fn logits(&mut self, out: &mut [f32]) -> Result<(), CudaError> {
        self.gpu.stream.memcpy_dtoh(&self.logits, out)?;
        self.gpu.stream.synchronize()?;
        Ok(())
    }

    /// Sets the device sampler from `p`. Returns `false` when `p` needs the host sampler
    /// (a repetition penalty, or top-k off or above [`DEVICE_TOP_K`] with a temperature):
    /// the caller then reads [`GpuEngine::logits`] and uses [`GpuEngine::feed`].
    pub fn set_sampling(&mut self, p: &SamplerParams, seed: u64) -> Result<bool, CudaError> {
        let greedy = p.temperature <= 0.0;
        let device =
            p.repeat_penalty == 1.0 && (greedy || (p.top_k >= 1 && p.top_k <= DEVICE_TOP_K));
        let arg = SampleArg {
            temperature: if greedy { 0.0 } else { p.temperature },
            top_k: p.top_k.min(DEVICE_TOP_K) as i32,
            top_p: p.top_p,
            min_p: p.min_p,
            seed,
        };
        self.gpu.stream.memcpy_htod(&[arg], &mut self.sample)?;
        self.host_sampling = !device;
        Ok(device)
    }

    /// Forgets every position.
    pub fn reset(&mut self) -> Result<(), CudaError> {
        self.gpu.stream.memcpy_htod(&[0i32; 4], &mut self.state)?;
        self.pos = 0;
        Ok(())
    }

    /// Positions in the KV cache.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Capacity of the KV cache in positions.
    pub fn context(&self) -> usize {
        self.context
    }

    /// One line: device, KV cache type, weights and cache sizes.
    pub fn describe(&self) -> String {
        let kv = match self.kv {
            KvCache::F16 => "f16",
            KvCache::Int8 => "int8",
        };
        let prefill = if self.batch.limit > 0 {
            format!("prefill in batches of up to {} tokens", self.batch.limit)
        } else if self.batch.cap > 0 {
            "prefill token by token".to_string()
        } else {
            format!("prefill token by token ({})", self.batch.why)
        };
        let step = match (&self.persist, self.use_persist) {
            (Ok(p), true) => format!(
                "decode step in one persistent kernel ({} blocks of {})",
                p.cfg.grid_dim.0, p.cfg.block_dim.0
            ),
            (Err(why), _) if !why.is_empty() => {
                format!("decode step in one CUDA graph (no persistent kernel: {why})")
            }
            _ if self.overlap => {
                "decode step in one CUDA graph (kernels overlapped: programmatic dependent launches)"
                    .to_string()
            }
            _ => "decode step in one CUDA graph".to_string(),
        };
        format!(
            "cuda: {}, {:.1} MiB of weights, {kv} KV cache of {} positions, {step}, {prefill}",
            self.gpu.describe(),
            self.weight_bytes as f64 / (1 << 20) as f64,
            self.context
        )
    }
}
