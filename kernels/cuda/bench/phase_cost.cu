// What one dependent phase of a decode step costs when the whole step runs in one launch: the
// floor under any "megakernel" design of the decode, measured on the device at hand. Built and
// run by xtask/scripts/gpu-check.sh with nvcc (not part of the runtime):
//
//   nvcc -O3 -arch=sm_90 -o phase_cost kernels/cuda/bench/phase_cost.cu && ./phase_cost
//
// A decode step of a llama-style model is five dependent phases per layer (QKV gemv, attention,
// O gemv, gate/up gemv, down gemv): each needs every output of the one before. A phase here is
// the least such a phase does: gather the model-width activation vector (576 values, SmolLM2),
// RMS-normalize and quantize it to int8, multiply it by R int8 rows of weights (dp4a), store the
// outputs, then synchronize with every other block before the next phase reads them. Two ways:
//
//  - grid: one block per SM (all resident), activations through global memory, a counting grid
//    barrier; each warp loads its rows' weights for the next phase into registers before the
//    barrier (weights do not depend on activations), so what remains after it is the dependent
//    chain alone.
//  - cluster (compute capability 9.0): one thread-block cluster of 16 blocks, activations read
//    from the blocks' shared memory (distributed shared memory), the hardware cluster barrier.
//
// Weights cycle through `set_mb` MiB (0: one set, L2-resident). Prints one JSON object per line.
#include <cooperative_groups.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace cg = cooperative_groups;

#define CK(x)                                                                         \
    do {                                                                              \
        cudaError_t e = (x);                                                          \
        if (e != cudaSuccess) {                                                       \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x,                 \
                    cudaGetErrorString(e));                                           \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

#define D 576          // activation length
#define MAXR 3072      // most rows of one phase (gate + up of SmolLM2)
#define THREADS 256
#define WARPS (THREADS / 32)
#define GROUPS (D / 16)  // 16-byte groups of a row: 36

__device__ __forceinline__ unsigned long long now_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Normalizes xs (D values) by its RMS and quantizes it into xq; every thread of the block calls
// it. `red` holds WARPS floats.
__device__ void norm_quant(const float* xs, float ss, int8_t* xq, float* red) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (lane == 0) red[wid] = ss;
    __syncthreads();
    float t = 0.0f;
    for (int k = 0; k < WARPS; k++) t += red[k];
    float s = rsqrtf(t / D + 1e-5f) * 20.0f;
    for (int i = threadIdx.x; i < D; i += THREADS)
        xq[i] = (int8_t)max(-127, min(127, __float2int_rn(xs[i] * s)));
    __syncthreads();
}

__device__ __forceinline__ int dot16(int4 a, int4 q, int acc) {
    acc = __dp4a(a.x, q.x, acc);
    acc = __dp4a(a.y, q.y, acc);
    acc = __dp4a(a.z, q.z, acc);
    return __dp4a(a.w, q.w, acc);
}

// Barrier `k` of a launch (1, 2, ...): a count of arrivals in global memory, zeroed before it.
__device__ __forceinline__ void grid_barrier(unsigned* count, unsigned k) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(count, 1u);
        unsigned target = k * gridDim.x, v;
        do {
            asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(v) : "l"(count) : "memory");
        } while (v < target);
    }
    __syncthreads();
}

// Row k (k < 4) of a warp in a phase of `rows` rows: warp w of the grid takes rows w, w + W, ...
#define ROWS_PER_WARP 4

__global__ void grid_phases(const int8_t* __restrict__ w0, int rows, int phases, int sets,
                            float* act, unsigned* count, int barrier_only,
                            unsigned long long* ns) {
    __shared__ float xs[D];
    __shared__ __align__(16) int8_t xq[D];
    __shared__ float red[WARPS];
    int lane = threadIdx.x & 31;
    int gw = blockIdx.x * WARPS + (threadIdx.x >> 5), nw = gridDim.x * WARPS;
    int4 q[ROWS_PER_WARP][2];
    auto load = [&](int ph) {
        const int8_t* w = w0 + (size_t)(ph % sets) * rows * D;
#pragma unroll
        for (int k = 0; k < ROWS_PER_WARP; k++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int r = gw + k * nw, g = lane + 32 * h;
                q[k][h] = r < rows && g < GROUPS ? __ldg((const int4*)(w + (size_t)r * D) + g)
                                                 : make_int4(0, 0, 0, 0);
            }
    };
    load(0);
    grid_barrier(count, 1);
    unsigned long long t0 = now_ns();
    for (int ph = 0; ph < phases; ph++) {
        if (!barrier_only) {
            const float* src = act + (ph & 1) * MAXR;
            float* dst = act + ((ph + 1) & 1) * MAXR;
            float ss = 0.0f;
            for (int i = threadIdx.x; i < D; i += THREADS) {
                float v = __ldcg(src + i);
                xs[i] = v;
                ss += v * v;
            }
            norm_quant(xs, ss, xq, red);
            const int4* a4 = (const int4*)xq;
#pragma unroll
            for (int k = 0; k < ROWS_PER_WARP; k++) {
                int acc = 0;
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    int g = lane + 32 * h;
                    if (g < GROUPS) acc = dot16(a4[g], q[k][h], acc);
                }
                for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
                int r = gw + k * nw;
                if (lane == 0 && r < rows) __stcg(dst + r, (float)acc * 1e-4f);
            }
            load(ph + 1);
        }
        grid_barrier(count, ph + 2);
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) ns[0] = now_ns() - t0;
}

