/* ops_cuda.h: plain-C API of the GPU side of awq: the per-device context (caching allocator,
 * cuBLAS handle), DLPack structs, and the dense ops of the decoder forward and of AWQ's statistics
 * and quantization math. Same contract as awq.h: status codes, a message in err, no exceptions.
 *
 * Conventions:
 *  - Every pointer argument named x, w, y, ... is a device pointer to C-contiguous data; `dt` gives
 *    the storage type of the activations / weights (fp32, fp16 or bf16); arithmetic is fp32.
 *  - Small per-channel parameters (norm weights, biases, rope tables) are fp32.
 *  - `stream` is a gpuStream_t passed as void * (NULL = the legacy default stream), so this header
 *    needs no CUDA header and module.c (plain C) can include it. Kernels are queued on `stream` and
 *    the call returns without waiting, except where a function says it synchronizes.
 *  - Letters as in awq.h: M tokens, K input features, N output features, G groups, g group size,
 *    B batch, T queries, S keys, H heads, d head dim.
 * Implemented in memory.cu (context, allocator, copies) and ops.cu (kernels, cuBLAS).
 */
#ifndef AWQ_OPS_CUDA_H
#define AWQ_OPS_CUDA_H
#include "../awq.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- dtypes */

/* Storage types of GPU tensors. The numbers are part of the binding ABI (awq/gpu.py's table). */
typedef enum {
    AWQ_DT_F32 = 0,
    AWQ_DT_F16 = 1,
    AWQ_DT_BF16 = 2,
    AWQ_DT_I32 = 3,
    AWQ_DT_I64 = 4,
    AWQ_DT_U8 = 5,
} awq_dtype;

/* Bytes per element of dt, 0 for an unknown dt. */
int awq_dtype_size(int dt);
const char *awq_dtype_name(int dt);

/* ---------------------------------------------------------------- DLPack (spec v1.x ABI)
 * Our own definitions of the DLPack structs (https://dmlc.github.io/dlpack/latest/c_api.html),
 * field for field; only the members we read or write are named in comments. */

enum { AWQ_DL_CPU = 1, AWQ_DL_CUDA = 2, AWQ_DL_CUDA_HOST = 3, AWQ_DL_CUDA_MANAGED = 13 };
enum { AWQ_DL_INT = 0, AWQ_DL_UINT = 1, AWQ_DL_FLOAT = 2, AWQ_DL_BFLOAT = 4, AWQ_DL_BOOL = 6 };
#define AWQ_DL_FLAG_READ_ONLY (1ULL << 0)
#define AWQ_DL_FLAG_IS_COPIED (1ULL << 1)

typedef struct {
    int32_t device_type; /* AWQ_DL_CUDA, ... */
    int32_t device_id;
} awq_dl_device;

typedef struct {
    uint8_t code;   /* AWQ_DL_FLOAT, ... */
    uint8_t bits;   /* 16, 32, ... */
    uint16_t lanes; /* 1 for scalars */
} awq_dl_dtype;

typedef struct {
    void *data;           /* base pointer; the first element is at data + byte_offset */
    awq_dl_device device;
    int32_t ndim;
    awq_dl_dtype dtype;
    int64_t *shape;       /* [ndim] */
    int64_t *strides;     /* [ndim] in elements, or NULL = C-contiguous */
    uint64_t byte_offset;
} awq_dl_tensor;

/* Capsule name "dltensor" (legacy, consumed: "used_dltensor"). */
typedef struct awq_dl_managed {
    awq_dl_tensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct awq_dl_managed *self);
} awq_dl_managed;

typedef struct {
    uint32_t major;
    uint32_t minor;
} awq_dl_version;

/* Capsule name "dltensor_versioned" (consumed: "used_dltensor_versioned"). */
typedef struct awq_dl_managed_versioned {
    awq_dl_version version;
    void *manager_ctx;
    void (*deleter)(struct awq_dl_managed_versioned *self);
    uint64_t flags; /* AWQ_DL_FLAG_* */
    awq_dl_tensor dl_tensor;
} awq_dl_managed_versioned;

