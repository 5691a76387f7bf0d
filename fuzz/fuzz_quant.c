/* fuzz_quant: pseudo-quantize, integer codes and the clip search (csrc/quant.c) on arbitrary
 * weights (NaN, Inf, subnormals, +-FLT_MAX), group sizes, bit widths and grid arguments.
 *
 * Properties:
 *   - bad arguments (shapes, bits outside {2, 3, 4, 8}, T, n_grid, max_shrink) are AWQ_ERR_VALUE
 *     with a message, checked before any data is read (the pointers passed are NULL);
 *   - a non-finite weight (or activation, for the clip search), or finite weights so close to
 *     +-FLT_MAX that the group's grid overflows, is AWQ_ERR_NUMERIC naming the first such group in
 *     row-major order (and the first bad column in it);
 *   - otherwise AWQ_OK, and: codes and zeros fit in `bits` (symmetric zeros are 2^(bits-1)),
 *     scales are finite and positive, pseudo_quantize equals (codes - zeros) * scales bit for bit,
 *     and every dequantized value is within s/2 of the weight clamped to the group's grid
 *     [(qlo - z) s, (qhi - z) s]; every clip_search answer is one of the candidates
 *     max|w| * fp32(1 - i / n_grid), i < max(1, floor(max_shrink * n_grid)), bit for bit.
 * Input: [op][flags][shape and argument bytes][w][x].
 */
#include "fuzz_input.h"
#include "quant.h"

#define MAX_WORK 65536

static const int BITS[4] = {2, 3, 4, 8};

/* Index n * G + j of the first group (row-major) that has a non-finite value; *col gets the column
 * of that value. -1 if none. */
static FZ_NOCOV int64_t first_nonfinite_group(const float *w, int64_t N, int64_t K, int64_t g,
                                              int64_t *col) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++)
            if (!isfinite(w[n * K + k])) {
                *col = k;
                return n * (K / g) + k / g;
            }
    return -1;
}

/* Whether the finite group p[g] has a grid end that overflows fp32, from quant.h's formulas:
 * zero point: s = max(max - min, 1e-5) / qhi, z = clamp(-round(min / s), 0, qhi), ends -z s and
 * (qhi - z) s; symmetric: s = max(amax, 1e-5) / qhi, reachable ends +-qhi s. */
static FZ_NOCOV int grid_overflows(const float *p, int64_t g, int bits, int zero_point) {
    float mx = p[0], mn = p[0];
    for (int64_t k = 1; k < g; k++) {
        mx = p[k] > mx ? p[k] : mx;
        mn = p[k] < mn ? p[k] : mn;
    }
    float lo, hi;
    if (zero_point) {
        const float qhi = (float)((1 << bits) - 1), s = fmaxf(mx - mn, 1e-5f) / qhi;
        float z = -nearbyintf(mn / s);
        z = z < 0.0f ? 0.0f : (z > qhi ? qhi : z);
        lo = (0.0f - z) * s;
        hi = (qhi - z) * s;
    } else {
        const float qhi = (float)((1 << (bits - 1)) - 1);
        hi = (fmaxf(fmaxf(fabsf(mx), fabsf(mn)), 1e-5f) / qhi) * qhi;
        lo = -hi;
    }
    return !isfinite(lo) || !isfinite(hi);
}

/* The group the core must refuse first (row-major): a non-finite value (*col = its column) or,
 * for `bits` (bits > 0), a grid that overflows (*col = -1). -1 if none. */
static FZ_NOCOV int64_t first_refused_group(const float *w, int64_t N, int64_t K, int64_t g,
                                            int bits, int zero_point, int64_t *col) {
    const int64_t G = K / g;
    int64_t c = 0;
    const int64_t nf = first_nonfinite_group(w, N, K, g, &c);
    for (int64_t i = 0; i < N * G && (nf < 0 || i < nf); i++)
        if (grid_overflows(w + (i / G) * K + (i % G) * g, g, bits, zero_point)) {
            *col = -1;
            return i;
        }
    *col = c;
    return nf;
}

