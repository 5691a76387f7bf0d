/* w4a16.c: the W4A16 matmul on the AutoAWQ GEMM layout and the fp16-weight matmul (CPU).
 *
 * Why two regimes. At small M (decode) the product is bound by the bytes of W read, so the GEMV
 * kernels stream qweight once and decode nibbles in registers, never writing W out. At large M
 * (prefill) it is bound by multiply-adds, so panels of 48 columns of W are decoded (or converted
 * from fp16) into fp32 blocks of at most KC x 48 that stay in L2, and a register-blocked
 * micro-kernel runs every row of x over them: the decode costs O(K*N) against O(M*K*N) for the
 * product, and no full fp32 copy of W is ever made.
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
 * in natural column order at the end. Several rows of x (up to 3) share each decoded nibble.
 *
 * Index letters: m row of x, k input feature, n output column, j word (8 columns), i nibble,
 * gi group, r row within a pass.
 */
#include "w4a16.h"

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
/* Below this many weights a call runs on one thread: the fork/join costs more than it saves.
 * (Decode of a 576x192 layer from DRAM: 12.7 us on one thread, 9.5 us on two.) */
#define SMALL_WORK (1 << 14)

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

/* ================================================================ W4A16 GEMV (small M)
 *
 * Work split: thread t takes rows [K t / T, K (t + 1) / T) of qweight, all columns, so each thread
 * streams one contiguous stretch of memory and any N balances. Its rows are cut at group ends (and
 * into blocks of at most W4_BLOCK_BYTES of qweight) into segments; a segment is swept tile by tile
 * (a tile = one vector of words), every tile adding s * (acc - z * sum_x) into the thread's partial
 * output, kept in accumulator order. The partials of the threads are summed, un-permuted and the
 * bias added at the end. While a segment is swept, the thread's memory W4_PREFETCH_LEAD bytes
 * ahead is prefetched in address order, a line per tile row swept (as many lines as the sweep
 * consumes): the tile rows of a segment are W words apart, a stride the hardware streamers follow
 * poorly (5.7 GB/s without it against 17 with it on 4096x4096), while the memory ahead is one
 * contiguous stretch.
 *
 * Tile kernel contract (all ISAs): rows [k0, k1) of group gi, words [j0, j0 + nw), R rows of x
 * (row stride K) with xs[r] = sum of x[r, k0:k1]; adds into o[r * ldo + i * tw + jj] for nibble i
 * and word j0 + jj (column 8 (j0 + jj) + P[i]), tw the kernel's tile width in words.
 */

/* Bytes of qweight per segment (the block swept tile by tile, held in cache), and how far ahead
 * of the sweep the prefetch runs. Measured on 4096x4096 and 4096x11008 from DRAM: 128 KB segments
 * beat 512 KB (13-15 GB/s) and 32 KB (epilogue per segment too frequent). */
#define W4_BLOCK_BYTES (128 << 10)
#define W4_PREFETCH_LEAD (128 << 10)

typedef struct {
    const char *p, *end; /* next line to prefetch, end of this thread's rows */
} w4_prefetch;

#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define PREFETCH(p) ((void)(p))
#endif

typedef void (*w4_gemv_tile_fn)(int R, const float *x, int64_t K, const float *xs,
                                const uint32_t *qw, const uint32_t *qz, const uint16_t *sc,
                                int64_t N, int64_t gi, int64_t k0, int64_t k1, int64_t j0, int nw,
                                float *o, int64_t ldo, w4_prefetch *pf);

static void w4_gemv_tile_generic(int R, const float *x, int64_t K, const float *xs,
                                 const uint32_t *qw, const uint32_t *qz, const uint16_t *sc,
                                 int64_t N, int64_t gi, int64_t k0, int64_t k1, int64_t j0, int nw,
                                 float *o, int64_t ldo, w4_prefetch *pf) {
    (void)pf;
    const int64_t W = N / 8;
    float acc[3][128];
    memset(acc, 0, sizeof acc);
    for (int64_t k = k0; k < k1; k++) {
        const uint32_t *q = qw + k * W + j0;
        for (int r = 0; r < R; r++) {
            const float xv = x[r * K + k];
            for (int jj = 0; jj < nw; jj++) {
                const uint32_t w = q[jj];
                for (int i = 0; i < 8; i++) acc[r][i * 16 + jj] += xv * (float)((w >> (4 * i)) & 15u);
            }
        }
    }
    for (int jj = 0; jj < nw; jj++) {
        const uint32_t zw = qz[gi * W + j0 + jj];
        for (int i = 0; i < 8; i++) {
            const float zf = (float)((zw >> (4 * i)) & 15u);
            const float sf = awq_fp16_to_fp32(sc[gi * N + 8 * (j0 + jj) + AWQ_P[i]]);
            for (int r = 0; r < R; r++) o[r * ldo + i * 16 + jj] += sf * (acc[r][i * 16 + jj] - zf * xs[r]);
        }
    }
}

