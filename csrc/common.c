/* common.c: error formatting, CPU feature detection, thread count, fp16 conversion.
 * Nothing here holds global mutable state: the ISA is asked of the CPU on each call. */
#include "awq.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#if defined(__x86_64__) && defined(__clang__)
#include <cpuid.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

int awq_set_err(awq_err *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

#if defined(__x86_64__) && defined(__clang__)
/* clang's __builtin_cpu_supports knows no "f16c" (the fuzz harnesses build with clang): ask cpuid
 * (leaf 1, ECX bit 29). GCC builds keep the builtin, which reads a table filled once at load. */
static int cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#elif defined(__x86_64__) && defined(__GNUC__)
static int cpu_has_f16c(void) { return __builtin_cpu_supports("f16c"); }
#endif

awq_isa awq_cpu_isa(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    /* The AVX-512 kernels use F, BW, VL and DQ; they are worth it only when all are present. */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return AWQ_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c())
        return AWQ_ISA_AVX2;
#endif
    return AWQ_ISA_GENERIC;
}

const char *awq_isa_name(awq_isa isa) {
    switch (isa) {
    case AWQ_ISA_AVX512: return "avx512";
    case AWQ_ISA_AVX2: return "avx2";
    default: return "generic";
    }
}

int awq_num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* IEEE binary16 <-> binary32 in portable C (the SIMD kernels use F16C / vcvtph2ps directly). */
float awq_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3FFu;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t awq_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) /* inf or nan */
        return sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u : 0);
    if (ax >= 0x477FF000u) /* rounds to >= 65520: overflow to inf */
        return sign | 0x7C00u;
    if (ax < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (ax < 0x33000000u) return sign; /* < 2^-25 rounds to zero */
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
        /* value = m * 2^(e-150) and the half subnormal unit is 2^-24, so q = m * 2^(e-126):
         * a right shift by 126 - e, which lies in [14, 24] here. */
        int rs = 126 - (int)e;
        uint32_t q = m >> rs;
        uint32_t rem = m & ((1u << rs) - 1);
        uint32_t half = 1u << (rs - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return sign | (uint16_t)q;
    }
    /* normal: rebias exponent, round mantissa to 10 bits (nearest even) */
    uint32_t r = ax - 0x38000000u; /* exponent rebias 127 -> 15 */
    uint32_t q = r >> 13;
    uint32_t rem = r & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++;
    return sign | (uint16_t)q;
}
