/* fuzz_w4a16: the CPU W4A16 matmul and the fp16-weight matmul (csrc/w4a16.c) on arbitrary
 * checkpoint bits (any qweight / qzeros words, any fp16 scale or weight bits: NaN, Inf,
 * subnormals) and shapes, on every kernel family this CPU runs (generic, AVX2, AVX-512).
 *
 * Properties, for every family:
 *   - a valid shape returns AWQ_OK and writes every output element;
 *   - when all inputs are finite and small enough that no fp32 intermediate can overflow, every
 *     output is finite and within an fp32-accumulation bound of awq_w4a16_matmul_ref (W4A16) or
 *     of a float64 product computed here (fp16 weights);
 *   - invalid shapes, NULL pointers with M > 0 and an ISA this CPU lacks are AWQ_ERR_VALUE with a
 *     message and the output untouched; M = 0 is AWQ_OK without touching anything.
 * Sizes are capped (M <= 12 covers both the GEMV path, M <= 8, and the packed GEMM; N up to 160
 * spans more than one 128-column AVX-512 tile and several 48-column panels; K up to 320 spans two
 * 256-row GEMM blocks) and M*K*N is kept under 2^15 so one case runs in well under a millisecond.
 * Input: [op][flags][M][...shape bytes][x][qweight][qzeros][scales][bias].
 */
#include "fuzz_input.h"
#include "w4a16.h"

#define MAX_MACS 32768
#define CANARY 0x7FA5A5A5u /* a NaN payload no computation produces */

static float canary_f(void) {
    float f;
    uint32_t b = CANARY;
    memcpy(&f, &b, sizeof f);
    return f;
}

static inline int is_canary(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b == CANARY;
}

static FZ_NOCOV int all_finite(const float *v, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

/* fp32 accumulation of K terms: each partial sum rounds at 2^-24 relative to the running
 * magnitude, which is at most `bound`, so K + 8 ulps of bound (x2 headroom); the floor covers
 * products that underflow into fp32 subnormals. */
static double acc_tol(int64_t K, double bound) {
    return 2.0 * (double)(K + 8) * ldexp(bound, -23) + (double)K * 1e-37;
}

/* Intermediates (sums of |x| times a code or a weight) above this could overflow fp32. */
#define SAFE_MAG 1e36

/* bound[m, n] = sum_k |x[m, k]| * 30 |s[k / g, n]| + |bias[n]| (|q - z| <= 15, and the kernels form
 * q * sum x and z * sum x separately, each up to 15 |x|). Returns 1 when every input is finite and
 * no fp32 intermediate can overflow: then the outputs must be finite and within acc_tol(bound). */
static FZ_NOCOV int w4_bounds(const float *x, const uint16_t *sc, const float *bias, double *bound,
                              int64_t M, int64_t K, int64_t N, int64_t g) {
    const int64_t G = K / g;
    int safe = all_finite(x, M * K) && (!bias || all_finite(bias, N));
    for (int64_t i = 0; i < G * N && safe; i++) safe = isfinite(awq_fp16_to_fp32(sc[i]));
    for (int64_t m = 0; m < M && safe; m++) {
        double xsum = 0.0;
        for (int64_t k = 0; k < K; k++) xsum += fabs(x[m * K + k]);
        if (30.0 * xsum > SAFE_MAG) safe = 0;
        for (int64_t n = 0; n < N; n++) {
            double b = bias ? fabs(bias[n]) : 0.0;
            for (int64_t gi = 0; gi < G; gi++) {
                double xg = 0.0;
                for (int64_t k = gi * g; k < (gi + 1) * g; k++) xg += fabs(x[m * K + k]);
                b += 30.0 * xg * fabs(awq_fp16_to_fp32(sc[gi * N + n]));
            }
            bound[m * N + n] = b;
            if (b > SAFE_MAG) safe = 0;
        }
    }
    return safe;
}

/* Every y written; with bound (inputs safe), y finite and within acc_tol of ref. */
static FZ_NOCOV void check_out(const char *who, const float *y, const float *ref,
                               const double *bound, int64_t M, int64_t K, int64_t N) {
    for (int64_t i = 0; i < M * N; i++) {
        FZ_CHECK(!is_canary(y[i]), "%s left y[%lld, %lld] unwritten", who, (long long)(i / N),
                 (long long)(i % N));
        if (!bound) continue;
        FZ_CHECK(isfinite(y[i]), "%s: finite inputs gave y[%lld, %lld] = %g", who,
                 (long long)(i / N), (long long)(i % N), (double)y[i]);
        const double d = fabs((double)y[i] - (double)ref[i]), tol = acc_tol(K, bound[i]);
        FZ_CHECK(d <= tol, "%s: y[%lld, %lld] = %.9g, reference %.9g (|d| %.3g > %.3g), M=%lld K=%lld "
                 "N=%lld", who, (long long)(i / N), (long long)(i % N), (double)y[i], (double)ref[i],
                 d, tol, (long long)M, (long long)K, (long long)N);
    }
}

static FZ_NOCOV void fill_canary(float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = canary_f();
}

static FZ_NOCOV int all_canary(const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!is_canary(y[i])) return 0;
    return 1;
}