#ifdef AWQ_X86_KERNELS
/* AVX2: a tile is 8 words (64 columns); nibbles by shift, mask and convert. */
TARGET_AVX2 static ALWAYS_INLINE void
w4_gemv_tile_avx2_r(const int R, const float *x, int64_t K, const float *xs, const uint32_t *qw,
                    const uint32_t *qz, const uint16_t *sc, int64_t N, int64_t gi, int64_t k0,
                    int64_t k1, int64_t j0, int nw, float *o, int64_t ldo, w4_prefetch *pf) {
    const int64_t W = N / 8;
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i wmask = _mm256_cmpgt_epi32(_mm256_set1_epi32(nw), lanes);
    const __m256i m15 = _mm256_set1_epi32(15);
    __m256 acc[3][8];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < 8; i++) acc[r][i] = _mm256_setzero_ps();
    const uint32_t *q = qw + k0 * W + j0;
    for (int64_t k = k0; k < k1; k++, q += W) {
        if (pf && pf->p < pf->end) {
            _mm_prefetch(pf->p, _MM_HINT_T0);
            pf->p += 32;
        }
        const __m256i w = _mm256_maskload_epi32((const int *)q, wmask);
        __m256 xb[3];
        for (int r = 0; r < R; r++) xb[r] = _mm256_broadcast_ss(x + r * K + k);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            const __m256 v = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(w, 4 * i), m15));
            for (int r = 0; r < R; r++) acc[r][i] = _mm256_fmadd_ps(xb[r], v, acc[r][i]);
        }
    }
    /* scales into accumulator order: sperm[i][jj] = s[8 (j0 + jj) + P[i]] */
    uint16_t sperm[8][8] __attribute__((aligned(32)));
    const uint16_t *s = sc + gi * N + 8 * j0;
    for (int i = 0; i < 8; i++)
        for (int jj = 0; jj < 8; jj++) sperm[i][jj] = jj < nw ? s[8 * jj + AWQ_P[i]] : 0;
    const __m256i wz = _mm256_maskload_epi32((const int *)(qz + gi * W + j0), wmask);
    for (int i = 0; i < 8; i++) {
        const __m256 zf = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(wz, 4 * i), m15));
        const __m256 sf = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)sperm[i]));
        for (int r = 0; r < R; r++) {
            float *op = o + r * ldo + i * 8;
            const __m256 d = _mm256_fnmadd_ps(zf, _mm256_set1_ps(xs[r]), acc[r][i]);
            _mm256_storeu_ps(op, _mm256_fmadd_ps(sf, d, _mm256_loadu_ps(op)));
        }
    }
}

TARGET_AVX2 static void w4_gemv_tile_avx2(int R, const float *x, int64_t K, const float *xs,
                                          const uint32_t *qw, const uint32_t *qz,
                                          const uint16_t *sc, int64_t N, int64_t gi, int64_t k0,
                                          int64_t k1, int64_t j0, int nw, float *o, int64_t ldo,
                                          w4_prefetch *pf) {
    switch (R) {
    case 1: w4_gemv_tile_avx2_r(1, x, K, xs, qw, qz, sc, N, gi, k0, k1, j0, nw, o, ldo, pf); break;
    case 2: w4_gemv_tile_avx2_r(2, x, K, xs, qw, qz, sc, N, gi, k0, k1, j0, nw, o, ldo, pf); break;
    default: w4_gemv_tile_avx2_r(3, x, K, xs, qw, qz, sc, N, gi, k0, k1, j0, nw, o, ldo, pf); break;
    }
}

