"""Quality measurement: perplexity (AutoAWQ's recipe), KL divergence and top-1 agreement between two
models, a per-window hook for custom metrics, and an lm-evaluation-harness adapter
(`awq.lm_eval_adapter`, when lm_eval is installed).

Recipe: join the texts with "\\n\\n", tokenize once, cut into non-overlapping windows of `seqlen`
tokens (the remainder is dropped), and score every predicted position in fp64 from the fp32 logits:
ppl = exp(mean NLL). Text sources: a string, a list of strings, a local .txt file, an object with
a "text" column (a `datasets.Dataset`), or a dataset name ("wikitext" = wikitext-2-raw-v1 test) that
is fetched with `datasets` when it is reachable and otherwise replaced, with a printed notice, by
the built-in held-out text (the Lee corpus's lee.cor articles, awq.zoo).
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Union

import numpy as np

from awq.utils.progress import progress

WIKITEXT_NAMES = {"wikitext", "wikitext2", "wikitext-2", "wikitext-2-raw-v1"}


def _token_ids(tokenizer, text: str):
    enc = tokenizer.encode(text)
    return np.asarray(getattr(enc, "ids", enc), dtype=np.int64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis in float64."""
    z = logits.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - (np.log(np.exp(z - m).sum(axis=-1, keepdims=True)) + m)


ROWS = 256  # positions per float64 chunk: T x V float64 copies of a 150k vocabulary would take GBs


