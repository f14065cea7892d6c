// EdgeLLM's CUDA kernels. Compiled at start by NVRTC for the device's compute capability (see
// ARCHITECTURE.md), so this file includes no header: f16 conversions are single PTX
// instructions, and everything else is a CUDA built-in.
//
// Numerics follow the CPU kernels' specification (kernels/cpu/src/scalar): activations are
// quantized to int8 with one f32 scale per 16 values, exactly as `scalar::quantize_acts` does;
// weight blocks contribute the same per-block terms; only the order in which block terms are
// summed differs (lanes of a warp instead of one running sum), so float results agree within a
// named tolerance and integer results bit for bit.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define QS 16
#define FMT_Q8_0 0
#define FMT_Q4_0 1
#define FMT_Q4_1 2
#define FMT_T2 3
#define FMT_F16 4
#define FMT_F32 5

#define PREP_PLAIN 0
#define PREP_RMSNORM 1
#define PREP_SWIGLU 2
#define PREP_ATTN 3
#define PREP_INT8 4
#define PREP_RELU2 5

#define OUT_STORE 0
#define OUT_ADD 1

#define MAX_JOBS 3

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ int4 int4_of(int x, int y, int z, int w) {
    int4 r;
    r.x = x;
    r.y = y;
    r.z = z;
    r.w = w;
    return r;
}

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// Programmatic dependent launch (compute capability 9.0 and newer; the host asks for it only
// there): a kernel of the decode step may start while the one before it still runs. Before
// grid_wait() it may only read what no kernel of the step writes (weights, cache rows of earlier
// positions, the position itself) and write nothing; grid_wait() returns once the kernels before
// it have finished and their writes are visible. Every such kernel calls grid_wait() in every
// block, so each one's end implies the end of all before it. grid_next() lets the next kernel
// start. Both are no-ops in a kernel launched otherwise.
__device__ __forceinline__ void grid_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void grid_next() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Asks the L2 cache to fetch the `bytes` bytes at `p` (every 128-byte line of them), the lines
// spread over the block's threads.
__device__ __forceinline__ void prefetch_l2(const void* p, long long bytes) {
    if (!p || bytes <= 0) return;
    unsigned long long end = (unsigned long long)p + bytes;
    for (unsigned long long a = ((unsigned long long)p & ~127ull) + threadIdx.x * 128ull; a < end;
         a += blockDim.x * 128ull)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(a));
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum of `v` over the block; every thread gets the result. `scratch` holds 32 floats.
__device__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : 0.0f;
    return warp_sum(t);
}

__device__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : neg_inf();
    return warp_max(t);
}

// One group of QS activations to int8, the rule of `scalar::quantize_acts`: d = amax / 127,
// q = round-to-nearest-even(x * (1 / d)); a group whose d is below the smallest normal is zero.
__device__ void quantize_group(const float* x, i8* q, float* d, int* s) {
    float amax = 0.0f;
    for (int i = 0; i < QS; i++) amax = fmaxf(amax, fabsf(x[i]));
    float dd = amax / 127.0f;
    int sum = 0;
    if (!(dd >= 1.17549435e-38f)) {
        for (int i = 0; i < QS; i++) q[i] = 0;
        *d = 0.0f;
    } else {
        float id = 1.0f / dd;
        for (int i = 0; i < QS; i++) {
            int v = __float2int_rn(x[i] * id);
            q[i] = (i8)v;
            sum += v;
        }
        *d = dd;
    }
    *s = sum;
}

// A weight matrix in its device layout (see src/repack.rs): row r's quantized bytes start at
// qs + r * stride; d/m hold one f32 per 32-weight block ([rows][cols / 32]); rs one f32 per row.
struct Mat {
    const u8* qs;
    const float* d;
    const float* m;
    const float* rs;
    long long stride;
    int fmt;
    int rows;
    int cols;
    int pad;
};

struct Job {
    Mat w;
    float* out;         // [nb][rows]
    const float* bias;  // [rows] or null
    int mode;           // OUT_STORE or OUT_ADD
    int first_block;    // first block index of this job in the grid
};

struct Jobs {
    Job j[MAX_JOBS];
    int n;
    int rows_per_block;
};

// How a gemv block builds its input vector (length n) in shared memory.
struct Prep {
    int kind;
    int n;
    const float* x;    // PLAIN, RMSNORM: input; SWIGLU: gate
    const float* x2;   // SWIGLU: up
    const float* w;    // RMSNORM: weight
    float eps;
    // ATTN: partial results of the attention kernel, combined here.
    const float* am;   // [n_heads][nsplit] running max
    const float* al;   // [n_heads][nsplit] sum of exponentials
    const float* ao;   // [n_heads][nsplit][hd] unnormalized outputs
    int nsplit;
    int hd;
    // INT8 (gemv only): input already prepared in global memory: x the f32 values, qq the int8
    // values [n], qd and qsum the scales and sums [n / 16].
    const i8* qq;
    const float* qd;
    const int* qsum;
    // ATTN: the position (pos[0] + tok) whose splits are combined, so that only the splits
    // holding positions up to it are read (the others are empty and change nothing); pos null:
    // all nsplit.
    const int* pos;
    int chunk;
    int tok;
    // ATTN, SWIGLU, RELU2: when not null, the values are then RMS-normalized (with eps) and
    // multiplied by w2 (BitNet's sub-norms).
    const float* w2;
};

