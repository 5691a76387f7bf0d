/* quant.c: AWQ quantization math (see quant.h for the contracts and formulas).
 *
 * Bit-compatibility: every formula is evaluated as the same sequence of correctly rounded fp32
 * operations torch uses (true division w / s, not a multiply by 1/s; nearbyintf = round half to
 * even), and the build does not contract a*b+c into FMA (-std=c11 implies -ffp-contract=off), so
 * the results equal torch's / numpy's float32 results bit for bit.
 * File order: argument checks, one-group quantizer, pseudo_quantize / quantize_codes, packing,
 * clip search.
 */
#include "quant.h"
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- argument checks */

static int check_quant_args(const char *op, int64_t N, int64_t K, int64_t g, int bits,
                            awq_err *err) {
    if (N < 0 || K <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: bad weight shape [%lld, %lld]", op,
                           (long long)N, (long long)K);
    if (g <= 0 || K % g)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "%s: group size %lld must be positive and divide K=%lld (pass K itself "
                           "for group_size -1)",
                           op, (long long)g, (long long)K);
    if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: w_bit must be 2, 3, 4 or 8 (got %d)", op, bits);
    return AWQ_OK;
}

/* Error for group (n, j) of w[N, K], which quant_group refused: names its first non-finite value,
 * or, when every value is finite, says that the group's grid overflows float32. */
static int group_error(const char *op, const char *what, const float *w, int64_t K, int64_t g,
                       int64_t n, int64_t j, awq_err *err) {
    const float *p = w + n * K + j * g;
    int64_t k = 0;
    while (k < g && isfinite(p[k])) k++;
    if (k == g)
        return awq_set_err(err, AWQ_ERR_NUMERIC,
                           "%s: %s row %lld, group %lld (columns %lld..%lld): the quantization grid "
                           "of this group overflows float32 (its range is too close to FLT_MAX)",
                           op, what, (long long)n, (long long)j, (long long)(j * g),
                           (long long)(j * g + g - 1));
    return awq_set_err(err, AWQ_ERR_NUMERIC,
                       "%s: %s row %lld, group %lld (columns %lld..%lld) holds %s at column %lld; "
                       "weights must be finite",
                       op, what, (long long)n, (long long)j, (long long)(j * g),
                       (long long)(j * g + g - 1), isnan(p[k]) ? "NaN" : "Inf",
                       (long long)(j * g + k));
}

/* ---------------------------------------------------------------- one group */

/* Quantizes one group w[g]. Writes the dequantized values to wdq (may alias w, may be NULL) and/or
 * the codes to codes (may be NULL); *scale and *zero get the group's parameters (codes of the
 * symmetric mode are offset by 2^(bits-1), which is then the zero). Returns 1 when a value is not
 * finite, or when finite values this close to +-FLT_MAX make a dequantized value overflow (nothing
 * written either way), else 0. */