/* AVX-512: a tile is 16 words (128 columns). */
TARGET_AVX512 static ALWAYS_INLINE void
w4_gemv_tile_avx512_r(const int R, const float *x, int64_t K, const float *xs, const uint32_t *qw,
                      const uint32_t *qz, const uint16_t *sc, int64_t N, int64_t gi, int64_t k0,
                      int64_t k1, int64_t j0, int nw, float *o, int64_t ldo, w4_prefetch *pf) {
    const int64_t W = N / 8;
    const __mmask16 mw = (__mmask16)((1u << nw) - 1u);
    /* vpermps reads only the low 4 bits of each index lane: a 16-entry table turns the nibble in
     * bits 0..3 into its float value, whatever the higher nibbles hold (no mask, no convert). */
    const __m512 tbl = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 acc[3][8];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < 8; i++) acc[r][i] = _mm512_setzero_ps();
    const uint32_t *q = qw + k0 * W + j0;
    for (int64_t k = k0; k < k1; k++, q += W) {
        if (pf && pf->p < pf->end) {
            _mm_prefetch(pf->p, _MM_HINT_T0);
            pf->p += 64;
        }
        const __m512i w = _mm512_maskz_loadu_epi32(mw, q);
        __m512 xb[3];
        for (int r = 0; r < R; r++) xb[r] = _mm512_set1_ps(x[r * K + k]);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            const __m512 v = _mm512_permutexvar_ps(i ? _mm512_srli_epi32(w, 4 * i) : w, tbl);
            for (int r = 0; r < R; r++) acc[r][i] = _mm512_fmadd_ps(xb[r], v, acc[r][i]);
        }
    }
    /* Scales into accumulator order: sp[p] lanes 0..15 hold nibble 2p, lanes 16..31 nibble
     * 2p + 1, lane jj being word j0 + jj, i.e. half 8 jj + P[i] of the tile's 128. It is taken
     * modulo 64 from (s0, s1) for jj < 8 and from (s2, s3) for jj >= 8 and the two blended, so one
     * index vector serves both. */
    const uint16_t *s = sc + gi * N + 8 * j0;
    __m512i sv[4];
    for (int c = 0; c < 4; c++) {
        int nh = 8 * nw - 32 * c; /* halves of this 32-half chunk inside the tile */
        nh = nh < 0 ? 0 : nh > 32 ? 32 : nh;
        const __mmask32 mh = nh == 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << nh) - 1u);
        sv[c] = _mm512_maskz_loadu_epi16(mh, s + 32 * c);
    }
    const __m512i wz = _mm512_maskz_loadu_epi32(mw, qz + gi * W + j0);
    __m512 sx[3];
    for (int r = 0; r < R; r++) sx[r] = _mm512_set1_ps(xs[r]);
#pragma GCC unroll 4
    for (int p = 0; p < 4; p++) {
        uint16_t ix[32];
        for (int l = 0; l < 32; l++) ix[l] = (uint16_t)(8 * (l & 7) + AWQ_P[2 * p + (l >> 4)]);
        const __m512i sidx = _mm512_loadu_si512(ix);
        const __m512i lo = _mm512_permutex2var_epi16(sv[0], sidx, sv[1]);
        const __m512i hi = _mm512_permutex2var_epi16(sv[2], sidx, sv[3]);
        const __m512i sp = _mm512_mask_blend_epi16((__mmask32)0xFF00FF00u, lo, hi);
        for (int h = 0; h < 2; h++) {
            const int i = 2 * p + h;
            const __m512 sf =
                _mm512_cvtph_ps(h ? _mm512_extracti64x4_epi64(sp, 1) : _mm512_castsi512_si256(sp));
            const __m512 zf = _mm512_permutexvar_ps(i ? _mm512_srli_epi32(wz, 4 * i) : wz, tbl);
            for (int r = 0; r < R; r++) {
                float *op = o + r * ldo + i * 16;
                const __m512 d = _mm512_fnmadd_ps(zf, sx[r], acc[r][i]);
                _mm512_storeu_ps(op, _mm512_fmadd_ps(sf, d, _mm512_loadu_ps(op)));
            }
        }
    }
}

