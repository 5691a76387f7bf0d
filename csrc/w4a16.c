/* w4a16.c: the W4A16 matmul on the AutoAWQ GEMM layout and the fp16-weight matmul (CPU).
 *
 * Why two regimes. At small M (decode) the product is bound by the bytes of W read, so the GEMV
 * kernels stream qweight once and decode nibbles in registers, never writing W out. At large M
 * (prefill) it is bound by multiply-adds, so a column block of W is decoded into a per-thread fp32
 * tile and handed to the dense GEMM (awq_sgemm_f32, OpenBLAS when built with it): the decode costs
 * O(K*N) against O(M*K*N) for the product.
 *
 * Layout (REFERENCE.md section 3): qweight[K, W] with W = N/8; nibble i of word [k, j] is column
 * 8j + P[i], P = {0,2,4,6,1,3,5,7}; qzeros[G, W] the same; scales[G, N] fp16; G = K/g.
 *
 * GEMV scheme (AVX-512). A tile is 16 words of one k row = 128 columns. Eight accumulators are
 * indexed by nibble i; lane j of accumulator i is column 8(j0+j) + P[i], so nibbles are used where
 * they sit and no shuffle of weights is needed. Per group:
 *   acc_i += x[k] * q_i(k)                 (q as float: shift + vpermps over a 0..15 table)
 *   out_i += s_i * (acc_i - z_i * sum_x)   at the group end (zero point via the group sum of x)
 * Scales are permuted into accumulator order once per group and tile; the result is written back
 * in natural column order at the end of K. Several rows of x share each decoded nibble.
 *
 * Index letters: m row of x, k input feature, n output column, j word (8 columns), i nibble,
 * gi group, r row within a pass.
 */
#include "w4a16.h"
#include "ops.h"

#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define AWQ_X86_KERNELS 1
#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c,fma")))
#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Column of nibble i within its word (AutoAWQ order), and its inverse (nibble of column c). */
static const int AWQ_P[8] = {0, 2, 4, 6, 1, 3, 5, 7};
static const int AWQ_R[8] = {0, 4, 1, 5, 2, 6, 3, 7};

/* Rows of x at or below which the GEMV kernels run; above it the tile + GEMM path. Measured with
 * bench/w4a16.py on the 2-core AVX-512 box: the GEMV at 3 rows a pass wins up to about here. */
#define W4A16_GEMV_MAX_M 8
#define F16_GEMV_MAX_M 8
/* Below this many weights a call runs on one thread: the fork/join costs more than it saves. */
#define SMALL_WORK (1 << 17)

static int nthreads_for(int64_t work) {
    if (work < SMALL_WORK) return 1;
    return awq_num_threads();
}

static int omp_tid(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
static int omp_nth(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* ================================================================ validation */

static int check_w4a16(const char *who, const float *x, const uint32_t *qweight,
                       const uint32_t *qzeros, const uint16_t *scales, float *y, int64_t M,
                       int64_t K, int64_t N, int64_t g, awq_err *err) {
    if (M < 0 || K <= 0 || N <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: bad shape M=%lld K=%lld N=%lld", who,
                           (long long)M, (long long)K, (long long)N);
    if (N % 8)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "%s: N=%lld is not a multiple of 8 (8 columns per packed word)", who,
                           (long long)N);
    if (g <= 0 || K % g)
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: group size %lld does not divide K=%lld", who,
                           (long long)g, (long long)K);
    if (M > 0 && (!x || !qweight || !qzeros || !scales || !y))
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: null pointer argument", who);
    return AWQ_OK;
}

/* xsum[m, gi] = sum of x[m, k] over group gi: the zero point enters as z * sum_x. */
static void group_sums(const float *x, float *xsum, int64_t M, int64_t K, int64_t g) {
    int64_t G = K / g;
    for (int64_t m = 0; m < M; m++)
        for (int64_t gi = 0; gi < G; gi++) {
            const float *xr = x + m * K + gi * g;
            float s = 0.0f;
            for (int64_t k = 0; k < g; k++) s += xr[k];
            xsum[m * G + gi] = s;
        }
}

/* ================================================================ reference */

int awq_w4a16_matmul_ref(const float *x, const uint32_t *qweight, const uint32_t *qzeros,
                         const uint16_t *scales, const float *bias, float *y, int64_t M, int64_t K,
                         int64_t N, int64_t g, awq_err *err) {
    int st = check_w4a16("w4a16_matmul_ref", x, qweight, qzeros, scales, y, M, K, N, g, err);
    if (st || M == 0) return st;
    const int64_t W = N / 8;
    double *acc = malloc((size_t)N * sizeof(double));
    if (!acc) return awq_set_err(err, AWQ_ERR_NOMEM, "w4a16_matmul_ref: out of memory");
    for (int64_t m = 0; m < M; m++) {
        for (int64_t n = 0; n < N; n++) acc[n] = 0.0;
        for (int64_t k = 0; k < K; k++) {
            const double xv = x[m * K + k];
            const int64_t gi = k / g;
            for (int64_t j = 0; j < W; j++) {
                const uint32_t w = qweight[k * W + j], zw = qzeros[gi * W + j];
                for (int i = 0; i < 8; i++) {
                    const int64_t n = 8 * j + AWQ_P[i];
                    const int q = (int)((w >> (4 * i)) & 15u), z = (int)((zw >> (4 * i)) & 15u);
                    acc[n] += xv * (double)(q - z) * (double)awq_fp16_to_fp32(scales[gi * N + n]);
                }
            }
        }
        for (int64_t n = 0; n < N; n++)
            y[m * N + n] = (float)(acc[n] + (bias ? (double)bias[n] : 0.0));
    }
    free(acc);
    return AWQ_OK;
}

