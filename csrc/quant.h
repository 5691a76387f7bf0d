/* quant.h: AWQ quantization math: pseudo-quantize, integer codes, GEMM-layout packing, clip search.
 * Weights are w[N, K] (HF layout: row n = output feature); groups run along K, g divides K.
 * Rounding is round-half-to-even (nearbyintf under the default rounding mode), as torch.round.
 * zero_point=1: s = max(max-min, 1e-5)/(2^b-1); z = clamp(-round(min/s), 0, 2^b-1);
 *               q = clamp(round(w/s)+z, 0, 2^b-1); dequant (q-z)*s.
 * zero_point=0: s = max(max|w|, 1e-5)/(2^(b-1)-1); q = clamp(round(w/s), -2^(b-1), 2^(b-1)-1);
 *               codes are stored offset by 2^(b-1) with zero 2^(b-1), so both modes share one layout.
 */
#ifndef AWQ_QUANT_H
#define AWQ_QUANT_H
#include "awq.h"

/* w_dq[N,K] = dequant(quant(w)). Fails with AWQ_ERR_NUMERIC naming row and group on NaN/Inf. */
int awq_pseudo_quantize_f32(const float *w, float *w_dq, int64_t N, int64_t K, int64_t g, int bits,
                            int zero_point, awq_err *err);

/* codes[N,K] uint8 in [0, 2^b-1], scales[N, K/g] fp32, zeros[N, K/g] uint8 (same math as above). */
int awq_quantize_codes_f32(const float *w, uint8_t *codes, float *scales, uint8_t *zeros, int64_t N,
                           int64_t K, int64_t g, int bits, int zero_point, awq_err *err);

/* AutoAWQ GEMM packing along columns: src[R, C] uint8 codes (C % 8 == 0) -> dst[R, C/8] uint32.
 * Nibble i (bits 4i..4i+3) of dst[r, j] = src[r, 8j + P[i]], P = {0,2,4,6,1,3,5,7}. Codes > 15 are an
 * error. Example: codes 1..8 in columns 0..7 -> 0x86427531. */
int awq_pack_gemm(const uint8_t *src, uint32_t *dst, int64_t R, int64_t C, awq_err *err);
/* Inverse of awq_pack_gemm: src[R, C/8] -> dst[R, C]. */
int awq_unpack_gemm(const uint32_t *src, uint8_t *dst, int64_t R, int64_t C, awq_err *err);

/* AWQ clip search for one linear. w[N,K], x[T,K] (already subsampled tokens), g | K.
 * For every (row n, group j): candidates max_val = amax|w[n, group]| * (1 - i/n_grid) for
 * i = 0 .. floor(max_shrink * n_grid) - 1; clamp w to [-max_val, max_val], pseudo-quantize, and
 * err_i = mean_t (x[t, group] . (w_q - w))^2 with w the unclipped weights. Keeps the first minimum.
 * Writes best max_val[N, K/g]. */
int awq_clip_search_f32(const float *w, const float *x, float *max_val, int64_t N, int64_t K,
                        int64_t T, int64_t g, int bits, int zero_point, int n_grid, float max_shrink,
                        awq_err *err);

#endif