static void run_w4a16(fz_in *in, int flags) {
    int64_t M = fz_u8(in) % 13, W = 1 + fz_u8(in) % 20, G = 1 + fz_u8(in) % 4, g = 1 + fz_u8(in) % 80;
    /* The packed data must come from the input (no zero fill): the case grows with the input,
     * which libFuzzer lengthens slowly, and short inputs stay cheap. */
    const int64_t fbytes = in->raw_floats ? 4 : 1;
    while (M * G * g * 8 * W > MAX_MACS ||
           ((g > 1 || W > 1 || G > 1) &&
               (int64_t)in->n + 16 < G * g * W * 4 + G * W * 20 + M * G * g * fbytes)) {
        if (g > 1) g = (g + 1) / 2;
        else if (W > 1) W = (W + 1) / 2;
        else G--;
    }
    const int64_t N = 8 * W, K = G * g;
    fz_size_class(0, (uint64_t)(M * K * N));
    fz_size_class(1, (uint64_t)K);
    const int has_bias = flags & 2;
    float *x = fz_alloc((size_t)(M * K) * 4), *bias = has_bias ? fz_alloc((size_t)N * 4) : NULL;
    uint32_t *qw = fz_alloc((size_t)(K * W) * 4), *qz = fz_alloc((size_t)(G * W) * 4);
    uint16_t *sc = fz_alloc((size_t)(G * N) * 2);
    float *ref = fz_alloc((size_t)(M * N) * 4), *y = fz_alloc((size_t)(M * N) * 4);
    fz_floats(in, x, M * K);
    for (int64_t i = 0; i < K * W; i++) qw[i] = fz_u32(in);
    for (int64_t i = 0; i < G * W; i++) qz[i] = fz_u32(in);
    for (int64_t i = 0; i < G * N; i++) sc[i] = fz_u16(in);
    if (bias) fz_floats(in, bias, N);

    awq_err err = {{0}};
    int st = awq_w4a16_matmul_ref(x, qw, qz, sc, bias, ref, M, K, N, g, &err);
    FZ_CHECK(st == AWQ_OK, "ref M=%lld K=%lld N=%lld g=%lld: %s", (long long)M, (long long)K,
             (long long)N, (long long)g, err.msg);

    double *bound = fz_alloc((size_t)(M * N) * sizeof(double));
    const int safe = w4_bounds(x, sc, bias, bound, M, K, N, g);
    for (int isa = AWQ_ISA_GENERIC; isa <= awq_cpu_isa(); isa++) {
        fill_canary(y, M * N);
        st = awq_w4a16_matmul_isa(x, qw, qz, sc, bias, y, M, K, N, g, (awq_isa)isa, &err);
        FZ_CHECK(st == AWQ_OK, "%s M=%lld K=%lld N=%lld g=%lld: %s", awq_isa_name(isa),
                 (long long)M, (long long)K, (long long)N, (long long)g, err.msg);
        check_out(awq_isa_name(isa), y, ref, safe ? bound : NULL, M, K, N);
    }
    if (M > 0) { /* a family beyond this CPU (or beyond the enum) is refused, y untouched */
        fill_canary(y, M * N);
        st = awq_w4a16_matmul_isa(x, qw, qz, sc, bias, y, M, K, N, g, (awq_isa)(awq_cpu_isa() + 1),
                                  &err);
        FZ_CHECK(st == AWQ_ERR_VALUE, "an ISA beyond the CPU was accepted (st=%d)", st);
        FZ_CHECK(all_canary(y, M * N), "refused call wrote y");
    }
    free(x);
    free(bias);
    free(qw);
    free(qz);
    free(sc);
    free(ref);
    free(y);
    free(bound);
}

