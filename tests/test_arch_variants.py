"""Config variants of the supported model types, checked against a transformers oracle (torch-free).

tests/fixtures/arch_variants/<variant>/ holds a tiny random fp16 checkpoint of one model_type with a
config setting the per-type fixtures (tests/fixtures/archs) do not exercise: rope scaling types
(llama3, yarn, dynamic NTK past max_position_embeddings, longrope long factors), sequential vs
parallel blocks, MHA vs MQA fused qkv layouts, dense/MoE layer mixes, group-limited MoE routing,
disabled softcaps / sliding windows... and the logits transformers computed from exactly those
weights in float64 (tests/fixtures/make_arch_fixtures.py --variants wrote them; see
tests/fixtures/arch_variants/README.md; meta.json says what each one exercises).

For each folder:
- from_pretrained(folder).forward(input_ids) matches transformers (relative L2 < 1e-4, same argmax);
- quantize -> save_quantized -> from_quantized: the loaded model gives the in-memory quantized
  model's logits, and the saved checkpoint has the Hub's names (as tests/test_arch_quantize.py).
"""
import json
from pathlib import Path

import numpy as np
import pytest

VARIANTS = Path(__file__).resolve().parent / "fixtures" / "arch_variants"
FOLDERS = sorted(p.name for p in VARIANTS.iterdir() if p.is_dir()) if VARIANTS.is_dir() else []

MAX_FOLDER_BYTES = 300 * 1024

# What the brief of the variant set asks for; every one must have a folder.
EXPECTED = [
    "gpt_bigcode_mha", "falcon_sequential_mha", "falcon_40b_two_norms", "gpt_neox_sequential",
    "stablelm_parallel", "cohere_no_qk_norm", "qwen3_moe_sparse_step", "deepseek_v2_group_limited",
    "llama_rope_llama3", "qwen2_yarn", "llama_dynamic_ntk", "phi3_longrope", "gemma2_no_softcap",
    "mistral_no_window",
]


def _rel(got, want) -> float:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _calib(vocab: int, n: int = 8, T: int = 32):
    rng = np.random.default_rng(7)
    return [list(map(int, rng.integers(3, vocab, size=T))) for _ in range(n)]


def _tensors(folder):
    from awq.io.safetensors import SafetensorsFile

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        sf = SafetensorsFile(str(f))
        for k in sf.keys():
            out[k] = (sf.dtype(k), np.array(sf.get(k)))
    return out


def test_every_variant_has_a_fixture():
    missing = [v for v in EXPECTED if v not in FOLDERS]
    assert not missing, f"variant fixtures missing: {missing}: run make_arch_fixtures.py --variants"


@pytest.mark.parametrize("name", FOLDERS)
def test_variant_folder_is_complete_and_small(name):
    d = VARIANTS / name
    for f in ("config.json", "model.safetensors", "reference.npz", "meta.json"):
        assert (d / f).is_file(), f"{name}: {f} missing"
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    assert size < MAX_FOLDER_BYTES, f"{name}: {size} bytes >= {MAX_FOLDER_BYTES}"
    cfg = json.loads((d / "config.json").read_text())
    meta = json.loads((d / "meta.json").read_text())
    assert meta["variant"] == name
    assert cfg["model_type"] == meta["variant_of"] == meta["model_type"]
    assert meta["what"]
    assert cfg.get("torch_dtype") == "float16"
    # a contrasting config (rope_scaling null, greedy routing, ...) moved the logits by > 1e-3:
    # the variant's setting acts on this input, well above the 1e-4 tolerance below
    for label, rel in meta.get("contrast_rel_l2", {}).items():
        assert rel > 1e-3, f"{name}: contrast {label!r} only {rel}"


