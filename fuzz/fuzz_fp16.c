/* fuzz_fp16: the portable fp16 <-> fp32 conversions of csrc/common.c, which decode every fp16
 * scale (and fp16 weight) of a checkpoint on the generic path, and encode the scales we write.
 *
 * The input is a sequence of 6-byte records (u16 half bits, u32 float bits). Properties:
 *   - awq_fp16_to_fp32 is exact: the value equals sign * man * 2^(exp - 25) (normal) or
 *     man * 2^-24 (subnormal) computed in double; Inf stays Inf, NaN stays NaN with its sign;
 *   - awq_fp32_to_fp16 (awq_fp16_to_fp32 (h)) == h for every non-NaN h, NaN stays NaN;
 *   - awq_fp32_to_fp16 (f) rounds to nearest, ties to even, overflowing to Inf past 65520: the
 *     result is no farther from f than either neighbour, and on a tie its mantissa is even;
 *   - where the CPU has F16C, both directions agree with the hardware bit for bit (NaN: both NaN).
 */
#include "awq.h"
#include "fuzz_input.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_X86 1
#endif

static int is_nan16(uint16_t h) { return (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu); }

/* Exact value of a non-NaN half in double (Inf for the infinities). */
static double half_value(uint16_t h) {
    const int sign = h >> 15, e = (h >> 10) & 31, m = h & 0x3FF;
    double v;
    if (e == 31) v = INFINITY;
    else if (e == 0) v = ldexp(m, -24);
    else v = ldexp(1024 + m, e - 25);
    return sign ? -v : v;
}

#ifdef HAVE_X86
static int cpu_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
__attribute__((target("f16c"))) static float hw_to_f32(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) static uint16_t hw_to_f16(float f) {
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
#endif

static void check_half(uint16_t h, int f16c) {
    const float f = awq_fp16_to_fp32(h);
    if (is_nan16(h)) {
        FZ_CHECK(isnan(f) && !!signbit(f) == (h >> 15), "half 0x%04x -> %g, want a NaN of that sign",
                 h, (double)f);
        const uint16_t back = awq_fp32_to_fp16(f);
        FZ_CHECK(is_nan16(back) && (back >> 15) == (h >> 15), "NaN half 0x%04x came back as 0x%04x",
                 h, back);
    } else {
        FZ_CHECK((double)f == half_value(h) && !!signbit(f) == (h >> 15),
                 "half 0x%04x -> %.9g, exact value %.9g", h, (double)f, half_value(h));
        const uint16_t back = awq_fp32_to_fp16(f);
        FZ_CHECK(back == h, "half 0x%04x -> %.9g -> 0x%04x", h, (double)f, back);
    }
#ifdef HAVE_X86
    if (f16c) {
        const float hw = hw_to_f32(h);
        if (isnan(hw)) FZ_CHECK(isnan(f), "half 0x%04x: F16C NaN, ours %g", h, (double)f);
        else FZ_CHECK(!memcmp(&hw, &f, sizeof f), "half 0x%04x: F16C %.9g, ours %.9g", h, (double)hw, (double)f);
    }
#endif
    (void)f16c;
}

static void check_float(float f, int f16c) {
    const uint16_t r = awq_fp32_to_fp16(f);
    uint32_t fb;
    memcpy(&fb, &f, sizeof fb);
    if (isnan(f)) {
        FZ_CHECK(is_nan16(r) && (r >> 15) == (fb >> 31), "NaN 0x%08x -> 0x%04x", fb, r);
        return;
    }
    FZ_CHECK(!is_nan16(r), "float 0x%08x (%.9g) -> NaN half 0x%04x", fb, (double)f, r);
    FZ_CHECK((r >> 15) == (fb >> 31), "float 0x%08x -> 0x%04x lost the sign", fb, r);
    /* Nearest: magnitudes of r and its neighbours (r - 1, r + 1; the largest finite half 0x7BFF
     * has Inf above it, which counts from 65520 = 65504 + half an ulp on). */
    const uint16_t mag = r & 0x7FFF;
    const double a = fabs((double)f);
    const double d = mag == 0x7C00 ? (a >= 65520.0 ? 0.0 : INFINITY) : fabs(half_value(mag) - a);
    FZ_CHECK(d != INFINITY, "float %.9g (below 65520) overflowed to Inf", (double)f);
    if (mag != 0x7C00) {
        if (mag > 0) {
            const double dl = fabs(half_value((uint16_t)(mag - 1)) - a);
            FZ_CHECK(d < dl || (d == dl && !(mag & 1)),
                     "float %.9g -> 0x%04x; 0x%04x is nearer or a tie with an even mantissa",
                     (double)f, r, (unsigned)(mag - 1));
        }
        if (mag < 0x7BFF) {
            const double du = fabs(half_value((uint16_t)(mag + 1)) - a);
            FZ_CHECK(d < du || (d == du && !(mag & 1)),
                     "float %.9g -> 0x%04x; 0x%04x is nearer or a tie with an even mantissa",
                     (double)f, r, (unsigned)(mag + 1));
        } else if (mag == 0x7BFF) {
            FZ_CHECK(a < 65520.0, "float %.9g should overflow to Inf, got 0x%04x", (double)f, r);
        }
    }
#ifdef HAVE_X86
    if (f16c) {
        const uint16_t hw = hw_to_f16(f);
        FZ_CHECK(hw == r, "float 0x%08x (%.9g): F16C 0x%04x, ours 0x%04x", fb, (double)f, hw, r);
    }
#endif
    (void)f16c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
#ifdef HAVE_X86
    static int f16c = -1;
    if (f16c < 0) f16c = cpu_f16c();
#else
    const int f16c = 0;
#endif
    fz_in in = fz_make(data, size);
    do {
        check_half(fz_u16(&in), f16c);
        const uint32_t b = fz_u32(&in);
        float f;
        memcpy(&f, &b, sizeof f);
        check_float(f, f16c);
    } while (in.n > 0);
    return 0;
}
