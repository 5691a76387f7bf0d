"""Property-based fuzzing (hypothesis) of the Python-side parsers of untrusted checkpoint files.

Each parser either returns a correct result or raises one of the exceptions its code documents;
anything else (OverflowError, KeyError, IndexError, a plain ValueError from numpy, ...) or a hang
(the deadline) is a bug:
  - safetensors reader (awq/io/safetensors.py): SafetensorsError at open, nothing at get(); an
    accepted file's tensors tile the data section and read back as the bytes the header names;
  - config.json: read_json raises CheckpointError / FileNotFoundError, ModelConfig.from_dict and
    inv_freq raise ConfigError; an accepted config satisfies what the forward needs (positive
    sizes, heads divisible, an even rotary_dim in [2, head_dim], finite positive eps and theta,
    finite RoPE frequencies);
  - model.safetensors.index.json (open_checkpoint): CheckpointError / SafetensorsError (and
    FileNotFoundError for a missing filename=); every tensor of an accepted index lies in a file
    inside the folder and reads back unchanged;
  - quantization configs (normalize_quant_config, load_quant_config with quantization_config in
    config.json or a legacy quant_config.json): ValueError (ConfigError, CheckpointError), OSError
    for a legacy file that cannot be read; an accepted config is normalized and in range.

Inputs are valid files mutated (bytes flipped, truncated, header length changed, JSON values
replaced by values of any type, odd shard names) and plain garbage. The default example count keeps
this file at a few seconds; AWQ_FUZZ_EXAMPLES=N runs N examples per test (fuzz/run.sh scales it
with its budget).
"""
import json
import math
import os
import shutil
import struct
import tempfile
from datetime import timedelta

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from awq.io.checkpoint import (  # noqa: E402
    SAFE_WEIGHTS_INDEX_NAME,
    CheckpointError,
    open_checkpoint,
    read_json,
    write_checkpoint,
)
from awq.io.safetensors import DTYPES, SafetensorsError, SafetensorsFile, save_file  # noqa: E402
from awq.models.base import load_quant_config, normalize_quant_config, read_model_config  # noqa: E402
from awq.models.config import ConfigError, ModelConfig  # noqa: E402

EXAMPLES = int(os.environ.get("AWQ_FUZZ_EXAMPLES", "60"))
# No example database (nothing written into the tree); the deadline turns a hang into a failure
# (generous: this box is slow and shared).
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=10), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture()
def workdir():
    """A fresh folder per example (hypothesis calls the test body many times per fixture)."""
    root = tempfile.mkdtemp(prefix="awq-fuzz-")

    class Dirs:
        def fresh(self):
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(root)
            return root

    yield Dirs()
    shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# JSON values of any type, including the ones a JSON file can hold but Python code rarely expects
# ---------------------------------------------------------------------------------------------

# Written into the JSON text by hand: Python refuses to format ints past 4300 digits itself.
HUGE_INT = "1" + "0" * 5000
_HUGE = "@@huge-int@@"

leaves = (st.none() | st.booleans() | st.integers() | st.text(max_size=12)
          | st.floats(allow_nan=True, allow_infinity=True)
          | st.sampled_from([0, -1, 1, 2, 3, 7, 8, 64, 128, 2**31, 2**63, -2**63 - 1, 2**64, 10**400,
                             0.5, 1e-320, 5e-324, 1e308, 1.7976931348623157e308, 1e-300, 2.0, 4.0,
                             "", "4", "gemm", "GEMM", "gemv", "awq", "llama3", "linear", "default",
                             _HUGE]))
json_values = st.recursive(
    leaves, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=10)


def dumps(value) -> str:
    """JSON text (NaN / Infinity as Python writes them, which json.loads reads back)."""
    return json.dumps(value).replace(json.dumps(_HUGE), HUGE_INT)


def mutate_dict(base: dict, edits, keys) -> dict:
    """Apply edits [(key index or new key, value or None = delete)] to a copy of base."""
    out = dict(base)
    for k, v in edits:
        key = keys[k % len(keys)] if isinstance(k, int) else k
        if v is _DELETE:
            out.pop(key, None)
        else:
            out[key] = v
    return out


