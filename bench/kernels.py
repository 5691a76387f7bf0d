"""Benchmark of the W4A16 CUDA kernels (awq._awq_C.cuda_w4a16) against torch fp16 matmul (cuBLAS).

Run on a GPU machine:  python3 bench/kernels.py [--out DIR] [--sweep] [--shapes 4096x4096,...]

For each K x N layer (group size 128) and M tokens: microseconds per call of our kernel (auto path;
per-path numbers for M = 1, 4, 16, 64, 256), of torch's fp16 x @ W^T (cuBLAS) in the same process, the
ratio fp16 / ours, and the bandwidth floor: the int4 layer's bytes (codes + fp16 scales + packed
zeros) over the device-to-device copy bandwidth measured here (bytes read + written per second),
as a percentage of our time. Timing: N_CALLS calls captured in one CUDA graph, each call on the next
of several copies of the weights (together > 5x the L2, so every call reads its weights from DRAM),
replayed REPLAYS times; the median replay over N_CALLS. Inputs are random (never zeros).
--sweep also times kernel configurations (wn, blocks, stages, tm) of the mma / gemv paths for M = 1/4/16/64/256
and prints the best, which is how the heuristic in w4a16.cu was set. For gemv the fields mean: warps per
block; grid (32-feature column slices x K splits, rounded up to whole splits; 1 = no split); 64-k chunks
per warp and round (2, 4, 8); engine (1 mma.sync, 2 CUDA-core FMA). --profile makes one call of each
PROFILE_CASES entry, for `ncu -k regex:"gemm|gemv" ... python3 bench/kernels.py --profile`.

Notes (H100 80GB HBM3, copy bandwidth 2.99 TB/s; fp16 cuBLAS GEMV at 8192 x 28672 reads 2.9 TB/s):
- v1, tile-major layout, weights global -> register ring, x from L1/L2: M=1 62.9-69 us at
  8192 x 28672 (1.8 TB/s); M=64 244 us (x loads from L2 exposed per token tile, 2-deep ring).
- v2, chunk-major layout, cp.async pipeline of W / x / scales / zeros in shared memory, split-K:
  M=64 139-193 us, M=256 466-506 us; M=1 unchanged (~62 us). ncu at M=1: DRAM 61%, issue slots
  57% busy, SMs active 77% of the time (0.73 waves: blocks finish unevenly).
- v3, stream-K (equal unit ranges per resident block, ordered fix-up of split tiles): M=1 56-60 us
  (2.7x), M=16 70 us, M=64 134 us at 8192 x 28672. ncu at M=1: stalls are mostly fixed-latency
  dependencies (dequant -> mma chains) and barriers, not memory (long scoreboard is small): the
  SM side, ~210 dequant instructions per 2 KB of weights per warp plus the pipeline bookkeeping,
  limits the stream to ~70% of the copy bandwidth.
"""
import argparse
import json
import math
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo's awq
import awq._awq_C as C  # noqa: E402

SHAPES = [(4096, 4096), (4096, 12288), (4096, 22016), (11008, 4096), (8192, 28672), (28672, 8192)]
MS = [1, 4, 16, 64, 256, 1024, 4096]
PATH_MS = (1, 4, 16, 64, 256)  # rows that also get per-path numbers
G = 128
ROTATE_BYTES = 300 << 20  # weights cycled per graph: > 5x the 50-60 MB L2
N_CALLS = 24
REPLAYS = 7
TARGETS = {1: 3.3, 16: 3.0, 64: 2.0, 256: 0.95, 4096: 0.95}


def copy_bandwidth():
    """Device-to-device copy of 1 GiB: (bytes read + written) / s, median of 10."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.random_(0, 255)
    for _ in range(3):
        b.copy_(a)
    ts = []
    for _ in range(10):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        b.copy_(a)
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) / 1e3)
    del a, b
    return 2 * n / statistics.median(ts)


def graph_time(fn_of_i, copies, n_calls=N_CALLS, replays=REPLAYS):
    """us per call: n_calls calls fn_of_i(i % copies) captured in a graph, median of `replays` replays."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(min(copies, 3)):  # warm-up: workspaces, cuBLAS handles, module load
            fn_of_i(i)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(n_calls):
            fn_of_i(i % copies)
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(replays):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) * 1e3 / n_calls)
    del g
    return statistics.median(ts)


