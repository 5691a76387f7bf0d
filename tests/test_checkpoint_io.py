"""awq.io.checkpoint: sharded write/read, index validation, pickle refusal, parse_size,
read_json errors, atomic_folder and the writability check."""
import json
import os

import numpy as np
import pytest

from awq.io.checkpoint import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointError,
    atomic_folder,
    check_writable,
    open_checkpoint,
    parse_size,
    read_json,
    write_checkpoint,
)
from awq.io.safetensors import BF16, save_file


def make_tensors():
    rng = np.random.default_rng(0)
    # 400 + 400 + 200 + 1200 + 36 + 8 bytes, in this insertion order.
    return {
        "model.layers.0.q.weight": rng.standard_normal((10, 10)).astype(np.float32),
        "model.layers.0.k.weight": rng.standard_normal((10, 20)).astype(np.float16),
        "model.layers.0.qweight": rng.integers(-2**31, 2**31 - 1, (5, 10)).astype(np.int32),
        "model.embed.weight": rng.standard_normal((30, 10)).astype(np.float32),
        "model.norm.weight": BF16.from_float(rng.standard_normal(18)),
        "scalar": np.float64(2.5),
    }


def write_sharded(folder, shard_size=900):
    os.makedirs(folder, exist_ok=True)
    return write_checkpoint(make_tensors(), folder, shard_size=shard_size)


def load_index(folder):
    with open(os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)) as fh:
        return json.load(fh)


def save_index(folder, index):
    with open(os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME), "w") as fh:
        json.dump(index, fh)


# ---------------------------------------------------------------------------------------------
# write / read round trips
# ---------------------------------------------------------------------------------------------


def test_sharded_round_trip(tmp_path):
    folder = str(tmp_path / "m")
    written = write_sharded(folder, shard_size=900)
    # Greedy in insertion order: [400+400] [200] [1200 alone: larger than the limit] [36+8].
    assert written == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)] + [
        SAFE_WEIGHTS_INDEX_NAME]
    assert not os.path.exists(os.path.join(folder, SAFE_WEIGHTS_NAME))
    index = load_index(folder)
    tensors = make_tensors()
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in tensors.values())
    assert list(index["weight_map"]) == sorted(tensors)
    assert index["weight_map"]["model.embed.weight"] == "model-00003-of-00004.safetensors"
    assert index["weight_map"]["scalar"] == "model-00004-of-00004.safetensors"

    with open_checkpoint(folder) as ckpt:
        assert ckpt.sharded and len(ckpt.files) == 4
        assert sorted(ckpt.keys()) == sorted(tensors) and len(ckpt) == len(tensors)
        assert "scalar" in ckpt and "nope" not in ckpt
        for name, ref in tensors.items():
            if isinstance(ref, BF16):
                assert ckpt.dtype(name) == "BF16"
                np.testing.assert_array_equal(ckpt.get(name), ref.bits)
            else:
                np.testing.assert_array_equal(ckpt.get(name), ref)
                assert ckpt.shape(name) == np.shape(ref)
        f32 = ckpt.get_float32("model.layers.0.k.weight")
        assert f32.dtype == np.float32
        np.testing.assert_array_equal(f32, tensors["model.layers.0.k.weight"].astype(np.float32))
        with pytest.raises(KeyError, match="'nope' not found in checkpoint"):
            ckpt.get("nope")


