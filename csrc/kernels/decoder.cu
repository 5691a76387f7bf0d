/* decoder.cu: the fused GPU decoder (contract in decoder_cuda.h).
 *
 * Kernels of the fused block, each replacing two to four unfused ops:
 *   embed_kernel         token ids (device) -> rows of the embedding table;
 *   add_rmsnorm_kernel   residual += x (rounded to dt, as the unfused add), then h = RMSNorm(residual);
 *   qkv_rope_kernel      split the q|k|v output per head; optional per-head RMSNorm (Qwen3); RoPE
 *                        with angles pos * inv_freq computed here in float64 (as the host tables)
 *                        from the device positions; q to its buffer, k and v into the cache at each
 *                        token's position; the cache length of each sequence for the decode kernel;
 *   silu_mul_cat_kernel  SiLU(gate) * up on the concatenated gate|up output;
 *   decode_attn_kernel   split-K attention of one new token per sequence against its cache rows
 *                        (flash-decoding): blocks (split, kv head, sequence), each warp streams keys
 *                        for all query heads of its kv head with an online softmax; partial (max,
 *                        sum, output) go to a workspace and decode_combine_kernel merges them;
 *   gather_last_kernel   last token row of each sequence, for the final norm and lm_head.
 * Prefill attention is the flash kernel of ops.cu over the cache (no S x S matrix).
 *
 * Rounding follows the unfused runtime (awq/runtime/layers.py over awq.gpu): every tensor is
 * rounded to dt where the unfused path stores it, so fused and unfused logits differ only by
 * summation order and the in-kernel RoPE angles (float64 here, float64 host tables there).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "awq_cuda.h"
#include "decoder_cuda.h"
#include "device_common.cuh"
#include "ops_cuda.h"
#include "w4a16_cuda.h"

namespace {

template <typename T> __device__ __forceinline__ float rnd(float x) { return to_f(from_f<T>(x)); }

template <typename T> __global__ void embed_kernel(const int32_t *ids, const T *table, T *x, int64_t D) {
    const int64_t m = blockIdx.x;
    const T *src = table + (int64_t)ids[m] * D;
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) x[m * D + c] = src[c];
}

/* add == NULL: h = RMSNorm(x) only. */
template <typename T>
__global__ void add_rmsnorm_kernel(T *x, const T *add, const float *w, T *h, int64_t D, float eps, float off) {
    const int64_t m = blockIdx.x;
    T *xr = x + m * D;
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
        float v = to_f(xr[c]);
        if (add) {
            v = rnd<T>(v + to_f(add[m * D + c]));
            xr[c] = from_f<T>(v);
        }
        ss += v * v;
    }
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)D + eps);
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) h[m * D + c] = from_f<T>(to_f(xr[c]) * inv * (w[c] + off));
}

#define QKV_WARPS 8
#define MAX_HD 256

/* Block (m, y) per token row m (sequence b = m / T, token t = m % T, position pos0[b] + t) and
 * QKV_WARPS heads of q|k|v, a warp per head. kc, vc: this layer's cache from the first row of the forward, [B, S, Hkv, hd]. */
