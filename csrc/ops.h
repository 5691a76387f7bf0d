/* ops.h: dense fp32 tensor ops of the decoder forward (calibration and runtime).
 * All pointers are C-contiguous fp32 unless stated. The reference of every op is float64 numpy in
 * tests/test_ops.py and tests/test_ops_arch.py; the fast versions are threaded with OpenMP and
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

/* y[M,D] = (x - mean) / sqrt(var + eps) * w + b per row, var the population variance (mean of
 * squared deviations, eps inside the sqrt). w, b: [D] or NULL (NULL w = ones, NULL b = zeros).
 * Statistics are two-pass in double (mean, then squared deviations from it), the normalisation in
 * double rounded once to fp32, the affine step in fp32: y = (float)((x - mean) * inv_std) * w + b. */
int awq_layernorm_f32(const float *x, const float *w, const float *b, float *y, int64_t M,
                      int64_t D, float eps, awq_err *err);

/* In place rotary embedding, HF "rotate_half" (neox) convention, on x[M, H, d]:
 * for i < rot/2: (x[i], x[i+rot/2]) rotated by angle with cos[m, i], sin[m, i]; dims >= rot untouched.
 * cos, sin: [M, rot/2]. */
int awq_rope_f32(float *x, const float *cos, const float *sin, int64_t M, int64_t H, int64_t d,
                 int64_t rot, awq_err *err);
/* The same with a choice of pairing: interleaved = 0 is awq_rope_f32 (pairs (i, i + rot/2));
 * interleaved = 1 is the GPT-J "rotate_every_two" convention: for i < rot/2 the pair
 * (x[2i], x[2i+1]) -> (x[2i] cos[m,i] - x[2i+1] sin[m,i], x[2i+1] cos[m,i] + x[2i] sin[m,i]).
 * Dims >= rot untouched either way. */
int awq_rope_f32_ex(float *x, const float *cos, const float *sin, int64_t M, int64_t H, int64_t d,
                    int64_t rot, int interleaved, awq_err *err);

/* Causal grouped-query attention.
 * q: [B, T, Hq, d]; k: [B, S, Hkv, d]; v: [B, S, Hkv, dv]; out: [B, T, Hq, dv] (dv = d except
 * through awq_attention_f32_ex). Hq % Hkv == 0; head h reads kv head h / (Hq / Hkv). Query t of
 * batch b sits at absolute position p = q_pos0 + t (q_pos0 = S - T for a KV cache) and attends keys
 * j <= p, and j > p - window when window > 0.
 * kv_len: optional [B] valid key counts (keys j >= kv_len[b] are masked), NULL = all S valid.
 * Score of (t, j) for head h, in this order:
 *   s = (q * scale) . k                               (q scaled in fp32 first)
 *   s = softcap * tanh(s / softcap)                    only when softcap > 0 (Gemma2)
 *   s += alibi[h] * (j - p)                            only with alibi (BLOOM / MPT ALiBi; the same
 *                                                      under softmax as HF's slope * j)
 *   masked keys -> -inf
 * then softmax in fp32 (max-subtracted; terms below exp(-64) of the row maximum are exactly 0) and
 * out = softmax @ v. Rows that see no key output 0. */
int awq_attention_f32(const float *q, const float *k, const float *v, float *out, int64_t B,
                      int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t d, float scale,
                      int64_t q_pos0, int64_t window, const int64_t *kv_len, awq_err *err);
/* The same with the micro-kernel ISA forced (tests run every path); isa must not exceed
 * awq_cpu_isa(). Rows that see no key at all (kv_len[b] = 0, or a window past kv_len) output 0. */
int awq_attention_f32_isa(const float *q, const float *k, const float *v, float *out, int64_t B,
                          int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t d, float scale,
                          int64_t q_pos0, int64_t window, const int64_t *kv_len, awq_isa isa,
                          awq_err *err);