#if __CUDA_ARCH__ >= 900 || !defined(__CUDA_ARCH__)
// One cluster: block b owns rows [b R / C, (b + 1) R / C) and keeps its outputs in its shared
// memory, double-buffered so one cluster barrier per phase suffices.
__global__ void cluster_phases(const int8_t* __restrict__ w0, int rows, int phases, int sets,
                               int barrier_only, unsigned long long* ns) {
    cg::cluster_group cl = cg::this_cluster();
    __shared__ float mine[2][MAXR / 2];
    __shared__ float xs[D];
    __shared__ __align__(16) int8_t xq[D];
    __shared__ float red[WARPS];
    int C = cl.num_blocks(), b = cl.block_rank(), per = rows / C;
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    for (int i = threadIdx.x; i < per; i += THREADS) mine[0][i] = 0.01f * (b * per + i + 1);
    cl.sync();
    unsigned long long t0 = now_ns();
    for (int ph = 0; ph < phases; ph++) {
        if (!barrier_only) {
            const int8_t* w = w0 + (size_t)(ph % sets) * rows * D;
            float* src = mine[ph & 1];
            float* dst = mine[(ph + 1) & 1];
            float ss = 0.0f;
            for (int i = threadIdx.x; i < D; i += THREADS) {
                int owner = i / per;
                float v = cl.map_shared_rank(src, owner)[i - owner * per];
                xs[i] = v;
                ss += v * v;
            }
            norm_quant(xs, ss, xq, red);
            const int4* a4 = (const int4*)xq;
            for (int r = wid; r < per; r += WARPS) {
                const int4* wr = (const int4*)(w + (size_t)(b * per + r) * D);
                int acc = 0;
                for (int g = lane; g < GROUPS; g += 32) acc = dot16(a4[g], __ldg(wr + g), acc);
                for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
                if (lane == 0) dst[r] = (float)acc * 1e-4f;
            }
        }
        cl.sync();
    }
    if (b == 0 && threadIdx.x == 0) ns[0] = now_ns() - t0;
}
#endif

int main() {
    const int phases = 2000;
    int dev = 0, sms = 0, major = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    CK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    size_t wbytes = (size_t)64 << 20;
    std::vector<int8_t> hw(wbytes);
    for (size_t i = 0; i < wbytes; i++) hw[i] = (int8_t)((i * 2654435761u) >> 24);
    int8_t* w;
    float* act;
    unsigned* count;
    unsigned long long* ns;
    CK(cudaMalloc(&w, wbytes));
    CK(cudaMemcpy(w, hw.data(), wbytes, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&act, 2 * MAXR * sizeof(float)));
    std::vector<float> ha(2 * MAXR, 0.01f);
    CK(cudaMemcpy(act, ha.data(), ha.size() * sizeof(float), cudaMemcpyHostToDevice));
    CK(cudaMalloc(&count, sizeof(unsigned)));
    CK(cudaMalloc(&ns, sizeof(unsigned long long)));
    auto report = [&](const char* how, int blocks, int rows, int mb) {
        unsigned long long t;
        CK(cudaMemcpy(&t, ns, sizeof t, cudaMemcpyDeviceToHost));
        printf("{\"bench\": \"phase_cost\", \"sync\": \"%s\", \"blocks\": %d, \"rows\": %d, "
               "\"set_mb\": %d, \"ns_per_phase\": %.0f}\n",
               how, blocks, rows, mb, (double)t / phases);
    };
    auto sets_for = [&](int rows, int mb) {
        return mb == 0 ? 1 : (int)(((size_t)mb << 20) / ((size_t)rows * D));
    };
    // One block per SM: the grid must be resident at once for its barrier (one small block per
    // SM always is).
    for (int rows : {0, 576, 960, 3072}) {
        if (rows > sms * WARPS * ROWS_PER_WARP) continue;
        for (int mb : {0, 60}) {
            if (rows == 0 && mb) continue;
            int r = rows ? rows : D;
            for (int rep = 0; rep < 2; rep++) {  // the first warms up
                CK(cudaMemset(count, 0, sizeof(unsigned)));
                grid_phases<<<sms, THREADS>>>(w, r, phases, sets_for(r, mb), act, count,
                                              rows == 0, ns);
                CK(cudaDeviceSynchronize());
            }
            report(rows ? "grid" : "grid_barrier_only", sms, rows, mb);
        }
    }
#if CUDART_VERSION >= 12000
    if (major >= 9) {
        const int C = 16;
        CK(cudaFuncSetAttribute(cluster_phases, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
        for (int rows : {0, 576, 960, 3072}) {
            for (int mb : {0, 60}) {
                if (rows == 0 && mb) continue;
                int r = rows ? rows : D;
                cudaLaunchConfig_t cfg = {};
                cfg.gridDim = dim3(C);
                cfg.blockDim = dim3(THREADS);
                cudaLaunchAttribute at[1];
                at[0].id = cudaLaunchAttributeClusterDimension;
                at[0].val.clusterDim.x = C;
                at[0].val.clusterDim.y = 1;
                at[0].val.clusterDim.z = 1;
                cfg.attrs = at;
                cfg.numAttrs = 1;
                for (int rep = 0; rep < 2; rep++) {
                    CK(cudaLaunchKernelEx(&cfg, cluster_phases, (const int8_t*)w, r, phases,
                                          sets_for(r, mb), (int)(rows == 0), ns));
                    CK(cudaDeviceSynchronize());
                }
                report(rows ? "cluster" : "cluster_barrier_only", C, rows, mb);
            }
        }
    }
#endif
    return 0;
}