template <typename T>
__global__ void __launch_bounds__(QKV_WARPS * 32)
    qkv_rope_kernel(const T *qkv, T *q, T *kc, T *vc, const int32_t *pos0, int64_t *kv_len, int64_t T_, int64_t S,
                    int Hq, int Hkv, int hd, int rot, const double *inv_freq, const float *q_norm,
                    const float *k_norm, float eps, float off) {
    __shared__ float buf[QKV_WARPS][MAX_HD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t m = blockIdx.x, b = m / T_, t = m % T_;
    const int64_t pos = (int64_t)pos0[b] + t;
    if (threadIdx.x == 0 && blockIdx.y == 0 && t == T_ - 1) kv_len[b] = pos + 1;
    const int H3 = Hq + 2 * Hkv, half = rot / 2;
    float *sb = buf[warp];
    for (int hh = blockIdx.y * QKV_WARPS + warp; hh < H3; hh += gridDim.y * QKV_WARPS) {
        const T *src = qkv + (m * H3 + hh) * (int64_t)hd;
        if (hh >= Hq + Hkv) { /* v: straight into the cache */
            T *dst = vc + ((b * S + pos) * Hkv + (hh - Hq - Hkv)) * (int64_t)hd;
            for (int i = lane; i < hd; i += 32) dst[i] = src[i];
            continue;
        }
        const bool is_q = hh < Hq;
        const float *nw = is_q ? q_norm : k_norm;
        float ss = 0.0f;
        for (int i = lane; i < hd; i += 32) {
            const float v = to_f(src[i]);
            sb[i] = v;
            ss += v * v;
        }
        if (nw) { /* per-head RMSNorm, rounded to dt as the unfused rmsnorm stores it */
            ss = warp_sum(ss);
            const float inv = 1.0f / sqrtf(ss / (float)hd + eps);
            for (int i = lane; i < hd; i += 32) sb[i] = rnd<T>(sb[i] * inv * (nw[i] + off));
        }
        __syncwarp();
        T *dst = is_q ? q + (m * Hq + hh) * (int64_t)hd : kc + ((b * S + pos) * Hkv + (hh - Hq)) * (int64_t)hd;
        for (int i = lane; i < hd; i += 32) {
            float y = sb[i];
            if (i < rot) {
                const int f = i < half ? i : i - half;
                double sd, cd;
                sincos((double)pos * inv_freq[f], &sd, &cd);
                const float c = (float)cd, s = (float)sd;
                y = i < half ? sb[i] * c - sb[i + half] * s : sb[i] * c + sb[i - half] * s;
            }
            dst[i] = from_f<T>(y);
        }
        __syncwarp(); /* sb is rewritten by the next head */
    }
}

template <typename T> __global__ void silu_mul_cat_kernel(const T *gu, T *y, int64_t M, int64_t F) {
    const int64_t n = M * F;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t m = i / F, f = i % F;
        const float g = to_f(gu[m * 2 * F + f]);
        y[i] = from_f<T>(g / (1.0f + expf(-g)) * to_f(gu[m * 2 * F + F + f]));
    }
}

template <typename T> __global__ void gather_last_kernel(const T *h, T *out, int64_t T_, int64_t D) {
    const int64_t b = blockIdx.x;
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) out[b * D + c] = h[(b * T_ + T_ - 1) * D + c];
}

/* ---- split-K decode attention
 * Grid (nsplit, Hkv, B), DA_WARPS warps. Block (c, hk, b) takes keys [c*chunk, (c+1)*chunk) of the
 * keys sequence b may see (j < kv_len[b], and j >= kv_len[b] - window with a sliding window) for
 * the G = Hq / Hkv query heads of kv head hk. Lane l holds elements [l*EPL, l*EPL + EPL) of a head
 * (one 4..16-byte load per key row and lane: coalesced rows). Each warp walks keys j0 + warp,
 * j0 + warp + DA_WARPS, ... with an online softmax in base 2; the warps' (max, sum, output) are
 * merged in shared memory and written to part[b][h][c] = (m, l, o[hd]) fp32 (o not normalised). */
#define DA_WARPS 4