/* ================================================================ W4A16 GEMV: generic C */

/* One pass over words [j0, j0 + nw) (nw <= 16) for R rows of x. Accumulators in nibble order:
 * acc[r][i * 16 + jj] is column 8(j0 + jj) + P[i], the same order as the SIMD kernels. */
static void w4_gemv_tile_generic(int R, const float *x, const float *xsum, const uint32_t *qw,
                                 const uint32_t *qz, const uint16_t *sc, const float *bias,
                                 float *y, int64_t K, int64_t N, int64_t g, int64_t j0, int nw) {
    const int64_t W = N / 8, G = K / g;
    float out[3][128], acc[3][128], zf[128], sf[128];
    memset(out, 0, sizeof out);
    for (int64_t gi = 0; gi < G; gi++) {
        memset(acc, 0, sizeof acc);
        for (int64_t k = gi * g; k < (gi + 1) * g; k++) {
            const uint32_t *q = qw + k * W + j0;
            for (int r = 0; r < R; r++) {
                const float xv = x[r * K + k];
                for (int jj = 0; jj < nw; jj++) {
                    const uint32_t w = q[jj];
                    for (int i = 0; i < 8; i++)
                        acc[r][i * 16 + jj] += xv * (float)((w >> (4 * i)) & 15u);
                }
            }
        }
        for (int jj = 0; jj < nw; jj++)
            for (int i = 0; i < 8; i++) {
                zf[i * 16 + jj] = (float)((qz[gi * W + j0 + jj] >> (4 * i)) & 15u);
                sf[i * 16 + jj] = awq_fp16_to_fp32(sc[gi * N + 8 * (j0 + jj) + AWQ_P[i]]);
            }
        for (int r = 0; r < R; r++) {
            const float sx = xsum[r * G + gi];
            for (int i = 0; i < 8; i++)
                for (int jj = 0; jj < nw; jj++) {
                    const int t = i * 16 + jj;
                    out[r][t] += sf[t] * (acc[r][t] - zf[t] * sx);
                }
        }
    }
    for (int r = 0; r < R; r++)
        for (int i = 0; i < 8; i++)
            for (int jj = 0; jj < nw; jj++) {
                const int64_t n = 8 * (j0 + jj) + AWQ_P[i];
                y[r * N + n] = out[r][i * 16 + jj] + (bias ? bias[n] : 0.0f);
            }
}

/* ================================================================ W4A16 GEMV: AVX2 */
#ifdef AWQ_X86_KERNELS

/* One pass over words [j0, j0 + nw) (nw <= 8: 64 columns) for R rows; shift, mask, convert. */
TARGET_AVX2 static ALWAYS_INLINE void
w4_gemv_tile_avx2_r(const int R, const float *x, const float *xsum, const uint32_t *qw,
                    const uint32_t *qz, const uint16_t *sc, const float *bias, float *y, int64_t K,
                    int64_t N, int64_t g, int64_t j0, int nw) {
    const int64_t W = N / 8, G = K / g;
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i wmask = _mm256_cmpgt_epi32(_mm256_set1_epi32(nw), lanes);
    const __m256i m15 = _mm256_set1_epi32(15);
    float out[3][8][8] __attribute__((aligned(32)));
    memset(out, 0, sizeof out);
    for (int64_t gi = 0; gi < G; gi++) {
        __m256 acc[3][8];
        for (int r = 0; r < R; r++)
            for (int i = 0; i < 8; i++) acc[r][i] = _mm256_setzero_ps();
        const uint32_t *q = qw + gi * g * W + j0;
        const float *xk = x + gi * g;
        for (int64_t kk = 0; kk < g; kk++, q += W) {
            const __m256i w = _mm256_maskload_epi32((const int *)q, wmask);
            __m256 xb[3];
            for (int r = 0; r < R; r++) xb[r] = _mm256_broadcast_ss(xk + r * K + kk);
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                const __m256 v =
                    _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(w, 4 * i), m15));
                for (int r = 0; r < R; r++) acc[r][i] = _mm256_fmadd_ps(xb[r], v, acc[r][i]);
            }
        }
        /* scales into accumulator order: s_acc[i][jj] = s[8(j0 + jj) + P[i]] */
        uint16_t sperm[8][8] __attribute__((aligned(32)));
        const uint16_t *s = sc + gi * N + 8 * j0;
        for (int i = 0; i < 8; i++)
            for (int jj = 0; jj < 8; jj++) sperm[i][jj] = jj < nw ? s[8 * jj + AWQ_P[i]] : 0;
        const __m256i wz = _mm256_maskload_epi32((const int *)(qz + gi * W + j0), wmask);
        for (int i = 0; i < 8; i++) {
            const __m256 zf =
                _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(wz, 4 * i), m15));
            const __m256 sf = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)sperm[i]));
            for (int r = 0; r < R; r++) {
                const __m256 sx = _mm256_set1_ps(xsum[r * G + gi]);
                const __m256 d = _mm256_fnmadd_ps(zf, sx, acc[r][i]);
                _mm256_store_ps(out[r][i],
                                _mm256_fmadd_ps(sf, d, _mm256_load_ps(out[r][i])));
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int i = 0; i < 8; i++)
            for (int jj = 0; jj < nw; jj++) {
                const int64_t n = 8 * (j0 + jj) + AWQ_P[i];
                y[r * N + n] = out[r][i][jj] + (bias ? bias[n] : 0.0f);
            }
}

