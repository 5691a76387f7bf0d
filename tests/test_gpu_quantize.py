"""AWQ on the GPU agrees with AWQ on the CPU (issue 3, part 4). Skipped without a CUDA device."""
import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from awq._backend import C
from awq.evaluation import evaluate_perplexity
from tiny import CharTokenizer, calib_texts, tiny_config, write_tiny_model

pytestmark = pytest.mark.skipif(not C.cuda_info()["devices"], reason="no CUDA device")

QC = {"zero_point": True, "q_group_size": 32, "w_bit": 4, "version": "GEMM"}


def _quantize(folder, device):
    m = AutoAWQForCausalLM.from_pretrained(folder, device_map=device)
    m.quantize(CharTokenizer(), quant_config=QC, calib_data=calib_texts(80), max_calib_seq_len=64,
               max_calib_samples=80)
    return m


def test_gpu_and_cpu_choose_the_same_scales(tmp_path):
    # fp32 checkpoint -> the GPU search runs in fp32 too, so both see the same losses up to
    # summation order; no GQA (heads == kv heads) so the v->o group is searched as well.
    cfg = tiny_config(hidden=128, inter=288, layers=4, heads=4, kv_heads=4)
    folder = str(tmp_path / "m")
    write_tiny_model(folder, cfg)
    cpu, gpu = _quantize(folder, None), _quantize(folder, "cuda")
    pairs = [(a.ratios[k], b.ratios[k]) for a, b in zip(cpu.reports, gpu.reports) for k in a.ratios]
    assert len(pairs) == 16
    same = sum(x == y for x, y in pairs) / len(pairs)
    assert same >= 0.95, pairs


def test_gpu_fp16_checkpoint_perplexity_matches_cpu(tmp_path):
    cfg = tiny_config(hidden=128, inter=288, layers=3, heads=4, kv_heads=2)
    folder = str(tmp_path / "m16")
    write_tiny_model(folder, cfg, dtype=np.float16)
    tok = CharTokenizer()
    text = " ".join(calib_texts(60, seed=5))
    ppl = {}
    for dev in (None, "cuda"):
        m = _quantize(folder, dev)
        out = str(tmp_path / f"q-{dev}")
        m.save_quantized(out)
        ppl[dev] = evaluate_perplexity(AutoAWQForCausalLM.from_quantized(out), tok, text, seqlen=128, verbose=False)
    assert abs(ppl["cuda"] - ppl[None]) / ppl[None] < 0.005, ppl
