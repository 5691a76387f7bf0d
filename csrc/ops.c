/* ops.c: dense fp32 ops of the decoder forward (see ops.h for the contracts).
 *
 * Everything here runs once per calibration block and grid point, so it is threaded with OpenMP
 * and vectorised:
 *   - element-wise ops (rmsnorm, layernorm, rope, activations, softmax) are plain loops or 16-float
 *     GCC vector extension code inside AWQ_CLONES functions (compiled for AVX-512, AVX2 and
 *     baseline);
 *   - attention's two products (Q K^T and P V) go through small register-tiled micro-kernels with
 *     explicit AVX-512 / AVX2+FMA intrinsics and a portable C twin, chosen at run time by
 *     awq_cpu_isa() (the build uses -std=c11, i.e. -ffp-contract=off, so only intrinsics give FMA).
 * File order: vector helpers, rmsnorm, layernorm, rope, activations (act, act_mul, silu_mul),
 * attention (kernels, softmax stage, driver), abs_mean.
 */
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define AWQ_X86_KERNELS 1
#include <immintrin.h>
#endif

/* The 16-float vector helpers below are always inlined into their (multiversioned) callers, so the
 * psABI of returning a 64-byte vector never matters; they take vector arguments by pointer because
 * GCC's note about passing them by value cannot be silenced by a pragma. */
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpsabi"
/* clang at -O1 (the sanitizer build) declines `omp simd` reductions with a warning; the pragma is
 * only a hint there, the loops stay correct. */
#pragma clang diagnostic ignored "-Wpass-failed"
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* ---------------------------------------------------------------- 16-float vectors */

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
#define V16_INLINE static inline __attribute__((always_inline))

/* Unaligned load / store (memcpy compiles to one vmovups). */
V16_INLINE v16f v16_load(const float *p) {
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}
V16_INLINE void v16_store(float *p, const v16f *v) { memcpy(p, v, sizeof *v); }
V16_INLINE v16f v16_splat(float x) {
    return (v16f){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}
/* m ? a : b per lane (m is an all-ones / all-zeros lane mask from a vector comparison). */
#define V16_SELECT(m, a, b) ((v16f)(((m) & (v16i)(a)) | (~(m) & (v16i)(b))))
V16_INLINE float v16_hsum(const v16f *v) {
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += (*v)[i];
    return s;
}
V16_INLINE float v16_hmax(const v16f *v) {
    float m = (*v)[0];
    for (int i = 1; i < 16; i++) m = (*v)[i] > m ? (*v)[i] : m;
    return m;
}

/* exp(x), max relative error < 1 ulp on [-87, 88] (Cephes expf polynomial on a Cody-Waite reduced
 * argument). x < cut gives exactly 0 (cut <= -87.336544, where the result drops below FLT_MIN, for a
 * plain exp; softmax uses a higher cut), so -inf (masked scores) maps to 0; x > 88 saturates at
 * exp(88); NaN stays NaN. The cut is folded into the underflow test (a separate select on the
 * result makes GCC scalarise the comparison). */
V16_INLINE v16f v16_exp_cut(const v16f *xp, float cut) {
    v16f x = *xp;
    const v16i underflow = x < v16_splat(cut);
    x = V16_SELECT(x < v16_splat(-87.0f), v16_splat(-87.0f), x);
    x = V16_SELECT(x > v16_splat(88.0f), v16_splat(88.0f), x);
    /* n = round(x / ln2) by the 1.5 * 2^23 trick: the low mantissa bits of tt then hold n. */
    const v16f tt = x * 1.44269504088896341f + 12582912.0f;
    const v16f n = tt - 12582912.0f;
    /* r = x - n ln2 with ln2 split in two (0.693359375 is exact in 9 bits). */
    v16f r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    v16f p = v16_splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* 2^n: biased exponent n + 127 shifted into place; bits(tt) - bits(1.5 * 2^23) == n. */
    const v16i two_n = ((v16i)tt - 0x4B400000 + 127) << 23;
    return V16_SELECT(underflow, v16_splat(0.0f), p * (v16f)two_n);
}
V16_INLINE v16f v16_exp(const v16f *xp) { return v16_exp_cut(xp, -87.336544f); }

/* |x| and the sign bit of x as lane masks (bit operations, so -0.0 and NaN keep their bits). */
#define V16_SIGN_BIT ((int32_t)0x80000000)
V16_INLINE v16f v16_abs(const v16f *x) { return (v16f)((v16i)*x & ~V16_SIGN_BIT); }
V16_INLINE v16f v16_copysign(const v16f *mag, const v16f *sgn) {
    return (v16f)((v16i)*mag | ((v16i)*sgn & V16_SIGN_BIT));
}

/* tanh(x) by the Cephes tanhf method: |x| < 0.625 an odd polynomial x + x^3 P(x^2) (no
 * cancellation near 0), else 1 - 2 / (exp(2|x|) + 1) with the sign of x; a few ulp. Large |x| gives
 * exactly +-1 (exp saturates), NaN stays NaN (it takes the polynomial branch). */
V16_INLINE v16f v16_tanh(const v16f *xp) {
    const v16f x = *xp, ax = v16_abs(xp);
    const v16f z = x * x;
    v16f p = v16_splat(-5.70498872745e-3f);
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    const v16f small = p * z * x + x;
    const v16f two_ax = ax + ax;
    const v16f big_mag = 1.0f - 2.0f / (v16_exp(&two_ax) + 1.0f);
    const v16f big = v16_copysign(&big_mag, xp);
    return V16_SELECT(ax >= v16_splat(0.625f), big, small);
}

/* 1 + erf(x) through erfc: with z = |x|, erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), P the
 * degree-9 Chebyshev fit of Numerical Recipes' erfcc (fractional error < 1.2e-7 for every z >= 0);
 * 1 + erf(x) = 2 - erfc(z) for x >= 0 and erfc(z) for x < 0, so the negative tail keeps its relative
 * accuracy instead of cancelling in 1 - erf. In fp32 the rounding of z^2 adds ~z^2 ulp relative.
 * +inf -> 2, -inf -> 0, NaN stays NaN. */
V16_INLINE v16f v16_one_plus_erf(const v16f *xp) {
    const v16f z = v16_abs(xp);
    const v16f t = 1.0f / (1.0f + 0.5f * z);
    v16f p = v16_splat(0.17087277f);
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    const v16f arg = p - z * z;
    const v16f erfc_z = t * v16_exp(&arg);
    return V16_SELECT(*xp < v16_splat(0.0f), erfc_z, 2.0f - erfc_z);
}

/* ---------------------------------------------------------------- rmsnorm */

/* y[D] = x / sqrt(mean(x^2) + eps) * (w + off) for one row; fp32 sum of squares. */
AWQ_CLONES
static void rmsnorm_row(const float *x, const float *w, float *y, int64_t D, float eps, float off) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < D; i++) ss += x[i] * x[i];
    const float inv = 1.0f / sqrtf(ss / (float)D + eps);
    for (int64_t i = 0; i < D; i++) y[i] = x[i] * inv * (w[i] + off);
}

