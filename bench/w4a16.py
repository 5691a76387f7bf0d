"""Benchmark of the W4A16 and fp16-weight matmuls (awq._awq_C) on SmolLM2-135M and 7B-like shapes.

Decode (M=1) is bound by the bytes of W: the table gives the weight bytes read per second (qweight +
scales + qzeros, or the fp16 matrix) against the machine's copy bandwidth measured here (numpy copy
of a 256 MB array, bytes read + written per second, on one thread and on two). Weights are views at
rotating offsets into a pool larger than the caches, so every call reads from DRAM as in a real
decode step over a whole model.
Prefill (M=512) is bound by multiply-adds: GFLOP/s against numpy's fp32 matmul on the already
dequantized weight (the best a dequantize-then-GEMM path could do, without the dequantize).

Run:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 bench/w4a16.py
(those two variables are set machine-wide and slow a current numpy's OpenBLAS; unset them here only).
"""
import os
import platform
import threading
import time

import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo's awq
import awq._awq_C as C  # noqa: E402
from machine import cpu_model  # noqa: E402

POOL_BYTES = 512 << 20  # weight pool the calls rotate through (larger than the last-level cache)
# (name, K, N, kind, group size). SmolLM2-135M's 576 is not a multiple of 128: its layers use g=64.
SHAPES = [
    ("q/o_proj 576x576 g64", 576, 576, "w4", 64),
    ("k/v_proj 576x192 g64", 576, 192, "w4", 64),
    ("gate/up 576x1536 g64", 576, 1536, "w4", 64),
    ("down 1536x576 g64", 1536, 576, "w4", 64),
    ("lm_head 576x49152 f16", 576, 49152, "f16", 0),
    ("4096x4096 g128", 4096, 4096, "w4", 128),
    ("4096x11008 g128", 4096, 11008, "w4", 128),
]