def int4_bytes(K, N, g=G):
    return K * N // 2 + (K // g) * N * 2 + (K // g) * N // 2


class Layer:
    """`copies` random int4 layers (repacked) and fp16 layers of one shape, resident on the GPU."""

    def __init__(self, K, N, copies4, copies16):
        Gn = K // G
        self.K, self.N = K, N
        self.rp, self.qz, self.sc = [], [], []
        nb = C.cuda_w4a16_repack_nbytes(K, N)
        st = torch.cuda.current_stream().cuda_stream
        for _ in range(copies4):
            qw = torch.randint(-2**31, 2**31 - 1, (K, N // 8), dtype=torch.int32, device="cuda")
            rp = torch.empty(nb, dtype=torch.uint8, device="cuda")
            C.cuda_w4a16_repack(qw.data_ptr(), rp.data_ptr(), K, N, st)
            self.rp.append(rp)
            self.qz.append(torch.randint(-2**31, 2**31 - 1, (Gn, N // 8), dtype=torch.int32, device="cuda"))
            self.sc.append((torch.rand(Gn, N, device="cuda") * 0.01 + 0.001).half())
        self.w16 = [torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies16)]
        torch.cuda.synchronize()

    def ours(self, x, y, ctx, path="auto", config=None):
        M = x.shape[0]

        def call(i):
            C.cuda_w4a16(x.data_ptr(), self.rp[i].data_ptr(), self.qz[i].data_ptr(), self.sc[i].data_ptr(), 0,
                         y.data_ptr(), M, self.K, self.N, G, "float16",
                         stream=torch.cuda.current_stream().cuda_stream, path=path, ctx=ctx, config=config)
        return call

    def fp16(self, x):
        def call(i):
            torch.nn.functional.linear(x, self.w16[i])
        return call


def sweep_configs(path, M, sms):
    """(wn, blocks, stages, tm) tried by --sweep; blocks as multiples of the SM count."""
    if path == "gemv":  # blocks 0: the heuristic's K split; 1: none
        return [(wn, b, st, 1) for wn in (2, 4, 8) for st in (2, 4, 8) for b in (0, 1, 2 * sms, 4 * sms, 8 * sms)] + [
            (0, 0, 0, 2)]
    if M <= 16:
        return [(wn, k * sms, st, 0) for wn in (2, 4) for k in (1, 2, 3, 4, 6) for st in (3, 4)]
    return [(wn, k * sms, st, tm) for tm in (4, 8) for wn in (2, 4) for k in (1, 2, 3) for st in (3, 4)]


PROFILE_CASES = [  # (K, N, M, path, config): one eager call each, for `ncu -k regex:"gemm|gemv"` (--profile)
    (4096, 4096, 1, "gemv", None),
    (8192, 28672, 1, "gemv", None),
    (8192, 28672, 4, "gemv", None),
    (28672, 8192, 1, "mma", None),
    (8192, 28672, 1, "mma", None),
    (8192, 28672, 16, "mma", None),
    (8192, 28672, 64, "mma", None),
    (8192, 28672, 1, "fp16", None),
]


def profile():
    ctx = C.cuda_w4a16_context()
    for K, N, M, path, cfg in PROFILE_CASES:
        lay = Layer(K, N, 1, 1 if path == "fp16" else 0)
        x = torch.randn(M, K, device="cuda", dtype=torch.float16)
        y = torch.empty(M, N, device="cuda", dtype=torch.float16)
        (lay.fp16(x) if path == "fp16" else lay.ours(x, y, ctx, path=path, config=cfg))(0)
        torch.cuda.synchronize()
        print("profiled", K, N, M, path, cfg, flush=True)
        del lay


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--shapes", default=None, help="e.g. 4096x4096,8192x28672")
    ap.add_argument("--ms", default=None, help="e.g. 1,16,64")
    ap.add_argument("--profile", action="store_true", help="one call of each PROFILE_CASES entry (for ncu)")
    args = ap.parse_args()
    if args.profile:
        return profile()
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = MS if not args.ms else [int(v) for v in args.ms.split(",")]

    card = torch.cuda.get_device_name()
    props = torch.cuda.get_device_properties(0)
    bw = copy_bandwidth()
    print(f"card: {card}, {props.multi_processor_count} SMs, L2 {getattr(props, 'L2_cache_size', 0) >> 20} MB; "
          f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write); torch {torch.__version__}", flush=True)
    ctx = C.cuda_w4a16_context()
    rows, sweep = [], []
    for K, N in shapes:
        b4, b16 = int4_bytes(K, N), K * N * 2
        lay = Layer(K, N, max(2, math.ceil(ROTATE_BYTES / b4)), max(2, math.ceil(ROTATE_BYTES / b16)))
        floor_us = b4 / bw * 1e6
        for M in ms:
            x = torch.randn(M, K, device="cuda", dtype=torch.float16)
            y = torch.empty(M, N, device="cuda", dtype=torch.float16)
            t16 = graph_time(lay.fp16(x), len(lay.w16))
            plan = C.cuda_w4a16_plan(M, K, N, G, ctx)
            tauto = graph_time(lay.ours(x, y, ctx), len(lay.rp))
            row = {"K": K, "N": N, "M": M, "fp16_us": t16, "auto_us": tauto, "plan": plan,
                   "floor_us": floor_us}
            if M in PATH_MS:
                for path in ("gemv", "mma", "cublas"):
                    if path == "gemv" and M > 8:
                        continue
                    row[f"{path}_us"] = graph_time(lay.ours(x, y, ctx, path=path), len(lay.rp))
            rows.append(row)
            extra = " ".join(f"{p}={row[p + '_us']:.1f}" for p in ("gemv", "mma", "cublas") if p + "_us" in row)
            print(f"{K:>6}x{N:<6} M={M:<5} fp16 {t16:9.1f} us  ours {tauto:9.1f} us  x{t16 / tauto:5.2f}  "
                  f"floor {100 * floor_us / tauto:5.1f}%  [{plan['path']} {plan['wn']},{plan['blocks']},{plan['stages']},"
                  f"{plan['tm']}] {extra}", flush=True)
            if args.sweep and M in (1, 4, 16, 64, 256):
                best = None
                for path in ("mma", "gemv"):
                    if path == "gemv" and M > 8:
                        continue
                    for cfg in sweep_configs(path, M, props.multi_processor_count):
                        try:
                            t = graph_time(lay.ours(x, y, ctx, path=path, config=cfg), len(lay.rp), 12, 3)
                        except (ValueError, RuntimeError):
                            continue
                        sweep.append({"K": K, "N": N, "M": M, "path": path, "cfg": cfg, "us": t})
                        if best is None or t < best[0]:
                            best = (t, path, cfg)
                print(f"    sweep best: {best[1]} {best[2]} {best[0]:.1f} us (auto {tauto:.1f})", flush=True)
            del x, y
        del lay
        torch.cuda.empty_cache()

    print()
    print(f"W4A16 g{G} vs fp16 cuBLAS on {card} (CUDA graphs, weights rotated past L2; "
          f"floor = int4 bytes / {bw / 1e12:.2f} TB/s)")
    print(f"{'K x N':>13} {'M':>5} {'fp16 us':>9} {'ours us':>9} {'ratio':>6} {'%floor':>6} {'path':>7} "
          f"{'gemv':>8} {'mma':>8} {'cublas':>8}")
    for r in rows:
        f = lambda k: f"{r[k]:8.1f}" if k in r else f"{'':>8}"  # noqa: E731
        print(f"{r['K']:>6}x{r['N']:<6} {r['M']:>5} {r['fp16_us']:9.1f} {r['auto_us']:9.1f} "
              f"{r['fp16_us'] / r['auto_us']:6.2f} {100 * r['floor_us'] / r['auto_us']:6.1f} "
              f"{r['plan']['path']:>7} {f('gemv_us')} {f('mma_us')} {f('cublas_us')}")
    print("targets (fp16 / ours): " + ", ".join(f"M={m}: >= {t}" for m, t in TARGETS.items()))
    for r in rows:
        t = TARGETS.get(r["M"])
        if t is None or (r["M"] == 1 and (r["K"], r["N"]) not in ((8192, 28672), (4096, 22016))):
            continue
        ratio = r["fp16_us"] / r["auto_us"]
        print(f"  {r['K']}x{r['N']} M={r['M']}: {ratio:.2f} {'met' if ratio >= t else 'MISSED'}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "kernels.json"), "w") as f:
            json.dump({"card": card, "copy_bw": bw, "rows": rows, "sweep": sweep}, f, indent=1)


if __name__ == "__main__":
    main()
