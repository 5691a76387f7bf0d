"""The decoder LM at run time: embeddings -> layers -> final norm -> lm_head, on the C core.

Layers come from a `get_layer(i) -> dict` callable, so an unquantized checkpoint is read from its
memory map one layer at a time (nothing is materialised for the whole model) and a quantized one
serves its packed AWQ linears.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from awq._backend import C
from awq.runtime.layers import CPU_OPS, KVCache, block_rope, layer_forward, norm


def to_token_array(input_ids) -> np.ndarray:
    """input_ids as int64 [B, T]: lists, numpy arrays, DLPack producers (torch) or __array__."""
    arr = input_ids
    if not isinstance(arr, np.ndarray):
        if hasattr(arr, "__dlpack__"):
            try:
                arr = np.from_dlpack(arr)
            except (TypeError, RuntimeError, BufferError):
                arr = np.asarray(arr.cpu() if hasattr(arr, "cpu") else arr)
        else:
            arr = np.asarray(arr)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"input_ids must hold integers, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"input_ids must be [T] or [B, T] with T >= 1, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def embedding_rows(table: np.ndarray, ids: np.ndarray, dtype_name: str = "") -> np.ndarray:
    """Rows of an embedding table as fp32. BF16 tables arrive as uint16 bit patterns."""
    rows = table[ids]
    if dtype_name == "BF16" or (rows.dtype == np.uint16 and dtype_name != "F16"):
        return (rows.astype(np.uint32) << 16).view(np.float32)
    return rows.astype(np.float32)


class CpuDevice:
    """Where the runtime's activations live: host numpy fp32 (the GPU twin is in gpu_model.py)."""

    name = "cpu"
    ops = CPU_OPS

    def upload(self, x: np.ndarray):
        return x

    def download(self, t) -> np.ndarray:
        return t

    def last_tokens(self, h):
        return np.ascontiguousarray(h[:, -1:])

    def new_cache(self, num_layers, batch, max_len, kv_heads, head_dim, v_dim=None):
        return KVCache(num_layers, batch, max_len, kv_heads, head_dim, v_dim)


class DecoderLM:
    """mt: the model-wide tensors (base._model_tensors): final_norm (+ .bias), lm_head, and where the
    architecture has them embed_norm (+ .bias) and pos_embed."""

    def __init__(self, spec, cfg, embed: np.ndarray, embed_dtype: str, mt: Dict,
                 get_layer: Callable[[int], Dict], device=None, plans=None):
        self.spec, self.cfg = spec, cfg
        self.embed, self.embed_dtype = embed, embed_dtype
        self.mt = dict(mt)
        self.final_norm = self.mt["final_norm"]
        self.lm_head = self.mt["lm_head"]
        self.get_layer = get_layer
        self.device = device or CpuDevice()
        self.plans = plans or [spec.plan(cfg, i) for i in range(cfg.num_layers)]

    def embed_tokens(self, ids: np.ndarray, q_pos0: int = 0) -> np.ndarray:
        """Input embeddings [B, T, D] fp32 on the host: token rows, times the embedding scale
        (Gemma, MiniCPM), plus learned positions (OPT, StarCoder-1), through the embedding norm
        (BLOOM)."""
        V = self.embed.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            bad = int(ids[(ids < 0) | (ids >= V)][0])
            raise ValueError(f"token id {bad} is outside the vocabulary (size {V})")
        x = embedding_rows(self.embed, ids, self.embed_dtype)
        cfg = self.cfg
        if cfg.embed_scale is not None:
            x *= np.float32(cfg.embed_scale)
        pe = self.mt.get("pos_embed")
        if pe is not None:
            T = ids.shape[1]
            lo, hi = q_pos0 + cfg.pos_offset, q_pos0 + T + cfg.pos_offset
            if hi > pe.shape[0]:
                raise ValueError(f"position {q_pos0 + T - 1} is past the {pe.shape[0] - cfg.pos_offset} "
                                 "learned positions of this model")
            x += pe[lo:hi][None]
        if "embed_norm" in self.mt:
            B, T, D = x.shape
            x = C.layernorm(x.reshape(B * T, D), self.mt["embed_norm"], self.mt.get("embed_norm.bias"),
                            cfg.rms_norm_eps).reshape(B, T, D)
        return x

    def new_cache(self, batch: int, max_len: int):
        c = self.cfg
        if c.mla:
            m = c.mla
            return self.device.new_cache(c.num_layers, batch, max_len, c.num_heads,
                                         m["qk_nope_head_dim"] + m["qk_rope_head_dim"], m["v_head_dim"])
        return self.device.new_cache(c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim)

    def hidden_states(self, ids: np.ndarray, cache: Optional[KVCache] = None) -> np.ndarray:
        """Final-normed hidden states [B, T, D] for ids [B, T] (appending to `cache` if given)."""
        B, T = ids.shape
        q_pos0 = cache.length if cache is not None else 0
        if cache is not None and cache.batch != B:
            raise ValueError(f"KV cache was made for batch {cache.batch}, got batch {B}")
        dev = self.device
        x = dev.upload(self.embed_tokens(ids, q_pos0))
        ropes = block_rope(self.cfg, B, T, q_pos0)
        for i in range(self.cfg.num_layers):
            x = layer_forward(self.spec, self.cfg, self.plans[i], self.get_layer(i), x, ropes, q_pos0, cache, i,
                              ops=dev.ops)
        if cache is not None:
            cache.length = q_pos0 + T
        D = x.shape[-1]
        W = {"final": self.final_norm, "final.bias": self.mt.get("final_norm.bias")}
        if W["final.bias"] is None:
            del W["final.bias"]
        return norm(self.spec, self.cfg, W, "final", x.reshape(B * T, D), dev.ops).reshape(B, T, D)

    def logits(self, h) -> np.ndarray:
        """fp32 host logits [B, T, V] for final hidden states h [B, T, D] (device tensors), with the
        model's logit scale (Cohere, MiniCPM) and final soft-capping (Gemma2)."""
        B, T, D = h.shape
        out = self.device.download(self.lm_head(h.reshape(B * T, D))).reshape(B, T, -1)
        c = self.cfg
        if c.logit_scale is not None:
            out *= np.float32(c.logit_scale)
        if c.final_softcap:
            out = (np.tanh(out / np.float32(c.final_softcap)) * np.float32(c.final_softcap)).astype(np.float32)
        return out

    def forward(self, input_ids, cache: Optional[KVCache] = None, last_only: bool = False) -> np.ndarray:
        """Logits [B, T, V] fp32 (or [B, 1, V] with last_only) for input_ids."""
        ids = to_token_array(input_ids)
        h = self.hidden_states(ids, cache)
        if last_only:
            h = self.device.last_tokens(h)
        return self.logits(h)