int awq_rmsnorm_f32(const float *x, const float *w, float *y, int64_t M, int64_t D, float eps,
                    float unit_offset, awq_err *err) {
    if (M < 0 || D <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "rmsnorm: bad shape M=%lld D=%lld", (long long)M,
                           (long long)D);
    if (!(eps >= 0.0f) || !isfinite(eps) || !isfinite(unit_offset))
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "rmsnorm: eps must be finite and >= 0 and unit_offset finite (got eps=%g, "
                           "unit_offset=%g)",
                           (double)eps, (double)unit_offset);
#pragma omp parallel for schedule(static) if (M * D > 32768)
    for (int64_t m = 0; m < M; m++) rmsnorm_row(x + m * D, w, y + m * D, D, eps, unit_offset);
    return AWQ_OK;
}

/* ---------------------------------------------------------------- layernorm */

/* One row: mean and population variance two-pass in double, then
 * y = (float)((x - mean) * inv_std) * w + b (the normalisation in double, the affine part in fp32;
 * the four loops keep w = NULL / b = NULL out of the inner loop). */
AWQ_CLONES
static void layernorm_row(const float *x, const float *w, const float *b, float *y, int64_t D,
                          float eps) {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < D; i++) sum += x[i];
    const double mean = sum / (double)D;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < D; i++) {
        const double dx = (double)x[i] - mean;
        ss += dx * dx;
    }
    const double inv = 1.0 / sqrt(ss / (double)D + (double)eps);
    if (w && b)
        for (int64_t i = 0; i < D; i++) y[i] = (float)(((double)x[i] - mean) * inv) * w[i] + b[i];
    else if (w)
        for (int64_t i = 0; i < D; i++) y[i] = (float)(((double)x[i] - mean) * inv) * w[i];
    else if (b)
        for (int64_t i = 0; i < D; i++) y[i] = (float)(((double)x[i] - mean) * inv) + b[i];
    else
        for (int64_t i = 0; i < D; i++) y[i] = (float)(((double)x[i] - mean) * inv);
}

int awq_layernorm_f32(const float *x, const float *w, const float *b, float *y, int64_t M,
                      int64_t D, float eps, awq_err *err) {
    if (M < 0 || D <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "layernorm: bad shape M=%lld D=%lld", (long long)M,
                           (long long)D);
    if (!(eps >= 0.0f) || !isfinite(eps))
        return awq_set_err(err, AWQ_ERR_VALUE, "layernorm: eps must be finite and >= 0 (got %g)",
                           (double)eps);
#pragma omp parallel for schedule(static) if (M * D > 32768)
    for (int64_t m = 0; m < M; m++) layernorm_row(x + m * D, w, b, y + m * D, D, eps);
    return AWQ_OK;
}

/* ---------------------------------------------------------------- rope */

/* One head: (x1, x2) = (x[i], x[i + half]) -> (x1 c - x2 s, x2 c + x1 s), i < half. */
AWQ_CLONES
static void rope_head(float *x, const float *c, const float *s, int64_t half) {
    float *x2 = x + half;
    for (int64_t i = 0; i < half; i++) {
        const float a = x[i], b = x2[i];
        x[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
    }
}

/* GPT-J "rotate_every_two": (x[2i], x[2i+1]) -> (x[2i] c - x[2i+1] s, x[2i+1] c + x[2i] s). */
AWQ_CLONES
static void rope_head_interleaved(float *x, const float *c, const float *s, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        const float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * c[i] - b * s[i];
        x[2 * i + 1] = b * c[i] + a * s[i];
    }
}

int awq_rope_f32(float *x, const float *cos, const float *sin, int64_t M, int64_t H, int64_t d,
                 int64_t rot, awq_err *err) {
    return awq_rope_f32_ex(x, cos, sin, M, H, d, rot, 0, err);
}

int awq_rope_f32_ex(float *x, const float *cos, const float *sin, int64_t M, int64_t H, int64_t d,
                    int64_t rot, int interleaved, awq_err *err) {
    if (M < 0 || H <= 0 || d <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "rope: bad shape M=%lld H=%lld d=%lld", (long long)M,
                           (long long)H, (long long)d);
    if (rot <= 0 || rot > d || rot % 2)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "rope: rot must be even and in [2, d=%lld] (got %lld)", (long long)d,
                           (long long)rot);
    const int64_t half = rot / 2;
#pragma omp parallel for schedule(static) if (M * H * rot > 65536)
    for (int64_t mh = 0; mh < M * H; mh++) {
        const int64_t m = mh / H;
        if (interleaved) rope_head_interleaved(x + mh * d, cos + m * half, sin + m * half, half);
        else rope_head(x + mh * d, cos + m * half, sin + m * half, half);
    }
    return AWQ_OK;
}

/* ---------------------------------------------------------------- activations */

static const char *const ACT_NAMES[AWQ_ACT_COUNT] = {"silu", "gelu", "gelu_tanh", "relu"};

