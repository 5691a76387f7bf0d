"""Decoder-layer forward over the C core, shared by calibration and generation.

Linear kinds (one `__call__(x[M, K] f32) -> y[M, N] f32` interface):
  DenseLinear  fp32 weight [N, K] (calibration, dequantized non-4-bit layers)
  F16Linear    fp16 weight [N, K] (unquantized checkpoints, tied lm_head), read in place from mmap
  AWQLinear    AutoAWQ GEMM layout (qweight [K, N/8], qzeros [G, N/8], scales fp16 [G, N])

The block forward is written once per block kind ("llama": pre-norm attention then pre-norm
gated MLP) in terms of spec names; `capture` collects the input of every linear for AWQ.
"""
from __future__ import annotations

import math
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
    (awq.gpu) offers the same names and signatures over GpuTensors (for the blocks it covers)."""

    rmsnorm = staticmethod(C.rmsnorm)
    layernorm = staticmethod(C.layernorm)
    rope_ = staticmethod(C.rope_)
    attention = staticmethod(C.attention)
    silu_mul = staticmethod(C.silu_mul)
    act = staticmethod(C.act)
    act_mul = staticmethod(C.act_mul)

    @staticmethod
    def add(a, b, out=None):
        return np.add(a, b, out=out)

    @staticmethod
    def scale(a, s: float):
        return a * np.float32(s)

    @staticmethod
    def to_host(a) -> np.ndarray:
        return np.asarray(a, np.float32)

    zeros_like = staticmethod(np.zeros_like)

    @staticmethod
    def index_rows(src, idx):
        """src[idx] (rows), contiguous."""
        return np.ascontiguousarray(src[idx])

    @staticmethod
    def index_add_rows_(dst, idx, src, w=None):
        """dst[idx[i]] += w[i] * src[i]; the indices of one call are distinct."""
        dst[idx] += src if w is None else src * np.asarray(w, np.float32)[:, None]
        return dst

    @staticmethod
    def concat_rows(parts):
        return np.concatenate(parts)

    @staticmethod
    def concat_cols(x, y, y_group: int = 1):
        """[x | y] along the last axis, x [M, a], y [M / y_group, b] (each y row serves y_group rows)."""
        return np.concatenate([x, np.repeat(y, y_group, axis=0) if y_group > 1 else y], axis=1)

    @staticmethod
    def clamp_(x, c: float):
        return np.clip(x, -c, c, out=x)

    @staticmethod
    def mul_cols(x, w):
        return x * np.asarray(w, np.float32).reshape(-1)

    @staticmethod
    def split_cols(y, F: int):
        """y [M, 2F] -> contiguous (y[:, :F], y[:, F:])."""
        return np.ascontiguousarray(y[:, :F]), np.ascontiguousarray(y[:, F:])

    @staticmethod
    def split_qkv(y, layout: str, Hq: int, Hkv: int, d: int):
        """A fused q|k|v output [M, (Hq + 2 Hkv) d] -> contiguous q [M, Hq, d], k, v [M, Hkv, d].
        layout "concat": [q; k; v]; "heads": per head [q_h; k_h; v_h]; "groups": per kv head
        [q heads of the group; k; v]."""
        M = y.shape[0]
        if layout == "concat":
            q, k, v = y[:, :Hq * d], y[:, Hq * d:(Hq + Hkv) * d], y[:, (Hq + Hkv) * d:]
        elif layout == "heads":
            y = y.reshape(M, Hq, 3, d)
            q, k, v = y[:, :, 0], y[:, :, 1], y[:, :, 2]
        else:
            G = Hq // Hkv
            y = y.reshape(M, Hkv, G + 2, d)
            q, k, v = y[:, :, :G], y[:, :, G], y[:, :, G + 1]
        f = np.ascontiguousarray
        return f(q).reshape(M, Hq, d), f(k).reshape(M, Hkv, d), f(v).reshape(M, Hkv, d)


CPU_OPS = CpuOps()


class KVCache:
    """Preallocated per-layer keys [B, max_len, Hkv, dk] and values [B, max_len, Hkv, dv] fp32 and
    the filled length (dv differs from dk for MLA)."""

    def __init__(self, num_layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int,
                 v_dim: Optional[int] = None):
        self.k = [np.zeros((batch, max_len, kv_heads, head_dim), np.float32) for _ in range(num_layers)]
        self.v = [np.zeros((batch, max_len, kv_heads, v_dim or head_dim), np.float32) for _ in range(num_layers)]
        self.batch, self.max_len, self.length = batch, max_len, 0

    def write(self, layer_idx: int, pos0: int, k, v):
        """Stores k, v [B, T, Hkv, d] at positions pos0 .. pos0+T-1 of layer layer_idx."""
        T = k.shape[1]
        self.k[layer_idx][:, pos0:pos0 + T] = k
        self.v[layer_idx][:, pos0:pos0 + T] = v


def norm(spec, cfg, W: Dict, name: str, x2, ops=CPU_OPS):
    """The spec's norm kind over the last axis of x2 [M, D]; W[name] the weight, W[name + '.bias']
    the LayerNorm bias when the checkpoint has one."""
    if spec.norm_kind == "layernorm":
        return ops.layernorm(x2, W[name], W.get(name + ".bias"), cfg.rms_norm_eps)
    return ops.rmsnorm(x2, W[name], cfg.rms_norm_eps, 1.0 if spec.norm_kind == "rms_unit" else 0.0)


def _cap(capture, plan, name: str, a):
    if capture is not None:
        capture.setdefault(plan.feat_key[name], a)


def alibi_slopes(kind: str, heads: int, bias_max: float = 8.0) -> np.ndarray:
    """ALiBi head slopes. "bloom": 2^(-8i/n) for the closest power of two n, then every other slope
    of 2n for the remaining heads (Press et al.); "mpt": 2^(-i * bias_max / n) over the next power of
    two n, interleaved as MPT's gen_slopes."""
    if kind == "bloom":
        p = 2 ** math.floor(math.log2(heads))
        base = 2.0 ** (-(2.0 ** -(math.log2(p) - 3)))
        slopes = [base ** i for i in range(1, p + 1)]
        if p != heads:
            extra = 2.0 ** (-(2.0 ** -(math.log2(2 * p) - 3)))
            slopes += [extra ** i for i in range(1, 2 * (heads - p) + 1, 2)]
        return np.asarray(slopes, np.float32)
    n = 2 ** math.ceil(math.log2(heads))
    m = np.arange(1, n + 1, dtype=np.float64) * (bias_max / n)
    slopes = 1.0 / np.power(2.0, m)
    if n != heads:
        slopes = np.concatenate([slopes[1::2], slopes[::2]])[:heads]
    return slopes.astype(np.float32)


