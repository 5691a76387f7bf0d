"""Random-weight checkpoints (awq/utils/random_model.py) and the benchmark script built on them
(examples/benchmark.py), on the CPU with the "tiny" config.

The random quantized checkpoint must be indistinguishable in layout from what save_quantized writes
(same tensor names, shapes, dtypes and quantization_config), so the benchmark measures the path a
real checkpoint takes.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from awq.io.checkpoint import open_checkpoint, read_json
from awq.models.config import ModelConfig
from awq.utils import random_model

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BENCH = os.path.join(ROOT, "examples", "benchmark.py")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(quantized folder, fp16 folder) of the tiny config with random weights."""
    root = tmp_path_factory.mktemp("random")
    random_model.write_random_checkpoint(root / "awq", "tiny", quantized=True, group_size=128)
    random_model.write_random_checkpoint(root / "fp16", "tiny", quantized=False)
    return str(root / "awq"), str(root / "fp16")


def _layout(folder):
    """{tensor name: (shape, safetensors dtype)} of a checkpoint folder."""
    with open_checkpoint(folder) as ck:
        return {k: (tuple(ck.shape(k)), ck.dtype(k)) for k in ck.keys()}


def _unpack(words: np.ndarray) -> np.ndarray:
    """int32 [R, C/8] -> the 4-bit codes [R, C] (column order does not matter for statistics)."""
    u = words.view(np.uint32)
    return np.stack([(u >> (4 * i)) & 0xF for i in range(8)], axis=-1).reshape(u.shape[0], -1)


def test_quantized_checkpoint_matches_save_quantized(tiny, tmp_path):
    qdir, fdir = tiny
    # what our own quantizer writes for the same shapes (round-to-nearest: the layout is the same)
    model = AutoAWQForCausalLM.from_pretrained(fdir)
    model.quantize(None, quant_config={"w_bit": 4, "q_group_size": 128, "zero_point": True, "version": "GEMM"},
                   rtn=True)
    model.save_quantized(str(tmp_path / "saved"))
    saved_cfg = read_json(tmp_path / "saved" / "config.json", "config")
    ours_cfg = read_json(os.path.join(qdir, "config.json"), "config")
    assert ours_cfg["quantization_config"] == saved_cfg["quantization_config"]
    assert ours_cfg["torch_dtype"] == saved_cfg["torch_dtype"] == "float16"
    assert _layout(qdir) == _layout(tmp_path / "saved")


