/* memory.cu: the per-device context of the GPU backend: a caching allocator over plain gpuMalloc,
 * copies, stream helpers and the lazily created cuBLAS handle (contracts in ops_cuda.h).
 *
 * Why a cache: calibration allocates and drops the same activation shapes layer after layer, and
 * gpuMalloc / gpuFree synchronize the device and cost tens of microseconds each. Free lists are
 * keyed by size class, so a block is reused only for requests of its own class (no splitting, no
 * fragmentation bookkeeping); empty_cache() gives everything cached back to the driver.
 */
#include <stdio.h>

#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "awq_cuda.h"
#include "ops_cuda.h"

struct awq_cuda_ctx {
    int device;
    std::mutex mu;                                             /* guards free_lists and st */
    std::unordered_map<size_t, std::vector<void *>> free_lists; /* size class -> cached blocks */
    awq_cuda_mem_stats st;
    gpublasHandle_t blas; /* NULL until the first dense linear */
};

/* ---------------------------------------------------------------- dtypes */

extern "C" int awq_dtype_size(int dt) {
    switch (dt) {
    case AWQ_DT_F32: return 4;
    case AWQ_DT_F16: return 2;
    case AWQ_DT_BF16: return 2;
    case AWQ_DT_I32: return 4;
    case AWQ_DT_I64: return 8;
    case AWQ_DT_U8: return 1;
    default: return 0;
    }
}

extern "C" const char *awq_dtype_name(int dt) {
    switch (dt) {
    case AWQ_DT_F32: return "float32";
    case AWQ_DT_F16: return "float16";
    case AWQ_DT_BF16: return "bfloat16";
    case AWQ_DT_I32: return "int32";
    case AWQ_DT_I64: return "int64";
    case AWQ_DT_U8: return "uint8";
    default: return "unknown dtype";
    }
}

/* ---------------------------------------------------------------- context */

extern "C" int awq_cuda_ctx_create(int device, awq_cuda_ctx **out, awq_err *err) {
    *out = NULL;
    int count = 0;
    AWQ_CUDA_CHECK(gpuGetDeviceCount(&count), err);
    if (device < 0 || device >= count)
        return awq_set_err(err, AWQ_ERR_VALUE, "CUDA device %d does not exist (%d device%s visible)",
                           device, count, count == 1 ? "" : "s");
    AWQ_CUDA_CHECK(gpuSetDevice(device), err);
    awq_cuda_ctx *ctx = new (std::nothrow) awq_cuda_ctx();
    if (!ctx) return awq_set_err(err, AWQ_ERR_NOMEM, "out of host memory for a CUDA context");
    ctx->device = device;
    ctx->st = awq_cuda_mem_stats{};
    ctx->blas = NULL;
    *out = ctx;
    return AWQ_OK;
}

extern "C" void awq_cuda_ctx_destroy(awq_cuda_ctx *ctx) {
    if (!ctx) return;
    awq_err err;
    (void)awq_cuda_empty_cache(ctx, &err);
    if (ctx->blas) {
        if (gpuSetDevice(ctx->device) == gpuSuccess) gpublasDestroy(ctx->blas);
    }
    delete ctx;
}

extern "C" int awq_cuda_ctx_device(const awq_cuda_ctx *ctx) { return ctx->device; }

extern "C" int awq_cuda_ctx_activate(awq_cuda_ctx *ctx, awq_err *err) {
    AWQ_CUDA_CHECK(gpuSetDevice(ctx->device), err);
    return AWQ_OK;
}

extern "C" int awq_cuda_ctx_blas(awq_cuda_ctx *ctx, void **handle, awq_err *err) {
    std::lock_guard<std::mutex> lock(ctx->mu);
    if (!ctx->blas) {
        AWQ_CUDA_CHECK(gpuSetDevice(ctx->device), err);
        gpublasStatus_t s = gpublasCreate(&ctx->blas);
        if (s != GPUBLAS_STATUS_SUCCESS) {
            ctx->blas = NULL;
            return awq_set_err(err, AWQ_ERR_RUNTIME, GPUBLAS_API "Create failed on device %d: %s",
                               ctx->device, gpublasGetStatusString(s));
        }
    }
    *handle = (void *)ctx->blas;
    return AWQ_OK;
}

/* ---------------------------------------------------------------- caching allocator */

/* Rounds up to a multiple of a quarter of the request's power of two (<= 25% waste), with the
 * step clamped to [512 B, 2 MiB] so large blocks waste at most 2 MiB. */
