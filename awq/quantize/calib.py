"""Calibration data: texts or token lists -> blocks of exactly max_calib_seq_len tokens.

Sources: list[str]; list[list[int]] (pre-tokenized); a local .txt (one sample per non-empty line),
.jsonl or .parquet path (`text_column`); a `datasets` name (when `datasets` is installed and the data
reachable); and the offline default, real English news text (the Lee corpus shipped inside the
gensim wheel, see awq.zoo.lee_corpus). AutoAWQ's default name "pileval" is a Hub dataset: when it
cannot be reached the offline default is used with a notice, so an unreachable Hub never makes
quantization fail.

Recipe (AutoAWQ): strip each text, encode, skip empty texts and texts longer than max_seq_len,
stop after n_samples accepted texts, concatenate all tokens, cut into blocks of max_seq_len and
drop the remainder.
"""
from __future__ import annotations

import json
import os
import sys
from typing import List, Sequence

import numpy as np

DEFAULT_HUB_DATASETS = {"pileval": ("mit-han-lab/pile-val-backup", "validation")}
OFFLINE_DEFAULT = "lee"


class CalibrationError(ValueError):
    """Calibration data is empty or unusable."""


def _encode(tokenizer, text: str) -> List[int]:
    if tokenizer is None:
        raise CalibrationError("text calibration data needs a tokenizer (with .encode)")
    enc = tokenizer.encode(text)
    ids = getattr(enc, "ids", enc)  # tokenizers.Tokenizer returns an Encoding
    return [int(t) for t in ids]


def _read_local(path: str, text_column: str) -> List[str]:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".txt":
        with open(path, encoding="utf-8") as f:
            return [line for line in f.read().splitlines() if line.strip()]
    if ext == ".jsonl":
        texts = []
        with open(path, encoding="utf-8") as f:
            for no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CalibrationError(f"{path}:{no}: invalid JSON ({e.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(text_column), str):
                    raise CalibrationError(f"{path}:{no}: no string field {text_column!r}")
                texts.append(obj[text_column])
        return texts
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from None
        table = pq.read_table(path)
        if text_column not in table.column_names:
            raise CalibrationError(f"{path}: no column {text_column!r} (columns: {table.column_names})")
        return [t for t in table.column(text_column).to_pylist() if isinstance(t, str)]
    raise CalibrationError(f"{path}: unsupported calibration file type {ext!r} (use .txt, .jsonl or .parquet)")


def _offline_default() -> List[str]:
    from awq.zoo import lee_corpus

    return lee_corpus()["calibration"]


def _load_named(name: str, split: str, text_column: str, n_samples: int) -> List[str]:
    if name in (OFFLINE_DEFAULT, "default"):
        return _offline_default()
    hub_name, hub_split = DEFAULT_HUB_DATASETS.get(name, (name, split))
    try:
        from datasets import load_dataset

        ds = load_dataset(hub_name, split=hub_split)
        return [row[text_column] for _, row in zip(range(n_samples * 4), ds)]
    except Exception as e:  # network, missing dataset, missing package: fall back, loudly
        print(f"awq: calibration dataset {name!r} could not be loaded ({type(e).__name__}: {e}); "
              "using the offline default corpus (Lee news corpus from the gensim package) instead",
              file=sys.stderr)
        return _offline_default()


def get_calib_dataset(data="pileval", tokenizer=None, n_samples: int = 128, max_seq_len: int = 512,
                      split: str = "train", text_column: str = "text") -> np.ndarray:
    """Returns int64 [n_blocks, max_seq_len] calibration blocks."""
    if max_seq_len <= 0 or n_samples <= 0:
        raise CalibrationError(f"max_calib_seq_len and max_calib_samples must be > 0 (got {max_seq_len}, {n_samples})")
    if data is None:
        data = "pileval"
    pretokenized = False
    if isinstance(data, str):
        texts: Sequence = _read_local(data, text_column) if os.path.exists(data) else _load_named(
            data, split, text_column, n_samples)
    elif isinstance(data, (list, tuple)):
        if len(data) == 0:
            raise CalibrationError("calibration data is empty (an empty list was given)")
        if all(isinstance(t, str) for t in data):
            texts = data
        elif all(isinstance(t, (list, tuple, np.ndarray)) for t in data):
            texts, pretokenized = data, True
        else:
            raise CalibrationError("calibration data must be list[str] or list[list[int]], not a mix")
    else:
        raise CalibrationError(f"unsupported calibration data of type {type(data).__name__}")

    samples, n_long = [], 0
    for t in texts:
        ids = [int(x) for x in t] if pretokenized else _encode(tokenizer, t.strip())
        if len(ids) == 0:
            continue
        if len(ids) > max_seq_len:
            n_long += 1
            continue
        samples.append(ids)
        if len(samples) == n_samples:
            break
    if not samples:
        if n_long:
            raise CalibrationError(
                f"all {n_long} calibration texts are longer than max_calib_seq_len={max_seq_len} tokens "
                "and were skipped; raise max_calib_seq_len or pass shorter texts")
        raise CalibrationError("calibration data is empty: no non-empty text or token list")
    flat = np.fromiter((x for s in samples for x in s), dtype=np.int64)
    n_blocks = flat.size // max_seq_len
    if n_blocks == 0:
        raise CalibrationError(
            f"calibration data has {flat.size} tokens in {len(samples)} samples, fewer than one block of "
            f"max_calib_seq_len={max_seq_len}; give more text or lower max_calib_seq_len")
    return flat[: n_blocks * max_seq_len].reshape(n_blocks, max_seq_len)
