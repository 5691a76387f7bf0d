"""Decoder-layer forward over the C core, shared by calibration and generation.

Linear kinds (one `__call__(x[M, K] f32) -> y[M, N] f32` interface):
  DenseLinear  fp32 weight [N, K] (calibration, dequantized non-4-bit layers)
  F16Linear    fp16 weight [N, K] (unquantized checkpoints, tied lm_head), read in place from mmap
  AWQLinear    AutoAWQ GEMM layout (qweight [K, N/8], qzeros [G, N/8], scales fp16 [G, N])

The block forward is written once per block kind ("llama": pre-norm attention then pre-norm
gated MLP) in terms of spec names; `capture` collects the input of every linear for AWQ.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from awq._backend import C


class DenseLinear:
    def __init__(self, weight: np.ndarray, bias: Optional[np.ndarray] = None):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.out_features, self.in_features = self.weight.shape

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return C.linear(x, self.weight, self.bias)


class F16Linear:
    def __init__(self, weight: np.ndarray, bias: Optional[np.ndarray] = None):
        if weight.dtype != np.float16:
            raise TypeError("F16Linear needs a float16 weight")
        self.weight = weight
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.out_features, self.in_features = weight.shape

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return C.f16_matmul(x, self.weight, self.bias)


class AWQLinear:
    """A 4-bit AWQ linear in the GEMM layout, computed by the fused W4A16 kernels."""

    def __init__(self, qweight, qzeros, scales, bias, group_size: int):
        K, n8 = qweight.shape
        N = n8 * 8
        if group_size <= 0 or K % group_size:
            raise ValueError(f"AWQ linear: group size {group_size} does not divide in_features {K}")
        G = K // group_size
        if qzeros.shape != (G, n8) or scales.shape != (G, N):
            raise ValueError(
                f"AWQ linear: inconsistent shapes qweight {qweight.shape}, qzeros {qzeros.shape}, "
                f"scales {scales.shape} for group size {group_size}")
        self.qweight, self.qzeros = qweight, qzeros
        self.scales = np.asarray(scales, dtype=np.float16)
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.group_size = group_size
        self.in_features, self.out_features = K, N

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return C.w4a16_matmul(x, self.qweight, self.qzeros, self.scales, self.bias, self.group_size)


def make_linear(weight, bias=None):
    """Dense linear from a checkpoint tensor: fp16 stays fp16 (zero-copy), anything else -> fp32."""
    if isinstance(weight, np.ndarray) and weight.dtype == np.float16:
        return F16Linear(weight, bias)
    return DenseLinear(weight, bias)


class CpuOps:
    """The op set the block forward uses, on numpy arrays through the C core. A GPU op set
    (awq.gpu) offers the same names and signatures over GpuTensors."""

    rmsnorm = staticmethod(C.rmsnorm)
    rope_ = staticmethod(C.rope_)
    attention = staticmethod(C.attention)
    silu_mul = staticmethod(C.silu_mul)

    @staticmethod
    def add(a, b, out=None):
        return np.add(a, b, out=out)


CPU_OPS = CpuOps()


class KVCache:
    """Preallocated per-layer keys and values [B, max_len, Hkv, d] fp32 and the filled length."""

    def __init__(self, num_layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int):
        shape = (batch, max_len, kv_heads, head_dim)
        self.k = [np.zeros(shape, np.float32) for _ in range(num_layers)]
        self.v = [np.zeros(shape, np.float32) for _ in range(num_layers)]
        self.batch, self.max_len, self.length = batch, max_len, 0

    def write(self, layer_idx: int, pos0: int, k, v):
        """Stores k, v [B, T, Hkv, d] at positions pos0 .. pos0+T-1 of layer layer_idx."""
        T = k.shape[1]
        self.k[layer_idx][:, pos0:pos0 + T] = k
        self.v[layer_idx][:, pos0:pos0 + T] = v


def _rms(x2, w, eps: float, norm_kind: str, ops=CPU_OPS):
    return ops.rmsnorm(x2, w, eps, 1.0 if norm_kind == "rms_unit" else 0.0)


def attn_forward(spec, cfg, W: Dict, h, B: int, T: int, rope, q_pos0: int = 0,
                 cache: Optional[KVCache] = None, layer_idx: int = 0,
                 capture: Optional[Dict] = None, ops=CPU_OPS):
    """Self-attention block. h: normed input [B*T, D] -> [B*T, D] (before the residual add)."""
    Hq, Hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = W[spec.q](h)
    k = W[spec.k](h)
    v = W[spec.v](h)
    if spec.q_norm:
        q = _rms(q.reshape(-1, d), W[spec.q_norm], cfg.rms_norm_eps, spec.norm_kind, ops)
        k = _rms(k.reshape(-1, d), W[spec.k_norm], cfg.rms_norm_eps, spec.norm_kind, ops)
    q = q.reshape(B * T, Hq, d)
    k = k.reshape(B * T, Hkv, d)
    cos, sin = rope
    ops.rope_(q, cos, sin, cfg.rotary_dim)
    ops.rope_(k, cos, sin, cfg.rotary_dim)
    q = q.reshape(B, T, Hq, d)
    k = k.reshape(B, T, Hkv, d)
    v = v.reshape(B, T, Hkv, d)
    if cache is not None:
        if q_pos0 + T > cache.max_len:
            raise ValueError(f"sequence of {q_pos0 + T} tokens exceeds the KV cache ({cache.max_len})")
        cache.write(layer_idx, q_pos0, k, v)
        k_all, v_all = cache.k[layer_idx], cache.v[layer_idx]
        # Keys past q_pos0 + T are masked by causality, so the whole buffer is passed uncopied.
        o = ops.attention(q, k_all, v_all, d ** -0.5, q_pos0, cfg.sliding_window)
    else:
        o = ops.attention(q, k, v, d ** -0.5, 0, cfg.sliding_window)
    o = o.reshape(B * T, Hq * d)
    if capture is not None:
        capture[spec.o] = o
    return W[spec.o](o)


def mlp_forward(spec, W: Dict, h, capture: Optional[Dict] = None, ops=CPU_OPS):
    """Gated MLP: down(act(gate(h)) * up(h)); h [M, D] -> [M, D]."""
    g = W[spec.gate](h)
    u = W[spec.up](h)
    a = ops.silu_mul(g, u)
    if capture is not None:
        capture[spec.down] = a
    return W[spec.down](a)


def layer_forward(spec, cfg, W: Dict, x, rope, q_pos0: int = 0,
                  cache: Optional[KVCache] = None, layer_idx: int = 0,
                  capture: Optional[Dict] = None, ops=CPU_OPS):
    """One decoder layer. x: [B, T, D] -> [B, T, D] (new array)."""
    B, T, D = x.shape
    x2 = x.reshape(B * T, D)
    h = _rms(x2, W[spec.input_norm], cfg.rms_norm_eps, spec.norm_kind, ops)
    if capture is not None:
        capture[spec.q] = h
    a = attn_forward(spec, cfg, W, h, B, T, rope, q_pos0, cache, layer_idx, capture, ops)
    x2 = ops.add(x2, a)
    h = _rms(x2, W[spec.post_attn_norm], cfg.rms_norm_eps, spec.norm_kind, ops)
    if capture is not None:
        capture[spec.gate] = h
    ops.add(x2, mlp_forward(spec, W, h, capture, ops), out=x2)
    return x2.reshape(B, T, D)


def block_rope(cfg, B: int, T: int, q_pos0: int = 0):
    """cos/sin tables for B rows of T tokens at positions q_pos0 .. q_pos0+T-1: [B*T, rot/2]."""
    cos, sin = cfg.rope_tables(np.arange(q_pos0, q_pos0 + T))
    if B > 1:
        cos, sin = np.tile(cos, (B, 1)), np.tile(sin, (B, 1))
    return cos, sin
