"""The bad-input catalog (issue 6, part 6): malformed inputs of every kind awq reads, each of which
must raise one specific exception with a message naming the problem; none may crash the process,
hang, or return garbage. One table row per input; the rows are grouped by what they break:
safetensors files (truncation at each section, flipped bits, huge lengths, offsets, dtypes, shapes),
JSON files (config.json, index, quantization config: non-UTF-8, deep nesting, wrong types),
checkpoint folders (missing pieces, paths that leave the folder, pickle-only), model and
quantization arguments (group size, bits, calibration data, NaN/Inf weights), runtime inputs, and
an interrupted save.
"""
import json
import os
import struct

import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from awq.io.checkpoint import CheckpointError
from awq.io.safetensors import SafetensorsError, SafetensorsFile, save_file
from awq.models.config import ConfigError
from awq.quantize.calib import CalibrationError
from tiny import CharTokenizer, calib_texts, tiny_config, write_tiny_model

CASES = {}


def case(exc, match):
    """Registers a catalog row: the function builds the input under tmp_path and triggers it."""

    def deco(fn):
        CASES[fn.__name__] = (fn, exc, match)
        return fn

    return deco


# ------------------------------------------------------------------ safetensors building blocks
def st_raw(header, data=b"", length=None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def valid_st():
    """A valid two-tensor file: (bytes, header length)."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(4, dtype=np.float16)
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]}}
    raw = st_raw(header, a.tobytes() + b.tobytes())
    return raw, len(json.dumps(header).encode())


def write(tmp_path, raw, name="x.safetensors"):
    p = tmp_path / name
    p.write_bytes(raw)
    return str(p)


def open_st(tmp_path, raw):
    return lambda: SafetensorsFile(write(tmp_path, raw))


def entry(**kw):
    e = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    e.update(kw)
    return {"t": e}


# ------------------------------------------------------------------ safetensors: truncation
@case(SafetensorsError, "shorter than the 8-byte header length")
def st_empty_file(tmp_path):
    return open_st(tmp_path, b"")


@case(SafetensorsError, "shorter than the 8-byte header length")
def st_truncated_in_length_field(tmp_path):
    return open_st(tmp_path, valid_st()[0][:5])


@case(SafetensorsError, "runs past the end of the file")
def st_truncated_in_header(tmp_path):
    raw, n = valid_st()
    return open_st(tmp_path, raw[:8 + n // 2])


@case(SafetensorsError, "run past the data section")
def st_truncated_in_data(tmp_path):
    return open_st(tmp_path, valid_st()[0][:-3])


@case(SafetensorsError, "run past the data section")
def st_truncated_right_after_header(tmp_path):
    raw, n = valid_st()
    return open_st(tmp_path, raw[:8 + n])


# ------------------------------------------------------------------ safetensors: header length / bits
@case(SafetensorsError, "exceeds the limit")
def st_huge_header_length(tmp_path):
    return open_st(tmp_path, st_raw(entry(), b"\0" * 8, length=2 ** 63))


@case(SafetensorsError, "not a JSON object|not valid")
def st_zero_header_length(tmp_path):
    return open_st(tmp_path, st_raw(b"", b"\0" * 8, length=0))


@case(SafetensorsError, "runs past the end of the file|exceeds the limit")
def st_flipped_high_bit_in_length(tmp_path):
    raw = bytearray(valid_st()[0])
    raw[4] ^= 0x10  # header length += 2^36
    return open_st(tmp_path, bytes(raw))


@case(SafetensorsError, "not valid JSON|not a JSON object|trailing bytes|data_offsets|hole")
def st_flipped_bit_in_header_json(tmp_path):
    raw = bytearray(valid_st()[0])
    raw[8] ^= 0x01  # '{' -> 'z'
    return open_st(tmp_path, bytes(raw))


@case(SafetensorsError, "not valid UTF-8")
def st_header_not_utf8(tmp_path):
    return open_st(tmp_path, st_raw(b'{"t": "\xff\xfe"}'))


@case(SafetensorsError, "not valid JSON")
def st_header_not_json(tmp_path):
    return open_st(tmp_path, st_raw(b"{this is not json}"))


@case(SafetensorsError, "not a JSON object")
def st_header_is_a_list(tmp_path):
    return open_st(tmp_path, st_raw(b"[1, 2, 3]"))


@case(SafetensorsError, "nested too deeply|not valid JSON|entry is not a JSON object")
def st_deeply_nested_header(tmp_path):
    return open_st(tmp_path, st_raw(b'{"t": ' + b"[" * 100000 + b"]" * 100000 + b"}"))


@case(SafetensorsError, "duplicate key")
def st_duplicate_tensor_name(tmp_path):
    e = '{"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'
    return open_st(tmp_path, st_raw(('{"t": %s, "t": %s}' % (e, e)).encode(), b"\0" * 8))


# ------------------------------------------------------------------ safetensors: entries
@case(SafetensorsError, "entry has no 'dtype'")
def st_entry_without_dtype(tmp_path):
    return open_st(tmp_path, st_raw({"t": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8))


@case(SafetensorsError, "unknown dtype 'F12'")
def st_unknown_dtype(tmp_path):
    return open_st(tmp_path, st_raw(entry(dtype="F12"), b"\0" * 8))


@case(SafetensorsError, "shape must be a list of non-negative integers")
def st_negative_shape(tmp_path):
    return open_st(tmp_path, st_raw(entry(shape=[-2]), b"\0" * 8))


@case(SafetensorsError, "shape must be a list of non-negative integers")
def st_float_shape(tmp_path):
    return open_st(tmp_path, st_raw(entry(shape=[2.0]), b"\0" * 8))


@case(SafetensorsError, "data_offsets must be")
def st_offsets_wrong_length(tmp_path):
    return open_st(tmp_path, st_raw(entry(data_offsets=[0, 4, 8]), b"\0" * 8))


@case(SafetensorsError, "end 0 < begin 8")
def st_offsets_reversed(tmp_path):
    return open_st(tmp_path, st_raw(entry(data_offsets=[8, 0]), b"\0" * 8))


@case(SafetensorsError, "run past the data section")
def st_offsets_out_of_range(tmp_path):
    return open_st(tmp_path, st_raw(entry(data_offsets=[8, 16]), b"\0" * 8))


@case(SafetensorsError, "overlaps the previous tensor")
def st_overlapping_offsets(tmp_path):
    h = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    return open_st(tmp_path, st_raw(h, b"\0" * 12))


@case(SafetensorsError, "span 8 bytes but shape")
def st_shape_size_mismatch(tmp_path):
    return open_st(tmp_path, st_raw(entry(shape=[3]), b"\0" * 8))


@case(SafetensorsError, "hole in the data section")
def st_hole_between_tensors(tmp_path):
    h = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
         "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}
    return open_st(tmp_path, st_raw(h, b"\0" * 12))


@case(SafetensorsError, "__metadata__ must be a map of strings to strings")
def st_bad_metadata(tmp_path):
    h = entry()
    h["__metadata__"] = {"format": 3}
    return open_st(tmp_path, st_raw(h, b"\0" * 8))


# ------------------------------------------------------------------ model folders and JSON files
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("catalog") / "m")
    write_tiny_model(folder, tiny_config(), dtype=np.float16)
    return folder


def copy_folder(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def edit_config(folder, **changes):
    p = os.path.join(folder, "config.json")
    cfg = json.load(open(p))
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    json.dump(cfg, open(p, "w"))


def load(folder):
    return lambda: AutoAWQForCausalLM.from_pretrained(folder)


@case(FileNotFoundError, "config not found")
def folder_without_config(tmp_path, tiny):
    f = copy_folder(tiny, tmp_path / "m")
    os.remove(os.path.join(f, "config.json"))
    return load(f)


@case(FileNotFoundError, "is not a local folder")
def folder_missing(tmp_path, tiny):
    return load(str(tmp_path / "does-not-exist"))


@case(CheckpointError, "not valid UTF-8")
def config_not_utf8(tmp_path, tiny):
    f = copy_folder(tiny, tmp_path / "m")
    open(os.path.join(f, "config.json"), "wb").write(b'{"model_type": "\xff"}')
    return load(f)


@case(CheckpointError, "invalid JSON")
def config_not_json(tmp_path, tiny):
    f = copy_folder(tiny, tmp_path / "m")
    open(os.path.join(f, "config.json"), "w").write('{"model_type": "llama",')
    return load(f)


@case(CheckpointError, "nested")
def config_deeply_nested(tmp_path, tiny):
    f = copy_folder(tiny, tmp_path / "m")
    open(os.path.join(f, "config.json"), "w").write('{"x": ' + "[" * 50000 + "]" * 50000 + "}")
    return load(f)


@case(CheckpointError, "expected a JSON object")
def config_is_a_list(tmp_path, tiny):
    f = copy_folder(tiny, tmp_path / "m")
    open(os.path.join(f, "config.json"), "w").write("[1, 2]")
    return load(f)


# config.json values: (row name, changes, exception, message)
CONFIG_ROWS = [
    ("config_hidden_size_string", {"hidden_size": "64"}, ConfigError, "hidden_size"),
    ("config_zero_heads", {"num_attention_heads": 0}, ConfigError, "num_attention_heads"),
    ("config_heads_not_divisible", {"num_key_value_heads": 3}, ConfigError, "num_key_value_heads|num_attention_heads"),
    ("config_negative_eps", {"rms_norm_eps": -1e-5}, ConfigError, "rms_norm_eps"),
    ("config_unknown_rope_scaling", {"rope_scaling": {"rope_type": "yarnish", "factor": 2.0}}, ConfigError,
     "rope_scaling type 'yarnish'"),
    ("config_unknown_model_type", {"model_type": "frobnicator"}, TypeError, "isn't supported yet"),
    ("config_disagrees_with_tensors", {"hidden_size": 128}, ValueError, "hidden size 64, config says 128"),
    ("config_tie_embeddings_string", {"tie_word_embeddings": "false"}, ConfigError,
     "tie_word_embeddings must be true or false"),
]


def _config_row(changes):
    def build(tmp_path, tiny):
        f = copy_folder(tiny, tmp_path / "m")
        edit_config(f, **changes)
        return load(f)

    return build


for _name, _changes, _exc, _match in CONFIG_ROWS:
    CASES[_name] = (_config_row(_changes), _exc, _match)


@case(CheckpointError, "only PyTorch pickle checkpoints")
def folder_pickle_only(tmp_path, tiny):
    f = copy_folder(tiny, tmp_path / "m")
    os.rename(os.path.join(f, "model.safetensors"), os.path.join(f, "pytorch_model.bin"))
    return load(f)


def sharded_copy(tmp_path, tiny, weight_map_edit):
    f = copy_folder(tiny, tmp_path / "m")
    st = os.path.join(f, "model.safetensors")
    names = list(SafetensorsFile(st).keys())
    os.rename(st, os.path.join(f, "model-00001-of-00001.safetensors"))
    wm = {n: "model-00001-of-00001.safetensors" for n in names}
    weight_map_edit(wm, names)
    json.dump({"metadata": {}, "weight_map": wm}, open(os.path.join(f, "model.safetensors.index.json"), "w"))
    return f


@case(CheckpointError, "contains '..'")
def index_path_traversal(tmp_path, tiny):
    return load(sharded_copy(tmp_path, tiny, lambda wm, n: wm.__setitem__(n[0], "../evil.safetensors")))


@case(CheckpointError, "is an absolute path")
def index_absolute_path(tmp_path, tiny):
    return load(sharded_copy(tmp_path, tiny, lambda wm, n: wm.__setitem__(n[0], "/etc/passwd")))


@case(CheckpointError, "shard 'model-00002-of-00002.safetensors' is missing")
def index_missing_shard(tmp_path, tiny):
    return load(sharded_copy(tmp_path, tiny, lambda wm, n: wm.__setitem__(n[0], "model-00002-of-00002.safetensors")))


@case(CheckpointError, "weight_map")
def index_non_string_shard(tmp_path, tiny):
    return load(sharded_copy(tmp_path, tiny, lambda wm, n: wm.__setitem__(n[0], 7)))


@case(ValueError, "missing tensor")
def checkpoint_missing_tensor(tmp_path, tiny):
    f = copy_folder(tiny, tmp_path / "m")
    st = SafetensorsFile(os.path.join(f, "model.safetensors"))
    t = {k: np.array(st.get(k)) for k in st.keys() if "layers.1.mlp.up_proj" not in k}
    st.close()
    save_file(t, os.path.join(f, "model.safetensors"))
    m = AutoAWQForCausalLM.from_pretrained(f)
    return lambda: m.quantize(None, quant_config={"q_group_size": 32}, rtn=True)


# ------------------------------------------------------------------ quantization arguments and data
def quant(folder, **kw):
    m = AutoAWQForCausalLM.from_pretrained(folder)
    qc = kw.pop("quant_config", {"q_group_size": 32})
    kw.setdefault("calib_data", calib_texts())
    kw.setdefault("max_calib_seq_len", 64)
    return lambda: m.quantize(CharTokenizer(), quant_config=qc, **kw)


@case(ValueError, "does not divide in_features")
def quant_group_size_not_dividing(tmp_path, tiny):
    return quant(tiny, quant_config={"q_group_size": 48})


@case(ValueError, "w_bit")
def quant_bad_bits(tmp_path, tiny):
    return quant(tiny, quant_config={"w_bit": 5, "q_group_size": 32})


@case(ValueError, "q_group_size")
def quant_negative_group(tmp_path, tiny):
    return quant(tiny, quant_config={"q_group_size": -7})


@case(CalibrationError, r"calibration data is empty \(an empty list was given\)")
def quant_empty_calibration(tmp_path, tiny):
    return quant(tiny, calib_data=[])


@case(CalibrationError, "calibration data is empty: no non-empty text")
def quant_calibration_of_blank_texts(tmp_path, tiny):
    return quant(tiny, calib_data=["", "   "])


@case(ValueError, "outside the vocabulary")
def quant_calibration_ids_out_of_vocab(tmp_path, tiny):
    return quant(tiny, calib_data=[[1, 2, 3, 100000] * 8] * 4)


def poisoned(tmp_path, tiny, value):
    f = copy_folder(tiny, tmp_path / "m")

    def poison(w):
        w[3, 5] = value
        return w

    rewrite_tensor(f, "model.layers.1.self_attn.o_proj.weight", poison)
    return f


@case(FloatingPointError, r"model\.layers\.1\.self_attn\.o_proj\.weight has 1 NaN/Inf")
def quant_nan_weight(tmp_path, tiny):
    return quant(poisoned(tmp_path, tiny, np.nan))


@case(FloatingPointError, r"model\.layers\.1\.self_attn\.o_proj\.weight has 1 NaN/Inf")
def quant_inf_weight(tmp_path, tiny):
    return quant(poisoned(tmp_path, tiny, np.inf))


def quantized_copy(tmp_path, tiny):
    out = str(tmp_path / "q")
    m = AutoAWQForCausalLM.from_pretrained(tiny)
    m.quantize(None, quant_config={"q_group_size": 32}, rtn=True)
    m.save_quantized(out)
    return out


def rewrite_tensor(folder, name, fn):
    p = os.path.join(folder, "model.safetensors")
    st = SafetensorsFile(p)
    t = {k: np.array(st.get(k)) for k in st.keys()}
    st.close()
    t[name] = fn(t[name])
    save_file(t, p)


@case(ValueError, r"qweight: shape")
def awq_qweight_wrong_shape(tmp_path, tiny):
    q = quantized_copy(tmp_path, tiny)
    rewrite_tensor(q, "model.layers.0.mlp.up_proj.qweight", lambda a: a[:, :-1].copy())
    return lambda: AutoAWQForCausalLM.from_quantized(q)


@case(ValueError, "scales: unexpected dtype")
def awq_scales_integer_dtype(tmp_path, tiny):
    q = quantized_copy(tmp_path, tiny)
    rewrite_tensor(q, "model.layers.0.mlp.up_proj.scales", lambda a: a.astype(np.int32))
    return lambda: AutoAWQForCausalLM.from_quantized(q)


@case(ValueError, "qzeros missing")
def awq_qzeros_missing(tmp_path, tiny):
    q = quantized_copy(tmp_path, tiny)
    p = os.path.join(q, "model.safetensors")
    st = SafetensorsFile(p)
    t = {k: np.array(st.get(k)) for k in st.keys() if k != "model.layers.0.mlp.up_proj.qzeros"}
    st.close()
    save_file(t, p)
    return lambda: AutoAWQForCausalLM.from_quantized(q)


@case(ValueError, "5-bit AWQ GEMM checkpoints are not supported")
def awq_quant_config_bad_bits(tmp_path, tiny):
    q = quantized_copy(tmp_path, tiny)
    edit_config(q, quantization_config={"quant_method": "awq", "bits": 5, "group_size": 32, "zero_point": True,
                                        "version": "gemm"})
    return lambda: AutoAWQForCausalLM.from_quantized(q)


@case((ValueError, ConfigError), "group_size")
def awq_quant_config_group_size_string(tmp_path, tiny):
    q = quantized_copy(tmp_path, tiny)
    edit_config(q, quantization_config={"quant_method": "awq", "bits": 4, "group_size": "32", "zero_point": True,
                                        "version": "gemm"})
    return lambda: AutoAWQForCausalLM.from_quantized(q)


@case(ValueError, "w_bit must be one of the integers")
def quant_float_bits(tmp_path, tiny):
    return quant(tiny, quant_config={"w_bit": 4.0, "q_group_size": 32})


@case(ValueError, "zero_point must be true or false")
def quant_zero_point_string(tmp_path, tiny):
    return quant(tiny, quant_config={"zero_point": "false", "q_group_size": 32})


@case(ValueError, "modules_to_not_convert must be a list")
def quant_modules_not_a_list(tmp_path, tiny):
    return quant(tiny, quant_config={"q_group_size": 32, "modules_to_not_convert": "lm_head"})


# ------------------------------------------------------------------ runtime inputs
def fp_model(tiny):
    return AutoAWQForCausalLM.from_pretrained(tiny)


@case(ValueError, "token id 5000 is outside the vocabulary")
def run_token_out_of_vocab(tmp_path, tiny):
    m = fp_model(tiny)
    return lambda: m.forward(np.array([[1, 2, 5000]]))


@case(TypeError, "must hold integers")
def run_float_token_ids(tmp_path, tiny):
    m = fp_model(tiny)
    return lambda: m.forward(np.array([[1.5, 2.0]]))


@case(ValueError, "max_new_tokens must be >= 0")
def run_negative_max_new_tokens(tmp_path, tiny):
    m = fp_model(tiny)
    return lambda: m.generate([1, 2, 3], max_new_tokens=-1)


@case(ValueError, "exceeds max_seq_len")
def run_past_max_seq_len(tmp_path, tiny):
    m = fp_model(tiny)
    return lambda: m.generate([1, 2, 3], max_new_tokens=10 ** 6)


@case(ValueError, r"input_ids must be \[T\] or \[B, T\]")
def run_empty_prompt(tmp_path, tiny):
    m = fp_model(tiny)
    return lambda: m.forward(np.zeros((1, 0), np.int64))


# ------------------------------------------------------------------ interrupted save
class _Boom(RuntimeError):
    pass


@case(_Boom, "disk gone")
def save_interrupted_midway(tmp_path, tiny):
    import awq.io.checkpoint as ck_mod

    out = str(tmp_path / "out")
    real = ck_mod.save_file
    calls = {"n": 0}

    def failing(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Boom("disk gone")
        return real(tensors, path, *a, **k)

    m = AutoAWQForCausalLM.from_pretrained(tiny)
    m.quantize(None, quant_config={"q_group_size": 32}, rtn=True)

    def run():
        mp = pytest.MonkeyPatch()
        mp.setattr(ck_mod, "save_file", failing)
        try:
            m.save_quantized(out, shard_size="20KB")  # several shards: the second one fails
        finally:
            mp.undo()

    return run


def test_catalog_has_at_least_40_inputs():
    assert len(CASES) >= 40, len(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, tiny_folder):
    fn, exc, match = CASES[name]
    import inspect

    nargs = len(inspect.signature(fn).parameters)
    trigger = fn(tmp_path) if nargs == 1 else fn(tmp_path, tiny_folder)
    with pytest.raises(exc, match=match) as info:
        trigger()
    assert str(info.value) or exc is not ValueError
    if name == "save_interrupted_midway":  # nothing half-written where the checkpoint should be
        assert not os.path.exists(tmp_path / "out")
        assert not [p for p in os.listdir(tmp_path) if p != "out" and "out" in p]