// quantize_group for the n / QS groups of xs in shared memory, by warps: QS / 4 lanes per group
// (8 groups per warp at once), each lane 4 consecutive values (a warp reads 512 consecutive
// bytes: no bank conflicts); the group's largest magnitude and its sum by shuffles. The same
// operations on each value as quantize_group, so the same bytes, scales and sums.
__device__ void quantize_groups(const float* xs, i8* aq, float* ad, int* as, int n) {
    const int lanes = QS / 4;
    int lane = threadIdx.x & 31, j = lane % lanes, ng = n / QS, per_warp = 32 / lanes;
    for (int g0 = (threadIdx.x >> 5) * per_warp; g0 < ng; g0 += (blockDim.x >> 5) * per_warp) {
        int g = g0 + lane / lanes;
        bool live = g < ng;
        float4 x;
        if (live) {
            x = ((const float4*)(xs + g * QS))[j];
        } else {
            x.x = x.y = x.z = x.w = 0.0f;
        }
        float amax = fmaxf(fmaxf(fabsf(x.x), fabsf(x.y)), fmaxf(fabsf(x.z), fabsf(x.w)));
        for (int o = lanes / 2; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        float dd = amax / 127.0f;
        int v0 = 0, v1 = 0, v2 = 0, v3 = 0;
        if (dd >= 1.17549435e-38f) {
            float id = 1.0f / dd;
            v0 = __float2int_rn(x.x * id);
            v1 = __float2int_rn(x.y * id);
            v2 = __float2int_rn(x.z * id);
            v3 = __float2int_rn(x.w * id);
        } else {
            dd = 0.0f;
        }
        int sum = v0 + v1 + v2 + v3;
        for (int o = lanes / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (live) {
            ((int*)(aq + g * QS))[j] =
                (v0 & 0xff) | ((v1 & 0xff) << 8) | ((v2 & 0xff) << 16) | ((v3 & 0xff) << 24);
            if (j == 0) {
                ad[g] = dd;
                as[g] = sum;
            }
        }
    }
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// Fills xs[n] (f32 input), aq[n] (int8), ad/as[n / 16] in shared memory. Each thread loads
// PREP_UNROLL values (or splits) at once before using them, so that a block waits for one round
// of loads per PREP_UNROLL values a thread takes, not one per value.
#define PREP_UNROLL 4
// Attention splits whose partial results PREP_ATTN loads in one round.
#define ATTN_COMBINE 8
// Squares in flight per lane while RMSNorm sums them.
#define RMS_UNROLL 24
// Running sums per lane, and weights loaded at once, of the post-norm (Prep::w2).
#define POST_UNROLL 8
__device__ void prepare(const Prep& p, float* xs, i8* aq, float* ad, int* as) {
    int n = p.n;
    const float* x = p.x;
    if (p.kind == PREP_RMSNORM) {
        // Every warp sums all n squares (lane l takes l, l + 32, ... in order), so the sum is the
        // same whatever the block size, with no block barrier. The thread's first values of x
        // and w are loaded with the first squares, in the same round.
        const float* w = p.w;
        int lane = threadIdx.x & 31;
        float a0[PREP_UNROLL], b0[PREP_UNROLL];
#pragma unroll
        for (int k = 0; k < PREP_UNROLL; k++) {
            int i = threadIdx.x + k * blockDim.x;
            a0[k] = i < n ? x[i] : 0.0f;
            b0[k] = i < n ? w[i] : 0.0f;
        }
        float ss = 0.0f;
        for (int i0 = lane; i0 < n; i0 += 32 * RMS_UNROLL) {
            float v[RMS_UNROLL];
#pragma unroll
            for (int k = 0; k < RMS_UNROLL; k++) v[k] = i0 + 32 * k < n ? x[i0 + 32 * k] : 0.0f;
#pragma unroll
            for (int k = 0; k < RMS_UNROLL; k++)
                if (i0 + 32 * k < n) ss += v[k] * v[k];
        }
        ss = warp_sum(ss);
        float s = 1.0f / sqrtf(ss / (float)n + p.eps);
#pragma unroll
        for (int k = 0; k < PREP_UNROLL; k++) {
            int i = threadIdx.x + k * blockDim.x;
            if (i < n) xs[i] = (a0[k] * s) * b0[k];
        }
        for (int i0 = threadIdx.x + PREP_UNROLL * blockDim.x; i0 < n; i0 += PREP_UNROLL * blockDim.x) {
            float a[PREP_UNROLL], b[PREP_UNROLL];
#pragma unroll
            for (int k = 0; k < PREP_UNROLL; k++) {
                int i = i0 + k * blockDim.x;
                a[k] = i < n ? x[i] : 0.0f;
                b[k] = i < n ? w[i] : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < PREP_UNROLL; k++) {
                int i = i0 + k * blockDim.x;
                if (i < n) xs[i] = (a[k] * s) * b[k];
            }
        }
    } else if (p.kind == PREP_ATTN) {
        // Thread t takes values t, t + blockDim.x, ... of the heads' n values. For each it
        // loads the first ATTN_COMBINE splits' maxima, sums and outputs in one round, then
        // combines the splits in order (the same operations and order for every value of a
        // head); splits past ATTN_COMBINE (long contexts) are read one at a time.
        int ns = p.pos ? min(p.nsplit, (p.pos[0] + p.tok) / p.chunk + 1) : p.nsplit;
        int hd = p.hd;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            int h = i / hd, e = i - h * hd;
            const float* m = p.am + h * p.nsplit;
            const float* l = p.al + h * p.nsplit;
            const float* o = p.ao + (long long)h * p.nsplit * hd + e;
            float ms[ATTN_COMBINE], ls[ATTN_COMBINE], os[ATTN_COMBINE];
#pragma unroll
            for (int k = 0; k < ATTN_COMBINE; k++) {
                ms[k] = k < ns ? m[k] : neg_inf();
                ls[k] = k < ns ? l[k] : 0.0f;
                os[k] = k < ns ? o[k * hd] : 0.0f;
            }
            float mx = neg_inf();
#pragma unroll
            for (int k = 0; k < ATTN_COMBINE; k++) mx = fmaxf(mx, ms[k]);
            for (int sp = ATTN_COMBINE; sp < ns; sp++) mx = fmaxf(mx, m[sp]);
            float den = 0.0f, num = 0.0f;
#pragma unroll
            for (int k = 0; k < ATTN_COMBINE; k++) {
                if (ls[k] > 0.0f) {
                    float f = expf(ms[k] - mx);
                    den += ls[k] * f;
                    num += os[k] * f;
                }
            }
            for (int sp = ATTN_COMBINE; sp < ns; sp++) {
                float lv = l[sp];
                if (lv > 0.0f) {
                    float f = expf(m[sp] - mx);
                    den += lv * f;
                    num += o[sp * hd] * f;
                }
            }
            xs[i] = num / den;
        }
    } else {
        // SWIGLU: silu(gate) * up; RELU2: max(gate, 0)² * up; PLAIN: a copy.
        bool relu2 = p.kind == PREP_RELU2;
        bool swiglu = p.kind == PREP_SWIGLU || relu2;
        const float* x2 = p.x2;
        for (int i0 = threadIdx.x; i0 < n; i0 += PREP_UNROLL * blockDim.x) {
            float a[PREP_UNROLL], b[PREP_UNROLL];
#pragma unroll
            for (int k = 0; k < PREP_UNROLL; k++) {
                int i = i0 + k * blockDim.x;
                a[k] = i < n ? x[i] : 0.0f;
                b[k] = i < n && swiglu ? x2[i] : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < PREP_UNROLL; k++) {
                int i = i0 + k * blockDim.x;
                if (i < n) {
                    float r = fmaxf(a[k], 0.0f);
                    xs[i] = relu2 ? (r * r) * b[k] : swiglu ? silu(a[k]) * b[k] : a[k];
                }
            }
        }
    }
    __syncthreads();
    if (p.w2) {
        // Every warp sums all n squares in the same order whatever the block size (lane l
        // takes l, l + 32, ... into POST_UNROLL running sums), then every thread rescales its
        // values once all warps have read them. The thread's first weights are loaded before
        // the sums, the rest POST_UNROLL at a time.
        const float* w2 = p.w2;
        int lane = threadIdx.x & 31;
        float w0[POST_UNROLL];
#pragma unroll
        for (int k = 0; k < POST_UNROLL; k++) {
            int i = threadIdx.x + k * blockDim.x;
            w0[k] = i < n ? w2[i] : 0.0f;
        }
        float acc[POST_UNROLL];
#pragma unroll
        for (int k = 0; k < POST_UNROLL; k++) acc[k] = 0.0f;
        for (int i0 = lane; i0 < n; i0 += 32 * POST_UNROLL) {
#pragma unroll
            for (int k = 0; k < POST_UNROLL; k++) {
                int i = i0 + 32 * k;
                if (i < n) acc[k] += xs[i] * xs[i];
            }
        }
        float ss = 0.0f;
#pragma unroll
        for (int k = 0; k < POST_UNROLL; k++) ss += acc[k];
        ss = warp_sum(ss);
        float s = 1.0f / sqrtf(ss / (float)n + p.eps);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < POST_UNROLL; k++) {
            int i = threadIdx.x + k * blockDim.x;
            if (i < n) xs[i] = (xs[i] * s) * w0[k];
        }
        for (int i0 = threadIdx.x + POST_UNROLL * blockDim.x; i0 < n;
             i0 += POST_UNROLL * blockDim.x) {
            float wv[POST_UNROLL];
#pragma unroll
            for (int k = 0; k < POST_UNROLL; k++) {
                int i = i0 + k * blockDim.x;
                wv[k] = i < n ? w2[i] : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < POST_UNROLL; k++) {
                int i = i0 + k * blockDim.x;
                if (i < n) xs[i] = (xs[i] * s) * wv[k];
            }
        }
        __syncthreads();
    }
    quantize_groups(xs, aq, ad, as, n);
    __syncthreads();
}

// One block's term of a product, shared by the decode gemv and the prefill gemm so that both
// compute every (row, token) product with the same float operations in the same order.
// (float)s, exactly, for |s| < 2^22 (every integer sum below is far smaller), in two full-rate
// instructions: int-to-float conversions run at a fraction of the rate of float arithmetic.
__device__ __forceinline__ float i2f(int s) {
    return __int_as_float(s + 0x4B400000) - 12582912.0f;
}

__device__ __forceinline__ float q8_term(int4 q, int4 av, float dw, float da) {
    int s = __dp4a(q.x, av.x, 0);
    s = __dp4a(q.y, av.y, s);
    s = __dp4a(q.z, av.z, s);
    s = __dp4a(q.w, av.w, s);
    return (dw * da) * i2f(s);
}

// The activation side of a Q4_1 block's offset term: da0 * Σa (first 16) + da1 * Σa (last 16).
__device__ __forceinline__ float q4_1_acts(float da0, float da1, int as0, int as1) {
    return da0 * i2f(as0) + da1 * i2f(as1);
}

// A 4-bit block: lo/hi are its low and high nibbles (values 0..15, one per byte); `ma` is
// q4_1_acts of the block's activations (Q4_1 only).
__device__ __forceinline__ float q4_term(int4 lo, int4 hi, int4 a0, int4 a1, float dw, float da0,
                                         float da1, int as0, int as1, float mw, float ma,
                                         bool q4_0) {
    int s0 = __dp4a(lo.x, a0.x, 0);
    s0 = __dp4a(lo.y, a0.y, s0);
    s0 = __dp4a(lo.z, a0.z, s0);
    s0 = __dp4a(lo.w, a0.w, s0);
    int s1 = __dp4a(hi.x, a1.x, 0);
    s1 = __dp4a(hi.y, a1.y, s1);
    s1 = __dp4a(hi.z, a1.z, s1);
    s1 = __dp4a(hi.w, a1.w, s1);
    if (q4_0) {
        s0 -= 8 * as0;
        s1 -= 8 * as1;
        return (dw * da0) * i2f(s0) + (dw * da1) * i2f(s1);
    }
    return ((dw * da0) * i2f(s0) + (dw * da1) * i2f(s1)) + mw * ma;
}

__device__ __forceinline__ int4 q4_lo(int4 q) {
    const int m = 0x0F0F0F0F;
    return int4_of(q.x & m, q.y & m, q.z & m, q.w & m);
}

__device__ __forceinline__ int4 q4_hi(int4 q) {
    const int m = 0x0F0F0F0F;
    return int4_of((q.x >> 4) & m, (q.y >> 4) & m, (q.z >> 4) & m, (q.w >> 4) & m);
}

// A ternary group's codes (0..2, one per byte) from its 32-bit word: byte lanes 4t..4t+3 of
// the group are bits 2t..2t+1 of each byte.
__device__ __forceinline__ int4 t2_codes(int word) {
    const int m = 0x03030303;
    return int4_of(word & m, (word >> 2) & m, (word >> 4) & m, (word >> 6) & m);
}

// Groups per interleaved T2 chunk (repack.rs): in a whole chunk, group 32 j + l is word 4 l + j
// of the chunk, so lane l loads its four groups l, l + 32, l + 64, l + 96 as one int4; the groups
// past a row's last whole chunk keep their natural order.
#define T2_CHUNK 128

// The word of a T2 row of ng groups that holds group g.
__device__ __forceinline__ int t2_pos(int g, int ng) {
    int whole = ng & ~(T2_CHUNK - 1);
    return g >= whole ? g : (g & ~(T2_CHUNK - 1)) | ((g & 31) << 2) | ((g >> 5) & 3);
}

__device__ __forceinline__ int int4_at(int4 v, int j) {
    return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}

__device__ __forceinline__ float t2_term(int4 c, int4 av, float d, int sm) {
    int s = __dp4a(c.x, av.x, 0);
    s = __dp4a(c.y, av.y, s);
    s = __dp4a(c.z, av.z, s);
    s = __dp4a(c.w, av.w, s);
    return i2f(s - sm) * d;
}

// Σ_c W[r][c] a[c] for one row of any type but T2 (t2_rows), computed by one warp; the result is
// valid in every lane.
__device__ float row_dot(const Mat& w, int r, const float* xs, const i8* aq, const float* ad,
                         const int* as) {
    int lane = threadIdx.x & 31;
    const u8* row = w.qs + (long long)r * w.stride;
    float acc = 0.0f;
    // Lanes take consecutive 16-value groups (or 32-value blocks for 4-bit), so a warp's weight
    // loads are contiguous and its 16-byte shared-memory activation loads hit distinct banks.
    const int4* a4 = (const int4*)aq;
    if (w.fmt == FMT_Q8_0) {
        int ng = w.cols / 16;
        const float* dr = w.d + (long long)r * (w.cols / 32);
#pragma unroll 4
        for (int g = lane; g < ng; g += 32)
            acc += q8_term(*(const int4*)(row + g * 16), a4[g], dr[g >> 1], ad[g]);
    } else if (w.fmt == FMT_Q4_0 || w.fmt == FMT_Q4_1) {
        int nb = w.cols / 32;
        const float* dr = w.d + (long long)r * nb;
        bool q40 = w.fmt == FMT_Q4_0;
#pragma unroll 2
        for (int b = lane; b < nb; b += 32) {
            int4 q = *(const int4*)(row + b * 16);
            float mw = q40 ? 0.0f : w.m[(long long)r * nb + b];
            float ma = q40 ? 0.0f : q4_1_acts(ad[2 * b], ad[2 * b + 1], as[2 * b], as[2 * b + 1]);
            acc += q4_term(q4_lo(q), q4_hi(q), a4[2 * b], a4[2 * b + 1], dr[b], ad[2 * b],
                           ad[2 * b + 1], as[2 * b], as[2 * b + 1], mw, ma, q40);
        }
    } else if (w.fmt == FMT_F16) {
        const u16* h = (const u16*)row;
        for (int c = lane * 8; c < w.cols; c += 256) {
            int4 v = *(const int4*)(h + c);
            u32 u[4] = {(u32)v.x, (u32)v.y, (u32)v.z, (u32)v.w};
            for (int k = 0; k < 4; k++) {
                acc += f16_to_f32((u16)(u[k] & 0xffff)) * xs[c + 2 * k];
                acc += f16_to_f32((u16)(u[k] >> 16)) * xs[c + 2 * k + 1];
            }
        }
    } else {
        const float* f = (const float*)row;
        for (int c = lane; c < w.cols; c += 32) acc += f[c] * xs[c];
    }
    acc = warp_sum(acc);
    if (w.rs) acc *= w.rs[r];
    return acc;
}

// A 16-byte load that streams past L1 (no allocation there, read-only path): weights read once,
// so that L1 keeps the activations every row of a block reads.
__device__ __forceinline__ int4 ld_stream(const int4* p) {
    int4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// Rows a warp multiplies at once (T2 and quantized types).
#define WARP_ROWS 4

// The sums of one whole T2 chunk c of up to WARP_ROWS rows into acc: words[k] holds row k's
// 16-byte word of lane l (groups c + l + 32 j, j = 0..3), summed in that order.
__device__ __forceinline__ void t2_chunk(const int4* words, int c, int nr, const int4* a4,
                                         const float* ad, const int* as, float* acc) {
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int g = c + lane + 32 * j;
        int4 av = a4[g];
        float d = ad[g];
        int sm = as[g];
#pragma unroll
        for (int k = 0; k < WARP_ROWS; k++)
            if (k < nr) acc[k] += t2_term(t2_codes(int4_at(words[k], j)), av, d, sm);
    }
}

// T2 rows r .. r + WARP_ROWS of a matrix by one warp at once: each lane reads its groups'
// activations once for all the rows; in whole chunks one 16-byte load per row brings the lane's
// four groups (l, l + 32, l + 64, l + 96: the order of the one-group loop of the partial chunk,
// so the sums are the same). Rows past `nr` are skipped (their pointers repeat the last row's).
// FULL: whole chunks of R rows (R <= WARP_ROWS) take a loop of their own, with no per-row tests
// (more code and registers, for the T2-only gemv), which issues U chunks' loads together and
// whose loads stream past L1 when `cold` (the block's rows were not prefetched into L2:
// prefetch_block_rows).
template <bool FULL, int R = WARP_ROWS, int U = 1>
__device__ __forceinline__ void t2_rows(const Mat& w, int r, int nr, const i8* aq, const float* ad,
                                        const int* as, float* y, bool cold = false) {
    int lane = threadIdx.x & 31;
    int ng = w.cols / 16, whole = ng & ~(T2_CHUNK - 1);
    const int4* a4 = (const int4*)aq;
    const int* rw[WARP_ROWS];
#pragma unroll
    for (int k = 0; k < WARP_ROWS; k++) rw[k] = (const int*)(w.qs + (long long)(r + min(k, nr - 1)) * w.stride);
    float acc[WARP_ROWS];
#pragma unroll
    for (int k = 0; k < WARP_ROWS; k++) acc[k] = 0.0f;
    if (FULL && nr == R) {
        // U chunks' loads are issued together, then summed chunk after chunk (the
        // order of the loop below, so the sums do not change).
        int c = 0;
#pragma unroll 1
        for (; c + U * T2_CHUNK <= whole; c += U * T2_CHUNK) {
            int4 words[U][WARP_ROWS];
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int k = 0; k < R; k++) {
                    const int4* p = (const int4*)(rw[k] + c + u * T2_CHUNK) + lane;
                    words[u][k] = cold ? ld_stream(p) : *p;
                }
#pragma unroll
            for (int u = 0; u < U; u++)
                t2_chunk(words[u], c + u * T2_CHUNK, R, a4, ad, as, acc);
        }
#pragma unroll 1
        for (; c < whole; c += T2_CHUNK) {
            int4 words[WARP_ROWS];
#pragma unroll
            for (int k = 0; k < R; k++) {
                const int4* p = (const int4*)(rw[k] + c) + lane;
                words[k] = cold ? ld_stream(p) : *p;
            }
            t2_chunk(words, c, R, a4, ad, as, acc);
        }
    } else {
#pragma unroll 1
        for (int c = 0; c < whole; c += T2_CHUNK) {
            int4 words[WARP_ROWS];
            // Rows past nr (the same for the whole warp) are neither loaded nor summed.
#pragma unroll
            for (int k = 0; k < WARP_ROWS; k++)
                words[k] = k < nr ? ((const int4*)(rw[k] + c))[lane] : int4_of(0, 0, 0, 0);
            t2_chunk(words, c, nr, a4, ad, as, acc);
        }
    }
#pragma unroll 2
    for (int g = whole + lane; g < ng; g += 32) {
        int word[WARP_ROWS];
#pragma unroll
        for (int k = 0; k < WARP_ROWS; k++) word[k] = k < nr ? rw[k][g] : 0;
        int4 av = a4[g];
        float d = ad[g];
        int sm = as[g];
#pragma unroll
        for (int k = 0; k < WARP_ROWS; k++)
            if (k < nr) acc[k] += t2_term(t2_codes(word[k]), av, d, sm);
    }
#pragma unroll
    for (int k = 0; k < WARP_ROWS; k++) {
        float v = warp_sum(acc[k]);
        y[k] = w.rs ? v * w.rs[r + min(k, nr - 1)] : v;
    }
}

