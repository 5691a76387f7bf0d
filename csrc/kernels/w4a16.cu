/* w4a16.cu: W4A16 matmul kernels for NVIDIA GPUs (sm_80 and newer), behind w4a16_cuda.h.
 *
 * y[M, N] = x[M, K] @ W + bias, W[k, n] = (q[k, n] - z[k/g, n]) * s[k/g, n], fp32 accumulation.
 *
 * ---- Why these kernels -------------------------------------------------------------------------
 * Up to M ~ 64 the product is bound by the bytes of W (0.52 B per weight at g = 128): the kernel is
 * a stream. MMA path (k_gemm): a block of wn warps owns 64 * wn output features and a range of K;
 * 64-k chunks of its weights, the matching rows of x, scales and zeros go through a several-stage
 * cp.async pipeline in shared memory (no registers held by loads in flight, one barrier per chunk). Each weight byte is
 * read once and decoded in registers by the one warp that uses it. The tensor cores run "swapped":
 * W^T is the 16 x 16 A operand of mma.m16n8k16 and up to 8 tokens are the columns of B, so small M
 * wastes only idle tensor-core slots, and accumulation is fp32 for free.
 * Work is scheduled stream-K: (tile, chunk) units cut into equal ranges, one per resident block,
 * so every SM streams to the end on any shape; tiles split between blocks are summed from a
 * workspace by the last block in a fixed order (deterministic). Blocks that share a weight slice
 * for different 64-token blocks run next to each other, so larger M re-reads W from L2.
 * For large M the product is bound by tensor-core math and mma.sync cannot match cuBLAS's wgmma on
 * Hopper; there the weight is dequantized in column slabs to the activation dtype and multiplied
 * with cuBLAS (fp32 accumulation).
 *
 * ---- The decode GEMV kernel (path GEMV, M <= 8) ------------------------------------------------
 * At decode sizes nothing is reused from shared memory and the layer is a stream of weight bytes:
 * what counts is bytes in flight, SM instructions per byte and a short fill / tail (a 4096 x 4096
 * layer is 8.7 MB: under 3 us of DRAM time on an H100). k_gemv has no cp.async pipeline and no
 * stream-K. A warp owns a column slice of 2 n-tiles (32 features) and a set of 64-k chunks, and works
 * in rounds: all loads of a round first (UK chunks x 2 tiles: 2 UK independent 16-byte
 * ld.global.nc per lane, 8 at UK = 4, the default, bypassing L1; the pieces' scales, zero words and
 * x fragments, which hit L1 / L2), then the decode and the dot products. Each weight load of a warp
 * is one 512-byte tile and the two tiles of a chunk are adjacent (1 KB contiguous); the block's warps
 * take interleaved chunks of the block's range, so a block reads neighbouring chunk rows.
 * Dot products: on NVIDIA with the tensor cores, exactly as the MMA path (engine 1): the lane piece
 * decodes (F16 / BF16 dequant) straight into the A fragments of four m16n8k16 mma, B holds the
 * tokens (lane (gq, tq) loads x[token gq][64 kc + 16 tq .. + 15], 32 bytes, zero for gq >= M).
 * Per 16-byte piece that is 52 decode instructions + 4 mma for any M <= 8 (the whole round loop:
 * ~85 SASS instructions per piece, fp16, sm_90, UK = 4; loads are unconditional from clamped valid
 * addresses and the group index advances without divisions). CUDA-core fp32 FMAs
 * (engine 2, the only one without PTX) add 32 half -> float conversions + 32 M FMAs per piece: about
 * 2.2x the instructions at M = 1 and 4x at M = 4, while an H100 SM must retire a 512-byte tile every
 * ~40 cycles to keep up with DRAM; the FMA engine is kept for portability and comparison.
 * Reduction, deterministic: a warp sums its chunks in order (FMA engine: then a fixed shuffle sum over
 * the four k-lanes tq); the block's warps add their 32 x M sums through shared memory in warp order;
 * when the layer has too few column slices to fill the chip, S blocks per slice split K (context
 * workspace: each writes its sums to slot (slice, s); the last block of the slice to finish, found
 * with an atomic counter that it resets to zero for the next call or graph replay, adds the S slots
 * in slot order). y (+ bias) is rounded once. Without a context S = 1 (no workspace).
 * Launch (plan_gemv): 4 warps per block (8 without a context), UK = 4, and S the largest number of
 * splits for which the grid (slices x S) still fits on the chip at once (occupancy x SMs), but every
 * warp at least one full round. Bigger layers (more slices than resident blocks) run S = 1 in
 * several waves: each wave still keeps far more than the ~3 MB needed in flight.
 * awq_w4a16_cfg on this path: wn warps per block (1, 2, 4, 8), blocks the grid (slices x S; a given
 * value is rounded up to whole splits per slice, at most one chunk per split), stages the chunks per
 * warp and round UK (2, 4, 8), tm the engine (1 mma, 2 FMA). The 32-bit chunk-row stride limits this
 * path to N < 2^27.
 *
 * ---- The repacked layout "RP16x64" -------------------------------------------------------------
 * Made once at load time from the checkpoint's qweight [K, N/8] (awq_cuda_w4a16_repack). W is cut
 * into tiles of 16 output features x 64 input features; NT = ceil(N/16), KC = ceil(K/64), padding
 * holds code 0. Tile (nt, kc) is 512 bytes at byte offset 512 * (kc * NT + nt): chunk-major, so a
 * block's tiles of one chunk are one contiguous run (one stage of the pipeline) and blocks on the
 * same chunk read neighbouring memory. (A tile-major order measured the same on an H100.)
 * Inside a tile, lane L = 4*gq + tq (gq = 0..7, tq = 0..3) owns 16 bytes = 4 words, word st = 0..3
 * (one mma k-step each). It holds features f0 = 2*gq and f1 = 2*gq + 1 (relative to 16*nt) at
 * inputs k = 16*tq + 4*st + e, e = 0..3 (relative to 64*kc), as
 *     nibble 0: (k+0, f0)  nibble 4: (k+1, f0)  nibble 1: (k+0, f1)  nibble 5: (k+1, f1)
 *     nibble 2: (k+2, f0)  nibble 6: (k+3, f0)  nibble 3: (k+2, f1)  nibble 7: (k+3, f1)
 * i.e. nibble = 4*(e & 1) + 2*(e >> 1) + (f - f0).
 * Why: the magic-number conversion (below) turns nibbles {0,4}, {1,5}, {2,6}, {3,7} into half2
 * pairs, and those pairs are exactly the mma A-fragment registers a0..a3 of lane L when A row gq is
 * feature f0, A row gq+8 is feature f1, and the mma's logical k (2tq, 2tq+1, 2tq+8, 2tq+9) of step
 * st is the physical k (16tq+4st, +1, +2, +3). With that k order the B fragments of one token for a
 * whole chunk are x[token][64kc + 16tq .. +15]: two 16-byte loads. A lane's two features are
 * adjacent, so its scales are one half2 load and its zeros one word of qzeros (features 2gq, 2gq+1
 * sit at nibbles m and m+4 of word n/8, m = gq % 4: the same {i, i+4} pairing).
 * qzeros and scales keep the checkpoint layout.
 *
 * ---- int4 -> 16-bit with LOP3 and a magic exponent (FasterTransformer, arXiv 2211.10017) -------
 * fp16: (w & 0x000f000f) | 0x64006400 reads as the half2 (1024 + q_lo, 1024 + q_hi): 1024 has an
 * ulp of 1, so the nibble lands in the mantissa. The nibbles at bits 4..7 are taken in place as
 * 1024 + 16q and brought back with one fma by 1/16. The zero is converted the same way, so
 * (1024+q) - (1024+z) = q - z is exact, and one multiply by the scale rounds once: W is exactly
 * round((q - z) * s). bf16: magic 0x4300 (128, ulp 1 for 7 mantissa bits); the in-place high
 * nibble would overflow bf16's 7-bit mantissa, so all four pairs are shifted down first.
 *
 * Index letters: gq = lane / 4, tq = lane % 4 (mma fragment coordinates), st mma k-step in a chunk,
 * j n-tile of a warp, tm token tile (8 tokens), c chunk (64 k), nt n-tile (16 features).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "awq_cuda.h"
#include "device_common.cuh"
#include "w4a16_cuda.h"

/* ================================================================ checks */

#define CUDA_CHECK(stmt) AWQ_CUDA_CHECK(stmt, err)
/* After every launch: a bad configuration is reported at the launch, naming the kernel. */
#define LAUNCH_CHECK(what)                                                                         \
    do {                                                                                           \
        gpuError_t e_ = gpuGetLastError();                                                       \
        if (e_ != gpuSuccess)                                                                     \
            return awq_set_err(err, AWQ_ERR_RUNTIME, "launch of %s failed at %s:%d: %s", what,     \
                               __FILE__, __LINE__, gpuGetErrorString(e_));                        \
    } while (0)
#define GPUBLAS_CHECK(stmt) AWQ_GPUBLAS_CHECK(stmt, err)

/* ================================================================ tuning constants */

#define NCOUNTERS (1 << 16)   /* stream-K completion counters (one per tile) in a context */
#define BLAS_WS_BYTES (32u << 20)
#define SLAB_MAX_BYTES (256ull << 20) /* dequantized-weight slab of the cuBLAS path */
#define GEMV_MAX_M 8
/* AUTO takes the GEMV path for M <= GEMV_AUTO_MAX_M. H100 (bench/kernels.py, g128), M = 1 / 4,
 * gemv vs mma: 4096x4096 8.2 / 8.2 vs 16.1 / 14.1 us, 11008x4096 14.3 / 14.2 vs 27.5 / 24.6,
 * 4096x12288 15.1 / 15.2 vs 20.5 / 19.3, 8192x28672 57.6 / 56.8 vs 56.4 / 58.2. */
#define GEMV_AUTO_MAX_M 4
#if GEMV_AUTO_MAX_M > GEMV_MAX_M
#error "GEMV_AUTO_MAX_M must not exceed GEMV_MAX_M"
#endif
/* GEMV heuristic: warps per block (4 with a context, 8 without: then there is no K split across
 * blocks) and chunks per warp and round (2 x GEMV_UK weight loads of 16 bytes in flight per thread). */
#define GEMV_WN 4
#define GEMV_WN_NOCTX 8
#define GEMV_UK 4
/* AUTO: tensor-core stream below this M, dequantize + cuBLAS from it (when a context is given).
 * H100 (bench/kernels.py): at M = 256 cuBLAS wins on all six benchmark layers (8192 x 28672: 410
 * vs 456 us; 4096 x 4096: 33 vs 59 us); at M = 64 the stream wins except on 4096 x 4096. */
#define BLAS_MIN_M 256

/* ================================================================ device helpers */

namespace {

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t mask, uint32_t bits) {
#if AWQ_GPU_PTX
    uint32_t r;
    /* 0xea: (a & b) | c */
    asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(a), "r"(mask), "r"(bits));
    return r;
