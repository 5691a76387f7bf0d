"""Float64 numpy reference forward for Llama-family decoders: the test oracle.

Plain and slow on purpose: every step is written as the Hugging Face modeling code defines it, in
float64, with no awq imports, so the C core, the runtime and the quantizer can be checked against
something that shares none of their code. Covered (all chosen by the config and by which tensors
are present, never by model_type):

  - embeddings; RMSNorm  x * rsqrt(mean(x^2) + eps) * w;
  - RoPE in rotate_half layout with rope_theta, and the Llama-3 "llama3" rope_scaling;
  - GQA causal attention, optional q/k/v/o biases (Qwen2), optional per-head q_norm/k_norm RMSNorm
    before RoPE (Qwen3); head_dim from config or hidden_size / num_attention_heads;
  - SwiGLU MLP (silu(gate) * up -> down), optional MLP biases;
  - final norm, lm_head (tied to embed_tokens when lm_head.weight is absent).

Tensors are a dict name -> np.ndarray with HF names and HF layouts (Linear weight [N out, K in]).
`load_safetensors` is a minimal independent reader so tests need not trust awq's own.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

# =================================================================================================
# Independent checkpoint reader
# =================================================================================================

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def load_safetensors(path):
    """name -> np.ndarray from one .safetensors file (BF16 is widened to float32)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[start:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<"))
        out[name] = arr.reshape(info["shape"])
    return out


def load_hf_folder(path):
    """(config dict, tensors dict) from an HF folder with config.json and *.safetensors."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    tensors = {}
    for fname in sorted(os.listdir(path)):
        if fname.endswith(".safetensors"):
            tensors.update(load_safetensors(os.path.join(path, fname)))
    return config, tensors


# =================================================================================================
# Building blocks (float64)
# =================================================================================================


def _f64(tensors, name):
    return np.asarray(tensors[name], dtype=np.float64)


def _linear(tensors, prefix, x):
    """x: [..., K] @ W[N, K].T (+ bias[N] when `prefix.bias` exists) -> [..., N]."""
    y = x @ _f64(tensors, prefix + ".weight").T
    if prefix + ".bias" in tensors:
        y = y + _f64(tensors, prefix + ".bias")
    return y


def rms_norm(x, w, eps):
    """x: [..., D], w: [D]."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    """x * sigmoid(x), with sigmoid written via tanh so large |x| cannot overflow exp."""
    return x * 0.5 * (1.0 + np.tanh(0.5 * x))


def head_dim_of(config):
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _rope_params(config):
    """(rope_theta, scaling dict or None), from the classic keys or transformers v5's
    rope_parameters."""
    params = config.get("rope_parameters") or {}
    theta = config.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling")
    if scaling is None and params.get("rope_type") not in (None, "default"):
        scaling = params
    return float(theta), scaling


def rope_inv_freq(config):
    """[head_dim/2] inverse frequencies theta^(-2i/d), rescaled per "llama3" rope_scaling."""
    dim = head_dim_of(config)
    theta, scaling = _rope_params(config)
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    kind = None if scaling is None else scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return inv_freq
    if kind != "llama3":
        raise NotImplementedError(f"reference: rope_scaling type {kind!r}")
    # transformers _compute_llama3_parameters: keep high frequencies, divide low ones by `factor`,
    # interpolate smoothly in between (by wavelength against the original context length).
    factor = scaling["factor"]
    low_ff, high_ff = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_ctx = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_ctx / low_ff
    high_freq_wavelen = old_ctx / high_ff
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled)


def rope_cos_sin(config, T):
    """cos, sin: [T, head_dim] for positions 0..T-1 (the two halves repeat, as in HF)."""
    freqs = np.arange(T, dtype=np.float64)[:, None] * rope_inv_freq(config)[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x, cos, sin):
    """x: [B, H, T, hd], cos/sin: [T, hd]."""
    return x * cos + rotate_half(x) * sin


# =================================================================================================
# Decoder layer and model
# =================================================================================================


def ref_attention(config, tensors, prefix, x):
    """Self-attention of one layer on normed input x: [B, T, D] -> [B, T, D]. prefix ends in
    'self_attn'."""
    B, T, _ = x.shape
    H = config["num_attention_heads"]
    Hkv = config.get("num_key_value_heads") or H
    hd = head_dim_of(config)
    eps = config["rms_norm_eps"]

    q = _linear(tensors, prefix + ".q_proj", x).reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    k = _linear(tensors, prefix + ".k_proj", x).reshape(B, T, Hkv, hd).transpose(0, 2, 1, 3)
    v = _linear(tensors, prefix + ".v_proj", x).reshape(B, T, Hkv, hd).transpose(0, 2, 1, 3)
    # Qwen3: RMSNorm over each head's vector, before RoPE.
    if prefix + ".q_norm.weight" in tensors:
        q = rms_norm(q, _f64(tensors, prefix + ".q_norm.weight"), eps)
    if prefix + ".k_norm.weight" in tensors:
        k = rms_norm(k, _f64(tensors, prefix + ".k_norm.weight"), eps)
    cos, sin = rope_cos_sin(config, T)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    # GQA: query head h reads KV head h // (H / Hkv).
    rep = H // Hkv
    k = np.repeat(k, rep, axis=1)
    v = np.repeat(v, rep, axis=1)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)  # [B, H, T, T]
    causal = np.triu(np.ones((T, T), dtype=bool), k=1)
    scores = np.where(causal, -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p = p / p.sum(axis=-1, keepdims=True)
    out = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, H * hd)
    return _linear(tensors, prefix + ".o_proj", out)


def ref_mlp(config, tensors, prefix, x):
    """SwiGLU: down(silu(gate(x)) * up(x)). x: [..., D]. prefix ends in 'mlp'."""
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise NotImplementedError(f"reference: hidden_act {act!r}")
    gate = _linear(tensors, prefix + ".gate_proj", x)
    up = _linear(tensors, prefix + ".up_proj", x)
    return _linear(tensors, prefix + ".down_proj", silu(gate) * up)


def ref_layer(config, tensors, layer_idx, hidden):
    """One decoder layer. hidden: float64 [B, T, D] at positions 0..T-1 -> [B, T, D]."""
    p = f"model.layers.{layer_idx}."
    eps = config["rms_norm_eps"]
    h = np.asarray(hidden, dtype=np.float64)
    h = h + ref_attention(config, tensors, p + "self_attn",
                          rms_norm(h, _f64(tensors, p + "input_layernorm.weight"), eps))
    h = h + ref_mlp(config, tensors, p + "mlp",
                    rms_norm(h, _f64(tensors, p + "post_attention_layernorm.weight"), eps))
    return h


def ref_forward(config, tensors, input_ids):
    """input_ids: [T] ints -> logits float64 [T, vocab]."""
    ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
    h = _f64(tensors, "model.embed_tokens.weight")[ids][None]  # [1, T, D]
    for i in range(config["num_hidden_layers"]):
        h = ref_layer(config, tensors, i, h)
    h = rms_norm(h[0], _f64(tensors, "model.norm.weight"), config["rms_norm_eps"])
    head = "lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight"
    return h @ _f64(tensors, head).T
