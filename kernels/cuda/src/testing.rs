//! Single kernels run on their own, for the tests that hold them to the CPU specification
//! (`tests/kernels.rs`) and for the GPU check script's benchmarks.

use crate::device::{
    assign_blocks, attention_rows_smem, gemv_smem, gemv_smem_for, jobs_arg, plan_jobs, AttnArg,
    DevMat, Gpu, JobsArg, PrepArg, PrepOutArg, SampleArg, Start, ATTN_STATIC_SMEM, ATTN_THREADS,
    GEMV_THREADS, PREP_INT8,
};
use crate::repack::repack;
use crate::{CudaError, KvCache};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use edgellm_core::model::Matrix;
use edgellm_core::sampler::SamplerParams;

/// How the gemv kernel prepares its input in [`gemv`].
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// `x` as is.
    Plain(&'a [f32]),
    /// `rmsnorm(x) * w`.
    RmsNorm(&'a [f32], &'a [f32], f32),
    /// `silu(gate) * up`.
    SwiGlu(&'a [f32], &'a [f32]),
    /// `x` quantized beforehand by `quantize_acts`, read in place by `gemv_prepared`.
    Prepared(&'a [f32]),
}

/// Runs the gemv of `w` with `prep`, `rows_per_block` rows per block (None: as the engine plans).
fn run_gemv(
    gpu: &Gpu,
    w: &Matrix<'_>,
    prep: PrepArg,
    rows: usize,
    rows_per_block: Option<usize>,
) -> Result<Vec<f32>, CudaError> {
    let p = repack(w).map_err(CudaError::Unsupported)?;
    let m = DevMat::upload(gpu, &p)?;
    let out: CudaSlice<f32> = gpu.zeros(rows)?;
    let mut jobs = jobs_arg(&[(m.arg, gpu.ptr(&out), 0, 0)]);
    let blocks = match rows_per_block {
        Some(n) => assign_blocks(&mut jobs, n),
        None => plan_jobs(gpu, &mut jobs, &prep),
    };
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (GEMV_THREADS, 1, 1),
        shared_mem_bytes: gemv_smem_for(&prep),
    };
    gpu.launch(gpu.gemv_fn(&jobs, &prep), cfg, &jobs, &prep)?;
    let r = gpu.stream.clone_dtoh(&out)?;
    gpu.stream.synchronize()?;
    Ok(r)
}

/// `W · input` by the fused gemv kernel (input prepared and quantized in shared memory).
pub fn gemv(gpu: &Gpu, w: &Matrix<'_>, input: Input<'_>) -> Result<Vec<f32>, CudaError> {
    let mut keep = Vec::new();
    let mut up = |v: &[f32]| -> Result<u64, CudaError> {
        let s = gpu.upload(v)?;
        let p = gpu.ptr(&s);
        keep.push(s);
        Ok(p)
    };
    let prep = match input {
        Input::Plain(x) => PrepArg {
            kind: 0,
            n: x.len() as i32,
            x: up(x)?,
            ..Default::default()
        },
        Input::RmsNorm(x, w, eps) => PrepArg {
            kind: 1,
            n: x.len() as i32,
            x: up(x)?,
            w: up(w)?,
            eps,
            ..Default::default()
        },
        Input::SwiGlu(g, u) => PrepArg {
            kind: 2,
            n: g.len() as i32,
            x: up(g)?,
            x2: up(u)?,
            ..Default::default()
        },
        Input::Prepared(x) => {
            let (xd, q, d, s) = quantize_on_device(gpu, x)?;
            let prep = PrepArg {
                kind: PREP_INT8,
                n: x.len() as i32,
                x: gpu.ptr(&xd),
                qq: gpu.ptr(&q),
                qd: gpu.ptr(&d),
                qsum: gpu.ptr(&s),
                ..Default::default()
            };
            return run_gemv(gpu, w, prep, w.rows, None);
        }
    };
    run_gemv(gpu, w, prep, w.rows, None)
}

/// `x` on the device and its quantization by `quantize_acts`: values, scales, sums.
#[allow(clippy::type_complexity)]
fn quantize_on_device(
    gpu: &Gpu,
    x: &[f32],
) -> Result<
    (
        CudaSlice<f32>,
        CudaSlice<i8>,
        CudaSlice<f32>,
        CudaSlice<i32>,
    ),
    CudaError,
