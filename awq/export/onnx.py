"""ONNX export of an awq decoder: 4-bit linears as ONNX Runtime `com.microsoft.MatMulNBits`.

Why: ONNX Runtime runs MatMulNBits on its CPU and other execution providers, and one AWQ GEMM maps onto
one MatMulNBits node exactly (REFERENCE.md s3), so the exported graph computes with the very codes,
zero points and scales awq quantized, with no re-quantization.

The graph (every activation float32):

    inputs   input_ids                 int64 [B, T]
             attention_mask            int64 [B, P + T]   1 = attend, 0 = padding (past and new keys)
             position_ids              int64 [B, T]       absolute positions, < max_positions
             past_key_values.{i}.key   float32 [B, Hkv, P, d]   (P = 0 for the first call)
             past_key_values.{i}.value float32 [B, Hkv, P, d]
    outputs  logits                    float32 [B, T, V]
             present.{i}.key / .value  float32 [B, Hkv, P + T, d]   (the next call's past)

Names and layouts follow the usual Hugging Face / Optimum decoder export, so generic ORT decoding
loops can drive it. Attention is causal by key index (query t sits at index P + t of the keys) and
also hides keys whose attention_mask is 0 (left padding); a sliding window, where the model has one,
is applied by index as well.

Scope: Llama-family blocks (sequential pre-norm block, RMSNorm or Gemma-style 1+w RMSNorm, separate
q/k/v with optional bias, optional per-head q/k RMSNorm (Qwen3), rotate-half RoPE with partial
rotary and any rope scaling whose frequencies do not depend on the sequence length, GQA, sliding
windows, gated MLP with SiLU / GELU / tanh-GELU / ReLU, tied or untied head, and MiniCPM's embedding,
residual and logit multipliers). Anything else raises NotImplementedError naming the model type and
the feature; tests/test_onnx_export.py runs every in-scope fixture architecture. Unquantized linears
(kept in float, or a model that was never quantized) become plain MatMul nodes over fp16 (cast once
when ORT folds constants) or fp32 initializers.

Dependency: the `onnx` package (pip install onnx), imported only here and only when called.
"""
from __future__ import annotations

import os
import secrets
import shutil
from typing import Dict, Optional, Tuple

import numpy as np

from awq.utils.progress import progress

# ONNX Runtime's contrib domain, where MatMulNBits lives.
MS_DOMAIN = "com.microsoft"
# Protobuf's hard limit on one serialized message; above it tensors must go to an external file.
PROTOBUF_LIMIT = 2 ** 31 - 1
# Largest MatMulNBits block size chosen automatically (the usual AWQ group size); larger groups
# (and group_size -1) become 128-wide blocks that repeat the group's scale and zero point.
MAX_AUTO_BLOCK = 128
MIN_OPSET = 13  # Unsqueeze / Slice / Softmax in their current (input-based, single-axis) forms
# Gated-MLP activations, as the C core computes them (csrc/ops.c v16_act).
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")


def require_onnx():
    """The `onnx` module, or ImportError naming the pip package."""
    try:
        import onnx
        import onnx.helper  # noqa: F401
        import onnx.numpy_helper  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "ONNX export needs the 'onnx' package: pip install onnx (and pip install onnxruntime to run "
            f"the exported model) [{e}]") from None
    return onnx


# ================================================================ AWQ GEMM -> MatMulNBits

def pick_block_size(group_size: int) -> int:
    """The MatMulNBits block size for an AWQ group of `group_size` input channels: the largest power
    of two in [16, MAX_AUTO_BLOCK] dividing it (the group's scale and zero are then repeated over its
    blocks). ValueError when no such power of two exists (e.g. a group of 24)."""
    b = MAX_AUTO_BLOCK
    while b >= 16:
        if group_size % b == 0:
            return b
        b //= 2
    raise ValueError(f"AWQ group size {group_size} is not a multiple of 16; MatMulNBits needs blocks "
                     "of a power of two >= 16 along K")


