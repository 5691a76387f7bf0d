/* ops.cu: dense GPU ops of the decoder forward and of AWQ's statistics / quantization math
 * (contracts in ops_cuda.h; the CPU twins and their references are in csrc/ops.c and csrc/quant.c).
 *
 * Storage types are fp32 / fp16 / bf16 (template parameter `T`, converted with to_f / from_f);
 * arithmetic is fp32 everywhere. Index vocabulary: m row, c column / channel, j key, t query,
 * h head, hk kv head, n output feature, k input feature, i candidate.
 * File order: helpers, element-wise ops (silu_mul, act / act_mul, add, cast), rmsnorm, layernorm,
 * rope, abs_mean, attention (CUDA-core kernel for every case, tensor-core kernel for fp16/bf16 with
 * d == dv <= 128), linear (cuBLAS), pseudo-quantize, clip search, strided copy.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "awq_cuda.h"
#include "device_common.cuh"
#include "ops.h" /* awq_act: the activation numbering shared with the CPU core */
#include "ops_cuda.h"

/* ---------------------------------------------------------------- helpers */

static int bad_dtype(const char *op, int dt, awq_err *err) {
    return awq_set_err(err, AWQ_ERR_VALUE, "%s: dtype %s is not supported (float32, float16 or "
                       "bfloat16)", op, awq_dtype_name(dt));
}

/* Checks the launch just queued, naming the kernel. */
static int launch_check(const char *kernel, awq_err *err) {
    gpuError_t e = gpuGetLastError();
    if (e != gpuSuccess)
        return awq_set_err(err, AWQ_ERR_RUNTIME, "launch of %s failed: %s", kernel,
                           gpuGetErrorString(e));
    return AWQ_OK;
}

#define AWQ_CUBLAS_CHECK AWQ_GPUBLAS_CHECK

/* Runs the statement list with `T` bound to the storage type of float dtype dt. */
#define DISPATCH_FLOAT(op, dt, T, ...)                                                             \
    switch (dt) {                                                                                  \
    case AWQ_DT_F32: {                                                                             \
        typedef float T;                                                                           \
        __VA_ARGS__;                                                                               \
    } break;                                                                                       \
    case AWQ_DT_F16: {                                                                             \
        typedef __half T;                                                                          \
        __VA_ARGS__;                                                                               \
    } break;                                                                                       \
    case AWQ_DT_BF16: {                                                                            \
        typedef gpu_bf16 T;                                                                   \
        __VA_ARGS__;                                                                               \
    } break;                                                                                       \
    default: return bad_dtype(op, dt, err);                                                        \
    }

static int check_nonneg(const char *op, int64_t a, int64_t b, awq_err *err) {
    if (a < 0 || b < 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: negative size (%lld, %lld)", op, (long long)a,
                           (long long)b);
    return AWQ_OK;
}

/* ---------------------------------------------------------------- element-wise */

template <typename T>
__global__ void silu_mul_kernel(const T *gate, const T *up, T *y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = to_f(gate[i]);
        y[i] = from_f<T>(g / (1.0f + expf(-g)) * to_f(up[i]));
    }
}

extern "C" int awq_cuda_silu_mul(awq_cuda_ctx *ctx, int dt, const void *gate, const void *up,
                                 void *y, int64_t n, void *stream, awq_err *err) {
    int st = check_nonneg("silu_mul", n, 0, err);
    if (st || n == 0) return st;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    DISPATCH_FLOAT("silu_mul", dt, T,
                   silu_mul_kernel<T><<<grid_for(n, 256), 256, 0, (gpuStream_t)stream>>>(
                       (const T *)gate, (const T *)up, (T *)y, n));
    return launch_check("silu_mul_kernel", err);
}

/* act(x) in fp32 (kind: awq_act). silu as silu_mul_kernel computes it; gelu through erfcf
 * (0.5 x erfc(-x / sqrt 2) == 0.5 x (1 + erf(x / sqrt 2)) without the cancellation of 1 + erf for
 * x < 0); gelu_tanh as x / (1 + exp(-2u)) == 0.5 x (1 + tanh u); relu keeps NaN. */
static __device__ __forceinline__ float act_f(float x, int kind) {
    switch (kind) {
    case AWQ_ACT_GELU: return 0.5f * x * erfcf(-0.70710678118654752f * x);
    case AWQ_ACT_GELU_TANH: {
        const float m2u = -1.59576912160573072f * (x + 0.044715f * x * x * x); /* -2 sqrt(2/pi) (...) */
        return x / (1.0f + expf(m2u));
    }
    case AWQ_ACT_RELU: return x < 0.0f ? 0.0f : x;
    default: return x / (1.0f + expf(-x));
    }
}

/* y = act(x) (* up when up is not NULL). */
template <typename T>
__global__ void act_kernel(const T *x, const T *up, T *y, int64_t n, int kind) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float a = act_f(to_f(x[i]), kind);
        if (up) a *= to_f(up[i]);
        y[i] = from_f<T>(a);
    }
}

static int act_launch(awq_cuda_ctx *ctx, const char *op, int dt, const void *x, const void *up,
                      void *y, int64_t n, int kind, void *stream, awq_err *err) {
    int st = check_nonneg(op, n, 0, err);
    if (st) return st;
    if (kind < 0 || kind >= AWQ_ACT_COUNT)
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: unknown activation kind %d", op, kind);
    if (n == 0) return AWQ_OK;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    DISPATCH_FLOAT(op, dt, T,
                   act_kernel<T><<<grid_for(n, 256), 256, 0, (gpuStream_t)stream>>>(
                       (const T *)x, (const T *)up, (T *)y, n, kind));
    return launch_check("act_kernel", err);
}

extern "C" int awq_cuda_act(awq_cuda_ctx *ctx, int dt, const void *x, void *y, int64_t n, int kind,
                            void *stream, awq_err *err) {
    return act_launch(ctx, "act", dt, x, NULL, y, n, kind, stream, err);
}

extern "C" int awq_cuda_act_mul(awq_cuda_ctx *ctx, int dt, const void *gate, const void *up,
                                void *y, int64_t n, int kind, void *stream, awq_err *err) {
    return act_launch(ctx, "act_mul", dt, gate, up, y, n, kind, stream, err);
}

template <typename T> __global__ void add_kernel(const T *a, const T *b, T *y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = from_f<T>(to_f(a[i]) + to_f(b[i]));
}

extern "C" int awq_cuda_add(awq_cuda_ctx *ctx, int dt, const void *a, const void *b, void *y,
                            int64_t n, void *stream, awq_err *err) {
    int st = check_nonneg("add", n, 0, err);
    if (st || n == 0) return st;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    DISPATCH_FLOAT("add", dt, T,
                   add_kernel<T><<<grid_for(n, 256), 256, 0, (gpuStream_t)stream>>>(
                       (const T *)a, (const T *)b, (T *)y, n));
    return launch_check("add_kernel", err);
}

template <typename S, typename D> __global__ void cast_kernel(const S *src, D *dst, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = from_f<D>(to_f(src[i]));
}

extern "C" int awq_cuda_cast(awq_cuda_ctx *ctx, int src_dt, const void *src, int dst_dt, void *dst,
                             int64_t n, void *stream, awq_err *err) {
    int st = check_nonneg("cast", n, 0, err);
    if (st || n == 0) return st;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    gpuStream_t s = (gpuStream_t)stream;
    DISPATCH_FLOAT("cast", src_dt, S,
                   DISPATCH_FLOAT("cast", dst_dt, D,
                                  cast_kernel<S, D><<<grid_for(n, 256), 256, 0, s>>>(
                                      (const S *)src, (D *)dst, n)));
    return launch_check("cast_kernel", err);
}

/* ---------------------------------------------------------------- rmsnorm */

/* One block per row. */
template <typename T>
__global__ void rmsnorm_kernel(const T *x, const float *w, T *y, int64_t D, float eps,
                               float unit_offset) {
    const T *xr = x + blockIdx.x * D;
    T *yr = y + blockIdx.x * D;
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
        const float v = to_f(xr[c]);
        ss += v * v;
    }
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)D + eps);
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x)
        yr[c] = from_f<T>(to_f(xr[c]) * inv * (w[c] + unit_offset));
}

extern "C" int awq_cuda_rmsnorm(awq_cuda_ctx *ctx, int dt, const void *x, const float *w, void *y,
                                int64_t M, int64_t D, float eps, float unit_offset, void *stream,
                                awq_err *err) {
    int st = check_nonneg("rmsnorm", M, D, err);
    if (st) return st;
    if (D == 0) return awq_set_err(err, AWQ_ERR_VALUE, "rmsnorm: rows have no elements (D=0)");
    if (M == 0) return AWQ_OK;
    if (M > INT_MAX) return awq_set_err(err, AWQ_ERR_VALUE, "rmsnorm: too many rows (%lld)", (long long)M);
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    const int threads = D >= 4096 ? 1024 : D >= 1024 ? 256 : 128;
    DISPATCH_FLOAT("rmsnorm", dt, T,
                   rmsnorm_kernel<T><<<(unsigned)M, threads, 0, (gpuStream_t)stream>>>(
                       (const T *)x, w, (T *)y, D, eps, unit_offset));
    return launch_check("rmsnorm_kernel", err);
}

/* ---------------------------------------------------------------- layernorm */

/* One block per row; two passes over the row in fp32 (mean, then squared deviations from it), then
 * y = (x - mean) * inv_std (* w) (+ b). y may alias x: the last pass reads each element before the
 * same thread writes it, and both sums end with a barrier. */
template <typename T>
__global__ void layernorm_kernel(const T *x, const float *w, const float *b, T *y, int64_t D,
                                 float eps) {
    const T *xr = x + blockIdx.x * D;
    T *yr = y + blockIdx.x * D;
    float sum = 0.0f;
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) sum += to_f(xr[c]);
    const float mean = block_sum(sum) / (float)D;
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
        const float dx = to_f(xr[c]) - mean;
        ss += dx * dx;
    }
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)D + eps);
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
        float v = (to_f(xr[c]) - mean) * inv;
        if (w) v *= w[c];
        if (b) v += b[c];
        yr[c] = from_f<T>(v);
    }
}

extern "C" int awq_cuda_layernorm(awq_cuda_ctx *ctx, int dt, const void *x, const float *w,
                                  const float *b, void *y, int64_t M, int64_t D, float eps,
                                  void *stream, awq_err *err) {
    int st = check_nonneg("layernorm", M, D, err);
    if (st) return st;
    if (D == 0) return awq_set_err(err, AWQ_ERR_VALUE, "layernorm: rows have no elements (D=0)");
    if (!(eps >= 0.0f) || !isfinite(eps))
        return awq_set_err(err, AWQ_ERR_VALUE, "layernorm: eps must be finite and >= 0 (got %g)",
                           (double)eps);
    if (M == 0) return AWQ_OK;
    if (M > INT_MAX) return awq_set_err(err, AWQ_ERR_VALUE, "layernorm: too many rows (%lld)", (long long)M);
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    const int threads = D >= 4096 ? 1024 : D >= 1024 ? 256 : 128;
    DISPATCH_FLOAT("layernorm", dt, T,
                   layernorm_kernel<T><<<(unsigned)M, threads, 0, (gpuStream_t)stream>>>(
                       (const T *)x, w, b, (T *)y, D, eps));
    return launch_check("layernorm_kernel", err);
}