#else
    return (a & mask) | bits;
#endif
}
__device__ __forceinline__ uint32_t bcast_lo(uint32_t u) { return __byte_perm(u, 0, 0x1010); }
__device__ __forceinline__ uint32_t bcast_hi(uint32_t u) { return __byte_perm(u, 0, 0x3232); }

struct DQ { /* per lane, n-tile and group: zero and scale constants, half2/bf162 bits */
    uint32_t zl, zh, sl, sh;
};

/* fp16 activations. */
struct F16 {
    static constexpr uint32_t MAGIC = 0x64006400u; /* 1024, 1024 */
    static constexpr bool BF = false;
    static __device__ __forceinline__ __half2 h(uint32_t u) { return *reinterpret_cast<__half2 *>(&u); }
    static __device__ __forceinline__ uint32_t u(__half2 v) { return *reinterpret_cast<uint32_t *>(&v); }
    /* s2: scales of features (f0, f1); zw: qzeros word; m: nibble of f0 in it (f1 at m + 4). */
    static __device__ __forceinline__ DQ consts(uint32_t s2, uint32_t zw, int m, int /*scvt*/) {
        DQ d;
        const uint32_t zz = lop3_and_or(zw >> (4 * m), 0x000f000fu, MAGIC); /* 1024+z0, 1024+z1 */
        d.zl = bcast_lo(zz);
        /* -(64 + z1) = 960 - (1024 + z1): the offset that undoes the in-place high nibble */
        d.zh = u(__hsub2(h(0x63806380u), h(bcast_hi(zz))));
        d.sl = bcast_lo(s2);
        d.sh = bcast_hi(s2);
        return d;
    }
    static __device__ __forceinline__ void dequant(uint32_t w, const DQ &d, uint32_t a[4]) {
        const uint32_t h0 = lop3_and_or(w, 0x000f000fu, MAGIC);      /* 1024 + q(nibbles 0, 4) */
        const uint32_t h1 = lop3_and_or(w, 0x00f000f0u, MAGIC);      /* 1024 + 16 q(1, 5) */
        const uint32_t h2 = lop3_and_or(w >> 8, 0x000f000fu, MAGIC); /* 1024 + q(2, 6) */
        const uint32_t h3 = lop3_and_or(w >> 8, 0x00f000f0u, MAGIC); /* 1024 + 16 q(3, 7) */
        const __half2 r16 = h(0x2c002c00u);                          /* 1/16 */
        a[0] = u(__hmul2(__hsub2(h(h0), h(d.zl)), h(d.sl)));
        a[1] = u(__hmul2(__hfma2(h(h1), r16, h(d.zh)), h(d.sh)));
        a[2] = u(__hmul2(__hsub2(h(h2), h(d.zl)), h(d.sl)));
        a[3] = u(__hmul2(__hfma2(h(h3), r16, h(d.zh)), h(d.sh)));
    }
    static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
        mma16816_f16(c, a, b0, b1); /* traps without PTX: the MMA path and the gemv mma engine are refused there */
    }
    static __device__ __forceinline__ float2 f2(uint32_t v) { return __half22float2(h(v)); }
    static __device__ __forceinline__ uint32_t pack(float a, float b) { return u(__floats2half2_rn(a, b)); }
    static __device__ __forceinline__ float f1(uint16_t v) { return __half2float(__ushort_as_half(v)); }
    static __device__ __forceinline__ float round(float v) { return __half2float(__float2half_rn(v)); }
};

/* bf16 activations. */
struct BF16 {
    static constexpr uint32_t MAGIC = 0x43004300u; /* 128, 128 */
    static constexpr bool BF = true;
    static __device__ __forceinline__ gpu_bf162 h(uint32_t u) { return *reinterpret_cast<gpu_bf162 *>(&u); }
    static __device__ __forceinline__ uint32_t u(gpu_bf162 v) { return *reinterpret_cast<uint32_t *>(&v); }
    /* scvt: the scales are fp16 (checkpoint) and are rounded to bf16 here */
    static __device__ __forceinline__ DQ consts(uint32_t s2, uint32_t zw, int m, int scvt) {
        DQ d;
        if (scvt) s2 = u(__float22bfloat162_rn(F16::f2(s2)));
        const uint32_t zz = lop3_and_or(zw >> (4 * m), 0x000f000fu, MAGIC); /* 128+z0, 128+z1 */
        d.zl = bcast_lo(zz);
        d.zh = bcast_hi(zz);
        d.sl = bcast_lo(s2);
        d.sh = bcast_hi(s2);
        return d;
    }
    static __device__ __forceinline__ void dequant(uint32_t w, const DQ &d, uint32_t a[4]) {
        const uint32_t h0 = lop3_and_or(w, 0x000f000fu, MAGIC);
        const uint32_t h1 = lop3_and_or(w >> 4, 0x000f000fu, MAGIC);
        const uint32_t h2 = lop3_and_or(w >> 8, 0x000f000fu, MAGIC);
        const uint32_t h3 = lop3_and_or(w >> 12, 0x000f000fu, MAGIC);
        a[0] = u(__hmul2(__hsub2(h(h0), h(d.zl)), h(d.sl)));
        a[1] = u(__hmul2(__hsub2(h(h1), h(d.zh)), h(d.sh)));
        a[2] = u(__hmul2(__hsub2(h(h2), h(d.zl)), h(d.sl)));
        a[3] = u(__hmul2(__hsub2(h(h3), h(d.zh)), h(d.sh)));
    }
    static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
        mma16816_bf16(c, a, b0, b1); /* traps without PTX: the MMA path and the gemv mma engine are refused there */
    }
    static __device__ __forceinline__ float2 f2(uint32_t v) { return __bfloat1622float2(h(v)); }
    static __device__ __forceinline__ uint32_t pack(float a, float b) { return u(__floats2bfloat162_rn(a, b)); }
    static __device__ __forceinline__ float f1(uint16_t v) { return __bfloat162float(__ushort_as_bfloat16(v)); }
    static __device__ __forceinline__ float round(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
};

/* ================================================================ cp.async */

