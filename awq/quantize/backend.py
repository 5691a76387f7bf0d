"""Where the quantizer's heavy work runs: the CPU (numpy + C core, fp32) or an NVIDIA GPU
(awq.gpu: cuBLAS and our CUDA ops, in the checkpoint's 16-bit dtype, fp32 for fp32 checkpoints).

The quantizer keeps the algorithm; a backend supplies tensors and the few primitives it needs:
the block forward's op set, dense linears, activation buffers, per-channel |x| means, candidate
weights Q(W*s)/s, output-MSE sums, the clip search. Host fp32 copies of the layer's weights stay
the source of truth for scaling, clipping and the final packing, so both backends write the same
kind of checkpoint.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from awq._backend import C
from awq.runtime.gpu_model import GpuLinear, require_gpu, upload
from awq.runtime.layers import CPU_OPS, DenseLinear


class CpuBackend:
    name = "cpu"
    ops = CPU_OPS

    def activations(self, x: np.ndarray):
        return np.ascontiguousarray(x, dtype=np.float32)

    def empty(self, shape):
        return np.empty(shape, np.float32)

    def rows(self, t, a0: int, a1: int):
        return t[a0:a1]

    def set_rows(self, dst, a0: int, a1: int, src):
        dst[a0:a1] = src

    def weight(self, w: np.ndarray):
        return w

    def linear(self, w, bias: Optional[np.ndarray]):
        return DenseLinear(w, bias)

    def abs_mean(self, x) -> np.ndarray:
        return C.abs_mean(x).astype(np.float64)

    def candidate(self, w, s, gs: int, bits: int, zero_point: bool):
        """Q(W * s) / s (s None: Q(W)) for an fp32 host weight."""
        if s is None:
            return C.pseudo_quantize(w, gs, bits, zero_point)
        return C.pseudo_quantize(w * s, gs, bits, zero_point) / s

    def sq_diff_sum(self, a, b) -> float:
        d = (a - b).ravel()
        return float(np.dot(d, d))

    def single_linear_loss(self, x_in: np.ndarray, w0: np.ndarray):
        """loss(W') = MSE(X W^T, X W'^T) = sum_n d_n G d_n^T / (T N), G = X^T X, d = W - W'."""
        xt = np.ascontiguousarray(x_in.T)
        G = C.linear(xt, xt, None)
        ntok = x_in.shape[0]

        def loss(wc):
            d = np.ascontiguousarray(w0 - wc)
            dg = C.linear(d, G, None)
            return float(np.einsum("nk,nk->", dg, d, dtype=np.float64)) / (ntok * w0.shape[0])

        return loss

    def unscale_(self, feat, s: np.ndarray):
        feat /= s[None, :]

    def clip_search(self, w: np.ndarray, feat, step: int, gs: int, bits: int, zero_point: bool,
                    n_grid: int, max_shrink: float) -> np.ndarray:
        xs = np.ascontiguousarray(feat[::step])
        return C.clip_search(w, xs, gs, bits, zero_point, n_grid, max_shrink)


class CudaBackend:
    """GPU backend. dtype: "float16", "bfloat16" or "float32" (activations and weights on the GPU;
    arithmetic and accumulation are fp32 in every kernel)."""

    name = "cuda"

    def __init__(self, dtype: str = "float16", device: int = 0):
        gpu = require_gpu()
        self.gpu, self.device = gpu, device
        self.dt = gpu.as_dtype(dtype)
        self.ops = gpu

    def _up(self, a: np.ndarray):
        return upload(self.gpu, a, self.dt, self.device)

    def activations(self, x: np.ndarray):
        return self._up(x)

    def empty(self, shape):
        return self.gpu.empty(tuple(shape), self.dt, self.device, what="calibration activations")

    def rows(self, t, a0: int, a1: int):
        return self.gpu.rows(t, a0, a1)

    def set_rows(self, dst, a0: int, a1: int, src):
        self.gpu.rows(dst, a0, a1).copy_(src.reshape(-1))

    def weight(self, w: np.ndarray):
        return self._up(w)

    def linear(self, w, bias: Optional[np.ndarray]):
        gw = w if isinstance(w, self.gpu.GpuTensor) else self._up(w)
        b = None if bias is None else self.gpu.from_numpy(np.ascontiguousarray(bias, np.float32), self.device)
        return GpuLinear(self.gpu, gw, b)

    def abs_mean(self, x) -> np.ndarray:
        return self.gpu.abs_mean(x).to_numpy().astype(np.float64)

    def candidate(self, w, s, gs: int, bits: int, zero_point: bool):
        g = self.gpu
        if s is None:
            return g.pseudo_quantize(w, gs, bits, zero_point, check_finite=False)
        sd = g.from_numpy(np.ascontiguousarray(s, np.float32), self.device)
        ws = g.scale_cols(w, sd)
        g.pseudo_quantize(ws, gs, bits, zero_point, out=ws, check_finite=False)
        return g.scale_cols(ws, sd, inverse=True, out=ws)

    def sq_diff_sum(self, a, b) -> float:
        return self.gpu.sq_diff_sum(a, b)

    def single_linear_loss(self, x_in, w0: np.ndarray):
        """Direct form on the GPU: the output of X W'^T against X W^T, both through cuBLAS."""
        g = self.gpu
        ref = g.linear(x_in, self._up(w0))
        denom = x_in.shape[0] * w0.shape[0]

        def loss(wc):
            return g.sq_diff_sum(g.linear(x_in, wc), ref) / denom

        return loss

    def unscale_(self, feat, s: np.ndarray):
        self.gpu.scale_cols(feat, np.ascontiguousarray(s, np.float32), inverse=True, out=feat)

    def clip_search(self, w: np.ndarray, feat, step: int, gs: int, bits: int, zero_point: bool,
                    n_grid: int, max_shrink: float) -> np.ndarray:
        g = self.gpu
        xs = _gather_rows(g, feat, step)
        mv = g.clip_search(self._up(w), xs, gs, bits, zero_point, n_grid, max_shrink)
        return mv.to_numpy()


def _gather_rows(g, feat, step: int):
    """feat[::step] as a new contiguous GpuTensor (one strided device copy)."""
    rows, K = feat.shape
    n = len(range(0, rows, step))
    out = g.empty((n, K), feat.dtype, feat.device, what="clip-search token sample")
    C.cuda_copy_strided(feat.context.handle, feat.itemsize, feat.ptr, (n, K), (step * K, 1), out.ptr, 0)
    return out
