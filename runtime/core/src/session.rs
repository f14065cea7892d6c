//! A decoding session: one arena holding every buffer (activations, KV cache, logits), sized from
//! the model's configuration and the context length, and the forward pass that runs over it.
//!
//! Invariant: [`Session::new`] is the only place that allocates. [`Session::forward`] and
//! [`Session::prefill`] take every buffer from the arena, so decoding never touches the heap.
//!
//! The forward pass reads top to bottom in model order (llama2.c style), with each buffer's shape
//! noted where it is used.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::kernels::{scalar, ActsQ8, ActsQ8Mut, GgmlType, Kernels};
use crate::model::{FfnAct, Matrix, Model, RopeStyle};
use crate::parallel::{split_range, Parallel};

/// Which numeric path the forward pass takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NumericPath {
    /// Activations quantized to int8 and multiplied with the weights' blocks directly (default).
    #[default]
    Fast,
    /// Weights dequantized row by row and multiplied in f32: the reference for tests and debugging.
    Exact,
}

/// How the KV cache stores keys and values: f16 on the fast path (half the bytes attention reads
/// per token), f32 on the exact path (the reference), or int8 with one f32 scale per (position,
/// KV head) row on the fast path when asked for ([`Session::with_kv`]: a quarter of the f32
/// bytes, so the time attention adds per token grows half as fast with the context as with f16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
    Int8,
}

impl KvType {
    /// The cache type of a numeric path.
    pub const fn for_path(path: NumericPath) -> KvType {
        match path {
            NumericPath::Fast => KvType::F16,
            NumericPath::Exact => KvType::F32,
        }
    }

    /// Bytes per cached value.
    pub const fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
            KvType::Int8 => 1,
        }
    }

    /// `f32`, `f16` or `int8`.
    pub const fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Int8 => "int8",
        }
    }
}

/// Options fixed when a session is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    /// Maximum number of positions (prompt plus generated tokens).
    pub context: usize,
    pub path: NumericPath,
}

/// Why a session cannot be created or cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// The context is full: `context` positions are used.
    ContextFull { context: usize },
    /// A token id is not in the vocabulary.
    BadToken { token: u32, vocab_size: usize },
    /// The requested context is zero or too large to size.
    BadContext { requested: usize },
    /// An int8 KV cache for a model whose head dimension its integer attention scores do not take
    /// ([`scalar::Q16_MAX_HD`]).
    Int8HeadDim { head_dim: usize },
}

impl core::fmt::Display for SessionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SessionError::ContextFull { context } => {
                write!(f, "the context of {context} tokens is full")
            }
            SessionError::BadToken { token, vocab_size } => {
                write!(
                    f,
                    "token id {token} is outside the vocabulary of {vocab_size} tokens"
                )
            }
            SessionError::BadContext { requested } => {
                write!(
                    f,
                    "context length {requested} must be between 1 and 1048576"
                )
            }
            SessionError::Int8HeadDim { head_dim } => {
                write!(
                    f,
                    "an int8 KV cache takes head dimensions up to {}, and this model's is \
                     {head_dim}: use the f16 cache",
                    scalar::Q16_MAX_HD
                )
            }
        }
    }
}

impl core::error::Error for SessionError {}

/// Tokens a prefill step processes together: each weight row is read once per chunk instead of
/// once per token.
pub const PREFILL_CHUNK: usize = 16;

/// Activation values per quantization scale (see `edgellm_kernels::acts`).
/// Unnormalized softmax weights (the largest is 1) below this are dropped before an int8 cache's
/// row scales multiply them: a product that rounds to a subnormal costs a microcode assist per
/// value on x86 (1,728 weights of 1e-37 took 13 us instead of 0.2), while a weight of 2^-100
/// beside the block's largest, 1, is far below the rounding of any sum it enters.
const NEGLIGIBLE_WEIGHT: f32 = f32::from_bits((127 - 100) << 23); // 2^-100

const ACT_GROUP: usize = crate::kernels::QS;

/// Arena granule: every buffer starts on a 64-byte boundary (a cache line, and enough for SIMD).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Sizes (in elements) of every buffer a session needs; the arena is laid out from this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaPlan {
    dim: usize,
    q_dim: usize,
    kv_dim: usize,
    ffn_dim: usize,
    vocab: usize,
    n_heads: usize,
    head_dim: usize,
    kv: KvType,
    context: usize,
    n_layers: usize,
    max_cols: usize,
    /// Tokens per forward step (`PREFILL_CHUNK`).
    batch: usize,
}

fn lines<T>(n: usize) -> usize {
    (n * core::mem::size_of::<T>()).div_ceil(64)
}

impl ArenaPlan {
    /// The plan for `model` with `context` positions on numeric path `path` (which sets the KV
    /// cache type, [`KvType::for_path`]).
    pub fn new(c: &crate::model::Config, context: usize, path: NumericPath) -> ArenaPlan {
        ArenaPlan {
            dim: c.dim,
            q_dim: c.q_dim(),
            kv_dim: c.kv_dim(),
            ffn_dim: c.ffn_dim,
            vocab: c.vocab_size,
            n_heads: c.n_heads,
            head_dim: c.head_dim,
            kv: KvType::for_path(path),
            context,
            n_layers: c.n_layers,
            max_cols: c.dim.max(c.q_dim()).max(c.ffn_dim),
            batch: PREFILL_CHUNK,
        }
    }

    /// The same plan with a KV cache of type `kv` (int8 only on the fast path: the exact path
    /// keeps its f32 cache).
    pub fn with_kv(mut self, kv: KvType) -> ArenaPlan {
        if self.kv != KvType::F32 {
            self.kv = kv;
        }
        self
    }

    /// The f32 buffers in arena order, with their lengths.
    fn f32_sizes(&self) -> [usize; 15] {
        let b = self.batch;
        [
            b * self.dim,                   // x
            b * self.dim.max(self.q_dim),   // xb
            b * self.dim,                   // xb2
            b * self.q_dim,                 // q
            b * self.kv_dim,                // new keys
            b * self.kv_dim,                // new values
            b * self.ffn_dim,               // hb
            b * self.ffn_dim,               // hb2
            self.n_heads * self.context,    // att
            self.vocab,                     // logits
            b * self.head_dim / 2,          // rope cos
            b * self.head_dim / 2,          // rope sin
            self.max_cols,                  // row scratch (exact path)
            ATTN_SPLITS * self.q_dim,       // attention partial outputs
            ATTN_SPLITS * 2 * self.n_heads, // attention partial maxima and sums
        ]
    }