#if AWQ_GPU_PTX
__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
/* 16 bytes global -> shared, bypassing L1; zero-filled when !valid (src must still be a valid address) */
__device__ __forceinline__ void cp16(void *dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp4(void *dst, const void *src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }
#else /* plain copies: the same results, without the asynchrony */
__device__ __forceinline__ void cp16(void *dst, const void *src, bool valid) {
    *(uint4 *)dst = valid ? *(const uint4 *)src : make_uint4(0, 0, 0, 0);
}
__device__ __forceinline__ void cp4(void *dst, const void *src, bool valid) {
    *(uint32_t *)dst = valid ? *(const uint32_t *)src : 0u;
}
__device__ __forceinline__ void cp_commit() {}
template <int N> __device__ __forceinline__ void cp_wait() {}
#endif
/* at most n groups still pending (n is block-uniform; the instruction takes an immediate) */
__device__ __forceinline__ void cp_wait_dyn(int n) {
    switch (n) {
    case 0: cp_wait<0>(); break;
    case 1: cp_wait<1>(); break;
    case 2: cp_wait<2>(); break;
    case 3: cp_wait<3>(); break;
    case 4: cp_wait<4>(); break;
    case 5: cp_wait<5>(); break;
    default: cp_wait<6>(); break;
    }
}

/* ================================================================ the W4A16 kernel */

struct GemmParams {
    const uint16_t *x;    /* [M, K] */
    const uint4 *qw;      /* repacked: [KC][NT][32 lanes] x 16 B */
    const uint32_t *qz;   /* [G, N/8] */
    const uint16_t *sc;   /* [G, N] */
    const uint16_t *bias; /* [N] or NULL */
    uint16_t *y;          /* [M, N] */
    float *part;          /* [2 gridDim.x][min(M, 8 TM)][64 wn] partial tiles (stream-K fix-up) */
    int *cnt;             /* [T] completion counters, zero between calls */
    int M, K, N, g, gshift, KC, NT;
    int wn;       /* warps per block, each NTG n-tiles (64 features) */
    int MB, T;    /* blocks of 8 TM tokens; tiles T = slices * MB (tile = slice * MB + mb) */
    int stages;   /* cp.async pipeline depth, 3 .. MAX_STAGES */
    int srows;    /* scale / zero rows per stage: 1 when g % 64 == 0 (one group per chunk), else 4 */
    int scvt;     /* bf16 activations with fp16 scales */
};

#define NTG 4          /* n-tiles (16 features) per warp: 64 features */
#define MAX_STAGES 8   /* cp.async pipeline depth (chunks of 64 k in shared memory) */
#define XS 144         /* bytes per x row in shared memory: 128 + 16 (conflict-free 16-byte fragment loads) */

/* Shared-memory stage: W [wn * NTG tiles][32 lanes] x 16 B | x [8 TM rows] x XS | scales [4][SS] |
 * zeros [4][ZS]. Scale / zero row r holds the group of k = 64c + 16r (lanes tq = r; g % 16 == 0 keeps
 * a lane's 16 k in one group); with g % 64 == 0 only row 0 is loaded and read. Paddings keep the
 * per-lane reads conflict-free. */
__host__ __device__ __forceinline__ int ss_bytes(int wn) { return wn * NTG * 16 * 2 + 32; }
__host__ __device__ __forceinline__ int zs_bytes(int wn) { return (wn * NTG * 16 / 8 + 2) * 4; }
__host__ __device__ __forceinline__ int stage_bytes(int wn, int tm) {
    const int b = wn * NTG * 512 + 8 * tm * XS + 4 * ss_bytes(wn) + 4 * zs_bytes(wn);
    return (b + 15) & ~15;
}

/* Block holding unit u of U when blocks B split [0, U) as start(i) = floor(i U / B). */
__device__ __forceinline__ int block_of(int64_t u, int64_t U, int64_t B) { return (int)(((u + 1) * B - 1) / U); }

/* Stream-K: the work is T tiles (64 wn features x 8 TM tokens) x KC chunks of 64 k, linearized tile
 * by tile (the M blocks of one column slice next to each other, so they share W through L2), and
 * cut into gridDim.x equal ranges, one per block; the grid is what fits on the chip at once, so every
 * SM streams until the end. A block walks its range through a `stages`-deep cp.async pipeline
 * (weights, x rows, scales, zeros of one chunk per stage; one barrier per chunk) and, at each tile
 * boundary, writes y if it covered the whole tile, else its partial tile into a slot; the last block
 * of a tile to finish adds the slots in slot order (deterministic) and writes y.
 * The warps of a block sit side by side along N (64 features each) and share the x rows.
 * acc[tm][j][0..3] is the mma C fragment: (feature f0, token 2tq), (f0, 2tq+1), (f1, 2tq), (f1, 2tq+1). */
template <class AT, int TM>
__global__ void __launch_bounds__(256) k_gemm(const GemmParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int is_last;
    const int lane = threadIdx.x & 31, win = threadIdx.x >> 5, nthr = blockDim.x;
    const int gq = lane >> 2, tq = lane & 3;
    const int wn = p.wn, BN = wn * NTG * 16, BM = 8 * TM;
    const int SB = stage_bytes(wn, TM), SS = ss_bytes(wn), ZS = zs_bytes(wn);
    const int xoff = wn * NTG * 512, soff = xoff + 8 * TM * XS, zoff = soff + 4 * SS;
    const int KC = p.KC, N8 = p.N >> 3;
    const int64_t U = (int64_t)p.T * KC, B = gridDim.x;
    const int u0 = (int)(U * blockIdx.x / B), u1 = (int)(U * (blockIdx.x + 1) / B);
    const int srow = threadIdx.x / (8 * wn), scol = threadIdx.x % (8 * wn);

    /* one stage: unit u -> slot. Each thread copies NTG weight pieces (its lane of tiles win,
     * win + wn, ...), at most one 16-byte piece of scales and one zero word; x rows are shared out. */
    /* position of the next unit to load (units are loaded in order) */
    int lc, lslice, lmb;
    {
        const int lt = u0 / KC;
        lc = u0 - lt * KC;
        lslice = lt / p.MB;
        lmb = lt - lslice * p.MB;
    }
    auto load = [&](int slot) {
        unsigned char *st = smem + (size_t)slot * SB;
        const int c = lc, t0 = lslice * wn * NTG + win, m0 = lmb * BM, n0 = lslice * BN;
        if (++lc == KC) {
            lc = 0;
            if (++lmb == p.MB) lmb = 0, lslice++;
        }
        const size_t coff = (size_t)c * p.NT * 32 + lane;
#pragma unroll
        for (int r = 0; r < NTG; r++) {
            const int t = t0 + r * wn;
            const bool v = t < p.NT;
            cp16(st + (threadIdx.x + r * nthr) * 16, p.qw + (v ? coff + (size_t)t * 32 : 0), v);
        }
        for (int i = threadIdx.x; i < BM * 8; i += nthr) {
            const int r = i >> 3, k = c * 64 + (i & 7) * 8, tok = m0 + r;
            const bool v = tok < p.M && k < p.K;
            cp16(st + xoff + r * XS + (i & 7) * 16, v ? p.x + (size_t)tok * p.K + k : p.x, v);
        }
        if (srow < p.srows) {
            const int k = c * 64 + 16 * srow, sn = n0 + 8 * scol;
            const bool v = k < p.K && sn < p.N;
            const int gi = v ? (p.gshift >= 0 ? k >> p.gshift : k / p.g) : 0;
            cp16(st + soff + srow * SS + scol * 16, v ? p.sc + (size_t)gi * p.N + sn : p.sc, v);
            cp4(st + zoff + srow * ZS + scol * 4, v ? p.qz + (size_t)gi * N8 + (sn >> 3) : p.qz, v);
        }
    };

    float acc[TM][NTG][4];
#pragma unroll
    for (int tm = 0; tm < TM; tm++)
#pragma unroll
        for (int j = 0; j < NTG; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[tm][j][r] = 0.f;

    const int srd = p.srows == 1 ? 0 : tq; /* the scale / zero row this lane reads */
    auto compute = [&](int slot) {
        const unsigned char *st = smem + (size_t)slot * SB;
        DQ dq[NTG];
#pragma unroll
        for (int j = 0; j < NTG; j++) {
            const int fl = (win * NTG + j) * 16 + 2 * gq; /* local feature f0 */
            const uint32_t s2 = *reinterpret_cast<const uint32_t *>(st + soff + srd * SS + fl * 2);
            const uint32_t zw = *reinterpret_cast<const uint32_t *>(st + zoff + srd * ZS + (fl >> 3) * 4);
            dq[j] = AT::consts(s2, zw, gq & 3, p.scvt);
        }
#pragma unroll
        for (int h = 0; h < 2; h++) { /* mma k-steps 2h, 2h+1: lane k 16tq + 8h .. + 7 */
            uint32_t A[NTG][2][4];
#pragma unroll
            for (int j = 0; j < NTG; j++) {
                const uint2 w2 = *reinterpret_cast<const uint2 *>(st + ((win * NTG + j) * 32 + lane) * 16 + 8 * h);
                AT::dequant(w2.x, dq[j], A[j][0]);
                AT::dequant(w2.y, dq[j], A[j][1]);
            }
#pragma unroll
            for (int tm = 0; tm < TM; tm++) {
                const uint4 b = *reinterpret_cast<const uint4 *>(st + xoff + (8 * tm + gq) * XS + 32 * tq + 16 * h);
#pragma unroll
                for (int j = 0; j < NTG; j++) {
                    AT::mma(acc[tm][j], A[j][0], b.x, b.y);
                    AT::mma(acc[tm][j], A[j][1], b.z, b.w);
                }
            }
        }
    };

    /* end of a tile's run in this block: y directly, or a partial slot and the ordered fix-up */
    auto flush = [&](int tile, bool whole) {
        const int slice = tile / p.MB, mb = tile - slice * p.MB;
        const int m0 = mb * BM, n0 = slice * BN;
        if (!whole) {
            const int first = block_of((int64_t)tile * KC, U, B), last = block_of((int64_t)tile * KC + KC - 1, U, B);
            const int BMe = p.M < BM ? p.M : BM; /* rows of a slot */
            /* block q keeps its first tile in slot 2q and its last in slot 2q + 1 */
            float *pt = p.part + (size_t)(2 * blockIdx.x + (tile == u0 / KC ? 0 : 1)) * BMe * BN;
#pragma unroll
            for (int tm = 0; tm < TM; tm++)
#pragma unroll
                for (int j = 0; j < NTG; j++) {
                    const int r = 8 * tm + 2 * tq, col = (win * NTG + j) * 16 + 2 * gq;
                    if (m0 + r >= p.M) continue;
                    *reinterpret_cast<float2 *>(pt + r * BN + col) = make_float2(acc[tm][j][0], acc[tm][j][2]);
                    if (m0 + r + 1 < p.M)
                        *reinterpret_cast<float2 *>(pt + (r + 1) * BN + col) = make_float2(acc[tm][j][1], acc[tm][j][3]);
                }
            __threadfence();
            __syncthreads();
            if (threadIdx.x == 0) {
                const int old = atomicAdd(p.cnt + tile, 1);
                is_last = old == last - first;
                if (is_last) p.cnt[tile] = 0; /* every block of the tile has counted: ready for the next call */
            }
            __syncthreads();
            if (is_last) {
                /* the tile's slots, in block order, straight from the workspace to y */
                __threadfence();
                const int hs = __ffs(BN / 2) - 1, rows = p.M - m0 < BMe ? p.M - m0 : BMe;
                const int lim = rows << hs;
                /* 8 elements per thread and pass, every slot's loads independent of the sums */
                for (int e0 = threadIdx.x; e0 < lim; e0 += 8 * nthr) {
                    float2 v[8];
#pragma unroll
                    for (int i = 0; i < 8; i++) v[i] = make_float2(0.f, 0.f);
#pragma unroll 2
                    for (int q = first; q <= last; q++) {
                        const int eq = tile == (int)(U * q / B) / KC ? 0 : 1;
                        const float *sl = p.part + (size_t)(2 * q + eq) * BMe * BN;
                        float2 w[8];
#pragma unroll
                        for (int i = 0; i < 8; i++) {
                            const int e = e0 + i * nthr;
                            w[i] = e < lim ? __ldcg(reinterpret_cast<const float2 *>(sl + 2 * e)) : make_float2(0.f, 0.f);
                        }
#pragma unroll
                        for (int i = 0; i < 8; i++) {
                            v[i].x += w[i].x;
                            v[i].y += w[i].y;
                        }
                    }
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        const int e = e0 + i * nthr;
                        const int r = e >> hs, n = n0 + 2 * (e & ((1 << hs) - 1));
                        if (e >= lim || n >= p.N) continue;
                        float bx = 0.f, by = 0.f;
                        if (p.bias) {
                            bx = AT::f1(p.bias[n]);
                            by = AT::f1(p.bias[n + 1]);
                        }
                        *reinterpret_cast<uint32_t *>(p.y + (size_t)(m0 + r) * p.N + n) = AT::pack(v[i].x + bx, v[i].y + by);
                    }
                }
            }
            __syncthreads(); /* is_last is read by every thread before the next flush writes it */
        }
        if (whole) {
#pragma unroll
            for (int j = 0; j < NTG; j++) {
                const int nf = n0 + (win * NTG + j) * 16 + 2 * gq;
                if (nf >= p.N) continue;
                float b0 = 0.f, b1 = 0.f;
                if (p.bias) {
                    b0 = AT::f1(p.bias[nf]);
                    b1 = AT::f1(p.bias[nf + 1]);
                }
#pragma unroll
                for (int tm = 0; tm < TM; tm++) {
                    const int ta = m0 + 8 * tm + 2 * tq;
                    uint32_t *o = reinterpret_cast<uint32_t *>(p.y + (size_t)ta * p.N + nf);
                    if (ta < p.M) *o = AT::pack(acc[tm][j][0] + b0, acc[tm][j][2] + b1);
                    if (ta + 1 < p.M) o[p.N >> 1] = AT::pack(acc[tm][j][1] + b0, acc[tm][j][3] + b1);
                }
            }
        }
#pragma unroll
        for (int tm = 0; tm < TM; tm++)
#pragma unroll
            for (int j = 0; j < NTG; j++) acc[tm][j][0] = acc[tm][j][1] = acc[tm][j][2] = acc[tm][j][3] = 0.f;
    };

    /* pipeline: stages-1 units in flight while one is computed; one barrier per unit */
    const int NS = p.stages;
    for (int s = 0; s < NS - 1; s++) {
        if (u0 + s < u1) load(s);
        cp_commit();
    }
    int slot = 0;
    int tile = u0 / KC, seg0 = u0; /* current tile and the first unit of this block in it */
    for (int u = u0; u < u1; u++) {
        cp_wait_dyn(NS - 2);
        __syncthreads();
        const int un = u + NS - 1;
        if (un < u1) load(slot == 0 ? NS - 1 : slot - 1);
        cp_commit();
        compute(slot);
        slot = slot + 1 == NS ? 0 : slot + 1;
        const int c = u - tile * KC;
        if (c == KC - 1 || u == u1 - 1) {
            flush(tile, seg0 == tile * KC && c == KC - 1);
            tile++;
            seg0 = u + 1;
        }
    }
    cp_wait<0>();
}

/* ================================================================ the decode GEMV kernel (M <= 8) */

/* Weight stream: 16 bytes straight into registers through the read-only path, not kept in L1
 * (x, scales and zeros are what L1 should hold). */
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
#if AWQ_GPU_PTX
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
#else
    return *p;
#endif
}
/* base + idx * stride bytes: one 32 x 32 -> 64-bit multiply-add (IMAD.WIDE.U32). */
template <class T> __device__ __forceinline__ const T *byte_at(const T *base, unsigned idx, unsigned stride) {
    return reinterpret_cast<const T *>(reinterpret_cast<const char *>(base) + (size_t)idx * stride);
}
/* Small read-only operands (x, scales, zeros): cached in L1, shared by the block's warps. */
template <class T> __device__ __forceinline__ T ld_ro(const T *p) {
#if AWQ_GPU_PTX
    return __ldg(p);
#else
    return *p;
#endif
}