// Q8_0, Q4_0 or Q4_1 rows r .. r + nr (nr <= WARP_ROWS) by one warp at once, each summed exactly
// as row_dot sums it, with the rows' weight loads in flight together. Rows past `nr` repeat the
// last one and are not written.
__device__ __forceinline__ void quant_rows(const Mat& w, int r, int nr, const i8* aq,
                                           const float* ad, const int* as, float* y) {
    int lane = threadIdx.x & 31;
    const int4* a4 = (const int4*)aq;
    long long rr[WARP_ROWS];
    float acc[WARP_ROWS];
#pragma unroll
    for (int k = 0; k < WARP_ROWS; k++) {
        rr[k] = r + min(k, nr - 1);
        acc[k] = 0.0f;
    }
    int nb = w.cols / 32;
    if (w.fmt == FMT_Q8_0) {
#pragma unroll 2
        for (int g = lane; g < w.cols / 16; g += 32) {
            int4 av = a4[g];
            float da = ad[g];
#pragma unroll
            for (int k = 0; k < WARP_ROWS; k++)
                acc[k] += q8_term(*(const int4*)(w.qs + rr[k] * w.stride + g * 16), av,
                                  w.d[rr[k] * nb + (g >> 1)], da);
        }
    } else {
        bool q40 = w.fmt == FMT_Q4_0;
#pragma unroll 2
        for (int b = lane; b < nb; b += 32) {
            float ma = q40 ? 0.0f : q4_1_acts(ad[2 * b], ad[2 * b + 1], as[2 * b], as[2 * b + 1]);
#pragma unroll
            for (int k = 0; k < WARP_ROWS; k++) {
                int4 q = *(const int4*)(w.qs + rr[k] * w.stride + b * 16);
                float mw = q40 ? 0.0f : w.m[rr[k] * nb + b];
                acc[k] += q4_term(q4_lo(q), q4_hi(q), a4[2 * b], a4[2 * b + 1], w.d[rr[k] * nb + b],
                                  ad[2 * b], ad[2 * b + 1], as[2 * b], as[2 * b + 1], mw, ma, q40);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < WARP_ROWS; k++) {
        float v = warp_sum(acc[k]);
        y[k] = w.rs ? v * w.rs[rr[k]] : v;
    }
}

// How a warp multiplies a matrix's rows: ROWS_T2 and ROWS_QUANT WARP_ROWS rows at a time
// (t2_rows, quant_rows), ROWS_ONE one (row_dot: f16, f32); ROWS_T2_FULL is ROWS_T2 with
// t2_rows' loop for full rows (gemv_prepared_t2).
#define ROWS_T2 0
#define ROWS_QUANT 1
#define ROWS_ONE 2
#define ROWS_T2_FULL 3

__device__ __forceinline__ int rows_kind(int fmt) {
    return fmt == FMT_T2 ? ROWS_T2
           : (fmt == FMT_Q8_0 || fmt == FMT_Q4_0 || fmt == FMT_Q4_1) ? ROWS_QUANT
                                                                      : ROWS_ONE;
}

// Rows r .. r + nr of a job (nr <= WARP_ROWS, or 1 for ROWS_ONE) by one warp: the products,
// plus the bias, stored into or added to the output by lane 0. Instantiated apart for each
// rows_kind, so that a loop over one kind holds only its own code (and registers).
// `cold`: the rows were not prefetched (ROWS_T2_FULL streams them past L1).
template <int KIND, int R = WARP_ROWS, int U = 1>
__device__ __forceinline__ void job_rows(const Job& job, int r, int nr, const float* xs,
                                         const i8* aq, const float* ad, const int* as,
                                         bool cold = false) {
    float y[WARP_ROWS];
    if (KIND == ROWS_T2 || KIND == ROWS_T2_FULL)
        t2_rows<KIND == ROWS_T2_FULL, R, U>(job.w, r, nr, aq, ad, as, y, cold);
    else if (KIND == ROWS_QUANT)
        quant_rows(job.w, r, nr, aq, ad, as, y);
    else
        y[0] = row_dot(job.w, r, xs, aq, ad, as);
    if ((threadIdx.x & 31) != 0) return;
#pragma unroll
    for (int k = 0; k < WARP_ROWS; k++) {
        if (k >= nr) break;
        float v = y[k];
        if (job.bias) v += job.bias[r + k];
        if (job.mode == OUT_ADD)
            job.out[r + k] += v;
        else
            job.out[r + k] = v;
    }
}

// The job j whose block range holds blockIdx.x, and the rows r0 .. r1 of it this block takes.
__device__ __forceinline__ void block_rows(const Jobs& jobs, int& j, int& r0, int& r1) {
    j = 0;
    while (j + 1 < jobs.n && (int)blockIdx.x >= jobs.j[j + 1].first_block) j++;
    const Job& job = jobs.j[j];
    r0 = ((int)blockIdx.x - job.first_block) * jobs.rows_per_block;
    r1 = min(r0 + jobs.rows_per_block, job.w.rows);
}

// A gemv block prefetches its rows into L2 only when they take at most this many bytes, so a
// grid of a few blocks per SM prefetches well under the L2 cache's size: a matrix larger than it
// is streamed by the loads themselves, and not fetched twice.
#define BLOCK_PREFETCH_MAX (64 << 10)

__device__ __forceinline__ bool block_prefetched(const Mat& w, int r0, int r1) {
    return (long long)(r1 - r0) * w.stride <= BLOCK_PREFETCH_MAX;
}

// Prefetches the weights of a gemv block's rows (quantized bytes, block scales and minimums)
// into L2: issued before anything else, their loads overlap the input's preparation and, with a
// programmatic dependent launch, the kernel before.
__device__ void prefetch_block_rows(const Jobs& jobs) {
    int j, r0, r1;
    block_rows(jobs, j, r0, r1);
    const Mat& w = jobs.j[j].w;
    if (r1 <= r0) return;
    long long nb = w.cols / 32, nr = r1 - r0;
    if (!block_prefetched(w, r0, r1)) return;
    prefetch_l2(w.qs + r0 * w.stride, nr * w.stride);
    if (w.d) prefetch_l2(w.d + r0 * nb, nr * nb * 4);
    if (w.m) prefetch_l2(w.m + r0 * nb, nr * nb * 4);
}

// The rows of a gemv block: the job whose block range holds blockIdx.x, `rows_per_block` rows of
// it, each warp a contiguous share (WARP_ROWS rows at once where rows_kind allows).
// MULTI: quantized rows WARP_ROWS at a time where a warp has many (else one at a time, which
// needs fewer registers: the gemv of a prepared input, streaming large matrices, leaves it out).
// T2_ONLY: every job is T2 (gemv_prepared_t2), each warp taking R rows at a time and issuing the
// loads of U chunks of them together.
template <bool MULTI, bool T2_ONLY = false, int R = WARP_ROWS, int U = 1>
__device__ __forceinline__ void gemv_rows(const Jobs& jobs, const float* xs, const i8* aq,
                                          const float* ad, const int* as) {
    int j, r0, r1;
    block_rows(jobs, j, r0, r1);
    const Job& job = jobs.j[j];
    int warps = blockDim.x >> 5, wid = threadIdx.x >> 5;
    int per = (r1 - r0 + warps - 1) / warps;
    int w0 = r0 + wid * per, w1 = min(w0 + per, r1);
    int kind = rows_kind(job.w.fmt);
    if (T2_ONLY) {
        bool cold = !block_prefetched(job.w, r0, r1);
        for (int r = w0; r < w1; r += R)
            job_rows<ROWS_T2_FULL, R, U>(job, r, min(R, w1 - r), xs, aq, ad, as, cold);
    } else if (kind == ROWS_T2) {
        for (int r = w0; r < w1; r += WARP_ROWS)
            job_rows<ROWS_T2>(job, r, min(WARP_ROWS, w1 - r), xs, aq, ad, as);
    } else if (MULTI && kind == ROWS_QUANT && w1 - w0 >= 2 * WARP_ROWS) {
        // Many rows per warp (an output layer): several rows' loads in flight. With few, row_dot
        // keeps more of one row's loads in flight.
        for (int r = w0; r < w1; r += WARP_ROWS)
            job_rows<ROWS_QUANT>(job, r, min(WARP_ROWS, w1 - r), xs, aq, ad, as);
    } else {
        for (int r = w0; r < w1; r++) job_rows<ROWS_ONE>(job, r, 1, xs, aq, ad, as);
    }
}

// Matrix-vector products of up to MAX_JOBS matrices that share one input, which every block
// prepares for itself in shared memory (a normalization, a SwiGLU, the combination of the
// attention's partial results, or a plain copy) and quantizes to int8.
// Held to 3 blocks of 256 threads per SM (80 registers, with no spills on sm_90): the decode
// step's many small launches of it then run in one wave of 3 blocks per SM, where its 86
// registers left room for 2 (decode 9-10% faster on an H200).
#define GEMV_BLOCKS_PER_SM 3
extern "C" __global__ void __launch_bounds__(256, GEMV_BLOCKS_PER_SM)
    gemv(const __grid_constant__ Jobs jobs, const __grid_constant__ Prep prep) {
    extern __shared__ __align__(16) unsigned char smem[];
    int n = prep.n;
    float* sx = (float*)smem;
    float* sd = sx + n;
    int* ss = (int*)(sd + n / QS);
    i8* sq = (i8*)(ss + n / QS);
    prefetch_block_rows(jobs);
    grid_wait();
    grid_next();
    prepare(prep, sx, sq, sd, ss);
    gemv_rows<true>(jobs, sx, sq, sd, ss);
}

// The same products of an input prepared once in global memory (PREP_INT8: by `prep` or
// `quantize_acts`), read in place: the blocks start on their weights at once, and the kernel
// holds no preparation code (fewer registers, more blocks in flight).
extern "C" __global__ void gemv_prepared(const __grid_constant__ Jobs jobs,
                                         const __grid_constant__ Prep prep) {
    prefetch_block_rows(jobs);
    grid_wait();
    grid_next();
    gemv_rows<false>(jobs, prep.x, prep.qq, prep.qd, prep.qsum);
}

// gemv_prepared of T2 jobs only: with no other type's code, its registers go to keeping a warp's
// rows' loads and activations in flight, at the cost of occupancy that the other types need
// (hence a kernel of its own).
extern "C" __global__ void gemv_prepared_t2(const __grid_constant__ Jobs jobs,
                                            const __grid_constant__ Prep prep) {
    prefetch_block_rows(jobs);
    grid_wait();
    grid_next();
    gemv_rows<false, true>(jobs, prep.x, prep.qq, prep.qd, prep.qsum);
}

// gemv_prepared_t2 for matrices whose passes of four rows would fill less than half a wave of
// warps (e.g. 8192 rows on an H200's 132 SMs): warps take two rows at a time, so twice as many
// warps stream the matrix, and issue four chunks' loads together. Same sums, bit for bit.
// On an H200, 8192 x 8192: 37% -> 47-53% of the copy bandwidth; at 16384 x 16384 the four-row
// kernel stays faster (81-83% against 74-75%).
#define T2_NARROW_ROWS 2
#define T2_NARROW_UNROLL 4
extern "C" __global__ void gemv_prepared_t2_narrow(const __grid_constant__ Jobs jobs,
                                                   const __grid_constant__ Prep prep) {
    prefetch_block_rows(jobs);
    grid_wait();
    grid_next();
    gemv_rows<false, true, T2_NARROW_ROWS, T2_NARROW_UNROLL>(jobs, prep.x, prep.qq, prep.qd,
                                                             prep.qsum);
}

// ---------------------------------------------------------------------------------------------
// Batched prefill. The prompt's tokens go through each layer together: `prep` builds every
// token's input (the same `prepare` as the gemv, one block per token) into global memory, and
// `gemm` multiplies a tile of GEMM_TOKENS tokens by each weight row it reads. Every (row, token)
// product is summed exactly as the gemv sums it (lane l takes blocks l, l + 32, ...; one warp
// reduction), so a prompt prefilled in a batch leaves the same KV cache, bit for bit, as one fed
// token by token.

#define GEMM_TOKENS 16

// Where `prep` writes each token's prepared input, and the strides of its per-token inputs.
struct PrepOut {
    float* xs;         // [tokens][n] f32 input (read by the f16/f32 weight types)
    i8* q;             // [tokens][n]
    float* d;          // [tokens][n / 16]
    int* s;            // [tokens][n / 16]
    int x_stride;      // floats between tokens in x and x2
    int attn_stride;   // (head, split) entries between tokens in am/al (ao: times hd)
};

extern "C" __global__ void prep(const __grid_constant__ Prep p, const __grid_constant__ PrepOut o) {
    extern __shared__ __align__(16) unsigned char smem[];
    int n = p.n, t = blockIdx.x;
    float* xs = (float*)smem;
    float* ad = xs + n;
    int* as = (int*)(ad + n / QS);
    i8* aq = (i8*)(as + n / QS);
    grid_wait();
    grid_next();
    Prep mine = p;
    long long xo = (long long)t * o.x_stride, ao = (long long)t * o.attn_stride;
    if (p.x) mine.x = p.x + xo;
    if (p.x2) mine.x2 = p.x2 + xo;
    if (p.am) {
        mine.am = p.am + ao;
        mine.al = p.al + ao;
        mine.ao = p.ao + ao * p.hd;
        mine.tok = p.tok + t;
    }
    prepare(mine, xs, aq, ad, as);
    float* gx = o.xs + (long long)t * n;
    int* gq = (int*)(o.q + (long long)t * n);
    for (int i = threadIdx.x; i < n; i += blockDim.x) gx[i] = xs[i];
    for (int i = threadIdx.x; i < n / 4; i += blockDim.x) gq[i] = ((const int*)aq)[i];
    for (int g = threadIdx.x; g < n / QS; g += blockDim.x) {
        o.d[(long long)t * (n / QS) + g] = ad[g];
        o.s[(long long)t * (n / QS) + g] = as[g];
    }
}

// Prepared inputs of `ntok` tokens (the outputs of `prep`).
struct Acts {
    const float* xs;
    const i8* q;
    const float* d;
    const int* s;
    int n;
    int ntok;
};

// acc[k][t] += row rows[k] · token t's input, for GEMM_ROWS rows at once (sharing each token's
// activation loads) and the GEMM_TOKENS tokens staged in shared memory. T2: the matrix is T2
// (gemm_t2), else any other type (gemm): apart, so that neither kernel's registers are set by
// the other's code.
#define GEMM_ROWS 2
template <bool T2>
__device__ __forceinline__ void gemm_rows(const Mat& w, const int* rows, const Acts& a, int t0,
                                          const i8* aq, const float* ad, const int* as,
                                          const float* ama, float (*acc)[GEMM_TOKENS]) {
    int lane = threadIdx.x & 31;
    int n = a.n, ng = n / QS;
    const u8* row[GEMM_ROWS];
#pragma unroll
    for (int k = 0; k < GEMM_ROWS; k++) row[k] = w.qs + (long long)rows[k] * w.stride;
    if (T2) {
        for (int g = lane; g < ng; g += 32) {
            int4 c[GEMM_ROWS];
#pragma unroll
            for (int k = 0; k < GEMM_ROWS; k++) c[k] = t2_codes(((const int*)row[k])[t2_pos(g, ng)]);
#pragma unroll
            for (int t = 0; t < GEMM_TOKENS; t++) {
                int4 av = ((const int4*)(aq + t * n))[g];
                float d = ad[t * ng + g];
                int sm = as[t * ng + g];
#pragma unroll
                for (int k = 0; k < GEMM_ROWS; k++) acc[k][t] += t2_term(c[k], av, d, sm);
            }
        }
    } else if (w.fmt == FMT_Q8_0) {
        for (int g = lane; g < ng; g += 32) {
            int4 q[GEMM_ROWS];
            float dw[GEMM_ROWS];
#pragma unroll
            for (int k = 0; k < GEMM_ROWS; k++) {
                q[k] = *(const int4*)(row[k] + g * 16);
                dw[k] = w.d[(long long)rows[k] * (w.cols / 32) + (g >> 1)];
            }
#pragma unroll
            for (int t = 0; t < GEMM_TOKENS; t++) {
                int4 av = ((const int4*)(aq + t * n))[g];
                float da = ad[t * ng + g];
#pragma unroll
                for (int k = 0; k < GEMM_ROWS; k++) acc[k][t] += q8_term(q[k], av, dw[k], da);
            }
        }
    } else if (w.fmt == FMT_Q4_0 || w.fmt == FMT_Q4_1) {
        int nb = w.cols / 32;
        bool q40 = w.fmt == FMT_Q4_0;
        for (int b = lane; b < nb; b += 32) {
            int4 lo[GEMM_ROWS], hi[GEMM_ROWS];
            float dw[GEMM_ROWS], mw[GEMM_ROWS];
#pragma unroll
            for (int k = 0; k < GEMM_ROWS; k++) {
                int4 q = *(const int4*)(row[k] + b * 16);
                lo[k] = q4_lo(q);
                hi[k] = q4_hi(q);
                dw[k] = w.d[(long long)rows[k] * nb + b];
                mw[k] = q40 ? 0.0f : w.m[(long long)rows[k] * nb + b];
            }
#pragma unroll
            for (int t = 0; t < GEMM_TOKENS; t++) {
                const int4* a4 = (const int4*)(aq + t * n);
                int4 a0 = a4[2 * b], a1 = a4[2 * b + 1];
                float2 d = *(const float2*)(ad + t * ng + 2 * b);
                int2 sm = *(const int2*)(as + t * ng + 2 * b);
                float ma = ama[t * (n / 32) + b];
#pragma unroll
                for (int k = 0; k < GEMM_ROWS; k++)
                    acc[k][t] += q4_term(lo[k], hi[k], a0, a1, dw[k], d.x, d.y, sm.x, sm.y,
                                         mw[k], ma, q40);
            }
        }
    } else if (w.fmt == FMT_F16) {
#pragma unroll
        for (int k = 0; k < GEMM_ROWS; k++) {
            const u16* h = (const u16*)row[k];
            for (int c = lane * 8; c < w.cols; c += 256) {
                int4 v = *(const int4*)(h + c);
                u32 u[4] = {(u32)v.x, (u32)v.y, (u32)v.z, (u32)v.w};
#pragma unroll
                for (int t = 0; t < GEMM_TOKENS; t++) {
                    const float* xs = a.xs + (long long)min(t0 + t, a.ntok - 1) * n;
                    float s = acc[k][t];
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        s += f16_to_f32((u16)(u[e] & 0xffff)) * xs[c + 2 * e];
                        s += f16_to_f32((u16)(u[e] >> 16)) * xs[c + 2 * e + 1];
                    }
                    acc[k][t] = s;
                }
            }
        }
    } else {
#pragma unroll
        for (int k = 0; k < GEMM_ROWS; k++) {
            const float* f = (const float*)row[k];
            for (int c = lane; c < w.cols; c += 32) {
                float wv = f[c];
#pragma unroll
                for (int t = 0; t < GEMM_TOKENS; t++)
                    acc[k][t] += wv * a.xs[(long long)min(t0 + t, a.ntok - 1) * n + c];
            }
        }
    }
}

// One halving step of `warp_sum16`: keep M of the 2M values (the upper ones in lanes with bit
// 2M set), add the partner lane's copy of the kept ones.
template <int M>
__device__ __forceinline__ void warp_halve(float* v, int lane) {
    bool up = (lane & (2 * M)) != 0;
#pragma unroll
    for (int j = 0; j < M; j++) {
        float send = up ? v[j] : v[j + M];
        float keep = up ? v[j + M] : v[j];
        v[j] = keep + __shfl_xor_sync(0xffffffffu, send, 2 * M);
    }
}

// The warp sums of 16 values per lane in 16 shuffles (not 80): lane l returns the sum of
// v[l >> 1]. Every sum is added up in the same tree as `warp_sum` (lane pairs 16 apart, then
// 8, 4, 2, 1), so it is the same float bit for bit.
__device__ __forceinline__ float warp_sum16(float* v) {
    int lane = threadIdx.x & 31;
    warp_halve<8>(v, lane);
    warp_halve<4>(v, lane);
    warp_halve<2>(v, lane);
    warp_halve<1>(v, lane);
    return v[0] + __shfl_xor_sync(0xffffffffu, v[0], 1);
}

// Y[t] = W · input[t] (+ bias; stored or added) for up to MAX_JOBS matrices sharing one input.
// blockIdx.x picks the job and its rows as in `gemv`; blockIdx.y the tile of GEMM_TOKENS tokens,
// whose int8 inputs and scales the block stages in shared memory. Output row r of token t is
// out[t * rows + r]. T2: every job is T2 (gemm_t2); else none is (gemm).
template <bool T2>
__device__ __forceinline__ void gemm_body(const Jobs& jobs, const Acts& a) {
    extern __shared__ __align__(16) unsigned char smem[];
    int n = a.n, ng = n / QS;
    int t0 = blockIdx.y * GEMM_TOKENS;
    int nt = min(GEMM_TOKENS, a.ntok - t0);
    i8* aq = (i8*)smem;
    float* ad = (float*)(aq + GEMM_TOKENS * n);
    int* as = (int*)(ad + GEMM_TOKENS * ng);
    float* ama = (float*)(as + GEMM_TOKENS * ng);  // q4_1_acts per (token, 32-value block)
    {
        const int4* src = (const int4*)(a.q + (long long)t0 * n);
        int4* dst = (int4*)aq;
        int per = n / 16;
        for (int i = threadIdx.x; i < GEMM_TOKENS * per; i += blockDim.x)
            dst[i] = i / per < nt ? src[i] : int4_of(0, 0, 0, 0);
        for (int i = threadIdx.x; i < GEMM_TOKENS * ng; i += blockDim.x) {
            bool in = i / ng < nt;
            ad[i] = in ? a.d[(long long)t0 * ng + i] : 0.0f;
            as[i] = in ? a.s[(long long)t0 * ng + i] : 0;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < GEMM_TOKENS * (n / 32); i += blockDim.x)
        ama[i] = q4_1_acts(ad[2 * i], ad[2 * i + 1], as[2 * i], as[2 * i + 1]);
    __syncthreads();
    int j = 0;
    while (j + 1 < jobs.n && (int)blockIdx.x >= jobs.j[j + 1].first_block) j++;
    const Job& job = jobs.j[j];
    int r0 = ((int)blockIdx.x - job.first_block) * jobs.rows_per_block;
    int r1 = min(r0 + jobs.rows_per_block, job.w.rows);
    int warps = blockDim.x >> 5, wid = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int per = (r1 - r0 + warps - 1) / warps;
    int w0 = r0 + wid * per, w1 = min(w0 + per, r1);
    int tok = lane >> 1;
    for (int r = w0; r < w1; r += GEMM_ROWS) {
        // Rows past w1 repeat the last one and are not written.
        int rows[GEMM_ROWS];
        float acc[GEMM_ROWS][GEMM_TOKENS];
#pragma unroll
        for (int k = 0; k < GEMM_ROWS; k++) {
            rows[k] = min(r + k, w1 - 1);
#pragma unroll
            for (int t = 0; t < GEMM_TOKENS; t++) acc[k][t] = 0.0f;
        }
        gemm_rows<T2>(job.w, rows, a, t0, aq, ad, as, ama, acc);
#pragma unroll
        for (int k = 0; k < GEMM_ROWS; k++) {
            float y = warp_sum16(acc[k]);
            if (r + k < w1 && (lane & 1) == 0 && tok < nt) {
                int rr = r + k;
                if (job.w.rs) y *= job.w.rs[rr];
                if (job.bias) y += job.bias[rr];
                float* o = job.out + (long long)(t0 + tok) * job.w.rows + rr;
                if (job.mode == OUT_ADD)
                    *o += y;
                else
                    *o = y;
            }
        }
    }
}

extern "C" __global__ void gemm(const __grid_constant__ Jobs jobs, const __grid_constant__ Acts a) {
    gemm_body<false>(jobs, a);
}

extern "C" __global__ void gemm_t2(const __grid_constant__ Jobs jobs,
                                   const __grid_constant__ Acts a) {
    gemm_body<true>(jobs, a);
}

// Standalone quantizer (tests, and inputs of large matrices shared by many blocks).
extern "C" __global__ void quantize_acts(const float* x, int n, i8* q, float* d, int* s) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g < n / QS) quantize_group(x + g * QS, q + g * QS, d + g, s + g);
}