/* ---------------------------------------------------------------- rope */

/* One thread per (m, h, i < rot/2) pair of rotated elements: (i, i + half) (rotate_half) or
 * (2i, 2i + 1) (interleaved, GPT-J). */
template <typename T>
__global__ void rope_kernel(T *x, const float *cos, const float *sin, int64_t M, int64_t H,
                            int64_t d, int64_t half, int interleaved) {
    const int64_t n = M * H * half;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < n;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = idx % half, mh = idx / half, m = mh / H;
        const int64_t i1 = interleaved ? 2 * i : i, i2 = interleaved ? 2 * i + 1 : i + half;
        T *p = x + mh * d;
        const float c = cos[m * half + i], s = sin[m * half + i];
        const float x1 = to_f(p[i1]), x2 = to_f(p[i2]);
        p[i1] = from_f<T>(x1 * c - x2 * s);
        p[i2] = from_f<T>(x2 * c + x1 * s);
    }
}

extern "C" int awq_cuda_rope(awq_cuda_ctx *ctx, int dt, void *x, const float *cos, const float *sin,
                             int64_t M, int64_t H, int64_t d, int64_t rot, void *stream,
                             awq_err *err) {
    return awq_cuda_rope_ex(ctx, dt, x, cos, sin, M, H, d, rot, 0, stream, err);
}

extern "C" int awq_cuda_rope_ex(awq_cuda_ctx *ctx, int dt, void *x, const float *cos,
                                const float *sin, int64_t M, int64_t H, int64_t d, int64_t rot,
                                int interleaved, void *stream, awq_err *err) {
    int st = check_nonneg("rope", M, H, err);
    if (st) return st;
    if (rot < 0 || rot % 2 || rot > d)
        return awq_set_err(err, AWQ_ERR_VALUE, "rope: rotary dims %lld must be even and <= head dim %lld",
                           (long long)rot, (long long)d);
    const int64_t n = M * H * (rot / 2);
    if (n == 0) return AWQ_OK;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    DISPATCH_FLOAT("rope", dt, T,
                   rope_kernel<T><<<grid_for(n, 256), 256, 0, (gpuStream_t)stream>>>(
                       (T *)x, cos, sin, M, H, d, rot / 2, interleaved ? 1 : 0));
    return launch_check("rope_kernel", err);
}

/* ---------------------------------------------------------------- abs_mean */

/* Block of 32 columns x 32 row lanes: lane (tx, ty) sums rows ty, ty+32, ... of column tx in fp32,
 * then the 32 partial sums of each column are added in a fixed order (deterministic). */
template <typename T> __global__ void abs_mean_kernel(const T *x, float *out, int64_t M, int64_t K) {
    __shared__ float part[32][33];
    const int64_t c = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (c < K) {
#pragma unroll 4
        for (int64_t m = threadIdx.y; m < M; m += 32) acc += fabsf(to_f(x[m * K + c]));
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < K) {
        float s = 0.0f;
        for (int r = 0; r < 32; r++) s += part[r][threadIdx.x];
        out[c] = s / (float)M;
    }
}

extern "C" int awq_cuda_abs_mean(awq_cuda_ctx *ctx, int dt, const void *x, float *out, int64_t M,
                                 int64_t K, void *stream, awq_err *err) {
    int st = check_nonneg("abs_mean", M, K, err);
    if (st) return st;
    if (M == 0) return awq_set_err(err, AWQ_ERR_VALUE, "abs_mean: no rows to average (M=0)");
    if (K == 0) return AWQ_OK;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    const dim3 block(32, 32);
    const unsigned blocks = (unsigned)((K + 31) / 32);
    DISPATCH_FLOAT("abs_mean", dt, T,
                   abs_mean_kernel<T><<<blocks, block, 0, (gpuStream_t)stream>>>((const T *)x, out,
                                                                                 M, K));
    return launch_check("abs_mean_kernel", err);
}

/* ---------------------------------------------------------------- attention
 *
 * Block = 4 warps over (batch b, kv head hk, 16 consecutive query rows); the rows of a block are
 * the flattened (t, head-in-group) pairs, t-major, so the G query heads sharing kv head hk read
 * each K/V tile from shared memory once. Key tiles of 32 are staged as fp32 in shared memory.
 * Per tile, each warp handles 4 rows:
 *   scores: lane l owns key j0 + l and computes its dot product with each row's (pre-scaled) query
 *           from shared memory (float4 reads; the row stride DP + 4 is 4 mod 32 banks, so the 8
 *           lanes of each quarter-warp phase hit distinct banks);
 *   online softmax in base 2 (scores carry scale * log2(e)); per-lane partial sums of p, added
 *           across the warp once at the end;
 *   P @ V:  lane l owns head dims l, l + 32, ...; p of key jj is broadcast with a shuffle.
 * DPL = head dims per lane (max(d, dv) <= 32 * DPL), so the accumulator o[4][DPL] stays in
 * registers. Optional score terms (both kernels, in base-2 units): softcap as cap2 tanh(s / cap2)
 * with cap2 = softcap log2(e) (the same function of the natural-unit score), then ALiBi
 * slope log2(e) (j - p); both before the mask, so every row keeps the plain kernel's tiling.
 */
#define ATT_WARPS 4
#define ATT_R 4 /* query rows per warp */
#define ATT_ROWS (ATT_WARPS * ATT_R)
#define ATT_BK 32 /* keys per tile: one per lane */

static size_t att_smem_bytes(int dpl) {
    return (size_t)(2 * ATT_BK + ATT_ROWS) * (size_t)(dpl * 32 + 4) * sizeof(float);
}

template <typename T, int DPL>
__global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_kernel(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                     T *__restrict__ out, int64_t T_, int64_t S, int Hq, int Hkv, int d, int dv,
                     float qscale, int64_t q_pos0, int64_t window, const int64_t *kv_len,
                     const float *__restrict__ alibi, float cap2) {
    constexpr int DP = DPL * 32; /* padded head dim */
    constexpr int LD = DP + 4;   /* shared row stride in floats */
    extern __shared__ float4 att_smem4[];
    float *Ks = reinterpret_cast<float *>(att_smem4); /* [ATT_BK][LD] */
    float *Vs = Ks + ATT_BK * LD;                      /* [ATT_BK][LD] */
    float *Qs = Vs + ATT_BK * LD;                      /* [ATT_ROWS][LD] */

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int G = Hq / Hkv, hk = blockIdx.y;
    const int64_t b = blockIdx.z;
    const int64_t nrows = T_ * G, row0 = (int64_t)blockIdx.x * ATT_ROWS;

    for (int idx = threadIdx.x; idx < ATT_ROWS * DP; idx += blockDim.x) {
        const int r = idx / DP, c = idx % DP;
        const int64_t row = row0 + r;
        float val = 0.0f;
        if (row < nrows && c < d) {
            const int64_t t = row / G;
            const int h = hk * G + (int)(row % G);
            val = to_f(q[((b * T_ + t) * Hq + h) * d + c]) * qscale;
        }
        Qs[r * LD + c] = val;
    }

    /* keys any row of the block can see */
    const int64_t last_row = (row0 + ATT_ROWS < nrows ? row0 + ATT_ROWS : nrows) - 1;
    const int64_t pos_first = q_pos0 + row0 / G, pos_last = q_pos0 + last_row / G;
    int64_t kv_end = S < pos_last + 1 ? S : pos_last + 1;
    if (kv_len && kv_len[b] < kv_end) kv_end = kv_len[b];
    int64_t kv_begin = 0;
    if (window > 0 && pos_first - window + 1 > 0) kv_begin = (pos_first - window + 1) / ATT_BK * ATT_BK;

    int64_t pos[ATT_R];
    bool live[ATT_R];
    float mx[ATT_R], lsum[ATT_R], o[ATT_R][DPL], slope2[ATT_R];
    bool any_live = false;
    int64_t wpos_min = INT64_MAX, wpos_max = INT64_MIN;
#pragma unroll
    for (int i = 0; i < ATT_R; i++) {
        const int64_t row = row0 + warp * ATT_R + i;
        live[i] = row < nrows;
        pos[i] = q_pos0 + row / G;
        slope2[i] = alibi && live[i] ? alibi[hk * G + (int)(row % G)] * 1.4426950408889634f : 0.0f;
        mx[i] = -INFINITY;
        lsum[i] = 0.0f;
#pragma unroll
        for (int e = 0; e < DPL; e++) o[i][e] = 0.0f;
        if (live[i]) {
            any_live = true;
            wpos_min = pos[i] < wpos_min ? pos[i] : wpos_min;
            wpos_max = pos[i] > wpos_max ? pos[i] : wpos_max;
        }
    }

    for (int64_t j0 = kv_begin; j0 < kv_end; j0 += ATT_BK) {
        __syncthreads(); /* the previous tile is consumed (and Qs written, on the first pass) */
        for (int idx = threadIdx.x; idx < ATT_BK * DP; idx += blockDim.x) {
            const int jj = idx / DP, c = idx % DP;
            const int64_t j = j0 + jj;
            float kk = 0.0f, vv = 0.0f;
            if (j < kv_end && c < d) kk = to_f(k[((b * S + j) * Hkv + hk) * (int64_t)d + c]);
            if (j < kv_end && c < dv) vv = to_f(v[((b * S + j) * Hkv + hk) * (int64_t)dv + c]);
            Ks[jj * LD + c] = kk;
            Vs[jj * LD + c] = vv;
        }
        __syncthreads();
        /* warp-uniform skip of a tile no row of this warp can see */
        if (!any_live || j0 > wpos_max || (window > 0 && j0 + ATT_BK - 1 <= wpos_min - window))
            continue;

        const int64_t j = j0 + lane;
        float s[ATT_R];
#pragma unroll
        for (int i = 0; i < ATT_R; i++) s[i] = 0.0f;
        const float4 *kr = reinterpret_cast<const float4 *>(Ks + lane * LD);
#pragma unroll 4
        for (int c4 = 0; c4 < DP / 4; c4++) {
            const float4 kk = kr[c4];
#pragma unroll
            for (int i = 0; i < ATT_R; i++) {
                const float4 qq = reinterpret_cast<const float4 *>(Qs + (warp * ATT_R + i) * LD)[c4];
                s[i] += qq.x * kk.x + qq.y * kk.y + qq.z * kk.z + qq.w * kk.w;
            }
        }
        if (cap2 > 0.0f) {
#pragma unroll
            for (int i = 0; i < ATT_R; i++) s[i] = cap2 * tanhf(s[i] / cap2);
        }
        if (alibi) {
#pragma unroll
            for (int i = 0; i < ATT_R; i++) s[i] += slope2[i] * (float)(j - pos[i]);
        }
        float p[ATT_R];
#pragma unroll
        for (int i = 0; i < ATT_R; i++) {
            const bool ok = live[i] && j < kv_end && j <= pos[i] && (window <= 0 || j > pos[i] - window);
            const float si = ok ? s[i] : -INFINITY;
            const float mnew = fmaxf(mx[i], warp_max(si));
            if (mnew == -INFINITY) { /* nothing seen yet (uniform across the warp) */
                p[i] = 0.0f;
                continue;
            }
            const float alpha = exp2f(mx[i] - mnew); /* 0 when mx was -inf */
            p[i] = exp2f(si - mnew);                 /* 0 for masked keys */
            lsum[i] = lsum[i] * alpha + p[i];
            mx[i] = mnew;
#pragma unroll
            for (int e = 0; e < DPL; e++) o[i][e] *= alpha;
        }
#pragma unroll 4
        for (int jj = 0; jj < ATT_BK; jj++) {
            float pj[ATT_R];
#pragma unroll
            for (int i = 0; i < ATT_R; i++) pj[i] = GPU_SHFL(p[i], jj);
#pragma unroll
            for (int e = 0; e < DPL; e++) {
                const float vv = Vs[jj * LD + e * 32 + lane];
#pragma unroll
                for (int i = 0; i < ATT_R; i++) o[i][e] = fmaf(pj[i], vv, o[i][e]);
            }
        }
    }

#pragma unroll
    for (int i = 0; i < ATT_R; i++) {
        const float l = warp_sum(lsum[i]);
        if (!live[i]) continue;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        const int64_t row = row0 + warp * ATT_R + i, t = row / G;
        const int h = hk * G + (int)(row % G);
        T *op = out + ((b * T_ + t) * Hq + h) * (int64_t)dv;
#pragma unroll
        for (int e = 0; e < DPL; e++) {
            const int c = e * 32 + lane;
            if (c < dv) op[c] = from_f<T>(o[i][e] * inv);
        }
    }
}