_DELETE = object()
edit_values = json_values | st.just(_DELETE)


# ---------------------------------------------------------------------------------------------
# (a) safetensors reader
# ---------------------------------------------------------------------------------------------

_DT_NAMES = sorted(DTYPES)


@st.composite
def safetensors_files(draw):
    """Bytes of a valid file written by save_file: a few tensors of any dtype and small shapes."""
    names = draw(st.lists(st.text(min_size=1, max_size=8).filter(lambda s: s != "__metadata__"),
                          max_size=4, unique=True))
    tensors = {}
    for name in names:
        dt = DTYPES[draw(st.sampled_from(_DT_NAMES))]
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        n = int(np.prod(shape)) * dt.itemsize
        raw = draw(st.binary(min_size=n, max_size=n))
        tensors[name] = np.frombuffer(raw, dtype=dt).reshape(shape).copy()
    meta = draw(st.none() | st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3))
    tmp = tempfile.mkdtemp(prefix="awq-st-")
    try:
        path = os.path.join(tmp, "f.safetensors")
        save_file(tensors, path, metadata=meta)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        shutil.rmtree(tmp)


def _split(raw: bytes):
    n = int.from_bytes(raw[:8], "little")
    return n, raw[8:8 + n], raw[8 + n:]


@st.composite
def header_edit(draw, raw: bytes):
    """Replace, delete or add JSON values in the header (tensor entries and their fields)."""
    _, text, data = _split(raw)
    header = json.loads(text)
    names = sorted(header) or ["x"]
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names + ["__metadata__", "new"]))
        what = draw(st.sampled_from(["entry", "dtype", "shape", "data_offsets", "extra", "offsets+-"]))
        if what == "entry":
            v = draw(edit_values)
            if v is _DELETE:
                header.pop(name, None)
            else:
                header[name] = v
            continue
        entry = header.get(name)
        if not isinstance(entry, dict):
            entry = header[name] = {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
        if what == "offsets+-" and isinstance(entry.get("data_offsets"), list):
            entry["data_offsets"] = [o + draw(st.integers(-9, 9)) if type(o) is int else o
                                     for o in entry["data_offsets"]]
        elif what == "dtype":
            entry["dtype"] = draw(st.sampled_from(_DT_NAMES + ["F8_E4M3", "f32", ""]) | json_values)
        elif what == "shape":
            entry["shape"] = draw(st.lists(st.integers(-2, 5) | st.sampled_from([2**40, 2**64, 10**30]),
                                           max_size=4) | json_values
                                  | st.just([0] * 70) | st.just([0, 2**62, 2**62]) | st.just([1] * 65))
        else:
            v = draw(edit_values)
            key = what if what != "extra" else draw(st.text(max_size=5))
            if v is _DELETE:
                entry.pop(key, None)
            else:
                entry[key] = v
    text = dumps(header).encode("utf-8")
    text += b" " * draw(st.sampled_from([0, -len(text) % 8]))
    return struct.pack("<Q", len(text)) + text + data


@st.composite
def mutated_safetensors(draw):
    raw = draw(safetensors_files())
    kind = draw(st.sampled_from(["bytes", "truncate", "length", "json", "append", "garbage", "none"]))
    if kind == "bytes":
        b = bytearray(raw)
        for pos, val in draw(st.lists(st.tuples(st.integers(0, len(b) - 1), st.integers(0, 255)),
                                      min_size=1, max_size=4)):
            b[pos] = val
        raw = bytes(b)
    elif kind == "truncate":
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif kind == "length":
        n = len(_split(raw)[1])
        new = draw(st.integers(0, 2**64 - 1) | st.integers(max(0, n - 9), n + 9)
                   | st.sampled_from([100_000_000, 100_000_001]))
        raw = struct.pack("<Q", new) + raw[8:]
    elif kind == "json":
        raw = draw(header_edit(raw))
    elif kind == "append":
        raw = raw + draw(st.binary(min_size=1, max_size=16))
    elif kind == "garbage":
        raw = draw(st.binary(max_size=64))
    return raw


def check_accepted_safetensors(f: SafetensorsFile, raw: bytes):
    """An accepted file: tensors tile the data section, and each reads back as its bytes."""
    n, text, data = _split(raw)
    header = json.loads(text.decode("utf-8"))
    header.pop("__metadata__", None)
    assert sorted(f.keys()) == sorted(header)
    spans = sorted((e["data_offsets"][0], e["data_offsets"][1]) for e in header.values())
    pos = 0
    for b, e in spans:
        assert b == pos, "accepted file has a hole or an overlap"
        pos = e
    assert pos == len(data), "accepted file has trailing bytes"
    for name, e in header.items():
        dt = DTYPES[e["dtype"]]
        arr = f.get(name)
        assert f.dtype(name) == e["dtype"] and f.shape(name) == tuple(e["shape"])
        assert arr.dtype == dt and arr.shape == tuple(e["shape"])
        begin, end = e["data_offsets"]
        assert arr.tobytes() == data[begin:end]
        if e["dtype"] in ("F16", "BF16", "F32", "F64"):
            assert f.get_float32(name).shape == arr.shape
        else:
            with pytest.raises(TypeError):
                f.get_float32(name)


@FUZZ
@given(raw=mutated_safetensors())
def test_safetensors_reader_fuzz(workdir, raw):
    path = os.path.join(workdir.fresh(), "f.safetensors")
    with open(path, "wb") as fh:
        fh.write(raw)
    try:
        f = SafetensorsFile(path)
    except SafetensorsError as e:
        assert path in str(e)
        return
    with f:
        check_accepted_safetensors(f, raw)


# ---------------------------------------------------------------------------------------------
# (b) config.json -> ModelConfig
# ---------------------------------------------------------------------------------------------

BASE_CONFIG = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": False,
}
CONFIG_KEYS = sorted(BASE_CONFIG) + [
    "head_dim", "partial_rotary_factor", "rope_scaling", "rope_parameters", "sliding_window",
    "use_sliding_window", "text_config"]