def log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-position negative log-likelihood of `targets` [T] under `logits` [T, V] (float64 math,
    in chunks of ROWS positions)."""
    out = np.empty(len(targets))
    for a in range(0, len(targets), ROWS):
        lp = log_softmax(logits[a:a + ROWS])
        out[a:a + ROWS] = -lp[np.arange(len(lp)), targets[a:a + ROWS]]
    return out


def load_eval_text(source: Union[str, Iterable, None] = "wikitext", verbose: bool = True) -> str:
    """The evaluation text for `source` (see the module docstring), joined with "\\n\\n"."""
    if source is None:
        source = "wikitext"
    if isinstance(source, str):
        if source.lower() in WIKITEXT_NAMES:
            try:
                from datasets import load_dataset

                ds = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
                return "\n\n".join(ds["text"])
            except (ImportError, OSError, ConnectionError, ValueError) as e:
                # no datasets, no network, no cache: the built-in held-out text, said every time
                from awq.zoo import lee_corpus

                warnings.warn(f"wikitext-2 is not reachable ({type(e).__name__}: {e}); evaluating on the "
                              "built-in held-out text (Lee corpus, lee.cor) instead", RuntimeWarning, stacklevel=3)
                return "\n\n".join(lee_corpus()["heldout"])
        if os.path.isfile(source):
            with open(source, encoding="utf-8") as f:
                return f.read()
        if "\n" not in source and len(source) < 256 and (os.sep in source or source.endswith(".txt")):
            raise FileNotFoundError(f"evaluation text file {source!r} does not exist")
        return source
    if hasattr(source, "column_names") and "text" in getattr(source, "column_names", []):
        return "\n\n".join(source["text"])
    texts = []
    for item in source:
        if isinstance(item, dict):
            item = item.get("text")
        if not isinstance(item, str):
            raise TypeError(f"evaluation texts must be strings (or rows with a 'text' field), got {type(item).__name__}")
        texts.append(item)
    return "\n\n".join(texts)


def _windows(tokenizer, text_or_dataset, seqlen: int, max_windows: Optional[int], verbose: bool) -> np.ndarray:
    if not isinstance(seqlen, int) or seqlen < 2:
        raise ValueError(f"seqlen must be an integer >= 2, got {seqlen!r}")
    ids = _token_ids(tokenizer, load_eval_text(text_or_dataset, verbose))
    n = len(ids) // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the evaluation text has {len(ids)} tokens, fewer than one window of {seqlen}")
    return ids[: n * seqlen].reshape(n, seqlen)


def evaluate_windows(model, tokenizer, text_or_dataset="wikitext", seqlen: int = 2048,
                     fn: Callable = None, max_windows: Optional[int] = None, verbose: bool = True,
                     desc: str = "evaluate") -> List:
    """The custom-evaluation hook: runs `model.forward` on each window and returns
    [fn(window_ids [T], logits [T, V] fp32) for each window]."""
    if fn is None or not callable(fn):
        raise TypeError("evaluate_windows needs fn(window_ids, logits)")
    wins = _windows(tokenizer, text_or_dataset, seqlen, max_windows, verbose)
    return [fn(w, np.asarray(model.forward(w[None])[0], np.float32))
            for w in progress(wins, desc=desc, disable=not verbose)]


def evaluate_perplexity(model, tokenizer, text_or_dataset="wikitext", seqlen: int = 2048,
                        max_windows: Optional[int] = None, verbose: bool = True,
                        hook: Optional[Callable] = None) -> float:
    """Perplexity of `model` (anything with .forward(ids[1, T]) -> logits [1, T, V]) on the text.
    hook(window_ids, logits) is called on every window as well (custom metrics on the same pass)."""
    def per_window(w, logits):
        if hook is not None:
            hook(w, logits)
        nll = log_softmax_nll(logits[:-1], w[1:])
        return float(nll.sum()), len(nll)

    res = evaluate_windows(model, tokenizer, text_or_dataset, seqlen, per_window, max_windows, verbose, "perplexity")
    total = sum(r[0] for r in res)
    count = sum(r[1] for r in res)
    return float(np.exp(total / count))


def eval_kl_divergence(ref_model, model, tokenizer, text_or_dataset="wikitext", seqlen: int = 2048,
                       max_windows: Optional[int] = None, verbose: bool = True,
                       hook: Optional[Callable] = None) -> Dict[str, float]:
    """Compares two DIFFERENT models on the same windows (AutoAWQ's version compared a model with
    itself). Returns, over every predicted position: the mean, median and 95th percentile of
    KL(P_ref || P_model) in nats, top-1 agreement (fraction of positions where both argmaxes agree),
    and both perplexities. hook(window_ids, ref_logits, logits) sees every window."""
    if ref_model is model:
        raise ValueError("eval_kl_divergence compares two different models; got the same object twice")
    kls, agree, nll_r, nll_m = [], 0, 0.0, 0.0
    npos = 0
    wins = _windows(tokenizer, text_or_dataset, seqlen, max_windows, verbose)
    for w in progress(wins, desc="kl-divergence", disable=not verbose):
        lr = np.asarray(ref_model.forward(w[None])[0], np.float32)
        lm = np.asarray(model.forward(w[None])[0], np.float32)
        if lr.shape != lm.shape:
            raise ValueError(f"the models disagree on the vocabulary: logits {lr.shape} vs {lm.shape}")
        if hook is not None:
            hook(w, lr, lm)
        t = w[1:]
        for a in range(0, len(t), ROWS):  # float64 in chunks of positions
            pr, pm = log_softmax(lr[a:min(a + ROWS, len(t))]), log_softmax(lm[a:min(a + ROWS, len(t))])
            kls.append((np.exp(pr) * (pr - pm)).sum(axis=-1))
            tt = t[a:a + ROWS]
            nll_r -= float(pr[np.arange(len(tt)), tt].sum())
            nll_m -= float(pm[np.arange(len(tt)), tt].sum())
        agree += int((lr[:-1].argmax(-1) == lm[:-1].argmax(-1)).sum())
        npos += len(t)
    kl = np.concatenate(kls)
    return {"kl_mean": float(kl.mean()), "kl_median": float(np.median(kl)), "kl_p95": float(np.percentile(kl, 95)),
            "top1_agreement": agree / npos, "ppl_ref": float(np.exp(nll_r / npos)),
            "ppl_model": float(np.exp(nll_m / npos)), "positions": npos}
