/* w4a16_cuda.h: W4A16 matmul on the GPU (CUDA), plain C interface.
 *
 * The product (REFERENCE.md section 3):
 *   y[M, N] = x[M, K] @ W (+ bias[N]),  W[k, n] = (q[k, n] - z[k / g, n]) * s[k / g, n],
 * x, y, bias in the activation dtype (fp16 or bf16), fp32 accumulation, one rounding of y.
 * Checkpoint layout (AutoAWQ "GEMM"): qweight int32 [K, N/8], nibble i of word [k, j] holds column
 * 8j + P[i], P = {0,2,4,6,1,3,5,7}; qzeros int32 [G, N/8] in the same order; scales [G, N], G = K/g.
 *
 * Scales: in the activation dtype, or fp16 with bf16 activations (AWQ checkpoints store fp16; such
 * scales are rounded to bf16 when the weights are dequantized, exactly as a caller converting them
 * would). The dequantized weight is rounded once to the activation dtype before the multiply.
 *
 * The fast kernels read qweight in a repacked layout ("RP16x64", documented in w4a16.cu) made once at
 * load time by awq_cuda_w4a16_repack; qzeros and scales stay as in the checkpoint. Every pointer is
 * a device pointer on the current device; every call is asynchronous on `stream` (NULL: the legacy
 * default stream) and returns after checking the launch.
 *
 * Paths (awq_w4a16_path): GEMV (decode kernel, M <= 8: weights streamed straight into registers,
 * split-K over blocks; dot products on the tensor cores, or CUDA-core FMAs with cfg.tm = 2 and in
 * builds without PTX), MMA (mma.sync tensor cores, any M), CUBLAS (dequantize column slabs to the
 * activation dtype, then gpublasGemmEx with fp32 accumulation), REF (naive, one thread per
 * output), AUTO: GEMV up to M = 4, MMA below M = 256, CUBLAS from it (and for group sizes that
 * are not a multiple of 16) when a context is given.
 *
 * Context: the stream-K partial-tile workspace, completion counters, the cuBLAS handle and the
 * dequantized-weight slab live in an awq_w4a16_ctx created by the caller (no global state). A
 * context serves one stream at a time. Its buffers grow on demand with gpuMalloc; inside a
 * CUDA-graph capture growth is refused with an error, so run every shape once before capturing.
 * Without a context (NULL) the GEMV and MMA paths run one block per tile (no K split, slower on
 * small layers) and the cuBLAS path is unavailable. Results are deterministic (fixed summation
 * order) for a given configuration.
 */
#ifndef AWQ_W4A16_CUDA_H
#define AWQ_W4A16_CUDA_H
#include "../awq.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Activation / scale dtypes; the same numbers as awq_dtype in ops_cuda.h (the GPU tensor ABI). */
enum { AWQ_W4_F16 = 1, AWQ_W4_BF16 = 2 };

typedef enum {
    AWQ_PATH_AUTO = 0,
    AWQ_PATH_GEMV = 1,
    AWQ_PATH_MMA = 2,
    AWQ_PATH_CUBLAS = 3,
    AWQ_PATH_REF = 4,
} awq_w4a16_path;

typedef struct awq_w4a16_ctx awq_w4a16_ctx;

/* Kernel configuration of the GEMV / MMA paths. Zero fields are chosen by the heuristic; tests and
 * bench/kernels.py set them to sweep.
 * MMA: wn warps per block (1, 2, 4, 8), each owning 64 output features; blocks: grid size (the
 * work, tiles x 64-k chunks, is cut into `blocks` equal ranges; without a context it must be one
 * block per tile); stages: depth of the shared-memory pipeline (3 .. 8 chunks); tm: tokens per
 * block / 8 (1, 2, 4, 8).
 * GEMV: wn warps per block (1, 2, 4, 8), each owning 32 output features and splitting K inside the
 * block; blocks: grid size (rounded up to whole K splits per column slice); stages: 64-k chunks per
 * warp and round (2, 4, 8); tm: engine (1 = mma.sync, 2 = CUDA-core FMA). */
typedef struct {
    int wn, blocks, stages, tm;
} awq_w4a16_cfg;

/* Context on the current device. *out = NULL on failure. */
int awq_cuda_w4a16_ctx_new(awq_w4a16_ctx **out, awq_err *err);
/* Frees the context's buffers and cuBLAS handle (synchronizes the device first). NULL is a no-op. */
void awq_cuda_w4a16_ctx_free(awq_w4a16_ctx *ctx);

/* Bytes of the repacked qweight for a K x N layer. */
int64_t awq_cuda_w4a16_repack_nbytes(int64_t K, int64_t N);
/* qweight_awq: [K, N/8] int32 (checkpoint) -> out: repacked, awq_cuda_w4a16_repack_nbytes bytes. */
int awq_cuda_w4a16_repack(const int32_t *qweight_awq, void *out, int64_t K, int64_t N, void *stream,
                          awq_err *err);

/* y[M, N] = x[M, K] @ W + bias.
 * x: [M, K] x_dtype, qweight_rp: repacked (awq_cuda_w4a16_repack), qzeros: [G, N/8] int32,
 * scales: [G, N] s_dtype, bias: [N] x_dtype or NULL, y: [M, N] x_dtype.
 * N % 8 == 0, g divides K, g % 8 == 0; the GEMV and MMA paths need g % 16 == 0.
 * cfg: NULL or zero fields for the heuristic. path_used (may be NULL) receives the path that ran. */
int awq_cuda_w4a16(const void *x, int x_dtype, const void *qweight_rp, const int32_t *qzeros,
                   const void *scales, int s_dtype, const void *bias, void *y, int64_t M, int64_t K,
                   int64_t N, int64_t g, int path, const awq_w4a16_cfg *cfg, awq_w4a16_ctx *ctx,
                   void *stream, int *path_used, awq_err *err);

/* Reference on the same repacked weights: one thread per output, fp32 accumulation, no tiling. */
int awq_cuda_w4a16_ref(const void *x, int x_dtype, const void *qweight_rp, const int32_t *qzeros,
                       const void *scales, int s_dtype, const void *bias, void *y, int64_t M,
                       int64_t K, int64_t N, int64_t g, void *stream, awq_err *err);

/* The configuration AUTO would run for this problem: path and (for GEMV / MMA) cfg. */
int awq_cuda_w4a16_plan(int64_t M, int64_t K, int64_t N, int64_t g, const awq_w4a16_ctx *ctx,
                        int *path, awq_w4a16_cfg *cfg, awq_err *err);

#ifdef __cplusplus
}
#endif
#endif
