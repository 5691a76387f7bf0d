"""Calibration data sources and AutoAWQ's block recipe, checked against hand-computed blocks."""
import json

import numpy as np
import pytest

from awq.quantize.calib import CalibrationError, get_calib_dataset
from tiny import CharTokenizer

tok = CharTokenizer()


def test_recipe_concatenates_and_drops_remainder():
    texts = ["abcd", "  efg  ", "", "hijklmnopqrstuvwxyz" * 5, "xy"]
    blocks = get_calib_dataset(texts, tok, n_samples=10, max_seq_len=4)
    # "hijk..."*5 (95 tokens) is longer than 4 and skipped; "efg" is stripped; "" skipped
    flat = list(b"abcd" + b"efg" + b"xy")
    assert blocks.dtype == np.int64 and blocks.shape == (2, 4)
    assert blocks.ravel().tolist() == flat[:8]


def test_n_samples_counts_accepted_texts():
    blocks = get_calib_dataset(["ab", "cd", "ef", "gh"], tok, n_samples=3, max_seq_len=2)
    assert blocks.ravel().tolist() == list(b"abcdef")


def test_pretokenized_and_files(tmp_path):
    ids = [[1, 2, 3], [4, 5, 6, 7], list(range(100))]
    assert get_calib_dataset(ids, None, 10, 7).ravel().tolist() == [1, 2, 3, 4, 5, 6, 7]
    txt = tmp_path / "c.txt"
    txt.write_text("hello world\n\nsecond line\n")
    assert get_calib_dataset(str(txt), tok, 10, 11).ravel().tolist() == list(b"hello worldsecond line")
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"text": "abcdef"}) + "\n" + json.dumps({"text": "ghij"}) + "\n")
    assert get_calib_dataset(str(jl), tok, 10, 10).ravel().tolist() == list(b"abcdefghij")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "x"}\n')
    with pytest.raises(CalibrationError, match="text"):
        get_calib_dataset(str(bad), tok, 10, 5)
    csv = tmp_path / "c.csv"
    csv.write_text("a,b\n")
    with pytest.raises(CalibrationError, match="unsupported"):
        get_calib_dataset(str(csv), tok, 10, 5)


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"content": ["abc", "defg"]}), str(p))
    assert get_calib_dataset(str(p), tok, 10, 7, text_column="content").ravel().tolist() == list(b"abcdefg")


def test_unreachable_named_dataset_falls_back_to_offline_default(capsys, monkeypatch):
    import awq.zoo

    monkeypatch.setattr(awq.zoo, "lee_corpus", lambda cache_dir=None: {"calibration": ["offline text"] * 4,
                                                                       "heldout": []})
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # as if not installed
    blocks = get_calib_dataset("pileval", tok, 10, 12)
    assert bytes(blocks.ravel().tolist()) == b"offline text" * 4
    assert "offline default corpus" in capsys.readouterr().err


def test_errors():
    with pytest.raises(CalibrationError, match="empty"):
        get_calib_dataset([], tok, 10, 8)
    with pytest.raises(CalibrationError, match="longer than max_calib_seq_len"):
        get_calib_dataset(["a" * 20], tok, 10, 8)
    with pytest.raises(CalibrationError, match="fewer than one block"):
        get_calib_dataset(["abc"], tok, 10, 8)
    with pytest.raises(CalibrationError, match="mix"):
        get_calib_dataset(["abc", [1, 2]], tok, 10, 8)
    with pytest.raises(CalibrationError, match="tokenizer"):
        get_calib_dataset(["abc"], None, 10, 2)