static void check_bad_group_msg(const char *msg, int64_t bad, int64_t G, int64_t col) {
    char want[96];
    snprintf(want, sizeof want, "row %lld, group %lld", (long long)(bad / G), (long long)(bad % G));
    FZ_CHECK(strstr(msg, want), "message '%s' does not name '%s'", msg, want);
    if (col >= 0) snprintf(want, sizeof want, "at column %lld", (long long)col);
    else snprintf(want, sizeof want, "overflows float32");
    FZ_CHECK(strstr(msg, want), "message '%s' does not name '%s'", msg, want);
}

/* Codes, zeros and scales are well formed, dq = (codes - zeros) * scales exactly, and each dq is
 * within s/2 (plus the fp32 rounding of w / s and of (q - z) * s) of w clamped to the grid. */
static FZ_NOCOV void check_quantized(const float *w, const float *dq, const uint8_t *codes,
                                     const float *scales, const uint8_t *zeros, int64_t N,
                                     int64_t K, int64_t g, int bits, int zero_point) {
    const int64_t G = K / g;
    const int qmax = (1 << bits) - 1;
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < G; j++) {
            const float s = scales[n * G + j];
            const int z = zeros[n * G + j];
            FZ_CHECK(isfinite(s) && s > 0.0f, "row %lld group %lld: scale %g from finite weights",
                     (long long)n, (long long)j, (double)s);
            FZ_CHECK(z <= qmax && (zero_point || z == 1 << (bits - 1)),
                     "row %lld group %lld: zero %d for %d bits (zero_point %d)", (long long)n,
                     (long long)j, z, bits, zero_point);
            const double lo = (double)(0 - z) * s, hi = (double)(qmax - z) * s;
            for (int64_t k = j * g; k < (j + 1) * g; k++) {
                const int64_t i = n * K + k;
                FZ_CHECK(codes[i] <= qmax, "code %u at [%lld, %lld] does not fit %d bits", codes[i],
                         (long long)n, (long long)k, bits);
                const float want = ((float)codes[i] - (float)z) * s;
                FZ_CHECK(!memcmp(&want, &dq[i], sizeof want),
                         "pseudo_quantize [%lld, %lld] = %.9g but (code - zero) * scale = %.9g",
                         (long long)n, (long long)k, (double)dq[i], (double)want);
                const double c = w[i] < lo ? lo : (w[i] > hi ? hi : (double)w[i]);
                FZ_CHECK(fabs(dq[i] - c) <= (double)s * (0.5 + 4e-5),
                         "[%lld, %lld]: w %.9g (clamped %.9g) dequantizes to %.9g, scale %.9g",
                         (long long)n, (long long)k, (double)w[i], c, (double)dq[i], (double)s);
            }
        }
}

static void run_quantize(fz_in *in, int flags) {
    int64_t N = fz_u8(in) % 9, G = 1 + fz_u8(in) % 4, g = 1 + fz_u8(in) % 64;
    const int bits = BITS[fz_u8(in) % 4], zero_point = (int)(int8_t)fz_u8(in) % 3; /* -2..2 */
    const int64_t fbytes = in->raw_floats ? 4 : 1;
    while ((N * G * g > MAX_WORK || (int64_t)in->n + 16 < N * G * g * fbytes) && (g > 1 || G > 1)) {
        if (g > 1) g = (g + 1) / 2;
        else G--;
    }
    (void)flags;
    const int64_t K = G * g;
    fz_size_class(0, (uint64_t)(N * K));
    fz_size_class(1, (uint64_t)g);
    float *w = fz_alloc((size_t)(N * K) * 4), *dq = fz_alloc((size_t)(N * K) * 4);
    float *scales = fz_alloc((size_t)(N * G) * 4);
    uint8_t *codes = fz_alloc((size_t)(N * K)), *zeros = fz_alloc((size_t)(N * G));
    fz_floats(in, w, N * K);
    int64_t col = 0;
    const int64_t bad = first_refused_group(w, N, K, g, bits, zero_point, &col);
    awq_err err = {{0}};
    int st = awq_pseudo_quantize_f32(w, dq, N, K, g, bits, zero_point, &err);
    if (bad >= 0) {
        FZ_CHECK(st == AWQ_ERR_NUMERIC, "pseudo_quantize: group %lld accepted (st=%d)", (long long)bad, st);
        check_bad_group_msg(err.msg, bad, G, col);
    } else {
        FZ_CHECK(st == AWQ_OK, "pseudo_quantize N=%lld K=%lld g=%lld bits=%d: %s", (long long)N,
                 (long long)K, (long long)g, bits, err.msg);
    }
    int st2 = awq_quantize_codes_f32(w, codes, scales, zeros, N, K, g, bits, zero_point, &err);
    FZ_CHECK(st2 == st, "quantize_codes returned %d where pseudo_quantize returned %d", st2, st);
    if (bad >= 0) check_bad_group_msg(err.msg, bad, G, col);
    else check_quantized(w, dq, codes, scales, zeros, N, K, g, bits, zero_point);
    free(w);
    free(dq);
    free(scales);
    free(codes);
    free(zeros);
}