template <typename T, int EPL, int GM>
__global__ void __launch_bounds__(DA_WARPS * 32)
    decode_attn_kernel(const T *q, const T *kc, const T *vc, const int64_t *kv_len, float *part, int64_t S,
                       int Hq, int Hkv, int hd, int chunk, int nsplit, float qscale, int64_t window) {
    __shared__ float sm_m[DA_WARPS][GM], sm_l[DA_WARPS][GM];
    __shared__ float sm_o[DA_WARPS][GM][EPL * 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int c = blockIdx.x, hk = blockIdx.y, G = Hq / Hkv;
    const int64_t b = blockIdx.z;
    const int64_t len = kv_len[b];
    int64_t lo = (int64_t)c * chunk, hi = lo + chunk;
    if (hi > len) hi = len;
    if (window > 0 && lo < len - window) lo = len - window;
    const int e0 = lane * EPL;

    float qr[GM][EPL], o[GM][EPL], mx[GM], ls[GM];
#pragma unroll
    for (int g = 0; g < GM; g++) {
        mx[g] = -INFINITY;
        ls[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; e++) {
            o[g][e] = 0.0f;
            qr[g][e] = (g < G && e0 + e < hd) ? to_f(q[(b * Hq + hk * G + g) * (int64_t)hd + e0 + e]) * qscale : 0.0f;
        }
    }
    for (int64_t j = lo + warp; j < hi; j += DA_WARPS) {
        const T *kr = kc + ((b * S + j) * Hkv + hk) * (int64_t)hd;
        const T *vr = vc + ((b * S + j) * Hkv + hk) * (int64_t)hd;
        float kv[EPL], vv[EPL];
#pragma unroll
        for (int e = 0; e < EPL; e++) {
            kv[e] = e0 + e < hd ? to_f(kr[e0 + e]) : 0.0f;
            vv[e] = e0 + e < hd ? to_f(vr[e0 + e]) : 0.0f;
        }
#pragma unroll
        for (int g = 0; g < GM; g++) {
            if (g >= G) break;
            float s = 0.0f;
#pragma unroll
            for (int e = 0; e < EPL; e++) s = fmaf(qr[g][e], kv[e], s);
            s = warp_sum(s);
            const float mn = fmaxf(mx[g], s);
            const float alpha = exp2f(mx[g] - mn), p = exp2f(s - mn);
            ls[g] = ls[g] * alpha + p;
            mx[g] = mn;
#pragma unroll
            for (int e = 0; e < EPL; e++) o[g][e] = fmaf(p, vv[e], o[g][e] * alpha);
        }
    }
#pragma unroll
    for (int g = 0; g < GM; g++) {
        if (lane == 0) {
            sm_m[warp][g] = mx[g];
            sm_l[warp][g] = ls[g];
        }
#pragma unroll
        for (int e = 0; e < EPL; e++) sm_o[warp][g][e0 + e] = o[g][e];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * (hd + 2); idx += blockDim.x) {
        const int g = idx / (hd + 2), i = idx % (hd + 2);
        float M = -INFINITY;
        for (int w = 0; w < DA_WARPS; w++) M = fmaxf(M, sm_m[w][g]);
        float acc = 0.0f;
        if (i == 0) {
            acc = M;
        } else if (M != -INFINITY) {
            for (int w = 0; w < DA_WARPS; w++) {
                const float f = exp2f(sm_m[w][g] - M);
                acc += f * (i == 1 ? sm_l[w][g] : sm_o[w][g][i - 2]);
            }
        }
        part[(((b * Hq + hk * G + g) * (int64_t)nsplit) + c) * (hd + 2) + i] = acc;
    }
}

/* Block per (head, sequence): out = sum_c 2^(m_c - M) o_c / sum_c 2^(m_c - M) l_c. */
template <typename T>
__global__ void decode_combine_kernel(const float *part, T *out, int Hq, int hd, int nsplit) {
    const int h = blockIdx.x;
    const int64_t b = blockIdx.y;
    const float *p = part + (b * Hq + h) * (int64_t)nsplit * (hd + 2);
    float M = -INFINITY;
    for (int c = 0; c < nsplit; c++) M = fmaxf(M, p[c * (hd + 2)]);
    float l = 0.0f;
    if (M != -INFINITY)
        for (int c = 0; c < nsplit; c++) l += exp2f(p[c * (hd + 2)] - M) * p[c * (hd + 2) + 1];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float acc = 0.0f;
        if (M != -INFINITY)
            for (int c = 0; c < nsplit; c++) acc += exp2f(p[c * (hd + 2)] - M) * p[c * (hd + 2) + 2 + i];
        out[(b * Hq + h) * (int64_t)hd + i] = from_f<T>(acc * inv);
    }
}

} // namespace

/* ================================================================ the decoder object */

struct awq_decoder {
    awq_cuda_ctx *ctx;
    awq_w4a16_ctx *w4;     /* W4A16 workspaces of prefill (grow with new shapes) */
    awq_w4a16_ctx *w4dec;  /* of the decode step only: sized on its warm-up call, never grown after
                              capture, so the graph's workspace pointers stay valid */
    gpublasHandle_t blas;
    void *blas_ws;
    gpuStream_t stream;
    awq_dec_config c;
    awq_dec_layer *layers;
    int sms;
    /* state */
    int64_t B, S, maxM, nsplit, chunk;
    struct buf {
        void *p;
        size_t n;
    } kc, vc, x, h, qkv, q, att, o, gu, act, hl, logits, ids, pos, kvlen, part;
    gpuGraphExec_t graph;
    int graph_warm;
};

#define BLAS_WS (32u << 20)

static void buf_free(awq_decoder *d, awq_decoder::buf *b) {
    if (b->p) awq_cuda_free(d->ctx, b->p, b->n);
    b->p = NULL;
    b->n = 0;
}

static void state_free(awq_decoder *d) {
    if (d->graph) gpuGraphExecDestroy(d->graph);
    d->graph = NULL;
    d->graph_warm = 0;
    awq_decoder::buf *all[] = {&d->kc, &d->vc, &d->x,      &d->h,   &d->qkv, &d->q,     &d->att, &d->o,
                               &d->gu, &d->act, &d->hl, &d->logits, &d->ids, &d->pos, &d->kvlen, &d->part};
    for (auto *b : all) buf_free(d, b);
    d->B = d->S = d->maxM = 0;
}