def test_single_file_when_it_fits(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    assert write_checkpoint(make_tensors(), folder, shard_size="1MB",
                            metadata={"format": "pt", "by": "awq"}) == [SAFE_WEIGHTS_NAME]
    assert sorted(os.listdir(folder)) == [SAFE_WEIGHTS_NAME]
    with open_checkpoint(folder) as ckpt:
        assert not ckpt.sharded
        assert ckpt.keys()[0] == "scalar"  # file order: 8-byte items first
        np.testing.assert_array_equal(ckpt.get("model.embed.weight"),
                                      make_tensors()["model.embed.weight"])


def test_single_oversized_tensor_is_one_file(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    assert write_checkpoint({"big": np.zeros(100, np.float32)}, folder, shard_size=10) == [
        SAFE_WEIGHTS_NAME]


def test_write_refuses_folder_with_weights(tmp_path):
    folder = str(tmp_path / "m")
    write_sharded(folder)
    with pytest.raises(CheckpointError, match="already holds weights"):
        write_checkpoint(make_tensors(), folder)
    with pytest.raises(FileNotFoundError, match="create it first"):
        write_checkpoint(make_tensors(), tmp_path / "missing")
    with pytest.raises(ValueError, match="positive"):
        write_checkpoint({}, tmp_path, shard_size=0)


def test_symlinked_shards_like_the_hub_cache(tmp_path):
    # Hub cache snapshots are symlinks into ../../blobs: a lexical name check must accept them.
    src = str(tmp_path / "src")
    write_sharded(src)
    blobs = tmp_path / "blobs"
    snap = tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for name in os.listdir(src):
        os.rename(os.path.join(src, name), blobs / name)
        os.symlink(os.path.join("..", "..", "blobs", name), snap / name)
    with open_checkpoint(snap) as ckpt:
        assert len(ckpt) == len(make_tensors())


# ---------------------------------------------------------------------------------------------
# index validation
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def sharded(tmp_path):
    folder = str(tmp_path / "m")
    write_sharded(folder)
    return folder


@pytest.mark.parametrize("bad_name, rule", [
    ("../x.safetensors", "contains '..'"),
    ("sub/../../x.safetensors", "contains '..'"),
    ("/etc/x.safetensors", "absolute path"),
    ("C:/x.safetensors", "absolute path"),
    ("..\\x.safetensors", "backslash"),
    ("", "is empty"),
])
def test_index_rejects_escaping_shard_names(sharded, bad_name, rule):
    index = load_index(sharded)
    index["weight_map"]["scalar"] = bad_name
    save_index(sharded, index)
    with pytest.raises(CheckpointError, match=rule) as info:
        open_checkpoint(sharded)
    assert SAFE_WEIGHTS_INDEX_NAME in str(info.value)


def test_index_missing_shard(sharded):
    os.remove(os.path.join(sharded, "model-00002-of-00004.safetensors"))
    with pytest.raises(CheckpointError, match="shard 'model-00002-of-00004.safetensors' is miss"):
        open_checkpoint(sharded)


def test_index_tensor_missing_from_shard(sharded):
    index = load_index(sharded)
    index["weight_map"]["ghost"] = "model-00001-of-00004.safetensors"
    save_index(sharded, index)
    with pytest.raises(CheckpointError, match="'ghost' is listed in shard .* does not contain it"):
        open_checkpoint(sharded)


def test_index_tensor_not_listed(sharded):
    index = load_index(sharded)
    del index["weight_map"]["model.layers.0.k.weight"]  # its shard still has q.weight listed
    save_index(sharded, index)
    with pytest.raises(CheckpointError, match="'model.layers.0.k.weight' .* not listed"):
        open_checkpoint(sharded)


def test_index_shard_with_no_listed_tensor(sharded):
    index = load_index(sharded)
    del index["weight_map"]["model.layers.0.qweight"]  # the only tensor of shard 2
    save_index(sharded, index)
    with pytest.raises(CheckpointError, match="'model-00002-of-00004.safetensors' is in the fo"):
        open_checkpoint(sharded)


def test_index_tensor_in_two_shards(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"a": np.zeros(2, np.float32)}, folder / "s1.safetensors")
    save_file({"a": np.ones(2, np.float32), "b": np.ones(1, np.int8)}, folder / "s2.safetensors")
    save_index(folder, {"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})
    with pytest.raises(CheckpointError, match="'a' is in shard 's2.safetensors' and in 's1"):
        open_checkpoint(folder)


def test_index_structure_errors(sharded):
    path = os.path.join(sharded, SAFE_WEIGHTS_INDEX_NAME)
    save_index(sharded, {"metadata": {}})
    with pytest.raises(CheckpointError, match="'weight_map' must be an object"):
        open_checkpoint(sharded)
    save_index(sharded, {"weight_map": {"a": 3}})
    with pytest.raises(CheckpointError, match="must be a file name"):
        open_checkpoint(sharded)
    with open(path, "w") as fh:
        fh.write('{"weight_map": {"a": "x", "a": "y"}}')
    with pytest.raises(CheckpointError, match="duplicate key 'a'"):
        open_checkpoint(sharded)


def test_missing_folder_and_pickle_only_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_checkpoint(tmp_path / "nowhere")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*pickle files are not loaded"):
        open_checkpoint(tmp_path)
    os.remove(tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        open_checkpoint(tmp_path)


def test_nonstandard_file_name_needs_filename(tmp_path):
    save_file({"w": np.ones(3, np.float16)}, tmp_path / "awq_model.safetensors")
    with pytest.raises(CheckpointError, match="awq_model.safetensors.*filename="):
        open_checkpoint(tmp_path)
    with open_checkpoint(tmp_path, filename="awq_model.safetensors") as ckpt:
        assert ckpt.keys() == ["w"]
    with pytest.raises(CheckpointError, match="'..'"):
        open_checkpoint(tmp_path, filename="../awq_model.safetensors")


# ---------------------------------------------------------------------------------------------
# parse_size, read_json
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("5GB", 5 * 10**9), ("5gb", 5 * 10**9 // 8), ("10Gb", 10 * 10**9 // 8), ("200MB", 200 * 10**6),
    ("3KB", 3000), ("2GiB", 2 * 2**30), ("512MiB", 512 * 2**20), ("1KiB", 1024),
    ("100", 100), (" 7 MB ", 7 * 10**6), ("1.5GB", 1_500_000_000), ("64B", 64), (0, 0),
    (12345, 12345), (np.int64(9), 9),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "GB", "5 XB", "-5GB", "5GB5", "five", -1, 1.5, None, True])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_read_json_errors(tmp_path):
    p = tmp_path / "config.json"
    with pytest.raises(FileNotFoundError, match="config not found.*config.json"):
        read_json(p, "config")
    p.write_text('{\n  "a": 1,\n  "b": \n}')
    with pytest.raises(CheckpointError, match=r"config .*config.json: invalid JSON: .* line 4 col"):
        read_json(p, "config")
    p.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object, got list"):
        read_json(p, "config")
    p.write_text('{"a": ' + "[" * 65 + "]" * 65 + "}")
    with pytest.raises(CheckpointError, match="deeper than 64"):
        read_json(p, "config")
    p.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_json(p, "config")
    p.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(CheckpointError, match="not valid UTF-8"):
        read_json(p, "config")
    p.write_text('{"a": ' + "[" * 62 + "]" * 62 + ', "b": {"c": true}}')
    assert read_json(p, "config")["b"] == {"c": True}


# ---------------------------------------------------------------------------------------------
# atomic_folder, check_writable
# ---------------------------------------------------------------------------------------------


def test_atomic_folder_creates_and_replaces(tmp_path):
    target = tmp_path / "out" / "quant"  # parent "out" does not exist yet
    with atomic_folder(target) as tmp:
        assert os.path.basename(tmp).startswith(".quant.tmp-")
        assert os.path.dirname(tmp) == str(tmp_path / "out")
        write_checkpoint({"w": np.ones(2, np.float32)}, tmp)
        (open(os.path.join(tmp, "config.json"), "w")).write("{}")
    assert sorted(os.listdir(target)) == ["config.json", SAFE_WEIGHTS_NAME]
    with atomic_folder(target) as tmp:
        write_checkpoint({"v": np.zeros(3, np.int32)}, tmp)
    assert os.listdir(target) == [SAFE_WEIGHTS_NAME]
    assert os.listdir(tmp_path / "out") == ["quant"]  # no temp or backup folders left
    with open_checkpoint(target) as ckpt:
        assert ckpt.keys() == ["v"]


def test_atomic_folder_leaves_target_intact_when_body_raises(tmp_path):
    target = tmp_path / "quant"
    target.mkdir()
    (target / "config.json").write_text('{"old": true}')
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_folder(target) as tmp:
            (open(os.path.join(tmp, "config.json"), "w")).write('{"new": true}')
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["quant"]
    assert read_json(target / "config.json", "config") == {"old": True}


def test_atomic_folder_refuses_to_replace_a_non_model_folder(tmp_path):
    target = tmp_path / "home"
    (target / "docs").mkdir(parents=True)
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="subfolders"):
        with atomic_folder(target):
            pass
    os.rmdir(target / "docs")
    with pytest.raises(FileExistsError, match="does not look like a model folder"):
        check_writable(target)
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["home"]


def test_unwritable_parent_under_a_regular_file(tmp_path):
    # A path under a regular file can never be created, even by root.
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    target = blocker / "sub" / "quant"
    with pytest.raises(OSError, match="file.txt") as info:
        check_writable(target)
    assert str(target) in str(info.value)
    ran = []
    with pytest.raises(OSError):
        with atomic_folder(target):
            ran.append(1)
    assert not ran


def test_unwritable_parent_read_only_dir(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    os.chmod(parent, 0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes (covered by the file test)")
        with pytest.raises(PermissionError, match="not writable"):
            check_writable(parent / "quant")
    finally:
        os.chmod(parent, 0o755)