struct GemvParams {
    const uint16_t *x;    /* [M, K] */
    const uint4 *qw;      /* repacked: [KC][NT][32 lanes] x 16 B */
    const uint32_t *qz;   /* [G, N/8] */
    const uint16_t *sc;   /* [G, N] */
    const uint16_t *bias; /* [N] or NULL */
    uint16_t *y;          /* [M, N] */
    float *part;          /* [slices][S][M][32] block partials (S > 1) */
    int *cnt;             /* [slices] completion counters, zero between calls (S > 1) */
    int M, K, N, g, gshift, KC, NT;
    int slices;           /* column slices of GEMV_NTW n-tiles (32 features) */
    int S;                /* K splits: blocks per slice; the grid is slices * S */
    int scvt;             /* bf16 activations with fp16 scales */
};

enum { ENG_MMA = 1, ENG_FMA = 2 }; /* dot-product engine of k_gemv (cfg.tm of the GEMV path) */
#define GEMV_NTW 2                 /* n-tiles per warp: a warp's column slice is 32 features */
#define GEMV_MAX_WARPS 8

/* One block: column slice `slice` (n-tiles 2 slice, 2 slice + 1) x the chunks [kb0, kb1) of K split
 * s; its wn warps take the chunks kb0 + w, kb0 + w + wn, ... (interleaved, so the block's warps read
 * neighbouring chunk rows). A warp works in rounds of UK chunks: first every load of the round
 * (2 UK weight pieces of 16 bytes per lane, their scales and zero words, and for the mma engine the
 * x fragments), all independent and in flight together, then the decode and the dot products.
 * ENG_MMA: per chunk and n-tile, four m16n8k16 mma (W^T as A, the up to 8 tokens as the columns of
 * B: lane (gq, tq) holds x[token gq][64 kc + 16 tq .. + 15], zero for gq >= M); acc[j] is the C
 * fragment. ENG_FMA: the dequantized weights go to fp32 and meet x in fp32 FMAs (x read per token
 * from L1), then a shuffle sum over the four k-lanes tq.
 * End: the warps' 32 x M sums go through shared memory and are added in warp order; with S == 1
 * that is y, else the block writes its slot and the last block of the slice (atomic counter, reset
 * by that block) adds the S slots in slot order: the result is independent of timing. */
template <class AT, int ENG, int UK>
__global__ void __launch_bounds__(32 * GEMV_MAX_WARPS) k_gemv(const GemvParams p) {
    __shared__ float red[GEMV_MAX_WARPS][8][32]; /* [warp][token][feature in the slice] */
    __shared__ int is_last;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, wn = blockDim.x >> 5;
    const int gq = lane >> 2, tq = lane & 3;
    const int K = p.K, N = p.N, M = p.M, g = p.g, gshift = p.gshift;
    const int slice = blockIdx.x % p.slices, s = blockIdx.x / p.slices;
    const int kb0 = (int)((int64_t)p.KC * s / p.S), kb1 = (int)((int64_t)p.KC * (s + 1) / p.S);
    const int nt0 = slice * GEMV_NTW;
    /* Every load of the loop is unconditional from a valid address (x excepted): a missing n-tile
     * (odd NT) reads the last one, features >= N read feature N - 2's scale and zero, k >= K reads
     * the last group; all of that only feeds C rows of features >= N, which are never stored
     * (rows of a product are independent), or meets x = 0 (k >= K) with a finite weight. */
    const uint4 *wb[GEMV_NTW];
    const uint16_t *sb[GEMV_NTW];
    const uint32_t *zb[GEMV_NTW];
#pragma unroll
    for (int j = 0; j < GEMV_NTW; j++) {
        const int nt = min(nt0 + j, p.NT - 1), nf = min((nt0 + j) * 16 + 2 * gq, N - 2);
        wb[j] = p.qw + (size_t)nt * 32 + lane;
        sb[j] = p.sc + nf;
        zb[j] = p.qz + (nf >> 3);
    }
    /* bytes per chunk row of the repacked weight (< 2^32: plan_gemv), per scale row, per qzeros row */
    const unsigned cbytes = (unsigned)p.NT * 512u, sbytes = 2u * (unsigned)N, zbytes = (unsigned)N >> 1;
    const bool xrow = gq < M;                                               /* this lane's B column is a token */
    const uint16_t *xr = p.x + (size_t)(xrow ? gq : 0) * K;
    /* chunk i of each round: lane k = kk[i], group gi[i] = kk / g, gr[i] = kk % g, advanced by D = 64 wn UK
     * per round without a division */
    const int D = 64 * wn * UK;
    const int dq = gshift >= 0 ? D >> gshift : D / g, dr = D - dq * g;
    int kk[UK], gi[UK], gr[UK];
#pragma unroll
    for (int i = 0; i < UK; i++) {
        kk[i] = 64 * (kb0 + w + i * wn) + 16 * tq;
        gi[i] = gshift >= 0 ? kk[i] >> gshift : kk[i] / g;
        gr[i] = kk[i] - gi[i] * g;
    }
    float acc[GEMV_NTW][4];     /* ENG_MMA: C fragment (f0, 2tq), (f0, 2tq+1), (f1, 2tq), (f1, 2tq+1) */
    float accf[GEMV_NTW][2][8]; /* ENG_FMA: [j][f0 / f1][token], this lane's k only */
#pragma unroll
    for (int j = 0; j < GEMV_NTW; j++) {
#pragma unroll
        for (int r = 0; r < 4; r++) acc[j][r] = 0.f;
#pragma unroll
        for (int f = 0; f < 2; f++)
#pragma unroll
            for (int m = 0; m < 8; m++) accf[j][f][m] = 0.f;
    }
    const uint4 zero4 = make_uint4(0u, 0u, 0u, 0u);
    const int gmax = K / g - 1;

    for (int kc0 = kb0 + w; kc0 < kb1; kc0 += D >> 6) {
        uint4 wv[UK][GEMV_NTW], xa[UK], xb[UK];
        uint32_t s2[UK][GEMV_NTW], zw[UK][GEMV_NTW];
#pragma unroll
        for (int i = 0; i < UK; i++) {
            const unsigned kc = (unsigned)min(kc0 + i * wn, kb1 - 1); /* past the range (last round): a repeat */
            const unsigned gc = (unsigned)min(gi[i], gmax);
#pragma unroll
            for (int j = 0; j < GEMV_NTW; j++) {
                wv[i][j] = ld_stream(byte_at(wb[j], kc, cbytes));
                s2[i][j] = ld_ro(reinterpret_cast<const uint32_t *>(byte_at(sb[j], gc, sbytes)));
                zw[i][j] = ld_ro(byte_at(zb[j], gc, zbytes));
            }
            if (ENG == ENG_MMA) {
                const bool xv = xrow && kk[i] < K;
                const uint4 *xp = reinterpret_cast<const uint4 *>(byte_at(xr, xv ? kk[i] : 0, 2u));
                xa[i] = xv ? ld_ro(xp) : zero4;
                xb[i] = xv ? ld_ro(xp + 1) : zero4;
            }
        }
#pragma unroll
        for (int i = 0; i < UK; i++) {
            if (kc0 + i * wn >= kb1) break; /* warp-uniform: the rest of the round is past the block's range */
#pragma unroll
            for (int j = 0; j < GEMV_NTW; j++) {
                const DQ d = AT::consts(s2[i][j], zw[i][j], gq & 3, p.scvt);
                if (ENG == ENG_MMA) {
                    uint32_t a[4];
                    AT::dequant(wv[i][j].x, d, a);
                    AT::mma(acc[j], a, xa[i].x, xa[i].y);
                    AT::dequant(wv[i][j].y, d, a);
                    AT::mma(acc[j], a, xa[i].z, xa[i].w);
                    AT::dequant(wv[i][j].z, d, a);
                    AT::mma(acc[j], a, xb[i].x, xb[i].y);
                    AT::dequant(wv[i][j].w, d, a);
                    AT::mma(acc[j], a, xb[i].z, xb[i].w);
                } else {
                    /* wf[st]: a0 (f0; k, k+1) a1 (f1; k, k+1) a2 (f0; k+2, k+3) a3 (f1; k+2, k+3) as floats,
                     * k = kk[i] + 4 st */
                    float wf[4][8];
                    const uint32_t w4[4] = {wv[i][j].x, wv[i][j].y, wv[i][j].z, wv[i][j].w};
#pragma unroll
                    for (int st = 0; st < 4; st++) {
                        uint32_t a[4];
                        AT::dequant(w4[st], d, a);
#pragma unroll
                        for (int r = 0; r < 4; r++) {
                            const float2 v = AT::f2(a[r]);
                            wf[st][2 * r] = v.x;
                            wf[st][2 * r + 1] = v.y;
                        }
                    }
                    const bool kv = kk[i] < K;
#pragma unroll
                    for (int m = 0; m < 8; m++) {
                        if (m >= M) break;
                        const uint4 *xp = reinterpret_cast<const uint4 *>(p.x + (kv ? (size_t)m * K + kk[i] : 0));
                        const uint4 x0 = kv ? ld_ro(xp) : zero4, x1 = kv ? ld_ro(xp + 1) : zero4;
                        const uint32_t xw[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
                        float v0 = accf[j][0][m], v1 = accf[j][1][m];
#pragma unroll
                        for (int st = 0; st < 4; st++) {
                            const float2 x01 = AT::f2(xw[2 * st]), x23 = AT::f2(xw[2 * st + 1]);
                            const float *a = wf[st];
                            v0 = fmaf(a[0], x01.x, v0);
                            v0 = fmaf(a[1], x01.y, v0);
                            v0 = fmaf(a[4], x23.x, v0);
                            v0 = fmaf(a[5], x23.y, v0);
                            v1 = fmaf(a[2], x01.x, v1);
                            v1 = fmaf(a[3], x01.y, v1);
                            v1 = fmaf(a[6], x23.x, v1);
                            v1 = fmaf(a[7], x23.y, v1);
                        }
                        accf[j][0][m] = v0;
                        accf[j][1][m] = v1;
                    }
                }
            }
        }
#pragma unroll
        for (int i = 0; i < UK; i++) {
            kk[i] += D;
            gi[i] += dq;
            gr[i] += dr;
            if (gr[i] >= g) {
                gr[i] -= g;
                gi[i]++;
            }
        }
    }

    /* the warp's sums -> red[w][token][16 j + 2 gq + (0, 1)] */
#pragma unroll
    for (int j = 0; j < GEMV_NTW; j++) {
        const int fl = 16 * j + 2 * gq;
        if (ENG == ENG_MMA) {
            red[w][2 * tq][fl] = acc[j][0];
            red[w][2 * tq + 1][fl] = acc[j][1];
            red[w][2 * tq][fl + 1] = acc[j][2];
            red[w][2 * tq + 1][fl + 1] = acc[j][3];
        } else {
#pragma unroll
            for (int f = 0; f < 2; f++)
#pragma unroll
                for (int m = 0; m < 8; m++) {
                    if (m >= M) break; /* warp-uniform: the shuffles see every lane */
                    float v = accf[j][f][m];
                    v += GPU_SHFL_XOR(v, 1);
                    v += GPU_SHFL_XOR(v, 2);
                    if ((m >> 1) == tq) red[w][m][fl + f] = v;
                }
        }
    }
    __syncthreads();

    /* outputs o = 32 * token + feature of the slice, in warp order */
    const int nout = 32 * M, n0 = 32 * slice;
    auto store = [&](int o, float v) {
        const int t = o >> 5, n = n0 + (o & 31);
        if (n >= N) return;
        if (p.bias) v += AT::f1(p.bias[n]);
        p.y[(size_t)t * N + n] = (uint16_t)(AT::pack(v, 0.f) & 0xffffu);
    };
    for (int o = threadIdx.x; o < nout; o += blockDim.x) {
        float v = red[0][o >> 5][o & 31];
        for (int q = 1; q < wn; q++) v += red[q][o >> 5][o & 31];
        if (p.S == 1)
            store(o, v);
        else
            p.part[((size_t)slice * p.S + s) * nout + o] = v;
    }
    if (p.S == 1) return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const int old = atomicAdd(p.cnt + slice, 1);
        is_last = old == p.S - 1;
        if (is_last) p.cnt[slice] = 0; /* every block of the slice has counted: ready for the next call */
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    const float *slots = p.part + (size_t)slice * p.S * nout;
    for (int o = threadIdx.x; o < nout; o += blockDim.x) {
        float v = __ldcg(slots + o);
        for (int q = 1; q < p.S; q++) v += __ldcg(slots + (size_t)q * nout + o);
        store(o, v);
    }
}

/* ================================================================ repack, reference, dequant */

/* One thread per 16 bytes of the repacked layout: lane (gq, tq) of tile (nt, c). */
__global__ void k_repack(const uint32_t *__restrict__ qw, uint4 *__restrict__ out, int K, int N, int NT,
                         int64_t total) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int lane = (int)(idx & 31);
    const int64_t ct = idx >> 5;
    const int nt = (int)(ct % NT), c = (int)(ct / NT);
    const int gq = lane >> 2, tq = lane & 3;
    const int n = nt * 16 + 2 * gq, kb = c * 64 + 16 * tq, m = gq & 3;
    uint32_t w[4] = {0, 0, 0, 0};
    if (n < N) {
        for (int e16 = 0; e16 < 16; e16++) {
            const int k = kb + e16;
            if (k >= K) break;
            const uint32_t word = qw[(size_t)k * (N >> 3) + (n >> 3)];
            const uint32_t q0 = (word >> (4 * m)) & 0xfu;      /* feature n:   nibble R[2m] = m */
            const uint32_t q1 = (word >> (4 * m + 16)) & 0xfu; /* feature n+1: nibble R[2m+1] = m+4 */
            const int st = e16 >> 2, e = e16 & 3;
            const int nib = 4 * (e & 1) + 2 * (e >> 1);
            w[st] |= (q0 << (4 * nib)) | (q1 << (4 * (nib + 1)));
        }
    }
    out[idx] = make_uint4(w[0], w[1], w[2], w[3]);
}