AWQ_CLONES
static int quant_group(const float *w, int64_t g, int bits, int zero_point, float *wdq,
                       uint8_t *codes, float *scale, uint8_t *zero) {
    float chk = 0.0f, mx = w[0], mn = w[0];
    /* x - x is 0 for finite x and NaN for NaN / Inf, so chk flags any non-finite value. */
#pragma omp simd reduction(+ : chk) reduction(max : mx) reduction(min : mn)
    for (int64_t i = 0; i < g; i++) {
        chk += w[i] - w[i];
        mx = w[i] > mx ? w[i] : mx;
        mn = w[i] < mn ? w[i] : mn;
    }
    if (chk != 0.0f) return 1;

    float s, z, qlo, qhi;
    if (zero_point) {
        qlo = 0.0f;
        qhi = (float)((1 << bits) - 1);
        s = fmaxf(mx - mn, 1e-5f) / qhi;
        z = -nearbyintf(mn / s);
        z = z < qlo ? qlo : (z > qhi ? qhi : z);
    } else {
        const float amax = fmaxf(fabsf(mx), fabsf(mn));
        qhi = (float)((1 << (bits - 1)) - 1);
        qlo = -(float)(1 << (bits - 1));
        s = fmaxf(amax, 1e-5f) / qhi;
        z = 0.0f;
    }
    /* Ends of the grid the codes can reach: with max - min or amax near FLT_MAX, s or (q - z) * s
     * is Inf and the group would dequantize to Inf / NaN. Symmetric codes never reach qlo
     * (|w| / s <= qhi), so only +-qhi * s counts there. */
    const float g_hi = (qhi - z) * s, g_lo = zero_point ? (qlo - z) * s : -g_hi;
    if (!isfinite(g_hi) || !isfinite(g_lo)) return 1;
    *scale = s;
    *zero = (uint8_t)(zero_point ? z : -qlo);
    if (wdq) {
        for (int64_t i = 0; i < g; i++) {
            float q = nearbyintf(w[i] / s) + z;
            q = q < qlo ? qlo : (q > qhi ? qhi : q);
            wdq[i] = (q - z) * s;
        }
    }
    if (codes) {
        const float off = zero_point ? 0.0f : -qlo;
        for (int64_t i = 0; i < g; i++) {
            float q = nearbyintf(w[i] / s) + z;
            q = q < qlo ? qlo : (q > qhi ? qhi : q);
            codes[i] = (uint8_t)(int)(q + off);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- pseudo_quantize, codes */

/* Shared driver: rows in parallel; on a non-finite group reports the first one in row-major order. */
static int quantize_rows(const char *op, const float *w, float *w_dq, uint8_t *codes, float *scales,
                         uint8_t *zeros, int64_t N, int64_t K, int64_t g, int bits, int zero_point,
                         awq_err *err) {
    int st = check_quant_args(op, N, K, g, bits, err);
    if (st) return st;
    const int64_t G = K / g;
    int64_t bad = INT64_MAX; /* flat index n * G + j of the first non-finite group */
#pragma omp parallel for schedule(static) reduction(min : bad) if (N * K > 16384)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t j = 0; j < G; j++) {
            float s;
            uint8_t z;
            const int64_t o = n * K + j * g;
            if (quant_group(w + o, g, bits, zero_point, w_dq ? w_dq + o : NULL,
                            codes ? codes + o : NULL, &s, &z)) {
                bad = n * G + j < bad ? n * G + j : bad;
                break;
            }
            if (scales) scales[n * G + j] = s;
            if (zeros) zeros[n * G + j] = z;
        }
    }
    if (bad != INT64_MAX) return group_error(op, "w", w, K, g, bad / G, bad % G, err);
    return AWQ_OK;
}

int awq_pseudo_quantize_f32(const float *w, float *w_dq, int64_t N, int64_t K, int64_t g, int bits,
                            int zero_point, awq_err *err) {
    return quantize_rows("pseudo_quantize", w, w_dq, NULL, NULL, NULL, N, K, g, bits, zero_point,
                         err);
}

int awq_quantize_codes_f32(const float *w, uint8_t *codes, float *scales, uint8_t *zeros, int64_t N,
                           int64_t K, int64_t g, int bits, int zero_point, awq_err *err) {
    return quantize_rows("quantize_codes", w, NULL, codes, scales, zeros, N, K, g, bits, zero_point,
                         err);
}

/* ---------------------------------------------------------------- GEMM packing */

/* AutoAWQ order: nibble i of a word holds column P[i] of its 8 columns; R is the inverse. */
static const int pack_P[8] = {0, 2, 4, 6, 1, 3, 5, 7};

int awq_pack_gemm(const uint8_t *src, uint32_t *dst, int64_t R, int64_t C, awq_err *err) {
    if (R < 0 || C < 0 || C % 8)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "pack_gemm: columns must be a multiple of 8 (got [%lld, %lld])",
                           (long long)R, (long long)C);
    /* Reject codes above 15 first (serially, so the message names the first one). */
    for (int64_t i = 0; i < R * C; i++)
        if (src[i] > 15)
            return awq_set_err(err, AWQ_ERR_VALUE,
                               "pack_gemm: code %u at row %lld, column %lld does not fit 4 bits "
                               "(only 4-bit codes pack)",
                               (unsigned)src[i], (long long)(i / C), (long long)(i % C));
    const int64_t W = C / 8;
#pragma omp parallel for schedule(static) if (R * C > 65536)
    for (int64_t r = 0; r < R; r++) {
        for (int64_t j = 0; j < W; j++) {
            const uint8_t *s = src + r * C + 8 * j;
            uint32_t word = 0;
            for (int i = 0; i < 8; i++) word |= (uint32_t)(s[pack_P[i]] & 0xF) << (4 * i);
            dst[r * W + j] = word;
        }
    }
    return AWQ_OK;
}

