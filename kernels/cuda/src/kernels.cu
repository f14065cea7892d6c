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

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

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
    // INT8: activations already quantized (qs [n], d and sums [n / 16]).
    const i8* qq;
    const float* qd;
    const int* qsum;
};

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// Fills xs[n] (f32 input), aq[n] (int8), ad/as[n / 16] in shared memory.
__device__ void prepare(const Prep& p, float* xs, i8* aq, float* ad, int* as, float* scratch) {
    int n = p.n;
    if (p.kind == PREP_INT8) {
        const int* src = (const int*)p.qq;
        int* dst = (int*)aq;
        for (int i = threadIdx.x; i < n / 4; i += blockDim.x) dst[i] = src[i];
        for (int g = threadIdx.x; g < n / QS; g += blockDim.x) {
            ad[g] = p.qd[g];
            as[g] = p.qsum[g];
        }
        __syncthreads();
        return;
    }
    if (p.kind == PREP_RMSNORM) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) ss += p.x[i] * p.x[i];
        ss = block_sum(ss, scratch);
        float s = 1.0f / sqrtf(ss / (float)n + p.eps);
        for (int i = threadIdx.x; i < n; i += blockDim.x) xs[i] = (p.x[i] * s) * p.w[i];
    } else if (p.kind == PREP_SWIGLU) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) xs[i] = silu(p.x[i]) * p.x2[i];
    } else if (p.kind == PREP_ATTN) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            int h = i / p.hd, e = i % p.hd;
            const float* m = p.am + h * p.nsplit;
            const float* l = p.al + h * p.nsplit;
            float mx = neg_inf();
            for (int s = 0; s < p.nsplit; s++) mx = fmaxf(mx, m[s]);
            float den = 0.0f, num = 0.0f;
            for (int s = 0; s < p.nsplit; s++) {
                if (l[s] > 0.0f) {
                    float f = expf(m[s] - mx);
                    den += l[s] * f;
                    num += p.ao[(h * p.nsplit + s) * p.hd + e] * f;
                }
            }
            xs[i] = num / den;
        }
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x) xs[i] = p.x[i];
    }
    __syncthreads();
    for (int g = threadIdx.x; g < n / QS; g += blockDim.x)
        quantize_group(xs + g * QS, aq + g * QS, ad + g, as + g);
    __syncthreads();
}