TARGET_AVX512 static void w4_gemv_tile_avx512(int R, const float *x, int64_t K, const float *xs,
                                              const uint32_t *qw, const uint32_t *qz,
                                              const uint16_t *sc, int64_t N, int64_t gi,
                                              int64_t k0, int64_t k1, int64_t j0, int nw, float *o,
                                              int64_t ldo, w4_prefetch *pf) {
    switch (R) {
    case 1: w4_gemv_tile_avx512_r(1, x, K, xs, qw, qz, sc, N, gi, k0, k1, j0, nw, o, ldo, pf); break;
    case 2: w4_gemv_tile_avx512_r(2, x, K, xs, qw, qz, sc, N, gi, k0, k1, j0, nw, o, ldo, pf); break;
    default: w4_gemv_tile_avx512_r(3, x, K, xs, qw, qz, sc, N, gi, k0, k1, j0, nw, o, ldo, pf); break;
    }
}
#endif /* AWQ_X86_KERNELS */

/* Words per tile of each GEMV kernel (one vector of words). */
static int w4_tile_words(awq_isa isa) { return isa == AWQ_ISA_AVX2 ? 8 : 16; }

static w4_gemv_tile_fn w4_gemv_kernel(awq_isa isa) {
#ifdef AWQ_X86_KERNELS
    if (isa == AWQ_ISA_AVX512) return w4_gemv_tile_avx512;
    if (isa == AWQ_ISA_AVX2) return w4_gemv_tile_avx2;
#endif
    (void)isa;
    return w4_gemv_tile_generic;
}

/* Rows of x per pass: 8 accumulators a row, so 3 rows fill the 32 zmm registers. */
#define W4_GEMV_ROWS 3

static int w4_gemv(awq_isa isa, const float *x, const uint32_t *qw, const uint32_t *qz,
                   const uint16_t *sc, const float *bias, float *y, int64_t M, int64_t K,
                   int64_t N, int64_t g, awq_err *err) {
    const int64_t W = N / 8;
    const int tw = w4_tile_words(isa);
    const int64_t ntiles = (W + tw - 1) / tw, ldo = ntiles * 8 * tw;
    const w4_gemv_tile_fn tile = w4_gemv_kernel(isa);
    const int T = nthreads_for(K * N);
    /* partial outputs in accumulator order: [T][M][ldo] */
    float *part = calloc((size_t)(T * M * ldo), sizeof(float));
    if (!part) return awq_set_err(err, AWQ_ERR_NOMEM, "w4a16_matmul: out of memory");
    int64_t seg_rows = W4_BLOCK_BYTES / (W * 4);
    if (seg_rows < 4) seg_rows = 4;
#pragma omp parallel num_threads(T)
    {
        const int t = omp_tid(), nt = omp_nth();
        float *o = part + (int64_t)t * M * ldo;
        const int64_t ka = K * t / nt, kb = K * (t + 1) / nt;
        /* one line prefetched per tile row swept, W4_PREFETCH_LEAD bytes ahead of the sweep */
        w4_prefetch pf = {(const char *)(qw + ka * W), (const char *)(qw + kb * W)};
        for (const char *e = pf.p + W4_PREFETCH_LEAD; pf.p < e && pf.p < pf.end; pf.p += 64)
            PREFETCH(pf.p);
        for (int64_t k0 = ka; k0 < kb;) {
            const int64_t gi = k0 / g;
            int64_t k1 = (gi + 1) * g;
            if (k1 > kb) k1 = kb;
            if (k1 > k0 + seg_rows) k1 = k0 + seg_rows;
            float xs[W4A16_GEMV_MAX_M];
            for (int64_t m = 0; m < M; m++) {
                float s = 0.0f;
                for (int64_t k = k0; k < k1; k++) s += x[m * K + k];
                xs[m] = s;
            }
            for (int64_t j0 = 0; j0 < W; j0 += tw) {
                const int nw = (int)(W - j0 < tw ? W - j0 : tw);
                for (int64_t m0 = 0; m0 < M; m0 += W4_GEMV_ROWS) {
                    const int R = (int)(M - m0 < W4_GEMV_ROWS ? M - m0 : W4_GEMV_ROWS);
                    tile(R, x + m0 * K, K, xs + m0, qw, qz, sc, N, gi, k0, k1, j0, nw,
                         o + m0 * ldo + 8 * j0, ldo, m0 == 0 ? &pf : NULL);
                }
            }
            k0 = k1;
        }
#pragma omp barrier
        /* sum the partials, back to natural column order, + bias; tiles split over threads */
        for (int64_t ti = ntiles * t / nt; ti < ntiles * (t + 1) / nt; ti++) {
            const int64_t j0 = ti * tw;
            const int nw = (int)(W - j0 < tw ? W - j0 : tw);
            for (int64_t m = 0; m < M; m++)
                for (int i = 0; i < 8; i++)
                    for (int jj = 0; jj < nw; jj++) {
                        const int64_t n = 8 * (j0 + jj) + AWQ_P[i], at = m * ldo + 8 * j0 + i * tw + jj;
                        float v = bias ? bias[n] : 0.0f;
                        for (int u = 0; u < nt; u++) v += part[(int64_t)u * M * ldo + at];
                        y[m * N + n] = v;
                    }
        }
    }
    free(part);
    return AWQ_OK;
}