TARGET_AVX2 static void w4_gemv_tile_avx2(int R, const float *x, const float *xsum,
                                          const uint32_t *qw, const uint32_t *qz,
                                          const uint16_t *sc, const float *bias, float *y,
                                          int64_t K, int64_t N, int64_t g, int64_t j0, int nw) {
    switch (R) {
    case 1: w4_gemv_tile_avx2_r(1, x, xsum, qw, qz, sc, bias, y, K, N, g, j0, nw); break;
    case 2: w4_gemv_tile_avx2_r(2, x, xsum, qw, qz, sc, bias, y, K, N, g, j0, nw); break;
    default: w4_gemv_tile_avx2_r(3, x, xsum, qw, qz, sc, bias, y, K, N, g, j0, nw); break;
    }
}

/* ================================================================ W4A16 GEMV: AVX-512 */

/* How far ahead (in k rows) the GEMV prefetches its tile: the rows of a tile are W words apart,
 * a stride the hardware streamers follow poorly, so the next rows are asked for explicitly. */
#define W4_PREFETCH_ROWS 12

/* One pass over words [j0, j0 + nw) (nw <= 16: 128 columns) for R rows of x. */
TARGET_AVX512 static ALWAYS_INLINE void
w4_gemv_tile_avx512_r(const int R, const float *x, const float *xsum, const uint32_t *qw,
                      const uint32_t *qz, const uint16_t *sc, const float *bias, float *y,
                      int64_t K, int64_t N, int64_t g, int64_t j0, int nw) {
    const int64_t W = N / 8, G = K / g;
    const __mmask16 mw = (__mmask16)((1u << nw) - 1u);
    /* vpermps reads only the low 4 bits of each index lane: a 16-entry table turns the nibble in
     * bits 0..3 into its float value, whatever the higher nibbles hold (no mask, no convert). */
    const __m512 tbl = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    /* Scale permutation: sp[p] lanes 0..15 hold nibble 2p, lanes 16..31 nibble 2p + 1, lane jj
     * being word j0 + jj. Source half index 8 jj + P[i]; taken modulo 64 from (s0, s1) for jj < 8
     * and from (s2, s3) for jj >= 8, then blended, so one index vector serves both halves. */
    __m512i sidx[4];
    for (int p = 0; p < 4; p++) {
        uint16_t ix[32];
        for (int l = 0; l < 32; l++) ix[l] = (uint16_t)(8 * (l & 7) + AWQ_P[2 * p + (l >> 4)]);
        sidx[p] = _mm512_loadu_si512(ix);
    }
    /* halves of scales present in each 32-half chunk of the tile (8 per word) */
    __mmask32 smask[4];
    for (int c = 0; c < 4; c++) {
        int nh = 8 * nw - 32 * c;
        nh = nh < 0 ? 0 : nh > 32 ? 32 : nh;
        smask[c] = nh == 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << nh) - 1u);
    }
    __m512 out[3][8];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < 8; i++) out[r][i] = _mm512_setzero_ps();

    for (int64_t gi = 0; gi < G; gi++) {
        __m512 acc[3][8];
        for (int r = 0; r < R; r++)
            for (int i = 0; i < 8; i++) acc[r][i] = _mm512_setzero_ps();
        const uint32_t *q = qw + gi * g * W + j0;
        const float *xk = x + gi * g;
        for (int64_t kk = 0; kk < g; kk++, q += W) {
            _mm_prefetch((const char *)(q + W4_PREFETCH_ROWS * W), _MM_HINT_T0);
            const __m512i w = _mm512_maskz_loadu_epi32(mw, q);
            __m512 xb[3];
            for (int r = 0; r < R; r++) xb[r] = _mm512_set1_ps(xk[r * K + kk]);
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                const __m512 v = _mm512_permutexvar_ps(i ? _mm512_srli_epi32(w, 4 * i) : w, tbl);
                for (int r = 0; r < R; r++) acc[r][i] = _mm512_fmadd_ps(xb[r], v, acc[r][i]);
            }
        }
        /* group end: out_i += s_i * (acc_i - z_i * sum_x) */
        const uint16_t *s = sc + gi * N + 8 * j0;
        const __m512i s0 = _mm512_maskz_loadu_epi16(smask[0], s);
        const __m512i s1 = _mm512_maskz_loadu_epi16(smask[1], s + 32);
        const __m512i s2 = _mm512_maskz_loadu_epi16(smask[2], s + 64);
        const __m512i s3 = _mm512_maskz_loadu_epi16(smask[3], s + 96);
        const __m512i wz = _mm512_maskz_loadu_epi32(mw, qz + gi * W + j0);
        __m512 sx[3];
        for (int r = 0; r < R; r++) sx[r] = _mm512_set1_ps(xsum[r * G + gi]);
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            const __m512i lo = _mm512_permutex2var_epi16(s0, sidx[p], s1);
            const __m512i hi = _mm512_permutex2var_epi16(s2, sidx[p], s3);
            const __m512i sp = _mm512_mask_blend_epi16((__mmask32)0xFF00FF00u, lo, hi);
            for (int h = 0; h < 2; h++) {
                const int i = 2 * p + h;
                const __m512 sf = _mm512_cvtph_ps(h ? _mm512_extracti64x4_epi64(sp, 1)
                                                    : _mm512_castsi512_si256(sp));
                const __m512 zf =
                    _mm512_permutexvar_ps(i ? _mm512_srli_epi32(wz, 4 * i) : wz, tbl);
                for (int r = 0; r < R; r++)
                    out[r][i] =
                        _mm512_fmadd_ps(sf, _mm512_fnmadd_ps(zf, sx[r], acc[r][i]), out[r][i]);
            }
        }
    }
    float tmp[16] __attribute__((aligned(64)));
    for (int r = 0; r < R; r++)
        for (int i = 0; i < 8; i++) {
            _mm512_store_ps(tmp, out[r][i]);
            for (int jj = 0; jj < nw; jj++) {
                const int64_t n = 8 * (j0 + jj) + AWQ_P[i];
                y[r * N + n] = tmp[jj] + (bias ? bias[n] : 0.0f);
            }
        }
}