    /// Values in the key cache (and in the value cache): [n_layers, n_kv_heads, context, head_dim].
    fn kv_values(&self) -> usize {
        self.n_layers * self.context * self.kv_dim
    }

    /// The KV cache's element type.
    pub fn kv_type(&self) -> KvType {
        self.kv
    }

    /// Rows of the key cache (and of the value cache): [n_layers, n_kv_heads, context]; an int8
    /// cache keeps one scale per row.
    fn kv_rows(&self) -> usize {
        self.kv_values() / self.head_dim
    }

    /// Bytes of the KV cache (keys and values, and an int8 cache's scales) in the arena.
    pub fn kv_bytes(&self) -> usize {
        let scales = if self.kv == KvType::Int8 {
            lines::<f32>(self.kv_rows())
        } else {
            0
        };
        2 * (lines::<u8>(self.kv_values() * self.kv.bytes()) + scales) * 64
    }

    fn act_values(&self) -> usize {
        self.batch * self.max_cols
    }

    /// Bytes of the arena for this plan.
    pub fn bytes(&self) -> usize {
        let f: usize = self.f32_sizes().iter().map(|&n| lines::<f32>(n)).sum();
        let groups = self.act_values() / ACT_GROUP;
        let acts = lines::<i8>(self.act_values()) + lines::<f32>(groups) + lines::<i32>(groups);
        // The int16 query of one token and its heads' scales (attention over an int8 cache).
        let q16 = lines::<i16>(self.q_dim) + lines::<f32>(self.n_heads);
        // Two activation sets (value and residual) and the residual's f32 scratch.
        (f + 2 * acts + lines::<f32>(self.act_values()) + q16) * 64 + self.kv_bytes()
    }
}

/// Every buffer of a session, carved from the arena for one forward step of `nb` tokens.
/// Shapes are written `[nb, n]`: `nb` rows of `n` values, one row per token of the step.
struct Bufs<'s> {
    /// Residual stream, [nb, dim].
    x: &'s mut [f32],
    /// Normalized input of a block, or attention output of all heads, [nb, max(dim, q_dim)].
    xb: &'s mut [f32],
    /// Output of a projection back to the residual stream, [nb, dim].
    xb2: &'s mut [f32],
    /// Queries of all heads, [nb, q_dim].
    q: &'s mut [f32],
    /// Keys and values of the step's tokens before they enter the cache, [nb, kv_dim] each.
    k_new: &'s mut [f32],
    v_new: &'s mut [f32],
    /// Gate and up projections, [nb, ffn_dim] each.
    hb: &'s mut [f32],
    hb2: &'s mut [f32],
    /// Attention scores of one token, [n_heads, context].
    att: &'s mut [f32],
    /// Output logits of the last token, [vocab].
    logits: &'s mut [f32],
    /// RoPE rotation of each token's position, [nb, head_dim / 2] each.
    cos: &'s mut [f32],
    sin: &'s mut [f32],
    /// One dequantized weight row (exact path), [max_cols].
    row: &'s mut [f32],
    /// Per attention worker: unnormalized outputs [ATTN_SPLITS, q_dim], and score maxima and
    /// sums [ATTN_SPLITS, 2, n_heads] (fast path).
    attn_o: &'s mut [f32],
    attn_ml: &'s mut [f32],
    /// KV cache.
    kv: KvCache<'s>,
    /// Quantized activations, [nb, max_cols] values and [nb, max_cols / ACT_GROUP] scales and sums.
    acts: ActsQ8Mut<'s>,
    /// The same for the quantization residual of token rows that need refinement.
    resid_acts: ActsQ8Mut<'s>,
    /// The residual x - dequantized(x), [nb, max_cols].
    resid: &'s mut [f32],
    /// One token's queries as int16 rows ([`scalar::quantize_row_i16`] per head), [q_dim], and
    /// their scales, [n_heads]: attention over an int8 cache.
    q16: &'s mut [i16],
    q16_d: &'s mut [f32],
}

/// The KV cache: keys and values, [n_layers, n_kv_heads, context, head_dim] each, so the rows of
/// one KV head are contiguous.
enum KvCache<'s> {
    F32 {
        k: &'s mut [f32],
        v: &'s mut [f32],
    },
    /// IEEE f16 bits.
    F16 {
        k: &'s mut [u16],
        v: &'s mut [u16],
    },
    /// int8 rows (`scalar::quantize_row_i8`) and their scales, [n_layers, n_kv_heads, context].
    Int8 {
        k: &'s mut [i8],
        v: &'s mut [i8],
        ks: &'s mut [f32],
        vs: &'s mut [f32],
    },
}

impl KvCache<'_> {
    /// Writes the keys and values of positions `pos..pos + nb` ([nb, kv_dim] each) into layer `l`.
    fn append(&mut self, plan: &ArenaPlan, l: usize, pos: usize, k_new: &[f32], v_new: &[f32]) {
        let (hd, context) = (plan.head_dim, plan.context);
        let heads = plan.kv_dim / hd;
        for (t, (kt, vt)) in k_new
            .chunks_exact(plan.kv_dim)
            .zip(v_new.chunks_exact(plan.kv_dim))
            .enumerate()
        {
            for h in 0..heads {
                let at = ((l * heads + h) * context + pos + t) * hd;
                let (src_k, src_v) = (&kt[h * hd..(h + 1) * hd], &vt[h * hd..(h + 1) * hd]);
                match self {
                    KvCache::F32 { k, v } => {
                        k[at..at + hd].copy_from_slice(src_k);
                        v[at..at + hd].copy_from_slice(src_v);
                    }
                    KvCache::F16 { k, v } => {
                        scalar::f32_to_f16_row(src_k, &mut k[at..at + hd]);
                        scalar::f32_to_f16_row(src_v, &mut v[at..at + hd]);
                    }
                    KvCache::Int8 { k, v, ks, vs } => {
                        ks[at / hd] = scalar::quantize_row_i8(src_k, &mut k[at..at + hd]);
                        vs[at / hd] = scalar::quantize_row_i8(src_v, &mut v[at..at + hd]);
                    }
                }
            }
        }
    }
}

fn take<'s, T: bytemuck::Pod>(rest: &mut &'s mut [Line], n: usize) -> &'s mut [T] {
    let (head, tail) = core::mem::take(rest).split_at_mut(lines::<T>(n));
    *rest = tail;
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(head);
    &mut bytemuck::cast_slice_mut::<u8, T>(&mut bytes[..n * core::mem::size_of::<T>()])[..n]
}