> {
    let n = x.len();
    let xd = gpu.upload(x)?;
    let q: CudaSlice<i8> = gpu.zeros(n)?;
    let d: CudaSlice<f32> = gpu.zeros(n / 16)?;
    let s: CudaSlice<i32> = gpu.zeros(n / 16)?;
    let mut l = gpu.stream.launch_builder(&gpu.f.quantize_acts);
    let ni = n as i32;
    l.arg(&xd).arg(&ni).arg(&q).arg(&d).arg(&s);
    // SAFETY: the buffers hold n, n/16, n/16 values.
    unsafe { l.launch(LaunchConfig::for_num_elems((n / 16) as u32)) }?;
    Ok((xd, q, d, s))
}

/// `W · x` by the gemv kernel with `rows_per_block` rows per block (a warp takes
/// `rows_per_block / 8` of them), for comparing how a warp walks its rows.
pub fn gemv_rows_per_block(
    gpu: &Gpu,
    w: &Matrix<'_>,
    x: &[f32],
    rows_per_block: usize,
) -> Result<Vec<f32>, CudaError> {
    let xs = gpu.upload(x)?;
    let prep = PrepArg {
        kind: 0,
        n: x.len() as i32,
        x: gpu.ptr(&xs),
        ..Default::default()
    };
    run_gemv(gpu, w, prep, w.rows, Some(rows_per_block))
}

/// Quantized activations: values, one scale and one integer sum per 16 values.
pub type QuantizedActs = (Vec<i8>, Vec<f32>, Vec<i32>);

/// The activation quantizer: `(qs, d, sums)`.
pub fn quantize(gpu: &Gpu, x: &[f32]) -> Result<QuantizedActs, CudaError> {
    let (_, q, d, s) = quantize_on_device(gpu, x)?;
    read_acts(gpu, &q, &d, &s)
}

/// Quantized activations copied back from the device.
fn read_acts(
    gpu: &Gpu,
    q: &CudaSlice<i8>,
    d: &CudaSlice<f32>,
    s: &CudaSlice<i32>,
) -> Result<QuantizedActs, CudaError> {
    let r = (
        gpu.stream.clone_dtoh(q)?,
        gpu.stream.clone_dtoh(d)?,
        gpu.stream.clone_dtoh(s)?,
    );
    gpu.stream.synchronize()?;
    Ok(r)
}

/// The same quantizer as every gemv block and the prefill's `prep` run it, on the input in
/// shared memory (`prep` with a plain copy, one block): `(qs, d, sums)`.
pub fn quantize_in_block(gpu: &Gpu, x: &[f32]) -> Result<QuantizedActs, CudaError> {
    let n = x.len();
    let xd = gpu.upload(x)?;
    let xs: CudaSlice<f32> = gpu.zeros(n)?;
    let q: CudaSlice<i8> = gpu.zeros(n)?;
    let d: CudaSlice<f32> = gpu.zeros(n / 16)?;
    let s: CudaSlice<i32> = gpu.zeros(n / 16)?;
    let prep = PrepArg {
        n: n as i32,
        x: gpu.ptr(&xd),
        ..Default::default()
    };
    let out = PrepOutArg {
        xs: gpu.ptr(&xs),
        q: gpu.ptr(&q),
        d: gpu.ptr(&d),
        s: gpu.ptr(&s),
        x_stride: 0,
        attn_stride: 0,
    };
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (GEMV_THREADS, 1, 1),
        shared_mem_bytes: gemv_smem(n),
    };
    gpu.launch(&gpu.f.prep, cfg, &prep, &out)?;
    read_acts(gpu, &q, &d, &s)
}

/// Integer partial sums of a T2 product: `isum[r][g]` for every row and group of 16.
pub fn t2_isums(gpu: &Gpu, w: &Matrix<'_>, qs: &[i8], sums: &[i32]) -> Result<Vec<i32>, CudaError> {
    let p = repack(w).map_err(CudaError::Unsupported)?;
    let m = DevMat::upload(gpu, &p)?;
    let q = gpu.upload(qs)?;
    let s = gpu.upload(sums)?;
    let out: CudaSlice<i32> = gpu.zeros(w.rows * (w.cols / 16))?;
    let mut l = gpu.stream.launch_builder(&gpu.f.t2_isums);
    l.arg(&m.arg).arg(&q).arg(&s).arg(&out);
    // SAFETY: the matrix, acts and output sizes match (rows x cols/16 sums).
    unsafe { l.launch(LaunchConfig::for_num_elems(w.rows as u32)) }?;
    let r = gpu.stream.clone_dtoh(&out)?;
    gpu.stream.synchronize()?;
    Ok(r)
}