const char *awq_act_name(awq_act kind) {
    return (int)kind >= 0 && (int)kind < AWQ_ACT_COUNT ? ACT_NAMES[kind] : NULL;
}

int awq_act_from_name(const char *name, awq_act *kind, awq_err *err) {
    for (int i = 0; name && i < AWQ_ACT_COUNT; i++)
        if (!strcmp(name, ACT_NAMES[i])) {
            *kind = (awq_act)i;
            return AWQ_OK;
        }
    return awq_set_err(err, AWQ_ERR_VALUE,
                       "unknown activation \"%.64s\" (expected silu, gelu, gelu_tanh or relu)",
                       name ? name : "(null)");
}

/* act(x) on 16 lanes; formulas and accuracy in ops.h. silu is gate / (1 + exp(-gate)) (torch's
 * formula), written exactly as silu_mul always computed it. */
V16_INLINE v16f v16_act(const v16f *xp, awq_act kind) {
    const v16f x = *xp;
    switch (kind) {
    case AWQ_ACT_GELU: {
        const v16f z = x * 0.70710678118654752f; /* x / sqrt(2) */
        return 0.5f * x * v16_one_plus_erf(&z);
    }
    case AWQ_ACT_GELU_TANH: {
        /* 0.5 x (1 + tanh(u)) == x / (1 + exp(-2u)): the same function without the cancellation
         * of 1 + tanh(u) for negative u; u = sqrt(2/pi) (x + 0.044715 x^3). */
        const v16f m2u = -1.59576912160573072f * (x + 0.044715f * x * x * x); /* -2u */
        return x / (1.0f + v16_exp(&m2u));
    }
    case AWQ_ACT_RELU: return V16_SELECT(x < v16_splat(0.0f), v16_splat(0.0f), x);
    case AWQ_ACT_SILU:
    default: {
        const v16f ng = -x;
        return -ng / (1.0f + v16_exp(&ng));
    }
    }
}

/* y = act(x) (* up when up is not NULL) over n elements. */
AWQ_CLONES
static void act_span(const float *x, const float *up, float *y, int64_t n, awq_act kind) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const v16f x16 = v16_load(x + i);
        v16f y16 = v16_act(&x16, kind);
        if (up) y16 = y16 * v16_load(up + i);
        v16_store(y + i, &y16);
    }
    if (i < n) { /* tail: same vector code on a zero-padded copy, so every element is computed alike */
        float xb[16] = {0}, ub[16] = {0}, yb[16];
        memcpy(xb, x + i, (size_t)(n - i) * sizeof(float));
        if (up) memcpy(ub, up + i, (size_t)(n - i) * sizeof(float));
        const v16f x16 = v16_load(xb);
        v16f y16 = v16_act(&x16, kind);
        if (up) y16 = y16 * v16_load(ub);
        v16_store(yb, &y16);
        memcpy(y + i, yb, (size_t)(n - i) * sizeof(float));
    }
}

static int act_run(const float *x, const float *up, float *y, int64_t n, awq_act kind,
                   const char *what, awq_err *err) {
    if (n < 0) return awq_set_err(err, AWQ_ERR_VALUE, "%s: negative size %lld", what, (long long)n);
    if (!awq_act_name(kind))
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: unknown activation kind %d", what, (int)kind);
    const int64_t chunk = 16384; /* multiple of 16: only the last chunk has a tail */
    const int64_t nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (nchunks > 1)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t i0 = c * chunk, len = n - i0 < chunk ? n - i0 : chunk;
        act_span(x + i0, up ? up + i0 : NULL, y + i0, len, kind);
    }
    return AWQ_OK;
}

int awq_act_f32(const float *x, float *y, int64_t n, awq_act kind, awq_err *err) {
    return act_run(x, NULL, y, n, kind, "act", err);
}

int awq_act_mul_f32(const float *gate, const float *up, float *y, int64_t n, awq_act kind,
                    awq_err *err) {
    return act_run(gate, up, y, n, kind, "act_mul", err);
}

int awq_silu_mul_f32(const float *gate, const float *up, float *y, int64_t n, awq_err *err) {
    return act_run(gate, up, y, n, AWQ_ACT_SILU, "silu_mul", err);
}

/* ---------------------------------------------------------------- attention: micro-kernels
 *
 * One task = (batch b, query head h, block of up to ATT_RB query rows). The task stages the keys
 * its rows can see, transposed (Kt[d][span_pad], zero padded to a multiple of ATT_KC), and the
 * values (Vp[span][dv_pad], dv_pad = v's head dim dv rounded up to ATT_DC), then walks its rows
 * four at a time:
 *   scores[4][keys] = Qs[4][d] . Kt        (qk kernel, 4 rows x 32 keys of accumulators)
 *   softcap / ALiBi terms when asked for   (softmax stage, on the materialised scores)
 *   masked, max-subtracted exp in place    (softmax_exp, fp32)
 *   O[4][dv_pad] = P[4][keys] . Vp         (pv kernel, 4 rows x 32 dims of accumulators)
 * and writes out = O / rowsum. Only 4 rows of scores exist at a time; nothing is S x S. The kernels
 * never see alibi, softcap or dv: the score terms live in the softmax stage and the pv kernel takes
 * any multiple-of-ATT_DC width, so every ISA path gets them with no special case.
 * Index letters: r row of the 4-row group, j key (relative to the block's first key), c head dim.
 */

enum {
    ATT_RB = 64, /* query rows per task: amortises the K/V staging (cost ~1/(2*ATT_RB) of the math) */
    ATT_KC = 32, /* keys per qk tile: 4 x 32 fp32 accumulators = 8 zmm */
    ATT_DC = 32, /* head dims per pv tile: same tile shape */
};

/* Sc[r][j] = sum_c Qs[r][c] * Kt[c][j] for r < 4 and j in [j0, j1) (j0, j1 multiples of ATT_KC).
 * Qs: [4, d]; Kt: [d, ldk]; Sc: [4, lds]. */
