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
from pathlib import Path

import pytest
from test_arch_fixtures import check_folder, check_logits
from test_arch_quantize import check_incremental, check_quantize_round_trip

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


def test_every_variant_has_a_fixture():
    missing = [v for v in EXPECTED if v not in FOLDERS]
    assert not missing, f"variant fixtures missing: {missing}: run make_arch_fixtures.py --variants"


@pytest.mark.parametrize("name", FOLDERS)
def test_variant_folder_is_complete_and_small(name):
    cfg, meta = check_folder(VARIANTS / name, MAX_FOLDER_BYTES)
    assert meta["variant"] == name
    assert cfg["model_type"] == meta["variant_of"] == meta["model_type"]
    assert meta["what"]
    # a contrasting config (rope_scaling null, greedy routing, ...) moved the logits by > 1e-3:
    # the variant's setting acts on this input, well above the 1e-4 tolerance below
    for label, rel in meta.get("contrast_rel_l2", {}).items():
        assert rel > 1e-3, f"{name}: contrast {label!r} only {rel}"


@pytest.mark.parametrize("name", FOLDERS)
def test_variant_logits_match_transformers(name):
    check_logits(VARIANTS / name)


@pytest.mark.parametrize("name", FOLDERS)
def test_variant_quantize_save_load(name, tmp_path):
    check_quantize_round_trip(VARIANTS / name, tmp_path)


# Frequencies that depend on the call's length (dynamic NTK, longrope) differ between one full forward
# and token-by-token decoding, in transformers as in awq: those two are left out here.
LENGTH_DEPENDENT = {"llama_dynamic_ntk", "phi3_longrope"}


@pytest.mark.parametrize("name", [f for f in FOLDERS if f not in LENGTH_DEPENDENT])
def test_variant_incremental_decode_matches_full_forward(name):
    check_incremental(VARIANTS / name)
