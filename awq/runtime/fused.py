"""The fused GPU runtime: the whole decoder in one C object (csrc/kernels/decoder.cu).

`from_quantized(..., device_map="cuda", fuse_layers=True)` (the default) generates through this
runtime. At build time each layer's q/k/v and gate/up AWQ linears are concatenated along their
output features (the GEMM packing is per 8 output columns, so the packed tensors concatenate as
they are) and repacked once for the W4A16 kernels; norms stay fp32, the embedding table and
lm_head go to the device in the activation dtype. A forward is one C call: embedding, every layer
(fused residual + RMSNorm, one W4A16 call for q|k|v, RoPE + q/k norm + KV-cache write in one
kernel, flash attention for prompts or split-K decode attention, one call for gate|up, SiLU * up),
final norm and lm_head; the decode step over all sequences is captured once in a CUDA graph and
replayed.

Sequences of different lengths: each prompt is prefilled into its own cache row (or all at once
when the lengths are equal), then every decode step runs all rows together, each at its own
position, so a batch gives the tokens its rows give one by one. Memory: the KV cache holds
`batch x max_len` positions, allocated when generation needs more than the last one held;
asking for more than max_seq_len tokens raises ValueError before any work.

Unsupported here (the unfused GPU runtime runs them, with a note): linears left unquantized
(modules_to_not_convert) or quantized with another width, group sizes that are not a multiple
of 16, block kinds other than "llama".
"""
from __future__ import annotations

from typing import List

import numpy as np

from awq._backend import C

PREFILL_TOKENS = 8192  # tokens per prefill chunk (workspace size)


class NotFusable(ValueError):
    """The model has a feature the fused runtime does not cover (see the module docstring)."""


def _concat(lins, name):
    """AWQLinear list (one input width, one group size) -> packed tensors of their concatenation."""
    g = lins[0].group_size
    if any(lin.group_size != g for lin in lins):
        raise NotFusable(f"{name}: the linears have different group sizes")
    qw = np.concatenate([np.ascontiguousarray(lin.qweight).view(np.int32) for lin in lins], axis=1)
    qz = np.concatenate([np.ascontiguousarray(lin.qzeros).view(np.int32) for lin in lins], axis=1)
    sc = np.concatenate([np.asarray(lin.scales, np.float16) for lin in lins], axis=1)
    if all(lin.bias is None for lin in lins):
        bias = None
    else:
        bias = np.concatenate([lin.bias if lin.bias is not None else np.zeros(lin.out_features, np.float32)
                               for lin in lins]).astype(np.float32)
    return qw, qz, sc, bias, g