extern "C" void awq_decoder_free(awq_decoder *d) {
    if (!d) return;
    if (d->stream) gpuStreamSynchronize(d->stream);
    state_free(d);
    if (d->blas) gpublasDestroy(d->blas);
    if (d->blas_ws) awq_cuda_free(d->ctx, d->blas_ws, BLAS_WS);
    if (d->w4) awq_cuda_w4a16_ctx_free(d->w4);
    if (d->w4dec) awq_cuda_w4a16_ctx_free(d->w4dec);
    if (d->stream) gpuStreamDestroy(d->stream);
    free(d->layers);
    free(d);
}

static int check_linear(const char *what, int64_t i, const awq_dec_linear *l, int64_t K, int64_t N, awq_err *err) {
    if (!l->qweight_rp || !l->qzeros || !l->scales)
        return awq_set_err(err, AWQ_ERR_VALUE, "decoder layer %lld: %s has no weights", (long long)i, what);
    if (l->K != K || l->N != N)
        return awq_set_err(err, AWQ_ERR_VALUE, "decoder layer %lld: %s is %lld x %lld, expected %lld x %lld",
                           (long long)i, what, (long long)l->K, (long long)l->N, (long long)K, (long long)N);
    if (l->g <= 0 || K % l->g || l->g % 16)
        return awq_set_err(err, AWQ_ERR_VALUE, "decoder layer %lld: %s group size %lld (must divide %lld and be a "
                           "multiple of 16)", (long long)i, what, (long long)l->g, (long long)K);
    return AWQ_OK;
}

extern "C" int awq_decoder_new(awq_cuda_ctx *ctx, const awq_dec_config *cfg, const awq_dec_layer *layers,
                               awq_decoder **out, awq_err *err) {
    *out = NULL;
    const awq_dec_config *c = cfg;
    if (c->dt != AWQ_DT_F16 && c->dt != AWQ_DT_BF16)
        return awq_set_err(err, AWQ_ERR_VALUE, "decoder: activations must be float16 or bfloat16");
    if (c->L <= 0 || c->D <= 0 || c->Hq <= 0 || c->Hkv <= 0 || c->Hq % c->Hkv || c->hd <= 0 || c->hd > MAX_HD ||
        c->hd % 2 || c->rot < 0 || c->rot > c->hd || c->rot % 2 || c->F <= 0 || c->V <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "decoder: unsupported dimensions (L %lld, D %lld, heads %lld/%lld, "
                           "head dim %lld <= %d, rotary %lld)", (long long)c->L, (long long)c->D, (long long)c->Hq,
                           (long long)c->Hkv, (long long)c->hd, MAX_HD, (long long)c->rot);
    if (c->Hq / c->Hkv > (c->hd > 128 ? 8 : 16))
        return awq_set_err(err, AWQ_ERR_VALUE, "decoder: %lld query heads per kv head (at most 16, 8 with head "
                           "dim > 128)", (long long)(c->Hq / c->Hkv));
    for (int64_t i = 0; i < c->L; i++) {
        const awq_dec_layer *l = layers + i;
        int st;
        if ((st = check_linear("q|k|v", i, &l->qkv, c->D, (c->Hq + 2 * c->Hkv) * c->hd, err)) ||
            (st = check_linear("o", i, &l->o, c->Hq * c->hd, c->D, err)) ||
            (st = check_linear("gate|up", i, &l->gate_up, c->D, 2 * c->F, err)) ||
            (st = check_linear("down", i, &l->down, c->F, c->D, err)))
            return st;
        if (!l->in_norm || !l->post_norm || (!l->q_norm) != (!l->k_norm))
            return awq_set_err(err, AWQ_ERR_VALUE, "decoder layer %lld: missing norm weights", (long long)i);
    }
    awq_decoder *d = (awq_decoder *)calloc(1, sizeof *d);
    if (!d) return awq_set_err(err, AWQ_ERR_NOMEM, "decoder: out of host memory");
    d->ctx = ctx;
    d->c = *c;
    d->layers = (awq_dec_layer *)malloc(sizeof(awq_dec_layer) * (size_t)c->L);
    int st = AWQ_OK;
    if (!d->layers) {
        st = awq_set_err(err, AWQ_ERR_NOMEM, "decoder: out of host memory");
        goto fail;
    }
    memcpy(d->layers, layers, sizeof(awq_dec_layer) * (size_t)c->L);
    if ((st = awq_cuda_ctx_activate(ctx, err))) goto fail;
    {
        gpuError_t e = gpuStreamCreateWithFlags(&d->stream, gpuStreamNonBlocking);
        if (e != gpuSuccess) {
            d->stream = NULL;
            st = awq_set_err(err, AWQ_ERR_RUNTIME, GPU_API "StreamCreateWithFlags failed: %s", gpuGetErrorString(e));
            goto fail;
        }
        int dev = 0;
        gpuGetDevice(&dev);
        if (gpuDeviceGetAttribute(&d->sms, gpuDevAttrMultiProcessorCount, dev) != gpuSuccess) d->sms = 100;
    }
    if ((st = awq_cuda_w4a16_ctx_new(&d->w4, err)) || (st = awq_cuda_w4a16_ctx_new(&d->w4dec, err))) goto fail;
    {
        gpublasStatus_t bs = gpublasCreate(&d->blas);
        if (bs != GPUBLAS_STATUS_SUCCESS) {
            d->blas = NULL;
            st = awq_set_err(err, AWQ_ERR_RUNTIME, GPUBLAS_API "Create failed: %s", gpublasGetStatusString(bs));
            goto fail;
        }
    }
    if ((st = awq_cuda_alloc(ctx, BLAS_WS, "decoder cuBLAS workspace", &d->blas_ws, err))) goto fail;
    if (gpublasSetStream(d->blas, d->stream) != GPUBLAS_STATUS_SUCCESS ||
        gpublasSetWorkspace(d->blas, d->blas_ws, BLAS_WS) != GPUBLAS_STATUS_SUCCESS) {
        st = awq_set_err(err, AWQ_ERR_RUNTIME, "decoder: configuring the cuBLAS handle failed");
        goto fail;
    }
    *out = d;
    return AWQ_OK;
fail:
    awq_decoder_free(d);
    return st;
}