TARGET_AVX512 static void w4_gemv_tile_avx512(int R, const float *x, const float *xsum,
                                              const uint32_t *qw, const uint32_t *qz,
                                              const uint16_t *sc, const float *bias, float *y,
                                              int64_t K, int64_t N, int64_t g, int64_t j0,
                                              int nw) {
    switch (R) {
    case 1: w4_gemv_tile_avx512_r(1, x, xsum, qw, qz, sc, bias, y, K, N, g, j0, nw); break;
    case 2: w4_gemv_tile_avx512_r(2, x, xsum, qw, qz, sc, bias, y, K, N, g, j0, nw); break;
    default: w4_gemv_tile_avx512_r(3, x, xsum, qw, qz, sc, bias, y, K, N, g, j0, nw); break;
    }
}
#endif /* AWQ_X86_KERNELS */

typedef void (*w4_gemv_tile_fn)(int R, const float *x, const float *xsum, const uint32_t *qw,
                                const uint32_t *qz, const uint16_t *sc, const float *bias, float *y,
                                int64_t K, int64_t N, int64_t g, int64_t j0, int nw);

/* Words per tile of each GEMV kernel (one vector of words). */
static int w4_tile_words(awq_isa isa) {
    return isa == AWQ_ISA_AVX512 ? 16 : isa == AWQ_ISA_AVX2 ? 8 : 16;
}

static w4_gemv_tile_fn w4_gemv_kernel(awq_isa isa) {
#ifdef AWQ_X86_KERNELS
    if (isa == AWQ_ISA_AVX512) return w4_gemv_tile_avx512;
    if (isa == AWQ_ISA_AVX2) return w4_gemv_tile_avx2;
#endif
    (void)isa;
    return w4_gemv_tile_generic;
}

/* Rows of x per pass (the kernels hold 8 accumulators a row: 3 rows fill the 32 zmm registers). */
#define W4_GEMV_ROWS 3

static int w4_gemv(awq_isa isa, const float *x, const uint32_t *qw, const uint32_t *qz,
                   const uint16_t *sc, const float *bias, float *y, int64_t M, int64_t K,
                   int64_t N, int64_t g, awq_err *err) {
    const int64_t W = N / 8, G = K / g;
    float *xsum = malloc((size_t)(M * G) * sizeof(float));
    if (!xsum) return awq_set_err(err, AWQ_ERR_NOMEM, "w4a16_matmul: out of memory");
    group_sums(x, xsum, M, K, g);
    const w4_gemv_tile_fn tile = w4_gemv_kernel(isa);
    const int tw = w4_tile_words(isa);
    /* Each thread takes one contiguous run of words (balanced to the word), cut into tiles. */
#pragma omp parallel num_threads(nthreads_for(K * N))
    {
        const int t = omp_tid(), T = omp_nth();
        const int64_t wa = W * t / T, wb = W * (t + 1) / T;
        for (int64_t j0 = wa; j0 < wb; j0 += tw) {
            const int nw = (int)(wb - j0 < tw ? wb - j0 : tw);
            for (int64_t m0 = 0; m0 < M; m0 += W4_GEMV_ROWS) {
                const int R = (int)(M - m0 < W4_GEMV_ROWS ? M - m0 : W4_GEMV_ROWS);
                tile(R, x + m0 * K, xsum + m0 * G, qw, qz, sc, bias, y + m0 * N, K, N, g, j0, nw);
            }
        }
    }
    free(xsum);
    return AWQ_OK;
}

