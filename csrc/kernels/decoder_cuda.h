/* decoder_cuda.h: the fused GPU decoder of a Llama-family model (plain C interface).
 *
 * One object runs the whole model forward for B sequences of T new tokens each, from token ids to
 * the logits of each sequence's last token, with per-sequence positions, on its own stream:
 *   embedding gather -> per layer: [residual add +] RMSNorm (one kernel) -> W4A16 q|k|v (one call
 *   on the concatenated weights) -> per-head q/k norm (optional) + RoPE computed in-kernel from the
 *   positions + K/V written into the cache (one kernel) -> attention (flash kernel for prefill,
 *   split-K decode kernel for T = 1) -> W4A16 o -> residual add + RMSNorm -> W4A16 gate|up (one
 *   call) -> SiLU(gate) * up -> W4A16 down -> ... -> final norm of the last rows -> lm_head (cuBLAS,
 *   fp32 logits).
 * Every input of a step (ids, positions, cache lengths) lives in device buffers, so the decode step
 * (T = 1 over all cache rows) is captured once in a CUDA graph and replayed.
 *
 * Weights are device pointers owned by the caller (they must outlive the decoder); norms and
 * inv_freq are fp32, everything else in the activation dtype dt (fp16 or bf16; W4A16 scales fp16
 * or dt). Cache and workspaces belong to the decoder (awq_decoder_state).
 */
#ifndef AWQ_DECODER_CUDA_H
#define AWQ_DECODER_CUDA_H
#include "../awq.h"
#include "ops_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One linear: W4A16 on repacked weights (w4a16_cuda.h). */
typedef struct {
    const void *qweight_rp; /* repacked */
    const int32_t *qzeros;  /* [G, N/8] */
    const void *scales;     /* [G, N], s_dtype */
    const void *bias;       /* [N] dt or NULL */
    int64_t K, N, g;
    int s_dtype; /* AWQ_DT_F16 or AWQ_DT_BF16 */
} awq_dec_linear;

typedef struct {
    const float *in_norm, *post_norm; /* [D] */
    const float *q_norm, *k_norm;     /* [hd] or NULL (Qwen3) */
    awq_dec_linear qkv;               /* N = (Hq + 2 Hkv) hd: q rows, then k, then v */
    awq_dec_linear o;
    awq_dec_linear gate_up; /* N = 2F: gate, then up */
    awq_dec_linear down;
} awq_dec_layer;

typedef struct {
    int dt; /* AWQ_DT_F16 / AWQ_DT_BF16 */
    int64_t L, D, Hq, Hkv, hd, rot, F, V;
    int64_t window;    /* sliding window (0: none) */
    float eps;         /* RMSNorm epsilon */
    float norm_offset; /* 1 for (1 + w) norms, else 0 */
    const void *embed;       /* [V, D] dt */
    const float *final_norm; /* [D] */
    const void *lm_head;     /* [V, D] dt */
    const double *inv_freq;  /* [rot / 2] (float64: angles as the host tables compute them) */
} awq_dec_config;

typedef struct awq_decoder awq_decoder;

/* Copies cfg and the layer table (L entries). ctx provides the device and the allocator. */
int awq_decoder_new(awq_cuda_ctx *ctx, const awq_dec_config *cfg, const awq_dec_layer *layers,
                    awq_decoder **out, awq_err *err);
void awq_decoder_free(awq_decoder *dec);

/* (Re)allocates the KV cache for `batch` sequences of up to `max_len` tokens and the workspaces
 * for up to max_tokens tokens per forward; drops any captured graph. */
int awq_decoder_state(awq_decoder *dec, int64_t batch, int64_t max_len, int64_t max_tokens, awq_err *err);

/* Forward of sequences row0 .. row0+B-1 (cache rows), T new tokens each: ids [B*T] (host int32),
 * pos0 [B] (host int32: position of each sequence's first new token; tokens before it must be in
 * the cache). Writes logits [B, V] fp32 (host) of each sequence's last token. T > 1 needs one pos0
 * for all B. use_graph (T == 1, row0 == 0, B == batch): replay a CUDA graph of the step, capturing
 * it on the second such call (the first warms the W4A16 workspaces). */
int awq_decoder_forward(awq_decoder *dec, int64_t row0, int64_t B, int64_t T, const int32_t *ids,
                        const int32_t *pos0, float *logits, int use_graph, awq_err *err);

/* Bytes of device memory held by the decoder's state (cache + workspaces). */
int64_t awq_decoder_state_bytes(const awq_decoder *dec);

#ifdef __cplusplus
}
#endif
#endif