def test_quantized_tensors_have_gemm_shapes_and_realistic_values(tiny):
    qdir, _ = tiny
    cfg = random_model.get_config("tiny")
    D, F = cfg["hidden_size"], cfg["intermediate_size"]
    layout = _layout(qdir)
    with open_checkpoint(qdir) as ck:
        for i in range(cfg["num_hidden_layers"]):
            for lin, (N, K) in {"mlp.down_proj": (D, F), "mlp.up_proj": (F, D), "self_attn.k_proj": (128, D)}.items():
                base = f"model.layers.{i}.{lin}"
                assert layout[base + ".qweight"] == ((K, N // 8), "I32")
                assert layout[base + ".qzeros"] == ((K // 128, N // 8), "I32")
                assert layout[base + ".scales"] == ((K // 128, N), "F16")
                assert base + ".weight" not in layout
        # dequantized weights W[k, n] = (q - z) * s have the spread of trained 7B weights (~0.02)
        base = "model.layers.0.mlp.down_proj"
        q = _unpack(ck.get(base + ".qweight")).astype(np.float32)
        z = _unpack(ck.get(base + ".qzeros")).astype(np.float32)
        s = ck.get(base + ".scales").astype(np.float32)
        w = (q - np.repeat(z, 128, axis=0)) * np.repeat(s, 128, axis=0)
        assert set(np.unique(q)) == set(range(16))
        assert set(np.unique(z)) <= {7, 8}
        assert 0.015 < w.std() < 0.03 and abs(w.mean()) < 0.003
    assert layout["model.embed_tokens.weight"] == ((cfg["vocab_size"], D), "F16")
    assert layout["lm_head.weight"] == ((cfg["vocab_size"], D), "F16")


def test_random_checkpoints_load_and_generate(tiny):
    qdir, fdir = tiny
    ids = np.arange(3, 12)[None]
    for model in (AutoAWQForCausalLM.from_quantized(qdir), AutoAWQForCausalLM.from_pretrained(fdir)):
        logits = model.forward(ids)
        assert logits.shape == (1, 9, 1024) and np.isfinite(logits).all() and logits.std() > 0
        out = model.generate(ids, max_new_tokens=6, eos_token_id=[])
        assert out.shape == (1, 15) and (out[:, :9] == ids).all()
    assert not AutoAWQForCausalLM.from_pretrained(fdir).is_quantized


def test_same_seed_same_bytes(tmp_path):
    cfg = random_model.get_config("tiny", num_hidden_layers=1)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        random_model.write_random_checkpoint(tmp_path / name, cfg, seed=seed)
    read = lambda n: (tmp_path / n / "model.safetensors").read_bytes()  # noqa: E731
    assert read("a") == read("b") != read("c")


def test_get_config():
    for name in random_model.CONFIGS:
        ModelConfig.from_dict(random_model.get_config(name)).inv_freq()
    c = random_model.get_config("llama-3-8b", num_hidden_layers=2)
    assert c["num_hidden_layers"] == 2 and random_model.CONFIGS["llama-3-8b"]["num_hidden_layers"] == 32
    assert ModelConfig.from_dict(c).num_kv_heads == 8
    with pytest.raises(ValueError, match="unknown config 'llama-9000'.*llama-2-7b"):
        random_model.get_config("llama-9000")
    with pytest.raises(ValueError, match="group_size 96"):
        random_model.write_random_checkpoint("/nonexistent/never-written", "tiny", group_size=96)


def test_get_config_from_path(tiny):
    qdir, _ = tiny
    c = random_model.get_config(os.path.join(qdir, "config.json"), num_hidden_layers=1)
    assert "quantization_config" not in c and c["hidden_size"] == 256 and c["num_hidden_layers"] == 1
    assert random_model.get_config(qdir)["num_hidden_layers"] == 2


def _bench(args, tmp_path):
    env = dict(os.environ, AWQ_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, BENCH, *args], capture_output=True, text=True, env=env, timeout=120)


def test_benchmark_end_to_end(tmp_path):
    out = tmp_path / "rows.json"
    r = _bench(["--random-weights", "--config", "tiny", "--device", "cpu", "--rounds", "16,32:8,2048",
                "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    header = "| Batch Size | Prefill Length | Decode Length | Prefill tokens/s | Decode tokens/s | Memory (GB) |"
    assert text.count(header) == 2  # ours and the fp16 baseline
    assert "exceeds max_position_embeddings 2048" in text  # 2048 + 2048 new tokens: stopped cleanly
    assert "### ratio, ours / fp16 baseline" in text
    ratio_part = text.split("### ratio, ours / fp16 baseline")[1]
    ratio_lines = [line for line in ratio_part.splitlines() if line.startswith("| 1 | ")]
    assert [line.split(" | ")[1:3] for line in ratio_lines] == [["16", "16"], ["32", "8"]]
    assert all(float(line.split(" | ")[4]) > 0 for line in ratio_lines)  # decode ratio is a number
    assert "machine: CPU" in text and "awq GEMM w4 g128" in text
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert len(rows) == 4 and data["run"]["device"] == "cpu"
    for row in rows:
        assert row["Prefill tokens/s"] > 0 and row["Decode tokens/s"] > 0 and row["Memory (GB)"] > 0
    assert [r["model"] for r in rows].count("awq GEMM w4 g128") == 2
    # a second run reuses the cached checkpoints
    r = _bench(["--random-weights", "--config", "tiny", "--device", "cpu", "--rounds", "8", "--no-baseline"],
               tmp_path)
    assert r.returncode == 0, r.stderr
    assert "reusing" in r.stdout and "writing" not in r.stdout and "baseline skipped" in r.stdout


def test_benchmark_bad_config(tmp_path):
    r = _bench(["--random-weights", "--config", "nope", "--device", "cpu"], tmp_path)
    assert r.returncode == 2
    assert "unknown config 'nope'" in r.stderr and "tiny" in r.stderr