/// Row `token` of `w`, dequantized by the embedding kernel.
pub fn embed(gpu: &Gpu, w: &Matrix<'_>, token: u32) -> Result<Vec<f32>, CudaError> {
    let p = repack(w).map_err(CudaError::Unsupported)?;
    let m = DevMat::upload(gpu, &p)?;
    let t = gpu.upload(&[token as i32])?;
    let x: CudaSlice<f32> = gpu.zeros(w.cols)?;
    let mut l = gpu.stream.launch_builder(&gpu.f.embed);
    l.arg(&m.arg).arg(&t).arg(&x);
    // SAFETY: token < rows (checked by the caller's data), x holds cols floats.
    unsafe { l.launch(LaunchConfig::for_num_elems(w.cols as u32)) }?;
    let r = gpu.stream.clone_dtoh(&x)?;
    gpu.stream.synchronize()?;
    Ok(r)
}

/// Shapes of an attention test.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub context: usize,
    pub theta: f32,
    pub halves: bool,
}

/// The buffers and arguments of one attention kernel over a `ctx`-position cache of one layer,
/// and the identity matrix whose gemv combines the kernel's splits (the gemv kernel's ATTN
/// input, as the O projection does in a decode step).
struct AttnRig {
    arg: AttnArg,
    cfg: LaunchConfig,
    prep: PrepArg,
    identity: Vec<u8>,
    pos: CudaSlice<i32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    _bufs: (CudaSlice<u8>, CudaSlice<u8>, [CudaSlice<f32>; 5]),
}

impl AttnRig {
    /// Zeroed buffers; the cache scales start at `scale`.
    fn new(
        gpu: &Gpu,
        s: AttnShape,
        kv: KvCache,
        ctx: usize,
        scale: f32,
        tiled: bool,
    ) -> Result<Self, CudaError> {
        let hd = s.head_dim;
        let chunk = 128.max(hd.next_power_of_two());
        let nsplit = ctx.div_ceil(chunk);
        let kv_dim = s.n_kv * hd;
        let q_dim = s.n_heads * hd;
        let kc: CudaSlice<u8> = gpu.zeros(ctx * kv_dim * kv.bytes())?;
        let vc: CudaSlice<u8> = gpu.zeros(ctx * kv_dim * kv.bytes())?;
        let ks = gpu.upload(&vec![scale; ctx * s.n_kv])?;
        let vs = gpu.upload(&vec![scale; ctx * s.n_kv])?;
        let am: CudaSlice<f32> = gpu.zeros(s.n_heads * nsplit)?;
        let al: CudaSlice<f32> = gpu.zeros(s.n_heads * nsplit)?;
        let ao: CudaSlice<f32> = gpu.zeros(s.n_heads * nsplit * hd)?;
        let (pos, q, k, v) = (
            gpu.zeros(1)?,
            gpu.zeros(q_dim)?,
            gpu.zeros(kv_dim)?,
            gpu.zeros(kv_dim)?,
        );
        let arg = AttnArg {
            q: gpu.ptr(&q),
            k: gpu.ptr(&k),
            v: gpu.ptr(&v),
            kc: gpu.ptr(&kc),
            vc: gpu.ptr(&vc),
            ks: gpu.ptr(&ks),
            vs: gpu.ptr(&vs),
            pos: gpu.ptr(&pos),
            om: gpu.ptr(&am),
            ol: gpu.ptr(&al),
            oo: gpu.ptr(&ao),
            n_heads: s.n_heads as i32,
            n_kv: s.n_kv as i32,
            hd: hd as i32,
            chunk: chunk as i32,
            nsplit: nsplit as i32,
            int8_kv: (kv == KvCache::Int8) as i32,
            rope_halves: s.halves as i32,
            theta: s.theta,
            ..Default::default()
        };
        let prep = PrepArg {
            kind: 3,
            n: q_dim as i32,
            am: arg.om,
            al: arg.ol,
            ao: arg.oo,
            nsplit: nsplit as i32,
            hd: hd as i32,
            ..Default::default()
        };
        // Each split's rows staged in shared memory where they fit, as the engine does.
        let rows = attention_rows_smem(chunk, hd, kv.bytes());
        let tiled = tiled && rows + ATTN_STATIC_SMEM <= gpu.smem_optin;
        let mut arg = arg;
        arg.tile = tiled as i32;
        let cfg = LaunchConfig {
            grid_dim: (s.n_heads as u32, nsplit as u32, 1),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: if tiled { rows as u32 } else { 0 },
        };
        let identity = (0..q_dim * q_dim)
            .flat_map(|i| if i / q_dim == i % q_dim { 1.0f32 } else { 0.0 }.to_le_bytes())
            .collect();
        Ok(AttnRig {
            arg,
            cfg,
            prep,
            identity,
            pos,
            q,
            k,
            v,
            _bufs: (kc, vc, [ks, vs, am, al, ao]),
        })
    }

