/* ops.h: dense fp32 tensor ops of the decoder forward (calibration and runtime).
 * All pointers are C-contiguous fp32 unless stated. Each op has a plain `_ref` twin in ops_ref.c
 * used by the tests' C-level self checks; the fast versions are threaded with OpenMP and
 * vectorised per ISA (target_clones or explicit intrinsics).
 */
#ifndef AWQ_OPS_H
#define AWQ_OPS_H
#include "awq.h"

/* y[M,N] = x[M,K] @ w[N,K]^T (+ bias[N] if not NULL). Dense GEMM through the BLAS provider. */
int awq_linear_f32(const float *x, const float *w, const float *bias, float *y,
                   int64_t M, int64_t K, int64_t N, awq_err *err);

/* C[M, N] (row stride ldc) = A[M, K] (row stride lda) @ op(B), overwriting C; op(B) = B[K, N] (row
 * stride ldb) when b_trans = 0, B[N, K]^T (row stride ldb) when b_trans = 1. For callers that tile
 * the output themselves (w4a16.c): OpenBLAS runs it on one thread when called inside an OpenMP
 * parallel region; the builtin fallback is single threaded. */
int awq_sgemm_f32(int b_trans, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                  int64_t ldc, int64_t M, int64_t N, int64_t K, awq_err *err);
int awq_sgemm_f32_builtin(int b_trans, const float *A, int64_t lda, const float *B, int64_t ldb,
                          float *C, int64_t ldc, int64_t M, int64_t N, int64_t K, awq_err *err);

/* y[M,D] = x / rms(x) * (w + unit_offset), rms over D in fp32 with eps inside the sqrt. */
int awq_rmsnorm_f32(const float *x, const float *w, float *y, int64_t M, int64_t D, float eps,
                    float unit_offset, awq_err *err);

/* In place rotary embedding, HF "rotate_half" (neox) convention, on x[M, H, d]:
 * for i < rot/2: (x[i], x[i+rot/2]) rotated by angle with cos[m, i], sin[m, i]; dims >= rot untouched.
 * cos, sin: [M, rot/2]. */
int awq_rope_f32(float *x, const float *cos, const float *sin, int64_t M, int64_t H, int64_t d,
                 int64_t rot, awq_err *err);

/* Causal grouped-query attention.
 * q: [B, T, Hq, d]; k, v: [B, S, Hkv, d]; out: [B, T, Hq, d]. Hq % Hkv == 0; head h reads kv head
 * h / (Hq / Hkv). Query t of batch b sits at absolute position q_pos0 + t (q_pos0 = S - T for a
 * KV cache) and attends keys j <= q_pos0 + t, and j > q_pos0 + t - window when window > 0.
 * kv_len: optional [B] valid key counts (keys j >= kv_len[b] are masked), NULL = all S valid.
 * scores = q.k * scale, softmax in fp32 (max-subtracted), out = softmax @ v. */
int awq_attention_f32(const float *q, const float *k, const float *v, float *out, int64_t B,
                      int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t d, float scale,
                      int64_t q_pos0, int64_t window, const int64_t *kv_len, awq_err *err);
/* The same with the micro-kernel ISA forced (tests run every path); isa must not exceed
 * awq_cpu_isa(). Rows that see no key at all (kv_len[b] = 0, or a window past kv_len) output 0. */
int awq_attention_f32_isa(const float *q, const float *k, const float *v, float *out, int64_t B,
                          int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t d, float scale,
                          int64_t q_pos0, int64_t window, const int64_t *kv_len, awq_isa isa,
                          awq_err *err);

/* y[i] = silu(gate[i]) * up[i] over n elements. */
int awq_silu_mul_f32(const float *gate, const float *up, float *y, int64_t n, awq_err *err);

/* Per-channel mean of |x| over rows: out[K] = mean_m |x[m, k]| (accumulated in double). */
int awq_abs_mean_f32(const float *x, float *out, int64_t M, int64_t K, awq_err *err);

#endif