// Integer partial sums of the T2 product for tests: isum[r][g] = Σ (c - 1) a over group g.
extern "C" __global__ void t2_isums(Mat w, const i8* aq, const int* as, int* isum) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= w.rows) return;
    const u8* row = w.qs + (long long)r * w.stride;
    const int* a = (const int*)aq;
    int ng = w.cols / QS;
    for (int g = 0; g < ng; g++) {
        int word = ((const int*)row)[t2_pos(g, ng)];
        int s = 0;
        for (int t = 0; t < 4; t++) s = __dp4a((word >> (2 * t)) & 0x03030303, a[g * 4 + t], s);
        isum[(long long)r * ng + g] = s - as[g];
    }
}

// Value e of row t of the embedding matrix, dequantized.
__device__ float embed_value(const Mat& w, long long t, int e) {
    const u8* row = w.qs + t * w.stride;
    float v;
    if (w.fmt == FMT_Q8_0) {
        v = w.d[t * (w.cols / 32) + e / 32] * (float)(i8)row[e];
    } else if (w.fmt == FMT_Q4_0 || w.fmt == FMT_Q4_1) {
        int b = e / 32, i = e % 32;
        u8 byte = row[b * 16 + (i % 16)];
        int q = i < 16 ? (byte & 15) : (byte >> 4);
        float d = w.d[t * (w.cols / 32) + b];
        v = w.fmt == FMT_Q4_0 ? (float)(q - 8) * d : (float)q * d + w.m[t * (w.cols / 32) + b];
    } else if (w.fmt == FMT_T2) {
        int i = e % 16;
        u8 byte = row[4 * t2_pos(e / 16, w.cols / 16) + (i % 4)];
        v = (float)((int)((byte >> (2 * (i / 4))) & 3) - 1);
    } else if (w.fmt == FMT_F16) {
        v = f16_to_f32(((const u16*)row)[e]);
    } else {
        v = ((const float*)row)[e];
    }
    if (w.rs) v *= w.rs[t];
    return v;
}