/* ---------------------------------------------------------------- context and memory (memory.cu)
 *
 * One context per device, owned by its Python object (a capsule): no C globals. It holds a caching
 * allocator over plain gpuMalloc (never managed memory): freed blocks go to a free list keyed by
 * size class (sizes rounded up by at most 25%, at most 2 MiB, at least 512 B) and are handed out
 * again to requests of the same class. Reuse is safe in stream order: a block freed after work
 * queued on one stream and reused on another stream needs that stream to wait first (the same rule
 * as torch's caching allocator). On gpuMalloc failure the cache is emptied and the call retried
 * once before AWQ_ERR_NOMEM. The lock inside makes alloc/free callable without the GIL.
 */
typedef struct awq_cuda_ctx awq_cuda_ctx;

typedef struct {
    int64_t in_use;          /* bytes of live blocks (size-class bytes) */
    int64_t requested;       /* bytes asked for by live blocks */
    int64_t cached;          /* bytes in the free lists */
    int64_t reserved;        /* in_use + cached: device memory this context holds */
    int64_t peak_in_use;
    int64_t peak_reserved;
    int64_t n_alloc;         /* allocation requests */
    int64_t n_cache_hit;     /* requests served from a free list */
    int64_t n_cuda_malloc;   /* gpuMalloc calls that succeeded */
    int64_t n_cuda_free;     /* gpuFree calls (empty_cache, OOM retry) */
} awq_cuda_mem_stats;

/* New context on `device` (checks the device exists and makes it current). */
int awq_cuda_ctx_create(int device, awq_cuda_ctx **out, awq_err *err);
/* Frees the cached blocks and the cuBLAS handle. Blocks still in use must be freed first (their
 * Python owners keep the context alive). Errors are ignored (may run at interpreter exit). */
void awq_cuda_ctx_destroy(awq_cuda_ctx *ctx);
int awq_cuda_ctx_device(const awq_cuda_ctx *ctx);
/* Makes ctx's device current on the calling thread. */
int awq_cuda_ctx_activate(awq_cuda_ctx *ctx, awq_err *err);

/* *ptr = nbytes (> 0) of device memory. what: names the allocation in the out-of-memory message. */
int awq_cuda_alloc(awq_cuda_ctx *ctx, size_t nbytes, const char *what, void **ptr, awq_err *err);
/* Returns a block from awq_cuda_alloc (same nbytes) to its free list; never calls CUDA. */
void awq_cuda_free(awq_cuda_ctx *ctx, void *ptr, size_t nbytes);
/* gpuFree of every cached block. */
int awq_cuda_empty_cache(awq_cuda_ctx *ctx, awq_err *err);
void awq_cuda_mem_stats_get(awq_cuda_ctx *ctx, awq_cuda_mem_stats *out);
/* Size class that a request of nbytes is rounded up to. */
size_t awq_cuda_size_class(size_t nbytes);

/* Copies. kind: 0 host->device, 1 device->host, 2 device->device. Host->device and device->host
 * synchronize `stream` (so the host buffer may be reused / read at return); device->device only
 * queues the copy. */
enum { AWQ_COPY_H2D = 0, AWQ_COPY_D2H = 1, AWQ_COPY_D2D = 2 };
int awq_cuda_copy(awq_cuda_ctx *ctx, void *dst, const void *src, size_t nbytes, int kind,
                  void *stream, awq_err *err);
/* Sets nbytes at ptr to `byte` (queued on stream). */
int awq_cuda_memset(awq_cuda_ctx *ctx, void *ptr, int byte, size_t nbytes, void *stream,
                    awq_err *err);
/* Waits for all work queued on stream (NULL: the legacy default stream). */
int awq_cuda_stream_sync(awq_cuda_ctx *ctx, void *stream, awq_err *err);
/* Makes `waiter` wait (on the device, the host does not block) for the work queued so far on
 * `signaler` (event record + gpuStreamWaitEvent). */
int awq_cuda_stream_wait(awq_cuda_ctx *ctx, void *waiter, void *signaler, awq_err *err);
/* The context's cuBLAS handle, created on first use (*handle is a gpublasHandle_t). */
int awq_cuda_ctx_blas(awq_cuda_ctx *ctx, void **handle, awq_err *err);

/* ---------------------------------------------------------------- ops (ops.cu)
 * Each validates its sizes, activates ctx's device, queues its kernels on stream and checks the
 * launch. dt is AWQ_DT_F32 / F16 / BF16 unless stated. */