/* Code of (k, n) in the repacked layout: the formula of the header comment, written out. */
__device__ __forceinline__ uint32_t rp_code(const uint32_t *qw, int NT, int k, int n) {
    const int nt = n >> 4, fr = n & 15, gq = fr >> 1, hi = fr & 1;
    const int c = k >> 6, kr = k & 63, tq = kr >> 4, st = (kr & 15) >> 2, e = kr & 3;
    const uint32_t word = qw[(((size_t)c * NT + nt) * 32 + gq * 4 + tq) * 4 + st];
    const int nib = 4 * (e & 1) + 2 * (e >> 1) + hi;
    return (word >> (4 * nib)) & 0xfu;
}

__device__ __forceinline__ float scale_at(const uint16_t *sc, size_t i, bool bf16act, bool sf16) {
    const uint16_t v = sc[i];
    if (!bf16act) return __half2float(__ushort_as_half(v));
    if (sf16) return __bfloat162float(__float2bfloat16_rn(__half2float(__ushort_as_half(v))));
    return __bfloat162float(__ushort_as_bfloat16(v));
}

/* One thread per output; W = round((q - z) * s) to the activation dtype as in the fast paths. */
template <class AT>
__global__ void k_ref(const uint16_t *x, const uint32_t *qw, const uint32_t *qz, const uint16_t *sc,
                      const uint16_t *bias, uint16_t *y, int M, int K, int N, int g, int sf16) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y;
    if (n >= N || m >= M) return;
    const int NT = (N + 15) / 16;
    const int R[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    float acc = 0.f;
    for (int k = 0; k < K; k++) {
        const int gi = k / g;
        const int q = (int)rp_code(qw, NT, k, n);
        const int zq = (int)((qz[(size_t)gi * (N / 8) + n / 8] >> (4 * R[n % 8])) & 0xfu);
        const float s = scale_at(sc, (size_t)gi * N + n, AT::BF, sf16);
        const float w = AT::round((float)(q - zq) * s);
        acc = fmaf(AT::f1(x[(size_t)m * K + k]), w, acc);
    }
    if (bias) acc += AT::f1(bias[n]);
    const uint32_t v = AT::pack(acc, 0.f);
    y[(size_t)m * N + n] = (uint16_t)(v & 0xffffu);
}

/* cuBLAS path: tiles [nt0, nt0 + ntn) of the repacked weight -> wt[n - 16 nt0][K] in the activation
 * dtype (rows of W^T). A block dequantizes 2 tiles x 4 chunks (32 features x 256 k) into shared
 * memory, then writes 32 rows of 512 contiguous bytes. Groups may be any multiple of 8 (a lane's
 * 4-k steps never straddle a group). */
#define DQ_ROW 528 /* bytes per shared row: 256 k x 2 + 16 */
template <class AT>
__global__ void __launch_bounds__(256) k_dequant(const uint4 *__restrict__ qw, const uint32_t *__restrict__ qz,
                                                 const uint16_t *__restrict__ sc, uint16_t *__restrict__ wt, int K,
                                                 int N, int g, int NT, int KC, int nt0, int ntn, int scvt) {
    __shared__ __align__(16) unsigned char tile[32 * DQ_ROW];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int gq = lane >> 2, tq = lane & 3;
    const int ntl = blockIdx.x * 2 + (w >> 2); /* tile within the slab */
    const int c = blockIdx.y * 4 + (w & 3);
    const int nt = nt0 + ntl;
    const int n = nt * 16 + 2 * gq, kb = c * 64 + 16 * tq;
    if (ntl < ntn && c < KC && n < N && kb < K) {
        const uint4 w4 = qw[((size_t)c * NT + nt) * 32 + lane];
        const uint32_t ws[4] = {w4.x, w4.y, w4.z, w4.w};
        uint32_t r0[8], r1[8]; /* feature n and n+1, k = kb .. kb+15 as pairs */
#pragma unroll
        for (int st = 0; st < 4; st++) {
            const int k = kb + 4 * st;
            const int gi = (k < K ? k : K - 1) / g;
            const uint32_t s2 = (uint32_t)sc[(size_t)gi * N + n] | ((uint32_t)sc[(size_t)gi * N + n + 1] << 16);
            const DQ q = AT::consts(s2, qz[(size_t)gi * (N >> 3) + (n >> 3)], gq & 3, scvt);
            uint32_t a[4];
            AT::dequant(ws[st], q, a);
            r0[2 * st] = a[0]; /* f0: k, k+1 */
            r0[2 * st + 1] = a[2]; /* f0: k+2, k+3 */
            r1[2 * st] = a[1];
            r1[2 * st + 1] = a[3];
        }
        const int fl = (w >> 2) * 16 + 2 * gq, kl = (w & 3) * 64 + 16 * tq;
        uint4 *d0 = reinterpret_cast<uint4 *>(tile + fl * DQ_ROW + kl * 2);
        uint4 *d1 = reinterpret_cast<uint4 *>(tile + (fl + 1) * DQ_ROW + kl * 2);
        d0[0] = make_uint4(r0[0], r0[1], r0[2], r0[3]);
        d0[1] = make_uint4(r0[4], r0[5], r0[6], r0[7]);
        d1[0] = make_uint4(r1[0], r1[1], r1[2], r1[3]);
        d1[1] = make_uint4(r1[4], r1[5], r1[6], r1[7]);
    }
    __syncthreads();
    /* 32 rows x 32 pieces of 16 bytes (8 k) */
    const int kbase = blockIdx.y * 256;
    for (int i = threadIdx.x; i < 32 * 32; i += 256) {
        const int r = i >> 5, q = i & 31;
        const int nl = blockIdx.x * 32 + r, k = kbase + q * 8;
        if (nl >= ntn * 16 || nt0 * 16 + nl >= N || k >= K) continue;
        *reinterpret_cast<uint4 *>(wt + (size_t)nl * K + k) = *reinterpret_cast<const uint4 *>(tile + r * DQ_ROW + q * 16);
    }
}

/* y[m][n] = bias[n], so that cuBLAS adds the product with beta = 1 (one rounding of y). */
__global__ void k_fill_bias(const uint16_t *bias, uint16_t *y, int64_t M, int N) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < M * N) y[i] = bias[i % N];
}

} /* namespace */

/* ================================================================ context */

struct awq_w4a16_ctx {
    int device, sms;
    gpublasHandle_t blas;
    void *blas_ws;
    float *part;       /* stream-K partial tiles */
    size_t part_bytes;
    int *cnt;          /* NCOUNTERS completion counters, zero between calls */
    void *slab;        /* dequantized weights of the cuBLAS path */
    size_t slab_bytes;
    int occ[2][4][9][MAX_STAGES + 1]; /* k_gemm blocks per SM: [dtype][log2 TM][warps][stages], 0 = not asked */
    int gocc[2][2][4][GEMV_MAX_WARPS + 1]; /* k_gemv blocks per SM: [dtype][engine - 1][log2 UK][warps] */
};

