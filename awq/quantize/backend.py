"""Where the quantizer's heavy work runs: the CPU (numpy + C core, fp32) or an NVIDIA GPU
(awq.gpu: cuBLAS and our CUDA ops, in the checkpoint's 16-bit dtype, fp32 for fp32 checkpoints).

The quantizer keeps the algorithm; a backend supplies tensors and the few primitives it needs:
the block forward's op set, dense linears, activation buffers, per-channel |x| means, candidate
weights Q(W*s)/s, output-MSE sums, the clip search, and the weight updates (w_mean, input-column
and output-row scaling, clamping, the final quantization).

The layer's linear weights live where the backend computes: fp32 numpy arrays on the CPU, fp32
GpuTensors on the GPU ("masters", uploaded once per layer; scaled, clipped and packed on the
device, so only the packed result comes back). Both run the same fp32 operations on the masters,
so the codes match given the same scales and clips. Weight updates return new objects (never
in place), which lets the GPU backend cache each master's 16-bit copy for the forward by identity.
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

    def begin_layer(self):
        pass

    def master(self, w: np.ndarray):
        return w

    def to_host(self, w) -> np.ndarray:
        return w

    def all_finite(self, w) -> bool:
        return bool(np.isfinite(w).all())

    def linear(self, w, bias: Optional[np.ndarray]):
        return DenseLinear(w, bias)

    def w_mean(self, ws, gs: int) -> np.ndarray:
        """Mean over all rows of ws of |w| / (group max |w| + 1e-6), float64 [K]."""
        wcat = np.concatenate(ws, axis=0)
        wa = np.abs(wcat).reshape(-1, gs)
        return (wa / (wa.max(axis=1, keepdims=True) + 1e-6)).reshape(wcat.shape).mean(axis=0, dtype=np.float64)

    def scale_in(self, w, s: np.ndarray):
        return np.ascontiguousarray(w * s[None, :])

    def unscale_out_rows(self, w, s: np.ndarray):
        """A copy of w with its last len(s) rows divided by s."""
        w = w.copy()
        w[-s.shape[0]:] /= s[:, None]
        return w

    def clamp(self, w, max_val, gs: int):
        N, K = w.shape
        mv = max_val[:, :, None]
        return np.clip(w.reshape(N, K // gs, gs), -mv, mv).reshape(N, K)

    def quantize(self, w, w_bit: int, gs: int, zero_point: bool, bias, name: str):
        from awq.quantize.quantizer import quantize_weight

        return quantize_weight(w, w_bit, gs, zero_point, bias, name)

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

        self._cast = {}  # id(fp32 master) -> (master, its copy in self.dt) for the layer's forwards

    def _up(self, a: np.ndarray):
        return upload(self.gpu, a, self.dt, self.device)

    def _fwd(self, w):
        """The compute-dtype copy of a weight (fp32 masters are cast once, then cached)."""
        if w.dtype == self.dt:
            return w
        hit = self._cast.get(id(w))
        if hit is None or hit[0] is not w:
            hit = self._cast[id(w)] = (w, w.to(self.dt))
        return hit[1]

    def begin_layer(self):
        self._cast.clear()

    def master(self, w: np.ndarray):
        return self.gpu.from_numpy(np.ascontiguousarray(w, np.float32), self.device)

    def to_host(self, w) -> np.ndarray:
        return w.to_numpy()

    def all_finite(self, w) -> bool:
        # inf - inf and NaN - NaN are NaN: one pass over the device copy
        return self.gpu.sq_diff_sum(w, w) == 0.0

    def w_mean(self, ws, gs: int) -> np.ndarray:
        return self.gpu.weight_mean(ws, gs)

    def scale_in(self, w, s: np.ndarray):
        return self.gpu.scale_cols(w, np.ascontiguousarray(s, np.float32))

    def unscale_out_rows(self, w, s: np.ndarray):
        g, n = self.gpu, s.shape[0]
        out = g.empty(w.shape, w.dtype, w.device, what="scaled weight")
        out.copy_(w)
        tail = g.rows(out, w.shape[0] - n, w.shape[0])
        g.scale_rows(tail, np.ascontiguousarray(s, np.float32), inverse=True, out=tail)
        return out

    def clamp(self, w, max_val, gs: int):
        return self.gpu.clamp_groups(w, max_val, gs)

    def quantize(self, w, w_bit: int, gs: int, zero_point: bool, bias, name: str):
        from awq.quantize.quantizer import QuantizedLinear

        N, K = w.shape
        try:
            if w_bit != 4:
                dq = self.gpu.pseudo_quantize(w, gs, w_bit, zero_point).to_numpy()
                return QuantizedLinear(K, N, w_bit, gs, bias, dequantized=dq)
            qweight, scales, zeros = self.gpu.quantize_gemm(w, gs, zero_point)
        except (FloatingPointError, ValueError) as e:
            raise type(e)(f"{name}: {e}") from None
        return QuantizedLinear(K, N, w_bit, gs, bias, qweight=qweight,
                               qzeros=C.pack_gemm(np.ascontiguousarray(zeros.T)),
                               scales=np.ascontiguousarray(scales.T).astype(np.float16))

    def activations(self, x: np.ndarray):
        return self._up(x)

    def empty(self, shape):
        return self.gpu.empty(tuple(shape), self.dt, self.device, what="calibration activations")

    def rows(self, t, a0: int, a1: int):
        return self.gpu.rows(t, a0, a1)

    def set_rows(self, dst, a0: int, a1: int, src):
        self.gpu.rows(dst, a0, a1).copy_(src.reshape(-1))

    def linear(self, w, bias: Optional[np.ndarray]):
        b = None if bias is None else self.gpu.from_numpy(np.ascontiguousarray(bias, np.float32), self.device)
        return GpuLinear(self.gpu, self._fwd(w), b)

    def abs_mean(self, x) -> np.ndarray:
        return self.gpu.abs_mean(x).to_numpy().astype(np.float64)

    def candidate(self, w, s, gs: int, bits: int, zero_point: bool):
        """Q(W * s) / s in fp32 from the master, returned in the compute dtype."""
        g = self.gpu
        if s is None:
            return g.pseudo_quantize(w, gs, bits, zero_point, check_finite=False).to(self.dt)
        sd = g.from_numpy(np.ascontiguousarray(s, np.float32), self.device)
        ws = g.scale_cols(w, sd)
        g.pseudo_quantize(ws, gs, bits, zero_point, out=ws, check_finite=False)
        return g.scale_cols(ws, sd, inverse=True, out=ws).to(self.dt)

    def sq_diff_sum(self, a, b) -> float:
        return self.gpu.sq_diff_sum(a, b)

    def single_linear_loss(self, x_in, w0: np.ndarray):
        """Direct form on the GPU: the output of X W'^T against X W^T, both through cuBLAS."""
        g = self.gpu
        ref = g.linear(x_in, self._fwd(w0))
        denom = x_in.shape[0] * w0.shape[0]

        def loss(wc):
            return g.sq_diff_sum(g.linear(x_in, self._fwd(wc)), ref) / denom

        return loss

    def unscale_(self, feat, s: np.ndarray):
        self.gpu.scale_cols(feat, np.ascontiguousarray(s, np.float32), inverse=True, out=feat)

    def clip_search(self, w, feat, step: int, gs: int, bits: int, zero_point: bool,
                    n_grid: int, max_shrink: float):
        """max_val [N, G] fp32, left on the device for clamp()."""
        g = self.gpu
        xs = _gather_rows(g, feat, step)
        return g.clip_search(self._fwd(w), xs, gs, bits, zero_point, n_grid, max_shrink)


def _gather_rows(g, feat, step: int):
    """feat[::step] as a new contiguous GpuTensor (one strided device copy)."""
    rows, K = feat.shape
    n = len(range(0, rows, step))
    out = g.empty((n, K), feat.dtype, feat.device, what="clip-search token sample")
    C.cuda_copy_strided(feat.context.handle, feat.itemsize, feat.ptr, (n, K), (step * K, 1), out.ptr, 0)
    return out