/* ================================================================ packed GEMM (large M)
 *
 * y[M, N] = x[M, K] @ B[K, N] where B is never held whole: each thread owns a run of panels of 48
 * columns and, per K block of KC rows, packs PCH panels at a time (W4A16: decode nibbles, apply
 * scale and zero; fp16: convert) into bp[KC][48] buffers that stay in L2, then sweeps all rows of x
 * over them with an MR x 48 register-blocked micro-kernel. One OpenMP region, no nested BLAS
 * threading (OpenBLAS's pthreads build refuses to run inside an OpenMP region).
 */
#define GEMM_MR 8
#define GEMM_NR 48
#define GEMM_KC 256
#define GEMM_PCH 8

/* Packs rows [k0, k0 + kc) of columns [c0, c0 + nc) (nc <= 48) of B into bp[kc][48], zero-filling
 * columns nc..47. scratch: at least GEMM_KC + 64 floats. */
typedef void (*gemm_pack_fn)(const void *src, int64_t k0, int64_t kc, int64_t c0, int nc,
                             float *bp, float *scratch);

/* c[r, 0:nc] (+)= a[r, 0:kc] @ bp[kc][48] for r < mr; plain C that compilers vectorise. */
static ALWAYS_INLINE void ukr_c(int mr, int64_t kc, const float *a, int64_t lda, const float *bp,
                                float *c, int64_t ldc, int nc, int accumulate) {
    float acc[GEMM_MR][GEMM_NR];
    memset(acc, 0, sizeof acc);
    for (int64_t k = 0; k < kc; k++) {
        const float *b = bp + k * GEMM_NR;
        for (int r = 0; r < mr; r++) {
            const float av = a[r * lda + k];
            for (int j = 0; j < GEMM_NR; j++) acc[r][j] += av * b[j];
        }
    }
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nc; j++) c[r * ldc + j] = acc[r][j] + (accumulate ? c[r * ldc + j] : 0.0f);
}

static void ukr_generic(int mr, int64_t kc, const float *a, int64_t lda, const float *bp, float *c,
                        int64_t ldc, int nc, int accumulate) {
    ukr_c(mr, kc, a, lda, bp, c, ldc, nc, accumulate);
}

#ifdef AWQ_X86_KERNELS
TARGET_AVX2 static void ukr_avx2(int mr, int64_t kc, const float *a, int64_t lda, const float *bp,
                                 float *c, int64_t ldc, int nc, int accumulate) {
    ukr_c(mr, kc, a, lda, bp, c, ldc, nc, accumulate);
}

/* MR x 48: 24 accumulators, 3 vector loads of B and MR broadcasts of x per k. */
TARGET_AVX512 static ALWAYS_INLINE void ukr_avx512_r(const int MR, int64_t kc, const float *a,
                                                     int64_t lda, const float *bp, float *c,
                                                     int64_t ldc, int nc, int accumulate) {
    __m512 acc[GEMM_MR][3];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < 3; v++) acc[r][v] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        const float *b = bp + k * GEMM_NR;
        const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), b2 = _mm512_load_ps(b + 32);
        for (int r = 0; r < MR; r++) {
            const __m512 av = _mm512_set1_ps(a[r * lda + k]);
            acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(av, b2, acc[r][2]);
        }
    }
    __mmask16 mv[3];
    for (int v = 0; v < 3; v++) {
        const int n = nc - 16 * v;
        mv[v] = n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
    }
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < 3; v++) {
            float *cp = c + r * ldc + 16 * v;
            __m512 t = acc[r][v];
            if (accumulate) t = _mm512_add_ps(t, _mm512_maskz_loadu_ps(mv[v], cp));
            _mm512_mask_storeu_ps(cp, mv[v], t);
        }
}