// x[e] = row `*tok` of the embedding matrix, dequantized; blockIdx.y indexes a batch of tokens
// (x holds `cols` values per token).
extern "C" __global__ void embed(Mat w, const int* tok, float* x) {
    grid_wait();
    grid_next();
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= w.cols) return;
    x[(long long)blockIdx.y * w.cols + e] = embed_value(w, tok[blockIdx.y], e);
}

// Threads of a decode attention block: at least the split's `chunk` positions (one score per
// thread); the value sums are split over ATTN_THREADS / hd slices of positions.
#define ATTN_THREADS 256

struct Attn {
    const float* q;     // [n_heads * hd] this step's queries (before RoPE)
    const float* k;     // [n_kv * hd] this step's key (before RoPE)
    const float* v;     // [n_kv * hd]
    u8* kc;             // this layer's key cache [context][n_kv * hd], int8 or f16
    u8* vc;
    float* ks;          // int8 cache: one scale per (position, kv head) [context][n_kv]
    float* vs;
    const int* pos;     // the position being decoded
    float* om;          // [n_heads][nsplit]
    float* ol;
    float* oo;          // [n_heads][nsplit][hd]
    int n_heads;
    int n_kv;
    int hd;
    int chunk;          // positions per split (<= blockDim.x, which is ATTN_THREADS)
    int nsplit;
    int int8_kv;
    int rope_halves;    // 1: pairs (i, i + hd/2) (NeoX); 0: adjacent pairs
    float theta;
    // Prefill batches: blockIdx.z is the token, at position pos[0] + blockIdx.z, whose query is
    // q + z * q_stride (key and value: k, v + z * kv_stride); `stored`: the keys and values of
    // the batch are already in the cache (written by `kv_store`).
    int q_stride;
    int kv_stride;
    int stored;
    int ntok;           // attention_tile: tokens in the batch
    int tile;           // attention: stage each split's rows in shared memory (stage_rows)
    int pad;
};

// RoPE at `pos` of a and, when not null, b (a query and a key of the same position: the same
// angles).
__device__ void rope_pair(float* a, float* b, int hd, int pos, float theta, int halves) {
    int half = hd / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
        float angle = (float)pos * inv_freq;
        float c = cosf(angle), s = sinf(angle);
        int ia = halves ? i : 2 * i, ib = halves ? i + half : 2 * i + 1;
        float x0 = a[ia], x1 = a[ib];
        a[ia] = x0 * c - x1 * s;
        a[ib] = x0 * s + x1 * c;
        if (b) {
            x0 = b[ia];
            x1 = b[ib];
            b[ia] = x0 * c - x1 * s;
            b[ib] = x0 * s + x1 * c;
        }
    }
}

__device__ void rope_inplace(float* h, int hd, int pos, float theta, int halves) {
    rope_pair(h, nullptr, hd, pos, theta, halves);
}

// The int8 scale of a head vector, d = amax / 127, computed by one warp (every lane gets it).
__device__ __forceinline__ float int8_scale(const float* x, int hd) {
    float a = 0.0f;
    for (int e = threadIdx.x & 31; e < hd; e += 32) a = fmaxf(a, fabsf(x[e]));
    return warp_max(a) / 127.0f;
}

// The cached form of this step's key and value of KV head `kvh` (RoPE applied, in knew/vnew):
// int8 in kq/vq with the scales in sc[0], sc[1] (set by the caller with int8_scale), or rounded
// through f16 in knew/vnew. Written to the cache at `pos` when `store`. No block barrier.
__device__ void kv_cached(const Attn& p, int kvh, int pos, float* knew, float* vnew, i8* kq,
                          i8* vq, const float* sc, bool store) {
    int hd = p.hd;
    long long row = (long long)pos * p.n_kv * hd + kvh * hd;
    if (p.int8_kv) {
        // One scale per head vector: q = rint(x / d).
        float ik = sc[0] > 0.0f ? 1.0f / sc[0] : 0.0f;
        float iv = sc[1] > 0.0f ? 1.0f / sc[1] : 0.0f;
        for (int e = threadIdx.x; e < hd; e += blockDim.x) {
            kq[e] = (i8)__float2int_rn(knew[e] * ik);
            vq[e] = (i8)__float2int_rn(vnew[e] * iv);
            if (store) {
                p.kc[row + e] = (u8)kq[e];
                p.vc[row + e] = (u8)vq[e];
            }
        }
        if (store && threadIdx.x == 0) {
            p.ks[(long long)pos * p.n_kv + kvh] = sc[0];
            p.vs[(long long)pos * p.n_kv + kvh] = sc[1];
        }
    } else {
        for (int e = threadIdx.x; e < hd; e += blockDim.x) {
            u16 kh = f32_to_f16(knew[e]), vh = f32_to_f16(vnew[e]);
            knew[e] = f16_to_f32(kh);
            vnew[e] = f16_to_f32(vh);
            if (store) {
                ((u16*)p.kc)[row + e] = kh;
                ((u16*)p.vc)[row + e] = vh;
            }
        }
    }
}

// This step's key (RoPE applied) and value of KV head `kvh` at `pos`, in the form the cache holds
// them (kv_cached), written to the cache when `store`. Used by `kv_store`; the decode attention
// runs the same steps interleaved with its query's, so both write the same bytes.
__device__ void kv_new(const Attn& p, int kvh, int pos, const float* k, const float* v,
                       float* knew, float* vnew, i8* kq, i8* vq, float* sc, bool store) {
    int hd = p.hd;
    for (int e = threadIdx.x; e < hd; e += blockDim.x) {
        knew[e] = k[kvh * hd + e];
        vnew[e] = v[kvh * hd + e];
    }
    __syncthreads();
    rope_inplace(knew, hd, pos, p.theta, p.rope_halves);
    __syncthreads();
    if (p.int8_kv) {
        if (threadIdx.x < 32) {
            float dk = int8_scale(knew, hd), dv = int8_scale(vnew, hd);
            if (threadIdx.x == 0) {
                sc[0] = dk;
                sc[1] = dv;
            }
        }
        __syncthreads();
    }
    kv_cached(p, kvh, pos, knew, vnew, kq, vq, sc, store);
    __syncthreads();
}