// Σ_c W[r][c] a[c] for one row, computed by one warp; the result is valid in every lane.
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
        for (int g = lane; g < ng; g += 32) {
            int4 q = *(const int4*)(row + g * 16);
            int4 av = a4[g];
            int s = __dp4a(q.x, av.x, 0);
            s = __dp4a(q.y, av.y, s);
            s = __dp4a(q.z, av.z, s);
            s = __dp4a(q.w, av.w, s);
            acc += (dr[g >> 1] * ad[g]) * (float)s;
        }
    } else if (w.fmt == FMT_Q4_0 || w.fmt == FMT_Q4_1) {
        int nb = w.cols / 32;
        const float* dr = w.d + (long long)r * nb;
#pragma unroll 2
        for (int b = lane; b < nb; b += 32) {
            int4 q = *(const int4*)(row + b * 16);
            int4 a0 = a4[2 * b], a1 = a4[2 * b + 1];
            const int m = 0x0F0F0F0F;
            int s0 = __dp4a(q.x & m, a0.x, 0);
            s0 = __dp4a(q.y & m, a0.y, s0);
            s0 = __dp4a(q.z & m, a0.z, s0);
            s0 = __dp4a(q.w & m, a0.w, s0);
            int s1 = __dp4a((q.x >> 4) & m, a1.x, 0);
            s1 = __dp4a((q.y >> 4) & m, a1.y, s1);
            s1 = __dp4a((q.z >> 4) & m, a1.z, s1);
            s1 = __dp4a((q.w >> 4) & m, a1.w, s1);
            float dw = dr[b], da0 = ad[2 * b], da1 = ad[2 * b + 1];
            if (w.fmt == FMT_Q4_0) {
                s0 -= 8 * as[2 * b];
                s1 -= 8 * as[2 * b + 1];
                acc += (dw * da0) * (float)s0 + (dw * da1) * (float)s1;
            } else {
                float mw = w.m[(long long)r * nb + b];
                acc += ((dw * da0) * (float)s0 + (dw * da1) * (float)s1) +
                       mw * (da0 * (float)as[2 * b] + da1 * (float)as[2 * b + 1]);
            }
        }
    } else if (w.fmt == FMT_T2) {
        // Group g of a row is its 32-bit word g (see scalar/ternary.rs): shifting by 2t and
        // masking gives elements 4t..4t+3 of the group, one byte each.
        const int m = 0x03030303;
        int ng = w.cols / 16;
        const int* rw = (const int*)row;
        for (int g = lane; g < ng; g += 32) {
            int word = rw[g];
            int4 av = a4[g];
            int s = __dp4a(word & m, av.x, 0);
            s = __dp4a((word >> 2) & m, av.y, s);
            s = __dp4a((word >> 4) & m, av.z, s);
            s = __dp4a((word >> 6) & m, av.w, s);
            acc += (float)(s - as[g]) * ad[g];
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

// T2 rows r .. r + T2_ROWS of a matrix by one warp at once: each lane reads its group's
// activations from shared memory once for all the rows, and has one 4-byte load per row in
// flight. Rows past `nr` repeat the last one and are not written.
#define T2_ROWS 4
__device__ void t2_rows(const Mat& w, int r, int nr, const i8* aq, const float* ad, const int* as,
                        float* y) {
    int lane = threadIdx.x & 31;
    const int m = 0x03030303;
    int ng = w.cols / 16;
    const int4* a4 = (const int4*)aq;
    const int* rw[T2_ROWS];
#pragma unroll
    for (int k = 0; k < T2_ROWS; k++) rw[k] = (const int*)(w.qs + (long long)(r + min(k, nr - 1)) * w.stride);
    float acc[T2_ROWS];
#pragma unroll
    for (int k = 0; k < T2_ROWS; k++) acc[k] = 0.0f;
#pragma unroll 2
    for (int g = lane; g < ng; g += 32) {
        int word[T2_ROWS];
#pragma unroll
        for (int k = 0; k < T2_ROWS; k++) word[k] = rw[k][g];
        int4 av = a4[g];
        float d = ad[g];
        int sm = as[g];
#pragma unroll
        for (int k = 0; k < T2_ROWS; k++) {
            int s = __dp4a(word[k] & m, av.x, 0);
            s = __dp4a((word[k] >> 2) & m, av.y, s);
            s = __dp4a((word[k] >> 4) & m, av.z, s);
            s = __dp4a((word[k] >> 6) & m, av.w, s);
            acc[k] += (float)(s - sm) * d;
        }
    }
#pragma unroll
    for (int k = 0; k < T2_ROWS; k++) {
        float v = warp_sum(acc[k]);
        y[k] = w.rs ? v * w.rs[r + min(k, nr - 1)] : v;
    }
}

// Matrix-vector products of up to MAX_JOBS matrices that share one input, which every block
// prepares for itself in shared memory (a normalization, a SwiGLU, the combination of the
// attention's partial results, or a plain copy) and quantizes to int8. Block b works on the job
// whose block range holds b, `rows_per_block` rows of it, one row per warp at a time.
extern "C" __global__ void gemv(const __grid_constant__ Jobs jobs, const __grid_constant__ Prep prep) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ float scratch[32];
    int n = prep.n;
    float* xs = (float*)smem;
    float* ad = xs + n;
    int* as = (int*)(ad + n / QS);
    i8* aq = (i8*)(as + n / QS);
    prepare(prep, xs, aq, ad, as, scratch);
    int j = 0;
    while (j + 1 < jobs.n && (int)blockIdx.x >= jobs.j[j + 1].first_block) j++;
    const Job& job = jobs.j[j];
    int r0 = ((int)blockIdx.x - job.first_block) * jobs.rows_per_block;
    int r1 = min(r0 + jobs.rows_per_block, job.w.rows);
    // Each warp takes a contiguous share of the block's rows: ternary rows up to T2_ROWS at
    // once, the other types one at a time.
    int warps = blockDim.x >> 5, wid = threadIdx.x >> 5;
    int per = (r1 - r0 + warps - 1) / warps;
    int w0 = r0 + wid * per, w1 = min(w0 + per, r1);
    bool lead = (threadIdx.x & 31) == 0;
    if (job.w.fmt == FMT_T2) {
        for (int r = w0; r < w1; r += T2_ROWS) {
            int nr = min(T2_ROWS, w1 - r);
            float y[T2_ROWS];
            t2_rows(job.w, r, nr, aq, ad, as, y);
            if (lead)
                for (int k = 0; k < nr; k++) {
                    float v = y[k];
                    if (job.bias) v += job.bias[r + k];
                    if (job.mode == OUT_ADD)
                        job.out[r + k] += v;
                    else
                        job.out[r + k] = v;
                }
        }
        return;
    }
    for (int r = w0; r < w1; r++) {
        float y = row_dot(job.w, r, xs, aq, ad, as);
        if (lead) {
            if (job.bias) y += job.bias[r];
            if (job.mode == OUT_ADD)
                job.out[r] += y;
            else
                job.out[r] = y;
        }
    }
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
        int word = *(const int*)(row + g * 4);
        int s = 0;
        for (int t = 0; t < 4; t++) s = __dp4a((word >> (2 * t)) & 0x03030303, a[g * 4 + t], s);
        isum[(long long)r * ng + g] = s - as[g];
    }
}

