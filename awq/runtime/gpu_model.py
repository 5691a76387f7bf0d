"""The decoder LM on an NVIDIA GPU: the same DecoderLM and block forward as on the CPU, with
activations as GpuTensors in fp16 (or bf16), awq.gpu's ops, the CUDA W4A16 kernels for AWQ linears
and a KV cache in device memory.

Weights go to the device once, when the runtime is built: packed AWQ tensors are repacked for the
kernels (csrc/kernels/w4a16.cu), fp16 weights (lm_head, unquantized linears) are copied, norms
stay fp32. Embedding rows are gathered on the host from the memory-mapped table and uploaded per
call. Correct first; fused blocks and CUDA graphs belong to the fast-generation work.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from awq._backend import C


def require_gpu():
    """awq.gpu, after checking a CUDA device is usable (else RuntimeError naming why)."""
    from awq import gpu

    if not gpu.is_available():
        from awq._backend import require_cuda

        require_cuda()
    return gpu


def upload(gpu, a: np.ndarray, dt, device: int):
    """A host array as a GpuTensor of dtype dt (sent as fp32, converted on the device)."""
    t = gpu.from_numpy(np.ascontiguousarray(a, np.float32), device)
    return t if dt == gpu.float32 else t.to(dt)


class GpuLinear:
    """y = x @ w^T + b through cuBLAS (awq.gpu.linear); w a GpuTensor [N, K], b fp32 or None."""

    def __init__(self, gpu, w, bias):
        self.gpu, self.weight, self.bias = gpu, w, bias
        self.out_features, self.in_features = w.shape

    def __call__(self, x):
        return self.gpu.linear(x, self.weight, self.bias)


class GpuDevice:
    name = "cuda"

    def __init__(self, dtype: str = "float16", device: int = 0):
        gpu = require_gpu()
        self.gpu, self.index = gpu, device
        self.dt = gpu.as_dtype(dtype)
        if self.dt not in (gpu.float16, gpu.bfloat16):
            raise ValueError(f"GPU generation runs in float16 or bfloat16, not {self.dt.name}")
        self.ops = gpu
        self.w4ctx = C.cuda_w4a16_context()

    # ---- tensors ----------------------------------------------------------------------------
    def upload(self, x: np.ndarray):
        return upload(self.gpu, x, self.dt, self.index)

    def download(self, t) -> np.ndarray:
        return t.to(self.gpu.float32).to_numpy()

    def last_tokens(self, h):
        B, T, D = h.shape
        g = self.gpu
        h2 = h.reshape(B * T, D)
        if B == 1:
            return g.rows(h2, T - 1, T).reshape(1, 1, D)
        out = g.empty((B, D), h.dtype, self.index, what="last-token hidden states")
        for b in range(B):
            g.rows(out, b, b + 1).copy_(g.rows(h2, b * T + T - 1, b * T + T))
        return out.reshape(B, 1, D)

    def new_cache(self, num_layers, batch, max_len, kv_heads, head_dim, v_dim=None):
        return GpuKVCache(self, num_layers, batch, max_len, kv_heads, head_dim, v_dim)

    # ---- modules ----------------------------------------------------------------------------
    def norm(self, w: np.ndarray):
        return self.gpu.from_numpy(np.ascontiguousarray(w, np.float32), self.index)

    def dense(self, w: np.ndarray, bias=None):
        """A dense linear with weights stored in the activation dtype (lm_head, unquantized)."""
        gw = self.upload(np.asarray(w, np.float32)) if w.dtype != np.float16 or self.dt != self.gpu.float16 \
            else self.gpu.from_numpy(np.ascontiguousarray(w), self.index)
        b = None if bias is None else self.norm(bias)
        return GpuLinear(self.gpu, gw, b)

    def awq(self, lin):
        """An AWQLinear (host packed tensors) -> GpuAWQLinear."""
        return GpuAWQLinear(self, lin.qweight, lin.qzeros, lin.scales, lin.bias, lin.group_size)


class GpuAWQLinear:
    """y = x @ W + b with the CUDA W4A16 kernels; qweight repacked once, qzeros/scales as stored."""

    def __init__(self, dev: GpuDevice, qweight, qzeros, scales, bias, group_size: int):
        g = dev.gpu
        K, n8 = qweight.shape
        self.dev, self.K, self.N, self.g = dev, K, n8 * 8, group_size
        self.in_features, self.out_features = K, self.N
        qw = g.from_numpy(np.ascontiguousarray(qweight).view(np.int32), dev.index)
        self.qweight = g.empty((C.cuda_w4a16_repack_nbytes(K, self.N),), g.uint8, dev.index,
                               what=f"repacked qweight {K}x{self.N}")
        C.cuda_w4a16_repack(qw.ptr, self.qweight.ptr, K, self.N)
        self.qzeros = g.from_numpy(np.ascontiguousarray(qzeros).view(np.int32), dev.index)
        self.scales = g.from_numpy(np.ascontiguousarray(scales, np.float16), dev.index)
        self.bias = None if bias is None else dev.upload(np.asarray(bias, np.float32))
        self._keep = qw  # the repack is queued on the default stream; keep its source alive

    def __call__(self, x):
        g, dev = self.dev.gpu, self.dev
        M = x.size // self.K
        y = g.empty((M, self.N), dev.dt, dev.index, what="W4A16 output")
        C.cuda_w4a16(x.ptr, self.qweight.ptr, self.qzeros.ptr, self.scales.ptr,
                     0 if self.bias is None else self.bias.ptr, y.ptr, M, self.K, self.N, self.g,
                     dev.dt.name, 0, "auto", dev.w4ctx, "float16")
        return y


class GpuKVCache:
    """Keys and values [B, max_len, Hkv, d] per layer in device memory (activation dtype)."""

    def __init__(self, dev: GpuDevice, num_layers, batch, max_len, kv_heads, head_dim, v_dim=None):
        g = dev.gpu
        v_dim = v_dim or head_dim
        self.k = [g.zeros((batch, max_len, kv_heads, head_dim), dev.dt, dev.index) for _ in range(num_layers)]
        self.v = [g.zeros((batch, max_len, kv_heads, v_dim), dev.dt, dev.index) for _ in range(num_layers)]
        self.dev, self.batch, self.max_len, self.length = dev, batch, max_len, 0

    def write(self, layer_idx: int, pos0: int, k, v):
        g = self.dev.gpu
        B, T = k.shape[0], k.shape[1]
        for dst, src in ((self.k[layer_idx], k), (self.v[layer_idx], v)):
            row = dst.shape[2] * dst.shape[3]
            d2 = dst.reshape(B * self.max_len, row)
            s2 = src.reshape(B * T, row)
            for b in range(B):
                g.rows(d2, b * self.max_len + pos0, b * self.max_len + pos0 + T).copy_(
                    g.rows(s2, b * T, (b + 1) * T))


def gpu_layers(dev: GpuDevice, layers) -> list:
    """Runtime layer dicts (AWQLinear / F16Linear / DenseLinear / norm arrays) -> GPU modules."""
    from awq.runtime.layers import AWQLinear, DenseLinear, F16Linear

    out = []
    for layer in layers:
        W: Dict = {}
        for name, v in layer.items():
            if isinstance(v, AWQLinear):
                W[name] = dev.awq(v)
            elif isinstance(v, (F16Linear, DenseLinear)):
                W[name] = dev.dense(v.weight, v.bias)
            else:
                W[name] = dev.norm(v)
        out.append(W)
    return out