/* The launch arguments both kernels share. */
struct AttLaunch {
    const void *q, *k, *v;
    void *out;
    int64_t B, T, S, Hq, Hkv, d, dv;
    float qscale; /* scale * log2(e) */
    int64_t q_pos0, window;
    const int64_t *kv_len;
    const float *alibi;
    float cap2; /* softcap * log2(e), 0 = off */
};

template <typename T, int DPL>
static int launch_attention(const AttLaunch &a, gpuStream_t stream, awq_err *err) {
    const size_t smem = att_smem_bytes(DPL);
    AWQ_CUDA_CHECK(gpuFuncSetAttribute(attention_kernel<T, DPL>,
                                        gpuFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                   err);
    const int64_t G = a.Hq / a.Hkv;
    const dim3 grid((unsigned)((a.T * G + ATT_ROWS - 1) / ATT_ROWS), (unsigned)a.Hkv, (unsigned)a.B);
    attention_kernel<T, DPL><<<grid, ATT_WARPS * 32, smem, stream>>>(
        (const T *)a.q, (const T *)a.k, (const T *)a.v, (T *)a.out, a.T, a.S, (int)a.Hq,
        (int)a.Hkv, (int)a.d, (int)a.dv, a.qscale, a.q_pos0, a.window, a.kv_len, a.alibi, a.cap2);
    return launch_check("attention_kernel", err);
}

/* ---- tensor-core attention (fp16 / bf16, d <= 128, d % 8 == 0)
 *
 * FlashAttention-2 layout on mma.sync m16n8k16 (sm_80+): a block of 4 warps takes 64 query rows
 * (the same flattened (t, head-in-group) rows as above), each warp 16 of them; key tiles of 64
 * go through shared memory. Per tile a warp computes S = Q K^T (16 x 64, fp32 accumulators),
 * masks it, runs the online softmax in base 2 on the accumulators, rounds P to the input dtype
 * (as FlashAttention does; the row sums stay fp32) and accumulates O += P V (16 x D fp32).
 * Fragment facts used (PTX ISA, m16n8k16): thread l holds rows g = l/4 and g + 8, columns
 * 2 (l % 4) + {0, 1} of each 8-wide accumulator tile, and the accumulators of two adjacent
 * 8-key tiles are exactly the A fragment of the next MMA, so P never leaves registers. Operand
 * fragments come from shared memory through ldmatrix (.trans for V, whose rows are keys). Shared
 * rows are padded by 16 bytes so the 8 row addresses of each ldmatrix phase hit distinct banks.
 */
#define FA_WARPS 4
#define FA_ROWS (FA_WARPS * 16)
#define FA_BK 64

static size_t fa_smem_bytes(int D) { return (size_t)(FA_ROWS + 2 * FA_BK) * (size_t)(D + 8) * 2; }

__device__ __forceinline__ uint32_t pack2(__half, float a, float b) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&h);
}
__device__ __forceinline__ uint32_t pack2(gpu_bf16, float a, float b) {
    gpu_bf162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* The flash kernel's mma, picked by the operand type. */
__device__ __forceinline__ void mma16816(__half, float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    mma16816_f16(d, a, b0, b1);
}
__device__ __forceinline__ void mma16816(gpu_bf16, float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    mma16816_bf16(d, a, b0, b1);
}

/* TERMS: the softcap / ALiBi score terms are compiled in (a separate instantiation, so the plain
 * kernel keeps its register count and occupancy: the terms cost 3-9 registers per thread). */
template <typename T, int D, bool TERMS>
__global__ void __launch_bounds__(FA_WARPS * 32)
    flash_attention_kernel(const T *__restrict__ q, const T *__restrict__ k,
                           const T *__restrict__ v, T *__restrict__ out, int64_t T_, int64_t S,
                           int Hq, int Hkv, int d, float qscale, int64_t q_pos0, int64_t window,
                           const int64_t *kv_len, const float *__restrict__ alibi, float cap2) {
    constexpr int LDS = D + 8; /* shared row stride in elements (+16 bytes) */
    constexpr int CH = D / 8;  /* 16-byte chunks per row */
    extern __shared__ uint4 fa_smem4[];
    T *Qs = reinterpret_cast<T *>(fa_smem4); /* [FA_ROWS][LDS] */
    T *Ks = Qs + FA_ROWS * LDS;              /* [FA_BK][LDS] */
    T *Vs = Ks + FA_BK * LDS;                /* [FA_BK][LDS] */

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
    const int G = Hq / Hkv, hk = blockIdx.y;
    const int64_t b = blockIdx.z;
    const int64_t nrows = T_ * G, row0 = (int64_t)blockIdx.x * FA_ROWS;
    const uint4 zero4 = make_uint4(0, 0, 0, 0);

    for (int idx = threadIdx.x; idx < FA_ROWS * CH; idx += blockDim.x) {
        const int r = idx / CH, c = (idx % CH) * 8;
        const int64_t row = row0 + r;
        uint4 val = zero4;
        if (row < nrows && c < d) {
            const int64_t t = row / G;
            const int h = hk * G + (int)(row % G);
            val = *reinterpret_cast<const uint4 *>(q + ((b * T_ + t) * Hq + h) * d + c);
        }
        *reinterpret_cast<uint4 *>(Qs + r * LDS + c) = val;
    }

    const int64_t last_row = (row0 + FA_ROWS < nrows ? row0 + FA_ROWS : nrows) - 1;
    const int64_t pos_first = q_pos0 + row0 / G, pos_last = q_pos0 + last_row / G;
    int64_t kv_end = S < pos_last + 1 ? S : pos_last + 1;
    if (kv_len && kv_len[b] < kv_end) kv_end = kv_len[b];
    int64_t kv_begin = 0;
    if (window > 0 && pos_first - window + 1 > 0) kv_begin = (pos_first - window + 1) / FA_BK * FA_BK;

    /* this thread's rows: h = 0 -> warp row g, h = 1 -> warp row g + 8 */
    const int64_t wrow0 = row0 + warp * 16;
    int64_t pos[2];
    bool live[2];
    float slope2[2]; /* ALiBi slope of the row's head, in base-2 units */
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int64_t row = wrow0 + g + 8 * h;
        live[h] = row < nrows;
        pos[h] = q_pos0 + row / G;
        slope2[h] = TERMS && alibi && live[h] ? alibi[hk * G + (int)(row % G)] * 1.4426950408889634f : 0.0f;
    }
    const bool any_live = wrow0 < nrows;
    const int64_t wpos_min = q_pos0 + wrow0 / G;
    const int64_t wpos_max = q_pos0 + (wrow0 + 15 < nrows ? wrow0 + 15 : nrows - 1) / G;

    float mx[2] = {-INFINITY, -INFINITY}, lsum[2] = {0.0f, 0.0f};
    float o[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;

    for (int64_t j0 = kv_begin; j0 < kv_end; j0 += FA_BK) {
        __syncthreads(); /* previous tile consumed; Q stored (first pass) */
        for (int idx = threadIdx.x; idx < FA_BK * CH; idx += blockDim.x) {
            const int jj = idx / CH, c = (idx % CH) * 8;
            const int64_t j = j0 + jj;
            uint4 kk = zero4, vv = zero4; /* zeros past kv_end: 0 * P stays finite */
            if (j < kv_end && c < d) {
                const int64_t off = ((b * S + j) * Hkv + hk) * (int64_t)d + c;
                kk = *reinterpret_cast<const uint4 *>(k + off);
                vv = *reinterpret_cast<const uint4 *>(v + off);
            }
            *reinterpret_cast<uint4 *>(Ks + jj * LDS + c) = kk;
            *reinterpret_cast<uint4 *>(Vs + jj * LDS + c) = vv;
        }
        __syncthreads();
        if (!any_live || j0 > wpos_max || (window > 0 && j0 + FA_BK - 1 <= wpos_min - window))
            continue;

        /* S = Q K^T over 8 key tiles of 8 */
        float s[FA_BK / 8][4];
#pragma unroll
        for (int nt = 0; nt < FA_BK / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D; kk += 16) {
            uint32_t a[4];
            ldmatrix_x4(a, Qs + (warp * 16 + (lane & 15)) * LDS + kk + (lane >> 4) * 8);
#pragma unroll
            for (int n2 = 0; n2 < FA_BK / 16; n2++) {
                uint32_t bk[4];
                const int i = lane >> 3, r = lane & 7;
                ldmatrix_x4(bk, Ks + (n2 * 16 + r + 8 * (i >> 1)) * LDS + kk + 8 * (i & 1));
                mma16816(T(), s[2 * n2], a, bk[0], bk[1]);
                mma16816(T(), s[2 * n2 + 1], a, bk[2], bk[3]);
            }
        }

        /* mask, scale to base 2, online softmax (rows shared by the 4 threads of a quad) */
        float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < FA_BK / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int h = e >> 1;
                const int64_t j = j0 + nt * 8 + tig * 2 + (e & 1);
                const bool ok = live[h] && j < kv_end && j <= pos[h] && (window <= 0 || j > pos[h] - window);
                float sv = s[nt][e] * qscale;
                if (TERMS && cap2 > 0.0f) sv = cap2 * tanhf(sv / cap2);
                if (TERMS && alibi) sv += slope2[h] * (float)(j - pos[h]);
                s[nt][e] = ok ? sv : -INFINITY;
                tmax[h] = fmaxf(tmax[h], s[nt][e]);
            }
        }
        float alpha[2], mref[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            tmax[h] = fmaxf(tmax[h], GPU_SHFL_XOR(tmax[h], 1));
            tmax[h] = fmaxf(tmax[h], GPU_SHFL_XOR(tmax[h], 2));
            const float mnew = fmaxf(mx[h], tmax[h]);
            alpha[h] = mnew == -INFINITY ? 1.0f : exp2f(mx[h] - mnew);
            mref[h] = mnew == -INFINITY ? 0.0f : mnew;
            mx[h] = mnew;
            lsum[h] *= alpha[h];
        }
#pragma unroll
        for (int nt = 0; nt < FA_BK / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int h = e >> 1;
                s[nt][e] = exp2f(s[nt][e] - mref[h]); /* 0 for masked keys */
                lsum[h] += s[nt][e];
            }
        }
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) {
            o[nt][0] *= alpha[0];
            o[nt][1] *= alpha[0];
            o[nt][2] *= alpha[1];
            o[nt][3] *= alpha[1];
        }

        /* O += P V: k-steps of 16 keys; P's A fragment is two adjacent accumulator tiles */
