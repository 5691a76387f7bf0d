/* awq.h: the plain-C core of awq (no Python headers below module.c).
 *
 * Contract for every core function:
 *   - returns AWQ_OK (0) or a negative status code;
 *   - on failure writes a one-line reason into err->msg (awq_set_err);
 *   - never exits, aborts or asserts on user-reachable conditions;
 *   - inputs are C-contiguous; the binding layer converts dtype and layout first.
 * Letters: M tokens (rows of x), K input features, N output features, G groups, g group size,
 * H heads, d head dim, T query length, S key length, F MLP intermediate size.
 */
#ifndef AWQ_H
#define AWQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- status and errors */
typedef enum {
    AWQ_OK = 0,
    AWQ_ERR_VALUE = -1,   /* bad argument value or shape -> ValueError */
    AWQ_ERR_NOMEM = -2,   /* allocation failed -> MemoryError */
    AWQ_ERR_NUMERIC = -3, /* NaN/Inf where a finite number is required -> FloatingPointError */
    AWQ_ERR_RUNTIME = -4, /* anything else (CUDA failure, unsupported CPU) -> RuntimeError */
} awq_status;

typedef struct {
    char msg[512];
} awq_err;

/* Formats msg into err (printf style) and returns code; use as `return awq_set_err(err, ...)`. */
int awq_set_err(awq_err *err, int code, const char *fmt, ...);

/* ---------------------------------------------------------------- CPU features */
typedef enum { AWQ_ISA_GENERIC = 0, AWQ_ISA_AVX2 = 1, AWQ_ISA_AVX512 = 2 } awq_isa;

/* Best ISA this CPU supports (cpuid at call time; cheap, no cached global). */
awq_isa awq_cpu_isa(void);
const char *awq_isa_name(awq_isa isa);
/* Number of worker threads the kernels use (OpenMP max threads, or 1 without OpenMP). */
int awq_num_threads(void);
/* Name of the dense GEMM provider, e.g. "scipy-openblas 0.3.x" or "builtin". */
const char *awq_blas_name(void);
/* Makes the BLAS single-threaded (OpenMP is the core's only thread pool). Idempotent. */
void awq_blas_configure(void);

/* ---------------------------------------------------------------- function multiversioning */
/* Hot loops compiled for AVX-512, AVX2 and the baseline ISA, one picked at load time (GCC ifunc).
 * Off under clang and sanitizer builds (ifunc resolvers run before the sanitizer runtime is up). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(AWQ_SANITIZE_BUILD)
#define AWQ_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AWQ_CLONES
#endif

/* ---------------------------------------------------------------- half precision helpers */
float awq_fp16_to_fp32(uint16_t h);
uint16_t awq_fp32_to_fp16(float f); /* round to nearest even, overflow -> inf */

#ifdef __cplusplus
}
#endif
#endif /* AWQ_H */