typedef void (*att_qk_fn)(const float *Qs, int64_t d, const float *Kt, int64_t ldk, int64_t j0,
                          int64_t j1, float *Sc, int64_t lds);
/* O[r][c] = sum_{j in [j0, j1)} P[r][j] * V[j][c] for r < 4 and c < dp (dp multiple of ATT_DC).
 * P: [4, lds]; V: [*, ldv] (row stride ldv >= dp); O: [4, dp]. */
typedef void (*att_pv_fn)(const float *P, int64_t lds, const float *V, int64_t ldv, int64_t dp,
                          int64_t j0, int64_t j1, float *O);

static void att_qk_generic(const float *Qs, int64_t d, const float *Kt, int64_t ldk, int64_t j0,
                           int64_t j1, float *Sc, int64_t lds) {
    for (int64_t j = j0; j < j1; j += ATT_KC) {
        float acc[4][ATT_KC] = {{0}};
        for (int64_t c = 0; c < d; c++) {
            const float *kt = Kt + c * ldk + j;
            for (int r = 0; r < 4; r++) {
                const float qv = Qs[r * d + c];
                for (int jj = 0; jj < ATT_KC; jj++) acc[r][jj] += qv * kt[jj];
            }
        }
        for (int r = 0; r < 4; r++) memcpy(Sc + r * lds + j, acc[r], sizeof acc[r]);
    }
}

static void att_pv_generic(const float *P, int64_t lds, const float *V, int64_t ldv, int64_t dp,
                           int64_t j0, int64_t j1, float *O) {
    for (int64_t c0 = 0; c0 < dp; c0 += ATT_DC) {
        float acc[4][ATT_DC] = {{0}};
        for (int64_t j = j0; j < j1; j++) {
            const float *v = V + j * ldv + c0;
            for (int r = 0; r < 4; r++) {
                const float p = P[r * lds + j];
                for (int cc = 0; cc < ATT_DC; cc++) acc[r][cc] += p * v[cc];
            }
        }
        for (int r = 0; r < 4; r++) memcpy(O + r * dp + c0, acc[r], sizeof acc[r]);
    }
}

#ifdef AWQ_X86_KERNELS
/* AVX-512: a 4 x 32 tile is 8 zmm accumulators; per step 2 vector loads + 4 broadcasts feed 8 FMAs,
 * enough independent chains to cover the FMA latency on two FMA ports. */
__attribute__((target("avx512f"))) static void att_qk_avx512(const float *Qs, int64_t d,
                                                             const float *Kt, int64_t ldk,
                                                             int64_t j0, int64_t j1, float *Sc,
                                                             int64_t lds) {
    const float *q0 = Qs, *q1 = Qs + d, *q2 = Qs + 2 * d, *q3 = Qs + 3 * d;
    for (int64_t j = j0; j < j1; j += ATT_KC) {
        __m512 a00 = _mm512_setzero_ps(), a01 = _mm512_setzero_ps();
        __m512 a10 = _mm512_setzero_ps(), a11 = _mm512_setzero_ps();
        __m512 a20 = _mm512_setzero_ps(), a21 = _mm512_setzero_ps();
        __m512 a30 = _mm512_setzero_ps(), a31 = _mm512_setzero_ps();
        for (int64_t c = 0; c < d; c++) {
            const float *kt = Kt + c * ldk + j;
            const __m512 k0 = _mm512_loadu_ps(kt), k1 = _mm512_loadu_ps(kt + 16);
            __m512 qv = _mm512_set1_ps(q0[c]);
            a00 = _mm512_fmadd_ps(qv, k0, a00);
            a01 = _mm512_fmadd_ps(qv, k1, a01);
            qv = _mm512_set1_ps(q1[c]);
            a10 = _mm512_fmadd_ps(qv, k0, a10);
            a11 = _mm512_fmadd_ps(qv, k1, a11);
            qv = _mm512_set1_ps(q2[c]);
            a20 = _mm512_fmadd_ps(qv, k0, a20);
            a21 = _mm512_fmadd_ps(qv, k1, a21);
            qv = _mm512_set1_ps(q3[c]);
            a30 = _mm512_fmadd_ps(qv, k0, a30);
            a31 = _mm512_fmadd_ps(qv, k1, a31);
        }
        float *s = Sc + j;
        _mm512_storeu_ps(s, a00);
        _mm512_storeu_ps(s + 16, a01);
        _mm512_storeu_ps(s + lds, a10);
        _mm512_storeu_ps(s + lds + 16, a11);
        _mm512_storeu_ps(s + 2 * lds, a20);
        _mm512_storeu_ps(s + 2 * lds + 16, a21);
        _mm512_storeu_ps(s + 3 * lds, a30);
        _mm512_storeu_ps(s + 3 * lds + 16, a31);
    }
}

__attribute__((target("avx512f"))) static void att_pv_avx512(const float *P, int64_t lds,
                                                             const float *V, int64_t ldv, int64_t dp,
                                                             int64_t j0, int64_t j1, float *O) {
    const float *p0 = P, *p1 = P + lds, *p2 = P + 2 * lds, *p3 = P + 3 * lds;
    for (int64_t c0 = 0; c0 < dp; c0 += ATT_DC) {
        __m512 a00 = _mm512_setzero_ps(), a01 = _mm512_setzero_ps();
        __m512 a10 = _mm512_setzero_ps(), a11 = _mm512_setzero_ps();
        __m512 a20 = _mm512_setzero_ps(), a21 = _mm512_setzero_ps();
        __m512 a30 = _mm512_setzero_ps(), a31 = _mm512_setzero_ps();
        for (int64_t j = j0; j < j1; j++) {
            const float *v = V + j * ldv + c0;
            const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
            __m512 pv = _mm512_set1_ps(p0[j]);
            a00 = _mm512_fmadd_ps(pv, v0, a00);
            a01 = _mm512_fmadd_ps(pv, v1, a01);
            pv = _mm512_set1_ps(p1[j]);
            a10 = _mm512_fmadd_ps(pv, v0, a10);
            a11 = _mm512_fmadd_ps(pv, v1, a11);
            pv = _mm512_set1_ps(p2[j]);
            a20 = _mm512_fmadd_ps(pv, v0, a20);
            a21 = _mm512_fmadd_ps(pv, v1, a21);
            pv = _mm512_set1_ps(p3[j]);
            a30 = _mm512_fmadd_ps(pv, v0, a30);
            a31 = _mm512_fmadd_ps(pv, v1, a31);
        }
        float *o = O + c0;
        _mm512_storeu_ps(o, a00);
        _mm512_storeu_ps(o + 16, a01);
        _mm512_storeu_ps(o + dp, a10);
        _mm512_storeu_ps(o + dp + 16, a11);
        _mm512_storeu_ps(o + 2 * dp, a20);
        _mm512_storeu_ps(o + 2 * dp + 16, a21);
        _mm512_storeu_ps(o + 3 * dp, a30);
        _mm512_storeu_ps(o + 3 * dp + 16, a31);
    }
}

