/* ops.c: dense fp32 ops of the decoder forward (see ops.h for the contracts). */
#include "ops.h"

#include <math.h>
#include <stdlib.h>

int awq_abs_mean_f32(const float *x, float *out, int64_t M, int64_t K, awq_err *err) {
    if (M <= 0 || K <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "abs_mean: empty input (M=%lld, K=%lld)",
                           (long long)M, (long long)K);
#pragma omp parallel for schedule(static)
    for (int64_t k0 = 0; k0 < K; k0 += 64) {
        int64_t kn = K - k0 < 64 ? K - k0 : 64;
        double acc[64] = {0};
        for (int64_t m = 0; m < M; m++) {
            const float *row = x + m * K + k0;
            for (int64_t j = 0; j < kn; j++) acc[j] += fabsf(row[j]);
        }
        for (int64_t j = 0; j < kn; j++) out[k0 + j] = (float)(acc[j] / (double)M);
    }
    return AWQ_OK;
}