// SAFETY: `Line` is a plain byte array with no padding and no invalid bit patterns.
unsafe impl bytemuck::Zeroable for Line {}
// SAFETY: as above; `repr(C, align(64))` over `[u8; 64]` has size 64 and no padding.
unsafe impl bytemuck::Pod for Line {}

impl<'s> Bufs<'s> {
    fn carve(plan: &ArenaPlan, arena: &'s mut [Line]) -> Bufs<'s> {
        let mut rest = arena;
        let s = plan.f32_sizes();
        let x = take(&mut rest, s[0]);
        let xb = take(&mut rest, s[1]);
        let xb2 = take(&mut rest, s[2]);
        let q = take(&mut rest, s[3]);
        let k_new = take(&mut rest, s[4]);
        let v_new = take(&mut rest, s[5]);
        let hb = take(&mut rest, s[6]);
        let hb2 = take(&mut rest, s[7]);
        let att = take(&mut rest, s[8]);
        let logits = take(&mut rest, s[9]);
        let cos = take(&mut rest, s[10]);
        let sin = take(&mut rest, s[11]);
        let row = take(&mut rest, s[12]);
        let attn_o = take(&mut rest, s[13]);
        let attn_ml = take(&mut rest, s[14]);
        let n = plan.kv_values();
        let kv = match plan.kv {
            KvType::F32 => KvCache::F32 {
                k: take(&mut rest, n),
                v: take(&mut rest, n),
            },
            KvType::F16 => KvCache::F16 {
                k: take(&mut rest, n),
                v: take(&mut rest, n),
            },
            KvType::Int8 => KvCache::Int8 {
                k: take(&mut rest, n),
                v: take(&mut rest, n),
                ks: take(&mut rest, plan.kv_rows()),
                vs: take(&mut rest, plan.kv_rows()),
            },
        };
        let groups = plan.act_values() / ACT_GROUP;
        let acts = ActsQ8Mut {
            qs: take(&mut rest, plan.act_values()),
            d: take(&mut rest, groups),
            sums: take(&mut rest, groups),
        };
        let resid_acts = ActsQ8Mut {
            qs: take(&mut rest, plan.act_values()),
            d: take(&mut rest, groups),
            sums: take(&mut rest, groups),
        };
        let resid = take(&mut rest, plan.act_values());
        let q16 = take(&mut rest, plan.q_dim);
        let q16_d = take(&mut rest, plan.n_heads);
        Bufs {
            x,
            xb,
            xb2,
            q,
            k_new,
            v_new,
            hb,
            hb2,
            att,
            logits,
            cos,
            sin,
            row,
            attn_o,
            attn_ml,
            kv,
            acts,
            resid_acts,
            resid,
            q16,
            q16_d,
        }
    }
}

/// A raw view of an output slice that workers write in disjoint ranges.
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: workers only ever obtain disjoint sub-ranges (see `range`), so sharing the pointer across
// threads cannot create overlapping mutable access.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn new(s: &mut [f32]) -> SharedOut {
        SharedOut {
            ptr: s.as_mut_ptr(),
            len: s.len(),
        }
    }

    /// # Safety
    /// Ranges obtained concurrently must not overlap, and the slice this was made from must outlive
    /// every use and not be accessed otherwise meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn range(&self, r: core::ops::Range<usize>) -> &mut [f32] {
        assert!(r.start <= r.end && r.end <= self.len);
        // SAFETY: in bounds (checked above); exclusivity is the caller's contract.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
}

/// Rows per work unit: a multiple of every kernel's row tile, so no tile is split between workers.
const ROW_ALIGN: usize = 4;

/// The session's one allocation: zeroed bytes with `lines` 64-byte-aligned [`Line`]s inside. A
/// large zeroed allocation of bytes comes from the operating system untouched (a zeroed one of
/// `Line`s, aligned to 64, would be cleared byte by byte), so the pages can still be advised
/// (e.g. huge pages) before they are first faulted in.
struct Arena {
    bytes: Vec<u8>,
    lines: usize,
}

impl Arena {
    fn zeroed(lines: usize) -> Arena {
        Arena {
            bytes: vec![0u8; lines * 64 + 63],
            lines,
        }
    }

    fn lines(&mut self) -> &mut [Line] {
        // At most 63 bytes come before the first 64-byte boundary, so `lines` Lines follow it.
        let (_, body, _) = bytemuck::pod_align_to_mut::<u8, Line>(&mut self.bytes);
        &mut body[..self.lines]
    }
}

/// A running conversation with a model: position, KV cache and scratch buffers.
pub struct Session<'m, 'a> {
    model: &'m Model<'a>,
    kernels: Kernels,
    plan: ArenaPlan,
    arena: Arena,
    pos: usize,
    path: NumericPath,
}

impl<'m, 'a> Session<'m, 'a> {
    /// Creates a session, allocating its whole arena now (the only allocation it ever makes).
    /// The KV cache is the numeric path's ([`KvType::for_path`]).
    pub fn new(
        model: &'m Model<'a>,
        kernels: Kernels,
        options: SessionOptions,
    ) -> Result<Self, SessionError> {
        Self::with_kv(model, kernels, options, KvType::for_path(options.path))
    }

    /// [`Session::new`] with a KV cache of type `kv` on the fast path (the exact path keeps its
    /// f32 cache, [`ArenaPlan::with_kv`]).
    pub fn with_kv(
        model: &'m Model<'a>,
        kernels: Kernels,
        options: SessionOptions,
        kv: KvType,
    ) -> Result<Self, SessionError> {
        Self::with_kv_advised(model, kernels, options, kv, |_| {})
    }

    /// [`Session::with_kv`], calling `advise` on the arena's bytes once it is allocated and
    /// before its pages are faulted in (e.g. to ask the operating system for huge pages).
    pub fn with_kv_advised(
        model: &'m Model<'a>,
        kernels: Kernels,
        options: SessionOptions,
        kv: KvType,
        advise: fn(&mut [u8]),
    ) -> Result<Self, SessionError> {
        if options.context == 0 || options.context > 1 << 20 {
            return Err(SessionError::BadContext {
                requested: options.context,
            });
        }
        let plan = ArenaPlan::new(&model.config, options.context, options.path).with_kv(kv);
        check_kv(plan.kv_type(), model.config.head_dim)?;
        let mut arena = Arena::zeroed(plan.bytes() / 64);
        advise(bytemuck::cast_slice_mut(arena.lines()));
        prefault(arena.lines());
        Ok(Session {
            model,
            kernels: kernels.for_weights(model.matmul_types()),
            plan,
            arena,
            pos: 0,
            path: options.path,
        })
    }