/* AVX2: the same tiles as two 4 x 16 halves (8 ymm accumulators each; 16 would spill). */
__attribute__((target("avx2,fma"))) static void att_qk_avx2(const float *Qs, int64_t d,
                                                            const float *Kt, int64_t ldk,
                                                            int64_t j0, int64_t j1, float *Sc,
                                                            int64_t lds) {
    const float *q0 = Qs, *q1 = Qs + d, *q2 = Qs + 2 * d, *q3 = Qs + 3 * d;
    for (int64_t j = j0; j < j1; j += 16) {
        __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps();
        __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
        __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps();
        __m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
        for (int64_t c = 0; c < d; c++) {
            const float *kt = Kt + c * ldk + j;
            const __m256 k0 = _mm256_loadu_ps(kt), k1 = _mm256_loadu_ps(kt + 8);
            __m256 qv = _mm256_broadcast_ss(q0 + c);
            a00 = _mm256_fmadd_ps(qv, k0, a00);
            a01 = _mm256_fmadd_ps(qv, k1, a01);
            qv = _mm256_broadcast_ss(q1 + c);
            a10 = _mm256_fmadd_ps(qv, k0, a10);
            a11 = _mm256_fmadd_ps(qv, k1, a11);
            qv = _mm256_broadcast_ss(q2 + c);
            a20 = _mm256_fmadd_ps(qv, k0, a20);
            a21 = _mm256_fmadd_ps(qv, k1, a21);
            qv = _mm256_broadcast_ss(q3 + c);
            a30 = _mm256_fmadd_ps(qv, k0, a30);
            a31 = _mm256_fmadd_ps(qv, k1, a31);
        }
        float *s = Sc + j;
        _mm256_storeu_ps(s, a00);
        _mm256_storeu_ps(s + 8, a01);
        _mm256_storeu_ps(s + lds, a10);
        _mm256_storeu_ps(s + lds + 8, a11);
        _mm256_storeu_ps(s + 2 * lds, a20);
        _mm256_storeu_ps(s + 2 * lds + 8, a21);
        _mm256_storeu_ps(s + 3 * lds, a30);
        _mm256_storeu_ps(s + 3 * lds + 8, a31);
    }
}

__attribute__((target("avx2,fma"))) static void att_pv_avx2(const float *P, int64_t lds,
                                                            const float *V, int64_t ldv, int64_t dp,
                                                            int64_t j0, int64_t j1, float *O) {
    const float *p0 = P, *p1 = P + lds, *p2 = P + 2 * lds, *p3 = P + 3 * lds;
    for (int64_t c0 = 0; c0 < dp; c0 += 16) {
        __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps();
        __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
        __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps();
        __m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
        for (int64_t j = j0; j < j1; j++) {
            const float *v = V + j * ldv + c0;
            const __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8);
            __m256 pv = _mm256_broadcast_ss(p0 + j);
            a00 = _mm256_fmadd_ps(pv, v0, a00);
            a01 = _mm256_fmadd_ps(pv, v1, a01);
            pv = _mm256_broadcast_ss(p1 + j);
            a10 = _mm256_fmadd_ps(pv, v0, a10);
            a11 = _mm256_fmadd_ps(pv, v1, a11);
            pv = _mm256_broadcast_ss(p2 + j);
            a20 = _mm256_fmadd_ps(pv, v0, a20);
            a21 = _mm256_fmadd_ps(pv, v1, a21);
            pv = _mm256_broadcast_ss(p3 + j);
            a30 = _mm256_fmadd_ps(pv, v0, a30);
            a31 = _mm256_fmadd_ps(pv, v1, a31);
        }
        float *o = O + c0;
        _mm256_storeu_ps(o, a00);
        _mm256_storeu_ps(o + 8, a01);
        _mm256_storeu_ps(o + dp, a10);
        _mm256_storeu_ps(o + dp + 8, a11);
        _mm256_storeu_ps(o + 2 * dp, a20);
        _mm256_storeu_ps(o + 2 * dp + 8, a21);
        _mm256_storeu_ps(o + 3 * dp, a30);
        _mm256_storeu_ps(o + 3 * dp + 8, a31);
    }
}
#endif /* AWQ_X86_KERNELS */

/* ---------------------------------------------------------------- attention: softmax stage */

/* Extra score terms on s[0..n) (n a multiple of 16), entry i being key jrel0 + i relative to the
 * query's position (jrel0 = j - p for i = 0): s = softcap * tanh(s / softcap) when softcap > 0,
 * then s += slope * (j - p) when has_alibi. Entries outside the row's visible range are computed too
 * and then overwritten by the mask. j - p is an exact integer in fp32 (|j - p| < 2^24 is checked). */