extern "C" size_t awq_cuda_size_class(size_t n) {
    if (n <= 512) return 512;
    int k = 63 - __builtin_clzll((unsigned long long)(n - 1)); /* 2^k <= n-1 < 2^(k+1) */
    size_t step = k >= 2 ? (size_t)1 << (k - 2) : 1;
    if (step < 512) step = 512;
    if (step > ((size_t)2 << 20)) step = (size_t)2 << 20;
    size_t r = (n + step - 1) / step * step;
    return r < n ? n : r; /* overflow guard: n near SIZE_MAX is left as is (gpuMalloc refuses it) */
}

static void note_alloc(awq_cuda_ctx *ctx, size_t cls, size_t nbytes) {
    awq_cuda_mem_stats *s = &ctx->st;
    s->in_use += (int64_t)cls;
    s->requested += (int64_t)nbytes;
    s->reserved = s->in_use + s->cached;
    if (s->in_use > s->peak_in_use) s->peak_in_use = s->in_use;
    if (s->reserved > s->peak_reserved) s->peak_reserved = s->reserved;
}

/* gpuFree of every cached block; caller holds ctx->mu and has made the device current. */
static gpuError_t release_cached_locked(awq_cuda_ctx *ctx) {
    gpuError_t first = gpuSuccess;
    for (auto &kv : ctx->free_lists) {
        for (void *p : kv.second) {
            gpuError_t e = gpuFree(p);
            if (e != gpuSuccess && first == gpuSuccess) first = e;
            ctx->st.cached -= (int64_t)kv.first;
            ctx->st.n_cuda_free++;
        }
        kv.second.clear();
    }
    ctx->free_lists.clear();
    ctx->st.reserved = ctx->st.in_use + ctx->st.cached;
    return first;
}

static void format_bytes(char *buf, size_t len, double b) {
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    while (b >= 1024.0 && u < 5) {
        b /= 1024.0;
        u++;
    }
    snprintf(buf, len, "%.1f %s", b, unit[u]);
}

extern "C" int awq_cuda_alloc(awq_cuda_ctx *ctx, size_t nbytes, const char *what, void **ptr,
                              awq_err *err) {
    *ptr = NULL;
    if (nbytes == 0) nbytes = 1; /* every tensor owns a distinct address, empty ones too */
    const size_t cls = awq_cuda_size_class(nbytes);
    std::lock_guard<std::mutex> lock(ctx->mu);
    ctx->st.n_alloc++;
    auto it = ctx->free_lists.find(cls);
    if (it != ctx->free_lists.end() && !it->second.empty()) {
        *ptr = it->second.back();
        it->second.pop_back();
        ctx->st.cached -= (int64_t)cls;
        ctx->st.n_cache_hit++;
        note_alloc(ctx, cls, nbytes);
        return AWQ_OK;
    }
    AWQ_CUDA_CHECK(gpuSetDevice(ctx->device), err);
    gpuError_t e = gpuMalloc(ptr, cls);
    if (e == gpuErrorMemoryAllocation && ctx->st.cached > 0) {
        (void)gpuGetLastError(); /* clear the sticky-free error state before retrying */
        (void)release_cached_locked(ctx);
        e = gpuMalloc(ptr, cls);
    }
    if (e != gpuSuccess) {
        (void)gpuGetLastError();
        *ptr = NULL;
        char req[32], used[32];
        format_bytes(req, sizeof req, (double)nbytes);
        format_bytes(used, sizeof used, (double)ctx->st.in_use);
        size_t free_b = 0, total_b = 0;
        char freebuf[32] = "?", totbuf[32] = "?";
        if (gpuMemGetInfo(&free_b, &total_b) == gpuSuccess) {
            format_bytes(freebuf, sizeof freebuf, (double)free_b);
            format_bytes(totbuf, sizeof totbuf, (double)total_b);
        } else {
            (void)gpuGetLastError();
        }
        return awq_set_err(err, e == gpuErrorMemoryAllocation ? AWQ_ERR_NOMEM : AWQ_ERR_RUNTIME,
                           GPU_API "Malloc(%zu bytes = %s) for %s failed on device %d: %s (this "
                           "context holds %s in use; device free %s of %s)",
                           nbytes, req, what ? what : "a GPU buffer", ctx->device,
                           gpuGetErrorString(e), used, freebuf, totbuf);
    }
    ctx->st.n_cuda_malloc++;
    note_alloc(ctx, cls, nbytes);
    return AWQ_OK;
}