// Prefill: RoPE and cache store of a batch's keys and values, one block per (KV head, token).
extern "C" __global__ void kv_store(Attn p) {
    __shared__ float knew[256];
    __shared__ float vnew[256];
    __shared__ __align__(16) i8 kq[256];
    __shared__ __align__(16) i8 vq[256];
    __shared__ float sc[2];
    int z = blockIdx.y;
    kv_new(p, blockIdx.x, p.pos[0] + z, p.k + (long long)z * p.kv_stride,
           p.v + (long long)z * p.kv_stride, knew, vnew, kq, vq, sc, true);
}

// Where one KV head's cached keys and values are read from: the cache itself (first = 0,
// stride = n_kv * hd values per position) or a tile of it staged in shared memory (first = the
// tile's first position, stride = hd).
struct KvRows {
    const u8* k;      // this head's values of position `first` (int8 or f16)
    const u8* v;
    const float* ks;  // int8: scale of position `first`
    const float* vs;
    int first;
    int stride;       // key values between positions
    int vstride;      // value values between positions
    int sstride;      // scales between positions
};

// Per-block scratch of `attend`.
struct AttnSmem {
    float probs[1024];
    float part[1024];
    float scratch[32];
};

// Attention of one query over positions start..end of one split (one position per thread):
// writes the split's max score, sum of exponentials and unnormalized output. With `has_new`,
// position `pos` comes from this step's key and value in shared memory (kq/knew, vq/vnew and
// the scales `kd_new`, `vd_new`) instead of the cache. Shared by the decode and prefill kernels,
// so that both compute every score and sum in the same order.
__device__ void attend(const Attn& p, const KvRows& src, int pos, int start, int end, bool has_new,
                       const float* q, const i8* qq, float qscale, const float* knew,
                       const i8* kq, float kd_new, const float* vnew, const i8* vq, float vd_new,
                       AttnSmem& sm, float* om, float* ol, float* oo) {
    int hd = p.hd;
    float scale = 1.0f / sqrtf((float)hd);
    // Scores: one position per thread.
    int t = start + threadIdx.x;
    float score = neg_inf();
    if (t < end) {
        long long row = (long long)(t - src.first) * src.stride;
        bool fresh = has_new && t == pos;
        if (p.int8_kv) {
            const int4* kr = fresh ? (const int4*)kq : (const int4*)(src.k + row);
            const int4* qw = (const int4*)qq;
            int s = 0;
#pragma unroll 4
            for (int w = 0; w < hd / 16; w++) {
                int4 kv = kr[w], qv = qw[w];
                s = __dp4a(kv.x, qv.x, s);
                s = __dp4a(kv.y, qv.y, s);
                s = __dp4a(kv.z, qv.z, s);
                s = __dp4a(kv.w, qv.w, s);
            }
            float kd = fresh ? kd_new : src.ks[(long long)(t - src.first) * src.sstride];
            score = ((float)s * (qscale * kd)) * scale;
        } else {
            float s = 0.0f;
            if (fresh) {
                for (int e = 0; e < hd; e++) s += q[e] * knew[e];
            } else {
                const int4* kr = (const int4*)((const u16*)src.k + row);
#pragma unroll 8
                for (int w = 0; w < hd / 8; w++) {
                    int4 v = kr[w];
                    u32 u[4] = {(u32)v.x, (u32)v.y, (u32)v.z, (u32)v.w};
                    for (int k = 0; k < 4; k++) {
                        s += q[w * 8 + 2 * k] * f16_to_f32((u16)(u[k] & 0xffff));
                        s += q[w * 8 + 2 * k + 1] * f16_to_f32((u16)(u[k] >> 16));
                    }
                }
            }
            score = s * scale;
        }
    }
    float mx = block_max(score, sm.scratch);
    float e = t < end ? expf(score - mx) : 0.0f;
    float den = block_sum(e, sm.scratch);
    sm.probs[threadIdx.x] = e;
    __syncthreads();
    // Output: thread (dim e, slice s) sums its slice of positions; slices combined below.
    int slices = blockDim.x / hd;
    int dim = threadIdx.x % hd, sl = threadIdx.x / hd;
    float acc = 0.0f;
    if (sl < slices && !has_new) {
        // Every position from src: the same products, added in the same order, as below, with
        // a pointer stepped per position. Unrolled so that several loads are in flight at once.
        long long first = (long long)(start + sl - src.first);
        long long vstep = (long long)slices * src.vstride, sstep = (long long)slices * src.sstride;
        int n = end - start;
        if (p.int8_kv) {
            const i8* vp = (const i8*)src.v + first * src.vstride + dim;
            const float* sp = src.vs + first * src.sstride;
#pragma unroll 8
            for (int i = sl; i < n; i += slices, vp += vstep, sp += sstep) {
                float vv = (float)*vp * *sp;
                acc += sm.probs[i] * vv;
            }
        } else {
            const u16* vp = (const u16*)src.v + first * src.vstride + dim;
#pragma unroll 8
            for (int i = sl; i < n; i += slices, vp += vstep) acc += sm.probs[i] * f16_to_f32(*vp);
        }
    } else if (sl < slices) {
        // Unrolled so that several positions' loads are in flight at once.
#pragma unroll 8
        for (int i = sl; i < end - start; i += slices) {
            int tp = start + i;
            bool fresh = has_new && tp == pos;
            long long at = (long long)(tp - src.first) * src.vstride + dim;
            float vv;
            if (p.int8_kv) {
                vv = fresh ? (float)vq[dim] * vd_new
                           : (float)(i8)src.v[at] * src.vs[(long long)(tp - src.first) * src.sstride];
            } else {
                vv = fresh ? vnew[dim] : f16_to_f32(((const u16*)src.v)[at]);
            }
            acc += sm.probs[i] * vv;
        }
    }
    sm.part[threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.x < hd) {
        float o = 0.0f;
        for (int s = 0; s < slices; s++) o += sm.part[s * hd + threadIdx.x];
        oo[threadIdx.x] = o;
    }
    if (threadIdx.x == 0) {
        *om = mx;
        *ol = den;
    }
    __syncthreads();
}

__device__ void attend_empty(float* om, float* ol, float* oo, int hd) {
    if (threadIdx.x == 0) {
        *om = neg_inf();
        *ol = 0.0f;
    }
    for (int e = threadIdx.x; e < hd; e += blockDim.x) oo[e] = 0.0f;
}

// The cache of KV head `kvh` as a KvRows.
__device__ KvRows cache_rows(const Attn& p, int kvh) {
    int kv_dim = p.n_kv * p.hd, eb = p.int8_kv ? 1 : 2;
    KvRows r;
    r.k = p.kc + (long long)kvh * p.hd * eb;
    r.v = p.vc + (long long)kvh * p.hd * eb;
    r.ks = p.ks + kvh;
    r.vs = p.vs + kvh;
    r.first = 0;
    r.stride = kv_dim;
    r.vstride = kv_dim;
    r.sstride = p.n_kv;
    return r;
}

// Stages positions start..end of KV head `kvh` in shared memory (`tile`, sized on the host by
// attention_rows_smem: keys with rows padded by 16 bytes so that a thread per row reads distinct
// banks, then values, then int8 scales), all loads of the block issued together, and returns
// the rows there. The new position's row may be stale (its writer is another block): `attend`
// uses this step's own key and value for it.
__device__ KvRows stage_rows(const Attn& p, int kvh, int start, int end, unsigned char* tile) {
    int hd = p.hd, eb = p.int8_kv ? 1 : 2, krow = hd * eb + 16;
    KvRows c = cache_rows(p, kvh);
    unsigned char* tk = tile;
    unsigned char* tv = tile + p.chunk * krow;
    float* tks = (float*)(tv + p.chunk * hd * eb);
    float* tvs = tks + p.chunk;
    int per = hd * eb / 16;
    for (int i = threadIdx.x; i < (end - start) * per; i += blockDim.x) {
        int r = i / per, w = i % per;
        long long at = (long long)(start + r) * c.stride * eb;
        ((int4*)tk)[r * (per + 1) + w] = ((const int4*)(c.k + at))[w];
        ((int4*)tv)[i] = ((const int4*)(c.v + at))[w];
    }
    if (p.int8_kv)
        for (int i = threadIdx.x; i < end - start; i += blockDim.x) {
            tks[i] = c.ks[(long long)(start + i) * c.sstride];
            tvs[i] = c.vs[(long long)(start + i) * c.sstride];
        }
    KvRows r;
    r.k = tk;
    r.v = tv;
    r.ks = tks;
    r.vs = tvs;
    r.first = start;
    r.stride = krow / eb;
    r.vstride = hd;
    r.sstride = 1;
    return r;
}

// Writes this step's key and value of position `pos` (as kv_cached made them: int8 in kq/vq with
// the scales sc[0], sc[1], or f16-rounded in knew/vnew) into its row of the staged rows `rows`
// (stage_rows). No block barrier.
__device__ void stage_new_row(const Attn& p, const KvRows& rows, int pos, const float* knew,
                              const float* vnew, const i8* kq, const i8* vq, const float* sc) {
    int hd = p.hd, r = pos - rows.first;
    if (p.int8_kv) {
        i8* k = (i8*)rows.k + (long long)r * rows.stride;
        i8* v = (i8*)rows.v + (long long)r * rows.vstride;
        for (int e = threadIdx.x; e < hd; e += blockDim.x) {
            k[e] = kq[e];
            v[e] = vq[e];
        }
        if (threadIdx.x == 0) {
            ((float*)rows.ks)[r * rows.sstride] = sc[0];
            ((float*)rows.vs)[r * rows.sstride] = sc[1];
        }
    } else {
        u16* k = (u16*)rows.k + (long long)r * rows.stride;
        u16* v = (u16*)rows.v + (long long)r * rows.vstride;
        for (int e = threadIdx.x; e < hd; e += blockDim.x) {
            k[e] = f32_to_f16(knew[e]);
            v[e] = f32_to_f16(vnew[e]);
        }
    }
}

// Shared memory of one decode attention block, besides the staged rows.
struct AttnScratch {
    float q[256];
    float knew[256];
    float vnew[256];
    __align__(16) i8 qq[256];
    __align__(16) i8 kq[256];
    __align__(16) i8 vq[256];
    AttnSmem sm;
    float sc[2];
    float qscale;
};

// One (head h, split sp, batch token z) of decode attention over positions 0..=pos (flash-decoding: each split
// writes its max, sum of exponentials and unnormalized output; the next gemv combines them).
// The block whose split holds `pos` applies RoPE to this step's key, stores key and value in the
// cache (int8 with a scale per position and head, or f16), and uses the stored form itself.
// In a prefill batch (gridDim.z tokens, `stored`), every key is read from the cache.
__device__ void attention_block(const Attn& p, int h, int sp, int z, unsigned char* tile,
                                AttnScratch& s) {
    int hd = p.hd;
    int kvh = h / (p.n_heads / p.n_kv);
    int pos = p.pos[0] + z;
    int start = sp * p.chunk, end = min(start + p.chunk, pos + 1);
    long long part_idx = ((long long)z * p.n_heads + h) * p.nsplit + sp;
    float* om = p.om + part_idx;
    float* ol = p.ol + part_idx;
    float* oo = p.oo + part_idx * hd;
    if (start >= end) {
        grid_wait();
        grid_next();
        attend_empty(om, ol, oo, hd);
        return;
    }
    bool has_new = !p.stored && pos < end;
    // Every global load at once: the split's cached rows (written by earlier steps: staged
    // before grid_wait, while the kernel before may still run), then the query and this step's
    // key and value (in the split holding pos); then RoPE of the query and key with the same
    // angles, then their int8 forms (the key's and value's as kv_new makes them), in three
    // barriers.
    KvRows src = p.tile ? stage_rows(p, kvh, start, end, tile) : cache_rows(p, kvh);
    grid_wait();
    grid_next();
    const float* qin = p.q + (long long)z * p.q_stride + h * hd;
    for (int e = threadIdx.x; e < hd; e += blockDim.x) {
        s.q[e] = qin[e];
        if (has_new) {
            s.knew[e] = p.k[kvh * hd + e];
            s.vnew[e] = p.v[kvh * hd + e];
        }
    }
    __syncthreads();
    rope_pair(s.q, has_new ? s.knew : nullptr, hd, pos, p.theta, p.rope_halves);
    __syncthreads();
    if (p.int8_kv) {
        int w = threadIdx.x >> 5;
        if (w == 0) {
            float d = int8_scale(s.q, hd);
            if (threadIdx.x == 0) s.qscale = d;
        } else if (w == 1 && has_new) {
            float dk = int8_scale(s.knew, hd), dv = int8_scale(s.vnew, hd);
            if ((threadIdx.x & 31) == 0) {
                s.sc[0] = dk;
                s.sc[1] = dv;
            }
        }
        __syncthreads();
        float iq = s.qscale > 0.0f ? 1.0f / s.qscale : 0.0f;
        for (int e = threadIdx.x; e < hd; e += blockDim.x) s.qq[e] = (i8)__float2int_rn(s.q[e] * iq);
    }
    if (has_new) {
        bool writer = (h % (p.n_heads / p.n_kv)) == 0;
        kv_cached(p, kvh, pos, s.knew, s.vnew, s.kq, s.vq, s.sc, writer);
    }
    bool fresh = has_new;
    if (has_new && p.tile) {
        // The staged row of pos is stale (its writer is another block): put this step's key and
        // value there, in the cache's form, so that `attend` reads every position alike (the
        // same values as from s.knew/s.kq and s.vnew/s.vq, so the same sums).
        __syncthreads();
        stage_new_row(p, src, pos, s.knew, s.vnew, s.kq, s.vq, s.sc);
        fresh = false;
    }
    __syncthreads();
    attend(p, src, pos, start, end, fresh, s.q, s.qq, s.qscale, s.knew, s.kq, s.sc[0], s.vnew,
           s.vq, s.sc[1], s.sm, om, ol, oo);
}