AWQ_CLONES
static void att_score_terms(float *s, int64_t n, float softcap, int has_alibi, float slope,
                            int64_t jrel0) {
    const v16f iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    for (int64_t i = 0; i < n; i += 16) {
        v16f v = v16_load(s + i);
        if (softcap > 0.0f) {
            const v16f u = v / softcap;
            v = softcap * v16_tanh(&u);
        }
        if (has_alibi) v += slope * (iota + (float)(jrel0 + i));
        v16_store(s + i, &v);
    }
}

/* s[0..n) <- exp(s - max(s)) in place (n a multiple of 16, masked entries hold -inf and become 0);
 * returns the sum. A NaN score makes the sum NaN, so it reaches the output.
 * Terms below exp(-64) ~ 1.6e-28 of the row maximum are set to exactly 0: they cannot move the row
 * sum (>= 1) in fp32, and P.V products of them would be subnormal, which stalls the FMA units for
 * ~100 cycles each (long ALiBi rows put many scores in that band). */
AWQ_CLONES
static float att_softmax_exp(float *s, int64_t n) {
    v16f m = v16_splat(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
        const v16f v = v16_load(s + i);
        m = V16_SELECT(v > m, v, m);
    }
    const v16f mx = v16_splat(v16_hmax(&m));
    v16f acc = v16_splat(0.0f);
    for (int64_t i = 0; i < n; i += 16) {
        const v16f z = v16_load(s + i) - mx;
        const v16f e = v16_exp_cut(&z, -64.0f);
        v16_store(s + i, &e);
        acc += e;
    }
    return v16_hsum(&acc);
}

/* ---------------------------------------------------------------- attention: driver */

typedef struct {
    const float *q, *k, *v; /* q: [B, T, Hq, d]; k: [B, S, Hkv, d]; v: [B, S, Hkv, dv] */
    float *out;             /* [B, T, Hq, dv] */
    int64_t T, S, Hq, Hkv, d, dv;
    int64_t dv_pad;         /* dv rounded up to ATT_DC: width the pv kernel computes */
    int64_t hp;             /* query heads per task (all Hq / Hkv sharing a kv head, or 1) */
    float scale;
    int64_t q_pos0, window;
    const int64_t *kv_len;  /* [B] or NULL */
    const float *alibi;     /* [Hq] slopes or NULL */
    float softcap;          /* 0 = off */
    att_qk_fn qk;
    att_pv_fn pv;
} att_args;

/* Per-thread scratch, sized for the widest key span one task can see (span_cap). */
typedef struct {
    float *Kt; /* [d, span_cap] transposed keys */
    float *Vp; /* [span_cap, dv_pad] values, used only when dv is not a multiple of ATT_DC */
    float *Sc; /* [4, span_cap] scores / probabilities */
    float *Qs; /* [4, d] scaled queries */
    float *O;  /* [4, dv_pad] unnormalised outputs */
} att_scratch;

/* Visible keys of the query at absolute position pos: [*lo, *hi), possibly empty. */
static inline void att_key_range(const att_args *a, int64_t pos, int64_t kvl, int64_t *lo,
                                 int64_t *hi) {
    *hi = pos + 1 < kvl ? pos + 1 : kvl;
    *lo = a->window > 0 && pos - a->window + 1 > 0 ? pos - a->window + 1 : 0;
}

/* Kt[c][j] = K[j][c] for j < span, c < d (K rows ldk_src apart), zero for span <= j < ldk.
 * Blocks of 16 keys: the 16 source rows stay in L1 while each Kt row gets 16 contiguous floats. */
static void att_stage_keys(const float *K, int64_t ldk_src, int64_t span, int64_t d, float *Kt,
                           int64_t ldk) {
    for (int64_t j0 = 0; j0 < span; j0 += 16) {
        const int64_t nj = span - j0 < 16 ? span - j0 : 16;
        for (int64_t c = 0; c < d; c++) {
            float *dst = Kt + c * ldk + j0;
            for (int64_t jj = 0; jj < nj; jj++) dst[jj] = K[(j0 + jj) * ldk_src + c];
        }
    }
    for (int64_t c = 0; c < d; c++)
        for (int64_t j = span; j < ldk; j++) Kt[c * ldk + j] = 0.0f;
}

/* One query head h over query rows [t0, t0 + nr), keys staged in w->Kt (from key jlo on) and
 * values at V (rows ldv apart, dv_pad wide). */
static void att_head_rows(const att_args *a, const att_scratch *w, int64_t b, int64_t h,
                          int64_t t0, int64_t nr, int64_t kvl, int64_t jlo, int64_t ldk,
                          const float *V, int64_t ldv) {
    const int64_t d = a->d, dv = a->dv, dv_pad = a->dv_pad, Hq = a->Hq;
    const int64_t qrow = Hq * d, orow = Hq * dv; /* strides between tokens in q and in out */
    const int terms = a->softcap > 0.0f || a->alibi;
    const float slope = a->alibi ? a->alibi[h] : 0.0f;
    float *out0 = a->out + ((b * a->T + t0) * Hq + h) * dv;
    for (int64_t g0 = 0; g0 < nr; g0 += 4) {
        const int ng = nr - g0 < 4 ? (int)(nr - g0) : 4;
        int64_t lo[4], hi[4], glo = ldk, ghi = 0;
        for (int r = 0; r < 4; r++) {
            float *qs = w->Qs + r * d;
            lo[r] = hi[r] = 0;
            if (r >= ng) { /* padding row: zero query, empty range, output discarded */
                memset(qs, 0, (size_t)d * sizeof(float));
                continue;
            }
            const float *qr = a->q + (b * a->T + t0 + g0 + r) * qrow + h * d;
            for (int64_t c = 0; c < d; c++) qs[c] = qr[c] * a->scale;
            att_key_range(a, a->q_pos0 + t0 + g0 + r, kvl, &lo[r], &hi[r]);
            lo[r] -= jlo;
            hi[r] -= jlo;
            if (hi[r] > lo[r]) {
                glo = lo[r] < glo ? lo[r] : glo;
                ghi = hi[r] > ghi ? hi[r] : ghi;
            }
        }
        float *o0 = out0 + g0 * orow;
        if (ghi <= glo) { /* every row of the group is empty */
            for (int r = 0; r < ng; r++) memset(o0 + r * orow, 0, (size_t)dv * sizeof(float));
            continue;
        }
        /* Scores on whole ATT_KC tiles covering the group's keys; per-row masks set -inf. */
        const int64_t cl = glo / ATT_KC * ATT_KC;
        const int64_t ch = (ghi + ATT_KC - 1) / ATT_KC * ATT_KC;
        a->qk(w->Qs, d, w->Kt, ldk, cl, ch, w->Sc, ldk);
        float inv[4];
        for (int r = 0; r < 4; r++) {
            float *s = w->Sc + r * ldk;
            if (hi[r] <= lo[r]) {
                for (int64_t j = cl; j < ch; j++) s[j] = 0.0f;
                inv[r] = 0.0f;
                continue;
            }
            if (terms) /* key cl sits at jlo + cl, the query at q_pos0 + t0 + g0 + r */
                att_score_terms(s + cl, ch - cl, a->softcap, a->alibi != NULL, slope,
                                jlo + cl - (a->q_pos0 + t0 + g0 + r));
            for (int64_t j = cl; j < lo[r]; j++) s[j] = -INFINITY;
            for (int64_t j = hi[r]; j < ch; j++) s[j] = -INFINITY;
            inv[r] = 1.0f / att_softmax_exp(s + cl, ch - cl);
        }
        a->pv(w->Sc, ldk, V, ldv, dv_pad, glo, ghi, w->O);
        for (int r = 0; r < ng; r++) {
            const float *o = w->O + r * dv_pad;
            float *dst = o0 + r * orow;
            for (int64_t c = 0; c < dv; c++) dst[c] = o[c] * inv[r];
        }
    }
}

