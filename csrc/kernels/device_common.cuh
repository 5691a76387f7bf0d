/* device_common.cuh: device helpers shared by the .cu files (ops.cu, decoder.cu, w4a16.cu):
 * storage-type conversions, warp and block reductions, the grid size of grid-stride loops, and the
 * inline-PTX tensor-core primitives (mma.sync m16n8k16, ldmatrix), written once behind
 * AWQ_GPU_PTX. Each .cu file is its own device compilation unit (no relocatable device code), so
 * these are header-only and internal to each file. */
#ifndef AWQ_DEVICE_COMMON_CUH
#define AWQ_DEVICE_COMMON_CUH
#include <stdint.h>

#include "awq_cuda.h"

/* ---------------------------------------------------------------- storage types <-> fp32 */

static __device__ __forceinline__ float to_f(float x) { return x; }
static __device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
static __device__ __forceinline__ float to_f(gpu_bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ gpu_bf16 from_f<gpu_bf16>(float x) { return __float2bfloat16_rn(x); }

/* ---------------------------------------------------------------- reductions */

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += GPU_SHFL_XOR(v, o);
    return v;
}
static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, GPU_SHFL_XOR(v, o));
    return v;
}
static __device__ __forceinline__ float warp_min(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fminf(v, GPU_SHFL_XOR(v, o));
    return v;
}

/* Sum of v over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result. */
static __device__ float block_sum(float v) {
    __shared__ float part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* part may still be read by a previous call */
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < nw ? part[lane] : 0.0f;
    return warp_sum(v);
}

/* Blocks of `threads` for a grid-stride loop over n items (capped; the loop covers the rest). */
static inline unsigned grid_for(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 65536) b = 65536;
    return (unsigned)b;
}

/* ---------------------------------------------------------------- tensor cores (sm_80+)
 * Without PTX (HIP) these trap: the host side never launches a kernel that reaches them there. */

/* d[16x8] += a[16x16] b[16x8], fp32 accumulators; fp16 or bf16 operands. */
static __device__ __forceinline__ void mma16816_f16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
#if AWQ_GPU_PTX
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}
static __device__ __forceinline__ void mma16816_bf16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
#if AWQ_GPU_PTX
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

/* Four 8x8 b16 matrices from shared memory (trans: transposed). */
static __device__ __forceinline__ void ldmatrix_x4(uint32_t *r, const void *p) {
#if AWQ_GPU_PTX
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#else
    __trap();
#endif
}
static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t *r, const void *p) {
#if AWQ_GPU_PTX
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#else
    __trap();
#endif
}
#endif