extern "C" __global__ void attention(Attn p) {
    extern __shared__ __align__(16) unsigned char tile[];
    __shared__ AttnScratch s;
    attention_block(p, blockIdx.x, blockIdx.y, blockIdx.z, tile, s);
}

// Prefill attention: one warp per query, ATTN_WARPS consecutive tokens per block (blockIdx.z
// tiles the batch of `ntok`), over one (head, split) whose keys and values the block stages in
// shared memory once. Each warp computes exactly what `attention`'s block computes for its
// query (thread t's score is lane t % 32's value t / 32; the block reductions become the same
// trees of warp sums), without block barriers, so the queries run side by side.
#define ATTN_WARPS 8
extern "C" __global__ void attention_tile(Attn p) {
    extern __shared__ __align__(16) unsigned char tile[];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    int h = blockIdx.x, sp = blockIdx.y, hd = p.hd, chunk = p.chunk;
    int kvh = h / (p.n_heads / p.n_kv);
    int eb = p.int8_kv ? 1 : 2;
    int z0 = blockIdx.z * ATTN_WARPS, zn = min(ATTN_WARPS, p.ntok - z0);
    int pos0 = p.pos[0] + z0;
    int start = sp * chunk;
    int kend = min(start + chunk, pos0 + zn);
    // Key rows are padded by 16 bytes: lane l reads row l, and unpadded rows of 64 or 128 bytes
    // would put every lane's load in the same shared-memory banks.
    int krow = hd * eb + 16;
    const u8* tk = tile;
    const u8* tv = tile + chunk * krow;
    float* tks = (float*)(tv + chunk * hd * eb);
    float* tvs = tks + chunk;
    if (start < kend) {
        // Stage positions start..kend of this KV head: values, then (int8) scales.
        KvRows c = cache_rows(p, kvh);
        int per = hd * eb / 16;
        for (int i = threadIdx.x; i < (kend - start) * per; i += blockDim.x) {
            int t = start + i / per, w = i % per;
            long long at = (long long)t * c.stride * eb;
            ((int4*)tk)[(i / per) * (per + 1) + w] = ((const int4*)(c.k + at))[w];
            ((int4*)tv)[i] = ((const int4*)(c.v + at))[w];
        }
        if (p.int8_kv)
            for (int i = threadIdx.x; i < kend - start; i += blockDim.x) {
                tks[i] = c.ks[(long long)(start + i) * c.sstride];
                tvs[i] = c.vs[(long long)(start + i) * c.sstride];
            }
    }
    __syncthreads();
    if (wid >= zn) return;
    float* q = (float*)(tvs + chunk) + wid * (hd + hd / 4 + chunk);
    i8* qq = (i8*)(q + hd);
    float* probs = q + hd + hd / 4;
    int z = z0 + wid, pos = pos0 + wid;
    int end = min(start + chunk, pos + 1);
    long long part_idx = ((long long)z * p.n_heads + h) * p.nsplit + sp;
    float* om = p.om + part_idx;
    float* ol = p.ol + part_idx;
    float* oo = p.oo + part_idx * hd;
    if (start >= end) {
        if (lane == 0) {
            *om = neg_inf();
            *ol = 0.0f;
        }
        for (int e = lane; e < hd; e += 32) oo[e] = 0.0f;
        return;
    }
    // The query, as load_query makes it.
    const float* qin = p.q + (long long)z * p.q_stride + h * hd;
    for (int e = lane; e < hd; e += 32) q[e] = qin[e];
    __syncwarp();
    {
        int half = hd / 2;
        for (int i = lane; i < half; i += 32) {
            float inv_freq = 1.0f / powf(p.theta, (float)(2 * i) / (float)hd);
            float angle = (float)pos * inv_freq;
            float c = cosf(angle), sn = sinf(angle);
            int ia = p.rope_halves ? i : 2 * i, ib = p.rope_halves ? i + half : 2 * i + 1;
            float x0 = q[ia], x1 = q[ib];
            q[ia] = x0 * c - x1 * sn;
            q[ib] = x0 * sn + x1 * c;
        }
    }
    __syncwarp();
    float qscale = 0.0f;
    if (p.int8_kv) {
        float aq = 0.0f;
        for (int e = lane; e < hd; e += 32) aq = fmaxf(aq, fabsf(q[e]));
        qscale = warp_max(aq) / 127.0f;
        float iq = qscale > 0.0f ? 1.0f / qscale : 0.0f;
        for (int e = lane; e < hd; e += 32) qq[e] = (i8)__float2int_rn(q[e] * iq);
        __syncwarp();
    }
    // Scores of positions start + 32 j + lane (the block's thread 32 j + lane).
    float scale = 1.0f / sqrtf((float)hd);
    int nj = chunk / 32;
    float sc[8];
    float mloc = neg_inf();
#pragma unroll
    for (int j = 0; j < 8; j++) {
        sc[j] = neg_inf();
        int t = start + 32 * j + lane;
        if (j < nj && t < end) {
            int row = (t - start) * krow;
            if (p.int8_kv) {
                const int4* kr = (const int4*)(tk + row);
                const int4* qw = (const int4*)qq;
                int s = 0;
                for (int w = 0; w < hd / 16; w++) {
                    int4 kv = kr[w], qv = qw[w];
                    s = __dp4a(kv.x, qv.x, s);
                    s = __dp4a(kv.y, qv.y, s);
                    s = __dp4a(kv.z, qv.z, s);
                    s = __dp4a(kv.w, qv.w, s);
                }
                sc[j] = ((float)s * (qscale * tks[t - start])) * scale;
            } else {
                const int4* kr = (const int4*)(tk + row);
                float s = 0.0f;
                for (int w = 0; w < hd / 8; w++) {
                    int4 v = kr[w];
                    u32 u[4] = {(u32)v.x, (u32)v.y, (u32)v.z, (u32)v.w};
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        s += q[w * 8 + 2 * k] * f16_to_f32((u16)(u[k] & 0xffff));
                        s += q[w * 8 + 2 * k + 1] * f16_to_f32((u16)(u[k] >> 16));
                    }
                }
                sc[j] = s * scale;
            }
        }
        mloc = fmaxf(mloc, sc[j]);
    }
    float mx = warp_max(mloc);
    // block_sum: a warp sum per 32 positions, then the warp sum of those (lane j holds j's).
    float mine = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        if (j < nj) {
            int t = start + 32 * j + lane;
            float e = t < end ? expf(sc[j] - mx) : 0.0f;
            probs[32 * j + lane] = e;
            float ws = warp_sum(e);
            if (lane == j) mine = ws;
        }
    }
    float den = warp_sum(mine);
    __syncwarp();
    // Values: the block's thread (dim, slice s) sums positions s, s + slices, ... in order, and
    // the slices' sums are added in order; here lane l does that for dims l + 32 m, one slice
    // after another (at most 8 dims per lane: hd <= 256).
    int slices = ATTN_THREADS / hd;
    int dims = (hd + 31) / 32;
    int cnt = end - start;
    float o[8];
#pragma unroll
    for (int m = 0; m < 8; m++) o[m] = 0.0f;
    for (int sl = 0; sl < slices; sl++) {
        float acc[8];
#pragma unroll
        for (int m = 0; m < 8; m++) acc[m] = 0.0f;
#pragma unroll 4
        for (int i = sl; i < cnt; i += slices) {
            float pr = probs[i];
            int at = i * hd + lane;
            float vs = p.int8_kv ? tvs[i] : 0.0f;
#pragma unroll
            for (int m = 0; m < 8; m++) {
                if (m < dims && lane + 32 * m < hd) {
                    float vv = p.int8_kv ? (float)(i8)tv[at + 32 * m] * vs
                                         : f16_to_f32(((const u16*)tv)[at + 32 * m]);
                    acc[m] += pr * vv;
                }
            }
        }
#pragma unroll
        for (int m = 0; m < 8; m++) o[m] += acc[m];
    }
#pragma unroll
    for (int m = 0; m < 8; m++)
        if (m < dims && lane + 32 * m < hd) oo[lane + 32 * m] = o[m];
    if (lane == 0) {
        *om = mx;
        *ol = den;
    }
}

struct Sample {
    float temperature;  // <= 0: greedy
    int top_k;          // 1..=64 when sampling
    float top_p;
    float min_p;
    u64 seed;
};