/* ================================================================ W4A16 large M: decode + GEMM */

/* Decodes columns [8 j0, 8 (j0 + nwb)) of W, rows [0, K), into t[K, 8 nwb] (natural column
 * order, scale and zero applied: t = q * s - z * s). zs, sf: scratch of 8 nwb floats. */
static void w4_decode_tile_generic(const uint32_t *qw, const uint32_t *qz, const uint16_t *sc,
                                   int64_t K, int64_t N, int64_t g, int64_t j0, int64_t nwb,
                                   float *t, float *sf, float *zs) {
    const int64_t W = N / 8, G = K / g, nb = 8 * nwb;
    for (int64_t gi = 0; gi < G; gi++) {
        for (int64_t c = 0; c < nb; c++) {
            const uint32_t zw = qz[gi * W + j0 + c / 8];
            sf[c] = awq_fp16_to_fp32(sc[gi * N + 8 * j0 + c]);
            zs[c] = (float)((zw >> (4 * AWQ_R[c % 8])) & 15u) * sf[c];
        }
        for (int64_t k = gi * g; k < (gi + 1) * g; k++) {
            const uint32_t *q = qw + k * W + j0;
            float *tr = t + k * nb;
            for (int64_t jj = 0; jj < nwb; jj++) {
                const uint32_t w = q[jj];
                for (int c = 0; c < 8; c++)
                    tr[8 * jj + c] =
                        (float)((w >> (4 * AWQ_R[c])) & 15u) * sf[8 * jj + c] - zs[8 * jj + c];
            }
        }
    }
}

#ifdef AWQ_X86_KERNELS
TARGET_AVX512 static void w4_decode_tile_avx512(const uint32_t *qw, const uint32_t *qz,
                                                const uint16_t *sc, int64_t K, int64_t N,
                                                int64_t g, int64_t j0, int64_t nwb, float *t,
                                                float *sf, float *zs) {
    const int64_t W = N / 8, G = K / g, nb = 8 * nwb;
    /* 16 output columns come from 2 words: word p of the pair is replicated over 8 lanes, and
     * lane c shifts right by 4 R[c] to bring column c's nibble to bits 0..3. */
    const __m512i shifts = _mm512_setr_epi32(0, 16, 4, 20, 8, 24, 12, 28, 0, 16, 4, 20, 8, 24, 12, 28);
    const __m512i m15 = _mm512_set1_epi32(15);
    __m512i pidx[8];
    for (int p = 0; p < 8; p++)
        pidx[p] = _mm512_setr_epi32(2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p,
                                    2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1,
                                    2 * p + 1, 2 * p + 1, 2 * p + 1);
    for (int64_t gi = 0; gi < G; gi++) {
        /* fp32 scales and z * s of this group, natural order */
        for (int64_t c0 = 0; c0 < nb; c0 += 16) {
            const int nc = (int)(nb - c0 < 16 ? nb - c0 : 16);
            const __mmask16 mc = (__mmask16)((1u << nc) - 1u);
            const __m512 s =
                _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mc, sc + gi * N + 8 * j0 + c0));
            const __m512i zw = _mm512_maskz_loadu_epi32((__mmask16)(nc == 16 ? 3 : 1),
                                                        qz + gi * W + j0 + c0 / 8);
            const __m512 z = _mm512_cvtepi32_ps(
                _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(pidx[0], zw), shifts), m15));
            _mm512_mask_storeu_ps(sf + c0, mc, s);
            _mm512_mask_storeu_ps(zs + c0, mc, _mm512_mul_ps(z, s));
        }
        for (int64_t k = gi * g; k < (gi + 1) * g; k++) {
            const uint32_t *q = qw + k * W + j0;
            float *tr = t + k * nb;
            for (int64_t jj = 0; jj < nwb; jj += 16) {
                const int nw = (int)(nwb - jj < 16 ? nwb - jj : 16);
                const __m512i w = _mm512_maskz_loadu_epi32((__mmask16)((1u << nw) - 1u), q + jj);
                for (int p = 0; 2 * p < nw; p++) {
                    const int64_t c = 8 * jj + 16 * p;
                    const __m512 qf = _mm512_cvtepi32_ps(_mm512_and_si512(
                        _mm512_srlv_epi32(_mm512_permutexvar_epi32(pidx[p], w), shifts), m15));
                    const __m512 v =
                        _mm512_fmsub_ps(qf, _mm512_loadu_ps(sf + c), _mm512_loadu_ps(zs + c));
                    if (2 * p + 1 < nw)
                        _mm512_storeu_ps(tr + c, v);
                    else
                        _mm512_mask_storeu_ps(tr + c, (__mmask16)0xFF, v);
                }
            }
        }
    }
}
#endif