def awq_gemm_to_matmulnbits(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group_size: int,
                            block_size: Optional[int] = None):
    """AutoAWQ GEMM tensors -> MatMulNBits inputs (bits = 4), the same weights exactly.

    qweight: int32 [K, N/8], qzeros: int32 [G, N/8] (AutoAWQ order, REFERENCE.md s3), scales: fp16
    [G, N], G = K / group_size. Returns (B, scales, zero_points, block_size) with n_blocks = K / b:
      B            uint8 [N, n_blocks, b/2]: column n's codes along K, two per byte, the even k in
                   the low nibble (the contrib-op spec's "low bits first")
      scales       float32 [N * n_blocks]: row-major [N, n_blocks] (fp16 -> fp32 is exact; ORT
                   needs scales in A's type)
      zero_points  uint8 [N * ceil(n_blocks / 2)]: per column, two blocks' zeros per byte, low nibble
                   first, each column padded to whole bytes
    Dequantized, both give W[k, n] = (q - z) * s, so y = x W is unchanged.
    """
    from awq._backend import C

    codes = C.unpack_gemm(np.ascontiguousarray(qweight))  # uint8 [K, N] (undoes the 0,2,4,6,1,3,5,7 order)
    zeros = C.unpack_gemm(np.ascontiguousarray(qzeros))  # uint8 [G, N]
    K, N = codes.shape
    G = zeros.shape[0]
    if group_size <= 0 or K % group_size or K // group_size != G or zeros.shape[1] != N:
        raise ValueError(f"inconsistent AWQ tensors: qweight {qweight.shape}, qzeros {qzeros.shape} "
                         f"for group size {group_size}")
    if tuple(scales.shape) != (G, N):
        raise ValueError(f"AWQ scales have shape {tuple(scales.shape)}, expected {(G, N)}")
    b = pick_block_size(group_size) if block_size is None else int(block_size)
    if b < 16 or b & (b - 1) or group_size % b:
        raise ValueError(f"block_size {b} must be a power of two >= 16 dividing the group size {group_size}")
    reps, nb = group_size // b, K // b
    # Column n's codes in K order, cut into blocks, then pairs (k even, k odd) -> one byte.
    ct = np.ascontiguousarray(codes.T).reshape(N, nb, b // 2, 2)
    B = (ct[..., 0] | (ct[..., 1] << 4)).astype(np.uint8)
    s = np.repeat(np.asarray(scales, np.float32).T, reps, axis=1)  # [N, nb]
    z = np.repeat(zeros.T, reps, axis=1)  # [N, nb]
    if nb % 2:  # the last byte of each column holds one zero point (high nibble 0)
        z = np.concatenate([z, np.zeros((N, 1), np.uint8)], axis=1)
    zp = (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)
    return np.ascontiguousarray(B), np.ascontiguousarray(s).reshape(-1), np.ascontiguousarray(zp).reshape(-1), b


# ================================================================ scope

def unsupported_features(model) -> list:
    """What keeps `model` out of the exporter's scope ([] when it can be exported)."""
    s, c = model.spec, model.cfg
    out = []
    if s.block != "sequential":
        out.append(f"a {s.block!r} block")
    if s.norm_kind not in ("rms", "rms_unit"):
        out.append(f"{s.norm_kind} norms")
    if s.attn != "mha":
        out.append(f"{s.attn} attention")
    if s.qkv:
        out.append("a fused qkv projection")
    if s.position != "rope":
        out.append(f"{s.position} positions")
    if s.mlp != "gated" or any(p.mlp != "gated" for p in model.plans):
        out.append(f"a {s.mlp!r} MLP")
    if c.act not in ACTIVATIONS:
        out.append(f"the {c.act} activation")
    if s.attn_out_norm or s.mlp_out_norm:
        out.append("norms on the attention / MLP outputs")
    if s.embed_norm:
        out.append("an embedding norm")
    if s.qk_norm_per_head:
        out.append("per-head q/k LayerNorms")
    if c.attn_softcap or c.final_softcap:
        out.append("logit soft-capping")
    if c.clip_qkv:
        out.append("clip_qkv")
    if c.lm_head_norm:
        out.append("a normalised lm_head")
    if c.rope_local_theta:
        out.append("a second rope base for local layers")
    sc = c.rope_scaling or {}
    kind = sc.get("rope_type", sc.get("type", "default")) if sc else "default"
    if kind in ("dynamic", "longrope", "su"):
        out.append(f"{kind!r} rope scaling (its frequencies depend on the sequence length)")
    return out


def check_exportable(model) -> None:
    """Raises NotImplementedError naming the model type and what is outside the exporter's scope."""
    bad = unsupported_features(model)
    if bad:
        raise NotImplementedError(
            f"ONNX export covers Llama-family decoders; model_type {model.spec.model_type!r} has "
            f"{', '.join(bad)}, which the exporter does not build")


# ================================================================ graph builder

class _Graph:
    """Nodes and initializers of one graph, with unique names under a scope ("layers.3/attn")."""

    def __init__(self, onnx, opset: int):
        self.onnx, self.h, self.nph = onnx, onnx.helper, onnx.numpy_helper
        self.opset = opset
        self.nodes, self.inits = [], []
        self.scope = ""
        self._used = set()
        self._consts: Dict[tuple, str] = {}

    def _unique(self, name: str) -> str:
        base, k = name, 1
        while name in self._used:
            name = f"{base}_{k}"
            k += 1
        self._used.add(name)
        return name

    def name(self, hint: str) -> str:
        return self._unique(f"/{self.scope}/{hint}" if self.scope else f"/{hint}")

    def init(self, name: str, arr: np.ndarray) -> str:
        name = self._unique(name)
        self.inits.append(self.nph.from_array(np.ascontiguousarray(arr), name))
        return name

    def param(self, hint: str) -> str:
        """Initializer name of a model parameter under the current scope ("layers.3.input_layernorm")."""
        return f"{self.scope}.{hint}" if self.scope else hint

    def const(self, value, dtype) -> str:
        """A small shared constant (shapes, axes, scalars)."""
        a = np.asarray(value, dtype=dtype)
        key = (a.dtype.str, a.shape, a.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(f"const_{len(self._consts)}", a)
        return self._consts[key]

    def op(self, op_type: str, inputs, hint: Optional[str] = None, out: Optional[str] = None,
           domain: Optional[str] = None, **attrs) -> str:
        node_name = self.name(hint or op_type)
        y = out if out is not None else node_name + "/out"
        self._used.add(y)
        self.nodes.append(self.h.make_node(op_type, list(inputs), [y], name=node_name, domain=domain, **attrs))
        return y

    # ---- composite ops ----------------------------------------------------------------------
    def reduce_mean_last(self, x: str, hint: str) -> str:
        if self.opset >= 18:  # axes became an input in opset 18
            return self.op("ReduceMean", [x, self.const([-1], np.int64)], hint, keepdims=1)
        return self.op("ReduceMean", [x], hint, axes=[-1], keepdims=1)

    def rmsnorm(self, x: str, weight: np.ndarray, eps: float, unit_offset: bool, hint: str) -> str:
        """x / sqrt(mean(x^2) + eps) * w over the last axis (w + 1 for Gemma-style norms), as the C core."""
        w = np.asarray(weight, np.float32)
        if unit_offset:
            w = w + np.float32(1.0)
        ms = self.reduce_mean_last(self.op("Mul", [x, x], hint + "/sq"), hint + "/mean")
        inv = self.op("Reciprocal", [self.op("Sqrt", [self.op("Add", [ms, self.const(eps, np.float32)], hint + "/eps")],
                                             hint + "/sqrt")], hint + "/inv")
        return self.op("Mul", [self.op("Mul", [x, inv], hint + "/scale"), self.init(self.param(hint) + ".weight", w)],
                       hint + "/weight")

    def slice_last(self, x: str, start: int, end: int, hint: str) -> str:
        return self.op("Slice", [x, self.const([start], np.int64), self.const([end], np.int64),
                                 self.const([-1], np.int64)], hint)

    def dim(self, x: str, axis: int, hint: str) -> str:
        """Dimension `axis` of x as an int64 scalar."""
        return self.op("Gather", [self.op("Shape", [x], hint + "/shape"), self.const(axis, np.int64)], hint, axis=0)


# ================================================================ model pieces

def _host_parts(model):
    """(get_layer, model-wide tensors) as CPU runtime modules, also for a model set to run on cuda."""
    if str(getattr(model, "run_device", "cpu")).startswith("cuda"):
        from awq.models.base import _runtime_modules

        mt = model._model_tensors()
        if model._layers is not None:
            return (lambda i: _runtime_modules(model._layers[i])), mt
        return model._float_layer, mt
    rt = model.runtime()
    return rt.get_layer, rt.mt


def _linear(g: _Graph, mod, x: str, hint: str, accuracy_level: int, block_size: Optional[int]) -> str:
    """One runtime linear module on x [.., K] -> [.., N]: MatMulNBits for AWQLinear, MatMul otherwise."""
    from awq.runtime.layers import AWQLinear, DenseLinear, F16Linear

    prefix = g.param(hint)
    if isinstance(mod, AWQLinear):
        K, N = mod.in_features, mod.out_features
        try:
            B, s, zp, b = awq_gemm_to_matmulnbits(mod.qweight, mod.qzeros, mod.scales, mod.group_size, block_size)
        except ValueError as e:
            raise ValueError(f"{prefix}: {e}") from None
        y = g.op("MatMulNBits", [x, g.init(prefix + ".qweight", B), g.init(prefix + ".scales", s),
                                 g.init(prefix + ".qzeros", zp)], hint + "/MatMulNBits", domain=MS_DOMAIN,
                 K=K, N=N, bits=4, block_size=b, accuracy_level=accuracy_level)
    elif isinstance(mod, (F16Linear, DenseLinear)):
        w = mod.weight
        if w.dtype == np.float16:  # stored fp16 (half the file), cast once when ORT folds constants
            wt = g.op("Cast", [g.init(prefix + ".weight", np.ascontiguousarray(w.T))], hint + "/cast",
                      to=g.onnx.TensorProto.FLOAT)
        else:
            wt = g.init(prefix + ".weight", np.ascontiguousarray(np.asarray(w, np.float32).T))
        y = g.op("MatMul", [x, wt], hint + "/MatMul")
    else:
        raise TypeError(f"{prefix}: cannot export a linear of type {type(mod).__name__}")
    if mod.bias is not None:
        y = g.op("Add", [y, g.init(prefix + ".bias", np.asarray(mod.bias, np.float32))], hint + "/bias")
    return y


def _rope(g: _Graph, x: str, cos: str, sin: str, rot: int, d: int, hint: str) -> str:
    """Rotate-half RoPE on the first `rot` channels of x [B, H, T, d]; cos/sin [B, 1, T, rot] hold
    each frequency twice ([c, c]), so out = x_rot * cos + rotate_half(x_rot) * sin, which is the C
    core's (x1 c - x2 s, x2 c + x1 s) term for term."""
    half = rot // 2
    xr = x if rot == d else g.slice_last(x, 0, rot, hint + "/rot")
    x1 = g.slice_last(xr, 0, half, hint + "/x1")
    x2 = g.slice_last(xr, half, rot, hint + "/x2")
    rh = g.op("Concat", [g.op("Neg", [x2], hint + "/neg"), x1], hint + "/rotate_half", axis=-1)
    y = g.op("Add", [g.op("Mul", [xr, cos], hint + "/cos"), g.op("Mul", [rh, sin], hint + "/sin")], hint + "/sum")
    if rot < d:
        y = g.op("Concat", [y, g.slice_last(x, rot, d, hint + "/pass")], hint + "/concat", axis=-1)
    return y


def _masks(g: _Graph, attention_mask: str, input_ids: str, windows, n_rep: int) -> Dict[int, str]:
    """Additive float masks [B, 1, n_rep*T, S] (0 = visible, float32 min = hidden), one per sliding
    window size (0 = none). Key j is visible to query t when j <= P + t, attention_mask[b, j] != 0
    and (with window w) P + t - j < w. Rows are tiled n_rep times: the attention folds the n_rep
    query heads sharing a kv head into the row axis (row r = rep * T + t)."""
    g.scope = "mask"
    T = g.dim(input_ids, 1, "T")
    S = g.dim(attention_mask, 1, "S")
    past = g.op("Sub", [S, T], "past")
    one = g.const(1, np.int64)
    kidx = g.op("Unsqueeze", [g.op("Range", [g.const(0, np.int64), S, one], "key_index"), g.const([0], np.int64)],
                "key_row")  # [1, S]
    qidx = g.op("Unsqueeze", [g.op("Range", [past, S, one], "query_index"), g.const([1], np.int64)],
                "query_col")  # [T, 1]
    causal = g.op("LessOrEqual", [kidx, qidx], "causal")  # [T, S]
    pad = g.op("Unsqueeze", [g.op("Cast", [attention_mask], "keep", to=g.onnx.TensorProto.BOOL),
                             g.const([1, 2], np.int64)], "keep_bcast")  # [B, 1, 1, S]
    out = {}
    for w in sorted(set(windows)):
        vis = causal
        if w:
            near = g.op("Less", [g.op("Sub", [qidx, kidx], f"dist_w{w}"), g.const(w, np.int64)], f"near_w{w}")
            vis = g.op("And", [vis, near], f"causal_w{w}")
        vis = g.op("And", [pad, vis], f"visible_w{w}")  # [B, 1, T, S]
        m = g.op("Where", [vis, g.const(0.0, np.float32), g.const(np.finfo(np.float32).min, np.float32)],
                 f"bias_w{w}")
        if n_rep > 1:
            m = g.op("Tile", [m, g.const([1, 1, n_rep, 1], np.int64)], f"tile_w{w}")
        out[w] = m
    g.scope = ""
    return out


def _attention(g: _Graph, model, W: Dict, h: str, i: int, cos: str, sin: str, mask: str,
               past_k: str, past_v: str, acc: int, block: Optional[int]) -> Tuple[str, str, str]:
    """Self-attention of layer i on normed h [B, T, D] -> (output [B, T, D], present key, value)."""
    s, c = model.spec, model.cfg
    Hq, Hkv, d = c.num_heads, c.num_kv_heads, c.head_dim
    unit = s.norm_kind == "rms_unit"
    heads = {}
    for key, name, H in (("q", s.q, Hq), ("k", s.k, Hkv), ("v", s.v, Hkv)):
        y = _linear(g, W[name], h, name, acc, block)
        y = g.op("Reshape", [y, g.const([0, 0, H, d], np.int64)], f"{key}/split_heads")  # [B, T, H, d]
        if key in ("q", "k") and s.q_norm:
            y = g.rmsnorm(y, W[s.q_norm if key == "q" else s.k_norm], c.rms_norm_eps, unit,
                          s.q_norm if key == "q" else s.k_norm)
        y = g.op("Transpose", [y], f"{key}/heads_first", perm=[0, 2, 1, 3])  # [B, H, T, d]
        if key in ("q", "k"):
            y = _rope(g, y, cos, sin, c.rotary_dim, d, f"{key}/rope")
        heads[key] = y
    present_k = g.op("Concat", [past_k, heads["k"]], "present_key", out=f"present.{i}.key", axis=2)
    present_v = g.op("Concat", [past_v, heads["v"]], "present_value", out=f"present.{i}.value", axis=2)
    # GQA without copying keys: the Hq/Hkv query heads of one kv head become rows of one matrix.
    q = g.op("Mul", [heads["q"], g.const(c.softmax_scale(), np.float32)], "q/scale")
    q = g.op("Reshape", [q, g.const([0, Hkv, -1, d], np.int64)], "q/group")  # [B, Hkv, rep*T, d]
    kt = g.op("Transpose", [present_k], "k/transpose", perm=[0, 1, 3, 2])  # [B, Hkv, d, S]
    scores = g.op("Add", [g.op("MatMul", [q, kt], "qk"), mask], "masked")
    p = g.op("Softmax", [scores], "softmax", axis=-1)
    o = g.op("MatMul", [p, present_v], "pv")  # [B, Hkv, rep*T, d]
    o = g.op("Reshape", [o, g.const([0, Hq, -1, d], np.int64)], "o/ungroup")  # [B, Hq, T, d]
    o = g.op("Transpose", [o], "o/tokens_first", perm=[0, 2, 1, 3])
    o = g.op("Reshape", [o, g.const([0, 0, Hq * d], np.int64)], "o/merge_heads")
    return _linear(g, W[s.o], o, s.o, acc, block), present_k, present_v


def _act(g: _Graph, x: str, kind: str) -> str:
    """The gate activation: silu x sigmoid(x); gelu 0.5 x (1 + erf(x / sqrt 2)); gelu_tanh
    x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3) (= 0.5 x (1 + tanh u)); relu."""
    if kind == "silu":
        return g.op("Mul", [x, g.op("Sigmoid", [x], "mlp/sigmoid")], "mlp/silu")
    if kind == "gelu":
        e = g.op("Erf", [g.op("Mul", [x, g.const(0.70710678118654752, np.float32)], "mlp/x_rsqrt2")], "mlp/erf")
        half_x = g.op("Mul", [x, g.const(0.5, np.float32)], "mlp/half_x")
        return g.op("Mul", [half_x, g.op("Add", [e, g.const(1.0, np.float32)], "mlp/one_plus_erf")], "mlp/gelu")
    if kind == "gelu_tanh":
        x3 = g.op("Mul", [g.op("Mul", [x, x], "mlp/x2"), x], "mlp/x3")
        inner = g.op("Add", [x, g.op("Mul", [x3, g.const(0.044715, np.float32)], "mlp/cubic")], "mlp/inner")
        two_u = g.op("Mul", [inner, g.const(1.59576912160573072, np.float32)], "mlp/two_u")
        return g.op("Mul", [x, g.op("Sigmoid", [two_u], "mlp/sigmoid")], "mlp/gelu_tanh")
    return g.op("Relu", [x], "mlp/relu")


def _scaled(g: _Graph, x: str, factor, hint: str) -> str:
    return x if factor is None else g.op("Mul", [x, g.const(factor, np.float32)], hint)


# ================================================================ export

def build_model(model, *, opset: int = 17, max_positions: Optional[int] = None, accuracy_level: int = 0,
                block_size: Optional[int] = None, verbose: bool = True):
    """The onnx.ModelProto of `model` (see the module docstring); export_onnx saves it."""
    check_exportable(model)  # before the import: an out-of-scope model needs no onnx install to learn so
    onnx = require_onnx()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be an integer in {MIN_OPSET}..{onnx.defs.onnx_opset_version()}, got {opset!r}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ValueError(f"accuracy_level must be 0..4 (MatMulNBits), got {accuracy_level!r}")
    spec, cfg, TP = model.spec, model.cfg, onnx.TensorProto
    P = int(max_positions or cfg.max_position_embeddings)
    if P < 1:
        raise ValueError(f"max_positions must be >= 1, got {max_positions!r}")
    get_layer, mt = _host_parts(model)
    unit = spec.norm_kind == "rms_unit"
    Hq, Hkv, d, L = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_layers
    g = _Graph(onnx, opset)
    for n in ("input_ids", "attention_mask", "position_ids"):
        g._used.add(n)

    # Embedding: fp16 tables stay fp16 in the file (gathered rows cast to fp32), others fp32.
    ck = model.ckpt
    if ck.dtype(spec.embed) == "F16":
        table = g.init("embed_tokens.weight", ck.get(spec.embed))
        x = g.op("Cast", [g.op("Gather", [table, "input_ids"], "embed/gather", axis=0)], "embed/cast", to=TP.FLOAT)
    else:
        table = g.init("embed_tokens.weight", ck.get_float32(spec.embed))
        x = g.op("Gather", [table, "input_ids"], "embed/gather", axis=0)
    x = _scaled(g, x, cfg.embed_scale, "embed/scale")

    # RoPE tables [max_positions, rot] (each frequency twice), gathered once by position_ids.
    cos, sin = cfg.rope_tables(np.arange(P))
    cos_t = g.init("rope.cos", np.concatenate([cos, cos], axis=1).astype(np.float32))
    sin_t = g.init("rope.sin", np.concatenate([sin, sin], axis=1).astype(np.float32))
    axis1 = g.const([1], np.int64)
    cos_b = g.op("Unsqueeze", [g.op("Gather", [cos_t, "position_ids"], "rope/cos", axis=0), axis1], "rope/cos_b")
    sin_b = g.op("Unsqueeze", [g.op("Gather", [sin_t, "position_ids"], "rope/sin", axis=0), axis1], "rope/sin_b")
    masks = _masks(g, "attention_mask", "input_ids", [p.window for p in model.plans], Hq // Hkv)

    past_shape = ["batch_size", Hkv, "past_sequence_length", d]
    present_shape = ["batch_size", Hkv, "total_sequence_length", d]
    inputs = [
        g.h.make_tensor_value_info("input_ids", TP.INT64, ["batch_size", "sequence_length"]),
        g.h.make_tensor_value_info("attention_mask", TP.INT64, ["batch_size", "total_sequence_length"]),
        g.h.make_tensor_value_info("position_ids", TP.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [g.h.make_tensor_value_info("logits", TP.FLOAT, ["batch_size", "sequence_length", cfg.vocab_size])]
    bar = progress(range(L), desc="ONNX export", disable=not verbose)
    for i in bar:
        W = get_layer(i)
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        g._used.update((pk, pv))
        inputs += [g.h.make_tensor_value_info(n, TP.FLOAT, past_shape) for n in (pk, pv)]
        g.scope = f"layers.{i}"
        h = g.rmsnorm(x, W[spec.input_norm], cfg.rms_norm_eps, unit, spec.input_norm)
        a, prk, prv = _attention(g, model, W, h, i, cos_b, sin_b, masks[model.plans[i].window], pk, pv,
                                 accuracy_level, block_size)
        outputs += [g.h.make_tensor_value_info(n, TP.FLOAT, present_shape) for n in (prk, prv)]
        x = g.op("Add", [x, _scaled(g, a, cfg.residual_scale, "attn/residual_scale")], "attn/residual")
        h = g.rmsnorm(x, W[spec.post_attn_norm], cfg.rms_norm_eps, unit, spec.post_attn_norm)
        gate = _linear(g, W[spec.gate], h, spec.gate, accuracy_level, block_size)
        up = _linear(g, W[spec.up], h, spec.up, accuracy_level, block_size)
        act = g.op("Mul", [_act(g, gate, cfg.act), up], "mlp/gated")
        m = _linear(g, W[spec.down], act, spec.down, accuracy_level, block_size)
        x = g.op("Add", [x, _scaled(g, m, cfg.residual_scale, "mlp/residual_scale")], "mlp/residual")
    g.scope = ""

    x = g.rmsnorm(x, mt["final_norm"], cfg.rms_norm_eps, unit, "norm")
    head = mt["lm_head"]
    if spec.lm_head not in ck:  # tied: one table in the file, transposed (and cast) when ORT folds constants
        wt = g.op("Transpose", [table], "lm_head/transpose", perm=[1, 0])
        if ck.dtype(spec.embed) == "F16":
            wt = g.op("Cast", [wt], "lm_head/cast", to=TP.FLOAT)
        logits = g.op("MatMul", [x, wt], "lm_head/MatMul")
        if head.bias is not None:
            logits = g.op("Add", [logits, g.init("lm_head.bias", np.asarray(head.bias, np.float32))], "lm_head/bias")
    else:
        logits = _linear(g, head, x, "lm_head", accuracy_level, block_size)
    if cfg.logit_scale is not None:
        logits = g.op("Mul", [logits, g.const(cfg.logit_scale, np.float32)], "logit_scale")
    g.op("Identity", [logits], "logits", out="logits")

    graph = g.h.make_graph(g.nodes, f"awq_{spec.model_type}", inputs, outputs, g.inits)
    opsets = [g.h.make_opsetid("", opset), g.h.make_opsetid(MS_DOMAIN, 1)]
    proto = g.h.make_model(graph, opset_imports=opsets, producer_name="awq",
                           ir_version=g.h.find_min_ir_version_for(opsets, ignore_unknown=True))
    meta = {"model_type": spec.model_type, "num_layers": str(L), "num_kv_heads": str(Hkv), "head_dim": str(d),
            "max_positions": str(P), "vocab_size": str(cfg.vocab_size),
            "quantization": "awq-gemm-4bit -> com.microsoft.MatMulNBits" if model.is_quantized else "none"}
    g.h.set_model_props(proto, meta)
    return proto


def export_onnx(model, path, *, opset: int = 17, max_positions: Optional[int] = None, accuracy_level: int = 0,
                block_size: Optional[int] = None, external_data: Optional[bool] = None, verbose: bool = True) -> str:
    """Writes `model` (an awq model, quantized or not) as an ONNX decoder with KV cache to `path`.

    opset: the ai.onnx opset (13 .. the installed onnx's newest); com.microsoft opset 1.
    max_positions: rows of the RoPE tables, i.e. the largest position_ids + 1 the graph accepts
        (default: config.json's max_position_embeddings).
    accuracy_level: MatMulNBits' attribute. 0 (default) keeps activations in float32, which is what
        awq computes; 4 lets ORT's CPU kernels quantize activations to int8 per block (faster, less
        accurate).
    block_size: MatMulNBits block size (default: pick_block_size(group size)).
    external_data: tensors in `<file name>.data` beside the graph (needed above protobuf's 2 GB);
        None = only when the tensors exceed 2 GB.
    The file (and its .data) are written beside `path` under temporary names and renamed into
    place, so a failure leaves an existing file untouched. Returns the absolute path written."""
    check_exportable(model)
    onnx = require_onnx()
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder; give the .onnx file to write")
    proto = build_model(model, opset=opset, max_positions=max_positions, accuracy_level=accuracy_level,
                        block_size=block_size, verbose=verbose)
    if external_data is None:
        total = sum(len(t.raw_data) for t in proto.graph.initializer)
        external_data = total > PROTOBUF_LIMIT - (64 << 20)  # headroom for the graph itself
    _save_atomic(onnx, proto, path, bool(external_data))
    return path


def _save_atomic(onnx, proto, path: str, external: bool) -> None:
    """Saves into a temp folder beside `path`, then renames the data file and the graph into place."""
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{secrets.token_hex(4)}")
    os.mkdir(tmp)
    try:
        data_name = name + ".data"
        kw = dict(save_as_external_data=True, all_tensors_to_one_file=True, location=data_name,
                  size_threshold=1024) if external else {}
        onnx.save_model(proto, os.path.join(tmp, name), **kw)
        files = ([data_name] if external else []) + [name]  # the data first: the graph names it
        for f in files:
            with open(os.path.join(tmp, f), "rb") as fh:
                os.fsync(fh.fileno())
        for f in files:
            os.replace(os.path.join(tmp, f), os.path.join(parent, f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