    /// Sets the position and this step's query, key and value.
    fn set(
        &mut self,
        gpu: &Gpu,
        pos: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<(), CudaError> {
        gpu.stream.memcpy_htod(&[pos as i32], &mut self.pos)?;
        gpu.stream.memcpy_htod(q, &mut self.q)?;
        gpu.stream.memcpy_htod(k, &mut self.k)?;
        gpu.stream.memcpy_htod(v, &mut self.v)?;
        Ok(())
    }

    fn launch(&self, gpu: &Gpu) -> Result<(), CudaError> {
        let mut l = gpu.stream.launch_builder(&gpu.f.attention);
        l.arg(&self.arg);
        // SAFETY: every buffer of `arg` was allocated in `new` for these shapes.
        unsafe { l.launch(self.cfg) }?;
        Ok(())
    }

    /// The combined head outputs of the last launch.
    fn combine(&self, gpu: &Gpu) -> Result<Vec<f32>, CudaError> {
        let q_dim = self.prep.n as usize;
        let id = Matrix {
            name: "identity",
            ty: edgellm_kernels::GgmlType::F32,
            rows: q_dim,
            cols: q_dim,
            data: &self.identity,
            row_scale: None,
        };
        run_gemv(gpu, &id, self.prep, q_dim, None)
    }
}

/// Decode attention, one position at a time from 0: step `t` takes `q[t]` ([n_heads*hd]),
/// `k[t]`, `v[t]` ([n_kv*hd], before RoPE) and returns the combined head outputs
/// ([n_heads*hd]) of every step. The cache is filled by the kernel itself. `tiled`: each split's
/// rows are staged in shared memory (where they fit), else read from the cache in place.
pub fn attention_steps(
    gpu: &Gpu,
    s: AttnShape,
    kv: KvCache,
    q: &[Vec<f32>],
    k: &[Vec<f32>],
    v: &[Vec<f32>],
    tiled: bool,
) -> Result<Vec<Vec<f32>>, CudaError> {
    let mut rig = AttnRig::new(gpu, s, kv, s.context, 0.0, tiled)?;
    let mut outs = Vec::new();
    for t in 0..q.len() {
        rig.set(gpu, t, &q[t], &k[t], &v[t])?;
        rig.launch(gpu)?;
        outs.push(rig.combine(gpu)?);
    }
    Ok(outs)
}

/// The device sampler on `logits` with `params`; returns the token.
pub fn sample(
    gpu: &Gpu,
    logits: &[f32],
    params: &SamplerParams,
    seed: u64,
    counter: u64,
) -> Result<u32, CudaError> {
    let l = gpu.upload(logits)?;
    let state = gpu.upload(&[0i32, 0, counter as u32 as i32, (counter >> 32) as i32])?;
    let arg = SampleArg {
        temperature: params.temperature,
        top_k: params.top_k.min(64) as i32,
        top_p: params.top_p,
        min_p: params.min_p,
        seed,
    };
    let sp = gpu.upload(&[arg])?;
    let n = logits.len() as i32;
    let mut b = gpu.stream.launch_builder(&gpu.f.sample);
    b.arg(&l).arg(&n).arg(&state).arg(&sp);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: n logits, a 4-int state and one Sample struct, as the kernel reads.
    unsafe { b.launch(cfg) }?;
    let r = gpu.stream.clone_dtoh(&state)?;
    gpu.stream.synchronize()?;
    Ok(r[0] as u32)
}

/// Device-to-device copy bandwidth in bytes per second, counting bytes read plus bytes written
/// (the STREAM "copy" convention), over `iters` copies of `bytes`.
pub fn copy_bandwidth(gpu: &Gpu, bytes: usize, iters: usize) -> Result<f64, CudaError> {
    let src: CudaSlice<u8> = gpu.zeros(bytes)?;
    let mut dst: CudaSlice<u8> = gpu.zeros(bytes)?;
    gpu.stream.memcpy_dtod(&src, &mut dst)?;
    gpu.stream.synchronize()?;
    let t = std::time::Instant::now();
    for _ in 0..iters {
        gpu.stream.memcpy_dtod(&src, &mut dst)?;
    }
    gpu.stream.synchronize()?;
    Ok((2 * bytes * iters) as f64 / t.elapsed().as_secs_f64())
}

/// Weight bytes streamed per second by the gemv kernel on `copies` distinct copies of `w`
/// (together larger than the L2 cache, so every launch reads from memory), with the input
/// quantized once beforehand. `iters` launches go back to back in one CUDA graph (as in the
/// decode step), each started after the one before or (`overlapped`, as the decode step launches
/// them where the device can) as a programmatic dependent launch, whose blocks prefetch their
/// rows while the previous launch drains. `None` when `overlapped` is asked of a device without
/// it.
pub fn gemv_bandwidth(
    gpu: &Gpu,
    w: &Matrix<'_>,
    copies: usize,
    iters: usize,
    overlapped: bool,
) -> Result<Option<f64>, CudaError> {
    if overlapped && !gpu.overlaps_launches() {
        return Ok(None);
    }
    let p = repack(w).map_err(CudaError::Unsupported)?;
    let mats = (0..copies)
        .map(|_| DevMat::upload(gpu, &p))
        .collect::<Result<Vec<_>, _>>()?;
    let n = w.cols;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0)
        .collect();
    let (xd, q, d, s) = quantize_on_device(gpu, &x)?;
    let out: CudaSlice<f32> = gpu.zeros(w.rows)?;
    let prep = PrepArg {
        kind: PREP_INT8,
        n: n as i32,
        x: gpu.ptr(&xd),
        qq: gpu.ptr(&q),
        qd: gpu.ptr(&d),
        qsum: gpu.ptr(&s),
        ..Default::default()
    };
    let launch = |m: &DevMat, start: Start| -> Result<(), CudaError> {
        let mut jobs = jobs_arg(&[(m.arg, gpu.ptr(&out), 0, 0)]);
        let blocks = plan_jobs(gpu, &mut jobs, &prep);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (GEMV_THREADS, 1, 1),
            shared_mem_bytes: gemv_smem_for(&prep),
        };
        let args: [*const std::ffi::c_void; 2] = [
            (&jobs as *const JobsArg).cast(),
            (&prep as *const PrepArg).cast(),
        ];
        // SAFETY: `jobs` and `prep` are the gemv kernels' two parameters, live through the
        // call; their pointers are the buffers above, of the lengths they name. The gemv calls
        // grid_wait before writing its output, the only buffer the launches share.
        unsafe { gpu.launch_ex(gpu.gemv_fn(&jobs, &prep), cfg, &args, start) }
    };
    let secs = time_series(gpu, iters, 3, |i| {
        launch(&mats[i % copies], series_start(overlapped, i))
    })?;
    let bytes = p.qs.len() + 4 * (p.d.len() + p.m.len() + p.rs.len());
    Ok(Some(bytes as f64 / secs))
}