/* Options of awq_attention_f32_ex; AWQ_ATTENTION_OPTS_INIT is the plain causal case (the same as
 * awq_attention_f32). */
typedef struct {
    int64_t window;        /* > 0: sliding window of that many keys; 0: none */
    const int64_t *kv_len; /* [B] valid key counts, or NULL (all S valid) */
    const float *alibi;    /* [Hq] ALiBi slopes, or NULL */
    float softcap;         /* > 0: tanh soft-capping of the scaled scores; 0: off */
    int64_t dv;            /* head dim of v and out; 0: the same as q/k's d (DeepSeek MLA: dv != d) */
    int isa;               /* AWQ_ATTENTION_ISA_BEST, or an awq_isa (<= awq_cpu_isa()) to force */
} awq_attention_opts;
#define AWQ_ATTENTION_ISA_BEST (-1)
#define AWQ_ATTENTION_OPTS_INIT {0, NULL, NULL, 0.0f, 0, AWQ_ATTENTION_ISA_BEST}

/* Attention with every option; opt = NULL means AWQ_ATTENTION_OPTS_INIT.
 * q: [B, T, Hq, d]; k: [B, S, Hkv, d]; v: [B, S, Hkv, dv]; out: [B, T, Hq, dv]. All ISA paths run
 * alibi / softcap (in the softmax stage) and dv != d (the P.V kernel works on any width) at the
 * speed of the plain case plus O(S) per row for the extra score terms. */
int awq_attention_f32_ex(const float *q, const float *k, const float *v, float *out, int64_t B,
                         int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t d, float scale,
                         int64_t q_pos0, const awq_attention_opts *opt, awq_err *err);

/* y[i] = silu(gate[i]) * up[i] over n elements (awq_act_mul_f32 with AWQ_ACT_SILU). */
int awq_silu_mul_f32(const float *gate, const float *up, float *y, int64_t n, awq_err *err);

/* Element-wise activations of the MLPs. Formulas (fp32, vectorised):
 *   SILU       x / (1 + exp(-x))                                (exp < 1 ulp)
 *   GELU       0.5 x (1 + erf(x / sqrt 2)), exact-erf GELU; 1 + erf formed as 2 - erfc or erfc
 *              (no cancellation in the negative tail), erfc by Numerical Recipes' Chebyshev fit
 *              (fractional error < 1.2e-7): a few ulp for |x| of order 1, ~1e-6 relative at |x| ~ 10
 *   GELU_TANH  0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3) (HF gelu_new /
 *              gelu_pytorch_tanh / gelu_fast), computed as the identical x / (1 + exp(-2u)), which
 *              keeps relative accuracy in the negative tail (a few ulp)
 *   RELU       max(x, 0) (NaN stays NaN) */
typedef enum { AWQ_ACT_SILU = 0, AWQ_ACT_GELU = 1, AWQ_ACT_GELU_TANH = 2, AWQ_ACT_RELU = 3 } awq_act;
#define AWQ_ACT_COUNT 4
/* "silu", "gelu", "gelu_tanh", "relu"; NULL for a value outside the enum. */
const char *awq_act_name(awq_act kind);
/* The kind named `name` (one of awq_act_name's strings) into *kind; AWQ_ERR_VALUE naming it if unknown. */
int awq_act_from_name(const char *name, awq_act *kind, awq_err *err);

/* y[i] = act(x[i]) over n elements (y may alias x). */
int awq_act_f32(const float *x, float *y, int64_t n, awq_act kind, awq_err *err);
/* y[i] = act(gate[i]) * up[i] over n elements. */
int awq_act_mul_f32(const float *gate, const float *up, float *y, int64_t n, awq_act kind,
                    awq_err *err);

/* Per-channel mean of |x| over rows: out[K] = mean_m |x[m, k]| (accumulated in double). */
int awq_abs_mean_f32(const float *x, float *out, int64_t M, int64_t K, awq_err *err);

#endif