/* Columns per decoded tile. Wide tiles keep the GEMM's per-call packing of x small next to its
 * multiply-adds (packing x once costs about 16/nb of the product); the tile is K * nb floats. */
#define W4_TILE_COLS 256

static int w4_gemm(awq_isa isa, const float *x, const uint32_t *qw, const uint32_t *qz,
                   const uint16_t *sc, const float *bias, float *y, int64_t M, int64_t K,
                   int64_t N, int64_t g, awq_err *err) {
    const int64_t W = N / 8, tw = W4_TILE_COLS / 8;
    const int64_t ntiles = (W + tw - 1) / tw;
    int status = AWQ_OK;
    awq_err terr = {{0}};
#pragma omp parallel
    {
        float *t = aligned_alloc(64, (size_t)(K * 8 * tw + 16) * sizeof(float));
        float *buf = aligned_alloc(64, (size_t)(2 * 8 * tw + 32) * sizeof(float));
        int ok = t && buf;
        if (!ok) {
#pragma omp critical(awq_w4_gemm_err)
            status = awq_set_err(&terr, AWQ_ERR_NOMEM, "w4a16_matmul: out of memory for a tile");
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < ntiles; b++) {
            if (!ok) continue;
            const int64_t j0 = b * tw, nwb = W - j0 < tw ? W - j0 : tw, nb = 8 * nwb;
#ifdef AWQ_X86_KERNELS
            if (isa == AWQ_ISA_AVX512)
                w4_decode_tile_avx512(qw, qz, sc, K, N, g, j0, nwb, t, buf, buf + 8 * tw + 16);
            else
#endif
                w4_decode_tile_generic(qw, qz, sc, K, N, g, j0, nwb, t, buf, buf + 8 * tw + 16);
            awq_err e2 = {{0}};
            int st = awq_sgemm_f32(0, x, K, t, nb, y + 8 * j0, N, M, nb, K, &e2);
            if (st) {
#pragma omp critical(awq_w4_gemm_err)
                {
                    status = st;
                    terr = e2;
                }
            }
            if (bias)
                for (int64_t m = 0; m < M; m++)
                    for (int64_t c = 0; c < nb; c++) y[m * N + 8 * j0 + c] += bias[8 * j0 + c];
        }
        free(t);
        free(buf);
    }
    if (status) {
        *err = terr;
        return status;
    }
    return AWQ_OK;
}

int awq_w4a16_matmul_isa(const float *x, const uint32_t *qweight, const uint32_t *qzeros,
                         const uint16_t *scales, const float *bias, float *y, int64_t M, int64_t K,
                         int64_t N, int64_t g, awq_isa isa, awq_err *err) {
    int st = check_w4a16("w4a16_matmul", x, qweight, qzeros, scales, y, M, K, N, g, err);
    if (st || M == 0) return st;
    if (isa > awq_cpu_isa())
        return awq_set_err(err, AWQ_ERR_VALUE, "w4a16_matmul: this CPU does not support %s",
                           awq_isa_name(isa));
    if (M <= W4A16_GEMV_MAX_M) return w4_gemv(isa, x, qweight, qzeros, scales, bias, y, M, K, N, g, err);
    return w4_gemm(isa, x, qweight, qzeros, scales, bias, y, M, K, N, g, err);
}

int awq_w4a16_matmul(const float *x, const uint32_t *qweight, const uint32_t *qzeros,
                     const uint16_t *scales, const float *bias, float *y, int64_t M, int64_t K,
                     int64_t N, int64_t g, awq_err *err) {
    return awq_w4a16_matmul_isa(x, qweight, qzeros, scales, bias, y, M, K, N, g, awq_cpu_isa(),
                                err);
}

/* ================================================================ fp16-weight matmul */

/* Rows of w per GEMV block and rows of x per pass. */
#define F16_NR 4
#define F16_MR 4

/* Generic: each row of w converted once to fp32 (scratch wf[K]), dotted with every row of x. */
static void f16_gemv_rows_generic(const float *x, const uint16_t *w, const float *bias, float *y,
                                  int64_t M, int64_t K, int64_t N, int64_t n0, int64_t n1,
                                  float *wf) {
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t k = 0; k < K; k++) wf[k] = awq_fp16_to_fp32(w[n * K + k]);
        for (int64_t m = 0; m < M; m++) {
            const float *xr = x + m * K;
            float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            int64_t k = 0;
            for (; k + 4 <= K; k += 4) {
                a0 += xr[k] * wf[k];
                a1 += xr[k + 1] * wf[k + 1];
                a2 += xr[k + 2] * wf[k + 2];
                a3 += xr[k + 3] * wf[k + 3];
            }
            for (; k < K; k++) a0 += xr[k] * wf[k];
            y[m * N + n] = (a0 + a1) + (a2 + a3) + (bias ? bias[n] : 0.0f);
        }
    }
}