/* ref[m, n] = sum_k x w (float64, rounded once), bound = sum_k |x w| + |bias|; returns 1 when every
 * input is finite and every bound is below SAFE_MAG. */
static FZ_NOCOV int f16_reference(const float *x, const uint16_t *w, const float *bias, float *ref,
                                  double *bound, int64_t M, int64_t K, int64_t N) {
    int safe = all_finite(x, M * K) && (!bias || all_finite(bias, N));
    for (int64_t i = 0; i < N * K && safe; i++) safe = isfinite(awq_fp16_to_fp32(w[i]));
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double r = bias ? bias[n] : 0.0, b = bias ? fabs(bias[n]) : 0.0;
            for (int64_t k = 0; k < K; k++) {
                const double p = (double)x[m * K + k] * awq_fp16_to_fp32(w[n * K + k]);
                r += p;
                b += fabs(p);
            }
            ref[m * N + n] = (float)r;
            bound[m * N + n] = b;
            if (!(b <= SAFE_MAG)) safe = 0;
        }
    return safe;
}

static void run_f16(fz_in *in, int flags) {
    int64_t M = fz_u8(in) % 13, N = 1 + fz_u8(in) % 64, K = 1 + fz_u8(in) % 80;
    const int64_t fbytes = in->raw_floats ? 4 : 1;
    while ((M * N * K > MAX_MACS || (int64_t)in->n + 16 < N * K * 2 + M * K * fbytes) &&
           (N > 1 || K > 1)) {
        if (K > 1) K = (K + 1) / 2;
        else N = (N + 1) / 2;
    }
    fz_size_class(2, (uint64_t)(M * K * N));
    fz_size_class(3, (uint64_t)K);
    const int has_bias = flags & 2;
    float *x = fz_alloc((size_t)(M * K) * 4), *bias = has_bias ? fz_alloc((size_t)N * 4) : NULL;
    uint16_t *w = fz_alloc((size_t)(N * K) * 2);
    float *y = fz_alloc((size_t)(M * N) * 4);
    fz_floats(in, x, M * K);
    for (int64_t i = 0; i < N * K; i++) w[i] = fz_u16(in);
    if (bias) fz_floats(in, bias, N);
    float *ref = fz_alloc((size_t)(M * N) * 4);
    double *bound = fz_alloc((size_t)(M * N) * sizeof(double));
    const int safe = f16_reference(x, w, bias, ref, bound, M, K, N);

    awq_err err = {{0}};
    for (int isa = AWQ_ISA_GENERIC; isa <= awq_cpu_isa(); isa++) {
        fill_canary(y, M * N);
        int st = awq_f16_matmul_isa(x, w, bias, y, M, K, N, (awq_isa)isa, &err);
        FZ_CHECK(st == AWQ_OK, "f16 %s M=%lld K=%lld N=%lld: %s", awq_isa_name(isa), (long long)M,
                 (long long)K, (long long)N, err.msg);
        check_out(awq_isa_name(isa), y, ref, safe ? bound : NULL, M, K, N);
    }
    free(ref);
    free(bound);
    free(x);
    free(bias);
    free(w);
    free(y);
}

