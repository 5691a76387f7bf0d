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
#define AWQ_SGEMM_ROW_NT(M, N, K, A, B, C)                                                          \
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)(M), (blasint)(N),        \
                      (blasint)(K), 1.0f, (A), (blasint)(K), (B), (blasint)(K), 0.0f, (C),          \
                      (blasint)(N))
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(AWQ_SANITIZE_BUILD)
#define AWQ_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AWQ_CLONES
#endif

const char *awq_blas_name(void) {
#ifdef AWQ_HAVE_SCIPY_OPENBLAS
    return "scipy-openblas32";
#else
    return "builtin";
#endif
}

/* Portable GEMM C[M,N] = A[M,K] @ B[N,K]^T. Blocks of 64 rows of B are transposed into a K x 64
 * panel so the inner loop is a contiguous axpy the compiler vectorises. */
AWQ_CLONES
static void gemm_nt_block(const float *A, const float *Bt, float *C, int64_t M, int64_t K,
                          int64_t nb, int64_t ldc) {
    for (int64_t m = 0; m < M; m++) {
        float acc[64];
        for (int64_t j = 0; j < nb; j++) acc[j] = 0.0f;
        const float *a = A + m * K;
        for (int64_t k = 0; k < K; k++) {
            const float av = a[k];
            const float *b = Bt + k * nb;
            for (int64_t j = 0; j < nb; j++) acc[j] += av * b[j];
        }
        memcpy(C + m * ldc, acc, (size_t)nb * sizeof(float));
    }
}

static int gemm_nt_builtin(const float *A, const float *B, float *C, int64_t M, int64_t K,
                           int64_t N, awq_err *err) {
    int64_t nblocks = (N + 63) / 64;
    int failed = 0;
#pragma omp parallel
    {
        float *Bt = malloc((size_t)K * 64 * sizeof(float));
        if (!Bt) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t blk = 0; blk < nblocks; blk++) {
            if (!Bt) continue;
            int64_t n0 = blk * 64, nb = N - n0 < 64 ? N - n0 : 64;
            for (int64_t j = 0; j < nb; j++)
                for (int64_t k = 0; k < K; k++) Bt[k * nb + j] = B[(n0 + j) * K + k];
            gemm_nt_block(A, Bt, C + n0, M, K, nb, N);
        }
        free(Bt);
    }
    if (failed) return awq_set_err(err, AWQ_ERR_NOMEM, "gemm: out of memory for a %lld-float panel", (long long)(K * 64));
    return AWQ_OK;
}

int awq_linear_f32(const float *x, const float *w, const float *bias, float *y, int64_t M,
                   int64_t K, int64_t N, awq_err *err) {
    if (M < 0 || K <= 0 || N <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "linear: bad shape M=%lld K=%lld N=%lld",
                           (long long)M, (long long)K, (long long)N);
    if (M == 0) return AWQ_OK;
#ifdef AWQ_HAVE_SCIPY_OPENBLAS
    if (M > 0x7fffffff || N > 0x7fffffff || K > 0x7fffffff)
        return awq_set_err(err, AWQ_ERR_VALUE, "linear: dimension exceeds 32-bit BLAS range");
    AWQ_SGEMM_ROW_NT(M, N, K, x, w, y);
#else
    int st = gemm_nt_builtin(x, w, y, M, K, N, err);
    if (st) return st;
#endif
    if (bias) {
#pragma omp parallel for if (M * N > 65536)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) y[m * N + n] += bias[n];
    }
    return AWQ_OK;
}

#ifdef AWQ_HAVE_SCIPY_OPENBLAS
/* Keep the builtin path compiled (and testable through awq_linear_f32_builtin) in BLAS builds. */
#endif
int awq_linear_f32_builtin(const float *x, const float *w, float *y, int64_t M, int64_t K,
                           int64_t N, awq_err *err) {
    return gemm_nt_builtin(x, w, y, M, K, N, err);
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