/* One task: batch b, query heads [h0, h0 + hp) (all reading kv head h0 / (Hq / Hkv)), query rows
 * [t0, t0 + nr). Stages the keys (and values) those rows can see once for all hp heads. */
static void att_task(const att_args *a, const att_scratch *w, int64_t b, int64_t h0, int64_t t0,
                     int64_t nr) {
    const int64_t d = a->d, dv = a->dv, Hkv = a->Hkv;
    const int64_t hk = h0 / (a->Hq / Hkv);
    const int64_t kvl = a->kv_len ? a->kv_len[b] : a->S;

    /* Key ranges are monotone in the row, so the rows see [lo(first row), hi(last row)). */
    int64_t jlo, jhi, unused;
    att_key_range(a, a->q_pos0 + t0, kvl, &jlo, &unused);
    att_key_range(a, a->q_pos0 + t0 + nr - 1, kvl, &unused, &jhi);
    if (jhi <= jlo) { /* no row sees any key: defined output 0 */
        for (int64_t h = h0; h < h0 + a->hp; h++)
            for (int64_t r = 0; r < nr; r++)
                memset(a->out + ((b * a->T + t0 + r) * a->Hq + h) * dv, 0,
                       (size_t)dv * sizeof(float));
        return;
    }
    const int64_t span = jhi - jlo;
    const int64_t ldk = (span + ATT_KC - 1) / ATT_KC * ATT_KC;
    const float *K = a->k + ((b * a->S + jlo) * Hkv + hk) * d;
    const float *V = a->v + ((b * a->S + jlo) * Hkv + hk) * dv;
    int64_t ldv = Hkv * dv;
    att_stage_keys(K, Hkv * d, span, d, w->Kt, ldk);
    if (a->dv_pad != dv) { /* pv works on whole ATT_DC columns: copy values zero padded */
        for (int64_t j = 0; j < span; j++) {
            memcpy(w->Vp + j * a->dv_pad, V + j * ldv, (size_t)dv * sizeof(float));
            for (int64_t c = dv; c < a->dv_pad; c++) w->Vp[j * a->dv_pad + c] = 0.0f;
        }
        V = w->Vp;
        ldv = a->dv_pad;
    }
    for (int64_t h = h0; h < h0 + a->hp; h++) att_head_rows(a, w, b, h, t0, nr, kvl, jlo, ldk, V, ldv);
}

int awq_attention_f32_ex(const float *q, const float *k, const float *v, float *out, int64_t B,
                         int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t d, float scale,
                         int64_t q_pos0, const awq_attention_opts *opt, awq_err *err) {
    static const awq_attention_opts defaults = AWQ_ATTENTION_OPTS_INIT;
    if (!opt) opt = &defaults;
    const int64_t window = opt->window, dv = opt->dv ? opt->dv : d;
    const int64_t *kv_len = opt->kv_len;
    if (B < 0 || T < 0 || S <= 0 || Hq <= 0 || Hkv <= 0 || d <= 0 || dv <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "attention: bad shape B=%lld T=%lld S=%lld Hq=%lld Hkv=%lld d=%lld "
                           "dv=%lld",
                           (long long)B, (long long)T, (long long)S, (long long)Hq, (long long)Hkv,
                           (long long)d, (long long)dv);
    if (Hq % Hkv)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "attention: query heads (%lld) must be a multiple of kv heads (%lld)",
                           (long long)Hq, (long long)Hkv);
    if (q_pos0 < 0 || q_pos0 + T > S)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "attention: queries sit at positions q_pos0=%lld .. %lld but there are "
                           "only S=%lld keys (need 0 <= q_pos0 and q_pos0 + T <= S)",
                           (long long)q_pos0, (long long)(q_pos0 + T - 1), (long long)S);
    if (window < 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "attention: window must be >= 0 (got %lld)",
                           (long long)window);
    if (!isfinite(scale))
        return awq_set_err(err, AWQ_ERR_VALUE, "attention: scale must be finite (got %g)",
                           (double)scale);
    if (!(opt->softcap >= 0.0f) || !isfinite(opt->softcap))
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "attention: softcap must be finite and >= 0 (0 = off; got %g)",
                           (double)opt->softcap);
    /* ALiBi distances j - p are formed in fp32, exact only below 2^24. */
    if (opt->alibi && S > (1 << 24))
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "attention: alibi needs S <= 2^24 keys (got S=%lld)", (long long)S);
    if (kv_len)
        for (int64_t b = 0; b < B; b++)
            if (kv_len[b] < 0 || kv_len[b] > S)
                return awq_set_err(err, AWQ_ERR_VALUE,
                                   "attention: kv_len[%lld] = %lld is outside [0, S=%lld]",
                                   (long long)b, (long long)kv_len[b], (long long)S);
    const int isa = opt->isa == AWQ_ATTENTION_ISA_BEST ? (int)awq_cpu_isa() : opt->isa;
    if (isa < (int)AWQ_ISA_GENERIC || isa > (int)AWQ_ISA_AVX512)
        return awq_set_err(err, AWQ_ERR_VALUE, "attention: unknown isa %d", opt->isa);
    if (isa > (int)awq_cpu_isa())
        return awq_set_err(err, AWQ_ERR_VALUE, "attention: this CPU cannot run the %s kernels",
                           awq_isa_name((awq_isa)isa));
    if (B == 0 || T == 0) return AWQ_OK;

    att_args a = {q, k, v, out, T, S, Hq, Hkv, d, dv, (dv + ATT_DC - 1) / ATT_DC * ATT_DC, Hq / Hkv,
                  scale, q_pos0, window, kv_len, opt->alibi, opt->softcap, att_qk_generic,
                  att_pv_generic};
