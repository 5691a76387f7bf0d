"""Tiny synthetic Llama-family checkpoints made by the tests (no download).

Planted outliers: a few hidden channels get large RMSNorm weights, so the inputs of q/k/v and
gate/up have outlier channels, which is the situation AWQ's activation-aware scaling targets.
"""
import json
import os

import numpy as np

from awq.io.safetensors import save_file


class CharTokenizer:
    """Byte-level toy tokenizer with .encode/.decode (ids 0..255 = bytes, 256 = eos)."""

    eos_token_id = 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


def tiny_config(model_type="llama", hidden=64, inter=160, layers=2, heads=4, kv_heads=2, vocab=272,
                **extra):
    cfg = {
        "architectures": [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                           "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model_type]],
        "model_type": model_type, "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 512,
        "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 256, "torch_dtype": "float32",
        "hidden_act": "silu",
    }
    if model_type == "qwen3":
        cfg["head_dim"] = hidden // heads
    cfg.update(extra)
    return cfg


def tiny_tensors(cfg, seed=0, outliers=(3, 17, 40)):
    rng = np.random.default_rng(seed)
    D, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    Hq, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim", D // Hq)
    t = {"model.embed_tokens.weight": rng.normal(0, 1.0, (V, D)), "model.norm.weight": 1 + 0.1 * rng.normal(size=D)}
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = rng.normal(0, D ** -0.5, (V, D))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            w = 1 + 0.1 * rng.normal(size=D)
            w[list(outliers)] *= 12.0  # planted outlier channels
            t[p + n + ".weight"] = w
        shapes = {"self_attn.q_proj": (Hq * d, D), "self_attn.k_proj": (Hkv * d, D),
                  "self_attn.v_proj": (Hkv * d, D), "self_attn.o_proj": (D, Hq * d),
                  "mlp.gate_proj": (F, D), "mlp.up_proj": (F, D), "mlp.down_proj": (D, F)}
        for n, s in shapes.items():
            t[p + n + ".weight"] = rng.normal(0, s[1] ** -0.5, s)
        if cfg["model_type"] == "qwen2" or cfg.get("attention_bias"):
            for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                t[p + n + ".bias"] = 0.1 * rng.normal(size=shapes[n][0])
        if cfg["model_type"] == "qwen3":
            t[p + "self_attn.q_norm.weight"] = 1 + 0.1 * rng.normal(size=d)
            t[p + "self_attn.k_norm.weight"] = 1 + 0.1 * rng.normal(size=d)
    return t


def write_tiny_model(folder, cfg=None, seed=0, dtype=np.float32, generation_config=None):
    """Writes config.json, model.safetensors (and generation_config.json); returns (cfg, float64 tensors)."""
    cfg = cfg or tiny_config()
    t64 = tiny_tensors(cfg, seed)
    os.makedirs(folder, exist_ok=True)
    stored = {k: v.astype(dtype) for k, v in t64.items()}
    save_file(stored, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    gen = generation_config if generation_config is not None else {"eos_token_id": 256, "do_sample": False}
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=1)
    # the reference sees exactly what was stored
    return cfg, {k: v.astype(np.float64) for k, v in stored.items()}


def calib_texts(n=40, seed=1):
    """Deterministic English-like calibration lines for the toy byte tokenizer."""
    words = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing "
             "matches near old harbour towns and rivers").split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(8, 20)))) for _ in range(n)]