TARGET_AVX512 static void ukr_avx512(int mr, int64_t kc, const float *a, int64_t lda,
                                     const float *bp, float *c, int64_t ldc, int nc, int accumulate) {
    switch (mr) {
    case 1: ukr_avx512_r(1, kc, a, lda, bp, c, ldc, nc, accumulate); break;
    case 2: ukr_avx512_r(2, kc, a, lda, bp, c, ldc, nc, accumulate); break;
    case 3: ukr_avx512_r(3, kc, a, lda, bp, c, ldc, nc, accumulate); break;
    case 4: ukr_avx512_r(4, kc, a, lda, bp, c, ldc, nc, accumulate); break;
    case 5: ukr_avx512_r(5, kc, a, lda, bp, c, ldc, nc, accumulate); break;
    case 6: ukr_avx512_r(6, kc, a, lda, bp, c, ldc, nc, accumulate); break;
    case 7: ukr_avx512_r(7, kc, a, lda, bp, c, ldc, nc, accumulate); break;
    default: ukr_avx512_r(8, kc, a, lda, bp, c, ldc, nc, accumulate); break;
    }
}
#endif

typedef void (*gemm_ukr_fn)(int mr, int64_t kc, const float *a, int64_t lda, const float *bp,
                            float *c, int64_t ldc, int nc, int accumulate);

static int gemm_packed(awq_isa isa, const char *who, const float *x, const float *bias, float *y,
                       int64_t M, int64_t K, int64_t N, gemm_pack_fn pack, const void *src,
                       awq_err *err) {
    gemm_ukr_fn ukr = ukr_generic;
    (void)isa;
#ifdef AWQ_X86_KERNELS
    if (isa == AWQ_ISA_AVX512) ukr = ukr_avx512;
    else if (isa == AWQ_ISA_AVX2) ukr = ukr_avx2;
#endif
    const int64_t npanels = (N + GEMM_NR - 1) / GEMM_NR;
    int failed = 0;
#pragma omp parallel
    {
        const int t = omp_tid(), nt = omp_nth();
        const int64_t pa = npanels * t / nt, pb = npanels * (t + 1) / nt;
        /* Panel buffers for the panels this thread packs at once, each only as deep as K needs
         * (a row is 48 floats = 3 x 64 bytes, so every panel stays 64-byte aligned): a small
         * layer gets a small buffer, not the 384 KB of the largest case. */
        const int64_t pch = pb - pa < GEMM_PCH ? pb - pa : GEMM_PCH;
        const size_t panel = (size_t)(K < GEMM_KC ? K : GEMM_KC) * GEMM_NR;
        float *bp = aligned_alloc(64, ((size_t)pch * panel + GEMM_KC + 64) * sizeof(float));
        if (!bp) {
#pragma omp atomic write
            failed = 1;
        } else {
            float *scratch = bp + (size_t)pch * panel;
            for (int64_t k0 = 0; k0 < K; k0 += GEMM_KC) {
                const int64_t kc = K - k0 < GEMM_KC ? K - k0 : GEMM_KC;
                for (int64_t p0 = pa; p0 < pb; p0 += GEMM_PCH) {
                    const int64_t p1 = pb - p0 < GEMM_PCH ? pb : p0 + GEMM_PCH;
                    for (int64_t p = p0; p < p1; p++) {
                        const int64_t c0 = p * GEMM_NR;
                        pack(src, k0, kc, c0, (int)(N - c0 < GEMM_NR ? N - c0 : GEMM_NR),
                             bp + (p - p0) * panel, scratch);
                    }
                    for (int64_t m0 = 0; m0 < M; m0 += GEMM_MR) {
                        const int mr = (int)(M - m0 < GEMM_MR ? M - m0 : GEMM_MR);
                        for (int64_t p = p0; p < p1; p++) {
                            const int64_t c0 = p * GEMM_NR;
                            ukr(mr, kc, x + m0 * K + k0, K, bp + (p - p0) * panel, y + m0 * N + c0, N,
                                (int)(N - c0 < GEMM_NR ? N - c0 : GEMM_NR), k0 > 0);
                        }
                    }
                }
            }
            if (bias)
                for (int64_t m = 0; m < M; m++)
                    for (int64_t n = pa * GEMM_NR; n < pb * GEMM_NR && n < N; n++) y[m * N + n] += bias[n];
            free(bp);
        }
    }
    if (failed) return awq_set_err(err, AWQ_ERR_NOMEM, "%s: out of memory for packed panels", who);
    return AWQ_OK;
}

