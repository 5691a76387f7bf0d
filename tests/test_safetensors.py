"""awq.io.safetensors: one test per rejection rule (files built by hand with struct + json),
round trips over every dtype and odd shapes, interop with the `safetensors` package, bf16."""
import json
import os
import struct

import numpy as np
import pytest

from awq.io.safetensors import (
    BF16,
    SafetensorsError,
    SafetensorsFile,
    bf16_to_float32,
    float32_to_bf16,
    save_file,
)

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def write_raw(path, header, data=b"", n=None):
    """header: dict (dumped to JSON), str or bytes; n overrides the stored header length."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8")
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header) if n is None else n))
        fh.write(header)
        fh.write(data)
    return str(path)


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def rejects(path, match):
    with pytest.raises(SafetensorsError, match=match) as info:
        SafetensorsFile(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------
# rejection rules, one test each
# ---------------------------------------------------------------------------------------------


def test_reject_file_shorter_than_8_bytes(tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"\x01\x02\x03")
    rejects(p, "shorter than the 8-byte")


def test_reject_header_length_over_limit(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", "{}", n=100_000_001)
    rejects(p, "exceeds the limit")


def test_reject_header_length_past_end_of_file(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", "{}", n=1000)
    rejects(p, "past the end of the file")


def test_reject_header_not_utf8(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", b'{"\xff\xfe": 1}')
    rejects(p, "not valid UTF-8")


def test_reject_header_not_json(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", '{"a": ')
    rejects(p, "not valid JSON")


def test_reject_header_not_an_object(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", "[1, 2]")
    rejects(p, "not a JSON object")


def test_reject_header_garbage_after_object(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", "{}\x00\x00")
    rejects(p, "not valid JSON")


def test_reject_duplicate_tensor_names(tmp_path):
    e = json.dumps(entry(offsets=(0, 8)))
    p = write_raw(tmp_path / "f.safetensors", '{"w": %s, "w": %s}' % (e, e), b"\0" * 8)
    rejects(p, "duplicate key 'w'")


def test_reject_entry_not_an_object(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", {"w": [1, 2]})
    rejects(p, "'w': entry is not a JSON object")


@pytest.mark.parametrize("missing", ["dtype", "shape", "data_offsets"])
def test_reject_entry_missing_field(tmp_path, missing):
    e = entry()
    del e[missing]
    p = write_raw(tmp_path / "f.safetensors", {"w": e}, b"\0" * 8)
    rejects(p, f"has no '{missing}'")


def test_reject_dtype_not_a_string(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", {"w": entry(dtype=4)}, b"\0" * 8)
    rejects(p, "dtype must be a string")


@pytest.mark.parametrize("shape", [[-1], [2.0], [True], "2", [[2]]])
def test_reject_bad_shape(tmp_path, shape):
    e = entry()
    e["shape"] = shape
    p = write_raw(tmp_path / "f.safetensors", {"w": e}, b"\0" * 8)
    rejects(p, "shape must be a list of non-negative integers")


@pytest.mark.parametrize("offsets", [[0], [0, 8, 9], [0.0, 8], ["0", "8"], [-1, 7], 8])
def test_reject_bad_data_offsets(tmp_path, offsets):
    e = entry()
    e["data_offsets"] = offsets
    p = write_raw(tmp_path / "f.safetensors", {"w": e}, b"\0" * 8)
    rejects(p, "data_offsets must be")


def test_reject_unknown_dtype(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", {"w": entry(dtype="F128")}, b"\0" * 8)
    rejects(p, "unknown dtype 'F128'")


def test_reject_fp8_as_unsupported(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", {"w": entry("F8_E4M3", (2,), (0, 2))}, b"\0" * 2)
    rejects(p, "F8_E4M3 is not supported")


def test_reject_end_before_begin(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", {"w": entry("U8", (0,), (4, 2))}, b"\0" * 4)
    rejects(p, "end 2 < begin 4")


def test_reject_size_mismatch(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", {"w": entry("F32", (3,), (0, 8))}, b"\0" * 8)
    rejects(p, "span 8 bytes but shape")


def test_reject_offsets_past_data_section(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", {"w": entry("F32", (2,), (0, 8))}, b"\0" * 4)
    rejects(p, "run past the data section")


def test_reject_hole_between_tensors(tmp_path):
    h = {"a": entry("U8", (2,), (0, 2)), "b": entry("U8", (2,), (4, 6))}
    p = write_raw(tmp_path / "f.safetensors", h, b"\0" * 6)
    rejects(p, r"hole in the data section: bytes \[2, 4\)")


def test_reject_hole_at_start(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", {"a": entry("U8", (2,), (2, 4))}, b"\0" * 4)
    rejects(p, r"hole in the data section: bytes \[0, 2\)")


def test_reject_overlapping_tensors(tmp_path):
    h = {"a": entry("U8", (4,), (0, 4)), "b": entry("U8", (4,), (2, 6))}
    p = write_raw(tmp_path / "f.safetensors", h, b"\0" * 6)
    rejects(p, "overlaps the previous tensor")


def test_reject_trailing_bytes(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", {"a": entry("U8", (2,), (0, 2))}, b"\0" * 5)
    rejects(p, "3 trailing bytes")


@pytest.mark.parametrize("meta", [{"format": 1}, ["pt"], "pt", None, {"a": {"b": "c"}}])
def test_reject_metadata_not_str_to_str(tmp_path, meta):
    p = write_raw(tmp_path / "f.safetensors", {"__metadata__": meta})
    rejects(p, "__metadata__ must be a map of strings to strings")


def test_reject_leading_whitespace_in_header(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", '  {"__metadata__": {}}')
    rejects(p, "must begin with")


def test_reject_deeply_nested_header(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    p = write_raw(tmp_path / "f.safetensors", '{"__metadata__": ' + deep + "}")
    rejects(p, "nested too deeply")


@pytest.mark.parametrize("cut", ["0", "4", "7", "8", "12", "N-1", "N", "N+1", "end-1"])
def test_truncated_file_raises(tmp_path, cut):
    good = tmp_path / "good.safetensors"
    save_file({"a": np.arange(10, dtype=np.float32), "b": np.ones((3, 3), np.float16)}, good)
    blob = good.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    at = eval(cut.replace("N", str(8 + n)).replace("end", str(len(blob))))
    p = tmp_path / "cut.safetensors"
    p.write_bytes(blob[:at])
    rejects(p, ".")


# ---------------------------------------------------------------------------------------------
# acceptance of valid variants
# ---------------------------------------------------------------------------------------------


def test_accepts_space_padded_header_and_empty_file(tmp_path):
    p = write_raw(tmp_path / "f.safetensors", '{"__metadata__": {"k": "v"}}' + " " * 11)
    with SafetensorsFile(p) as f:
        assert f.keys() == [] and f.metadata == {"k": "v"}
    p2 = write_raw(tmp_path / "g.safetensors", "{}")
    with SafetensorsFile(p2) as f:
        assert f.keys() == [] and f.metadata == {}


def test_unaligned_offset_is_read_by_copy(tmp_path):
    # Another writer may put a F32 tensor at data offset 1; readers must not assume alignment.
    vals = np.array([1.5, -2.25], dtype="<f4")
    h = {"pad": entry("U8", (1,), (0, 1)), "x": entry("F32", (2,), (1, 9))}
    header = json.dumps(h).encode()
    header += b" " * (-len(header) % 8)
    p = write_raw(tmp_path / "f.safetensors", header, b"\x07" + vals.tobytes())
    with SafetensorsFile(p) as f:
        x = f.get("x")
        assert x.flags.aligned and not x.flags.writeable
        np.testing.assert_array_equal(x, vals)
        assert f.get("pad")[0] == 7


def test_keys_in_file_order_and_lookup_errors(tmp_path):
    h = {"z": entry("U8", (1,), (0, 1)), "a": entry("U8", (1,), (1, 2))}
    p = write_raw(tmp_path / "f.safetensors", h, b"\x01\x02")
    with SafetensorsFile(p) as f:
        assert f.keys() == ["z", "a"]
        with pytest.raises(KeyError, match="'nope' not found in .*f.safetensors"):
            f.get("nope")
        with pytest.raises(KeyError, match="nope"):
            f.shape("nope")
        with pytest.raises(TypeError, match="not a float type"):
            f.get_float32("z")


def test_views_are_zero_copy_and_survive_close(tmp_path):
    p = tmp_path / "f.safetensors"
    save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, p)
    f = SafetensorsFile(p)
    w = f.get("w")
    assert not w.flags.owndata and not w.flags.writeable and w.flags.aligned
    f.close()
    with pytest.raises(ValueError, match="closed"):
        f.get("w")
    assert w.sum() == 66  # the mapping lives as long as a view does


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------

ROUND_TRIP_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
                     np.uint64, np.uint32, np.uint16, np.uint8, np.bool_]
NAMES = {np.float64: "F64", np.float32: "F32", np.float16: "F16", np.int64: "I64",
         np.int32: "I32", np.int16: "I16", np.int8: "I8", np.uint64: "U64", np.uint32: "U32",
         np.uint16: "U16", np.uint8: "U8", np.bool_: "BOOL"}
SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (3, 5), (2, 3, 5)]


@pytest.mark.parametrize("dt", ROUND_TRIP_DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_all_dtypes_and_shapes(tmp_path, dt):
    rng = np.random.default_rng(0)
    tensors = {}
    for i, shape in enumerate(SHAPES):
        tensors[f"t{i}"] = (rng.standard_normal(shape) * 50).astype(dt)
    p = tmp_path / "rt.safetensors"
    save_file(tensors, p, metadata={"format": "np", "note": "ünï"})
    with SafetensorsFile(p) as f:
        assert sorted(f.keys()) == sorted(tensors)
        assert f.metadata == {"format": "np", "note": "ünï"}
        for name, ref in tensors.items():
            assert f.dtype(name) == NAMES[dt]
            assert f.shape(name) == ref.shape
            got = f.get(name)
            assert got.shape == ref.shape and got.dtype == ref.dtype
            np.testing.assert_array_equal(got, ref)


def test_writer_layout_is_aligned_and_padded(tmp_path):
    tensors = {"b": np.ones(3, np.int8), "a": np.ones(3, np.float16), "c": np.ones(1, np.float64),
               "d": np.ones(5, np.float32), "e": np.ones((), np.int64)}
    p = tmp_path / "al.safetensors"
    save_file(tensors, p)
    blob = p.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    assert n % 8 == 0
    header = json.loads(blob[8:8 + n])
    for name, info in header.items():
        if name != "__metadata__":
            assert info["data_offsets"][0] % np.dtype(tensors[name].dtype).itemsize == 0, name
    assert header["__metadata__"] == {"format": "pt"}


def test_writer_handles_noncontiguous_and_big_endian(tmp_path):
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    tensors = {"t": base.T, "s": base[::2, 1::3], "f": np.asfortranarray(base),
               "be": np.arange(5, dtype=">i4"), "neg": base[::-1]}
    p = tmp_path / "nc.safetensors"
    save_file(tensors, p)
    with SafetensorsFile(p) as f:
        for name, ref in tensors.items():
            np.testing.assert_array_equal(f.get(name), ref)
        assert f.dtype("be") == "I32"


def test_writer_rejects_unsupported_dtype_and_leaves_no_file(tmp_path):
    p = tmp_path / "bad.safetensors"
    with pytest.raises(TypeError, match="'c'.*complex"):
        save_file({"c": np.zeros(2, np.complex64)}, p)
    with pytest.raises(TypeError, match="numpy array"):
        save_file({"l": [1, 2]}, p)
    with pytest.raises(ValueError, match="reserved"):
        save_file({"__metadata__": np.zeros(1)}, p)
    with pytest.raises(TypeError, match="metadata"):
        save_file({}, p, metadata={"a": 1})
    assert not p.exists()


# ---------------------------------------------------------------------------------------------
# bf16
# ---------------------------------------------------------------------------------------------


def test_bf16_to_float32_hand_values():
    # 0x3FC0: sign 0, exp 127, mantissa .1b -> 1.5; 0xC049: -(1 + 0x49/128) * 2 = -3.140625;
    # 0x0001: smallest subnormal 2**-133; 0x7F80: +inf.
    bits = np.array([0x3FC0, 0xC049, 0x0001, 0x7F80, 0x0000], dtype=np.uint16)
    got = bf16_to_float32(bits)
    assert got.dtype == np.float32
    assert got.tolist() == [1.5, -3.140625, 2.0**-133, np.inf, 0.0]


def test_float32_to_bf16_rounds_to_nearest_even():
    # 1 + 2**-8 is halfway between 0x3F80 and 0x3F81 -> even 0x3F80;
    # 1 + 3*2**-8 is halfway between 0x3F81 and 0x3F82 -> even 0x3F82; 1 + 2**-8 + 2**-20 rounds up.
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, np.nan, -np.inf], dtype=np.float32)
    got = float32_to_bf16(x)
    assert got[:3].tolist() == [0x3F80, 0x3F82, 0x3F81]
    assert np.isnan(bf16_to_float32(got[3:4]))[0]
    assert got[4] == 0xFF80


def test_bf16_file_round_trip(tmp_path):
    x = np.array([[1.5, -3.140625], [0.0, 65280.0]], dtype=np.float32)  # all exact in bf16
    p = tmp_path / "bf.safetensors"
    save_file({"x": BF16.from_float(x), "h": x.astype(np.float16)}, p)
    with SafetensorsFile(p) as f:
        assert f.dtype("x") == "BF16"
        assert f.get("x").dtype == np.uint16
        assert f.get("x")[0, 0] == 0x3FC0
        np.testing.assert_array_equal(f.get_float32("x"), x)
        np.testing.assert_array_equal(f.get_float32("h"), x)
        assert f.get_float32("h").flags.writeable


# ---------------------------------------------------------------------------------------------
# interop with the reference `safetensors` package (an independent writer and reader)
# ---------------------------------------------------------------------------------------------


def _interop_tensors():
    rng = np.random.default_rng(1)
    return {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "f64": rng.standard_normal((2, 1, 3)),
        "i32": rng.integers(-100, 100, (4, 2)).astype(np.int32),
        "u8": rng.integers(0, 255, (5,)).astype(np.uint8),
        "i64": np.array(7, dtype=np.int64),
        "empty": np.zeros((0, 3), np.float32),
        "b": np.array([True, False, True]),
    }


def test_read_file_written_by_safetensors_package(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    tensors = _interop_tensors()
    p = tmp_path / "theirs.safetensors"
    st_numpy.save_file(tensors, str(p), metadata={"format": "np"})
    with SafetensorsFile(p) as f:
        assert f.metadata == {"format": "np"}
        assert sorted(f.keys()) == sorted(tensors)
        for name, ref in tensors.items():
            np.testing.assert_array_equal(f.get(name), ref)
            assert f.get(name).dtype == ref.dtype


def test_safetensors_package_reads_our_file(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    safe_open = pytest.importorskip("safetensors").safe_open
    tensors = _interop_tensors()
    p = tmp_path / "ours.safetensors"
    save_file(tensors, p)
    back = st_numpy.load_file(str(p))
    assert sorted(back) == sorted(tensors)
    for name, ref in tensors.items():
        np.testing.assert_array_equal(back[name], ref)
        assert back[name].dtype == ref.dtype
    with safe_open(str(p), framework="np") as f:
        assert f.metadata() == {"format": "pt"}


def test_save_over_the_file_being_read(tmp_path):
    # Re-saving in place: the inputs are mmap views of the very file being replaced.
    p = tmp_path / "w.safetensors"
    ref = np.arange(1000, dtype=np.float32)
    save_file({"w": ref}, p)
    with SafetensorsFile(p) as f:
        save_file({"w": f.get("w"), "extra": np.ones(2, np.int8)}, p)
    with SafetensorsFile(p) as f:
        np.testing.assert_array_equal(f.get("w"), ref)
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]