    /// Bytes of the arena (activations, KV cache, logits).
    pub fn arena_bytes(&self) -> usize {
        self.arena.lines * 64
    }

    /// The arena's layout plan (sizes of the KV cache and the other buffers).
    pub fn plan(&self) -> &ArenaPlan {
        &self.plan
    }

    /// The arena's bytes, e.g. to prefault or lock them.
    pub fn arena_mut(&mut self) -> &mut [u8] {
        bytemuck::cast_slice_mut(self.arena.lines())
    }

    /// Number of positions already in the KV cache.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Maximum number of positions.
    pub fn context(&self) -> usize {
        self.plan.context
    }

    /// The model this session runs.
    pub fn model(&self) -> &'m Model<'a> {
        self.model
    }

    /// The kernels this session uses.
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// Forgets every position (the KV cache is overwritten from position 0 on).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Drops positions after `pos` (keeps a shared prompt prefix).
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }

    /// Logits of the last position computed, `[vocab]`.
    pub fn logits(&mut self) -> &mut [f32] {
        let plan = self.plan;
        Bufs::carve(&plan, self.arena.lines()).logits
    }

    /// Runs the prompt `tokens` through the model, [`PREFILL_CHUNK`] tokens per pass over the
    /// weights, and returns the logits of its last position.
    pub fn prefill(
        &mut self,
        tokens: &[u32],
        par: &dyn Parallel,
    ) -> Result<&mut [f32], SessionError> {
        if self.pos + tokens.len() > self.plan.context {
            return Err(SessionError::ContextFull {
                context: self.plan.context,
            });
        }
        let chunks = tokens.len().div_ceil(PREFILL_CHUNK);
        for (i, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            // Only the last prompt position needs logits.
            self.step(chunk, par, i + 1 == chunks)?;
        }
        Ok(self.logits())
    }

    /// Feeds one token at the next position and returns the logits for the position after it.
    pub fn forward(&mut self, token: u32, par: &dyn Parallel) -> Result<&mut [f32], SessionError> {
        self.step(&[token], par, true)?;
        Ok(self.logits())
    }

    /// One forward pass over `tokens` (1 to [`PREFILL_CHUNK`] of them) at positions
    /// `pos..pos + tokens.len()`; the logits of the last one when `logits` is set.
    fn step(
        &mut self,
        tokens: &[u32],
        par: &dyn Parallel,
        logits: bool,
    ) -> Result<(), SessionError> {
        let cfg = &self.model.config;
        let nb = tokens.len();
        assert!(
            (1..=self.plan.batch).contains(&nb),
            "a step takes 1 to {} tokens",
            self.plan.batch
        );
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(SessionError::BadToken {
                token,
                vocab_size: cfg.vocab_size,
            });
        }
        if self.pos + nb > self.plan.context {
            return Err(SessionError::ContextFull {
                context: self.plan.context,
            });
        }
        let model = self.model;
        let k = &self.kernels;
        let path = self.path;
        let plan = self.plan;
        let pos = self.pos;
        let b = Bufs::carve(&plan, self.arena.lines());
        let (dim, q_dim, kv_dim, hd, ffn) = (
            cfg.dim,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.head_dim,
            cfg.ffn_dim,
        );
        let half = hd / 2;
        let mut mm = MatMul {
            k,
            par,
            path,
            acts: b.acts,
            resid_acts: b.resid_acts,
            resid: b.resid,
            row: b.row,
            sink_rows: SINK_POSITIONS.saturating_sub(pos),
        };
        let x = &mut b.x[..nb * dim];
        let xb2 = &mut b.xb2[..nb * dim];
        let q = &mut b.q[..nb * q_dim];
        let (hb, hb2) = (&mut b.hb[..nb * ffn], &mut b.hb2[..nb * ffn]);

        // Embedding: x[t] = token_embd[tokens[t]], [nb, dim].
        let e = &model.token_embd;
        for (xt, &token) in x.chunks_exact_mut(dim).zip(tokens) {
            scalar::dequantize_row(e.ty, e.rows_data(token as usize..token as usize + 1), xt)
                .expect("Model::from_gguf admits only embedding types the kernels dequantize");
            if let Some(s) = e.row_scale {
                let b = &s[token as usize * 4..token as usize * 4 + 4];
                let scale = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                xt.iter_mut().for_each(|v| *v *= scale);
            }
        }

        // RoPE angles of each position: cos/sin[nb, head_dim/2], theta_i = p * base^(-2i/head_dim).
        for t in 0..nb {
            for i in 0..half {
                let inv_freq = 1.0 / libm::powf(cfg.rope_theta, (2 * i) as f32 / hd as f32);
                let angle = (pos + t) as f32 * inv_freq;
                b.cos[t * half + i] = libm::cosf(angle);
                b.sin[t * half + i] = libm::sinf(angle);
            }
        }

        let cache_layer = plan.context * kv_dim;
        let (k_new, v_new) = (&mut b.k_new[..nb * kv_dim], &mut b.v_new[..nb * kv_dim]);
        let mut kv = b.kv;
        for (l, layer) in model.layers.iter().enumerate() {
            // Attention block.
            // xb[nb, dim] = rmsnorm(x) * attn_norm
            let xb = &mut b.xb[..nb * dim];
            rmsnorm_rows(k, xb, x, &layer.attn_norm, cfg.rms_eps);
            // q[nb, q_dim] = xb·wq (+bq); k_new, v_new[nb, kv_dim] likewise.
            mm.run(
                xb,
                dim,
                &mut [
                    (&layer.wq, &mut *q),
                    (&layer.wk, &mut *k_new),
                    (&layer.wv, &mut *v_new),
                ],
            );
            add_bias_rows(q, &layer.bq);
            add_bias_rows(k_new, &layer.bk);
            add_bias_rows(v_new, &layer.bv);
            // Rotate every query and key head by its token's angles.
            for t in 0..nb {
                let (cos, sin) = (
                    &b.cos[t * half..(t + 1) * half],
                    &b.sin[t * half..(t + 1) * half],
                );
                for h in q[t * q_dim..(t + 1) * q_dim].chunks_exact_mut(hd) {
                    rope(h, cos, sin, cfg.rope_style);
                }
                for h in k_new[t * kv_dim..(t + 1) * kv_dim].chunks_exact_mut(hd) {
                    rope(h, cos, sin, cfg.rope_style);
                }
            }
            // The cache takes the keys and values of positions pos..pos+nb (f16 or int8 on the fast
            // path).
            kv.append(&plan, l, pos, k_new, v_new);
            // Grouped-query attention of each token over positions 0..=its own (causal).
            // xb[nb, q_dim] = head outputs.
            let xb = &mut b.xb[..nb * q_dim];
            let layer_kv = l * cache_layer..(l + 1) * cache_layer;
            for t in 0..nb {
                let (qt, ot) = (
                    &q[t * q_dim..(t + 1) * q_dim],
                    &mut xb[t * q_dim..(t + 1) * q_dim],
                );
                let seq = pos + t + 1;
                let cache = match &kv {
                    KvCache::F32 { k: kc, v: vc } => {
                        let (kc, vc) = (&kc[layer_kv.clone()], &vc[layer_kv.clone()]);
                        attention_f32(par, k, qt, kc, vc, b.att, ot, cfg, seq, plan.context);
                        continue;
                    }
                    KvCache::F16 { k: kc, v: vc } => {
                        FastCache::F16(&kc[layer_kv.clone()], &vc[layer_kv.clone()])
                    }
                    KvCache::Int8 {
                        k: kc,
                        v: vc,
                        ks,
                        vs,
                    } => {
                        // The queries enter the integer scores as int16 rows, one scale per head.
                        for ((qh, q16h), d) in qt
                            .chunks_exact(hd)
                            .zip(b.q16.chunks_exact_mut(hd))
                            .zip(b.q16_d.iter_mut())
                        {
                            *d = scalar::quantize_row_i16(qh, q16h);
                        }
                        let rows = layer_kv.start / hd..layer_kv.end / hd;
                        FastCache::Int8 {
                            k: &kc[layer_kv.clone()],
                            v: &vc[layer_kv.clone()],
                            ks: &ks[rows.clone()],
                            vs: &vs[rows],
                            q: &*b.q16,
                            qd: &*b.q16_d,
                        }
                    }
                };
                let partial = (&mut *b.attn_o, &mut *b.attn_ml);
                attention_fast(
                    par,
                    k,
                    qt,
                    cache,
                    b.att,
                    partial,
                    ot,
                    cfg,
                    seq,
                    plan.context,
                );
            }
            if layer.attn_sub_norm.is_empty() {
                // xb2[nb, dim] = xb·wo; x += xb2
                mm.run(xb, q_dim, &mut [(&layer.wo, &mut *xb2)]);
                add_in_place(x, xb2);
            } else {
                // BitNet (q_dim == dim, checked at load): xb2 = rmsnorm(xb) * attn_sub_norm,
                // xb = xb2·wo; x += xb
                rmsnorm_rows(k, xb2, xb, &layer.attn_sub_norm, cfg.rms_eps);
                mm.run(xb2, q_dim, &mut [(&layer.wo, &mut *xb)]);
                add_in_place(x, xb);
            }

            // Feed-forward block: x += (act(xb·w_gate) * (xb·w_up))·w_down, xb = rmsnorm(x),
            // act = silu (or relu², then an RMS norm of the product, for BitNet).
            let xb = &mut b.xb[..nb * dim];
            rmsnorm_rows(k, xb, x, &layer.ffn_norm, cfg.rms_eps);
            mm.run(
                xb,
                dim,
                &mut [(&layer.w_gate, &mut *hb), (&layer.w_up, &mut *hb2)],
            );
            match cfg.ffn_act {
                FfnAct::Silu => k.swiglu(hb, hb2),
                FfnAct::Relu2 => relu2_gate(hb, hb2),
            }
            if layer.ffn_sub_norm.is_empty() {
                mm.run(hb, ffn, &mut [(&layer.w_down, &mut *xb2)]);
            } else {
                rmsnorm_rows(k, hb2, hb, &layer.ffn_sub_norm, cfg.rms_eps);
                mm.run(hb2, ffn, &mut [(&layer.w_down, &mut *xb2)]);
            }
            add_in_place(x, xb2);
        }

        // Final norm of the last token, then logits[vocab] = output·rmsnorm(x[last]).
        if logits {
            let xb = &mut b.xb[..dim];
            rmsnorm_rows(k, xb, &x[(nb - 1) * dim..], &model.output_norm, cfg.rms_eps);
            mm.run(xb, dim, &mut [(&model.output, &mut *b.logits)]);
        }
        self.pos += nb;
        Ok(())
    }
}

