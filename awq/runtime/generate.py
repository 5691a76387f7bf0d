"""Token generation: prefill, then one token at a time against the KV cache, greedy or sampled.

Sampling follows transformers' order: temperature, then top-k, then top-p (nucleus), then a draw
from the renormalised distribution with a seeded numpy Generator, so a seed reproduces a run.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Union

import numpy as np

from awq.runtime.model import DecoderLM, to_token_array


def _as_eos_set(eos) -> set:
    if eos is None:
        return set()
    if isinstance(eos, (int, np.integer)):
        return {int(eos)}
    return {int(e) for e in eos}


def sample_next(logits: np.ndarray, do_sample: bool, temperature: float, top_k: int, top_p: float,
                rng: np.random.Generator) -> np.ndarray:
    """logits [B, V] fp32 -> next token ids [B] int64."""
    if not do_sample:
        return np.argmax(logits, axis=-1).astype(np.int64)
    if not (temperature > 0):
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    z = logits.astype(np.float64) / temperature
    V = z.shape[-1]
    if top_k and 0 < top_k < V:
        kth = np.partition(z, V - top_k, axis=-1)[:, V - top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None and 0 < top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sp = np.take_along_axis(p, order, axis=-1)
        cum = np.cumsum(sp, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        drop_sorted = (cum - sp) >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        p = np.where(drop, 0.0, p)
        p /= p.sum(axis=-1, keepdims=True)
    out = np.empty(p.shape[0], np.int64)
    for b in range(p.shape[0]):
        out[b] = rng.choice(V, p=p[b])
    return out


class _Stepper:
    """Prefill / decode steps over a DecoderLM (CPU, or the unfused GPU runtime). Prompts of one
    length share a batched cache; prompts of different lengths each get a cache of their own and
    run one by one, so every row computes exactly what it computes alone."""

    def __init__(self, model: DecoderLM):
        self.model = model

    def start(self, prompts, max_len: int) -> np.ndarray:
        m = self.model
        if len({len(p) for p in prompts}) == 1:
            self.rows = None
            self.cache = m.new_cache(len(prompts), max_len)
            return m.forward(np.stack(prompts), self.cache, last_only=True)[:, -1]
        self.rows = [m.new_cache(1, max_len) for _ in prompts]
        return np.concatenate([m.forward(p[None, :], c, last_only=True)[:, -1] for p, c in zip(prompts, self.rows)])

    def step(self, tokens: np.ndarray) -> np.ndarray:
        m = self.model
        if self.rows is None:
            return m.forward(tokens[:, None], self.cache, last_only=True)[:, -1]
        return np.concatenate([m.forward(tokens[b:b + 1, None], c, last_only=True)[:, -1]
                               for b, c in enumerate(self.rows)])


def _prompts(input_ids, attention_mask):
    """-> (list of 1-D int64 prompts, padded [B, T] array or None for ragged input)."""
    if isinstance(input_ids, (list, tuple)) and input_ids and all(
            isinstance(r, (list, tuple, np.ndarray)) for r in input_ids) and len({len(r) for r in input_ids}) > 1:
        if attention_mask is not None:
            raise ValueError("attention_mask goes with a padded [B, T] input_ids, not with a list of prompts")
        prompts = [to_token_array(r)[0] for r in input_ids]
        return prompts, None
    ids = to_token_array(input_ids)
    if attention_mask is None:
        return list(ids), ids
    mask = np.asarray(attention_mask.cpu() if hasattr(attention_mask, "cpu") else attention_mask)
    if mask.ndim == 1:
        mask = mask[None, :]
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}")
    prompts = [ids[b][mask[b] != 0] for b in range(ids.shape[0])]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("attention_mask leaves a row without any token")
    return prompts, ids


def generate(model, input_ids, max_new_tokens: int = 32, do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: Optional[int] = None,
             eos_token_id: Union[int, Iterable[int], None] = None, streamer=None,
             callback: Optional[Callable[[np.ndarray], object]] = None,
             max_seq_len: Optional[int] = None, attention_mask=None):
    """Returns [B, T + n] int64: the prompt followed by the generated tokens.

    `model` is a DecoderLM or a runtime with start(prompts, max_len) / step(tokens) (the fused GPU
    runtime). input_ids: [T] or [B, T] (with an optional attention_mask whose zeros mark padding,
    left or right: each row generates from its unpadded tokens and the row keeps its padding in
    the output), or a list of prompts of different lengths, which returns a list of arrays. Every
    row generates what it would generate alone.

    Sequences that emit an eos token stop; finished rows are padded with that eos id while others
    continue. `streamer` follows transformers' protocol (put(tokens) / end()); `callback` gets the
    new token ids [B] after every step and may return True to stop. A prompt plus max_new_tokens
    longer than max_seq_len raises ValueError before any work."""
    prompts, padded = _prompts(input_ids, attention_mask)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    B = len(prompts)
    T = max(len(p) for p in prompts)
    limit = max_seq_len or model.cfg.max_position_embeddings
    total = T + max_new_tokens
    if total > limit:
        raise ValueError(
            f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds max_seq_len {limit}")
    eos = _as_eos_set(eos_token_id)
    rng = np.random.default_rng(seed)
    stepper = model if hasattr(model, "step") else _Stepper(model)
    if streamer is not None:
        streamer.put(padded if padded is not None else prompts[0][None, :])
    new = []
    finished = np.zeros(B, bool)
    pad = min(eos) if eos else 0
    logits = stepper.start(prompts, total) if max_new_tokens else None
    for _ in range(max_new_tokens):
        nxt = sample_next(logits, do_sample, temperature, top_k, top_p, rng)
        nxt = np.where(finished, pad, nxt)
        new.append(nxt)
        if streamer is not None:
            streamer.put(nxt)
        if eos:
            finished |= np.isin(nxt, list(eos))
        stop = callback(nxt) if callback is not None else False
        if finished.all() or stop is True:
            break
        if len(new) == max_new_tokens:
            break
        logits = stepper.step(nxt)
    if streamer is not None:
        streamer.end()
    gen = np.stack(new, axis=1) if new else np.zeros((B, 0), np.int64)
    if padded is None:
        return [np.concatenate([p, gen[b]]) for b, p in enumerate(prompts)]
    return np.concatenate([padded, gen], axis=1)