/* y[M,D] = x / sqrt(mean(x^2) + eps) * (w + unit_offset); x, y: dt (y may alias x); w: [D] fp32. */
int awq_cuda_rmsnorm(awq_cuda_ctx *ctx, int dt, const void *x, const float *w, void *y, int64_t M,
                     int64_t D, float eps, float unit_offset, void *stream, awq_err *err);

/* y[M,D] = (x - mean) / sqrt(var + eps) * w + b per row (population variance; statistics two-pass
 * in fp32: block sum for the mean, then block sum of squared deviations); x, y: dt (y may alias x);
 * w, b: [D] fp32 or NULL (ones / zeros). Same contract as awq_layernorm_f32 (ops.h). */
int awq_cuda_layernorm(awq_cuda_ctx *ctx, int dt, const void *x, const float *w, const float *b,
                       void *y, int64_t M, int64_t D, float eps, void *stream, awq_err *err);

/* In place rotary embedding, rotate_half convention, on x[M, H, d] (dt): for i < rot/2,
 * (x[i], x[i+rot/2]) <- (x1 c - x2 s, x2 c + x1 s) with c = cos[m, i], s = sin[m, i];
 * cos, sin: [M, rot/2] fp32. rot even, rot <= d. */
int awq_cuda_rope(awq_cuda_ctx *ctx, int dt, void *x, const float *cos, const float *sin, int64_t M,
                  int64_t H, int64_t d, int64_t rot, void *stream, awq_err *err);
/* The same with interleaved = 1 for GPT-J's rotate_every_two pairs (x[2i], x[2i+1]) (ops.h's
 * awq_rope_f32_ex); interleaved = 0 is awq_cuda_rope. */
int awq_cuda_rope_ex(awq_cuda_ctx *ctx, int dt, void *x, const float *cos, const float *sin,
                     int64_t M, int64_t H, int64_t d, int64_t rot, int interleaved, void *stream,
                     awq_err *err);

/* Causal grouped-query attention, same contract as awq_attention_f32 (ops.h):
 * q: [B, T, Hq, d], k, v: [B, S, Hkv, d], out: [B, T, Hq, d], all dt; Hq % Hkv == 0; d <= 256.
 * Query t sits at position q_pos0 + t and sees keys j <= q_pos0 + t, j > q_pos0 + t - window when
 * window > 0, and j < kv_len[b] when kv_len (device int64 [B]) is not NULL. Softmax in fp32;
 * rows that see no key output 0. Flash-style: keys stream through shared memory in tiles with an
 * online softmax, so no T x S matrix is formed. fp16/bf16 with d % 8 == 0, d <= 128 and 16-byte
 * aligned tensors run on tensor cores (mma.sync; P rounded to dt before P V, as FlashAttention
 * does); everything else on a CUDA-core kernel with fp32 P. */
int awq_cuda_attention(awq_cuda_ctx *ctx, int dt, const void *q, const void *k, const void *v,
                       void *out, int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv,
                       int64_t d, float scale, int64_t q_pos0, int64_t window,
                       const int64_t *kv_len, void *stream, awq_err *err);

/* Options of awq_cuda_attention_ex; zero-initialised = awq_cuda_attention's plain causal case. */
typedef struct {
    int64_t window;        /* > 0: sliding window; 0: none */
    const int64_t *kv_len; /* device int64 [B] valid key counts, or NULL */
    const float *alibi;    /* device fp32 [Hq] ALiBi slopes, or NULL */
    float softcap;         /* > 0: s = softcap * tanh(s / softcap) on the scaled scores; 0: off */
    int64_t dv;            /* head dim of v and out; 0: d */
} awq_cuda_attention_opts;

/* Attention with awq_attention_f32_ex's options (ops.h: score order scale, softcap, + alibi[h] *
 * (j - p), mask). q: [B, T, Hq, d], k: [B, S, Hkv, d], v: [B, S, Hkv, dv], out: [B, T, Hq, dv], all
 * dt; max(d, dv) <= 256. ALiBi and softcap run in both kernels (the terms are added where the
 * scores sit in registers, before the online softmax); dv != d runs on the CUDA-core kernel (the
 * tensor-core tiles assume one head dim). opt = NULL: the plain case. */
