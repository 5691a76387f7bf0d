/* sgemm.c: the dense fp32 GEMM every dense linear and attention product goes through.
 * Provider: OpenBLAS from the scipy-openblas32 wheel when the build found it (the same library
 * numpy uses, so dense matmuls run at numpy's speed); otherwise a cache-blocked portable C GEMM,
 * threaded over row blocks, auto-vectorised per ISA through target_clones. */
#include "awq.h"
#include "ops.h"

#include <stdlib.h>
#include <string.h>

#ifdef AWQ_HAVE_SCIPY_OPENBLAS
#include <cblas.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(AWQ_SANITIZE_BUILD)
#define AWQ_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AWQ_CLONES
#endif

/* The scipy-openblas32 copy is private to awq (numpy and scipy bundle their own): run it with one
 * thread so that OpenMP is the only thread pool. Called once from the module's exec slot. */
void awq_blas_configure(void) {
#ifdef AWQ_HAVE_SCIPY_OPENBLAS
    if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
#endif
}

const char *awq_blas_name(void) {
#ifdef AWQ_HAVE_SCIPY_OPENBLAS
    return "scipy-openblas32";
#else
    return "builtin";
#endif
}

/* y[M,N] = x[M,K] @ w[N,K]^T (+ bias). OpenMP splits the product into one part per thread (row
 * blocks of x when M is large, column blocks of w otherwise) and each part is a single-threaded
 * GEMM: one thread pool (OpenMP) for the whole core, so OpenBLAS's own pool never competes with it
 * for the cores (on 2 cores that contention cost ~10 ms per call). */
int awq_linear_f32(const float *x, const float *w, const float *bias, float *y, int64_t M,
                   int64_t K, int64_t N, awq_err *err) {
    if (M < 0 || K <= 0 || N <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "linear: bad shape M=%lld K=%lld N=%lld",
                           (long long)M, (long long)K, (long long)N);
    if (M == 0) return AWQ_OK;
    const int64_t work = M * N * K;
    int nt = work < (1 << 18) ? 1 : awq_num_threads();
    const int split_m = M >= 32 * (int64_t)nt;
    /* column parts are multiples of 16 so every thread writes whole cache lines */
    const int64_t ncols = ((N + nt - 1) / nt + 15) / 16 * 16;
    int status = AWQ_OK;
    awq_err part_err = {{0}};
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int p = 0; p < nt; p++) {
        int64_t m0 = 0, m1 = M, n0 = 0, n1 = N;
        if (split_m) {
            m0 = M * p / nt;
            m1 = M * (p + 1) / nt;
        } else {
            n0 = ncols * p < N ? ncols * p : N;
            n1 = n0 + ncols < N ? n0 + ncols : N;
        }
        if (m1 <= m0 || n1 <= n0) continue;
        awq_err e = {{0}};
        int st = awq_sgemm_f32(1, x + m0 * K, K, w + n0 * K, K, y + m0 * N + n0, N, m1 - m0,
                               n1 - n0, K, &e);
        if (st) {
#pragma omp critical(awq_linear_err)
            {
                status = st;
                part_err = e;
            }
        }
    }
    if (status) {
        *err = part_err;
        return status;
    }
    if (bias) {
#pragma omp parallel for num_threads(nt)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) y[m * N + n] += bias[n];
    }
    return AWQ_OK;
}

/* ---------------------------------------------------------------- strided GEMM for tiled callers */

/* Portable fallback of awq_sgemm_f32, single threaded: k blocked so a block of op(B) stays in
 * cache while every row of A passes over it. */
#define SGEMM_KB 256
AWQ_CLONES
static void sgemm_strided_builtin(int b_trans, const float *A, int64_t lda, const float *B,
                                  int64_t ldb, float *C, int64_t ldc, int64_t M, int64_t N,
                                  int64_t K) {
    if (b_trans) { /* C[m, n] = dot(A[m, :], B[n, :]) */
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                const float *a = A + m * lda, *b = B + n * ldb;
                float s = 0.0f;
                for (int64_t k = 0; k < K; k++) s += a[k] * b[k];
                C[m * ldc + n] = s;
            }
        return;
    }
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) C[m * ldc + n] = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += SGEMM_KB) {
        const int64_t k1 = K - k0 < SGEMM_KB ? K : k0 + SGEMM_KB;
        for (int64_t m = 0; m < M; m++) {
            float *c = C + m * ldc;
            for (int64_t k = k0; k < k1; k++) {
                const float a = A[m * lda + k];
                const float *b = B + k * ldb;
                for (int64_t n = 0; n < N; n++) c[n] += a * b[n];
            }
        }
    }
}

int awq_sgemm_f32(int b_trans, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                  int64_t ldc, int64_t M, int64_t N, int64_t K, awq_err *err) {
    if (M < 0 || N < 0 || K <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "sgemm: bad shape M=%lld N=%lld K=%lld",
                           (long long)M, (long long)N, (long long)K);
    if (M == 0 || N == 0) return AWQ_OK;
#ifdef AWQ_HAVE_SCIPY_OPENBLAS
    if (M > 0x7fffffff || N > 0x7fffffff || K > 0x7fffffff || lda > 0x7fffffff ||
        ldb > 0x7fffffff || ldc > 0x7fffffff)
        return awq_set_err(err, AWQ_ERR_VALUE, "sgemm: dimension exceeds 32-bit BLAS range");
    /* single-threaded (awq_blas_configure): callers thread over tiles with OpenMP */
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, b_trans ? CblasTrans : CblasNoTrans,
                      (blasint)M, (blasint)N, (blasint)K, 1.0f, A, (blasint)lda, B, (blasint)ldb,
                      0.0f, C, (blasint)ldc);
#else
    sgemm_strided_builtin(b_trans, A, lda, B, ldb, C, ldc, M, N, K);
#endif
    return AWQ_OK;
}

/* The portable strided GEMM, reachable in BLAS builds too (for tests and comparisons). */
int awq_sgemm_f32_builtin(int b_trans, const float *A, int64_t lda, const float *B, int64_t ldb,
                          float *C, int64_t ldc, int64_t M, int64_t N, int64_t K, awq_err *err) {
    if (M < 0 || N < 0 || K <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "sgemm: bad shape M=%lld N=%lld K=%lld",
                           (long long)M, (long long)N, (long long)K);
    sgemm_strided_builtin(b_trans, A, lda, B, ldb, C, ldc, M, N, K);
    return AWQ_OK;
}
