/* fuzz_input.h: turns a libFuzzer input into shapes and tensor data for the harnesses.
 *
 * Why: the core is fed by checkpoints, and a checkpoint is attacker-controlled bytes. The harnesses
 * read every number they need from the input through this cursor; once the input runs out every
 * read returns 0, so any input (empty included) decodes to some case and the fuzzer never wastes
 * an execution on a rejected parse.
 *
 * Floats are read in one of two encodings chosen per case: "palette" (one byte: small multiples of
 * 1/16 or one of 32 special values: +-0, NaN, +-Inf, FLT_MAX, subnormals, 65504, ...), which keeps
 * inputs short and reaches the interesting values quickly, or "raw" (four bytes, any bit pattern).
 */
#ifndef AWQ_FUZZ_INPUT_H
#define AWQ_FUZZ_INPUT_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Checking loops of a harness and bulk data reads: no coverage callbacks there (they would cost
 * more than the code under test, and their branches say nothing about the path through the core). */
#define FZ_NOCOV __attribute__((noinline, unused, no_sanitize("coverage")))

typedef struct {
    const uint8_t *p; /* next unread byte */
    size_t n;         /* bytes left */
    int raw_floats;   /* 1: floats are 4 raw bytes; 0: one palette byte */
} fz_in;

static inline fz_in fz_make(const uint8_t *data, size_t size) {
    fz_in in = {data, size, 0};
    return in;
}

static inline uint8_t fz_u8(fz_in *in) {
    if (!in->n) return 0;
    in->n--;
    return *in->p++;
}

static inline uint16_t fz_u16(fz_in *in) {
    uint16_t lo = fz_u8(in);
    return (uint16_t)(lo | (uint16_t)fz_u8(in) << 8);
}

static inline uint32_t fz_u32(fz_in *in) {
    uint32_t lo = fz_u16(in);
    return lo | (uint32_t)fz_u16(in) << 16;
}

static inline uint64_t fz_u64(fz_in *in) {
    uint64_t lo = fz_u32(in);
    return lo | (uint64_t)fz_u32(in) << 32;
}

/* The 32 special values of the palette (bytes 224..255). */
static inline float fz_special(int i) {
    static const uint32_t bits[32] = {
        0x00000000u, 0x80000000u, 0x7FC00000u, 0xFFC00000u, /* +0, -0, NaN, -NaN */
        0x7F800000u, 0xFF800000u, 0x7F7FFFFFu, 0xFF7FFFFFu, /* +-Inf, +-FLT_MAX */
        0x00800000u, 0x80800000u, 0x00000001u, 0x80000001u, /* +-FLT_MIN, +-smallest subnormal */
        0x7149F2CAu, 0xF149F2CAu, 0x477FE000u, 0xC77FE000u, /* +-1e30, +-65504 */
        0x7F61D2B1u, 0xFF61D2B1u, 0x0DA24260u, 0x3F000000u, /* +-3e38, 1e-30, 0.5 */
        0x49742400u, 0xC9742400u, 0x322BCC77u, 0x60AD78ECu, /* +-1e6, 1e-8, 1e20 */
        0x437F0000u, 0x43800000u, 0x41700000u, 0x41800000u, /* 255, 256, 15, 16 */
        0x3727C5ACu, 0x3DCCCCCDu, 0x40F00000u, 0xC1080000u, /* 1e-5, 0.1, 7.5, -8.5 */
    };
    float f;
    memcpy(&f, &bits[i & 31], sizeof f);
    return f;
}

static inline float fz_float(fz_in *in) {
    if (in->raw_floats) {
        uint32_t b = fz_u32(in);
        float f;
        memcpy(&f, &b, sizeof f);
        return f;
    }
    uint8_t b = fz_u8(in);
    return b < 224 ? (float)((int)b - 112) / 16.0f : fz_special(b - 224);
}

static FZ_NOCOV void fz_floats(fz_in *in, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = fz_float(in);
}

/* Exactly-sized heap buffer (so ASan sees any overrun); never NULL, even for n == 0. */
static inline void *fz_alloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "fuzz harness: out of memory (%zu bytes)\n", n);
        abort();
    }
    return p;
}

/* Coverage counts edges, not sizes: once small inputs reach every branch, libFuzzer keeps no larger
 * input, and the properties would only ever see tiny shapes. One edge per (call site, power-of-two
 * size class) makes it keep and mutate inputs of every size. optnone keeps the switch a jump, not
 * a table load without edges. site: 0..3. */
#define FZ_CASE(i) \
    case (i): sink = (i); break;
#define FZ_CASE4(i) FZ_CASE(i) FZ_CASE((i) + 1) FZ_CASE((i) + 2) FZ_CASE((i) + 3)
#define FZ_CASE16(i) FZ_CASE4(i) FZ_CASE4((i) + 4) FZ_CASE4((i) + 8) FZ_CASE4((i) + 12)
__attribute__((noinline, optnone, unused)) static void fz_size_class(int site, uint64_t n) {
    static volatile int sink __attribute__((unused));
    const int bits = n ? 64 - __builtin_clzll(n) : 0;
    switch ((site & 3) * 32 + (bits < 31 ? bits : 31)) {
        FZ_CASE16(0) FZ_CASE16(16) FZ_CASE16(32) FZ_CASE16(48)
        FZ_CASE16(64) FZ_CASE16(80) FZ_CASE16(96) FZ_CASE16(112)
    default: sink = -1;
    }
}
#undef FZ_CASE16
#undef FZ_CASE4
#undef FZ_CASE

/* A failed property: print it and abort, which libFuzzer records as a crash with the input. */
#define FZ_CHECK(cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property failed: %s\n  ", __FILE__, __LINE__, #cond);          \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* An error status must come with a non-empty, terminated message. */
static inline int fz_msg_ok(const char *msg, size_t cap) {
    return msg[0] != '\0' && memchr(msg, '\0', cap) != NULL;
}

#endif