static int buf_alloc(awq_decoder *d, awq_decoder::buf *b, size_t n, const char *what, awq_err *err) {
    b->n = n ? n : 16;
    int st = awq_cuda_alloc(d->ctx, b->n, what, &b->p, err);
    if (st) b->n = 0;
    return st;
}

extern "C" int awq_decoder_state(awq_decoder *d, int64_t batch, int64_t max_len, int64_t max_tokens, awq_err *err) {
    const awq_dec_config *c = &d->c;
    if (batch <= 0 || max_len <= 0 || max_tokens <= 0 || max_tokens > (int64_t)INT32_MAX)
        return awq_set_err(err, AWQ_ERR_VALUE, "decoder state: batch %lld, max_len %lld, max_tokens %lld must be "
                           "positive", (long long)batch, (long long)max_len, (long long)max_tokens);
    int st = awq_cuda_ctx_activate(d->ctx, err);
    if (st) return st;
    gpuStreamSynchronize(d->stream);
    state_free(d);
    const size_t es = 2, M = (size_t)(max_tokens > batch ? max_tokens : batch);
    const size_t cache = (size_t)c->L * batch * max_len * c->Hkv * c->hd * es;
    /* split-K decode: about two blocks per SM over all (kv head, sequence) pairs, >= 32 keys each */
    int64_t ns = (2 * d->sms + batch * c->Hkv - 1) / (batch * c->Hkv);
    const int64_t ns_max = (max_len + 31) / 32;
    ns = ns < 1 ? 1 : (ns > ns_max ? ns_max : ns);
    d->chunk = (max_len + ns - 1) / ns;
    d->nsplit = (max_len + d->chunk - 1) / d->chunk;
    const int64_t H3 = c->Hq + 2 * c->Hkv;
    if ((st = buf_alloc(d, &d->kc, cache, "KV cache (keys)", err)) ||
        (st = buf_alloc(d, &d->vc, cache, "KV cache (values)", err)) ||
        (st = buf_alloc(d, &d->x, M * c->D * es, "decoder residual stream", err)) ||
        (st = buf_alloc(d, &d->h, M * c->D * es, "decoder normed activations", err)) ||
        (st = buf_alloc(d, &d->qkv, M * H3 * c->hd * es, "decoder q|k|v", err)) ||
        (st = buf_alloc(d, &d->q, M * c->Hq * c->hd * es, "decoder queries", err)) ||
        (st = buf_alloc(d, &d->att, M * c->Hq * c->hd * es, "decoder attention output", err)) ||
        (st = buf_alloc(d, &d->o, M * c->D * es, "decoder block output", err)) ||
        (st = buf_alloc(d, &d->gu, M * 2 * c->F * es, "decoder gate|up", err)) ||
        (st = buf_alloc(d, &d->act, M * c->F * es, "decoder MLP activations", err)) ||
        (st = buf_alloc(d, &d->hl, (size_t)batch * c->D * es, "decoder last rows", err)) ||
        (st = buf_alloc(d, &d->logits, (size_t)batch * c->V * 4, "decoder logits", err)) ||
        (st = buf_alloc(d, &d->ids, M * 4, "decoder token ids", err)) ||
        (st = buf_alloc(d, &d->pos, (size_t)batch * 4, "decoder positions", err)) ||
        (st = buf_alloc(d, &d->kvlen, (size_t)batch * 8, "decoder cache lengths", err)) ||
        (st = buf_alloc(d, &d->part, (size_t)batch * c->Hq * d->nsplit * (c->hd + 2) * 4,
                        "decoder attention partials", err))) {
        state_free(d);
        return st;
    }
    d->B = batch;
    d->S = max_len;
    d->maxM = (int64_t)M;
    return AWQ_OK;
}