#pragma unroll
        for (int kt = 0; kt < FA_BK / 16; kt++) {
            uint32_t pa[4];
            pa[0] = pack2(T(), s[2 * kt][0], s[2 * kt][1]);
            pa[1] = pack2(T(), s[2 * kt][2], s[2 * kt][3]);
            pa[2] = pack2(T(), s[2 * kt + 1][0], s[2 * kt + 1][1]);
            pa[3] = pack2(T(), s[2 * kt + 1][2], s[2 * kt + 1][3]);
#pragma unroll
            for (int d2 = 0; d2 < D / 16; d2++) {
                uint32_t bv[4];
                const int i = lane >> 3, r = lane & 7;
                ldmatrix_x4_trans(bv, Vs + (kt * 16 + r + 8 * (i & 1)) * LDS + d2 * 16 + 8 * (i >> 1));
                mma16816(T(), o[2 * d2], pa, bv[0], bv[1]);
                mma16816(T(), o[2 * d2 + 1], pa, bv[2], bv[3]);
            }
        }
    }

#pragma unroll
    for (int h = 0; h < 2; h++) {
        lsum[h] += GPU_SHFL_XOR(lsum[h], 1);
        lsum[h] += GPU_SHFL_XOR(lsum[h], 2);
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        if (!live[h]) continue;
        const float inv = lsum[h] > 0.0f ? 1.0f / lsum[h] : 0.0f;
        const int64_t row = wrow0 + g + 8 * h, t = row / G;
        const int head = hk * G + (int)(row % G);
        T *op = out + ((b * T_ + t) * Hq + head) * (int64_t)d;
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) {
            const int c = nt * 8 + tig * 2; /* d % 8 == 0: c < d implies c + 1 < d */
            if (c < d) {
                op[c] = from_f<T>(o[nt][2 * h] * inv);
                op[c + 1] = from_f<T>(o[nt][2 * h + 1] * inv);
            }
        }
    }
}

template <typename T, int D, bool TERMS>
static int launch_flash_attention_t(const AttLaunch &a, gpuStream_t stream, awq_err *err) {
    const size_t smem = fa_smem_bytes(D);
    AWQ_CUDA_CHECK(gpuFuncSetAttribute(flash_attention_kernel<T, D, TERMS>,
                                        gpuFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                   err);
    const int64_t G = a.Hq / a.Hkv;
    const dim3 grid((unsigned)((a.T * G + FA_ROWS - 1) / FA_ROWS), (unsigned)a.Hkv, (unsigned)a.B);
    flash_attention_kernel<T, D, TERMS><<<grid, FA_WARPS * 32, smem, stream>>>(
        (const T *)a.q, (const T *)a.k, (const T *)a.v, (T *)a.out, a.T, a.S, (int)a.Hq,
        (int)a.Hkv, (int)a.d, a.qscale, a.q_pos0, a.window, a.kv_len, a.alibi, a.cap2);
    return launch_check("flash_attention_kernel", err);
}

template <typename T, int D>
static int launch_flash_attention(const AttLaunch &a, gpuStream_t stream, awq_err *err) {
    return a.alibi || a.cap2 > 0.0f ? launch_flash_attention_t<T, D, true>(a, stream, err)
                                    : launch_flash_attention_t<T, D, false>(a, stream, err);
}

extern "C" int awq_cuda_attention(awq_cuda_ctx *ctx, int dt, const void *q, const void *k,
                                  const void *v, void *out, int64_t B, int64_t T, int64_t S,
                                  int64_t Hq, int64_t Hkv, int64_t d, float scale, int64_t q_pos0,
                                  int64_t window, const int64_t *kv_len, void *stream,
                                  awq_err *err) {
    awq_cuda_attention_opts opt;
    memset(&opt, 0, sizeof opt);
    opt.window = window;
    opt.kv_len = kv_len;
    return awq_cuda_attention_ex(ctx, dt, q, k, v, out, B, T, S, Hq, Hkv, d, scale, q_pos0, &opt,
                                 stream, err);
}

extern "C" int awq_cuda_attention_ex(awq_cuda_ctx *ctx, int dt, const void *q, const void *k,
                                     const void *v, void *out, int64_t B, int64_t T, int64_t S,
                                     int64_t Hq, int64_t Hkv, int64_t d, float scale,
                                     int64_t q_pos0, const awq_cuda_attention_opts *opt,
                                     void *stream, awq_err *err) {
    awq_cuda_attention_opts none;
    memset(&none, 0, sizeof none);
    if (!opt) opt = &none;
    const int64_t dv = opt->dv ? opt->dv : d, dmax = dv > d ? dv : d;
    if (B < 0 || T < 0 || S < 0 || Hq <= 0 || Hkv <= 0 || d <= 0 || dv <= 0 || q_pos0 < 0)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "attention: bad sizes B=%lld T=%lld S=%lld Hq=%lld Hkv=%lld d=%lld "
                           "dv=%lld q_pos0=%lld",
                           (long long)B, (long long)T, (long long)S, (long long)Hq, (long long)Hkv,
                           (long long)d, (long long)dv, (long long)q_pos0);
    if (Hq % Hkv)
        return awq_set_err(err, AWQ_ERR_VALUE, "attention: %lld query heads are not a multiple of "
                           "%lld kv heads", (long long)Hq, (long long)Hkv);
    if (dmax > 256)
        return awq_set_err(err, AWQ_ERR_VALUE, "attention: head dim %lld > 256 is not supported on "
                           "the GPU", (long long)dmax);
    if (!(opt->softcap >= 0.0f) || !isfinite(opt->softcap))
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "attention: softcap must be finite and >= 0 (0 = off; got %g)",
                           (double)opt->softcap);
    if (opt->alibi && S > (1 << 24)) /* ALiBi distances j - p are formed in fp32 */
        return awq_set_err(err, AWQ_ERR_VALUE, "attention: alibi needs S <= 2^24 keys (got S=%lld)",
                           (long long)S);
    if (B > 65535 || Hkv > 65535 || (T * (Hq / Hkv) + ATT_ROWS - 1) / ATT_ROWS > INT_MAX)
        return awq_set_err(err, AWQ_ERR_VALUE, "attention: grid too large (B=%lld, Hkv=%lld, T=%lld)",
                           (long long)B, (long long)Hkv, (long long)T);
    if (B == 0 || T == 0) return AWQ_OK;
    int st = awq_cuda_ctx_activate(ctx, err);
    if (st) return st;
    const float log2e = 1.4426950408889634f; /* softmax in base 2 */
    const AttLaunch a = {q,  k,  v,  out,          B,       T,           S,           Hq,
                         Hkv, d, dv, scale * log2e, q_pos0, opt->window, opt->kv_len, opt->alibi,
                         opt->softcap * log2e};
    gpuStream_t s = (gpuStream_t)stream;
    /* Tensor cores for fp16 / bf16 with one head dim for q/k/v and 16-byte aligned rows; the
     * CUDA-core kernel otherwise (fp32 inputs, d > 128, d % 8 != 0, dv != d, unaligned views). */
    const uintptr_t align = (uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)out;
    if (AWQ_GPU_PTX && (dt == AWQ_DT_F16 || dt == AWQ_DT_BF16) && dv == d && d % 8 == 0 && d <= 128 &&
        align % 16 == 0) {
        if (dt == AWQ_DT_F16)
            return d <= 64 ? launch_flash_attention<__half, 64>(a, s, err)
                           : launch_flash_attention<__half, 128>(a, s, err);
        return d <= 64 ? launch_flash_attention<gpu_bf16, 64>(a, s, err)
                       : launch_flash_attention<gpu_bf16, 128>(a, s, err);
    }
#define ATT_LAUNCH(DPL) DISPATCH_FLOAT("attention", dt, TT, return launch_attention<TT, DPL>(a, s, err))
    if (dmax <= 64) {
        ATT_LAUNCH(2);
    } else if (dmax <= 128) {
        ATT_LAUNCH(4);
    } else {
        ATT_LAUNCH(8);
    }
#undef ATT_LAUNCH
    return AWQ_OK;
}

/* ---------------------------------------------------------------- linear (cuBLAS) */

static gpuDataType_t cuda_type(int dt) {
    return dt == AWQ_DT_F16 ? GPU_R_16F : dt == AWQ_DT_BF16 ? GPU_R_16BF : GPU_R_32F;
}

template <typename T> __global__ void bias_add_kernel(T *y, const float *bias, int64_t M, int64_t N) {
    const int64_t n_all = M * N;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n_all;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = from_f<T>(to_f(y[i]) + bias[i % N]);
}