extern "C" void awq_cuda_free(awq_cuda_ctx *ctx, void *ptr, size_t nbytes) {
    if (!ptr) return;
    if (nbytes == 0) nbytes = 1;
    const size_t cls = awq_cuda_size_class(nbytes);
    std::lock_guard<std::mutex> lock(ctx->mu);
    ctx->free_lists[cls].push_back(ptr);
    ctx->st.in_use -= (int64_t)cls;
    ctx->st.requested -= (int64_t)nbytes;
    ctx->st.cached += (int64_t)cls;
    ctx->st.reserved = ctx->st.in_use + ctx->st.cached;
}

extern "C" int awq_cuda_empty_cache(awq_cuda_ctx *ctx, awq_err *err) {
    std::lock_guard<std::mutex> lock(ctx->mu);
    if (ctx->st.cached == 0) return AWQ_OK;
    AWQ_CUDA_CHECK(gpuSetDevice(ctx->device), err);
    gpuError_t e = release_cached_locked(ctx);
    if (e != gpuSuccess)
        return awq_set_err(err, AWQ_ERR_RUNTIME, GPU_API "Free of cached blocks failed on device %d: %s",
                           ctx->device, gpuGetErrorString(e));
    return AWQ_OK;
}

extern "C" void awq_cuda_mem_stats_get(awq_cuda_ctx *ctx, awq_cuda_mem_stats *out) {
    std::lock_guard<std::mutex> lock(ctx->mu);
    *out = ctx->st;
}

/* ---------------------------------------------------------------- copies and streams */

extern "C" int awq_cuda_copy(awq_cuda_ctx *ctx, void *dst, const void *src, size_t nbytes,
                             int kind, void *stream, awq_err *err) {
    gpuStream_t s = (gpuStream_t)stream;
    if (kind < AWQ_COPY_H2D || kind > AWQ_COPY_D2D)
        return awq_set_err(err, AWQ_ERR_VALUE, "copy: unknown kind %d", kind);
    if (nbytes == 0) return AWQ_OK;
    const gpuMemcpyKind k = kind == AWQ_COPY_H2D   ? gpuMemcpyHostToDevice
                             : kind == AWQ_COPY_D2H ? gpuMemcpyDeviceToHost
                                                    : gpuMemcpyDeviceToDevice;
    AWQ_CUDA_CHECK(gpuSetDevice(ctx->device), err);
    AWQ_CUDA_CHECK(gpuMemcpyAsync(dst, src, nbytes, k, s), err);
    if (kind != AWQ_COPY_D2D) AWQ_CUDA_CHECK(gpuStreamSynchronize(s), err);
    return AWQ_OK;
}

extern "C" int awq_cuda_memset(awq_cuda_ctx *ctx, void *ptr, int byte, size_t nbytes, void *stream,
                               awq_err *err) {
    if (nbytes == 0) return AWQ_OK;
    AWQ_CUDA_CHECK(gpuSetDevice(ctx->device), err);
    AWQ_CUDA_CHECK(gpuMemsetAsync(ptr, byte, nbytes, (gpuStream_t)stream), err);
    return AWQ_OK;
}

extern "C" int awq_cuda_stream_sync(awq_cuda_ctx *ctx, void *stream, awq_err *err) {
    AWQ_CUDA_CHECK(gpuSetDevice(ctx->device), err);
    AWQ_CUDA_CHECK(gpuStreamSynchronize((gpuStream_t)stream), err);
    return AWQ_OK;
}

extern "C" int awq_cuda_stream_wait(awq_cuda_ctx *ctx, void *waiter, void *signaler, awq_err *err) {
    if (waiter == signaler) return AWQ_OK;
    AWQ_CUDA_CHECK(gpuSetDevice(ctx->device), err);
    gpuEvent_t ev;
    AWQ_CUDA_CHECK(gpuEventCreateWithFlags(&ev, gpuEventDisableTiming), err);
    gpuError_t e = gpuEventRecord(ev, (gpuStream_t)signaler);
    if (e == gpuSuccess) e = gpuStreamWaitEvent((gpuStream_t)waiter, ev, 0);
    gpuEventDestroy(ev); /* safe while pending: resources are released once the event completes */
    AWQ_CUDA_CHECK(e, err);
    return AWQ_OK;
}