#ifdef AWQ_X86_KERNELS
/* NR rows of w [n, n + NR) against R rows of x: NR * R vector accumulators over K. */
TARGET_AVX512 static ALWAYS_INLINE void f16_block_avx512(const int R, const int NR, const float *x,
                                                         const uint16_t *w, const float *bias,
                                                         float *y, int64_t K, int64_t N,
                                                         int64_t n) {
    __m512 acc[F16_MR][F16_NR];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NR; c++) acc[r][c] = _mm512_setzero_ps();
    const uint16_t *wr = w + n * K;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 wv[F16_NR], xv[F16_MR];
        for (int c = 0; c < NR; c++)
            wv[c] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wr + c * K + k)));
        for (int r = 0; r < R; r++) xv[r] = _mm512_loadu_ps(x + r * K + k);
        for (int r = 0; r < R; r++)
            for (int c = 0; c < NR; c++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv[c], acc[r][c]);
    }
    if (k < K) {
        const __mmask16 mk = (__mmask16)((1u << (K - k)) - 1u);
        __m512 wv[F16_NR], xv[F16_MR];
        for (int c = 0; c < NR; c++)
            wv[c] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, wr + c * K + k));
        for (int r = 0; r < R; r++) xv[r] = _mm512_maskz_loadu_ps(mk, x + r * K + k);
        for (int r = 0; r < R; r++)
            for (int c = 0; c < NR; c++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv[c], acc[r][c]);
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NR; c++)
            y[r * N + n + c] = _mm512_reduce_add_ps(acc[r][c]) + (bias ? bias[n + c] : 0.0f);
}

TARGET_AVX512 static void f16_gemv_rows_avx512(const float *x, const uint16_t *w,
                                               const float *bias, float *y, int64_t M, int64_t K,
                                               int64_t N, int64_t n0, int64_t n1) {
    int64_t n = n0;
    for (; n + F16_NR <= n1; n += F16_NR)
        for (int64_t m0 = 0; m0 < M; m0 += F16_MR) {
            const float *xr = x + m0 * K;
            float *yr = y + m0 * N;
            switch (M - m0 < F16_MR ? M - m0 : F16_MR) {
            case 1: f16_block_avx512(1, F16_NR, xr, w, bias, yr, K, N, n); break;
            case 2: f16_block_avx512(2, F16_NR, xr, w, bias, yr, K, N, n); break;
            case 3: f16_block_avx512(3, F16_NR, xr, w, bias, yr, K, N, n); break;
            default: f16_block_avx512(4, F16_NR, xr, w, bias, yr, K, N, n); break;
            }
        }
    for (; n < n1; n++)
        for (int64_t m = 0; m < M; m++) f16_block_avx512(1, 1, x + m * K, w, bias, y + m * N, K, N, n);
}

TARGET_AVX2 static ALWAYS_INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

TARGET_AVX2 static ALWAYS_INLINE void f16_block_avx2(const int R, const int NR, const float *x,
                                                     const uint16_t *w, const float *bias,
                                                     float *y, int64_t K, int64_t N, int64_t n) {
    __m256 acc[F16_MR][F16_NR];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NR; c++) acc[r][c] = _mm256_setzero_ps();
    const uint16_t *wr = w + n * K;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[F16_NR], xv[F16_MR];
        for (int c = 0; c < NR; c++)
            wv[c] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wr + c * K + k)));
        for (int r = 0; r < R; r++) xv[r] = _mm256_loadu_ps(x + r * K + k);
        for (int r = 0; r < R; r++)
            for (int c = 0; c < NR; c++) acc[r][c] = _mm256_fmadd_ps(xv[r], wv[c], acc[r][c]);
    }
    float tail[F16_MR][F16_NR];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NR; c++) {
            float s = 0.0f;
            for (int64_t kk = k; kk < K; kk++)
                s += x[r * K + kk] * _cvtsh_ss(wr[c * K + kk]);
            tail[r][c] = s;
        }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NR; c++)
            y[r * N + n + c] = hsum256(acc[r][c]) + tail[r][c] + (bias ? bias[n + c] : 0.0f);
}

TARGET_AVX2 static void f16_gemv_rows_avx2(const float *x, const uint16_t *w, const float *bias,
                                           float *y, int64_t M, int64_t K, int64_t N, int64_t n0,
                                           int64_t n1) {
    int64_t n = n0;
    for (; n + F16_NR <= n1; n += F16_NR)
        for (int64_t m0 = 0; m0 < M; m0 += F16_MR) {
            const float *xr = x + m0 * K;
            float *yr = y + m0 * N;
            switch (M - m0 < F16_MR ? M - m0 : F16_MR) {
            case 1: f16_block_avx2(1, F16_NR, xr, w, bias, yr, K, N, n); break;
            case 2: f16_block_avx2(2, F16_NR, xr, w, bias, yr, K, N, n); break;
            case 3: f16_block_avx2(3, F16_NR, xr, w, bias, yr, K, N, n); break;
            default: f16_block_avx2(4, F16_NR, xr, w, bias, yr, K, N, n); break;
            }
        }
    for (; n < n1; n++)
        for (int64_t m = 0; m < M; m++) f16_block_avx2(1, 1, x + m * K, w, bias, y + m * N, K, N, n);
}

