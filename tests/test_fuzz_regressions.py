"""Regression tests for the bugs the fuzzers found (fuzz/, tests/test_fuzz_parsers.py), one test
per bug, each reproducing the crashing input through the public Python surface.

C core (libFuzzer, fuzz/regressions/<target>/ keeps the raw inputs):
  - fuzz_quant: finite weights whose group range is within a step of FLT_MAX quantized to a grid
    whose ends overflow fp32, so pseudo_quantize returned -Inf / NaN from finite weights (and
    quantize_codes an Inf scale); now a FloatingPointError naming the group.
Python parsers (hypothesis):
  - a JSON integer past Python's 4300-digit limit escaped the safetensors reader and read_json as a
    plain ValueError naming no file;
  - an empty tensor with more dimensions than numpy allows (64) or huge extents passed the header
    check and failed in get() with numpy's ValueError;
  - config.json: partial_rotary_factor > 1 gave rotary_dim > head_dim; a float key given as a huge
    JSON integer raised OverflowError; and (checked since, by the same property) rope scaling that
    overflows gave Inf / NaN frequencies.
"""
import json
import struct

import numpy as np
import pytest

import awq._awq_C as C
from awq.io.checkpoint import CheckpointError, read_json
from awq.io.safetensors import MAX_NDIM, SafetensorsError, SafetensorsFile
from awq.models.config import ConfigError, ModelConfig

FLT_MAX = np.finfo(np.float32).max
HUGE_INT = "1" + "0" * 5000

# ---------------------------------------------------------------- C core


@pytest.mark.parametrize("w_bit,zero_point,row", [
    (8, False, [-FLT_MAX, 1.0, 2.0, 3.0]),  # fuzz_quant crasher: -127 * (FLT_MAX / 127) -> -Inf
    (4, True, [-3e38, 3e38, 0.0, 1.0]),     # max - min overflows: s = Inf, (q - z) * s = NaN
])
def test_quantize_group_near_flt_max_is_refused(w_bit, zero_point, row):
    w = np.array([[0.5, -0.25, 1.0, 2.0], row], dtype=np.float32)
    x = np.ones((3, 4), dtype=np.float32)
    calls = {
        "pseudo_quantize": lambda: C.pseudo_quantize(w, 4, w_bit, zero_point),
        "quantize_codes": lambda: C.quantize_codes(w, 4, w_bit, zero_point),
        "clip_search": lambda: C.clip_search(w, x, 4, w_bit, zero_point),
    }
    for name, call in calls.items():
        with pytest.raises(FloatingPointError, match=rf"{name}: w row 1, group 0 .*overflows float32"):
            call()


def test_quantize_large_finite_weights_still_work():
    """The check refuses only grids that overflow: 1e38 quantizes to finite values."""
    w = np.array([[-1e38, 1e38, 0.0, 5e37]], dtype=np.float32)
    for zp in (True, False):
        out = C.pseudo_quantize(w, 4, 4, zp)
        assert np.all(np.isfinite(out))
        _, scales, _ = C.quantize_codes(w, 4, 4, zp)
        assert np.all(np.isfinite(scales))


# ---------------------------------------------------------------- safetensors reader


def write_raw(path, header_text: str, data: bytes = b""):
    blob = header_text.encode("utf-8")
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob + data)
    return str(path)


def test_safetensors_huge_json_integer_is_a_format_error(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", '{"__metadata__": ' + HUGE_INT + "}")
    with pytest.raises(SafetensorsError, match="not valid JSON") as info:
        SafetensorsFile(p)
    assert p in str(info.value)


@pytest.mark.parametrize("shape,match", [
    ([1] * (MAX_NDIM + 1), f"{MAX_NDIM + 1} dimensions"),
    ([0] * 70, "70 dimensions"),
    ([0, 2**62, 2**62], "too large"),
    ([0, 2**70], "too large"),
])
def test_safetensors_empty_tensor_shape_beyond_numpy(tmp_path, shape, match):
    nbytes = 2 if 0 not in shape else 0
    header = {"t": {"dtype": "U16", "shape": shape, "data_offsets": [0, nbytes]}}
    p = write_raw(tmp_path / "f.safetensors", json.dumps(header), b"\0" * nbytes)
    with pytest.raises(SafetensorsError, match=match):
        SafetensorsFile(p)


def test_safetensors_largest_accepted_empty_shape_reads(tmp_path):
    header = {"t": {"dtype": "U8", "shape": [0, 2**40, 2**20], "data_offsets": [0, 0]},
              "u": {"dtype": "U8", "shape": [1] * MAX_NDIM, "data_offsets": [0, 1]}}
    p = write_raw(tmp_path / "f.safetensors", json.dumps(header), b"\x07")
    with SafetensorsFile(p) as f:
        assert f.get("t").shape == (0, 2**40, 2**20)
        assert f.get("u").reshape(-1).tolist() == [7]


# ---------------------------------------------------------------- JSON files and config.json


def test_read_json_huge_integer_is_a_checkpoint_error(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"hidden_size": ' + HUGE_INT + "}")
    with pytest.raises(CheckpointError, match="model config .*config.json: invalid JSON"):
        read_json(str(p), "model config")


BASE = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}


@pytest.mark.parametrize("extra,match", [
    ({"partial_rotary_factor": 2}, "partial_rotary_factor must be in"),
    ({"partial_rotary_factor": 0.01}, "leaves no rotary dimension"),
    ({"rms_norm_eps": 10**400}, "'rms_norm_eps' must be a finite number"),
    ({"partial_rotary_factor": 10**309}, "'partial_rotary_factor' must be a finite number"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 1e-320}}, "non-finite RoPE frequencies"),
])
def test_model_config_rejects(extra, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig.from_dict({**BASE, **extra})


def test_model_config_partial_rotary_in_range():
    mc = ModelConfig.from_dict({**BASE, "partial_rotary_factor": 0.5})
    assert (mc.head_dim, mc.rotary_dim) == (16, 8)
    assert mc.inv_freq().shape == (4,)