/* ================================================================ W4A16 large M: packing */

typedef struct {
    const uint32_t *qw, *qz; /* [K, W], [G, W] */
    const uint16_t *sc;      /* [G, N] fp16 */
    int64_t K, N, g;
} w4_src;

/* Decodes W[k0 : k0 + kc, c0 : c0 + nc] into bp[kc][48] (natural column order), q * s - z * s. */
static void w4_pack_generic(const void *src, int64_t k0, int64_t kc, int64_t c0, int nc, float *bp,
                            float *scratch) {
    const w4_src *S = src;
    const int64_t W = S->N / 8, j0 = c0 / 8;
    float *sf = scratch, *zs = scratch + GEMM_NR;
    int64_t gi = k0 / S->g, gend = -1; /* gend: first row past the loaded group */
    for (int64_t k = k0; k < k0 + kc; k++) {
        if (k >= gend) {
            gi = k / S->g;
            gend = (gi + 1) * S->g;
            for (int c = 0; c < GEMM_NR; c++) {
                if (c < nc) {
                    const uint32_t zw = S->qz[gi * W + j0 + c / 8];
                    sf[c] = awq_fp16_to_fp32(S->sc[gi * S->N + c0 + c]);
                    zs[c] = (float)((zw >> (4 * AWQ_R[c % 8])) & 15u) * sf[c];
                } else {
                    sf[c] = zs[c] = 0.0f;
                }
            }
        }
        const uint32_t *q = S->qw + k * W + j0;
        float *o = bp + (k - k0) * GEMM_NR;
        for (int c = 0; c < GEMM_NR; c++)
            o[c] = c < nc ? (float)((q[c / 8] >> (4 * AWQ_R[c % 8])) & 15u) * sf[c] - zs[c] : 0.0f;
    }
}

#ifdef AWQ_X86_KERNELS
TARGET_AVX512 static void w4_pack_avx512(const void *src, int64_t k0, int64_t kc, int64_t c0,
                                         int nc, float *bp, float *scratch) {
    (void)scratch;
    const w4_src *S = src;
    const int64_t W = S->N / 8, j0 = c0 / 8;
    const int nw = nc / 8;
    const __mmask16 mw = (__mmask16)((1u << nw) - 1u);
    /* 16 columns come from 2 words: word v of the pair is replicated over 8 lanes, and lane c
     * shifts right by 4 R[c] to bring column c's nibble to bits 0..3. */
    const __m512i shifts =
        _mm512_setr_epi32(0, 16, 4, 20, 8, 24, 12, 28, 0, 16, 4, 20, 8, 24, 12, 28);
    const __m512i m15 = _mm512_set1_epi32(15);
    __m512i pidx[3];
    for (int v = 0; v < 3; v++)
        pidx[v] = _mm512_setr_epi32(2 * v, 2 * v, 2 * v, 2 * v, 2 * v, 2 * v, 2 * v, 2 * v,
                                    2 * v + 1, 2 * v + 1, 2 * v + 1, 2 * v + 1, 2 * v + 1,
                                    2 * v + 1, 2 * v + 1, 2 * v + 1);
    __m512 sf[3] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    __m512 zs[3] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t gend = -1; /* first row past the loaded group */
    for (int64_t k = k0; k < k0 + kc; k++) {
        if (k >= gend) { /* this group's scales and z * s for the 48 columns (0 past nc) */
            const int64_t gi = k / S->g;
            gend = (gi + 1) * S->g;
            const __m512i zw = _mm512_maskz_loadu_epi32(mw, S->qz + gi * W + j0);
            for (int v = 0; v < 3; v++) {
                int n = nc - 16 * v;
                n = n < 0 ? 0 : n > 16 ? 16 : n;
                const __mmask16 mc = (__mmask16)((1u << n) - 1u);
                sf[v] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mc, S->sc + gi * S->N + c0 + 16 * v));
                const __m512 z = _mm512_cvtepi32_ps(_mm512_and_si512(
                    _mm512_srlv_epi32(_mm512_permutexvar_epi32(pidx[v], zw), shifts), m15));
                zs[v] = _mm512_mul_ps(z, sf[v]);
            }
        }
        const __m512i w = _mm512_maskz_loadu_epi32(mw, S->qw + k * W + j0);
        float *o = bp + (k - k0) * GEMM_NR;
        for (int v = 0; v < 3; v++) {
            const __m512 q = _mm512_cvtepi32_ps(_mm512_and_si512(
                _mm512_srlv_epi32(_mm512_permutexvar_epi32(pidx[v], w), shifts), m15));
            _mm512_store_ps(o + 16 * v, _mm512_fmsub_ps(q, sf[v], zs[v]));
        }
    }
}
#endif