int awq_unpack_gemm(const uint32_t *src, uint8_t *dst, int64_t R, int64_t C, awq_err *err) {
    if (R < 0 || C < 0 || C % 8)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "unpack_gemm: columns must be a multiple of 8 (got [%lld, %lld])",
                           (long long)R, (long long)C);
    const int64_t W = C / 8;
#pragma omp parallel for schedule(static) if (R * C > 65536)
    for (int64_t r = 0; r < R; r++) {
        for (int64_t j = 0; j < W; j++) {
            const uint32_t word = src[r * W + j];
            uint8_t *d = dst + r * C + 8 * j;
            for (int i = 0; i < 8; i++) d[pack_P[i]] = (uint8_t)((word >> (4 * i)) & 0xF);
        }
    }
    return AWQ_OK;
}

/* ---------------------------------------------------------------- clip search
 *
 * For one group j, every candidate i and row n, d = Q(clamp(w, +-max_val_i)) - w (g values) and
 *   err = mean_t (x_t . d)^2 = d^T (X_j^T X_j) d / T,   X_j = x[:, group j]  ([T, g]).
 * With g <= T the g x g Gram matrix is formed once per group and each error costs g^2 (through one
 * GEMM over all rows and a batch of candidates: E = D Gram, err = rowdot(E, D) / T); with g > T the
 * direct form E = D X_j^T, err = |E_row|^2 / T is cheaper (T g per error). Both GEMMs go through
 * awq_linear_f32 (BLAS). Errors are summed in double; the first strict minimum wins, as in
 * AutoAWQ's `err < min_errs` update.
 */

/* Floats of D plus E per GEMM batch; bounds the scratch at ~32 MB whatever N, g and T are. */
#define CLIP_BATCH_FLOATS ((int64_t)1 << 23)

/* Candidate i's clip value, computed as torch does: org_max (fp32) * fp32(1 - i / n_grid). */
static inline float clip_value(float org_max, int64_t i, int n_grid) {
    return org_max * (float)(1.0 - (double)i / (double)n_grid);
}

int awq_clip_search_f32(const float *w, const float *x, float *max_val, int64_t N, int64_t K,
                        int64_t T, int64_t g, int bits, int zero_point, int n_grid, float max_shrink,
                        awq_err *err) {
    int st = check_quant_args("clip_search", N, K, g, bits, err);
    if (st) return st;
    if (T <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "clip_search: need at least one token (T=%lld)",
                           (long long)T);
    if (n_grid <= 0 || !(max_shrink >= 0.0f && max_shrink <= 1.0f))
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "clip_search: need n_grid >= 1 and 0 <= max_shrink <= 1 (got %d, %g)",
                           n_grid, (double)max_shrink);
    if (N == 0) return AWQ_OK;
    const int64_t G = K / g;
    /* int(max_shrink * n_grid) as Python computes it from a double; the 1e-5 absorbs the float
     * rounding of max_shrink (0.7f * 20 = 13.99999976). */
    const int64_t ncand = (int64_t)floor((double)max_shrink * n_grid + 1e-5);

    /* Activations must be finite, or every error is NaN and the search silently keeps no clip. */
    int64_t bad_x = INT64_MAX;
#pragma omp parallel for schedule(static) reduction(min : bad_x)
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < K; k++)
            if (!isfinite(x[t * K + k])) {
                bad_x = t * K + k < bad_x ? t * K + k : bad_x;
                break;
            }
    if (bad_x != INT64_MAX)
        return awq_set_err(err, AWQ_ERR_NUMERIC,
                           "clip_search: x token %lld, column %lld holds %s; inputs must be finite",
                           (long long)(bad_x / K), (long long)(bad_x % K),
                           isnan(x[bad_x]) ? "NaN" : "Inf");

    /* org_max[n, j] = max |w| over the group (also the answer for ncand == 0). Each group must
     * quantize as it is (finite values, a finite grid), as pseudo_quantize requires. */
    int64_t bad_w = INT64_MAX;