/// Writes one byte of every 4 KiB page so the whole arena is backed by memory before the first
/// token: a fresh zeroed allocation is mapped lazily and would otherwise fault during decode.
fn prefault(arena: &mut [Line]) {
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(arena);
    for i in (0..bytes.len()).step_by(4096) {
        // SAFETY: `i` is in bounds; a volatile write keeps the compiler from eliding a store of the
        // value the (zeroed) memory already holds.
        unsafe { core::ptr::write_volatile(bytes.as_mut_ptr().add(i), 0) };
    }
}

/// Matrix products through the kernels: `nb` token rows against each weight matrix, split over
/// the workers by weight rows. With several tokens, each worker walks its rows in tiles small
/// enough to stay in cache and multiplies every token by a tile with one `Kernels::gemm` before
/// moving on, so the weights are read from memory once per step (and, for the types with a gemm
/// kernel, unpacked once per tile for several tokens).
struct MatMul<'s, 'k> {
    k: &'k Kernels,
    par: &'k dyn Parallel,
    path: NumericPath,
    acts: ActsQ8Mut<'s>,
    resid_acts: ActsQ8Mut<'s>,
    resid: &'s mut [f32],
    row: &'s mut [f32],
    /// Token rows `0..sink_rows` of this step get the residual pass.
    sink_rows: usize,
}

/// Leading positions of a sequence whose activations get a second int8 pass over their
/// quantization residual (about 15 bits of precision instead of 8). The first position is the
/// "attention sink" of these models: every later position attends to its keys and values, so its
/// int8 error reaches every logit. On SmolLM2's shortest reference prompt this moves the logits'
/// cosine to the f32 reference from 0.9975-0.9995 (depending on the ISA's summation order) to
/// 0.9989-0.9997, for the cost of one extra pass over the weights per sequence.
const SINK_POSITIONS: usize = 1;