extern "C" int awq_cuda_linear(awq_cuda_ctx *ctx, int dt, const void *x, const void *w,
                               const float *bias, int y_dt, void *y, int64_t M, int64_t K,
                               int64_t N, void *stream, awq_err *err) {
    if (M < 0 || K <= 0 || N < 0 || M > INT_MAX || K > INT_MAX || N > INT_MAX)
        return awq_set_err(err, AWQ_ERR_VALUE, "linear: bad sizes M=%lld K=%lld N=%lld",
                           (long long)M, (long long)K, (long long)N);
    if (dt != AWQ_DT_F32 && dt != AWQ_DT_F16 && dt != AWQ_DT_BF16) return bad_dtype("linear", dt, err);
    if (y_dt != dt && y_dt != AWQ_DT_F32)
        return awq_set_err(err, AWQ_ERR_VALUE, "linear: output dtype %s must be the input's (%s) or "
                           "float32", awq_dtype_name(y_dt), awq_dtype_name(dt));
    if (M == 0 || N == 0) return AWQ_OK;
    void *hv = NULL;
    int st = awq_cuda_ctx_blas(ctx, &hv, err);
    if (st) return st;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    gpublasHandle_t h = (gpublasHandle_t)hv;
    gpuStream_t s = (gpuStream_t)stream;
    AWQ_CUBLAS_CHECK(gpublasSetStream(h, s), err);
    const float alpha = 1.0f, beta = 0.0f;
    /* Row-major y[M,N] = x[M,K] w[N,K]^T is column-major y^T[N,M] = (w^T)^T[N,K] x^T[K,M]: w is
     * column-major [K, N] (lda K) taken transposed, x column-major [K, M] (ldb K). */
    AWQ_CUBLAS_CHECK(gpublasGemmEx(h, GPUBLAS_OP_T, GPUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha, w,
                                  cuda_type(dt), (int)K, x, cuda_type(dt), (int)K, &beta, y,
                                  cuda_type(y_dt), (int)N, GPUBLAS_COMPUTE_32F, GPUBLAS_GEMM_DEFAULT),
                     err);
    if (bias) {
        DISPATCH_FLOAT("linear", y_dt, T,
                       bias_add_kernel<T><<<grid_for(M * N, 256), 256, 0, s>>>((T *)y, bias, M, N));
        return launch_check("bias_add_kernel", err);
    }
    return AWQ_OK;
}

/* ---------------------------------------------------------------- pseudo-quantize
 *
 * quant.h's formulas with the same correctly rounded fp32 operations as quant.c; __fdiv_rn /
 * __fmul_rn / __fadd_rn / __fsub_rn keep nvcc from contracting into FMAs, rintf rounds half to
 * even. One warp per group.
 */

struct QParams {
    float s, z, qlo, qhi;
};

/* Scale and zero of a group with extremes mx >= mn (finite). */
__device__ __forceinline__ QParams qparams(float mx, float mn, int bits, int zero_point) {
    QParams p;
    if (zero_point) {
        p.qlo = 0.0f;
        p.qhi = (float)((1 << bits) - 1);
        p.s = __fdiv_rn(fmaxf(__fsub_rn(mx, mn), 1e-5f), p.qhi);
        float z = -rintf(__fdiv_rn(mn, p.s));
        p.z = z < p.qlo ? p.qlo : (z > p.qhi ? p.qhi : z);
    } else {
        const float amax = fmaxf(fabsf(mx), fabsf(mn));
        p.qhi = (float)((1 << (bits - 1)) - 1);
        p.qlo = -(float)(1 << (bits - 1));
        p.s = __fdiv_rn(fmaxf(amax, 1e-5f), p.qhi);
        p.z = 0.0f;
    }
    return p;
}

/* The ends of the grid the codes can reach are finite (quant.c's quant_group check): false when a
 * group's range is so close to FLT_MAX that s or (q - z) * s overflows. */
__device__ __forceinline__ bool grid_finite(QParams p, int zero_point) {
    const float hi = __fmul_rn(__fsub_rn(p.qhi, p.z), p.s);
    const float lo = zero_point ? __fmul_rn(__fsub_rn(p.qlo, p.z), p.s) : -hi;
    return isfinite(hi) && isfinite(lo);
}

__device__ __forceinline__ float qdq(float w, QParams p) {
    float q = __fadd_rn(rintf(__fdiv_rn(w, p.s)), p.z);
    q = q < p.qlo ? p.qlo : (q > p.qhi ? p.qhi : q);
    return __fmul_rn(__fsub_rn(q, p.z), p.s);
}

/* Extremes of one group p[0..g) over a warp (every lane gets them); false when a value is NaN/Inf. */
template <typename T>
__device__ __forceinline__ bool group_minmax(const T *p, int64_t g, int lane, float &mx, float &mn) {
    mx = -INFINITY;
    mn = INFINITY;
    bool finite = true;
    for (int64_t i = lane; i < g; i += 32) {
        const float v = to_f(p[i]);
        finite = finite && isfinite(v);
        mx = fmaxf(mx, v);
        mn = fminf(mn, v);
    }
    mx = warp_max(mx);
    mn = warp_min(mn);
    return GPU_ALL(finite);
}

template <typename T>
__global__ void pseudo_quantize_kernel(const T *w, T *wdq, int64_t N, int64_t K, int64_t g,
                                       int bits, int zero_point, unsigned long long *bad) {
    const int lane = threadIdx.x & 31;
    const int64_t G = K / g, ngroups = N * G;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    for (int64_t grp = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); grp < ngroups;
         grp += warps) {
        const int64_t n = grp / G, jg = grp % G;
        const T *p = w + n * K + jg * g;
        T *out = wdq + n * K + jg * g;
        float mx, mn;
        if (!group_minmax(p, g, lane, mx, mn)) {
            if (lane == 0 && bad) atomicMin(bad, (unsigned long long)grp);
            continue;
        }
        const QParams qp = qparams(mx, mn, bits, zero_point);
        if (bad && !grid_finite(qp, zero_point)) { /* unchecked calls write the Inf / NaN values */
            if (lane == 0) atomicMin(bad, (unsigned long long)grp);
            continue;
        }
        for (int64_t i = lane; i < g; i += 32) out[i] = from_f<T>(qdq(to_f(p[i]), qp));
    }
}

static int check_quant(const char *op, int64_t N, int64_t K, int64_t g, int bits, awq_err *err) {
    if (N < 0 || K <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: bad weight shape [%lld, %lld]", op,
                           (long long)N, (long long)K);
    if (g <= 0 || K % g)
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: group size %lld must be positive and divide "
                           "K=%lld (pass K itself for group_size -1)", op, (long long)g, (long long)K);
    if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: w_bit must be 2, 3, 4 or 8 (got %d)", op, bits);
    return AWQ_OK;
}

/* Host-side message for the first non-finite value of group (n, jg) of w[N, K] (dt on device);
 * copies that one group back. */
static int report_bad_group(awq_cuda_ctx *ctx, const char *op, int dt, const void *w, int64_t K,
                            int64_t g, int64_t n, int64_t jg, void *stream, awq_err *err) {
    const int es = awq_dtype_size(dt);
    unsigned char buf[1024 * 4];
    int64_t first = -1;
    int is_nan = 1;
    for (int64_t c0 = 0; c0 < g && first < 0; c0 += 1024) {
        const int64_t cnt = g - c0 < 1024 ? g - c0 : 1024;
        int st = awq_cuda_copy(ctx, buf, (const char *)w + (n * K + jg * g + c0) * es,
                               (size_t)(cnt * es), AWQ_COPY_D2H, stream, err);
        if (st) return st;
        for (int64_t i = 0; i < cnt; i++) {
            float v;
            if (dt == AWQ_DT_F32) v = ((const float *)buf)[i];
            else if (dt == AWQ_DT_F16) v = awq_fp16_to_fp32(((const uint16_t *)buf)[i]);
            else {
                uint32_t bits32 = (uint32_t)((const uint16_t *)buf)[i] << 16;
                memcpy(&v, &bits32, 4);
            }
            if (!isfinite(v)) {
                first = c0 + i;
                is_nan = isnan(v);
                break;
            }
        }
    }
    if (first < 0)
        return awq_set_err(err, AWQ_ERR_NUMERIC,
                           "%s: w row %lld, group %lld (columns %lld..%lld): the quantization grid of this "
                           "group overflows float32 (its range is too close to FLT_MAX)",
                           op, (long long)n, (long long)jg, (long long)(jg * g), (long long)(jg * g + g - 1));
    return awq_set_err(err, AWQ_ERR_NUMERIC,
                       "%s: w row %lld, group %lld (columns %lld..%lld) holds %s at column %lld; "
                       "weights must be finite",
                       op, (long long)n, (long long)jg, (long long)(jg * g),
                       (long long)(jg * g + g - 1), is_nan ? "NaN" : "Inf",
                       (long long)(jg * g + (first < 0 ? 0 : first)));
}

extern "C" int awq_cuda_pseudo_quantize(awq_cuda_ctx *ctx, int dt, const void *w, void *w_dq,
                                        int64_t N, int64_t K, int64_t g, int bits, int zero_point,
                                        int check_finite, void *stream, awq_err *err) {
    int st = check_quant("pseudo_quantize", N, K, g, bits, err);
    if (st) return st;
    if (N == 0) return AWQ_OK;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    gpuStream_t s = (gpuStream_t)stream;
    unsigned long long *bad = NULL;
    if (check_finite) {
        if ((st = awq_cuda_alloc(ctx, sizeof *bad, "pseudo_quantize flag", (void **)&bad, err)))
            return st;
        if ((st = awq_cuda_memset(ctx, bad, 0xFF, sizeof *bad, stream, err))) goto done;
    }
    {
        const int64_t ngroups = N * (K / g);
        const unsigned blocks = grid_for(ngroups, 8); /* 8 warps per block, one group each */
        switch (dt) {
        case AWQ_DT_F32:
            pseudo_quantize_kernel<float><<<blocks, 256, 0, s>>>((const float *)w, (float *)w_dq, N, K,
                                                                g, bits, zero_point, bad);
            break;
        case AWQ_DT_F16:
            pseudo_quantize_kernel<__half><<<blocks, 256, 0, s>>>((const __half *)w, (__half *)w_dq,
                                                                 N, K, g, bits, zero_point, bad);
            break;
        case AWQ_DT_BF16:
            pseudo_quantize_kernel<gpu_bf16><<<blocks, 256, 0, s>>>(
                (const gpu_bf16 *)w, (gpu_bf16 *)w_dq, N, K, g, bits, zero_point, bad);
            break;
        default: st = bad_dtype("pseudo_quantize", dt, err); goto done;
        }
        if ((st = launch_check("pseudo_quantize_kernel", err))) goto done;
    }
    if (check_finite) {
        unsigned long long first = 0;
        if ((st = awq_cuda_copy(ctx, &first, bad, sizeof first, AWQ_COPY_D2H, stream, err))) goto done;
        if (first != ~0ULL) {
            const int64_t G = K / g;
            st = report_bad_group(ctx, "pseudo_quantize", dt, w, K, g, (int64_t)first / G,
                                  (int64_t)first % G, stream, err);
            if (st == AWQ_OK) st = AWQ_ERR_NUMERIC;
        }
    }
done:
    if (bad) awq_cuda_free(ctx, bad, sizeof *bad);
    return st;
}

