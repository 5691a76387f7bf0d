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


def generate(model: DecoderLM, input_ids, max_new_tokens: int = 32, do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: Optional[int] = None,
             eos_token_id: Union[int, Iterable[int], None] = None, streamer=None,
             callback: Optional[Callable[[np.ndarray], object]] = None,
             max_seq_len: Optional[int] = None) -> np.ndarray:
    """Returns [B, T + n] int64: the prompt followed by the generated tokens.

    Sequences that emit an eos token stop; finished rows are padded with that eos id while others
    continue. `streamer` follows transformers' protocol (put(tokens) / end()); `callback` gets the
    new token ids [B] after every step and may return True to stop."""
    ids = to_token_array(input_ids)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    B, T = ids.shape
    limit = max_seq_len or model.cfg.max_position_embeddings
    total = T + max_new_tokens
    if total > limit:
        raise ValueError(
            f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds max_seq_len {limit}")
    eos = _as_eos_set(eos_token_id)
    rng = np.random.default_rng(seed)
    cache = model.new_cache(B, total)
    if streamer is not None:
        streamer.put(ids)
    out = [ids]
    finished = np.zeros(B, bool)
    pad = min(eos) if eos else 0
    logits = model.forward(ids, cache, last_only=True)[:, -1]
    for _ in range(max_new_tokens):
        nxt = sample_next(logits, do_sample, temperature, top_k, top_p, rng)
        nxt = np.where(finished, pad, nxt)
        out.append(nxt[:, None])
        if streamer is not None:
            streamer.put(nxt)
        if eos:
            finished |= np.isin(nxt, list(eos))
        stop = callback(nxt) if callback is not None else False
        if finished.all() or stop is True:
            break
        if len(out) - 1 == max_new_tokens:
            break
        logits = model.forward(nxt[:, None], cache, last_only=True)[:, -1]
    if streamer is not None:
        streamer.end()
    return np.concatenate(out, axis=1)