rope_dicts = st.fixed_dictionaries({}, optional={
    "rope_type": st.sampled_from(["default", "linear", "llama3", "yarn", "dynamic"]) | json_values,
    "type": st.sampled_from(["linear", "llama3"]) | json_values,
    "factor": json_values, "low_freq_factor": json_values, "high_freq_factor": json_values,
    "original_max_position_embeddings": json_values, "rope_theta": json_values})
config_values = edit_values | rope_dicts | st.integers(-3, 300) | st.floats(-10, 10)


@st.composite
def configs(draw):
    edits = draw(st.lists(st.tuples(st.integers(0, 10**6) | st.text(max_size=6), config_values),
                          max_size=5))
    cfg = mutate_dict(BASE_CONFIG, edits, CONFIG_KEYS)
    if draw(st.booleans()) and isinstance(cfg.get("text_config"), dict):
        # nested decoder config (multimodal layout): the text keys move under text_config
        cfg["text_config"] = {**{k: v for k, v in cfg.items() if k != "text_config"}, **cfg["text_config"]}
    return cfg


def check_model_config(cfg):
    """from_dict raises ConfigError or returns what the forward needs; same for inv_freq."""
    try:
        mc = ModelConfig.from_dict(cfg)
    except ConfigError:
        return
    for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "vocab_size", "max_position_embeddings"):
        v = getattr(mc, name)
        assert type(v) is int and v >= 1, (name, v)
    assert mc.num_heads % mc.num_kv_heads == 0
    assert mc.head_dim % 2 == 0
    assert type(mc.rotary_dim) is int and mc.rotary_dim % 2 == 0 and 2 <= mc.rotary_dim <= mc.head_dim, \
        (mc.rotary_dim, mc.head_dim)
    for name in ("rms_norm_eps", "rope_theta"):
        v = getattr(mc, name)
        assert isinstance(v, float) and math.isfinite(v) and v > 0, (name, v)
    assert type(mc.sliding_window) is int and mc.sliding_window >= 0
    assert mc.rope_scaling is None or isinstance(mc.rope_scaling, dict)
    try:
        inv = mc.inv_freq()
    except ConfigError:
        return
    assert inv.shape == (mc.rotary_dim // 2,) and np.all(np.isfinite(inv)), inv
    cos, sin = mc.rope_tables(np.arange(3))
    assert np.all(np.isfinite(cos)) and np.all(np.isfinite(sin))


@FUZZ
@given(cfg=configs() | json_values)
def test_model_config_fuzz(cfg):
    check_model_config(cfg)


@st.composite
def config_files(draw):
    """config.json bytes: a mutated config as JSON text, then maybe bytes flipped or cut."""
    text = dumps(draw(configs() | json_values)).encode("utf-8")
    kind = draw(st.sampled_from(["as-is", "bom", "bytes", "truncate", "garbage", "deep"]))
    if kind == "bom":
        text = b"\xef\xbb\xbf" + text
    elif kind == "bytes" and text:
        b = bytearray(text)
        for pos, val in draw(st.lists(st.tuples(st.integers(0, len(b) - 1), st.integers(0, 255)),
                                      min_size=1, max_size=3)):
            b[pos] = val
        text = bytes(b)
    elif kind == "truncate":
        text = text[:draw(st.integers(0, len(text)))]
    elif kind == "garbage":
        text = draw(st.binary(max_size=40))
    elif kind == "deep":
        depth = draw(st.integers(60, 3000))
        text = b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
    return text


@FUZZ
@given(raw=config_files())
def test_read_model_config_fuzz(workdir, raw):
    folder = workdir.fresh()
    with open(os.path.join(folder, "config.json"), "wb") as fh:
        fh.write(raw)
    try:
        cfg = read_model_config(folder)
    except CheckpointError as e:
        assert "config.json" in str(e)
        return
    assert isinstance(cfg, dict)
    check_model_config(cfg)


# ---------------------------------------------------------------------------------------------
# (c) model.safetensors.index.json
# ---------------------------------------------------------------------------------------------

ODD_SHARD_NAMES = [
    "", ".", "./", "..", "../model-00001-of-00002.safetensors", "/etc/passwd", "/", "sub", "sub/",
    "sub/../model-00001-of-00002.safetensors", "./model-00001-of-00002.safetensors",
    "a\\b.safetensors", "C:model.safetensors", "x\x00y", "model.safetensors.index.json",
    "config.json", "missing.safetensors", "model-00003-of-00002.safetensors", "\u00fc.safetensors",
    "a" * 300, "sub/inner.safetensors", "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors"]
TENSORS = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b": np.arange(8, dtype=np.int32),
    "c.weight": np.ones((3, 2), dtype=np.float16),
}


