"""quantize -> save_quantized -> from_quantized for every architecture fixture (tests/fixtures/archs).

For each model type: AWQ (w4, group 32) on pre-tokenized calibration data, then
- the saved checkpoint holds, under the Hub's own tensor names, qweight/qzeros/scales for every
  quantized linear and no float weight for it; routers and everything outside the decoder layers
  (vision towers, projectors, position tables, norm biases) are kept, the latter byte for byte;
- modules_to_not_convert names the routers and the non-decoder modules, and no entry matches a
  quantized module under any engine's rule (REFERENCE.md s3);
- from_quantized gives the same logits as the in-memory quantized model;
- the quantized logits stay close to transformers' float logits (a loose bound: 4-bit on a tiny
  random model).
"""
import json
from pathlib import Path

import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from awq.io.safetensors import SafetensorsFile

ARCHS = Path(__file__).resolve().parent / "fixtures" / "archs"
FOLDERS = sorted(p.name for p in ARCHS.iterdir() if p.is_dir()) if ARCHS.is_dir() else []


def _calib(vocab: int, n: int = 8, T: int = 32):
    rng = np.random.default_rng(7)
    return [list(map(int, rng.integers(3, vocab, size=T))) for _ in range(n)]


def _tensors(folder):
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        sf = SafetensorsFile(str(f))
        for k in sf.keys():
            out[k] = (sf.dtype(k), np.array(sf.get(k)))
    return out


@pytest.mark.parametrize("name", FOLDERS)
def test_quantize_save_load(name, tmp_path):
    check_quantize_round_trip(ARCHS / name, tmp_path)


def check_quantize_round_trip(d: Path, tmp_path):
    """AWQ w4 g32 on d, save, reload: names, shapes, copied tensors, modules_to_not_convert, logits."""
    name = d.name
    ref = np.load(d / "reference.npz")
    ids, want = ref["input_ids"], ref["logits"]
    model = AutoAWQForCausalLM.from_pretrained(str(d))
    vocab = model.cfg.vocab_size
    model.quantize(None, quant_config={"w_bit": 4, "q_group_size": 32, "zero_point": True},
                   calib_data=_calib(vocab), max_calib_seq_len=32, max_calib_samples=8)
    got_q = np.asarray(model.forward(ids))
    rel = np.linalg.norm(got_q - want) / np.linalg.norm(want)
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


@pytest.mark.parametrize("name", FOLDERS)
def test_incremental_decode_matches_full_forward(name):
    """Prefill 4 tokens, then feed the rest one at a time through the KV cache: every architecture's
    positions (RoPE variants, ALiBi, learned tables), windows, MLA caches and MoE routing must give
    the logits of one full forward. Then greedy generate() follows the full forward's argmax."""
    check_incremental(ARCHS / name)


def check_incremental(d: Path):
    ids = np.load(d / "reference.npz")["input_ids"]
    model = AutoAWQForCausalLM.from_pretrained(str(d))
    rt = model.runtime()
    full = rt.forward(ids)
    cache = rt.new_cache(ids.shape[0], 16)
    parts = [rt.forward(ids[:, :4], cache)]
    for t in range(4, ids.shape[1]):
        parts.append(rt.forward(ids[:, t:t + 1], cache))
    inc = np.concatenate(parts, axis=1)
    np.testing.assert_allclose(inc, full, rtol=1e-4, atol=1e-4 * np.abs(full).max())

    out = np.asarray(model.generate(ids[:1, :5], max_new_tokens=4, do_sample=False, eos_token_id=-1))
    seq = list(ids[0, :5])
    for _ in range(4):
        seq.append(int(rt.forward(np.array([seq]))[0, -1].argmax()))
    assert list(out[0]) == seq