extern "C" int64_t awq_decoder_state_bytes(const awq_decoder *d) {
    const awq_decoder::buf *all[] = {&d->kc, &d->vc, &d->x,      &d->h,   &d->qkv, &d->q,     &d->att, &d->o,
                                     &d->gu, &d->act, &d->hl, &d->logits, &d->ids, &d->pos, &d->kvlen, &d->part};
    int64_t n = BLAS_WS;
    for (auto *b : all) n += (int64_t)b->n;
    return n;
}

#define LAUNCH_OK(what)                                                                            \
    do {                                                                                           \
        gpuError_t e_ = gpuGetLastError();                                                         \
        if (e_ != gpuSuccess)                                                                      \
            return awq_set_err(err, AWQ_ERR_RUNTIME, "launch of %s failed: %s", what, gpuGetErrorString(e_)); \
    } while (0)

static int w4(awq_decoder *d, const awq_dec_linear *l, const void *x, void *y, int64_t M, int decode,
              awq_err *err) {
    const int adt = d->c.dt == AWQ_DT_F16 ? AWQ_W4_F16 : AWQ_W4_BF16;
    const int sdt = l->s_dtype == AWQ_DT_F16 ? AWQ_W4_F16 : AWQ_W4_BF16;
    return awq_cuda_w4a16(x, adt, l->qweight_rp, l->qzeros, l->scales, sdt, l->bias, y, M, l->K, l->N, l->g,
                          AWQ_PATH_AUTO, NULL, decode ? d->w4dec : d->w4, d->stream, NULL, err);
}

/* The kernels of one forward over device inputs (ids, pos already in place). q_pos0: the shared
 * first position of a prefill (T > 1). */