@pytest.mark.parametrize("name", FOLDERS)
def test_variant_logits_match_transformers(name):
    from awq import AutoAWQForCausalLM

    d = VARIANTS / name
    ref = np.load(d / "reference.npz")
    ids, want = ref["input_ids"], ref["logits"]
    assert ids.dtype == np.int64 and want.dtype == np.float32 and want.shape[:2] == ids.shape

    model = AutoAWQForCausalLM.from_pretrained(str(d))
    got = np.asarray(model.forward(ids), dtype=np.float32)
    assert got.shape == want.shape, f"{name}: logits shape {got.shape}, want {want.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite logits"
    rel = _rel(got, want)
    assert rel < 1e-4, f"{name}: relative error {rel:.3e} vs transformers"
    agree = np.mean(got.argmax(-1) == want.argmax(-1))
    assert agree == 1.0, f"{name}: argmax agrees on {agree:.0%} of positions"


@pytest.mark.parametrize("name", FOLDERS)
def test_variant_quantize_save_load(name, tmp_path):
    from awq import AutoAWQForCausalLM

    d = VARIANTS / name
    ref = np.load(d / "reference.npz")
    ids, want = ref["input_ids"], ref["logits"]
    model = AutoAWQForCausalLM.from_pretrained(str(d))
    vocab = model.cfg.vocab_size
    model.quantize(None, quant_config={"q_group_size": 32}, calib_data=_calib(vocab), max_calib_seq_len=32,
                   max_calib_samples=8)
    got_q = np.asarray(model.forward(ids))
    rel = _rel(got_q, want)
    assert np.isfinite(got_q).all() and rel < 0.35, f"{name}: quantized logits relative error {rel:.3f}"

    out = tmp_path / "q"
    model.save_quantized(str(out))
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "awq" and qc["bits"] == 4 and qc["group_size"] == 32 and qc["version"] == "gemm"
    src, dst = _tensors(d), _tensors(out)
    skipped = qc["modules_to_not_convert"] or []
    quantized = []
    for i, plan in enumerate(model.plans):
        for lin, (N, K) in plan.linears.items():
            full = model.spec.layer_prefix(i) + lin
            assert full + ".weight" in src, f"{full}: not a tensor name of the source checkpoint"
            if lin in plan.not_quantized:
                assert full + ".weight" in dst and full + ".qweight" not in dst
                assert any(e in full for e in skipped), f"router {full} missing from modules_to_not_convert"
                continue
            quantized.append(full)
            assert full + ".weight" not in dst, f"{full}: float weight left beside the packed one"
            assert dst[full + ".qweight"][1].shape == (K, N // 8) and dst[full + ".qweight"][0] == "I32"
            assert dst[full + ".qzeros"][1].shape == (K // 32, N // 8)
            assert dst[full + ".scales"][1].shape == (K // 32, N) and dst[full + ".scales"][0] == "F16"
            assert (full + ".bias" in dst) == (full + ".bias" in src)
    for e in skipped:
        assert not any(e in m for m in quantized), f"modules_to_not_convert entry {e!r} matches a quantized module"
    layer_names = tuple(model.spec.layer_prefix(i) for i in range(model.cfg.num_layers))
    for k, (dt, arr) in src.items():
        if k.startswith(layer_names) or k in (model.spec.embed, model.spec.final_norm, model.spec.lm_head):
            continue
        assert k in dst, f"{name}: {k} dropped from the saved checkpoint"
        assert dst[k][0] == dt and np.array_equal(dst[k][1], arr), f"{name}: {k} changed"
        if "layers" not in k and k.split(".")[0] not in ("model", "transformer", "gpt_neox", "lm_head"):
            assert any(k.startswith(e) for e in skipped), f"{k} is outside the decoder but not in modules_to_not_convert"

    loaded = AutoAWQForCausalLM.from_quantized(str(out), device_map="cpu")
    got_l = np.asarray(loaded.forward(ids))
    np.testing.assert_allclose(got_l, got_q, rtol=1e-5, atol=1e-5 * np.abs(got_q).max())
