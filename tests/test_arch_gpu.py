"""Every architecture fixture on the GPU (skipped without a CUDA device): the float forward against
transformers' logits, the quantized runtime against the CPU runtime on the same checkpoint, and the
GPU quantizer against the CPU quantizer. Every block kind runs on the GPU; MoE models route on the
host and run their experts on the GPU (gather / scatter-add ops)."""
from pathlib import Path

import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from awq._backend import C

pytestmark = pytest.mark.skipif(not C.cuda_info()["devices"], reason="no CUDA device")

ARCHS = Path(__file__).resolve().parent / "fixtures" / "archs"
VARIANTS = ARCHS.parent / "arch_variants"
FOLDERS = sorted(p.name for p in ARCHS.iterdir() if p.is_dir()) if ARCHS.is_dir() else []
FOLDERS += sorted("../arch_variants/" + p.name for p in VARIANTS.iterdir() if p.is_dir()) if VARIANTS.is_dir() else []


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def _calib(vocab, n=8, T=32):
    rng = np.random.default_rng(7)
    return [list(map(int, rng.integers(3, vocab, size=T))) for _ in range(n)]


@pytest.mark.parametrize("name", FOLDERS)
def test_gpu_float_forward_matches_transformers(name):
    d = ARCHS / name
    ref = np.load(d / "reference.npz")
    m = AutoAWQForCausalLM.from_pretrained(str(d), device_map="cuda")
    got = m.forward(ref["input_ids"])
    assert type(m.runtime().device).__name__ == "GpuDevice"
    # fp16 activations with fp32 accumulation against a float64 oracle
    assert rel(got, ref["logits"]) < 2e-2, name
    assert np.mean(got.argmax(-1) == ref["logits"].argmax(-1)) >= 0.85


@pytest.mark.parametrize("name", FOLDERS)
def test_gpu_quantized_runtime_and_quantizer(name, tmp_path):
    d = ARCHS / name
    ids = np.load(d / "reference.npz")["input_ids"]
    cpu = AutoAWQForCausalLM.from_pretrained(str(d))
    qc = {"q_group_size": 32}
    cpu.quantize(None, quant_config=qc, calib_data=_calib(cpu.cfg.vocab_size), max_calib_seq_len=32)
    cpu.save_quantized(str(tmp_path / "cpu"))
    want = AutoAWQForCausalLM.from_quantized(str(tmp_path / "cpu"), device_map="cpu").forward(ids)
    on_gpu = AutoAWQForCausalLM.from_quantized(str(tmp_path / "cpu"), device_map="cuda")
    assert rel(on_gpu.forward(ids), want) < 2e-2, name
    # greedy generation on the GPU follows the GPU forward
    out = np.asarray(on_gpu.generate(ids[:1, :5], max_new_tokens=3, do_sample=False, eos_token_id=-1))
    assert out.shape == (1, 8)

    gq = AutoAWQForCausalLM.from_pretrained(str(d), device_map="cuda")
    gq.quantize(None, quant_config=qc, calib_data=_calib(gq.cfg.vocab_size), max_calib_seq_len=32)
    gq.save_quantized(str(tmp_path / "gpu"))
    got = AutoAWQForCausalLM.from_quantized(str(tmp_path / "gpu"), device_map="cpu").forward(ids)
    # a GPU (fp16 forwards) and a CPU (fp32) quantization pick nearly the same scales and clips
    assert rel(got, want) < 0.1, name


@pytest.mark.parametrize("variant", ["qwen2_yarn", "llama_dynamic_ntk", "llama_rope_llama3"])
def test_fused_decoder_only_runs_what_it_covers(variant, tmp_path, capsys):
    """The fused decoder computes RoPE from the plain inverse frequencies: yarn's attention factor and
    dynamic NTK must send generation to the layer-by-layer runtime (llama3 scaling is fused)."""
    d = ARCHS.parent / "arch_variants" / variant
    ids = np.load(d / "reference.npz")["input_ids"][:1, :6]
    m = AutoAWQForCausalLM.from_pretrained(str(d))
    m.quantize(None, quant_config={"q_group_size": 32}, calib_data=_calib(m.cfg.vocab_size), max_calib_seq_len=32)
    m.save_quantized(str(tmp_path / "q"))
    want = np.asarray(AutoAWQForCausalLM.from_quantized(str(tmp_path / "q"), device_map="cpu").generate(
        ids, max_new_tokens=6, do_sample=False, eos_token_id=-1))
    g = AutoAWQForCausalLM.from_quantized(str(tmp_path / "q"), device_map="cuda")
    rt = g.generation_runtime()
    fused = type(rt).__name__ == "FusedGpuLM"
    assert fused == (variant == "llama_rope_llama3"), capsys.readouterr().out
    got = np.asarray(g.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=-1))
    assert (got[0, :6] == ids[0]).all() and np.mean(got == want) >= 0.9


def test_gpu_row_gather_and_scatter_add():
    from awq import gpu

    rng = np.random.default_rng(0)
    for dt, tol in (("float32", 1e-6), ("float16", 2e-3), ("bfloat16", 2e-2)):
        src = rng.normal(size=(13, 37)).astype(np.float32)
        idx = np.array([12, 0, 5, 5, 7])
        t = gpu.from_numpy(src).to(dt)
        got = gpu.to_host(gpu.index_rows(t, idx))
        np.testing.assert_allclose(got, src[idx], rtol=tol, atol=tol * 4)
        dst = rng.normal(size=(13, 37)).astype(np.float32)
        rows = np.array([3, 11, 0])
        upd = rng.normal(size=(3, 37)).astype(np.float32)
        w = np.array([0.5, -2.0, 1.25], np.float32)
        d = gpu.from_numpy(dst).to(dt)
        gpu.index_add_rows_(d, rows, gpu.from_numpy(upd).to(dt), w)
        want = dst.copy()
        want[rows] += upd * w[:, None]
        np.testing.assert_allclose(gpu.to_host(d), want, rtol=tol * 4, atol=tol * 16)
        parts = [gpu.from_numpy(src[:4]).to(dt), gpu.from_numpy(src[4:])]
        parts[1] = parts[1].to(dt)
        np.testing.assert_allclose(gpu.to_host(gpu.concat_rows(parts)), src, rtol=tol, atol=tol * 4)
    t = gpu.from_numpy(np.zeros((4, 8), np.float32))
    with pytest.raises(IndexError, match="outside"):
        gpu.index_rows(t, [0, 4])
    with pytest.raises(ValueError, match="distinct"):
        gpu.index_add_rows_(t, [1, 1], gpu.from_numpy(np.zeros((2, 8), np.float32)))


def test_gpu_quantizer_report(tmp_path):
    """quantize(report=True) on the GPU backend records errors, scales and clips as on the CPU."""
    from awq.report import write_report

    d = ARCHS / "llama"
    m = AutoAWQForCausalLM.from_pretrained(str(d), device_map="cuda")
    m.quantize(None, quant_config={"q_group_size": 32}, calib_data=_calib(m.cfg.vocab_size), max_calib_seq_len=32,
               report=True)
    for r in m.reports:
        assert 0 < r.errors["awq"] < 1 and 0 < r.errors["rtn"] < 1
        assert r.clips and all(np.isfinite(v).all() for v in r.clip_ratios.values())
    assert write_report(m, str(tmp_path / "r"))["json"]