template <typename T>
static int run(awq_decoder *d, int64_t row0, int64_t B, int64_t T_, int64_t q_pos0, awq_err *err) {
    const awq_dec_config *c = &d->c;
    gpuStream_t s = d->stream;
    const int64_t M = B * T_, D = c->D, hd = c->hd;
    const size_t layer_cache = (size_t)d->B * d->S * c->Hkv * hd;
    const size_t row_off = (size_t)row0 * d->S * c->Hkv * hd;
    T *x = (T *)d->x.p, *h = (T *)d->h.p, *o = (T *)d->o.p;
    const int nt = D >= 4096 ? 1024 : D >= 1024 ? 256 : 128;
    const float scale = 1.0f / sqrtf((float)hd);
    const int dec = T_ == 1 && row0 == 0 && B == d->B; /* the (graph-captured) decode step */
    int st;

    embed_kernel<T><<<(unsigned)M, 256, 0, s>>>((const int32_t *)d->ids.p, (const T *)c->embed, x, D);
    LAUNCH_OK("embed_kernel");
    for (int64_t li = 0; li < c->L; li++) {
        const awq_dec_layer *l = d->layers + li;
        T *kc = (T *)d->kc.p + li * layer_cache + row_off, *vc = (T *)d->vc.p + li * layer_cache + row_off;
        add_rmsnorm_kernel<T><<<(unsigned)M, nt, 0, s>>>(x, li ? o : NULL, l->in_norm, h, D, c->eps, c->norm_offset);
        LAUNCH_OK("add_rmsnorm_kernel");
        if ((st = w4(d, &l->qkv, h, d->qkv.p, M, dec, err))) return st;
        const unsigned hblocks = (unsigned)((c->Hq + 2 * c->Hkv + QKV_WARPS - 1) / QKV_WARPS);
        qkv_rope_kernel<T><<<dim3((unsigned)M, hblocks), QKV_WARPS * 32, 0, s>>>(
            (const T *)d->qkv.p, (T *)d->q.p, kc, vc, (const int32_t *)d->pos.p, (int64_t *)d->kvlen.p, T_, d->S,
            (int)c->Hq, (int)c->Hkv, (int)hd, (int)c->rot, c->inv_freq, l->q_norm, l->k_norm, c->eps, c->norm_offset);
        LAUNCH_OK("qkv_rope_kernel");
        if (T_ == 1) {
            const dim3 grid((unsigned)d->nsplit, (unsigned)c->Hkv, (unsigned)B);
            const int G = (int)(c->Hq / c->Hkv);
            const float qs = scale * 1.4426950408889634f;
#define DA(EPL, GM)                                                                                \
    decode_attn_kernel<T, EPL, GM><<<grid, DA_WARPS * 32, 0, s>>>(                                 \
        (const T *)d->q.p, kc, vc, (const int64_t *)d->kvlen.p, (float *)d->part.p, d->S, (int)c->Hq, \
        (int)c->Hkv, (int)hd, (int)d->chunk, (int)d->nsplit, qs, c->window)
#define DA_G(EPL, GBIG)                                                                            \
    do {                                                                                           \
        if (G <= 1) DA(EPL, 1);                                                                    \
        else if (G <= 2) DA(EPL, 2);                                                               \
        else if (G <= 4) DA(EPL, 4);                                                               \
        else DA(EPL, GBIG);                                                                        \
    } while (0)
            /* shared memory of the warp merge: DA_WARPS x GM x 32 EPL floats <= 32 KB */
            if (hd <= 64) DA_G(2, 16);
            else if (hd <= 128) DA_G(4, 16);
            else DA_G(8, 8);
#undef DA_G
#undef DA
            LAUNCH_OK("decode_attn_kernel");
            decode_combine_kernel<T><<<dim3((unsigned)c->Hq, (unsigned)B), 128, 0, s>>>(
                (const float *)d->part.p, (T *)d->att.p, (int)c->Hq, (int)hd, (int)d->nsplit);
            LAUNCH_OK("decode_combine_kernel");
        } else {
            if ((st = awq_cuda_attention(d->ctx, c->dt, d->q.p, kc, vc, d->att.p, B, T_, d->S, c->Hq, c->Hkv, hd,
                                         scale, q_pos0, c->window, NULL, s, err)))
                return st;
        }
        if ((st = w4(d, &l->o, d->att.p, o, M, dec, err))) return st;
        add_rmsnorm_kernel<T><<<(unsigned)M, nt, 0, s>>>(x, o, l->post_norm, h, D, c->eps, c->norm_offset);
        LAUNCH_OK("add_rmsnorm_kernel");
        if ((st = w4(d, &l->gate_up, h, d->gu.p, M, dec, err))) return st;
        silu_mul_cat_kernel<T><<<grid_for(M * c->F, 256), 256, 0, s>>>((const T *)d->gu.p, (T *)d->act.p, M, c->F);
        LAUNCH_OK("silu_mul_cat_kernel");
        if ((st = w4(d, &l->down, d->act.p, o, M, dec, err))) return st;
    }
    add_rmsnorm_kernel<T><<<(unsigned)M, nt, 0, s>>>(x, o, c->final_norm, h, D, c->eps, c->norm_offset);
    LAUNCH_OK("add_rmsnorm_kernel");
    gather_last_kernel<T><<<(unsigned)B, 256, 0, s>>>(h, (T *)d->hl.p, T_, D);
    LAUNCH_OK("gather_last_kernel");
    const float one = 1.0f, zero = 0.0f;
    const gpuDataType_t ty = c->dt == AWQ_DT_F16 ? GPU_R_16F : GPU_R_16BF;
    AWQ_GPUBLAS_CHECK(gpublasGemmEx(d->blas, GPUBLAS_OP_T, GPUBLAS_OP_N, (int)c->V, (int)B, (int)D, &one, c->lm_head,
                                    ty, (int)D, d->hl.p, ty, (int)D, &zero, d->logits.p, GPU_R_32F, (int)c->V,
                                    GPUBLAS_COMPUTE_32F, GPUBLAS_GEMM_DEFAULT),
                      err);
    return AWQ_OK;
}