/* t[r, k] = w[r, k] as fp32 for nr rows. */
TARGET_AVX512 static void f16_to_f32_avx512(const uint16_t *w, float *t, int64_t n) {
    int64_t k = 0;
    for (; k + 16 <= n; k += 16)
        _mm512_storeu_ps(t + k, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + k))));
    if (k < n) {
        const __mmask16 mk = (__mmask16)((1u << (n - k)) - 1u);
        _mm512_mask_storeu_ps(t + k, mk, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, w + k)));
    }
}

TARGET_AVX2 static void f16_to_f32_avx2(const uint16_t *w, float *t, int64_t n) {
    int64_t k = 0;
    for (; k + 8 <= n; k += 8)
        _mm256_storeu_ps(t + k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k))));
    for (; k < n; k++) t[k] = _cvtsh_ss(w[k]);
}
#endif /* AWQ_X86_KERNELS */

static void f16_to_f32(awq_isa isa, const uint16_t *w, float *t, int64_t n) {
#ifdef AWQ_X86_KERNELS
    if (isa == AWQ_ISA_AVX512) {
        f16_to_f32_avx512(w, t, n);
        return;
    }
    if (isa == AWQ_ISA_AVX2) {
        f16_to_f32_avx2(w, t, n);
        return;
    }
#endif
    (void)isa;
    for (int64_t k = 0; k < n; k++) t[k] = awq_fp16_to_fp32(w[k]);
}

/* Rows of w per converted tile in the large-M path. */
#define F16_TILE_ROWS 256

int awq_f16_matmul_isa(const float *x, const uint16_t *w, const float *bias, float *y, int64_t M,
                       int64_t K, int64_t N, awq_isa isa, awq_err *err) {
    if (M < 0 || K <= 0 || N <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "f16_matmul: bad shape M=%lld K=%lld N=%lld",
                           (long long)M, (long long)K, (long long)N);
    if (M == 0) return AWQ_OK;
    if (!x || !w || !y) return awq_set_err(err, AWQ_ERR_VALUE, "f16_matmul: null pointer argument");
    if (isa > awq_cpu_isa())
        return awq_set_err(err, AWQ_ERR_VALUE, "f16_matmul: this CPU does not support %s",
                           awq_isa_name(isa));
    int status = AWQ_OK;
    awq_err terr = {{0}};
    if (M <= F16_GEMV_MAX_M) {
        /* Threads take contiguous row ranges of w, rounded to the row block. */
        const int64_t nblk = (N + F16_NR - 1) / F16_NR;
#pragma omp parallel num_threads(nthreads_for(K * N))
        {
            const int t = omp_tid(), T = omp_nth();
            const int64_t n0 = nblk * t / T * F16_NR;
            int64_t n1 = nblk * (t + 1) / T * F16_NR;
            if (n1 > N) n1 = N;
#ifdef AWQ_X86_KERNELS
            if (isa == AWQ_ISA_AVX512)
                f16_gemv_rows_avx512(x, w, bias, y, M, K, N, n0, n1);
            else if (isa == AWQ_ISA_AVX2)
                f16_gemv_rows_avx2(x, w, bias, y, M, K, N, n0, n1);
            else
#endif
            {
                float *wf = malloc((size_t)K * sizeof(float));
                if (wf)
                    f16_gemv_rows_generic(x, w, bias, y, M, K, N, n0, n1, wf);
                else {
#pragma omp critical(awq_f16_err)
                    status = awq_set_err(&terr, AWQ_ERR_NOMEM, "f16_matmul: out of memory");
                }
                free(wf);
            }
        }
    } else {
        const int64_t ntiles = (N + F16_TILE_ROWS - 1) / F16_TILE_ROWS;
#pragma omp parallel
        {
            float *t = aligned_alloc(64, (size_t)(F16_TILE_ROWS * K + 16) * sizeof(float));
            if (!t) {
#pragma omp critical(awq_f16_err)
                status = awq_set_err(&terr, AWQ_ERR_NOMEM, "f16_matmul: out of memory for a tile");
            }
#pragma omp for schedule(dynamic, 1)
            for (int64_t b = 0; b < ntiles; b++) {
                if (!t) continue;
                const int64_t n0 = b * F16_TILE_ROWS;
                const int64_t nb = N - n0 < F16_TILE_ROWS ? N - n0 : F16_TILE_ROWS;
                f16_to_f32(isa, w + n0 * K, t, nb * K);
                awq_err e2 = {{0}};
                int st = awq_sgemm_f32(1, x, K, t, K, y + n0, N, M, nb, K, &e2);
                if (st) {
#pragma omp critical(awq_f16_err)
                    {
                        status = st;
                        terr = e2;
                    }
                }
                if (bias)
                    for (int64_t m = 0; m < M; m++)
                        for (int64_t c = 0; c < nb; c++) y[m * N + n0 + c] += bias[n0 + c];
            }
            free(t);
        }
    }
    if (status) {
        *err = terr;
        return status;
    }
    return AWQ_OK;
}

int awq_f16_matmul(const float *x, const uint16_t *w, const float *bias, float *y, int64_t M,
                   int64_t K, int64_t N, awq_err *err) {
    return awq_f16_matmul_isa(x, w, bias, y, M, K, N, awq_cpu_isa(), err);
}