// x[e] = row `*tok` of the embedding matrix, dequantized.
extern "C" __global__ void embed(Mat w, const int* tok, float* x) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= w.cols) return;
    long long t = tok[0];
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
        int b = e / 64, k = (e % 64) / 16, i = e % 16;
        u8 byte = row[b * 16 + 4 * k + (i % 4)];
        v = (float)((int)((byte >> (2 * (i / 4))) & 3) - 1);
    } else if (w.fmt == FMT_F16) {
        v = f16_to_f32(((const u16*)row)[e]);
    } else {
        v = ((const float*)row)[e];
    }
    if (w.rs) v *= w.rs[t];
    x[e] = v;
}

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
    int chunk;          // positions per split (== blockDim.x)
    int nsplit;
    int int8_kv;
    int rope_halves;    // 1: pairs (i, i + hd/2) (NeoX); 0: adjacent pairs
    float theta;
};

__device__ void rope_inplace(float* h, int hd, int pos, float theta, int halves) {
    int half = hd / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
        float angle = (float)pos * inv_freq;
        float c = cosf(angle), s = sinf(angle);
        int a = halves ? i : 2 * i, b = halves ? i + half : 2 * i + 1;
        float x0 = h[a], x1 = h[b];
        h[a] = x0 * c - x1 * s;
        h[b] = x0 * s + x1 * c;
    }
}