/* ncand as quant.h defines it: floor(max_shrink * n_grid), with the 1e-5 the core adds. */
static int64_t n_candidates(float max_shrink, int n_grid) {
    return (int64_t)floor((double)max_shrink * n_grid + 1e-5);
}

/* max_val[n, j] is max|w| * fp32(1 - i / n_grid) for some i < max(1, ncand), bit for bit. */
static FZ_NOCOV void check_clip(const float *w, const float *max_val, int64_t N, int64_t K,
                                int64_t g, int n_grid, int64_t ncand) {
    const int64_t G = K / g;
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < G; j++) {
            float org = 0.0f;
            for (int64_t k = j * g; k < (j + 1) * g; k++)
                org = fabsf(w[n * K + k]) > org ? fabsf(w[n * K + k]) : org;
            const float got = max_val[n * G + j];
            int found = 0;
            for (int64_t i = 0; i < (ncand > 1 ? ncand : 1) && !found; i++) {
                const float c = org * (float)(1.0 - (double)i / (double)n_grid);
                found = !memcmp(&c, &got, sizeof c);
            }
            FZ_CHECK(found, "clip_search [%lld, %lld] = %.9g is no candidate (max|w| %.9g, n_grid "
                     "%d, %lld candidates)", (long long)n, (long long)j, (double)got, (double)org,
                     n_grid, (long long)ncand);
        }
}

static void run_clip(fz_in *in) {
    int64_t N = fz_u8(in) % 9, G = 1 + fz_u8(in) % 4, g = 1 + fz_u8(in) % 48, T = 1 + fz_u8(in) % 8;
    const int bits = BITS[fz_u8(in) % 4], zero_point = fz_u8(in) & 1;
    const int n_grid = 1 + fz_u8(in) % 24;
    const float max_shrink = (fz_u8(in) % 17) / 16.0f;
    const int64_t ncand = n_candidates(max_shrink, n_grid);
    const int64_t fbytes = in->raw_floats ? 4 : 1;
    while ((N * G * g * T * (ncand + 1) > MAX_WORK ||
            (int64_t)in->n + 16 < (N + T) * G * g * fbytes) && (g > 1 || G > 1)) {
        if (g > 1) g = (g + 1) / 2;
        else G--;
    }
    const int64_t K = G * g;
    fz_size_class(2, (uint64_t)(N * K * T));
    fz_size_class(3, (uint64_t)g);
    float *w = fz_alloc((size_t)(N * K) * 4), *x = fz_alloc((size_t)(T * K) * 4);
    float *max_val = fz_alloc((size_t)(N * G) * 4);
    fz_floats(in, w, N * K);
    fz_floats(in, x, T * K);
    int64_t col = 0, xcol = 0;
    const int64_t bad_x = first_nonfinite_group(x, T, K, 1, &xcol); /* g = 1: index t * K + k */
    const int64_t bad = first_refused_group(w, N, K, g, bits, zero_point, &col);
    awq_err err = {{0}};
    int st = awq_clip_search_f32(w, x, max_val, N, K, T, g, bits, zero_point, n_grid, max_shrink, &err);
    if (N > 0 && bad_x >= 0) {
        FZ_CHECK(st == AWQ_ERR_NUMERIC, "clip_search: non-finite x accepted (st=%d)", st);
        char want[64];
        snprintf(want, sizeof want, "x token %lld, column %lld", (long long)(bad_x / K),
                 (long long)(bad_x % K));
        FZ_CHECK(strstr(err.msg, want), "message '%s' does not name '%s'", err.msg, want);
    } else if (bad >= 0) {
        FZ_CHECK(st == AWQ_ERR_NUMERIC, "clip_search: w group %lld accepted (st=%d)", (long long)bad, st);
        check_bad_group_msg(err.msg, bad, G, col);
    } else {
        FZ_CHECK(st == AWQ_OK, "clip_search N=%lld K=%lld T=%lld g=%lld bits=%d: %s", (long long)N,
                 (long long)K, (long long)T, (long long)g, bits, err.msg);
        check_clip(w, max_val, N, K, g, n_grid, ncand);
    }
    free(w);
    free(x);
    free(max_val);
}

