"""Every architecture AutoAWQ supports, checked against a transformers oracle (torch-free).

tests/fixtures/archs/<model_type>/ holds a tiny random fp16 checkpoint with the Hub's tensor names
and config keys, and the logits transformers computed from exactly those weights in float64
(tests/fixtures/make_arch_fixtures.py wrote them; see tests/fixtures/archs/README.md).
awq must load each folder with from_pretrained and reproduce the logits.

Every listed model type must pass: there is no expected-failure path.
"""
import json
from pathlib import Path

import numpy as np
import pytest

ARCHS = Path(__file__).resolve().parent / "fixtures" / "archs"

# Every model type AutoAWQ's AWQ_CAUSAL_LM_MODEL_MAP supports (plus the newer ones awq targets).
EXPECTED_TYPES = [
    "mpt", "llama", "opt", "RefinedWeb", "RefinedWebModel", "falcon", "exaone", "bloom", "gptj",
    "gpt_bigcode", "mistral", "mixtral", "gpt_neox", "aquila", "Yi", "qwen", "baichuan", "llava",
    "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "stablelm", "starcoder2", "llava_next", "phi3",
    "phi3_v", "cohere", "deepseek_v2", "deepseek_v3", "minicpm", "internlm2", "minicpm3", "qwen2_vl",
    "qwen2_5_vl", "qwen2_5_omni", "gemma3", "gemma3_text", "glm4",
]

MAX_FOLDER_BYTES = 400 * 1024


def _folders():
    if not ARCHS.is_dir():
        return []
    return sorted(p.name for p in ARCHS.iterdir() if p.is_dir())


def test_every_model_type_has_a_fixture():
    have = set(_folders())
    missing = [t for t in EXPECTED_TYPES if t not in have]
    assert not missing, f"fixtures missing for {missing}: run tests/fixtures/make_arch_fixtures.py"


@pytest.mark.parametrize("name", _folders())
def test_fixture_folder_is_complete_and_small(name):
    cfg, meta = check_folder(ARCHS / name, MAX_FOLDER_BYTES)
    assert cfg["model_type"] == name == meta["model_type"]


def check_folder(d: Path, max_bytes: int):
    """A fixture folder has its four files, fp16 weights, and stays under max_bytes: (config, meta)."""
    for f in ("config.json", "model.safetensors", "reference.npz", "meta.json"):
        assert (d / f).is_file(), f"{d.name}: {f} missing"
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    assert size < max_bytes, f"{d.name}: {size} bytes >= {max_bytes}"
    cfg = json.loads((d / "config.json").read_text())
    assert cfg.get("torch_dtype") == "float16"
    return cfg, json.loads((d / "meta.json").read_text())


@pytest.mark.parametrize("name", _folders())
def test_logits_match_transformers(name):
    check_logits(ARCHS / name)


def check_logits(d: Path):
    """awq's fp32 forward of fixture folder d against its transformers logits."""
    from awq import AutoAWQForCausalLM

    name = d.name
    ref = np.load(d / "reference.npz")
    ids, want = ref["input_ids"], ref["logits"]
    assert ids.dtype == np.int64 and want.dtype == np.float32 and want.shape[:2] == ids.shape

    model = AutoAWQForCausalLM.from_pretrained(str(d))
    got = np.asarray(model.forward(ids), dtype=np.float32)
    assert got.shape == want.shape, f"{name}: logits shape {got.shape}, want {want.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite logits"
    rel = np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want.astype(np.float64))
    assert rel < 1e-4, f"{name}: relative error {rel:.3e} vs transformers"
    agree = np.mean(got.argmax(-1) == want.argmax(-1))
    assert agree == 1.0, f"{name}: argmax agrees on {agree:.0%} of positions"
