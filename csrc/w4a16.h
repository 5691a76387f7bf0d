/* w4a16.h: fused W4A16 matmul on the AutoAWQ GEMM layout (CPU) and the fp16-weight matmul.
 * x[M, K] fp32, y[M, N] fp32, bias[N] fp32 or NULL; N % 8 == 0, g > 0 divides K.
 * qweight[K, N/8] uint32 (nibble i of word [k, j] = column 8j + P[i], P = {0,2,4,6,1,3,5,7}),
 * qzeros[G, N/8] uint32 same order, scales[G, N] fp16, G = K / g.
 * y[M, N] = x[M, K] @ W + bias, W[k, n] = (q[k, n] - z[k/g, n]) * s[k/g, n]; fp32 accumulation.
 * Small M: GEMV kernels that decode nibbles in registers (AVX-512 / AVX2 / generic chosen at run
 * time). Large M: a column block of W is decoded into a per-thread fp32 tile and multiplied with
 * the BLAS GEMM; the whole layer is never expanded at once.
 */
#ifndef AWQ_W4A16_H
#define AWQ_W4A16_H
#include "awq.h"

int awq_w4a16_matmul(const float *x, const uint32_t *qweight, const uint32_t *qzeros,
                     const uint16_t *scales, const float *bias, float *y, int64_t M, int64_t K,
                     int64_t N, int64_t g, awq_err *err);
/* Plain reference of the same product (scalar loops, double accumulation). */
int awq_w4a16_matmul_ref(const float *x, const uint32_t *qweight, const uint32_t *qzeros,
                         const uint16_t *scales, const float *bias, float *y, int64_t M, int64_t K,
                         int64_t N, int64_t g, awq_err *err);

/* y[M, N] = x[M, K] @ w[N, K]^T (+ bias) with fp16 weights (embeddings as lm_head, unquantized
 * linears of a quantized checkpoint). Same small-M / large-M split as above. */
int awq_f16_matmul(const float *x, const uint16_t *w, const float *bias, float *y, int64_t M,
                   int64_t K, int64_t N, awq_err *err);

/* The same two products on a chosen kernel family (AWQ_ISA_AVX512 / AVX2 / GENERIC), so tests can
 * run every family on one machine; asking for one this CPU lacks is an AWQ_ERR_VALUE. The plain
 * functions above call these with awq_cpu_isa(). */
int awq_w4a16_matmul_isa(const float *x, const uint32_t *qweight, const uint32_t *qzeros,
                         const uint16_t *scales, const float *bias, float *y, int64_t M, int64_t K,
                         int64_t N, int64_t g, awq_isa isa, awq_err *err);
int awq_f16_matmul_isa(const float *x, const uint16_t *w, const float *bias, float *y, int64_t M,
                       int64_t K, int64_t N, awq_isa isa, awq_err *err);

#endif