int awq_cuda_attention_ex(awq_cuda_ctx *ctx, int dt, const void *q, const void *k, const void *v,
                          void *out, int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv,
                          int64_t d, float scale, int64_t q_pos0, const awq_cuda_attention_opts *opt,
                          void *stream, awq_err *err);

/* y[i] = silu(gate[i]) * up[i], n elements of dt (y may alias gate or up). */
int awq_cuda_silu_mul(awq_cuda_ctx *ctx, int dt, const void *gate, const void *up, void *y,
                      int64_t n, void *stream, awq_err *err);

/* y[i] = act(x[i]) (awq_cuda_act) or act(gate[i]) * up[i] (awq_cuda_act_mul), n elements of dt
 * (y may alias an input); kind an awq_act (ops.h): silu x / (1 + exp(-x)); gelu 0.5 x erfc(-x/sqrt2)
 * (= 0.5 x (1 + erf(x/sqrt2)), no cancellation in the negative tail); gelu_tanh
 * x / (1 + exp(-2u)), u = sqrt(2/pi)(x + 0.044715 x^3) (= 0.5 x (1 + tanh u)); relu max(x, 0) with
 * NaN kept. fp32 math with CUDA's expf / erfcf. */
int awq_cuda_act(awq_cuda_ctx *ctx, int dt, const void *x, void *y, int64_t n, int kind,
                 void *stream, awq_err *err);
int awq_cuda_act_mul(awq_cuda_ctx *ctx, int dt, const void *gate, const void *up, void *y,
                     int64_t n, int kind, void *stream, awq_err *err);

/* y[i] = a[i] + b[i], n elements of dt (residual add; y may alias a or b). */
int awq_cuda_add(awq_cuda_ctx *ctx, int dt, const void *a, const void *b, void *y, int64_t n,
                 void *stream, awq_err *err);

/* out[K] fp32 = mean over rows of |x[M, K]| (dt), fp32 accumulation, deterministic order. */
int awq_cuda_abs_mean(awq_cuda_ctx *ctx, int dt, const void *x, float *out, int64_t M, int64_t K,
                      void *stream, awq_err *err);

/* dst[n] (dst_dt) = src[n] (src_dt), float types among fp32/fp16/bf16, round to nearest even. */
int awq_cuda_cast(awq_cuda_ctx *ctx, int src_dt, const void *src, int dst_dt, void *dst, int64_t n,
                  void *stream, awq_err *err);

/* Gathers a strided tensor into C-contiguous dst. shape/strides (in elements, host arrays of
 * ndim <= 8) describe src; elem_size in {1, 2, 4, 8}. */
int awq_cuda_copy_strided(awq_cuda_ctx *ctx, int elem_size, const void *src, const int64_t *shape,
                          const int64_t *strides, int ndim, void *dst, void *stream, awq_err *err);

/* y[M,N] (y_dt) = x[M,K] @ w[N,K]^T (+ bias[N] fp32) through cuBLAS (gpublasGemmEx), fp32
 * accumulation (GPUBLAS_COMPUTE_32F: no TF32 for fp32 inputs). x, w: dt; y_dt is dt or fp32. */
int awq_cuda_linear(awq_cuda_ctx *ctx, int dt, const void *x, const void *w, const float *bias,
                    int y_dt, void *y, int64_t M, int64_t K, int64_t N, void *stream, awq_err *err);

/* w_dq[N,K] = dequant(quant(w)) per group of g columns, quant.h's formulas evaluated in fp32 with
 * the same correctly rounded operations (division, rintf = round half to even), so fp32 inputs
 * match awq_pseudo_quantize_f32 bit for bit; the result is rounded once to dt. w, w_dq: dt (may
 * alias). check_finite: 1 = synchronize stream and fail with AWQ_ERR_NUMERIC naming the first
 * group holding NaN/Inf; 0 = no check, no synchronization. */
int awq_cuda_pseudo_quantize(awq_cuda_ctx *ctx, int dt, const void *w, void *w_dq, int64_t N,
                             int64_t K, int64_t g, int bits, int zero_point, int check_finite,
                             void *stream, awq_err *err);

/* AWQ clip search (quant.h's awq_clip_search_f32 contract) for w[N,K], x[T,K] (both dt), g <= 1024:
 * writes max_val[N, K/g] fp32. The error of each candidate is d^T (X_j^T X_j) d / T with the Gram
 * matrix of each group formed once by cuBLAS (fp32), evaluated in fp32 (the CPU path sums the last
 * step in double, so near-ties may pick a neighbouring candidate). Synchronizes stream; NaN/Inf in
 * the inputs -> AWQ_ERR_NUMERIC. */