#ifdef AWQ_X86_KERNELS
    if (isa == AWQ_ISA_AVX512) {
        a.qk = att_qk_avx512;
        a.pv = att_pv_avx512;
    } else if (isa == AWQ_ISA_AVX2) {
        a.qk = att_qk_avx2;
        a.pv = att_pv_avx2;
    }
#endif
    const int64_t rb = T < ATT_RB ? T : ATT_RB;
    const int64_t nblk = (T + rb - 1) / rb;
    /* Heads sharing a kv head share one task (and one key staging) unless that leaves too few
     * tasks to keep the threads busy (small-batch decode). */
    if (B * Hkv * nblk < 4 * (int64_t)awq_num_threads()) a.hp = 1;
    const int64_t hgroups = Hq / a.hp;
    const int64_t ntask = B * hgroups * nblk;
    /* Widest key span of one task: all S keys, or window + rows - 1 with a sliding window. */
    int64_t span_cap = window > 0 && window + rb - 1 < S ? window + rb - 1 : S;
    span_cap = (span_cap + ATT_KC - 1) / ATT_KC * ATT_KC;
    /* Sub-buffers are multiples of 16 floats so each starts 64-byte aligned. */
    const size_t n_kt = (size_t)(d * span_cap + 15) / 16 * 16;
    const size_t n_vp = a.dv_pad != dv ? (size_t)(span_cap * a.dv_pad) : 0;
    const size_t n_sc = (size_t)(4 * span_cap), n_qs = (size_t)((4 * d + 15) / 16 * 16);
    const size_t n_o = (size_t)(4 * a.dv_pad);
    const size_t n_all = n_kt + n_vp + n_sc + n_qs + n_o;

    int failed = 0;
#pragma omp parallel
    {
        float *buf = aligned_alloc(64, n_all * sizeof(float));
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
        att_scratch w = {0};
        if (buf) {
            w.Kt = buf;
            w.Vp = w.Kt + n_kt;
            w.Sc = w.Vp + n_vp;
            w.Qs = w.Sc + n_sc;
            w.O = w.Qs + n_qs;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < ntask; task++) {
            if (!buf) continue;
            const int64_t blk = task % nblk, bg = task / nblk;
            const int64_t t0 = blk * rb, nr = T - t0 < rb ? T - t0 : rb;
            att_task(&a, &w, bg / hgroups, (bg % hgroups) * a.hp, t0, nr);
        }
        free(buf);
    }
    if (failed)
        return awq_set_err(err, AWQ_ERR_NOMEM,
                           "attention: out of memory for %zu floats of per-thread scratch", n_all);
    return AWQ_OK;
}

int awq_attention_f32_isa(const float *q, const float *k, const float *v, float *out, int64_t B,
                          int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t d, float scale,
                          int64_t q_pos0, int64_t window, const int64_t *kv_len, awq_isa isa,
                          awq_err *err) {
    awq_attention_opts opt = AWQ_ATTENTION_OPTS_INIT;
    opt.window = window;
    opt.kv_len = kv_len;
    opt.isa = (int)isa;
    return awq_attention_f32_ex(q, k, v, out, B, T, S, Hq, Hkv, d, scale, q_pos0, &opt, err);
}

int awq_attention_f32(const float *q, const float *k, const float *v, float *out, int64_t B,
                      int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t d, float scale,
                      int64_t q_pos0, int64_t window, const int64_t *kv_len, awq_err *err) {
    awq_attention_opts opt = AWQ_ATTENTION_OPTS_INIT;
    opt.window = window;
    opt.kv_len = kv_len;
    return awq_attention_f32_ex(q, k, v, out, B, T, S, Hq, Hkv, d, scale, q_pos0, &opt, err);
}

/* ---------------------------------------------------------------- abs_mean */

int awq_abs_mean_f32(const float *x, float *out, int64_t M, int64_t K, awq_err *err) {
    if (M <= 0 || K <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "abs_mean: empty input (M=%lld, K=%lld)",
                           (long long)M, (long long)K);
#pragma omp parallel for schedule(static)
    for (int64_t k0 = 0; k0 < K; k0 += 64) {
        int64_t kn = K - k0 < 64 ? K - k0 : 64;
        double acc[64] = {0};
        for (int64_t m = 0; m < M; m++) {
            const float *row = x + m * K + k0;
            for (int64_t j = 0; j < kn; j++) acc[j] += fabsf(row[j]);
        }
        for (int64_t j = 0; j < kn; j++) out[k0 + j] = (float)(acc[j] / (double)M);
    }
    return AWQ_OK;
}