static int w4_gemm(awq_isa isa, const float *x, const uint32_t *qw, const uint32_t *qz,
                   const uint16_t *sc, const float *bias, float *y, int64_t M, int64_t K,
                   int64_t N, int64_t g, awq_err *err) {
    const w4_src src = {qw, qz, sc, K, N, g};
    gemm_pack_fn pack = w4_pack_generic;
#ifdef AWQ_X86_KERNELS
    if (isa == AWQ_ISA_AVX512) pack = w4_pack_avx512;
#endif
    return gemm_packed(isa, "w4a16_matmul", x, bias, y, M, K, N, pack, &src, err);
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

/* Large M: panels of 48 rows of w, converted and transposed into bp[kc][48] for gemm_packed. */
typedef struct {
    awq_isa isa;
    const uint16_t *w; /* [N, K] fp16 */
    int64_t K;
} f16_src;

#ifdef AWQ_X86_KERNELS
/* 16 x 16 transpose in registers: r[i] holds row i; afterwards r[j] holds column j. Three stages:
 * interleave pairs of rows (unpack), pairs of pairs (shuffle_ps), then 128-bit lanes (shuffle_f32x4
 * twice). */
TARGET_AVX512 static ALWAYS_INLINE void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* u[4i + q], 128-bit lane L: column 4L + q of rows 4i .. 4i + 3 */
    for (int i = 0; i < 4; i++) {
        u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int q = 0; q < 4; q++) {
        const __m512 v0 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x88);
        const __m512 v1 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xDD);
        const __m512 v2 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x88);
        const __m512 v3 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xDD);
        r[q] = _mm512_shuffle_f32x4(v0, v2, 0x88);
        r[8 + q] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
        r[4 + q] = _mm512_shuffle_f32x4(v1, v3, 0x88);
        r[12 + q] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
    }
}

/* f16_pack with F16C loads of 16 x 16 blocks and a register transpose. */
TARGET_AVX512 static void f16_pack_avx512(const void *src, int64_t k0, int64_t kc, int64_t c0,
                                          int nc, float *bp, float *scratch) {
    (void)scratch;
    const f16_src *S = src;
    for (int v = 0; v < 3; v++)
        for (int64_t kk = 0; kk < kc; kk += 16) {
            const int nk = (int)(kc - kk < 16 ? kc - kk : 16);
            const __mmask16 mk = (__mmask16)((1u << nk) - 1u);
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                const int c = 16 * v + i;
                r[i] = c < nc ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                                    mk, S->w + (c0 + c) * S->K + k0 + kk))
                              : _mm512_setzero_ps();
            }
            transpose16(r);
            for (int j = 0; j < nk; j++) _mm512_store_ps(bp + (kk + j) * GEMM_NR + 16 * v, r[j]);
        }
}
#endif

static void f16_pack(const void *src, int64_t k0, int64_t kc, int64_t c0, int nc, float *bp,
                     float *scratch) {
    const f16_src *S = src;
    for (int c = 0; c < GEMM_NR; c++) {
        if (c < nc) {
            f16_to_f32(S->isa, S->w + (c0 + c) * S->K + k0, scratch, kc);
            for (int64_t k = 0; k < kc; k++) bp[k * GEMM_NR + c] = scratch[k];
        } else {
            for (int64_t k = 0; k < kc; k++) bp[k * GEMM_NR + c] = 0.0f;
        }
    }
}

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
        const f16_src src = {isa, w, K};
        gemm_pack_fn pack = f16_pack;
#ifdef AWQ_X86_KERNELS
        if (isa == AWQ_ISA_AVX512) pack = f16_pack_avx512;
#endif
        return gemm_packed(isa, "f16_matmul", x, bias, y, M, K, N, pack, &src, err);
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