// One (head, split) of decode attention over positions 0..=pos (flash-decoding: each split
// writes its max, sum of exponentials and unnormalized output; the next gemv combines them).
// The block whose split holds `pos` applies RoPE to this step's key, stores key and value in the
// cache (int8 with a scale per position and head, or f16), and uses the stored form itself.
extern "C" __global__ void attention(Attn p) {
    __shared__ float q[256];
    __shared__ float knew[256];
    __shared__ float vnew[256];
    __shared__ __align__(16) i8 qq[256];
    __shared__ __align__(16) i8 kq[256];
    __shared__ __align__(16) i8 vq[256];
    __shared__ float probs[1024];
    __shared__ float part[1024];
    __shared__ float scratch[32];
    __shared__ float qscale, kscale_new, vscale_new;
    int h = blockIdx.x, sp = blockIdx.y, hd = p.hd;
    int kvh = h / (p.n_heads / p.n_kv);
    int kv_dim = p.n_kv * hd;
    int pos = p.pos[0];
    int start = sp * p.chunk, end = min(start + p.chunk, pos + 1);
    float* om = p.om + h * p.nsplit + sp;
    float* ol = p.ol + h * p.nsplit + sp;
    float* oo = p.oo + ((long long)h * p.nsplit + sp) * hd;
    if (start >= end) {
        if (threadIdx.x == 0) {
            *om = neg_inf();
            *ol = 0.0f;
        }
        for (int e = threadIdx.x; e < hd; e += blockDim.x) oo[e] = 0.0f;
        return;
    }
    for (int e = threadIdx.x; e < hd; e += blockDim.x) q[e] = p.q[h * hd + e];
    bool has_new = pos < end;
    if (has_new)
        for (int e = threadIdx.x; e < hd; e += blockDim.x) {
            knew[e] = p.k[kvh * hd + e];
            vnew[e] = p.v[kvh * hd + e];
        }
    __syncthreads();
    rope_inplace(q, hd, pos, p.theta, p.rope_halves);
    if (has_new) rope_inplace(knew, hd, pos, p.theta, p.rope_halves);
    __syncthreads();
    bool writer = has_new && (h % (p.n_heads / p.n_kv)) == 0;
    long long row_new = (long long)pos * kv_dim + kvh * hd;
    if (p.int8_kv) {
        // One scale per head vector: d = amax / 127, q = rint(x / d).
        if (threadIdx.x < 32) {
            int lane = threadIdx.x;
            float aq = 0.0f, ak = 0.0f, av = 0.0f;
            for (int e = lane; e < hd; e += 32) {
                aq = fmaxf(aq, fabsf(q[e]));
                if (has_new) {
                    ak = fmaxf(ak, fabsf(knew[e]));
                    av = fmaxf(av, fabsf(vnew[e]));
                }
            }
            aq = warp_max(aq);
            ak = warp_max(ak);
            av = warp_max(av);
            if (lane == 0) {
                qscale = aq / 127.0f;
                kscale_new = ak / 127.0f;
                vscale_new = av / 127.0f;
            }
        }
        __syncthreads();
        float iq = qscale > 0.0f ? 1.0f / qscale : 0.0f;
        float ik = kscale_new > 0.0f ? 1.0f / kscale_new : 0.0f;
        float iv = vscale_new > 0.0f ? 1.0f / vscale_new : 0.0f;
        for (int e = threadIdx.x; e < hd; e += blockDim.x) {
            qq[e] = (i8)__float2int_rn(q[e] * iq);
            if (has_new) {
                kq[e] = (i8)__float2int_rn(knew[e] * ik);
                vq[e] = (i8)__float2int_rn(vnew[e] * iv);
                if (writer) {
                    p.kc[row_new + e] = (u8)kq[e];
                    p.vc[row_new + e] = (u8)vq[e];
                }
            }
        }
        if (writer && threadIdx.x == 0) {
            p.ks[(long long)pos * p.n_kv + kvh] = kscale_new;
            p.vs[(long long)pos * p.n_kv + kvh] = vscale_new;
        }
    } else if (has_new) {
        for (int e = threadIdx.x; e < hd; e += blockDim.x) {
            u16 kh = f32_to_f16(knew[e]), vh = f32_to_f16(vnew[e]);
            knew[e] = f16_to_f32(kh);
            vnew[e] = f16_to_f32(vh);
            if (writer) {
                ((u16*)p.kc)[row_new + e] = kh;
                ((u16*)p.vc)[row_new + e] = vh;
            }
        }
    }
    __syncthreads();
    float scale = 1.0f / sqrtf((float)hd);
    // Scores: one position per thread.
    int t = start + threadIdx.x;
    float score = neg_inf();
    if (t < end) {
        long long row = (long long)t * kv_dim + kvh * hd;
        if (p.int8_kv) {
            const int4* kr = t == pos ? (const int4*)kq : (const int4*)(p.kc + row);
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
            float kd = t == pos ? kscale_new : p.ks[(long long)t * p.n_kv + kvh];
            score = ((float)s * (qscale * kd)) * scale;
        } else {
            float s = 0.0f;
            if (t == pos) {
                for (int e = 0; e < hd; e++) s += q[e] * knew[e];
            } else {
                const int4* kr = (const int4*)((const u16*)p.kc + row);
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
    float mx = block_max(score, scratch);
    float e = t < end ? expf(score - mx) : 0.0f;
    float den = block_sum(e, scratch);
    probs[threadIdx.x] = e;
    __syncthreads();
    // Output: thread (dim e, slice s) sums its slice of positions; slices combined below.
    int slices = blockDim.x / hd;
    int dim = threadIdx.x % hd, sl = threadIdx.x / hd;
    float acc = 0.0f;
    if (sl < slices) {
        // Unrolled so that several positions' loads are in flight at once.
#pragma unroll 8
        for (int i = sl; i < end - start; i += slices) {
            int tp = start + i;
            float vv;
            if (p.int8_kv) {
                vv = tp == pos ? (float)vq[dim] * vscale_new
                               : (float)(i8)p.vc[(long long)tp * kv_dim + kvh * hd + dim] *
                                     p.vs[(long long)tp * p.n_kv + kvh];
            } else {
                vv = tp == pos ? vnew[dim]
                               : f16_to_f32(((const u16*)p.vc)[(long long)tp * kv_dim + kvh * hd + dim]);
            }
            acc += probs[i] * vv;
        }
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.x < hd) {
        float o = 0.0f;
        for (int s = 0; s < slices; s++) o += part[s * hd + threadIdx.x];
        oo[threadIdx.x] = o;
    }
    if (threadIdx.x == 0) {
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
// position, `state[2..4]` the sampling counter. One block of 1024 threads.
extern "C" __global__ void sample(const float* logits, int n, int* state, const Sample* sp) {
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
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float v = logits[i];
            bool after = v < prev_v || (v == prev_v && i > prev_i);
            if (after && (v > bv || (v == bv && i < bi))) {
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
        state[0] = chosen;
        state[1] += 1;
    }
}

// Advances the position without sampling (prompt positions whose logits nobody needs).
extern "C" __global__ void advance(int* state) {
    if (threadIdx.x == 0 && blockIdx.x == 0) state[1] += 1;
}