/// Seconds per launch of a series of `n` launches (`launch(i)` enqueues the i-th) captured in
/// one CUDA graph, as the decode step is, so that the host's launch rate does not limit them:
/// the graph is replayed once to warm up, then `reps` times, timed.
fn time_series(
    gpu: &Gpu,
    n: usize,
    reps: usize,
    mut launch: impl FnMut(usize) -> Result<(), CudaError>,
) -> Result<f64, CudaError> {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let s = &gpu.stream;
    s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    let mut r = Ok(());
    for i in 0..n {
        r = launch(i);
        if r.is_err() {
            break;
        }
    }
    let g = s.end_capture(CUgraphInstantiate_flags(0))?;
    r?;
    let g = g.ok_or_else(|| CudaError::Driver("stream capture produced no graph".into()))?;
    g.upload()?;
    g.launch()?;
    s.synchronize()?;
    let t = std::time::Instant::now();
    for _ in 0..reps {
        g.launch()?;
    }
    s.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / (reps * n) as f64)
}

/// How launch `i` of a series starts: after the one before it, or (`overlapped`) every launch
/// but the first as a programmatic dependent launch.
fn series_start(overlapped: bool, i: usize) -> Start {
    if overlapped && i > 0 {
        Start::Overlapped
    } else {
        Start::AfterPrevious
    }
}