class FusedGpuLM:
    """Fused decoder of a quantized llama-family model on one GPU (float16 or bfloat16)."""

    def __init__(self, spec, cfg, embed, embed_dtype: str, final_norm, lm_head_weight, layers,
                 device: int = 0, dtype: str = "float16"):
        from awq.runtime.gpu_model import require_gpu
        from awq.runtime.layers import AWQLinear

        gpu = require_gpu()
        self.gpu, self.index, self.spec, self.cfg = gpu, device, spec, cfg
        self.dt = gpu.as_dtype(dtype)
        if self.dt not in (gpu.float16, gpu.bfloat16):
            raise ValueError(f"the fused runtime runs in float16 or bfloat16, not {self.dt.name}")
        if not spec.fusable or cfg.act != "silu":
            raise NotFusable(f"model type {spec.model_type!r} / activation {cfg.act!r}")
        kind = (cfg.rope_scaling or {}).get("rope_type", (cfg.rope_scaling or {}).get("type", "default"))
        if cfg.rope_attention_factor() != 1.0 or kind in ("dynamic", "longrope", "su"):
            raise NotFusable(f"rope scaling {kind!r} (attention factor or length-dependent frequencies)")
        if cfg.layer_types and len({cfg.layer_window(i) for i in range(cfg.num_layers)}) > 1:
            raise NotFusable("per-layer sliding windows")
        self._keep = []  # device tensors the decoder points into
        self._staging = []  # checkpoint-layout qweights, until their repack has run
        c = cfg
        lin_names = (spec.q, spec.k, spec.v, spec.o, spec.gate, spec.up, spec.down)
        table = []
        for i, layer in enumerate(layers):
            for n in lin_names:
                lin = layer[n]
                if not isinstance(lin, AWQLinear):
                    raise NotFusable(f"layer {i} {n} is not a 4-bit AWQ linear")
                if lin.group_size % 16:
                    raise NotFusable(f"layer {i} {n}: group size {lin.group_size} is not a multiple of 16")
            qn = self._norm(layer[spec.q_norm]) if spec.q_norm else 0
            kn = self._norm(layer[spec.k_norm]) if spec.k_norm else 0
            table.append((self._norm(layer[spec.input_norm]), self._norm(layer[spec.post_attn_norm]), qn, kn,
                          self._linear(_concat([layer[spec.q], layer[spec.k], layer[spec.v]], "q|k|v")),
                          self._linear(_concat([layer[spec.o]], "o")),
                          self._linear(_concat([layer[spec.gate], layer[spec.up]], "gate|up")),
                          self._linear(_concat([layer[spec.down]], "down"))))
        emb = self._table(embed, embed_dtype)
        head = emb if lm_head_weight is None else self._table(lm_head_weight, "")
        inv = np.ascontiguousarray(c.inv_freq(), np.float64)
        inv_d = self._up(inv.view(np.int64))  # float64 bits travel as int64
        dims = (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.rotary_dim,
                c.intermediate_size, emb.shape[0], c.sliding_window)
        ptrs = (emb.ptr, self._norm(final_norm), head.ptr, inv_d.ptr)
        gpu.synchronize(device)  # repacks ran on the default stream; the decoder has its own
        self._staging.clear()
        ctx = gpu.context(device)
        self.vocab = emb.shape[0]
        self.dec = C.cuda_decoder_new(ctx.handle, self.dt.code, dims, float(c.rms_norm_eps),
                                      1.0 if spec.norm_kind == "rms_unit" else 0.0, ptrs, table)
        self.batch = self.max_len = 0
        self.state_bytes = 0
        self.use_graph = True  # replay the decode step as a CUDA graph (False: launch kernels each step)

    # ---- building ---------------------------------------------------------------------------
    def _up(self, a, dtype=None):
        t = self.gpu.from_numpy(np.ascontiguousarray(a), self.index, dtype)
        self._keep.append(t)
        return t

    def _norm(self, w) -> int:
        return self._up(np.asarray(w, np.float32)).ptr

    def _table(self, w, stored: str):
        """[V, D] fp16 / bf16 bits / float table -> device tensor in the activation dtype (by row
        chunks, so a large vocabulary never needs a full fp32 host copy)."""
        g = self.gpu
        out = g.empty(tuple(w.shape), self.dt, self.index, what=f"embedding / lm_head table {tuple(w.shape)}")
        self._keep.append(out)
        rows = max(1, (64 << 20) // max(1, w.shape[1] * 4))
        for r0 in range(0, w.shape[0], rows):
            part = np.asarray(w[r0:r0 + rows])
            if stored == "BF16" or part.dtype == np.uint16:
                part = (part.astype(np.uint32) << 16).view(np.float32)
            if part.dtype == np.float16 and self.dt == g.float16:
                src = g.from_numpy(np.ascontiguousarray(part), self.index)
            else:
                src = g.from_numpy(np.ascontiguousarray(part, np.float32), self.index, self.dt)
            g.rows(out, r0, r0 + part.shape[0]).copy_(src)
        return out

    def _linear(self, packed):
        qw, qz, sc, bias, gs = packed
        g = self.gpu
        K, N = qw.shape[0], qw.shape[1] * 8
        q_dev = g.from_numpy(np.ascontiguousarray(qw), self.index)
        self._staging.append(q_dev)  # freed once the repack has run (synchronize in __init__)
        rp = g.empty((C.cuda_w4a16_repack_nbytes(K, N),), g.uint8, self.index, what=f"repacked qweight {K}x{N}")
        self._keep.append(rp)
        C.cuda_w4a16_repack(q_dev.ptr, rp.ptr, K, N)
        qz_d = self._up(qz)
        sc_d = self._up(sc)
        b = 0 if bias is None else self._up(bias, self.dt).ptr
        return (rp.ptr, qz_d.ptr, sc_d.ptr, b, K, N, gs, g.float16.code)

    # ---- running ----------------------------------------------------------------------------
    def _ensure(self, batch: int, max_len: int):
        """Cache for `batch` rows of max_len positions (kept when the held one is the same batch
        and at least as long, so the captured decode graph survives repeated generate calls)."""
        if batch != self.batch or max_len > self.max_len:
            self.state_bytes = C.cuda_decoder_state(self.dec, batch, max_len, max(PREFILL_TOKENS, batch))
            self.batch, self.max_len = batch, max_len

    def _prefill(self, row0: int, ids: np.ndarray) -> np.ndarray:
        """ids [B, T] into cache rows row0.. from position 0, in chunks: last-token logits [B, V]."""
        B, T = ids.shape
        step = max(1, PREFILL_TOKENS // B)
        logits = np.empty((B, self.vocab), np.float32)
        for t0 in range(0, T, step):
            chunk = np.ascontiguousarray(ids[:, t0:t0 + step], np.int32)
            C.cuda_decoder_forward(self.dec, row0, chunk, np.full(B, t0, np.int32), logits, False)
        return logits

    def start(self, prompts: List[np.ndarray], max_len: int) -> np.ndarray:
        """Prefills every prompt (1-D int arrays) into its cache row: last-token logits [B, V]."""
        B = len(prompts)
        self._ensure(B, max_len)
        lens = np.array([len(p) for p in prompts], np.int32)
        if (lens == lens[0]).all():
            logits = self._prefill(0, np.stack(prompts))
        else:
            logits = np.concatenate([self._prefill(b, p[None, :]) for b, p in enumerate(prompts)])
        self.pos = lens
        return logits

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """One new token per sequence (each at its own position): logits [B, V]."""
        B = tokens.shape[0]
        logits = np.empty((B, self.vocab), np.float32)
        C.cuda_decoder_forward(self.dec, 0, np.ascontiguousarray(tokens, np.int32).reshape(B, 1), self.pos, logits,
                               self.use_graph)
        self.pos = self.pos + 1
        return logits