extern "C" int awq_cuda_w4a16_ctx_new(awq_w4a16_ctx **out, awq_err *err) {
    *out = NULL;
    awq_w4a16_ctx *c = (awq_w4a16_ctx *)calloc(1, sizeof(awq_w4a16_ctx));
    if (!c) return awq_set_err(err, AWQ_ERR_NOMEM, "awq_cuda_w4a16_ctx_new: out of host memory");
    int st = AWQ_OK;
    gpuError_t e;
    gpublasStatus_t bs;
#define CTX_FAIL(code, ...)                                                                        \
    do {                                                                                           \
        st = awq_set_err(err, code, __VA_ARGS__);                                                  \
        goto fail;                                                                                 \
    } while (0)
    if ((e = gpuGetDevice(&c->device)) != gpuSuccess)
        CTX_FAIL(AWQ_ERR_RUNTIME, GPU_API "GetDevice failed: %s", gpuGetErrorString(e));
    if ((e = gpuDeviceGetAttribute(&c->sms, gpuDevAttrMultiProcessorCount, c->device)) != gpuSuccess)
        CTX_FAIL(AWQ_ERR_RUNTIME, GPU_API "DeviceGetAttribute(MultiProcessorCount) failed: %s",
                 gpuGetErrorString(e));
    if ((e = gpuMalloc((void **)&c->cnt, NCOUNTERS * sizeof(int))) != gpuSuccess)
        CTX_FAIL(e == gpuErrorMemoryAllocation ? AWQ_ERR_NOMEM : AWQ_ERR_RUNTIME,
                 GPU_API "Malloc(%zu bytes) for the stream-K counters failed: %s", NCOUNTERS * sizeof(int),
                 gpuGetErrorString(e));
    if ((e = gpuMemset(c->cnt, 0, NCOUNTERS * sizeof(int))) != gpuSuccess)
        CTX_FAIL(AWQ_ERR_RUNTIME, GPU_API "Memset of the stream-K counters failed: %s", gpuGetErrorString(e));
    if ((e = gpuMalloc(&c->blas_ws, BLAS_WS_BYTES)) != gpuSuccess)
        CTX_FAIL(e == gpuErrorMemoryAllocation ? AWQ_ERR_NOMEM : AWQ_ERR_RUNTIME,
                 GPU_API "Malloc(%u bytes) for the cuBLAS workspace failed: %s", BLAS_WS_BYTES,
                 gpuGetErrorString(e));
    if ((bs = gpublasCreate(&c->blas)) != GPUBLAS_STATUS_SUCCESS)
        CTX_FAIL(bs == GPUBLAS_STATUS_ALLOC_FAILED ? AWQ_ERR_NOMEM : AWQ_ERR_RUNTIME,
                 GPUBLAS_API "Create failed: %s", gpublasGetStatusString(bs));
#undef CTX_FAIL
    *out = c;
    return AWQ_OK;
fail:
    gpuGetLastError();
    awq_cuda_w4a16_ctx_free(c);
    return st;
}

extern "C" void awq_cuda_w4a16_ctx_free(awq_w4a16_ctx *c) {
    if (!c) return;
    gpuDeviceSynchronize();
    if (c->blas) gpublasDestroy(c->blas);
    gpuFree(c->blas_ws);
    gpuFree(c->part);
    gpuFree(c->cnt);
    gpuFree(c->slab);
    free(c);
}

/* Makes *buf hold at least `need` bytes. Refused while `stream` is being captured into a graph
 * (gpuMalloc / gpuFree there would break the capture or free memory a graph still uses). */
static int grow(void **buf, size_t *have, size_t need, const char *what, gpuStream_t stream, awq_err *err) {
    if (need <= *have) return AWQ_OK;
    gpuStreamCaptureStatus cs = gpuStreamCaptureStatusNone;
    CUDA_CHECK(gpuStreamIsCapturing(stream, &cs));
    if (cs != gpuStreamCaptureStatusNone)
        return awq_set_err(err, AWQ_ERR_RUNTIME,
                           "the context's %s holds %zu bytes but this call needs %zu, and the stream is "
                           "being captured into a CUDA graph: run each shape once before capturing",
                           what, *have, need);
    need = (need + (1u << 20) - 1) & ~(size_t)((1u << 20) - 1);
    CUDA_CHECK(gpuStreamSynchronize(stream));
    CUDA_CHECK(gpuFree(*buf));
    *buf = NULL;
    *have = 0;
    gpuError_t e = gpuMalloc(buf, need);
    if (e != gpuSuccess) {
        *buf = NULL;
        gpuGetLastError();
        return awq_set_err(err, e == gpuErrorMemoryAllocation ? AWQ_ERR_NOMEM : AWQ_ERR_RUNTIME,
                           GPU_API "Malloc(%zu bytes) for the context's %s failed: %s", need, what,
                           gpuGetErrorString(e));
    }
    *have = need;
    return AWQ_OK;
}

/* ================================================================ kernel table and plans */

typedef void (*gemm_fn)(GemmParams);

static gemm_fn gemm_kernel(int bf16, int tl) {
    switch (tl) {
    case 0: return bf16 ? k_gemm<BF16, 1> : k_gemm<F16, 1>;
    case 1: return bf16 ? k_gemm<BF16, 2> : k_gemm<F16, 2>;
    case 2: return bf16 ? k_gemm<BF16, 4> : k_gemm<F16, 4>;
    default: return bf16 ? k_gemm<BF16, 8> : k_gemm<F16, 8>;
    }
}

/* log2 of token tiles per block: M <= 8 one tile, M <= 16 two, M <= 32 four; up to 64 tokens four
 * (two M blocks) on layers under 64M weights, where one block of 8 tiles (250 registers, 8 warps
 * per SM) leaves SMs idle, else 8; beyond that blocks of 64 tokens. (bench/kernels.py sweep, H100) */
static int tm_log2_for(int64_t M, int64_t K, int64_t N) {
    if (M <= 8) return 0;
    if (M <= 16) return 1;
    if (M <= 32 || (M <= 64 && K * N < (64 << 20))) return 2;
    return 3;
}

static size_t gemm_smem(int tl, int wn, int stages) { return (size_t)stages * stage_bytes(wn, 1 << tl); }

/* Raises the kernel's dynamic shared-memory limit when needed (a per-function attribute). */
static int gemm_prepare(gemm_fn fn, size_t smem, awq_err *err) {
    if (smem > 48 * 1024)
        CUDA_CHECK(gpuFuncSetAttribute((const void *)fn, gpuFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    return AWQ_OK;
}

/* Blocks per SM (cached in the context when there is one); negative status on error. */
static int gemm_occupancy(awq_w4a16_ctx *ctx, int bf16, int tl, int wn, int stages, awq_err *err) {
    int *slot = ctx ? &ctx->occ[bf16][tl][wn][stages] : NULL;
    if (slot && *slot) return *slot;
    gemm_fn fn = gemm_kernel(bf16, tl);
    const size_t smem = gemm_smem(tl, wn, stages);
    int st = gemm_prepare(fn, smem, err);
    if (st) return st;
    int n = 0;
    CUDA_CHECK(gpuOccupancyMaxActiveBlocksPerMultiprocessor(&n, (const void *)fn, 32 * wn, smem));
    if (n < 1) n = 1;
    if (slot) *slot = n;
    return n;
}

typedef void (*gemv_fn)(GemvParams);

/* uk: chunks per warp and round (cfg.stages: 2, 4, 8) */
static gemv_fn gemv_kernel(int bf16, int eng, int uk) {
#define GEMV_K(AT, E) (uk == 2 ? k_gemv<AT, E, 2> : uk == 4 ? k_gemv<AT, E, 4> : k_gemv<AT, E, 8>)
    if (eng == ENG_MMA) return bf16 ? GEMV_K(BF16, ENG_MMA) : GEMV_K(F16, ENG_MMA);
    return bf16 ? GEMV_K(BF16, ENG_FMA) : GEMV_K(F16, ENG_FMA);
#undef GEMV_K
}

static int gemv_occupancy(awq_w4a16_ctx *ctx, int bf16, int eng, int uk, int wn, awq_err *err) {
    int *slot = &ctx->gocc[bf16][eng - 1][__builtin_ctz(uk)][wn];
    if (*slot) return *slot;
    int n = 0;
    const void *fn = (const void *)gemv_kernel(bf16, eng, uk);
    CUDA_CHECK(gpuOccupancyMaxActiveBlocksPerMultiprocessor(&n, fn, 32 * wn, 0));
    if (n < 1) n = 1;
    *slot = n;
    return n;
}

/* Heuristic defaults (set from the bench/kernels.py sweep on an H100): warps per block and pipeline
 * depth by token tiles; the grid is every block that fits on the chip at once (stream-K), but at
 * least MIN_UNITS chunks per block. */
#define MIN_UNITS 4
static int default_wn(int tl) { return tl == 3 ? 4 : 4; }
static int default_stages(int tl) { return tl == 2 ? 4 : 3; }

/* ================================================================ C API */

static int check_common(const char *who, const void *x, int x_dtype, const void *qw, const int32_t *qz,
                        const void *sc, int s_dtype, const void *bias, const void *y, int64_t M, int64_t K,
                        int64_t N, int64_t g, awq_err *err) {
    if (x_dtype != AWQ_W4_F16 && x_dtype != AWQ_W4_BF16)
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: activation dtype %d is neither fp16 nor bf16", who, x_dtype);
    if (s_dtype != x_dtype && !(x_dtype == AWQ_W4_BF16 && s_dtype == AWQ_W4_F16))
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "%s: scales must be in the activation dtype (or fp16 with bf16 activations)", who);
    if (M < 0 || K <= 0 || N <= 0 || g <= 0)
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: bad shape M=%lld K=%lld N=%lld g=%lld", who,
                           (long long)M, (long long)K, (long long)N, (long long)g);
    if (N % 8 || K % g || g % 8)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "%s: need N %% 8 == 0, g %% 8 == 0 and g dividing K (N=%lld K=%lld g=%lld)", who,
                           (long long)N, (long long)K, (long long)g);
    if (K > (1 << 30) || N > (1 << 30) || M > (1 << 30))
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: dimensions above 2^30 are not supported", who);
    if (!qw || !qz || !sc || (M > 0 && (!x || !y)))
        return awq_set_err(err, AWQ_ERR_VALUE, "%s: NULL device pointer", who);
    if ((uintptr_t)x % 16 || (uintptr_t)qw % 16 || (uintptr_t)qz % 4 || (uintptr_t)sc % 16 ||
        (uintptr_t)y % 4 || (uintptr_t)bias % 2)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "%s: misaligned pointer (x, qweight and scales need 16 bytes, qzeros and y 4)", who);
    return AWQ_OK;
}

extern "C" int64_t awq_cuda_w4a16_repack_nbytes(int64_t K, int64_t N) {
    if (K <= 0 || N <= 0) return 0;
    return ((N + 15) / 16) * ((K + 63) / 64) * 512;
}