/// Rows per residual pass (a stack buffer holds their partial results).
const RESID_ROWS: usize = 64;

/// Weight rows per tile when several tokens share a pass (about 8-32 KiB of weights).
const TILE_ROWS: usize = 32;

/// Workers that own a share of the tiles of a several-token product; the workers take their own
/// share first, in order, then the tiles left in the others' (more workers start on a share).
const STEAL_OWNERS: usize = 8;

/// A count of tiles taken, alone in its cache line (128 bytes: the line pairs that some x86
/// prefetchers fetch together) so that the owners' counts do not share one.
#[derive(Default)]
#[repr(align(128))]
struct TileCounter(AtomicUsize);

/// The rows of the next tile of a `rows`-row product for `worker` of `threads`, or `None` when
/// every tile is taken. Each of the first [`STEAL_OWNERS`] workers owns an even share of the
/// tiles (`counts[o]` of them taken); a worker takes its own share's tiles in order (the weight
/// streams stay sequential), then those the others have not reached (`victim`, starting at
/// `worker`, walks the shares), so that a worker whose core is slowed (another process, the
/// hypervisor) does not hold the others at the step's end.
fn take_tile(
    counts: &[TileCounter; STEAL_OWNERS],
    rows: usize,
    threads: usize,
    worker: usize,
    victim: &mut usize,
) -> Option<core::ops::Range<usize>> {
    let owners = threads.min(STEAL_OWNERS);
    let tiles = rows.div_ceil(TILE_ROWS);
    let first = worker % owners;
    *victim %= owners;
    loop {
        let share = split_range(tiles, owners, *victim, 1);
        let i = counts[*victim].0.fetch_add(1, Ordering::Relaxed);
        if i < share.len() {
            let r0 = (share.start + i) * TILE_ROWS;
            return Some(r0..(r0 + TILE_ROWS).min(rows));
        }
        *victim = (*victim + 1) % owners;
        if *victim == first {
            return None;
        }
    }
}