/* ---------------------------------------------------------------- clip search
 *
 * Per group j: Gram_j = X_j^T X_j ([g, g] fp32, one strided-batched cuBLAS GEMM for all groups).
 * Work items are (row n, candidate i) pairs; a block takes CLIP_NV consecutive items of one group:
 *   phase 1 (a warp per item): d = Q(clamp(w, +-max_val_i)) - w into shared memory [NV][g];
 *   phase 2 (a thread per column b): e_v[b] = sum_a d_v[a] Gram[a][b] for all NV items at once (one
 *           pass over Gram per block), err_v = sum_b e_v[b] d_v[b] / T;
 * then a kernel per (n, j) keeps the first minimum over candidates, as the CPU path does.
 */
#define CLIP_NV 32
#define CLIP_THREADS 128

/* fp32(org * fp32(1 - i / n_grid)) as quant.c computes it. */
__device__ __forceinline__ float clip_value(float org, int i, int n_grid) {
    return __fmul_rn(org, (float)(1.0 - (double)i / (double)n_grid));
}

/* max|w| per (n, j) into org[N, G]; the first group holding NaN/Inf into *bad_w. */
template <typename T>
__global__ void group_absmax_kernel(const T *w, float *org, int64_t N, int64_t K, int64_t g,
                                    unsigned long long *bad_w) {
    const int lane = threadIdx.x & 31;
    const int64_t G = K / g, ngroups = N * G;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    for (int64_t grp = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); grp < ngroups;
         grp += warps) {
        const T *p = w + (grp / G) * K + (grp % G) * g;
        float m = 0.0f;
        bool finite = true;
        for (int64_t i = lane; i < g; i += 32) {
            const float v = to_f(p[i]);
            finite = finite && isfinite(v);
            m = fmaxf(m, fabsf(v));
        }
        m = warp_max(m);
        if (!GPU_ALL(finite) && lane == 0 && bad_w) atomicMin(bad_w, (unsigned long long)grp);
        if (lane == 0) org[grp] = m;
    }
}

template <typename T> __global__ void first_nonfinite_kernel(const T *x, int64_t n, unsigned long long *bad) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        if (!isfinite(to_f(x[i]))) atomicMin(bad, (unsigned long long)i);
}

template <typename T>
__global__ void __launch_bounds__(CLIP_THREADS)
    clip_err_kernel(const T *w, const float *org, const float *gram, float *errs, int64_t N,
                    int64_t K, int64_t T_, int g, int bits, int zero_point, int n_grid, int ncand) {
    extern __shared__ float clip_D[]; /* [CLIP_NV][g] */
    __shared__ float red[CLIP_THREADS / 32][CLIP_NV];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t G = K / g, jg = blockIdx.y;
    const int64_t item0 = (int64_t)blockIdx.x * CLIP_NV, nitems = N * ncand;

    /* phase 1: d vectors */
    for (int v = warp; v < CLIP_NV; v += CLIP_THREADS / 32) {
        float *dv = clip_D + v * g;
        const int64_t item = item0 + v;
        if (item >= nitems) {
            for (int a = lane; a < g; a += 32) dv[a] = 0.0f;
            continue;
        }
        const int64_t n = item / ncand;
        const int i = (int)(item % ncand);
        const T *p = w + n * K + jg * g;
        const float mv = clip_value(org[n * G + jg], i, n_grid);
        float mx = -INFINITY, mn = INFINITY;
        for (int a = lane; a < g; a += 32) {
            const float c = fminf(fmaxf(to_f(p[a]), -mv), mv);
            mx = fmaxf(mx, c);
            mn = fminf(mn, c);
        }
        const QParams qp = qparams(warp_max(mx), warp_min(mn), bits, zero_point);
        for (int a = lane; a < g; a += 32) {
            const float wv = to_f(p[a]);
            dv[a] = __fsub_rn(qdq(fminf(fmaxf(wv, -mv), mv), qp), wv);
        }
    }
    __syncthreads();

    /* phase 2: err_v = d_v^T Gram d_v */
    const float *gj = gram + jg * (int64_t)g * g;
    float acc[CLIP_NV];
#pragma unroll
    for (int v = 0; v < CLIP_NV; v++) acc[v] = 0.0f;
    for (int b = threadIdx.x; b < g; b += CLIP_THREADS) {
        float e[CLIP_NV];
#pragma unroll
        for (int v = 0; v < CLIP_NV; v++) e[v] = 0.0f;
        for (int a = 0; a < g; a++) {
            const float gab = gj[(int64_t)a * g + b];
#pragma unroll
            for (int v = 0; v < CLIP_NV; v++) e[v] = fmaf(clip_D[v * g + a], gab, e[v]);
        }
#pragma unroll
        for (int v = 0; v < CLIP_NV; v++) acc[v] = fmaf(e[v], clip_D[v * g + b], acc[v]);
    }
#pragma unroll
    for (int v = 0; v < CLIP_NV; v++) {
        const float r = warp_sum(acc[v]);
        if (lane == 0) red[warp][v] = r;
    }
    __syncthreads();
    if (threadIdx.x < CLIP_NV) {
        const int64_t item = item0 + threadIdx.x;
        if (item < nitems) {
            float s = 0.0f;
            for (int wi = 0; wi < CLIP_THREADS / 32; wi++) s += red[wi][threadIdx.x];
            const int64_t n = item / ncand;
            const int i = (int)(item % ncand);
            errs[(n * G + jg) * ncand + i] = s / (float)T_;
        }
    }
}

/* max_val[n, j] = the first candidate with the least error; *bad_e flags a NaN error. */
__global__ void clip_pick_kernel(const float *errs, const float *org, float *max_val, int64_t NG,
                                 int ncand, int n_grid, unsigned long long *bad_e) {
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < NG;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const float *e = errs + idx * ncand;
        float best = INFINITY;
        int bi = 0;
        for (int i = 0; i < ncand; i++) {
            if (isnan(e[i])) atomicMin(bad_e, (unsigned long long)idx);
            if (e[i] < best) {
                best = e[i];
                bi = i;
            }
        }
        max_val[idx] = clip_value(org[idx], bi, n_grid);
    }
}

extern "C" int awq_cuda_clip_search(awq_cuda_ctx *ctx, int dt, const void *w, const void *x,
                                    float *max_val, int64_t N, int64_t K, int64_t T, int64_t g,
                                    int bits, int zero_point, int n_grid, float max_shrink,
                                    void *stream, awq_err *err) {
    int st = check_quant("clip_search", N, K, g, bits, err);
    if (st) return st;
    if (T <= 0 || T > INT_MAX)
        return awq_set_err(err, AWQ_ERR_VALUE, "clip_search: need 1 <= T <= 2^31-1 tokens (T=%lld)",
                           (long long)T);
    if (n_grid <= 0 || !(max_shrink >= 0.0f && max_shrink <= 1.0f))
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "clip_search: need n_grid >= 1 and 0 <= max_shrink <= 1 (got %d, %g)",
                           n_grid, (double)max_shrink);
    if (g > 1024 || K > INT_MAX)
        return awq_set_err(err, AWQ_ERR_VALUE, "clip_search: group size %lld > 1024 is not supported "
                           "on the GPU", (long long)g);
    if (dt != AWQ_DT_F32 && dt != AWQ_DT_F16 && dt != AWQ_DT_BF16) return bad_dtype("clip_search", dt, err);
    if (N == 0) return AWQ_OK;
    const int64_t G = K / g;
    /* int(max_shrink * n_grid) as Python computes it (see quant.c) */
    const int ncand = (int)floor((double)max_shrink * n_grid + 1e-5);
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    gpuStream_t s = (gpuStream_t)stream;
    unsigned long long *flags = NULL; /* [0] first bad w group, [1] first bad x element, [2] NaN error */
    float *gram = NULL, *errs = NULL;
    const size_t gram_bytes = (size_t)(G * g * g) * sizeof(float);
    const size_t errs_bytes = (size_t)(N * G * (ncand > 0 ? ncand : 1)) * sizeof(float);
    unsigned long long hflags[3];
    if ((st = awq_cuda_alloc(ctx, 3 * sizeof *flags, "clip_search flags", (void **)&flags, err))) return st;
    if ((st = awq_cuda_memset(ctx, flags, 0xFF, 3 * sizeof *flags, stream, err))) goto done;

    DISPATCH_FLOAT("clip_search", dt, TT, {
        group_absmax_kernel<TT><<<grid_for(N * G, 8), 256, 0, s>>>((const TT *)w, max_val, N, K, g,
                                                                   flags);
        if ((st = launch_check("group_absmax_kernel", err))) goto done;
        first_nonfinite_kernel<TT><<<grid_for(T * K, 256), 256, 0, s>>>((const TT *)x, T * K,
                                                                        flags + 1);
        if ((st = launch_check("first_nonfinite_kernel", err))) goto done;
    });
    if (ncand > 0) {
        if ((st = awq_cuda_alloc(ctx, gram_bytes, "clip_search Gram matrices", (void **)&gram, err)))
            goto done;
        if ((st = awq_cuda_alloc(ctx, errs_bytes, "clip_search candidate errors", (void **)&errs, err)))
            goto done;
        void *hv = NULL;
        if ((st = awq_cuda_ctx_blas(ctx, &hv, err))) goto done;
        gpublasHandle_t h = (gpublasHandle_t)hv;
        const float one = 1.0f, zero = 0.0f;
        gpublasStatus_t bs = gpublasSetStream(h, s);
        /* Gram_j[a][b] = sum_t x[t, jg+a] x[t, jg+b]: column-major A_j = x + j*g as [g, T] with
         * leading dimension K, times its transpose; batch stride g columns of x. */
        if (bs == GPUBLAS_STATUS_SUCCESS)
            bs = gpublasGemmStridedBatchedEx(h, GPUBLAS_OP_N, GPUBLAS_OP_T, (int)g, (int)g, (int)T, &one,
                                            x, cuda_type(dt), (int)K, (long long)g, x, cuda_type(dt),
                                            (int)K, (long long)g, &zero, gram, GPU_R_32F, (int)g,
                                            (long long)(g * g), (int)G, GPUBLAS_COMPUTE_32F,
                                            GPUBLAS_GEMM_DEFAULT);
        if (bs != GPUBLAS_STATUS_SUCCESS) {
            st = awq_set_err(err, AWQ_ERR_RUNTIME, GPUBLAS_API "GemmStridedBatchedEx (clip_search Gram) "
                             "failed: %s", gpublasGetStatusString(bs));
            goto done;
        }
        const size_t smem = (size_t)CLIP_NV * g * sizeof(float);
        const dim3 grid((unsigned)((N * ncand + CLIP_NV - 1) / CLIP_NV), (unsigned)G);
        if (grid.y > 65535 || N * ncand / CLIP_NV > INT_MAX) {
            st = awq_set_err(err, AWQ_ERR_VALUE, "clip_search: too many groups (%lld) or rows (%lld)",
                             (long long)G, (long long)N);
            goto done;
        }
        DISPATCH_FLOAT("clip_search", dt, TT, {
            gpuError_t e = gpuFuncSetAttribute(clip_err_kernel<TT>,
                                                 gpuFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
            if (e != gpuSuccess) {
                st = awq_set_err(err, AWQ_ERR_RUNTIME, GPU_API "FuncSetAttribute(clip_err_kernel) failed: %s",
                                 gpuGetErrorString(e));
                goto done;
            }
            clip_err_kernel<TT><<<grid, CLIP_THREADS, smem, s>>>((const TT *)w, max_val, gram, errs, N,
                                                                 K, T, (int)g, bits, zero_point,
                                                                 n_grid, ncand);
            if ((st = launch_check("clip_err_kernel", err))) goto done;
        });
        /* max_val holds org_max until here; each thread reads org[idx] before overwriting
         * max_val[idx] with the pick (same element, same thread). */
        clip_pick_kernel<<<grid_for(N * G, 256), 256, 0, s>>>(errs, max_val, max_val, N * G, ncand,
                                                               n_grid, flags + 2);
        if ((st = launch_check("clip_pick_kernel", err))) goto done;
    }
    if ((st = awq_cuda_copy(ctx, hflags, flags, sizeof hflags, AWQ_COPY_D2H, stream, err))) goto done;
    if (hflags[1] != ~0ULL) {
        st = awq_set_err(err, AWQ_ERR_NUMERIC, "clip_search: x token %lld, column %lld holds NaN or "
                         "Inf; inputs must be finite", (long long)(hflags[1] / K),
                         (long long)(hflags[1] % K));
    } else if (hflags[0] != ~0ULL) {
        st = report_bad_group(ctx, "clip_search", dt, w, K, g, (int64_t)(hflags[0] / G),
                              (int64_t)(hflags[0] % G), stream, err);
        if (st == AWQ_OK) st = AWQ_ERR_NUMERIC;
    } else if (hflags[2] != ~0ULL) {
        st = awq_set_err(err, AWQ_ERR_NUMERIC, "clip_search: the error of row %lld, group %lld is "
                         "NaN (overflow in the Gram matrix?)", (long long)(hflags[2] / G),
                         (long long)(hflags[2] % G));
    }
done:
    if (flags) awq_cuda_free(ctx, flags, 3 * sizeof *flags);
    if (gram) awq_cuda_free(ctx, gram, gram_bytes);
    if (errs) awq_cuda_free(ctx, errs, errs_bytes);
    return st;
}