int awq_cuda_clip_search(awq_cuda_ctx *ctx, int dt, const void *w, const void *x, float *max_val,
                         int64_t N, int64_t K, int64_t T, int64_t g, int bits, int zero_point,
                         int n_grid, float max_shrink, void *stream, awq_err *err);

/* y[M,K] = x[M,K] * s[K] (inverse: / s[K]); x, y: dt (may alias); s: fp32 device [K]. */
int awq_cuda_scale_cols(awq_cuda_ctx *ctx, int dt, const void *x, const float *s, void *y, int64_t M,
                        int64_t K, int inverse, void *stream, awq_err *err);

/* y[M,K] = x[M,K] * s[M] (inverse: / s[M]): row m scaled by s[m]; as scale_cols otherwise. */
/* dst[i, :] = src[idx[i], :] for i < n; src [M, K], dst [n, K], idx int64 on the device. */
int awq_cuda_index_rows(awq_cuda_ctx *ctx, int dt, const void *src, int64_t M, const int64_t *idx, int64_t n,
                        int64_t K, void *dst, void *stream, awq_err *err);
/* dst[idx[i], :] += w[i] * src[i, :] (w NULL: 1) in fp32; distinct indices; dst [M, K], src [n, K]. */
int awq_cuda_index_add_rows(awq_cuda_ctx *ctx, int dt, void *dst, int64_t M, const int64_t *idx, const void *src,
                            const float *w, int64_t n, int64_t K, void *stream, awq_err *err);
/* out [M, a + b] = [x [M, a] | y [M / y_group, b] repeated y_group times]. */
int awq_cuda_concat_cols(awq_cuda_ctx *ctx, int dt, const void *x, const void *y, void *out, int64_t M, int64_t a,
                         int64_t b, int64_t y_group, void *stream, awq_err *err);
int awq_cuda_scale_rows(awq_cuda_ctx *ctx, int dt, const void *x, const float *s, void *y, int64_t M,
                        int64_t K, int inverse, void *stream, awq_err *err);

/* acc[K] (double, device, accumulated into: zero it first) += sum over the N rows of w[N,K] (dt)
 * of |w[n,k]| / (max |w| of the group of (n,k) + 1e-6), fp32 terms as numpy computes them: the
 * w_mean statistic of the AWQ scale search (divide by the total row count afterwards). */
int awq_cuda_weight_mean(awq_cuda_ctx *ctx, int dt, const void *w, int64_t N, int64_t K, int64_t g,
                         double *acc, void *stream, awq_err *err);

/* y[N,K] = clamp(w, -max_val[n, k/g], max_val[n, k/g]) (numpy.clip); w, y: dt (may alias). */
int awq_cuda_clamp_groups(awq_cuda_ctx *ctx, int dt, const void *w, const float *max_val, void *y,
                          int64_t N, int64_t K, int64_t g, void *stream, awq_err *err);

/* 4-bit quantization of w[N,K] (dt) into the AutoAWQ GEMM layout: qweight[K, N/8] int32 (device),
 * scales[N, K/g] fp32 and zero codes zeros[N, K/g] uint8 (device; the caller transposes and packs
 * these small tensors). quant.c's awq_quantize_codes_f32 + awq_pack_gemm, bit for bit on fp32 w.
 * N % 8 == 0. Synchronizes; NaN/Inf in w -> AWQ_ERR_NUMERIC naming the first bad group. */
int awq_cuda_quantize_gemm(awq_cuda_ctx *ctx, int dt, const void *w, int64_t N, int64_t K, int64_t g,
                           int zero_point, uint32_t *qweight, float *scales, uint8_t *zeros, void *stream,
                           awq_err *err);

/* *out = sum over n elements of (a - b)^2, accumulated in double (host out; synchronizes stream). */
int awq_cuda_sq_diff_sum(awq_cuda_ctx *ctx, int dt, const void *a, const void *b, int64_t n,
                         double *out, void *stream, awq_err *err);

#ifdef __cplusplus
}
#endif
#endif /* AWQ_OPS_CUDA_H */