def _attend(cfg, plan, q, k, v, B: int, T: int, q_pos0: int, cache, layer_idx: int, ops, alibi):
    """q [B, T, Hq, dk], k [B, T, Hkv, dk], v [B, T, Hkv, dv] -> [B*T, Hq*dv], through the cache."""
    kw = {}
    if alibi is not None:
        kw["alibi"] = alibi
    if cfg.attn_softcap:
        kw["softcap"] = cfg.attn_softcap
    scale = cfg.softmax_scale()
    if cache is not None:
        if q_pos0 + T > cache.max_len:
            raise ValueError(f"sequence of {q_pos0 + T} tokens exceeds the KV cache ({cache.max_len})")
        cache.write(layer_idx, q_pos0, k, v)
        # Keys past q_pos0 + T are masked by causality, so the whole buffer is passed uncopied.
        o = ops.attention(q, cache.k[layer_idx], cache.v[layer_idx], scale, q_pos0, plan.window, **kw)
    else:
        o = ops.attention(q, k, v, scale, 0, plan.window, **kw)
    return o.reshape(B * T, -1)


def attn_forward(spec, cfg, plan, W: Dict, h, B: int, T: int, ropes, q_pos0: int = 0,
                 cache: Optional[KVCache] = None, layer_idx: int = 0,
                 capture: Optional[Dict] = None, ops=CPU_OPS):
    """Self-attention block. h: normed input [B*T, D] -> [B*T, D] (before the residual add)."""
    if spec.attn == "mla":
        return mla_forward(spec, cfg, plan, W, h, B, T, ropes, q_pos0, cache, layer_idx, capture, ops)
    Hq, Hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    M = B * T
    if spec.qkv:
        _cap(capture, plan, spec.qkv, h)
        y = W[spec.qkv](h)
        if cfg.clip_qkv:
            ops.clamp_(y, cfg.clip_qkv)
        q, k, v = ops.split_qkv(y, spec.qkv_layout, Hq, Hkv, d)
    else:
        _cap(capture, plan, spec.q, h)
        q, k, v = W[spec.q](h), W[spec.k](h), W[spec.v](h)
    if spec.qk_norm_per_head:  # a LayerNorm per head, each with its own weight [H, d] (Cohere, StableLM-2)
        q = ops.mul_cols(ops.layernorm(q.reshape(-1, d), None, None, cfg.rms_norm_eps).reshape(M, Hq * d),
                         W[spec.q_norm])
        k = ops.mul_cols(ops.layernorm(k.reshape(-1, d), None, None, cfg.rms_norm_eps).reshape(M, Hkv * d),
                         W[spec.k_norm])
    elif spec.q_norm:
        q = norm(spec, cfg, W, spec.q_norm, q.reshape(-1, d), ops)
        k = norm(spec, cfg, W, spec.k_norm, k.reshape(-1, d), ops)
    q = q.reshape(M, Hq, d)
    k = k.reshape(M, Hkv, d)
    alibi = None
    if spec.position in ("rope", "rope_interleaved"):
        cos, sin = ropes[plan.rope_key]
        inter = spec.position == "rope_interleaved"
        ops.rope_(q, cos, sin, cfg.rotary_dim, interleaved=inter)
        ops.rope_(k, cos, sin, cfg.rotary_dim, interleaved=inter)
    elif spec.position == "alibi":
        alibi = alibi_slopes(cfg.alibi or "bloom", Hq, cfg.alibi_bias_max) * np.float32(cfg.alibi_scale)
    o = _attend(cfg, plan, q.reshape(B, T, Hq, d), k.reshape(B, T, Hkv, d), v.reshape(B, T, Hkv, d),
                B, T, q_pos0, cache, layer_idx, ops, alibi)
    _cap(capture, plan, spec.o, o)
    return W[spec.o](o)