/* Arguments the core must refuse before touching data (all pointers NULL). */
static void run_bad(fz_in *in) {
    int64_t N = fz_u8(in) % 4, K = 8, g = 4, T = 2;
    int bits = 4, n_grid = 20;
    float max_shrink = 0.5f;
    const int kind = fz_u8(in) % 8;
    const int64_t v = (int64_t)fz_u64(in);
    switch (kind) {
    case 0: N = v < 0 ? v : -v - 1; break;                     /* N < 0 */
    case 1: K = v <= 0 ? v : -v; break;                        /* K <= 0 */
    case 2: g = v <= 0 ? v : -v; break;                        /* g <= 0 */
    case 3: g = 3; K = v % 3 ? v : v + 1; break;               /* g does not divide K */
    case 4: bits = (int)v; if (bits == 2 || bits == 3 || bits == 4 || bits == 8) bits += 16; break;
    case 5: T = v <= 0 ? v : -v; break;                        /* clip: T <= 0 */
    case 6: n_grid = (int)v > 0 ? -(int)(v & 0x7fffffff) : (int)v; break; /* clip: n_grid <= 0 */
    default: {                                                 /* clip: max_shrink outside [0, 1] */
        uint32_t b = (uint32_t)v;
        memcpy(&max_shrink, &b, sizeof b);
        if (max_shrink >= 0.0f && max_shrink <= 1.0f) max_shrink += 2.0f;
    }
    }
    awq_err err = {{0}};
    int st;
    if (kind <= 4) {
        st = awq_pseudo_quantize_f32(NULL, NULL, N, K, g, bits, 1, &err);
        FZ_CHECK(st == AWQ_ERR_VALUE, "pseudo_quantize accepted kind %d (v=%lld)", kind, (long long)v);
        FZ_CHECK(fz_msg_ok(err.msg, sizeof err.msg), "error without a message");
        err.msg[0] = 0;
        st = awq_quantize_codes_f32(NULL, NULL, NULL, NULL, N, K, g, bits, 0, &err);
        FZ_CHECK(st == AWQ_ERR_VALUE, "quantize_codes accepted kind %d (v=%lld)", kind, (long long)v);
        FZ_CHECK(fz_msg_ok(err.msg, sizeof err.msg), "error without a message");
        err.msg[0] = 0;
    }
    st = awq_clip_search_f32(NULL, NULL, NULL, N, K, T, g, bits, 1, n_grid, max_shrink, &err);
    FZ_CHECK(st == AWQ_ERR_VALUE, "clip_search accepted kind %d (v=%lld)", kind, (long long)v);
    FZ_CHECK(fz_msg_ok(err.msg, sizeof err.msg), "error without a message");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_in in = fz_make(data, size);
    const int op = fz_u8(&in) % 3, flags = fz_u8(&in);
    in.raw_floats = flags & 1;
    if (op == 0) run_quantize(&in, flags);
    else if (op == 1) run_clip(&in);
    else run_bad(&in);
    return 0;
}