/* ---------------------------------------------------------------- strided copy */

struct StridedDesc {
    int64_t shape[8];
    int64_t strides[8]; /* elements */
    int ndim;
};

template <typename E>
__global__ void copy_strided_kernel(const E *src, E *dst, StridedDesc desc, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t rem = i, off = 0;
        for (int a = desc.ndim - 1; a >= 0; a--) {
            const int64_t c = rem % desc.shape[a];
            rem /= desc.shape[a];
            off += c * desc.strides[a];
        }
        dst[i] = src[off];
    }
}

extern "C" int awq_cuda_copy_strided(awq_cuda_ctx *ctx, int elem_size, const void *src,
                                     const int64_t *shape, const int64_t *strides, int ndim,
                                     void *dst, void *stream, awq_err *err) {
    if (ndim < 0 || ndim > 8)
        return awq_set_err(err, AWQ_ERR_VALUE, "copy_strided: %d dims (at most 8)", ndim);
    StridedDesc desc;
    desc.ndim = ndim;
    int64_t n = 1;
    for (int a = 0; a < ndim; a++) {
        if (shape[a] < 0) return awq_set_err(err, AWQ_ERR_VALUE, "copy_strided: negative dim");
        desc.shape[a] = shape[a];
        desc.strides[a] = strides[a];
        n *= shape[a];
    }
    if (n == 0) return AWQ_OK;
    int st = awq_cuda_ctx_activate(ctx, err);
    if (st) return st;
    gpuStream_t s = (gpuStream_t)stream;
    const unsigned blocks = grid_for(n, 256);
    switch (elem_size) {
    case 1: copy_strided_kernel<uint8_t><<<blocks, 256, 0, s>>>((const uint8_t *)src, (uint8_t *)dst, desc, n); break;
    case 2: copy_strided_kernel<uint16_t><<<blocks, 256, 0, s>>>((const uint16_t *)src, (uint16_t *)dst, desc, n); break;
    case 4: copy_strided_kernel<uint32_t><<<blocks, 256, 0, s>>>((const uint32_t *)src, (uint32_t *)dst, desc, n); break;
    case 8: copy_strided_kernel<uint64_t><<<blocks, 256, 0, s>>>((const uint64_t *)src, (uint64_t *)dst, desc, n); break;
    default: return awq_set_err(err, AWQ_ERR_VALUE, "copy_strided: element size %d", elem_size);
    }
    return launch_check("copy_strided_kernel", err);
}

/* ---------------------------------------------------------------- row gather / scatter-add (MoE) */

/* dst[i, :] = src[idx[i], :], i < n. Indices outside [0, M) leave the row untouched (the Python
 * wrapper refuses them before the launch). */
template <typename T>
__global__ void index_rows_kernel(const T *src, int64_t M, const int64_t *idx, T *dst, int64_t n, int64_t K) {
    const int64_t total = n * K;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = idx[i / K];
        if (r >= 0 && r < M) dst[i] = src[r * K + i % K];
    }
}

/* dst[idx[i], :] += w[i] * src[i, :] in fp32 (w NULL: 1). The indices of one call are distinct (one
 * expert sees a token once), so no two threads write one element. */
template <typename T>
__global__ void index_add_rows_kernel(T *dst, int64_t M, const int64_t *idx, const T *src, const float *w,
                                      int64_t n, int64_t K) {
    const int64_t total = n * K;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t row = i / K, r = idx[row];
        if (r < 0 || r >= M) continue;
        T *d = dst + r * K + i % K;
        *d = from_f<T>(to_f(*d) + (w ? w[row] : 1.0f) * to_f(src[i]));
    }
}

extern "C" int awq_cuda_index_rows(awq_cuda_ctx *ctx, int dt, const void *src, int64_t M, const int64_t *idx,
                                   int64_t n, int64_t K, void *dst, void *stream, awq_err *err) {
    int st = check_nonneg("index_rows", n, K, err);
    if (st || n * K == 0) return st;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    DISPATCH_FLOAT("index_rows", dt, T,
                   index_rows_kernel<T><<<grid_for(n * K, 256), 256, 0, (gpuStream_t)stream>>>(
                       (const T *)src, M, idx, (T *)dst, n, K));
    return launch_check("index_rows_kernel", err);
}

extern "C" int awq_cuda_index_add_rows(awq_cuda_ctx *ctx, int dt, void *dst, int64_t M, const int64_t *idx,
                                       const void *src, const float *w, int64_t n, int64_t K, void *stream,
                                       awq_err *err) {
    int st = check_nonneg("index_add_rows", n, K, err);
    if (st || n * K == 0) return st;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    DISPATCH_FLOAT("index_add_rows", dt, T,
                   index_add_rows_kernel<T><<<grid_for(n * K, 256), 256, 0, (gpuStream_t)stream>>>(
                       (T *)dst, M, idx, (const T *)src, w, n, K));
    return launch_check("index_add_rows_kernel", err);
}

/* out[i, :a] = x[i, :], out[i, a:] = y[i / y_group, :] for i < M (MLA: [k_nope | shared k_pe]). */
template <typename T>
__global__ void concat_cols_kernel(const T *x, const T *y, T *out, int64_t M, int64_t a, int64_t b,
                                   int64_t y_group) {
    const int64_t w = a + b, total = M * w;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / w, c = i % w;
        out[i] = c < a ? x[r * a + c] : y[(r / y_group) * b + (c - a)];
    }
}

extern "C" int awq_cuda_concat_cols(awq_cuda_ctx *ctx, int dt, const void *x, const void *y, void *out, int64_t M,
                                    int64_t a, int64_t b, int64_t y_group, void *stream, awq_err *err) {
    int st = check_nonneg("concat_cols", M, a + b, err);
    if (st || M * (a + b) == 0) return st;
    if (a < 0 || b < 0 || y_group < 1 || M % y_group)
        return awq_set_err(err, AWQ_ERR_VALUE, "concat_cols: bad widths %lld, %lld or y_group %lld for %lld rows",
                           (long long)a, (long long)b, (long long)y_group, (long long)M);
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    DISPATCH_FLOAT("concat_cols", dt, T,
                   concat_cols_kernel<T><<<grid_for(M * (a + b), 256), 256, 0, (gpuStream_t)stream>>>(
                       (const T *)x, (const T *)y, (T *)out, M, a, b, y_group));
    return launch_check("concat_cols_kernel", err);
}

/* ---------------------------------------------------------------- AWQ search helpers */

/* y[m, c] = x[m, c] * s[c] (or / s[c] when inverse): applies or undoes an AWQ input-channel scale
 * on weights [N, K] or activations [M, K]. */
template <typename T>
__global__ void scale_cols_kernel(const T *x, const float *s, T *y, int64_t M, int64_t K, int inverse,
                                  int per_row) {
    const int64_t n = M * K;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float sc = per_row ? s[i / K] : s[i % K];
        y[i] = from_f<T>(inverse ? to_f(x[i]) / sc : to_f(x[i]) * sc);
    }
}

static int scale_lines(awq_cuda_ctx *ctx, const char *op, int dt, const void *x, const float *s, void *y,
                       int64_t M, int64_t K, int inverse, int per_row, void *stream, awq_err *err) {
    int st = check_nonneg(op, M, K, err);
    if (st || M * K == 0) return st;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    DISPATCH_FLOAT(op, dt, T,
                   scale_cols_kernel<T><<<grid_for(M * K, 256), 256, 0, (gpuStream_t)stream>>>(
                       (const T *)x, s, (T *)y, M, K, inverse, per_row));
    return launch_check("scale_cols_kernel", err);
}

extern "C" int awq_cuda_scale_cols(awq_cuda_ctx *ctx, int dt, const void *x, const float *s, void *y,
                                   int64_t M, int64_t K, int inverse, void *stream, awq_err *err) {
    return scale_lines(ctx, "scale_cols", dt, x, s, y, M, K, inverse, 0, stream, err);
}

extern "C" int awq_cuda_scale_rows(awq_cuda_ctx *ctx, int dt, const void *x, const float *s, void *y,
                                   int64_t M, int64_t K, int inverse, void *stream, awq_err *err) {
    return scale_lines(ctx, "scale_rows", dt, x, s, y, M, K, inverse, 1, stream, err);
}