impl MatMul<'_, '_> {
    /// `out_j[t] = W_j · x[t]` for every (W_j, out_j) in `jobs` and every token row `t` of `x`
    /// ([nb, n]); `out_j` is [nb, rows_j]. All W_j share the input `x`.
    fn run(&mut self, x: &[f32], n: usize, jobs: &mut [(&Matrix<'_>, &mut [f32])]) {
        let nb = x.len() / n;
        match self.path {
            NumericPath::Exact => {
                // The reference path stays on one thread: it exists to be simple and exact.
                for (w, out) in jobs.iter_mut() {
                    for (xt, ot) in x.chunks_exact(n).zip(out.chunks_exact_mut(w.rows)) {
                        self.k.gemv_exact(w.ty, w.data, xt, ot, &mut self.row[..n]);
                        w.apply_row_scale(0, ot);
                    }
                }
            }
            NumericPath::Fast => {
                let g = n / ACT_GROUP;
                if jobs.iter().any(|(w, _)| needs_q8(w.ty)) {
                    for (t, xt) in x.chunks_exact(n).enumerate() {
                        let mut acts = ActsQ8Mut {
                            qs: &mut self.acts.qs[t * n..(t + 1) * n],
                            d: &mut self.acts.d[t * g..(t + 1) * g],
                            sums: &mut self.acts.sums[t * g..(t + 1) * g],
                        };
                        self.k.quantize_acts(xt, &mut acts);
                        // Sink rows: quantize the residual r = x - d*q too.
                        if t < self.sink_rows {
                            let r = &mut self.resid[t * n..(t + 1) * n];
                            for (i, (ri, &xi)) in r.iter_mut().zip(xt).enumerate() {
                                *ri = xi - acts.qs[i] as f32 * acts.d[i / ACT_GROUP];
                            }
                            let mut ra = ActsQ8Mut {
                                qs: &mut self.resid_acts.qs[t * n..(t + 1) * n],
                                d: &mut self.resid_acts.d[t * g..(t + 1) * g],
                                sums: &mut self.resid_acts.sums[t * g..(t + 1) * g],
                            };
                            self.k.quantize_acts(r, &mut ra);
                        }
                    }
                }
                let acts = self.acts.as_ref();
                let resid_acts = self.resid_acts.as_ref();
                let sink_rows = self.sink_rows;
                assert!(jobs.len() <= 3, "at most three products share one input");
                let mut work_items: [Option<(&Matrix<'_>, SharedOut)>; 3] = [None, None, None];
                for (slot, (w, out)) in work_items.iter_mut().zip(jobs.iter_mut()) {
                    *slot = Some((*w, SharedOut::new(out)));
                }
                let k = self.k;
                let threads = self.par.threads();
                let batch = ActsQ8 {
                    qs: &acts.qs[..nb * n],
                    d: &acts.d[..nb * g],
                    sums: &acts.sums[..nb * g],
                };
                // Per product and owner, how many of the owner's tiles have been taken (only
                // several tokens use them: a decode step does not zero them).
                let tile_counts: [[TileCounter; STEAL_OWNERS]; 3];
                let next_tile: &[[TileCounter; STEAL_OWNERS]] = if nb > 1 {
                    tile_counts = Default::default();
                    &tile_counts
                } else {
                    &[]
                };
                let work = |worker: usize| {
                    // One tile's products for every token of the step, `[nb, tile rows]`:
                    // only several tokens use it (a decode step does not zero it).
                    let mut tile_store;
                    let tile_out: &mut [f32] = if nb > 1 {
                        tile_store = [0f32; TILE_ROWS * PREFILL_CHUNK];
                        &mut tile_store
                    } else {
                        &mut []
                    };
                    for (job, item) in work_items.iter().enumerate() {
                        let Some((w, out)) = item else { continue };
                        // Several tokens: tiles of rows times every token, where the kernels
                        // unpack each weight once for several tokens, claimed by `take_tile`.
                        // One token (or kernels without a gemm): one gemv per token over a fixed
                        // share of the rows, which then stay in the caches from token to token
                        // and whose activations each kernel arranges once per call.
                        let batched = nb > 1 && k.gemm_batches(w.ty);
                        let mut fixed = (!batched)
                            .then(|| split_range(w.rows, threads, worker, ROW_ALIGN))
                            .filter(|r| !r.is_empty());
                        let mut victim = worker;
                        loop {
                            let next = if batched {
                                take_tile(&next_tile[job], w.rows, threads, worker, &mut victim)
                            } else {
                                fixed.take()
                            };
                            let Some(r) = next else { break };
                            let tile_out = &mut tile_out[..if batched { nb * r.len() } else { 0 }];
                            if batched {
                                k.gemm(w.ty, w.rows_data(r.clone()), x, &batch, nb, tile_out);
                            }
                            for t in 0..nb {
                                let a = ActsQ8 {
                                    qs: &acts.qs[t * n..(t + 1) * n],
                                    d: &acts.d[t * g..(t + 1) * g],
                                    sums: &acts.sums[t * g..(t + 1) * g],
                                };
                                let o = t * w.rows;
                                // SAFETY: each range of rows goes to one worker (a fixed share
                                // from `split_range`, or a tile taken once from the counters), so
                                // (token, row) ranges never overlap between workers; the output
                                // is borrowed from `jobs` until `run` returns.
                                let out = unsafe { out.range(o + r.start..o + r.end) };
                                let xt = &x[t * n..(t + 1) * n];
                                if batched {
                                    out.copy_from_slice(&tile_out[t * r.len()..(t + 1) * r.len()]);
                                } else {
                                    k.gemv(w.ty, w.rows_data(r.clone()), xt, &a, out);
                                }
                                if t < sink_rows && needs_q8(w.ty) {
                                    let ra = ActsQ8 {
                                        qs: &resid_acts.qs[t * n..(t + 1) * n],
                                        d: &resid_acts.d[t * g..(t + 1) * g],
                                        sums: &resid_acts.sums[t * g..(t + 1) * g],
                                    };
                                    let mut part = [0f32; RESID_ROWS];
                                    for (i, chunk) in out.chunks_mut(RESID_ROWS).enumerate() {
                                        let s = r.start + i * RESID_ROWS;
                                        let p = &mut part[..chunk.len()];
                                        k.gemv(w.ty, w.rows_data(s..s + chunk.len()), xt, &ra, p);
                                        for (o, v) in chunk.iter_mut().zip(p.iter()) {
                                            *o += v;
                                        }
                                    }
                                }
                                w.apply_row_scale(r.start, out);
                            }
                        }
                    }
                };
                self.par.run(&work);
            }
        }
    }
}

fn needs_q8(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// out[t] = rmsnorm(x[t]) * weight for each row t of x ([nb, weight.len()]).
fn rmsnorm_rows(k: &Kernels, out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let n = weight.len();
    for (o, xt) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        k.rmsnorm(xt, weight, eps, o);
    }
}

/// `g[i] = max(g[i], 0)² * u[i]`: BitNet b1.58's gate.
fn relu2_gate(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        let r = g.max(0.0);
        *g = r * r * u;
    }
}

fn add_bias_rows(x: &mut [f32], bias: &[f32]) {
    if !bias.is_empty() {
        for row in x.chunks_exact_mut(bias.len()) {
            add_in_place(row, bias);
        }
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Rotates one head in place by the angles in `cos`/`sin`, pairing dimensions as `style` says.
fn rope(h: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = h.len() / 2;
    for i in 0..half {
        let (a, b) = match style {
            RopeStyle::Adjacent => (2 * i, 2 * i + 1),
            RopeStyle::Halves => (i, i + half),
        };
        let (x0, x1) = (h[a], h[b]);
        h[a] = x0 * cos[i] - x1 * sin[i];
        h[b] = x0 * sin[i] + x1 * cos[i];
    }
}

/// Refuses a KV cache type the attention kernels cannot run at this head dimension: the int8
/// cache's exact integer scores ([`scalar::attn_scores_q16`]) take at most
/// [`scalar::Q16_MAX_HD`] values per head.
fn check_kv(kv: KvType, head_dim: usize) -> Result<(), SessionError> {
    if kv == KvType::Int8 && head_dim > scalar::Q16_MAX_HD {
        return Err(SessionError::Int8HeadDim { head_dim });
    }
    Ok(())
}

/// Workers that share the attention of one token (by position ranges) on the fast path: the arena
/// holds one partial result per worker. More threads than this leave the rest idle in attention.
const ATTN_SPLITS: usize = 16;

/// Positions per unit of the split: a multiple of the kernels' 4-position tile.
const ATTN_POS_ALIGN: usize = 4;

/// Attention of every query head over positions `0..seq` of one layer's f32 cache
/// ([n_kv_heads, context, head_dim]): the exact path, one head per worker, one `dot_f32` per
/// (head, position) and one `axpy_f32` per (head, position).
#[allow(clippy::too_many_arguments)]
fn attention_f32(
    par: &dyn Parallel,
    k: &Kernels,
    q: &[f32],
    key_cache: &[f32],
    value_cache: &[f32],
    att: &mut [f32],
    out: &mut [f32],
    cfg: &crate::model::Config,
    seq: usize,
    context: usize,
) {
    let hd = cfg.head_dim;
    let group = cfg.n_heads / cfg.n_kv_heads;
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let att_out = SharedOut::new(att);
    let head_out = SharedOut::new(out);
    let threads = par.threads();
    let work = |t: usize| {
        for h in split_range(cfg.n_heads, threads, t, 1) {
            // SAFETY: each head index belongs to exactly one worker, and head h only touches its
            // own row of `att` and its own slice of `out`.
            let scores = unsafe { att_out.range(h * context..h * context + seq) };
            // SAFETY: as above.
            let o = unsafe { head_out.range(h * hd..(h + 1) * hd) };
            let qh = &q[h * hd..(h + 1) * hd];
            let base = (h / group) * context * hd;
            for (t, s) in scores.iter_mut().enumerate() {
                let kr = &key_cache[base + t * hd..base + (t + 1) * hd];
                *s = k.dot_f32(qh, kr) * scale;
            }
            k.softmax_inplace(scores);
            o.fill(0.0);
            for (t, &a) in scores.iter().enumerate() {
                let vr = &value_cache[base + t * hd..base + (t + 1) * hd];
                k.axpy_f32(a, vr, o);
            }
        }
    };
    par.run(&work);
}

/// One layer's cache on the fast path: f16 rows, or int8 rows with their scales
/// ([n_kv_heads, context]).
#[derive(Clone, Copy)]
enum FastCache<'c> {
    F16(&'c [u16], &'c [u16]),
    Int8 {
        k: &'c [i8],
        v: &'c [i8],
        ks: &'c [f32],
        vs: &'c [f32],
        /// The token's queries as int16 rows, [n_heads, head_dim], and their scales, [n_heads].
        q: &'c [i16],
        qd: &'c [f32],
    },
}

/// Attention of every query head over positions `0..seq` of one layer's f16 or int8 cache
/// ([n_kv_heads, context, head_dim]): the fast path. An int8 cache's key scales multiply the
/// scores, and its value scales the softmax weights before the weighted sum. The positions are split between the
/// workers; each worker runs, per KV head, the scores of all the group's query heads against its
/// key rows (each row read once for the group), their unnormalized softmax and the weighted sum
/// of its value rows, into its own partial output. The partial outputs are then combined:
/// `out_h = Σ_w e^(m_w - M) o_w / Σ_w e^(m_w - M) l_w` with `m_w`, `l_w` worker `w`'s maximum
/// score and sum of exponentials, `M = max_w m_w`.
#[allow(clippy::too_many_arguments)]
fn attention_fast(
    par: &dyn Parallel,
    k: &Kernels,
    q: &[f32],
    cache: FastCache<'_>,
    att: &mut [f32],
    (part_o, part_ml): (&mut [f32], &mut [f32]),
    out: &mut [f32],
    cfg: &crate::model::Config,
    seq: usize,
    context: usize,
) {
    let (hd, n_heads, q_dim) = (cfg.head_dim, cfg.n_heads, cfg.q_dim());
    let group = n_heads / cfg.n_kv_heads;
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let splits = par.threads().clamp(1, ATTN_SPLITS);
    let att_out = SharedOut::new(att);
    let o_out = SharedOut::new(part_o);
    let ml_out = SharedOut::new(part_ml);
    let work = |w: usize| {
        if w >= splits {
            return;
        }
        let r = split_range(seq, splits, w, ATTN_POS_ALIGN);
        let n = r.len();
        // SAFETY: worker `w` alone uses partial slot `w` of `part_o` and `part_ml`.
        let o = unsafe { o_out.range(w * q_dim..(w + 1) * q_dim) };
        // SAFETY: as above.
        let ml = unsafe { ml_out.range(w * 2 * n_heads..(w + 1) * 2 * n_heads) };
        let (maxes, sums) = ml.split_at_mut(n_heads);
        if n == 0 {
            maxes.fill(f32::NEG_INFINITY);
            sums.fill(0.0);
            return;
        }
        // Scores [n_heads, n] of this worker's positions, in its own part of `att`: the position
        // ranges are disjoint, so these parts are too.
        // SAFETY: `n_heads * r.end <= n_heads * seq <= att.len()`, disjoint between workers.
        let s = unsafe { att_out.range(n_heads * r.start..n_heads * r.end) };
        for (kvh, ((sg, og), (mg, lg))) in s
            .chunks_exact_mut(group * n)
            .zip(o.chunks_exact_mut(group * hd))
            .zip(
                maxes
                    .chunks_exact_mut(group)
                    .zip(sums.chunks_exact_mut(group)),
            )
            .enumerate()
        {
            let at = kvh * context + r.start..kvh * context + r.end;
            let rows = at.start * hd..at.end * hd;
            let qg = &q[kvh * group * hd..(kvh + 1) * group * hd];
            match cache {
                FastCache::F16(kc, _) => k.attn_scores_f16(qg, &kc[rows.clone()], hd, scale, sg),
                FastCache::Int8 {
                    k: kc, ks, q, qd, ..
                } => {
                    // Exact i32 sums in the scores' place, then each scaled by its query
                    // head's and key row's scales: `(isum * (dq * dk)) * scale`.
                    let heads = kvh * group..(kvh + 1) * group;
                    let isums: &mut [i32] = bytemuck::cast_slice_mut(sg);
                    k.attn_scores_q16(
                        &q[heads.start * hd..heads.end * hd],
                        &kc[rows.clone()],
                        hd,
                        isums,
                    );
                    for (row, &dq) in sg.chunks_exact_mut(n).zip(&qd[heads]) {
                        row.iter_mut().zip(&ks[at.clone()]).for_each(|(s, &dk)| {
                            *s = (s.to_bits() as i32 as f32 * (dq * dk)) * scale;
                        });
                    }
                }
            }
            for ((row, m), l) in sg.chunks_exact_mut(n).zip(mg).zip(lg) {
                (*m, *l) = k.softmax_unnorm(row);
            }
            match cache {
                FastCache::F16(_, vc) => k.attn_values_f16(sg, &vc[rows], hd, og),
                FastCache::Int8 { v: vc, vs, .. } => {
                    for row in sg.chunks_exact_mut(n) {
                        row.iter_mut().zip(&vs[at.clone()]).for_each(|(w, d)| {
                            *w = if *w < NEGLIGIBLE_WEIGHT { 0.0 } else { *w } * d
                        });
                    }
                    k.attn_values_i8(sg, &vc[rows], hd, og);
                }
            }
        }
    };
    par.run(&work);
    for (h, oh) in out.chunks_exact_mut(hd).enumerate() {
        let slot = |w: usize| {
            (
                part_ml[w * 2 * n_heads + h],
                part_ml[w * 2 * n_heads + n_heads + h],
            )
        };
        let m = (0..splits)
            .map(|w| slot(w).0)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut l = 0.0f32;
        oh.fill(0.0);
        for w in 0..splits {
            let (mw, lw) = slot(w);
            if lw == 0.0 {
                continue; // an empty range
            }
            let c = libm::expf(mw - m);
            l += c * lw;
            k.axpy_f32(c, &part_o[w * q_dim + h * hd..w * q_dim + (h + 1) * hd], oh);
        }
        let inv = 1.0 / l;
        oh.iter_mut().for_each(|v| *v *= inv);
    }
}

#[cfg(test)]
mod kv_tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn an_int8_cache_is_refused_beyond_the_integer_scores_head_dimension() {
        let max = scalar::Q16_MAX_HD;
        assert!(check_kv(KvType::Int8, 64).is_ok());
        assert!(check_kv(KvType::Int8, max).is_ok());
        let e = check_kv(KvType::Int8, max + 1).unwrap_err();
        assert_eq!(e, SessionError::Int8HeadDim { head_dim: max + 1 });
        assert!(e.to_string().contains("f16 cache"), "{e}");
        assert!(check_kv(KvType::F16, 1024).is_ok());
        assert!(check_kv(KvType::F32, 1024).is_ok());
    }
}
