"""Checkpoints from a config alone, with random weights, so benchmarks run where nothing can be
downloaded (issue 4).

Speed does not depend on the weight values, only on the shapes, so a random checkpoint of the right
shape measures what a real one would. `CONFIGS` holds the shapes users compare against (Llama-2-7B,
Llama-3.1-8B, Mistral-7B-v0.1, Llama-3.2-1B) and a few-MB "tiny" Llama for tests; `get_config`
returns one (or reads a config.json) with overrides, e.g. `num_hidden_layers=2` for a quick run.

`write_random_checkpoint(folder, config)` writes either the AutoAWQ GEMM checkpoint directly
(random 4-bit codes; REFERENCE.md s3: qweight int32 [K, N/8], qzeros int32 [G, N/8], scales fp16
[G, N], config.json with the quantization_config that save_quantized writes) or, with
quantized=False, the fp16 checkpoint of the same shape. Tensor names and which tensors exist come
from the architecture table (awq/models/spec.py), so every registered Llama-like type works.

Fast for 7-8B shapes: every tensor is a window, at a random offset, of one random pool generated
once (numpy Generator, no per-element Python); windows are views, so nothing but the pool and the
few tensors larger than it is held in memory, and write_checkpoint streams them to disk. The
output folder is written atomically (a temp folder renamed into place).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Dict, Optional, Union

import numpy as np

from awq.io.checkpoint import atomic_folder, read_json, write_checkpoint
from awq.io.safetensors import BF16, float32_to_bf16
from awq.models.config import ModelConfig
from awq.models.spec import ARCH_SPECS

__all__ = ["CONFIGS", "get_config", "write_random_checkpoint", "quantization_config", "checkpoint_matches"]

# ---------------------------------------------------------------------------------------------
# Named configs (config.json contents of the public checkpoints they are named after)
# ---------------------------------------------------------------------------------------------

_LLAMA_COMMON = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                 "rms_norm_eps": 1e-5, "attention_bias": False, "mlp_bias": False, "torch_dtype": "float16"}

CONFIGS: Dict[str, dict] = {
    # meta-llama/Llama-2-7b-hf
    "llama-2-7b": dict(_LLAMA_COMMON, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, rope_theta=10000.0,
                       max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
    # meta-llama/Meta-Llama-3.1-8B (GQA 8, llama3 rope scaling)
    "llama-3-8b": dict(_LLAMA_COMMON, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                       rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                       max_position_embeddings=131072, tie_word_embeddings=False, bos_token_id=128000,
                       eos_token_id=128001),
    # mistralai/Mistral-7B-v0.1
    "mistral-7b": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu",
                   "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "rms_norm_eps": 1e-5,
                   "rope_theta": 10000.0, "sliding_window": 4096, "max_position_embeddings": 32768,
                   "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"},
    # meta-llama/Llama-3.2-1B (tied embeddings)
    "llama-1b": dict(_LLAMA_COMMON, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                     rope_theta=500000.0,
                     rope_scaling={"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                     max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=128000,
                     eos_token_id=128001),
    # a few-MB Llama for tests: every K a multiple of 128, GQA 4:2
    "tiny": dict(_LLAMA_COMMON, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=1024, rope_theta=10000.0,
                 max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
}


def get_config(name_or_path: Union[str, os.PathLike, dict], **overrides) -> dict:
    """A config.json dict: a name from CONFIGS, a path to a config.json (or to a folder holding one),
    or a dict; `overrides` replace top-level keys (num_hidden_layers=2). A quantization_config is
    dropped (the checkpoint writer adds its own). Raises ValueError for an unknown name and
    ConfigError (a ValueError) for a config the runtime would reject."""
    if isinstance(name_or_path, dict):
        cfg = copy.deepcopy(name_or_path)
    elif str(name_or_path) in CONFIGS:
        cfg = copy.deepcopy(CONFIGS[str(name_or_path)])
    else:
        path = os.fspath(name_or_path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"unknown config {str(name_or_path)!r}: use one of {', '.join(CONFIGS)} "
                             "or a path to a config.json")
        cfg = read_json(path, "model config")
    cfg.pop("quantization_config", None)
    cfg.update(overrides)
    ModelConfig.from_dict(cfg).inv_freq()  # validates every value the runtime reads, rope scaling included
    if cfg["model_type"] not in ARCH_SPECS:
        raise ValueError(f"config model_type {cfg['model_type']!r} has no architecture row "
                         f"(supported: {', '.join(ARCH_SPECS)})")
    return cfg


def quantization_config(group_size: int = 128) -> dict:
    """The config.json entry save_quantized writes for a 4-bit GEMM checkpoint (awq/models/base.py)."""
    return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": None}


# ---------------------------------------------------------------------------------------------
# Random pools
# ---------------------------------------------------------------------------------------------


class _Pool:
    """One random array; `take(shape)` returns a window of it at a random offset (a view), or for a
    tensor larger than the pool, a new array filled with windows."""

    def __init__(self, values: np.ndarray, rng: np.random.Generator):
        self.values, self.rng = values, rng

    def take(self, shape) -> np.ndarray:
        n = int(np.prod(shape))
        size = self.values.size
        if n <= size:
            off = int(self.rng.integers(0, size - n + 1))
            return self.values[off:off + n].reshape(shape)
        out = np.empty(n, self.values.dtype)
        for start in range(0, n, size):
            m = min(size, n - start)
            off = int(self.rng.integers(0, size - m + 1))
            out[start:start + m] = self.values[off:off + m]
        return out.reshape(shape)


# Pool sizes in elements. Windows of the largest 7-8B linear (14336 x 4096 fp16, 59M elements) fit
# the float pool; larger tensors (embeddings) are assembled from windows.
_FLOAT_POOL = 1 << 26
_CODE_POOL = 1 << 24
_SCALE_POOL = 1 << 20

# Dequantized weights (q - z) * s with codes q uniform in 0..15 and zeros z in {7, 8}: the std of
# q - z is sqrt((16^2 - 1) / 12) = 4.61, so scales around 0.0045 give std ~0.02, as trained
# 7B Llama weights have. Scales vary +-20% (log-normal) so no two groups are alike.
_SCALE = 0.0045
_WEIGHT_STD = 0.02


def _float_values(rng, n: int, std: float, dtype: str):
    x = (rng.standard_normal(n, dtype=np.float32) * std)
    if dtype == "bfloat16":
        return float32_to_bf16(x)
    return x.astype(dtype)


def _wrap(a: np.ndarray, dtype: str):
    return BF16(a) if dtype == "bfloat16" else a


# ---------------------------------------------------------------------------------------------
# Checkpoint
# ---------------------------------------------------------------------------------------------


def _linear_shapes(spec, cfg: ModelConfig, i: int = 0) -> Dict[str, tuple]:
    """(N, K) = (out_features, in_features) of every linear of layer i."""
    return dict(spec.plan(cfg, i).linears)


def _bias_kind(spec, lin: str) -> str:
    if lin in (spec.q, spec.k, spec.v):
        return "qkv"
    return "o" if lin == spec.o else "mlp"


def write_random_checkpoint(folder: Union[str, os.PathLike], config: Union[str, dict], quantized: bool = True,
                            group_size: int = 128, seed: int = 0, dtype: str = "float16",
                            shard_size: Union[int, str] = "5GB") -> dict:
    """Writes a checkpoint of `config` (a CONFIGS name, a config.json path or a dict) with random
    weights into `folder` (replaced atomically); returns the config.json written.

    quantized=True: AutoAWQ GEMM layout, 4-bit, `group_size` (-1: one group per row), everything
    else fp16 (as save_quantized writes it); quantized=False: every tensor in `dtype` ("float16",
    "bfloat16" or "float32"). Same seed, same bytes."""
    if dtype not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
    if quantized and dtype != "float16":
        raise ValueError(f"dtype={dtype!r}: AutoAWQ GEMM checkpoints are float16 (dtype applies to quantized=False)")
    raw = get_config(config)
    if raw.get("model_type") not in ARCH_SPECS:
        raise ValueError(f"model_type {raw.get('model_type')!r} is not in the architecture table")
    spec = ARCH_SPECS[raw["model_type"]].for_config(raw)
    cfg = ModelConfig.from_dict(raw, spec.config_adapter)
    shapes = _linear_shapes(spec, cfg)
    if quantized:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or not (group_size == -1 or group_size > 0):
            raise ValueError(f"group_size must be a positive integer or -1, got {group_size!r}")
        for lin, (N, K) in shapes.items():
            if N % 8:
                raise ValueError(f"{lin}: out_features {N} is not a multiple of 8 (GEMM packs 8 columns per int32)")
            if group_size != -1 and K % group_size:
                raise ValueError(f"{lin}: in_features {K} is not a multiple of group_size {group_size}")

    rng = np.random.default_rng(seed)
    D, V = cfg.hidden_size, cfg.vocab_size
    # pools no larger than what the checkpoint needs, so a tiny model is written in milliseconds
    n_lin = sum(N * K for i in range(cfg.num_layers) for N, K in _linear_shapes(spec, cfg, i).values())
    n_float = V * D * (1 if cfg.tie_word_embeddings else 2) + (0 if quantized else n_lin)
    weights = _Pool(_float_values(rng, min(_FLOAT_POOL, n_float), _WEIGHT_STD, dtype), rng)
    norms = _Pool(_float_values(rng, 1 << 16, 0.05, "float32") + np.float32(1), rng)  # ~1, as trained norms
    bias = _Pool(_float_values(rng, 1 << 16, 0.02, "float32"), rng)
    as_dtype = (lambda a: BF16.from_float(a)) if dtype == "bfloat16" else (lambda a: a.astype(dtype))  # noqa: E731

    t = {spec.embed: _wrap(weights.take((V, D)), dtype)}
    if quantized:
        n_words = min(_CODE_POOL, n_lin // 8)
        n_scales = min(_SCALE_POOL, n_words)
        words = rng.integers(0, 1 << 32, size=n_words, dtype=np.uint32)
        codes = _Pool(words.view(np.int32), rng)  # every nibble uniform in 0..15
        # zeros: nibbles 7 + one random bit each (no carry between nibbles)
        zeros = _Pool((np.uint32(0x77777777) + (words[:n_scales] & np.uint32(0x11111111))).view(np.int32), rng)
        scales = _Pool((_SCALE * np.exp(0.2 * rng.standard_normal(n_scales))).astype(np.float16), rng)
    for i in range(cfg.num_layers):
        p = spec.layer_prefix(i)
        plan = spec.plan(cfg, i)
        for lin, (N, K) in plan.linears.items():
            if quantized and lin not in plan.not_quantized:
                G = 1 if group_size == -1 else K // group_size
                t[p + lin + ".qweight"] = codes.take((K, N // 8))
                t[p + lin + ".qzeros"] = zeros.take((G, N // 8))
                t[p + lin + ".scales"] = scales.take((G, N))
            else:
                t[p + lin + ".weight"] = _wrap(weights.take((N, K)), dtype)
            if spec.has_bias(_bias_kind(spec, lin), raw):
                t[p + lin + ".bias"] = as_dtype(bias.take((N,)))
        for n, size in plan.norms.items():
            t[p + n + ".weight"] = as_dtype(norms.take(size))
    t[spec.final_norm] = as_dtype(norms.take((D,)))
    if not cfg.tie_word_embeddings:
        t[spec.lm_head] = _wrap(weights.take((V, D)), dtype)

    out_cfg = dict(raw, torch_dtype=dtype)
    if quantized:
        out_cfg["quantization_config"] = quantization_config(group_size)
    gen = {"do_sample": False}
    for k in ("bos_token_id", "eos_token_id"):
        if raw.get(k) is not None:
            gen[k] = raw[k]
    with atomic_folder(folder) as tmp:
        write_checkpoint(t, tmp, shard_size=shard_size, metadata={"format": "pt"})
        for name, obj in (("config.json", out_cfg), ("generation_config.json", gen)):
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(obj, f, indent=2)
                f.write("\n")
    return out_cfg


def checkpoint_matches(folder: Union[str, os.PathLike], config: dict) -> Optional[bool]:
    """True when `folder` holds a checkpoint whose config.json equals `config` (a written one can be
    reused), False when it holds another, None when there is none."""
    path = os.path.join(os.fspath(folder), "config.json")
    if not os.path.isfile(path):
        return None
    try:
        return read_json(path, "model config") == json.loads(json.dumps(config))
    except ValueError:
        return False