/* Shapes the core must refuse before reading anything: the data pointers may be NULL. */
static void run_bad(fz_in *in) {
    const int kind = fz_u8(in) % 8;
    int64_t M = 1 + fz_u8(in) % 4, K = 8, N = 16, g = 4;
    const int64_t v = (int64_t)fz_u64(in);
    switch (kind) {
    case 0: M = v < 0 ? v : -v - 1; break;       /* M < 0 */
    case 1: K = v <= 0 ? v : -v; break;          /* K <= 0 */
    case 2: N = v <= 0 ? v : -v; break;          /* N <= 0 */
    case 3: N = v % 8 ? v : v + 1; break;        /* N % 8 != 0 (or N < 0) */
    case 4: g = v <= 0 ? v : -v; break;          /* g <= 0 */
    case 5: g = 3; K = v % 3 ? v : v + 1; break; /* g does not divide K (or K <= 0) */
    default: break;                              /* valid shape, NULL data: below */
    }
    float x[4 * 8] = {0}, y[4 * 16], bias[16] = {0};
    uint32_t qw[8 * 2] = {0}, qz[2 * 2] = {0};
    uint16_t sc[2 * 16] = {0}, w[16 * 8] = {0};
    fill_canary(y, 4 * 16);
    awq_err err = {{0}};
    int st;
    if (kind < 6) {
        st = awq_w4a16_matmul_isa(NULL, NULL, NULL, NULL, NULL, y, M, K, N, g, awq_cpu_isa(), &err);
        FZ_CHECK(st == AWQ_ERR_VALUE, "w4a16 accepted M=%lld K=%lld N=%lld g=%lld", (long long)M,
                 (long long)K, (long long)N, (long long)g);
        st = awq_w4a16_matmul_ref(NULL, NULL, NULL, NULL, NULL, y, M, K, N, g, &err);
        FZ_CHECK(st == AWQ_ERR_VALUE, "w4a16_ref accepted M=%lld K=%lld N=%lld g=%lld",
                 (long long)M, (long long)K, (long long)N, (long long)g);
        if (kind <= 2) {
            st = awq_f16_matmul_isa(NULL, NULL, NULL, y, M, K, N, awq_cpu_isa(), &err);
            FZ_CHECK(st == AWQ_ERR_VALUE, "f16 accepted M=%lld K=%lld N=%lld", (long long)M,
                     (long long)K, (long long)N);
        }
    } else if (kind == 6) { /* one NULL among otherwise valid arguments */
        const int which = fz_u8(in) % 5;
        st = awq_w4a16_matmul_isa(which == 0 ? NULL : x, which == 1 ? NULL : qw,
                                  which == 2 ? NULL : qz, which == 3 ? NULL : sc, bias,
                                  which == 4 ? NULL : y, M, K, N, g, awq_cpu_isa(), &err);
        FZ_CHECK(st == AWQ_ERR_VALUE, "w4a16 accepted a NULL argument %d", which);
        st = awq_f16_matmul_isa(which == 0 ? NULL : x, which == 1 ? NULL : w, bias,
                                which == 4 ? NULL : y, M, K, N, awq_cpu_isa(), &err);
        FZ_CHECK(which > 1 && which < 4 ? st == AWQ_OK : st == AWQ_ERR_VALUE,
                 "f16 with NULL argument %d: st=%d", which, st);
        if (st == AWQ_OK) return; /* y legitimately written */
    } else { /* M = 0: nothing to do, nothing touched, pointers unused */
        st = awq_w4a16_matmul_isa(NULL, NULL, NULL, NULL, NULL, NULL, 0, K, N, g, awq_cpu_isa(), &err);
        FZ_CHECK(st == AWQ_OK, "w4a16 with M=0 failed: %s", err.msg);
        st = awq_f16_matmul_isa(NULL, NULL, NULL, NULL, 0, K, N, awq_cpu_isa(), &err);
        FZ_CHECK(st == AWQ_OK, "f16 with M=0 failed: %s", err.msg);
        return;
    }
    FZ_CHECK(fz_msg_ok(err.msg, sizeof err.msg), "error without a message");
    FZ_CHECK(all_canary(y, 4 * 16), "a refused call wrote y");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_in in = fz_make(data, size);
    const int op = fz_u8(&in) % 4, flags = fz_u8(&in);
    in.raw_floats = flags & 1;
    if (op <= 1) run_w4a16(&in, flags);
    else if (op == 2) run_f16(&in, flags);
    else run_bad(&in);
    return 0;
}