__device__ __forceinline__ u64 splitmix64(u64 x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Picks the next token on the device and advances the position: greedy (the first index of the
// largest logit) or top-k / temperature / top-p / min-p sampling with a counter-based generator.
// `state[0]` is the token (written here, read by the next step's embedding), `state[1]` the
// position, `state[2..4]` the sampling counter. Run by one block (of any size: the choice is the
// same).
#define SCAN_UNROLL 8
__device__ void sample_block(const float* logits, int n, int* state, const Sample* sp) {
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    __shared__ float top_v[64];
    __shared__ int top_i[64];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    Sample s = *sp;
    int k = s.temperature > 0.0f ? max(1, min(s.top_k, 64)) : 1;
    float prev_v = __int_as_float(0x7f800000);
    int prev_i = -1;
    for (int round = 0; round < k; round++) {
        // The largest (value, lowest index) strictly after (prev_v, prev_i) in that order.
        float bv = neg_inf();
        int bi = 0x7fffffff;
        // SCAN_UNROLL logits per thread loaded at once, then compared in index order.
        for (int i0 = threadIdx.x; i0 < n; i0 += SCAN_UNROLL * blockDim.x) {
            float vs[SCAN_UNROLL];
#pragma unroll
            for (int u = 0; u < SCAN_UNROLL; u++) {
                int i = i0 + u * blockDim.x;
                vs[u] = i < n ? logits[i] : neg_inf();
            }
#pragma unroll
            for (int u = 0; u < SCAN_UNROLL; u++) {
                int i = i0 + u * blockDim.x;
                float v = vs[u];
                bool after = v < prev_v || (v == prev_v && i > prev_i);
                if (i < n && after && (v > bv || (v == bv && i < bi))) {
                    bv = v;
                    bi = i;
                }
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) {
                bv = ov;
                bi = oi;
            }
        }
        __syncthreads();
        if (lane == 0) {
            best_v[wid] = bv;
            best_i[wid] = bi;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float v = best_v[0];
            int i = best_i[0];
            for (int w = 1; w < (int)(blockDim.x >> 5); w++)
                if (best_v[w] > v || (best_v[w] == v && best_i[w] < i)) {
                    v = best_v[w];
                    i = best_i[w];
                }
            top_v[round] = v;
            top_i[round] = i;
        }
        __syncthreads();
        prev_v = top_v[round];
        prev_i = top_i[round];
    }
    if (threadIdx.x == 0) {
        int chosen = top_i[0];
        if (k > 1) {
            float inv_t = 1.0f / s.temperature;
            float p[64], total = 0.0f;
            for (int i = 0; i < k; i++) {
                p[i] = expf((top_v[i] - top_v[0]) * inv_t);
                total += p[i];
            }
            int keep = k;
            float cum = 0.0f;
            for (int i = 0; i < k; i++) {
                cum += p[i] / total;
                if (p[i] / total < s.min_p * (p[0] / total)) {
                    keep = i;
                    break;
                }
                if (cum >= s.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            keep = max(keep, 1);
            float kept = 0.0f;
            for (int i = 0; i < keep; i++) kept += p[i];
            u64 counter = ((u64)(u32)state[3] << 32) | (u32)state[2];
            u64 r = splitmix64(s.seed ^ splitmix64(counter));
            counter++;
            state[2] = (int)(u32)counter;
            state[3] = (int)(u32)(counter >> 32);
            float u = (float)(r >> 40) * (1.0f / 16777216.0f) * kept;
            float c = 0.0f;
            chosen = top_i[keep - 1];
            for (int i = 0; i < keep; i++) {
                c += p[i];
                if (u < c) {
                    chosen = top_i[i];
                    break;
                }
            }
        }
        // Every logit NaN leaves no candidate: token 0, so the next embedding stays in range.
        state[0] = chosen == 0x7fffffff ? 0 : chosen;
        state[1] += 1;
    }
}

extern "C" __global__ void sample(const float* logits, int n, int* state, const Sample* sp) {
    grid_wait();
    grid_next();
    sample_block(logits, n, state, sp);
}

// Reads n 16-byte words and nothing else (each block leaves the xor of what it read in
// out[blockIdx.x]): the read bandwidth a single launch of a plain streaming kernel reaches on a
// buffer of that size, against which the gemv benchmarks' figures can be read.
extern "C" __global__ void stream_read(const int4* p, long long n, int* out) {
    int acc = 0;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n; i += 4 * stride) {
        int4 a = ld_stream(p + i), b = ld_stream(p + i + stride);
        int4 c = ld_stream(p + i + 2 * stride), d = ld_stream(p + i + 3 * stride);
        acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w;
        acc ^= c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n; i += stride) {
        int4 a = ld_stream(p + i);
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
    }
    for (int o = 16; o > 0; o >>= 1) acc ^= __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) atomicXor(out + blockIdx.x, acc);
}

// Advances the position without sampling (prompt positions whose logits nobody needs).
extern "C" __global__ void advance(int* state) {
    grid_wait();
    grid_next();
    if (threadIdx.x == 0 && blockIdx.x == 0) state[1] += 1;
}

// ---------------------------------------------------------------------------------------------
// Persistent decode: the whole step (embedding, every layer, output layer, sampling) in one
// launch of as many blocks as the device runs at once. The blocks go through the step's phases
// together, separated by grid barriers, and each phase calls the device functions the separate
// kernels call, so a step computes the same values, bit for bit, as the graph of kernels
// (tested). It saves the launch and drain of ~150 kernels per token, but on an H200 its phases
// take longer than the kernels (one block per SM runs fewer warps than a kernel's grid), so it is
// opt-in (README).

// One gemv phase: the jobs and how their shared input is prepared.
struct Phase {
    Jobs jobs;
    Prep prep;
};

// One layer's phases (the arguments of the graph's five kernels).
struct PLayer {
    Phase qkv;
    Attn attn;
    Phase o;
    Phase gu;
    Phase down;
};

struct Persist {
    const PLayer* layers;  // [n_layers], in device memory
    Mat embed;
    Phase head;
    float* x;
    float* logits;
    const Sample* sample;
    int* state;
    unsigned* bar;         // the grid barrier's count of arrivals, zeroed before each launch
    long long* times;      // null, or block 0's clock64() stamps (profiling; see stamp)
    float* best_v;         // [gridDim.x]: each block's largest logit (greedy sampling)
    int* best_i;           // [gridDim.x]: its index (the lowest among equals)
    int n_layers;
    int vocab;
    int with_head;         // 0: advance the position without the output layer and sampling
    int barriers;          // > 0: only run this many grid barriers (measuring them)
    int pad;
};

__device__ __forceinline__ unsigned ld_acquire(const unsigned* a) {
#if __CUDA_ARCH__ >= 700
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(a) : "memory");
    return v;
#else
    unsigned v = *(const volatile unsigned*)a;
    __threadfence();
    return v;
#endif
}

// Profiling: block 0 records clock64() at point `sub` of phase `ph` (0: start, 1: input
// prepared, 2: arrived at the closing barrier) in times[3 ph + sub].
__device__ __forceinline__ void stamp(const Persist& p, int ph, int sub) {
    if (p.times && blockIdx.x == 0 && threadIdx.x == 0) p.times[3 * ph + sub] = clock64();
}

// Barrier k (1, 2, ... within the launch): waits until every block of the grid has arrived, so
// that what any block wrote before it is visible to every block after it. bar counts arrivals
// since the launch, and barrier k waits for k times the grid. Needs every block resident at once
// (a cooperative launch).
__device__ void grid_sync(const Persist& p, int& k) {
    __syncthreads();
    stamp(p, k, 2);
    k++;
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(p.bar, 1u);
        unsigned target = (unsigned)k * gridDim.x;
        while (ld_acquire(p.bar) < target) {
        }
    }
    __syncthreads();
    stamp(p, k, 0);
}

// The rows of unit u of a phase (WARP_ROWS rows of a ternary matrix, one otherwise: the jobs'
// units one after another): its job j, first row r and row count nr. False past the last unit.
__device__ __forceinline__ bool phase_unit(const Jobs& jobs, int u, int& j, int& r, int& nr) {
    for (j = 0; j < jobs.n; j++) {
        int unit = rows_kind(jobs.j[j].w.fmt) == ROWS_T2 ? WARP_ROWS : 1;
        int nu = (jobs.j[j].w.rows + unit - 1) / unit;
        if (u < nu) {
            r = u * unit;
            nr = min(unit, jobs.j[j].w.rows - r);
            return true;
        }
        u -= nu;
    }
    return false;
}

// A gemv phase over the whole grid: unit u (see phase_unit) to warp u mod the grid's warps. A
// block with no unit skips the input's preparation. With `best` (the output layer under greedy
// sampling), each block also leaves the largest of its outputs and its index in best_v/best_i.
__device__ void phase_gemv(const Phase& ph, unsigned char* smem, const Persist* best,
                           const Persist& p, int k) {
    __shared__ float wbest_v[32];
    __shared__ int wbest_i[32];
    int warps = blockDim.x >> 5, wid = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int j, r, nr;
    if (!phase_unit(ph.jobs, blockIdx.x * warps, j, r, nr)) {
        if (best && threadIdx.x == 0) {
            best->best_v[blockIdx.x] = neg_inf();
            best->best_i[blockIdx.x] = 0x7fffffff;
        }
        return;
    }
    int n = ph.prep.n;
    float* xs = (float*)smem;
    float* ad = xs + n;
    int* as = (int*)(ad + n / QS);
    i8* aq = (i8*)(as + n / QS);
    prepare(ph.prep, xs, aq, ad, as);
    stamp(p, k, 1);
    float bv = neg_inf();
    int bi = 0x7fffffff;
    for (int u = blockIdx.x * warps + wid; phase_unit(ph.jobs, u, j, r, nr); u += gridDim.x * warps) {
        const Job& job = ph.jobs.j[j];
        if (rows_kind(job.w.fmt) == ROWS_T2)
            job_rows<ROWS_T2>(job, r, nr, xs, aq, ad, as);
        else
            job_rows<ROWS_ONE>(job, r, nr, xs, aq, ad, as);
        if (best && lane == 0)
            for (int k = 0; k < nr; k++) {
                float v = job.out[r + k];
                if (v > bv || (v == bv && r + k < bi)) {
                    bv = v;
                    bi = r + k;
                }
            }
    }
    if (!best) return;
    if (lane == 0) {
        wbest_v[wid] = bv;
        wbest_i[wid] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < warps; w++)
            if (wbest_v[w] > bv || (wbest_v[w] == bv && wbest_i[w] < bi)) {
                bv = wbest_v[w];
                bi = wbest_i[w];
            }
        best->best_v[blockIdx.x] = bv;
        best->best_i[blockIdx.x] = bi;
    }
}

// Greedy sampling from the blocks' candidates (by block 0): the first index of the largest
// logit, as sample_block picks it; writes the token and advances the position.
__device__ void pick_greedy(const Persist& p) {
    __shared__ float wv[32];
    __shared__ int wi[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    float bv = neg_inf();
    int bi = 0x7fffffff;
    for (int b = threadIdx.x; b < (int)gridDim.x; b += blockDim.x) {
        float v = p.best_v[b];
        int i = p.best_i[b];
        if (v > bv || (v == bv && i < bi)) {
            bv = v;
            bi = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    if (lane == 0) {
        wv[wid] = bv;
        wi[wid] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (wv[w] > bv || (wv[w] == bv && wi[w] < bi)) {
                bv = wv[w];
                bi = wi[w];
            }
        // Every logit NaN: token 0, as sample_block picks then.
        p.state[0] = bi == 0x7fffffff ? 0 : bi;
        p.state[1] += 1;
    }
}

// The decode attention over the grid: one (head, split) per block at a time, for the splits
// that hold positions up to the current one (the combination reads no other).
__device__ void phase_attention(const Attn& p, unsigned char* tile, AttnScratch& s) {
    int active = p.pos[0] / p.chunk + 1;
    for (int b = blockIdx.x; b < p.n_heads * active; b += gridDim.x) {
        attention_block(p, b / active, b % active, 0, tile, s);
        __syncthreads();
    }
}

// One decode step, in blocks of ATTN_THREADS (the attention's block).
extern "C" __global__ void decode_persistent(const __grid_constant__ Persist p) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ AttnScratch as;
    int k = 0;
    stamp(p, 0, 0);
    if (p.barriers > 0) {
        for (int i = 0; i < p.barriers; i++) grid_sync(p, k);
        return;
    }
    {
        long long tok = p.state[0];
        for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < p.embed.cols;
             e += gridDim.x * blockDim.x)
            p.x[e] = embed_value(p.embed, tok, e);
    }
    grid_sync(p, k);
    for (int i = 0; i < p.n_layers; i++) {
        const PLayer& l = p.layers[i];
        phase_gemv(l.qkv, smem, nullptr, p, k);
        grid_sync(p, k);
        phase_attention(l.attn, smem, as);
        grid_sync(p, k);
        phase_gemv(l.o, smem, nullptr, p, k);
        grid_sync(p, k);
        phase_gemv(l.gu, smem, nullptr, p, k);
        grid_sync(p, k);
        phase_gemv(l.down, smem, nullptr, p, k);
        grid_sync(p, k);
    }
    if (p.with_head) {
        bool greedy = p.sample->temperature <= 0.0f;
        phase_gemv(p.head, smem, greedy ? &p : nullptr, p, k);
        grid_sync(p, k);
        if (blockIdx.x == 0) {
            if (greedy)
                pick_greedy(p);
            else
                sample_block(p.logits, p.vocab, p.state, p.sample);
        }
    } else if (blockIdx.x == 0 && threadIdx.x == 0) {
        p.state[1] += 1;
    }
    stamp(p, k, 2);
}