extern "C" int awq_cuda_w4a16_repack(const int32_t *qweight_awq, void *out, int64_t K, int64_t N, void *stream,
                                     awq_err *err) {
    if (K <= 0 || N <= 0 || N % 8 || K > (1 << 30) || N > (1 << 30))
        return awq_set_err(err, AWQ_ERR_VALUE, "awq_cuda_w4a16_repack: bad shape K=%lld N=%lld (N %% 8 == 0)",
                           (long long)K, (long long)N);
    if (!qweight_awq || !out || (uintptr_t)out % 16 || (uintptr_t)qweight_awq % 4)
        return awq_set_err(err, AWQ_ERR_VALUE, "awq_cuda_w4a16_repack: NULL or misaligned pointer");
    const int NT = (int)((N + 15) / 16);
    const int64_t total = (int64_t)NT * ((K + 63) / 64) * 32;
    k_repack<<<(unsigned)((total + 255) / 256), 256, 0, (gpuStream_t)stream>>>(
        (const uint32_t *)qweight_awq, (uint4 *)out, (int)K, (int)N, NT, total);
    LAUNCH_CHECK("k_repack");
    return AWQ_OK;
}

extern "C" int awq_cuda_w4a16_ref(const void *x, int x_dtype, const void *qweight_rp, const int32_t *qzeros,
                                  const void *scales, int s_dtype, const void *bias, void *y, int64_t M,
                                  int64_t K, int64_t N, int64_t g, void *stream, awq_err *err) {
    int st = check_common("awq_cuda_w4a16_ref", x, x_dtype, qweight_rp, qzeros, scales, s_dtype, bias, y, M,
                          K, N, g, err);
    if (st) return st;
    if (M == 0) return AWQ_OK;
    if (M > 65535) return awq_set_err(err, AWQ_ERR_VALUE, "awq_cuda_w4a16_ref: M > 65535");
    dim3 grid((unsigned)((N + 127) / 128), (unsigned)M);
    const int sf16 = x_dtype == AWQ_W4_BF16 && s_dtype == AWQ_W4_F16;
    if (x_dtype == AWQ_W4_BF16)
        k_ref<BF16><<<grid, 128, 0, (gpuStream_t)stream>>>(
            (const uint16_t *)x, (const uint32_t *)qweight_rp, (const uint32_t *)qzeros,
            (const uint16_t *)scales, (const uint16_t *)bias, (uint16_t *)y, (int)M, (int)K, (int)N, (int)g, sf16);
    else
        k_ref<F16><<<grid, 128, 0, (gpuStream_t)stream>>>(
            (const uint16_t *)x, (const uint32_t *)qweight_rp, (const uint32_t *)qzeros,
            (const uint16_t *)scales, (const uint16_t *)bias, (uint16_t *)y, (int)M, (int)K, (int)N, (int)g, sf16);
    LAUNCH_CHECK("k_ref");
    return AWQ_OK;
}

static int auto_path(int64_t M, int64_t g, const awq_w4a16_ctx *ctx) {
    if (g % 16) return AWQ_PATH_CUBLAS;
    if (M > 0 && M <= GEMV_AUTO_MAX_M) return AWQ_PATH_GEMV;
    if (ctx && M >= BLAS_MIN_M) return AWQ_PATH_CUBLAS;
    if (!AWQ_GPU_PTX) /* no mma.sync off NVIDIA: the CUDA-core stream, then dequantize + BLAS */
        return M <= GEMV_MAX_M || !ctx ? AWQ_PATH_GEMV : AWQ_PATH_CUBLAS;
    return AWQ_PATH_MMA;
}

/* Fills cfg (zero fields from the heuristic) for a GEMV / MMA launch. Without a context every
 * block takes whole tiles (no partials, no workspace). */
static int plan_gemm(int bf16, int64_t M, int64_t K, int64_t N, awq_w4a16_ctx *ctx,
                     const awq_w4a16_cfg *in, awq_w4a16_cfg *c, awq_err *err) {
    *c = in ? *in : awq_w4a16_cfg{0, 0, 0, 0};
    if (c->wn < 0 || c->blocks < 0 || !(c->wn == 0 || c->wn == 1 || c->wn == 2 || c->wn == 4 || c->wn == 8) ||
        !(c->stages == 0 || (c->stages >= 3 && c->stages <= MAX_STAGES)) ||
        !(c->tm == 0 || c->tm == 1 || c->tm == 2 || c->tm == 4 || c->tm == 8))
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "bad kernel configuration wn=%d blocks=%d stages=%d tm=%d (wn and tm in 1, 2, 4, 8; "
                           "stages 3..%d)",
                           c->wn, c->blocks, c->stages, c->tm, MAX_STAGES);
    const int tl = c->tm ? __builtin_ctz(c->tm) : tm_log2_for(M, K, N);
    c->tm = 1 << tl;
    if (c->wn == 0) c->wn = default_wn(tl);
    if (c->stages == 0) c->stages = default_stages(tl);
    if (gemm_smem(tl, c->wn, c->stages) > 227 * 1024)
        return awq_set_err(err, AWQ_ERR_VALUE, "kernel configuration wn=%d stages=%d needs %zu bytes of shared memory",
                           c->wn, c->stages, gemm_smem(tl, c->wn, c->stages));
    const int64_t NT = (N + 15) / 16, KC = (K + 63) / 64, MB = (M + 8 * c->tm - 1) / (8 * c->tm);
    const int64_t T = (NT + (int64_t)c->wn * NTG - 1) / ((int64_t)c->wn * NTG) * MB;
    if (T * KC > 0x7fffffff) return awq_set_err(err, AWQ_ERR_VALUE, "problem too large for the stream kernel");
    if (!ctx) {
        if (c->blocks && c->blocks != T)
            return awq_set_err(err, AWQ_ERR_VALUE, "blocks=%d other than one per tile (%lld) needs a context",
                               c->blocks, (long long)T);
        c->blocks = (int)T;
        return AWQ_OK;
    }
    if (c->blocks == 0) {
        /* all blocks resident (3 per SM up to 16 tokens, 2 beyond: more measured slower), at least
         * MIN_UNITS chunks each, and fewer blocks per tile as M grows: the last block of a tile
         * adds every block's partial tile (rows x 64 wn floats) alone */
        const int occ = gemm_occupancy(ctx, bf16, tl, c->wn, c->stages, err);
        if (occ < 0) return occ;
        const int64_t rows = M < 8 * c->tm ? M : 8 * c->tm;
        const int64_t per_tile = rows <= 1 ? KC : rows <= 16 ? 8 : 4;
        const int per_sm = tl <= 1 ? 3 : 2;
        int64_t b = (int64_t)ctx->sms * (occ < per_sm ? occ : per_sm);
        if (b > T * per_tile) b = T * per_tile;
        if (b > T * KC / MIN_UNITS) b = T * KC / MIN_UNITS;
        c->blocks = (int)(b > 1 ? b : 1);
    }
    if (c->blocks > T * KC) c->blocks = (int)(T * KC);
    if (T > NCOUNTERS)
        return awq_set_err(err, AWQ_ERR_VALUE, "%lld tiles exceed the context's %d counters", (long long)T, NCOUNTERS);
    return AWQ_OK;
}

/* Fills cfg for a GEMV launch. Fields (zero: heuristic): wn warps per block (1, 2, 4, 8; they split
 * the block's chunks), blocks the grid (column slices x K splits; a given value is rounded up to a
 * whole number of splits per slice, at most one chunk per split, and the plan reports the grid that
 * runs), stages the chunks per warp and round (2, 4, 8: 2 x stages 16-byte weight loads in flight
 * per thread), tm the dot-product engine (1: mma.sync tensor cores, NVIDIA only; 2: CUDA-core FMAs).
 * Without a context: one block per slice (no K split, no workspace). */
static int plan_gemv(int bf16, int64_t M, int64_t K, int64_t N, awq_w4a16_ctx *ctx, const awq_w4a16_cfg *in,
                     awq_w4a16_cfg *c, awq_err *err) {
    (void)M;
    *c = in ? *in : awq_w4a16_cfg{0, 0, 0, 0};
    if (c->blocks < 0 || !(c->wn == 0 || c->wn == 1 || c->wn == 2 || c->wn == 4 || c->wn == 8) ||
        !(c->stages == 0 || c->stages == 2 || c->stages == 4 || c->stages == 8) ||
        !(c->tm == 0 || c->tm == ENG_MMA || c->tm == ENG_FMA))
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "bad gemv configuration wn=%d blocks=%d stages=%d tm=%d (wn in 1, 2, 4, 8; stages "
                           "(chunks per round) in 2, 4, 8; tm (engine) 1 = mma, 2 = fma)",
                           c->wn, c->blocks, c->stages, c->tm);
    if (c->tm == ENG_MMA && !AWQ_GPU_PTX)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "gemv engine 1 (mma) needs mma.sync (NVIDIA sm_80+); this build has none");
    if (c->tm == 0) c->tm = AWQ_GPU_PTX ? ENG_MMA : ENG_FMA;
    if (c->stages == 0) c->stages = GEMV_UK;
    if (c->wn == 0) c->wn = ctx ? GEMV_WN : GEMV_WN_NOCTX;
    const int64_t NT = (N + 15) / 16, KC = (K + 63) / 64, slices = (NT + GEMV_NTW - 1) / GEMV_NTW;
    if (NT * 512 > 0xffffffffll) /* k_gemv's 32-bit chunk-row stride */
        return awq_set_err(err, AWQ_ERR_VALUE, "N=%lld is too large for the gemv kernel (N < 2^27)", (long long)N);
    if (!ctx) {
        if (c->blocks && c->blocks != slices)
            return awq_set_err(err, AWQ_ERR_VALUE,
                               "blocks=%d other than one per 32-feature column slice (%lld) needs a context",
                               c->blocks, (long long)slices);
        c->blocks = (int)slices;
        return AWQ_OK;
    }
    int64_t S;
    if (c->blocks == 0) {
        /* one wave: as many K splits as keep every block resident, but every warp at least one full
         * round of chunks; beyond NCOUNTERS slices (N > 2M) no split (plenty of blocks anyway) */
        const int occ = gemv_occupancy(ctx, bf16, c->tm, c->stages, c->wn, err);
        if (occ < 0) return occ;
        const int64_t cap = (int64_t)ctx->sms * occ;
        const int64_t smax = (KC + (int64_t)c->wn * c->stages - 1) / ((int64_t)c->wn * c->stages);
        S = cap / slices;
        if (S > smax) S = smax;
        if (S < 1 || slices > NCOUNTERS) S = 1;
    } else {
        S = (c->blocks + slices - 1) / slices;
        if (S > KC) S = KC;
        if (S > 1 && slices > NCOUNTERS)
            return awq_set_err(err, AWQ_ERR_VALUE,
                               "%lld column slices exceed the context's %d counters: no K split",
                               (long long)slices, NCOUNTERS);
    }
    if (slices * S > 0x7fffffff) return awq_set_err(err, AWQ_ERR_VALUE, "problem too large for the gemv kernel");
    c->blocks = (int)(slices * S);
    return AWQ_OK;
}