static int run_any(awq_decoder *d, int64_t row0, int64_t B, int64_t T_, int64_t q_pos0, awq_err *err) {
    return d->c.dt == AWQ_DT_F16 ? run<__half>(d, row0, B, T_, q_pos0, err)
                                 : run<gpu_bf16>(d, row0, B, T_, q_pos0, err);
}

extern "C" int awq_decoder_forward(awq_decoder *d, int64_t row0, int64_t B, int64_t T_, const int32_t *ids,
                                   const int32_t *pos0, float *logits, int use_graph, awq_err *err) {
    const awq_dec_config *c = &d->c;
    if (!d->B) return awq_set_err(err, AWQ_ERR_VALUE, "decoder: no state (call awq_decoder_state first)");
    if (B <= 0 || T_ <= 0 || row0 < 0 || row0 + B > d->B)
        return awq_set_err(err, AWQ_ERR_VALUE, "decoder: rows %lld..%lld outside the %lld cache rows",
                           (long long)row0, (long long)(row0 + B - 1), (long long)d->B);
    if (B * T_ > d->maxM)
        return awq_set_err(err, AWQ_ERR_VALUE, "decoder: %lld tokens in one forward, the workspaces hold %lld",
                           (long long)(B * T_), (long long)d->maxM);
    for (int64_t b = 0; b < B; b++) {
        if (pos0[b] < 0 || pos0[b] + T_ > d->S)
            return awq_set_err(err, AWQ_ERR_VALUE, "decoder: sequence %lld would hold %lld tokens, the KV cache "
                               "holds %lld (max_seq_len)", (long long)(row0 + b), (long long)(pos0[b] + T_),
                               (long long)d->S);
        if (T_ > 1 && pos0[b] != pos0[0])
            return awq_set_err(err, AWQ_ERR_VALUE, "decoder: a multi-token forward needs one start position for "
                               "all sequences");
    }
    for (int64_t i = 0; i < B * T_; i++)
        if (ids[i] < 0 || ids[i] >= c->V)
            return awq_set_err(err, AWQ_ERR_VALUE, "decoder: token id %d outside the vocabulary (%lld)", ids[i],
                               (long long)c->V);
    int st = awq_cuda_ctx_activate(d->ctx, err);
    if (st) return st;
    gpuStream_t s = d->stream;
    AWQ_CUDA_CHECK(gpuMemcpyAsync(d->ids.p, ids, (size_t)(B * T_) * 4, gpuMemcpyHostToDevice, s), err);
    AWQ_CUDA_CHECK(gpuMemcpyAsync(d->pos.p, pos0, (size_t)B * 4, gpuMemcpyHostToDevice, s), err);
    const int graphable = use_graph && T_ == 1 && row0 == 0 && B == d->B;
    if (graphable && d->graph) {
        AWQ_CUDA_CHECK(gpuGraphLaunch(d->graph, s), err);
    } else if (graphable && d->graph_warm) {
        gpuGraph_t g = NULL;
        AWQ_CUDA_CHECK(gpuStreamBeginCapture(s, gpuStreamCaptureModeThreadLocal), err);
        st = run_any(d, 0, B, 1, 0, err);
        gpuError_t e = gpuStreamEndCapture(s, &g);
        if (st) {
            if (g) gpuGraphDestroy(g);
            return st;
        }
        if (e != gpuSuccess) return awq_set_err(err, AWQ_ERR_RUNTIME, GPU_API "StreamEndCapture failed: %s",
                                                gpuGetErrorString(e));
        e = gpuGraphInstantiate(&d->graph, g);
        gpuGraphDestroy(g);
        if (e != gpuSuccess) {
            d->graph = NULL;
            return awq_set_err(err, AWQ_ERR_RUNTIME, GPU_API "GraphInstantiate failed: %s", gpuGetErrorString(e));
        }
        AWQ_CUDA_CHECK(gpuGraphLaunch(d->graph, s), err);
    } else {
        if ((st = run_any(d, row0, B, T_, pos0[0], err))) return st;
        if (graphable) d->graph_warm = 1;
    }
    AWQ_CUDA_CHECK(gpuMemcpyAsync(logits, d->logits.p, (size_t)B * c->V * 4, gpuMemcpyDeviceToHost, s), err);
    AWQ_CUDA_CHECK(gpuStreamSynchronize(s), err);
    return AWQ_OK;
}