@st.composite
def index_edits(draw):
    shard = st.sampled_from(ODD_SHARD_NAMES) | st.text(max_size=10) | json_values
    name = st.sampled_from(sorted(TENSORS) + ["d", ""]) | st.text(max_size=6)
    return draw(st.lists(st.one_of(
        st.tuples(st.just("map"), name, shard),            # weight_map[name] = shard
        st.tuples(st.just("del"), name, st.none()),        # del weight_map[name]
        st.tuples(st.just("weight_map"), st.none(), json_values),
        st.tuples(st.just("metadata"), st.none(), json_values),
        st.tuples(st.just("raw"), st.none(), st.binary(max_size=30)),
    ), min_size=1, max_size=4))


def build_sharded(folder):
    write_checkpoint(TENSORS, folder, shard_size=40)  # two or three shards + the index
    os.mkdir(os.path.join(folder, "sub"))
    save_file({"z": np.zeros(2, np.float32)}, os.path.join(folder, "sub", "inner.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(BASE_CONFIG, fh)


def check_accepted_checkpoint(ckpt, folder):
    """Every tensor the index names lies in a file inside the folder and reads back unchanged.
    (The index is the source of truth: one naming only sub/inner.safetensors, or no tensor at all,
    is a valid if useless checkpoint; the model loader reports the missing weights.)"""
    root = os.path.realpath(folder)
    stored = {**TENSORS, "z": np.zeros(2, np.float32)}
    assert set(ckpt.keys()) <= set(stored)
    for name in ckpt.keys():
        path = os.path.realpath(ckpt.shard_of(name))
        assert os.path.commonpath([root, path]) == root, path
        np.testing.assert_array_equal(ckpt.get(name), stored[name])


@FUZZ
@given(edits=index_edits())
def test_index_json_fuzz(workdir, edits):
    folder = workdir.fresh()
    build_sharded(folder)
    index_path = os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
    with open(index_path) as fh:
        index = json.load(fh)
    raw = None
    for op, key, value in edits:
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if op == "map" and isinstance(wm, dict):
            wm[key] = value
        elif op == "del" and isinstance(wm, dict):
            wm.pop(key, None)
        elif op in ("weight_map", "metadata") and isinstance(index, dict):
            index[op] = value
        elif op == "raw":
            raw = value
    with open(index_path, "wb") as fh:
        fh.write(raw if raw is not None else dumps(index).encode("utf-8"))
    try:
        ckpt = open_checkpoint(folder)
    except (CheckpointError, SafetensorsError):
        return
    with ckpt:
        check_accepted_checkpoint(ckpt, folder)


@FUZZ
@given(filename=st.sampled_from(ODD_SHARD_NAMES) | st.text(max_size=12))
def test_checkpoint_filename_fuzz(workdir, filename):
    folder = workdir.fresh()
    build_sharded(folder)
    try:
        ckpt = open_checkpoint(folder, filename=filename)
    except (CheckpointError, SafetensorsError, FileNotFoundError):
        return
    with ckpt:
        root = os.path.realpath(folder)
        for path in ckpt.files:
            assert os.path.commonpath([root, os.path.realpath(path)]) == root, path


# ---------------------------------------------------------------------------------------------
# (d) quantization configs
# ---------------------------------------------------------------------------------------------

BASE_QC = {"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": "GEMM"}
QC_KEYS = sorted(BASE_QC) + ["group_size", "bits", "quant_method", "modules_to_not_convert"]
quant_configs = st.builds(
    lambda edits: mutate_dict(BASE_QC, edits, QC_KEYS),
    st.lists(st.tuples(st.integers(0, 10**6) | st.text(max_size=6), edit_values), max_size=4))


@FUZZ
@given(qc=quant_configs | st.dictionaries(st.text(max_size=6), json_values, max_size=4) | st.none())
def test_normalize_quant_config_fuzz(qc):
    try:
        out = normalize_quant_config(qc)
    except ValueError:
        return
    assert sorted(out) == ["modules_to_not_convert", "q_group_size", "version", "w_bit", "zero_point"]
    g = out["q_group_size"]
    assert type(g) is int and (g == -1 or g > 0)
    assert out["w_bit"] in (2, 3, 4, 8) and out["version"] == "gemm"
    assert isinstance(out["zero_point"], bool)


@FUZZ
@given(qc=quant_configs | json_values, where=st.sampled_from(["config", "legacy", "legacy-raw", "none"]),
       raw=config_files())
def test_load_quant_config_fuzz(workdir, qc, where, raw):
    folder = workdir.fresh()
    config = dict(BASE_CONFIG)
    if where == "config":
        config["quantization_config"] = qc
    elif where == "legacy":
        with open(os.path.join(folder, "quant_config.json"), "w") as fh:
            fh.write(dumps(qc))
    elif where == "legacy-raw":
        with open(os.path.join(folder, "quant_config.json"), "wb") as fh:
            fh.write(raw)
    try:
        out = load_quant_config(folder, config)
    except ValueError:
        return
    assert out["w_bit"] == 4 and out["version"] == "gemm"
    g = out["q_group_size"]
    assert type(g) is int and (g == -1 or g > 0)
    assert isinstance(out["zero_point"], bool)


def test_legacy_quant_config_that_is_a_folder(workdir):
    """A quant_config.json that cannot be read is an OSError naming it, not a crash elsewhere."""
    folder = workdir.fresh()
    os.mkdir(os.path.join(folder, "quant_config.json"))
    with pytest.raises(OSError):
        load_quant_config(folder, dict(BASE_CONFIG))


def test_read_json_documented_errors(workdir):
    folder = workdir.fresh()
    with pytest.raises(FileNotFoundError):
        read_json(os.path.join(folder, "nope.json"), "model config")