extern "C" int awq_cuda_w4a16_plan(int64_t M, int64_t K, int64_t N, int64_t g, const awq_w4a16_ctx *ctx,
                                   int *path, awq_w4a16_cfg *cfg, awq_err *err) {
    *path = auto_path(M, g, ctx);
    memset(cfg, 0, sizeof(*cfg));
    if (*path == AWQ_PATH_GEMV) return plan_gemv(0, M, K, N, (awq_w4a16_ctx *)ctx, NULL, cfg, err);
    if (*path == AWQ_PATH_MMA) return plan_gemm(0, M, K, N, (awq_w4a16_ctx *)ctx, NULL, cfg, err);
    return AWQ_OK;
}

static int run_gemm(const void *x, int bf16, const void *qw, const int32_t *qz, const void *sc, int scvt,
                    const void *bias, void *y, int64_t M, int64_t K, int64_t N, int64_t g,
                    const awq_w4a16_cfg *cfg_in, awq_w4a16_ctx *ctx, gpuStream_t stream, awq_err *err) {
    awq_w4a16_cfg c;
    int st = plan_gemm(bf16, M, K, N, ctx, cfg_in, &c, err);
    if (st) return st;
    const int tl = __builtin_ctz(c.tm);
    GemmParams p;
    p.x = (const uint16_t *)x;
    p.qw = (const uint4 *)qw;
    p.qz = (const uint32_t *)qz;
    p.sc = (const uint16_t *)sc;
    p.bias = (const uint16_t *)bias;
    p.y = (uint16_t *)y;
    p.M = (int)M;
    p.K = (int)K;
    p.N = (int)N;
    p.g = (int)g;
    p.gshift = (g & (g - 1)) == 0 ? __builtin_ctzll((unsigned long long)g) : -1;
    p.KC = (int)((K + 63) / 64);
    p.NT = (int)((N + 15) / 16);
    p.wn = c.wn;
    p.MB = (int)((M + 8 * c.tm - 1) / (8 * c.tm));
    p.T = (p.NT + p.wn * NTG - 1) / (p.wn * NTG) * p.MB;
    p.stages = c.stages;
    p.srows = g % 64 == 0 ? 1 : 4;
    p.scvt = scvt;
    p.part = NULL;
    p.cnt = NULL;
    if (ctx) {
        const int64_t bm = M < 8 * c.tm ? M : 8 * c.tm;
        st = grow((void **)&ctx->part, &ctx->part_bytes, (size_t)2 * c.blocks * bm * p.wn * NTG * 16 * sizeof(float),
                  "stream-K partials", stream, err);
        if (st) return st;
        p.part = ctx->part;
        p.cnt = ctx->cnt;
    }
    gemm_fn fn = gemm_kernel(bf16, tl);
    const size_t smem = gemm_smem(tl, p.wn, p.stages);
    st = gemm_prepare(fn, smem, err);
    if (st) return st;
    fn<<<(unsigned)c.blocks, 32 * p.wn, smem, stream>>>(p);
    LAUNCH_CHECK("k_gemm");
    return AWQ_OK;
}

static int run_gemv(const void *x, int bf16, const void *qw, const int32_t *qz, const void *sc, int scvt,
                    const void *bias, void *y, int64_t M, int64_t K, int64_t N, int64_t g,
                    const awq_w4a16_cfg *cfg_in, awq_w4a16_ctx *ctx, gpuStream_t stream, awq_err *err) {
    awq_w4a16_cfg c;
    int st = plan_gemv(bf16, M, K, N, ctx, cfg_in, &c, err);
    if (st) return st;
    GemvParams p;
    p.x = (const uint16_t *)x;
    p.qw = (const uint4 *)qw;
    p.qz = (const uint32_t *)qz;
    p.sc = (const uint16_t *)sc;
    p.bias = (const uint16_t *)bias;
    p.y = (uint16_t *)y;
    p.M = (int)M;
    p.K = (int)K;
    p.N = (int)N;
    p.g = (int)g;
    p.gshift = (g & (g - 1)) == 0 ? __builtin_ctzll((unsigned long long)g) : -1;
    p.KC = (int)((K + 63) / 64);
    p.NT = (int)((N + 15) / 16);
    p.slices = (p.NT + GEMV_NTW - 1) / GEMV_NTW;
    p.S = c.blocks / p.slices;
    p.scvt = scvt;
    p.part = NULL;
    p.cnt = NULL;
    if (p.S > 1) {
        st = grow((void **)&ctx->part, &ctx->part_bytes, (size_t)c.blocks * 32 * M * sizeof(float),
                  "split-K partials", stream, err);
        if (st) return st;
        p.part = ctx->part;
        p.cnt = ctx->cnt;
    }
    gemv_kernel(bf16, c.tm, c.stages)<<<(unsigned)c.blocks, 32 * c.wn, 0, stream>>>(p);
    LAUNCH_CHECK("k_gemv");
    return AWQ_OK;
}

static int run_cublas(const void *x, int bf16, const void *qw, const int32_t *qz, const void *sc, int scvt,
                      const void *bias, void *y, int64_t M, int64_t K, int64_t N, int64_t g, awq_w4a16_ctx *ctx,
                      gpuStream_t stream, awq_err *err) {
    if (!ctx) return awq_set_err(err, AWQ_ERR_VALUE, "the cuBLAS path needs a context (awq_cuda_w4a16_ctx_new)");
    const int64_t NT = (N + 15) / 16, KC = (K + 63) / 64;
    /* slab: as many pairs of 16-feature tiles as fit the cap (all of W when it fits) */
    int64_t tiles = (int64_t)(SLAB_MAX_BYTES / ((size_t)K * 32 * 2)) * 2;
    if (tiles < 2) tiles = 2;
    if (tiles > NT) tiles = NT;
    int st = grow(&ctx->slab, &ctx->slab_bytes, (size_t)tiles * 16 * K * 2, "dequantized-weight slab", stream, err);
    if (st) return st;
    const gpuDataType_t dt = bf16 ? GPU_R_16BF : GPU_R_16F;
    GPUBLAS_CHECK(gpublasSetStream(ctx->blas, stream));
    GPUBLAS_CHECK(gpublasSetWorkspace(ctx->blas, ctx->blas_ws, BLAS_WS_BYTES));
    float alpha = 1.f, beta = 0.f;
    if (bias) {
        k_fill_bias<<<(unsigned)((M * N + 255) / 256), 256, 0, stream>>>((const uint16_t *)bias, (uint16_t *)y, M,
                                                                           (int)N);
        LAUNCH_CHECK("k_fill_bias");
        beta = 1.f;
    }
    for (int64_t nt0 = 0; nt0 < NT; nt0 += tiles) {
        const int64_t ntn = NT - nt0 < tiles ? NT - nt0 : tiles;
        const dim3 grid((unsigned)((ntn + 1) / 2), (unsigned)((KC + 3) / 4));
        if (bf16)
            k_dequant<BF16><<<grid, 256, 0, stream>>>((const uint4 *)qw, (const uint32_t *)qz, (const uint16_t *)sc,
                                                      (uint16_t *)ctx->slab, (int)K, (int)N, (int)g, (int)NT, (int)KC,
                                                      (int)nt0, (int)ntn, scvt);
        else
            k_dequant<F16><<<grid, 256, 0, stream>>>((const uint4 *)qw, (const uint32_t *)qz, (const uint16_t *)sc,
                                                     (uint16_t *)ctx->slab, (int)K, (int)N, (int)g, (int)NT, (int)KC,
                                                     (int)nt0, (int)ntn, scvt);
        LAUNCH_CHECK("k_dequant");
        const int64_t n0 = nt0 * 16;
        const int64_t nc = (n0 + ntn * 16 > N ? N : n0 + ntn * 16) - n0;
        /* column-major view: Y'[N, M] (ld N) = op(A) X'[K, M], A = the slab as col-major [K, nc] (ld K), op T */
        GPUBLAS_CHECK(gpublasGemmEx(ctx->blas, GPUBLAS_OP_T, GPUBLAS_OP_N, (int)nc, (int)M, (int)K, &alpha, ctx->slab, dt,
                                  (int)K, x, dt, (int)K, &beta, (uint16_t *)y + n0, dt, (int)N, GPUBLAS_COMPUTE_32F,
                                  GPUBLAS_GEMM_DEFAULT));
    }
    return AWQ_OK;
}

extern "C" int awq_cuda_w4a16(const void *x, int x_dtype, const void *qweight_rp, const int32_t *qzeros,
                              const void *scales, int s_dtype, const void *bias, void *y, int64_t M, int64_t K,
                              int64_t N, int64_t g, int path, const awq_w4a16_cfg *cfg, awq_w4a16_ctx *ctx,
                              void *stream, int *path_used, awq_err *err) {
    int st = check_common("awq_cuda_w4a16", x, x_dtype, qweight_rp, qzeros, scales, s_dtype, bias, y, M, K, N,
                          g, err);
    if (st) return st;
    if (path_used) *path_used = -1;
    if (path == AWQ_PATH_AUTO) path = auto_path(M, g, ctx);
    if ((path == AWQ_PATH_GEMV || path == AWQ_PATH_MMA) && g % 16)
        return awq_set_err(err, AWQ_ERR_VALUE,
                           "group size %lld: the GEMV and MMA kernels need a multiple of 16 (use the cuBLAS "
                           "path, which needs a context, or the reference)",
                           (long long)g);
    if (path == AWQ_PATH_GEMV && M > GEMV_MAX_M)
        return awq_set_err(err, AWQ_ERR_VALUE, "the GEMV path takes M <= %d (M=%lld)", GEMV_MAX_M, (long long)M);
    if (path == AWQ_PATH_MMA && !AWQ_GPU_PTX)
        return awq_set_err(err, AWQ_ERR_VALUE, "the MMA path needs mma.sync (NVIDIA sm_80+); this build has none");
    if (ctx) {
        int dev = 0;
        CUDA_CHECK(gpuGetDevice(&dev));
        if (dev != ctx->device)
            return awq_set_err(err, AWQ_ERR_VALUE, "the context belongs to device %d, the current device is %d",
                               ctx->device, dev);
    }
    if (path_used) *path_used = path;
    if (M == 0) return AWQ_OK;
    const int bf16 = x_dtype == AWQ_W4_BF16, scvt = bf16 && s_dtype == AWQ_W4_F16;
    gpuStream_t s = (gpuStream_t)stream;
    switch (path) {
    case AWQ_PATH_GEMV:
        return run_gemv(x, bf16, qweight_rp, qzeros, scales, scvt, bias, y, M, K, N, g, cfg, ctx, s, err);
    case AWQ_PATH_MMA:
        return run_gemm(x, bf16, qweight_rp, qzeros, scales, scvt, bias, y, M, K, N, g, cfg, ctx, s, err);
    case AWQ_PATH_CUBLAS:
        return run_cublas(x, bf16, qweight_rp, qzeros, scales, scvt, bias, y, M, K, N, g, ctx, s, err);
    case AWQ_PATH_REF:
        return awq_cuda_w4a16_ref(x, x_dtype, qweight_rp, qzeros, scales, s_dtype, bias, y, M, K, N, g, stream, err);
    default: return awq_set_err(err, AWQ_ERR_VALUE, "unknown path %d", path);
    }
}