/// Seconds per call of the decode attention kernel at position `ctx - 1` of a `ctx`-position
/// cache, averaged over `iters` back-to-back calls (the combination of its splits happens in the
/// next gemv's input preparation and is not timed here).
pub fn attention_time(
    gpu: &Gpu,
    s: AttnShape,
    kv: KvCache,
    ctx: usize,
    iters: usize,
) -> Result<f64, CudaError> {
    let mut rig = AttnRig::new(gpu, s, kv, ctx, 0.01, true)?;
    let qv: Vec<f32> = (0..s.n_heads * s.head_dim)
        .map(|i| (i % 13) as f32 / 13.0)
        .collect();
    let kv_in: Vec<f32> = (0..s.n_kv * s.head_dim)
        .map(|i| (i % 7) as f32 / 7.0)
        .collect();
    rig.set(gpu, ctx - 1, &qv, &kv_in, &kv_in)?;
    // Once with the combination, to check the pipeline runs end to end.
    rig.launch(gpu)?;
    rig.combine(gpu)?;
    let t = std::time::Instant::now();
    for _ in 0..iters {
        rig.launch(gpu)?;
    }
    gpu.stream.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

/// Seconds per kernel of a CUDA graph of `n` dependent launches of the `advance` kernel over
/// `blocks` blocks of 256 threads (one thread increments a counter; the rest only wait and
/// exit), replayed `reps` times: the cost of a kernel boundary in a decode graph, with each
/// kernel started after the one before it or (`overlapped`, where the device runs it) as a
/// programmatic dependent launch. `None` when `overlapped` is asked of a device without it.
pub fn kernel_boundary(
    gpu: &Gpu,
    n: usize,
    blocks: u32,
    overlapped: bool,
    reps: usize,
) -> Result<Option<f64>, CudaError> {
    if overlapped && !gpu.overlaps_launches() {
        return Ok(None);
    }
    let state: CudaSlice<i32> = gpu.zeros(4)?;
    let p = gpu.ptr(&state);
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let secs = time_series(gpu, n, reps, |i| {
        // SAFETY: `advance` increments state[1] of the 4-int buffer.
        unsafe {
            gpu.launch_ex(
                &gpu.f.advance,
                cfg,
                &[(&p as *const u64).cast()],
                series_start(overlapped, i),
            )
        }
    })?;
    let s = &gpu.stream;
    let count = s.clone_dtoh(&state)?;
    s.synchronize()?;
    if count[1] as usize != n * (reps + 1) {
        return Err(CudaError::Driver(format!(
            "kernel_boundary: the counter reads {} after {} kernels",
            count[1],
            n * (reps + 1)
        )));
    }
    Ok(Some(secs))
}

/// Bytes per second that `stream_read` (a kernel that only reads) takes from `copies` distinct
/// buffers of `bytes` (together larger than the L2 cache), one launch per buffer, `iters`
/// launches one after another in one CUDA graph, as `gemv_bandwidth` times the gemv: what one
/// launch of a plain streaming kernel reaches on a buffer of that size.
pub fn read_bandwidth(
    gpu: &Gpu,
    bytes: usize,
    copies: usize,
    iters: usize,
) -> Result<f64, CudaError> {
    let words = bytes / 16;
    let data: Vec<u8> = (0..words * 16).map(|i| (i * 2654435761) as u8).collect();
    let bufs = (0..copies)
        .map(|_| gpu.upload(&data))
        .collect::<Result<Vec<CudaSlice<u8>>, _>>()?;
    let blocks = 8 * gpu.sms as u32;
    let out: CudaSlice<i32> = gpu.zeros(blocks as usize)?;
    let o = gpu.ptr(&out);
    let n = words as i64;
    let ptrs: Vec<u64> = bufs.iter().map(|b| gpu.ptr(b)).collect();
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let secs = time_series(gpu, iters, 3, |i| {
        let args: [*const std::ffi::c_void; 3] = [
            (&ptrs[i % copies] as *const u64).cast(),
            (&n as *const i64).cast(),
            (&o as *const u64).cast(),
        ];
        // SAFETY: `stream_read` reads `n` 16-byte words of the buffer and xors one int per block
        // into `out`, which holds `blocks` ints.
        unsafe { gpu.launch_ex(&gpu.f.stream_read, cfg, &args, Start::AfterPrevious) }
    })?;
    Ok((words * 16) as f64 / secs)
}