#pragma omp parallel for schedule(static) reduction(min : bad_w)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t j = 0; j < G; j++) {
            const float *p = w + n * K + j * g;
            float s;
            uint8_t z;
            if (quant_group(p, g, bits, zero_point, NULL, NULL, &s, &z)) {
                bad_w = n * G + j < bad_w ? n * G + j : bad_w;
                break;
            }
            float m = 0.0f;
            for (int64_t k = 0; k < g; k++) m = fabsf(p[k]) > m ? fabsf(p[k]) : m;
            max_val[n * G + j] = m;
        }
    }
    if (bad_w != INT64_MAX)
        return group_error("clip_search", "w", w, K, g, bad_w / G, bad_w % G, err);
    if (ncand == 0) return AWQ_OK;

    const int use_gram = g <= T;
    const int64_t L = use_gram ? g : T; /* columns of E */
    int64_t cb = CLIP_BATCH_FLOATS / (N * (g + L)); /* candidates per GEMM */
    cb = cb < 1 ? 1 : (cb > ncand ? ncand : cb);

    float *basis = NULL, *xt = NULL, *D = NULL, *E = NULL, *org = NULL;
    double *best = NULL;
    basis = malloc((size_t)(L * g) * sizeof(float));      /* Gram [g, g] or X_j [T, g] */
    xt = use_gram ? malloc((size_t)(g * T) * sizeof(float)) : NULL; /* X_j^T [g, T] */
    D = malloc((size_t)(cb * N * g) * sizeof(float));     /* [cb * N, g] */
    E = malloc((size_t)(cb * N * L) * sizeof(float));     /* [cb * N, L] */
    org = malloc((size_t)(N * G) * sizeof(float));        /* copy of org_max */
    best = malloc((size_t)N * sizeof(double));
    if (!basis || (use_gram && !xt) || !D || !E || !org || !best) {
        st = awq_set_err(err, AWQ_ERR_NOMEM,
                         "clip_search: out of memory for the [%lld, %lld] candidate batch",
                         (long long)(cb * N), (long long)g);
        goto done;
    }
    memcpy(org, max_val, (size_t)(N * G) * sizeof(float));

    for (int64_t j = 0; j < G; j++) {
        /* basis for group j */
        if (use_gram) {
#pragma omp parallel for schedule(static)
            for (int64_t k = 0; k < g; k++)
                for (int64_t t = 0; t < T; t++) xt[k * T + t] = x[t * K + j * g + k];
            st = awq_linear_f32(xt, xt, NULL, basis, g, T, g, err); /* Gram = X_j^T X_j */
            if (st) goto done;
        } else {
#pragma omp parallel for schedule(static)
            for (int64_t t = 0; t < T; t++)
                memcpy(basis + t * g, x + t * K + j * g, (size_t)g * sizeof(float));
        }
        for (int64_t n = 0; n < N; n++) best[n] = INFINITY;

        for (int64_t i0 = 0; i0 < ncand; i0 += cb) {
            const int64_t nb = ncand - i0 < cb ? ncand - i0 : cb;
            /* D[ii * N + n] = Q(clamp(w[n, group j], +-clip_ii)) - w[n, group j] */
            int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad)
            for (int64_t row = 0; row < nb * N; row++) {
                const int64_t ii = row / N, n = row % N;
                const float *wp = w + n * K + j * g;
                float *dp = D + row * g;
                const float mv = clip_value(org[n * G + j], i0 + ii, n_grid);
                for (int64_t k = 0; k < g; k++) dp[k] = wp[k] < -mv ? -mv : (wp[k] > mv ? mv : wp[k]);
                float s;
                uint8_t z;
                bad += quant_group(dp, g, bits, zero_point, dp, NULL, &s, &z);
                for (int64_t k = 0; k < g; k++) dp[k] -= wp[k];
            }
            if (bad) { /* cannot happen for finite w; kept so a future change cannot skip it */
                st = awq_set_err(err, AWQ_ERR_NUMERIC, "clip_search: non-finite clipped weights");
                goto done;
            }
            st = awq_linear_f32(D, basis, NULL, E, nb * N, g, L, err);
            if (st) goto done;
#pragma omp parallel for schedule(static)
            for (int64_t n = 0; n < N; n++) {
                for (int64_t ii = 0; ii < nb; ii++) {
                    const float *e = E + (ii * N + n) * L;
                    const float *o = use_gram ? D + (ii * N + n) * g : e;
                    double acc = 0.0;
                    for (int64_t l = 0; l < L; l++) acc += (double)e[l] * (double)o[l];
                    acc /= (double)T;
                    if (acc < best[n]) {
                        best[n] = acc;
                        max_val[n * G + j] = clip_value(org[n * G + j], i0 + ii, n_grid);
                    }
                }
            }
        }
    }
    st = AWQ_OK;
done:
    free(basis);
    free(xt);
    free(D);
    free(E);
    free(org);
    free(best);
    return st;
}