def mla_forward(spec, cfg, plan, W: Dict, h, B: int, T: int, ropes, q_pos0: int = 0,
                cache: Optional[KVCache] = None, layer_idx: int = 0,
                capture: Optional[Dict] = None, ops=CPU_OPS):
    """Multi-head latent attention (DeepSeek-V2/V3, MiniCPM3): q through an optional low-rank pair,
    k/v from a shared compressed latent plus one rotary key shared by all heads. The cache holds the
    expanded per-head keys and values."""
    m, H, M = cfg.mla, cfg.num_heads, B * T
    nope, rdim, vdim, rank = m["qk_nope_head_dim"], m["qk_rope_head_dim"], m["v_head_dim"], m["kv_lora_rank"]
    _cap(capture, plan, spec.q_a if m["q_lora_rank"] else spec.q, h)
    if m["q_lora_rank"]:
        qa = norm(spec, cfg, W, spec.q_a_norm, W[spec.q_a](h), ops)
        _cap(capture, plan, spec.q_b, qa)
        q = W[spec.q_b](qa)
    else:
        q = W[spec.q](h)
    q_nope, q_pe = ops.split_cols(q.reshape(M * H, nope + rdim), nope)
    q_pe = q_pe.reshape(M, H, rdim)
    kv = W[spec.kv_a](h)
    c, k_pe = ops.split_cols(kv, rank)
    c = norm(spec, cfg, W, spec.kv_a_norm, c, ops)
    _cap(capture, plan, spec.kv_b, c)
    k_nope, v = ops.split_cols(W[spec.kv_b](c).reshape(M * H, nope + vdim), nope)
    k_pe = k_pe.reshape(M, 1, rdim)
    cos, sin = ropes[plan.rope_key]
    ops.rope_(q_pe, cos, sin, cfg.rotary_dim, interleaved=cfg.rope_interleave)
    ops.rope_(k_pe, cos, sin, cfg.rotary_dim, interleaved=cfg.rope_interleave)
    qf = ops.concat_cols(q_nope, q_pe.reshape(M * H, rdim))
    kf = ops.concat_cols(k_nope, k_pe.reshape(M, rdim), H)  # one rotary key shared by the H heads
    o = _attend(cfg, plan, qf.reshape(B, T, H, nope + rdim), kf.reshape(B, T, H, nope + rdim),
                v.reshape(B, T, H, vdim), B, T, q_pos0, cache, layer_idx, ops, None)
    _cap(capture, plan, spec.o, o)
    return W[spec.o](o)


