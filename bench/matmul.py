"""Dense fp32 GEMM: awq._awq_C.linear (y = x @ w.T) against numpy's `x @ w.T`.

Shapes: the calibration products of SmolLM2-135M (M = 8192 tokens = 16 blocks of 512; (K, N) =
q/o (576, 576), k/v (576, 192), gate/up (576, 1536), down (1536, 576)) and a square 4096^3 GEMM.
Each cell is the median of several timed runs after one warm-up run; GFLOP/s = 2 M N K / time.

Run it as
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 bench/matmul.py
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE must be unset: they override the kernel / blocking OpenBLAS
picks for this CPU (in numpy's copy and in awq's), so the numbers would not be what users get.

Between the two implementations the script sleeps briefly: an OpenBLAS thread pool keeps spinning
for a while after a call and would steal cores from the other library's threads.
"""
import os
import platform
import statistics
import sys
import time

from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the in-tree build of awq
import awq._awq_C as C  # noqa: E402
from machine import blas_libraries, cpu_model  # noqa: E402

M_CALIB = 8192
SHAPES = [  # (M, K, N, what)
    (M_CALIB, 576, 576, "q_proj / o_proj"),
    (M_CALIB, 576, 192, "k_proj / v_proj"),
    (M_CALIB, 576, 1536, "gate_proj / up_proj"),
    (M_CALIB, 1536, 576, "down_proj"),
    (4096, 4096, 4096, "square 4096^3"),
]






def median_seconds(fn, runs):
    fn()  # warm-up: page in the output, start thread pools
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"WARNING: {var}={os.environ[var]} is set; rerun with "
                  "`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 bench/matmul.py`")
    rng = np.random.default_rng(0)
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    print(f"awq cpu_info: {C.cpu_info()}")
    rows = []
    for M, K, N, what in SHAPES:
        x = rng.standard_normal((M, K), dtype=np.float32)
        w = rng.standard_normal((N, K), dtype=np.float32)
        runs = 3 if M * N * K > 2e10 else 7
        t_np = median_seconds(lambda: x @ w.T, runs)
        time.sleep(0.5)  # let numpy's OpenBLAS threads go idle
        t_awq = median_seconds(lambda: C.linear(x, w), runs)
        time.sleep(0.5)
        # Same product, so the results must agree to fp32 GEMM rounding.
        ref = x[:64] @ w.T
        err = float(np.abs(C.linear(x[:64], w) - ref).max() / (np.abs(ref).max() + 1e-30))
        flop = 2.0 * M * N * K
        rows.append((f"{M}x{K} @ {K}x{N}", what, flop / t_np / 1e9, flop / t_awq / 1e9,
                     t_np / t_awq, err))
    for line in blas_libraries():
        print(f"blas: {line}")
    print()
    print(f"{'shape (M x K @ K x N)':<24} {'layer':<20} {'numpy GFLOP/s':>14} "
          f"{'awq GFLOP/s':>12} {'awq/numpy':>10} {'max rel diff':>13}")
    for shape, what, g_np, g_awq, ratio, err in rows:
        print(f"{shape:<24} {what:<20} {g_np:>14.1f} {g_awq:>12.1f} {ratio:>10.2f} {err:>13.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
