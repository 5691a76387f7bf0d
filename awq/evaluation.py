"""Quality measurement: perplexity with AutoAWQ's recipe.

Join the texts with "\\n\\n", tokenize once, cut into non-overlapping windows of `seqlen` tokens
(the remainder is dropped), and average the fp32 next-token cross-entropy over all predicted
positions: ppl = exp(mean NLL).
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import numpy as np

from awq.utils.progress import progress


def _token_ids(tokenizer, text: str):
    enc = tokenizer.encode(text)
    return np.asarray(getattr(enc, "ids", enc), dtype=np.int64)


def log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-position negative log-likelihood of `targets` [T] under `logits` [T, V] (float64 math)."""
    z = logits.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(axis=-1)) + m[:, 0]
    return lse - z[np.arange(len(targets)), targets]


def evaluate_perplexity(model, tokenizer, text_or_texts: Union[str, Iterable[str]], seqlen: int = 2048,
                        max_windows: Optional[int] = None, verbose: bool = True) -> float:
    """Perplexity of `model` (anything with .forward(ids[1, T]) -> logits [1, T, V]) on the text."""
    text = text_or_texts if isinstance(text_or_texts, str) else "\n\n".join(text_or_texts)
    ids = _token_ids(tokenizer, text)
    n = len(ids) // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the evaluation text has {len(ids)} tokens, fewer than one window of {seqlen}")
    total, count = 0.0, 0
    for w in progress(range(n), desc="perplexity", disable=not verbose):
        win = ids[w * seqlen:(w + 1) * seqlen]
        logits = model.forward(win[None])[0]
        nll = log_softmax_nll(logits[:-1], win[1:])
        total += float(nll.sum())
        count += len(nll)
    return float(np.exp(total / count))