/* Block partial sums of (a - b)^2 in double, one atomicAdd per block (loss of one AWQ candidate). */
template <typename T>
__global__ void sq_diff_sum_kernel(const T *a, const T *b, int64_t n, double *acc) {
    __shared__ double part[32];
    double v = 0.0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const double d = (double)to_f(a[i]) - (double)to_f(b[i]);
        v += d * d;
    }
    for (int o = 16; o > 0; o >>= 1) v += GPU_SHFL_XOR(v, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += GPU_SHFL_XOR(v, o);
        if (threadIdx.x == 0) atomicAdd(acc, v);
    }
}

extern "C" int awq_cuda_sq_diff_sum(awq_cuda_ctx *ctx, int dt, const void *a, const void *b, int64_t n,
                                    double *out, void *stream, awq_err *err) {
    int st = check_nonneg("sq_diff_sum", n, 0, err);
    *out = 0.0;
    if (st || n == 0) return st;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    double *acc = NULL;
    if ((st = awq_cuda_alloc(ctx, sizeof *acc, "sq_diff_sum accumulator", (void **)&acc, err))) return st;
    gpuStream_t s = (gpuStream_t)stream;
    gpuError_t e = gpuMemsetAsync(acc, 0, sizeof *acc, s);
    if (e != gpuSuccess) {
        st = awq_set_err(err, AWQ_ERR_RUNTIME, GPU_API "MemsetAsync(sq_diff_sum accumulator) failed: %s",
                         gpuGetErrorString(e));
        goto done;
    }
    switch (dt) {
    case AWQ_DT_F32: sq_diff_sum_kernel<float><<<grid_for(n, 256), 256, 0, s>>>((const float *)a, (const float *)b, n, acc); break;
    case AWQ_DT_F16: sq_diff_sum_kernel<__half><<<grid_for(n, 256), 256, 0, s>>>((const __half *)a, (const __half *)b, n, acc); break;
    case AWQ_DT_BF16:
        sq_diff_sum_kernel<gpu_bf16><<<grid_for(n, 256), 256, 0, s>>>((const gpu_bf16 *)a, (const gpu_bf16 *)b, n, acc);
        break;
    default: st = bad_dtype("sq_diff_sum", dt, err); goto done;
    }
    if ((st = launch_check("sq_diff_sum_kernel", err))) goto done;
    e = gpuMemcpyAsync(out, acc, sizeof *acc, gpuMemcpyDeviceToHost, s);
    if (e == gpuSuccess) e = gpuStreamSynchronize(s);
    if (e != gpuSuccess)
        st = awq_set_err(err, AWQ_ERR_RUNTIME, "sq_diff_sum: copying the sum back failed: %s",
                         gpuGetErrorString(e));
done:
    awq_cuda_free(ctx, acc, sizeof *acc);
    return st;
}

/* ---------------------------------------------------------------- weight statistics, clamp, packing
 *
 * The quantizer's per-layer weight work, kept on the device with the fp32 master weights: the w_mean
 * statistic of the scale search, the clip (clamp to +-max_val per group) and the final 4-bit
 * quantization straight into the AutoAWQ GEMM qweight layout. Same fp32 operations as the host
 * (numpy / quant.c), so codes and scales match the CPU's bit for bit on the same fp32 weights.
 */

/* acc[k] += sum over rows n of |w[n,k]| / (amax[n, k/g] + 1e-6), in double. Threads run along k
 * (coalesced); blockIdx.y takes a slice of rows. */
template <typename T>
__global__ void weight_mean_kernel(const T *w, const float *amax, int64_t N, int64_t K, int64_t g,
                                   int64_t rows_per, double *acc) {
    const int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (k >= K) return;
    const int64_t G = K / g, j = k / g;
    const int64_t n0 = blockIdx.y * rows_per, n1 = n0 + rows_per < N ? n0 + rows_per : N;
    double sum = 0.0;
    for (int64_t n = n0; n < n1; n++)
        sum += (double)__fdiv_rn(fabsf(to_f(w[n * K + k])), __fadd_rn(amax[n * G + j], 1e-6f));
    atomicAdd(acc + k, sum);
}

extern "C" int awq_cuda_weight_mean(awq_cuda_ctx *ctx, int dt, const void *w, int64_t N, int64_t K,
                                    int64_t g, double *acc, void *stream, awq_err *err) {
    int st = check_quant("weight_mean", N, K, g, 4, err);
    if (st || N == 0) return st;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    gpuStream_t s = (gpuStream_t)stream;
    float *amax = NULL;
    const int64_t G = K / g;
    if ((st = awq_cuda_alloc(ctx, (size_t)(N * G) * sizeof(float), "weight_mean group maxima", (void **)&amax,
                             err)))
        return st;
    DISPATCH_FLOAT("weight_mean", dt, TT, {
        group_absmax_kernel<TT><<<grid_for(N * G, 8), 256, 0, s>>>((const TT *)w, amax, N, K, g, NULL);
        if ((st = launch_check("group_absmax_kernel", err))) goto done;
        const int64_t rows_per = 256;
        const dim3 grid((unsigned)((K + 255) / 256), (unsigned)((N + rows_per - 1) / rows_per));
        weight_mean_kernel<TT><<<grid, 256, 0, s>>>((const TT *)w, amax, N, K, g, rows_per, acc);
        if ((st = launch_check("weight_mean_kernel", err))) goto done;
    });
done:
    awq_cuda_free(ctx, amax, (size_t)(N * G) * sizeof(float));
    return st;
}

template <typename T>
__global__ void clamp_groups_kernel(const T *w, const float *mv, T *y, int64_t N, int64_t K, int64_t g) {
    const int64_t n = N * K, G = K / g;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float m = mv[(i / K) * G + (i % K) / g], v = to_f(w[i]);
        y[i] = from_f<T>(fminf(fmaxf(v, -m), m));
    }
}

extern "C" int awq_cuda_clamp_groups(awq_cuda_ctx *ctx, int dt, const void *w, const float *max_val,
                                     void *y, int64_t N, int64_t K, int64_t g, void *stream, awq_err *err) {
    int st = check_quant("clamp_groups", N, K, g, 4, err);
    if (st || N == 0) return st;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    DISPATCH_FLOAT("clamp_groups", dt, T,
                   clamp_groups_kernel<T><<<grid_for(N * K, 256), 256, 0, (gpuStream_t)stream>>>(
                       (const T *)w, max_val, (T *)y, N, K, g));
    return launch_check("clamp_groups_kernel", err);
}

/* Scale and zero code of every group (a warp each), quant_group()'s formulas. */
template <typename T>
__global__ void group_params_kernel(const T *w, float *scales, uint8_t *zeros, int64_t N, int64_t K, int64_t g,
                                    int bits, int zero_point, unsigned long long *bad) {
    const int lane = threadIdx.x & 31;
    const int64_t G = K / g, ngroups = N * G;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    for (int64_t grp = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); grp < ngroups;
         grp += warps) {
        const T *p = w + (grp / G) * K + (grp % G) * g;
        float mx, mn;
        if (!group_minmax(p, g, lane, mx, mn)) {
            if (lane == 0) atomicMin(bad, (unsigned long long)grp);
            continue;
        }
        if (lane == 0) {
            const QParams qp = qparams(mx, mn, bits, zero_point);
            if (!grid_finite(qp, zero_point)) {
                atomicMin(bad, (unsigned long long)grp);
                continue;
            }
            scales[grp] = qp.s;
            zeros[grp] = (uint8_t)(zero_point ? qp.z : -qp.qlo);
        }
    }
}

/* qweight[k][c] (int32, AutoAWQ GEMM order: nibble i holds column 8c + P[i], P = 0 2 4 6 1 3 5 7)
 * from w[N, K] and the group parameters; threads run along k (coalesced reads of w). */
template <typename T>
__global__ void pack_gemm_kernel(const T *w, const float *scales, const uint8_t *zeros, uint32_t *qweight,
                                 int64_t N, int64_t K, int64_t g, int zero_point) {
    const int64_t C8 = N / 8, total = C8 * K, G = K / g;
    const float qlo = zero_point ? 0.0f : -8.0f, qhi = zero_point ? 15.0f : 7.0f, off = -qlo;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t c = i / K, k = i % K, j = k / g;
        uint32_t word = 0;
#pragma unroll
        for (int nib = 0; nib < 8; nib++) {
            const int64_t n = 8 * c + (nib & 3) * 2 + (nib >> 2); /* P[nib] */
            const float sc = scales[n * G + j];
            const float z = zero_point ? (float)zeros[n * G + j] : 0.0f;
            float q = __fadd_rn(rintf(__fdiv_rn(to_f(w[n * K + k]), sc)), z);
            q = q < qlo ? qlo : (q > qhi ? qhi : q);
            word |= (uint32_t)(int)(q + off) << (4 * nib);
        }
        qweight[k * C8 + c] = word;
    }
}

extern "C" int awq_cuda_quantize_gemm(awq_cuda_ctx *ctx, int dt, const void *w, int64_t N, int64_t K,
                                      int64_t g, int zero_point, uint32_t *qweight, float *scales,
                                      uint8_t *zeros, void *stream, awq_err *err) {
    int st = check_quant("quantize_gemm", N, K, g, 4, err);
    if (st) return st;
    if (N % 8)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "quantize_gemm: out_features %lld is not a multiple of 8 (AWQ GEMM packing)",
                           (long long)N);
    if (N == 0) return AWQ_OK;
    if ((st = awq_cuda_ctx_activate(ctx, err))) return st;
    gpuStream_t s = (gpuStream_t)stream;
    unsigned long long *bad = NULL, first = 0;
    if ((st = awq_cuda_alloc(ctx, sizeof *bad, "quantize_gemm flag", (void **)&bad, err))) return st;
    if ((st = awq_cuda_memset(ctx, bad, 0xFF, sizeof *bad, stream, err))) goto done;
    DISPATCH_FLOAT("quantize_gemm", dt, TT, {
        group_params_kernel<TT><<<grid_for(N * (K / g), 8), 256, 0, s>>>((const TT *)w, scales, zeros, N, K, g,
                                                                          4, zero_point, bad);
        if ((st = launch_check("group_params_kernel", err))) goto done;
    });
    if ((st = awq_cuda_copy(ctx, &first, bad, sizeof first, AWQ_COPY_D2H, stream, err))) goto done;
    if (first != ~0ULL) {
        const int64_t G = K / g;
        st = report_bad_group(ctx, "quantize_gemm", dt, w, K, g, (int64_t)first / G, (int64_t)first % G, stream,
                              err);
        if (st == AWQ_OK) st = AWQ_ERR_NUMERIC;
        goto done;
    }
    DISPATCH_FLOAT("quantize_gemm", dt, TT, {
        pack_gemm_kernel<TT><<<grid_for(N / 8 * K, 256), 256, 0, s>>>((const TT *)w, scales, zeros, qweight, N, K,
                                                                       g, zero_point);
        if ((st = launch_check("pack_gemm_kernel", err))) goto done;
    });
done:
    awq_cuda_free(ctx, bad, sizeof *bad);
    return st;
}