def cpu_busy(interval=0.25):
    """Fraction of CPU time used by anything over `interval` seconds (Linux /proc/stat), or None."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(a) for a in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]

    try:
        t0, i0 = snap()
        time.sleep(interval)
        t1, i1 = snap()
    except OSError:
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(limit_s=60.0):
    """Waits (up to limit_s) for other processes to leave the cores: the kernels use both cores, so
    a busy neighbour distorts every number. Returns the busy fraction last seen."""
    t0 = time.time()
    busy = cpu_busy()
    while busy is not None and busy > 0.1 and time.time() - t0 < limit_s:
        time.sleep(1.0)
        busy = cpu_busy()
    return busy


def median_time(fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def copy_bandwidth(nbytes=256 << 20):
    """(one thread, two threads) copy bandwidth in GB/s, counting bytes read + bytes written."""
    a = np.ones(nbytes // 4, np.float32)
    b = np.empty_like(a)
    t1 = median_time(lambda: np.copyto(b, a), 7)
    half = a.size // 2

    def two():
        th = [threading.Thread(target=np.copyto, args=(b[s], a[s]))
              for s in (slice(0, half), slice(half, None))]
        for t in th:
            t.start()
        for t in th:
            t.join()

    t2 = median_time(two, 7)
    return 2 * nbytes / t1 / 1e9, 2 * nbytes / t2 / 1e9


class Pool:
    """Rotating views into big buffers: call i gets a layer at a different place in memory."""

    def __init__(self, rng, K, N, kind, g):
        self.K, self.N, self.kind, self.g, self.i = K, N, kind, g, 0
        if kind == "w4":
            W, G = N // 8, K // g
            self.qsize, self.zsize, self.ssize = K * W, G * W, G * N
            per = self.qsize * 4 + self.zsize * 4 + self.ssize * 2
            self.n = max(2, min(4096, POOL_BYTES // per))
            self.q = rng.integers(-2**31, 2**31, size=self.n * self.qsize, dtype=np.int64).astype(np.int32)
            self.z = rng.integers(-2**31, 2**31, size=self.n * self.zsize, dtype=np.int64).astype(np.int32)
            self.s = np.full(self.n * self.ssize, 0.01, np.float16)
            self.bytes = self.qsize * 4 + self.zsize * 4 + self.ssize * 2
        else:
            self.wsize = N * K
            self.n = max(2, POOL_BYTES // (2 * self.wsize))
            self.w = (rng.standard_normal(self.n * self.wsize, dtype=np.float32) * 0.02).astype(np.float16)
            self.bytes = self.wsize * 2

    def layer(self, i):
        K, N = self.K, self.N
        i %= self.n
        if self.kind == "w4":
            return (self.q[i * self.qsize:(i + 1) * self.qsize].reshape(K, N // 8),
                    self.z[i * self.zsize:(i + 1) * self.zsize].reshape(K // self.g, N // 8),
                    self.s[i * self.ssize:(i + 1) * self.ssize].reshape(K // self.g, N))
        return (self.w[i * self.wsize:(i + 1) * self.wsize].reshape(N, K),)

    def call(self, x):
        lay = self.layer(self.i)
        self.i += 1
        if self.kind == "w4":
            return C.w4a16_matmul(x, *lay, None, self.g)
        return C.f16_matmul(x, lay[0], None)

    def dense(self):
        """The layer-0 weight as the fp32 [K, N] matrix numpy multiplies by."""
        if self.kind == "w4":
            q, z, s = self.layer(0)
            eye = np.eye(self.K, dtype=np.float32)
            return C.w4a16_matmul(eye, q, z, s, None, self.g)  # rows of W, exactly dequantized
        return self.layer(0)[0].astype(np.float32).T.copy()


def main():
    rng = np.random.default_rng(0)
    info = C.cpu_info()
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, python {platform.python_version()}, "
          f"numpy {np.__version__}")
    print(f"awq._awq_C.cpu_info(): {info}")
    try:
        from threadpoolctl import threadpool_info

        for p in threadpool_info():
            if p.get("user_api") == "blas":
                who = "numpy's" if "numpy" in p.get("filepath", "") else "awq's"
                print(f"BLAS ({who}): {p.get('internal_api')} {p.get('version')} "
                      f"({p.get('architecture')}, {p.get('threading_layer')}, {p.get('num_threads')} threads)")
    except ImportError:
        print("numpy BLAS: (threadpoolctl not installed)")
    busy = wait_idle()
    if busy is not None and busy > 0.1:
        print(f"WARNING: other processes use {100 * busy:.0f}% of the CPU; numbers are distorted")
    bw1, bw2 = copy_bandwidth()
    print(f"copy bandwidth, 256 MB numpy copy (read + write): {bw1:.1f} GB/s on 1 thread, "
          f"{bw2:.1f} GB/s on 2 threads")
    print()
    print("decode, M=1 (weights rotated through a 512 MB pool)")
    print(f"{'shape':<24}{'us/call':>10}{'weight MB':>11}{'GB/s':>8}{'% copy1T':>10}{'% copy2T':>10}")
    pools = {}
    for name, K, N, kind, g in SHAPES:
        pool = Pool(rng, K, N, kind, g)
        pools[name] = pool
        x = rng.standard_normal((1, K)).astype(np.float32)
        reps = 2000 if pool.bytes < (4 << 20) else 200
        wait_idle()
        t = median_time(lambda: pool.call(x), reps, warmup=20)
        gbs = pool.bytes / t / 1e9
        print(f"{name:<24}{t * 1e6:>10.1f}{pool.bytes / 1e6:>11.2f}{gbs:>8.1f}"
              f"{100 * gbs / bw1:>9.0f}%{100 * gbs / bw2:>9.0f}%")
    print()
    M = 512
    print(f"prefill, M={M} (GFLOP/s = 2*M*K*N / time; numpy = fp32 x @ W on the dequantized weight)")
    print(f"{'shape':<24}{'ms/call':>9}{'GFLOP/s':>9}{'numpy ms':>10}{'numpy GF/s':>11}{'ratio':>7}")
    for name, K, N, kind, g in SHAPES:
        pool = pools[name]
        x = rng.standard_normal((M, K)).astype(np.float32)
        wd = pool.dense()
        flops = 2.0 * M * K * N
        reps = max(3, min(50, int(2e11 / flops)))
        wait_idle()
        t = median_time(lambda: pool.call(x), reps)
        tn = median_time(lambda: x @ wd, reps)
        print(f"{name:<24}{t * 1e3:>9.2f}{flops / t / 1e9:>9.1f}{tn * 1e3:>10.2f}"
              f"{flops / tn / 1e9:>11.1f}{tn / t:>7.2f}")
        del wd


if __name__ == "__main__":
    main()