def _gated(W, g_name, u_name, d_name, plan, h, act, capture, ops):
    g = W[g_name](h)
    u = W[u_name](h)
    a = ops.silu_mul(g, u) if act == "silu" else ops.act_mul(g, u, act)
    _cap(capture, plan, d_name, a)
    return W[d_name](a)


def route(cfg, logits: np.ndarray, bias: Optional[np.ndarray]):
    """MoE routing: (expert ids [M, k], weights [M, k] fp32) from router logits [M, E] fp32.
    softmax: top-k of the softmax (renormalised when norm_topk_prob); sigmoid (DeepSeek-V3): the
    top-k of sigmoid + correction bias among the best topk_group groups (ranked by the sum of their
    two best), weighted by the plain sigmoid; group-limited softmax (DeepSeek-V2): groups ranked by
    their best score. Weights are then scaled by routed_scaling_factor."""
    m = cfg.moe
    k, E = m["top_k"], logits.shape[1]
    lg = logits.astype(np.float64)
    if m["scoring"] == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-lg))
    else:
        z = lg - lg.max(axis=1, keepdims=True)
        scores = np.exp(z)
        scores /= scores.sum(axis=1, keepdims=True)
    choice = scores + (bias.astype(np.float64)[None, :] if bias is not None else 0.0)
    ng, tg = m.get("n_group", 1), m.get("topk_group", 1)
    if ng > 1 and tg < ng:
        grp = choice.reshape(len(choice), ng, E // ng)
        gs = np.sort(grp, axis=2)[:, :, -2:].sum(axis=2) if m.get("group_score") == "top2sum" else grp.max(axis=2)
        keep = np.argsort(-gs, axis=1, kind="stable")[:, :tg]
        mask = np.zeros(gs.shape, dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        choice = np.where(np.repeat(mask, E // ng, axis=1), choice, -np.inf)  # experts of dropped groups
    idx = np.argsort(-choice, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(scores, idx, axis=1)
    if m["norm_topk_prob"]:
        w = w / (w.sum(axis=1, keepdims=True) + (1e-20 if m["scoring"] == "sigmoid" else 0.0))
        if m.get("scale_after_norm", True):
            w = w * m["routed_scaling_factor"]
    else:
        w = w * m["routed_scaling_factor"]
    return idx, w.astype(np.float32)


def moe_forward(spec, cfg, plan, W: Dict, h, capture: Optional[Dict] = None, ops=CPU_OPS):
    """Router (kept in float) -> each token's top-k experts -> weighted sum, plus shared experts.
    An expert that receives no token is skipped (and captures nothing)."""
    mp = plan.moe
    _cap(capture, plan, mp.router, h)
    logits = ops.to_host(W[mp.router](h))  # routing runs on the host, in float64
    bias = ops.to_host(W[mp.router_bias]) if mp.router_bias else None
    idx, wts = route(cfg, logits, bias)
    out = ops.zeros_like(h)
    for e, (g, u, d) in enumerate(mp.experts):
        rows, slot = np.nonzero(idx == e)
        if rows.size == 0:
            continue
        xe = ops.index_rows(h, rows)
        if capture is not None:
            capture.setdefault(plan.feat_key[g], []).append(xe)
            sub: Dict = {}
            y = _gated(W, g, u, d, plan, xe, cfg.act, sub, ops)
            capture.setdefault(plan.feat_key[d], []).append(sub[plan.feat_key[d]])
        else:
            y = _gated(W, g, u, d, plan, xe, cfg.act, None, ops)
        ops.index_add_rows_(out, rows, y, wts[rows, slot])
    if mp.shared:
        _cap(capture, plan, mp.shared[0], h)
        out = ops.add(out, _gated(W, *mp.shared, plan, h, cfg.act, capture, ops))
    return out


def mlp_forward(spec, cfg, plan, W: Dict, h, capture: Optional[Dict] = None, ops=CPU_OPS):
    """The layer's MLP kind on h [M, D] -> [M, D]."""
    kind = plan.mlp
    if kind == "gated":
        _cap(capture, plan, spec.gate, h)
        return _gated(W, spec.gate, spec.up, spec.down, plan, h, cfg.act, capture, ops)
    if kind == "gated_fused":
        _cap(capture, plan, spec.gate_up, h)
        gu = W[spec.gate_up](h)
        g, u = ops.split_cols(gu, gu.shape[1] // 2)
        a = ops.silu_mul(g, u) if cfg.act == "silu" else ops.act_mul(g, u, cfg.act)
        _cap(capture, plan, spec.down, a)
        return W[spec.down](a)
    if kind == "plain":
        _cap(capture, plan, spec.up, h)
        a = ops.act(W[spec.up](h), cfg.act)
        _cap(capture, plan, spec.down, a)
        return W[spec.down](a)
    return moe_forward(spec, cfg, plan, W, h, capture, ops)


def _scaled(a, s, ops):
    return a if s is None else ops.scale(a, s)


def layer_forward(spec, cfg, plan, W: Dict, x, ropes, q_pos0: int = 0,
                  cache: Optional[KVCache] = None, layer_idx: int = 0,
                  capture: Optional[Dict] = None, ops=CPU_OPS):
    """One decoder layer. x: [B, T, D] -> [B, T, D] (new array)."""
    B, T, D = x.shape
    x2 = x.reshape(B * T, D)
    rs = cfg.residual_scale
    h = norm(spec, cfg, W, spec.input_norm, x2, ops)
    a = attn_forward(spec, cfg, plan, W, h, B, T, ropes, q_pos0, cache, layer_idx, capture, ops)
    if spec.attn_out_norm:
        a = norm(spec, cfg, W, spec.attn_out_norm, a, ops)
    if spec.block == "sequential":
        x2 = ops.add(x2, _scaled(a, rs, ops))
        h2 = norm(spec, cfg, W, spec.post_attn_norm, x2, ops)
    else:
        h2 = h if spec.block == "parallel" else norm(spec, cfg, W, spec.post_attn_norm, x2, ops)
        x2 = ops.add(x2, _scaled(a, rs, ops))
    m = mlp_forward(spec, cfg, plan, W, h2, capture, ops)
    if spec.mlp_out_norm:
        m = norm(spec, cfg, W, spec.mlp_out_norm, m, ops)
    ops.add(x2, _scaled(m, rs, ops), out=x2)
    return x2.reshape(B, T, D)


def block_rope(cfg, B: int, T: int, q_pos0: int = 0):
    """Rope tables for B rows of T tokens at positions q_pos0 .. q_pos0+T-1: {"global": (cos, sin),
    "local": ...} with each [B*T, rot/2] (the "local" entry only for models with a local base)."""
    pos = np.arange(q_pos0, q_pos0 + T)
    out = {}
    for key in (("global", "local") if cfg.rope_local_theta else ("global",)):
        cos, sin = cfg.rope_tables(pos, local=key == "local")
        if B > 1:
            cos, sin = np.tile(cos, (B, 1)), np.tile(sin, (B, 1))
        out[key] = (cos, sin)
    if "local" not in out:
        out["local"] = out["global"]
    return out
