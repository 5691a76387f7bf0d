"""Generation on the GPU (issue 3, part 5) against the CPU runtime. Skipped without a CUDA device."""
import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from awq._backend import C
from tiny import CharTokenizer, calib_texts, tiny_config, write_tiny_model

pytestmark = pytest.mark.skipif(not C.cuda_info()["devices"], reason="no CUDA device")


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu_rt")
    folder, out = str(d / "f16"), str(d / "q")
    write_tiny_model(folder, tiny_config(hidden=128, inter=384, layers=3, heads=4, kv_heads=2), dtype=np.float16)
    m = AutoAWQForCausalLM.from_pretrained(folder)
    m.quantize(CharTokenizer(), quant_config={"w_bit": 4, "q_group_size": 64}, calib_data=calib_texts(),
               max_calib_seq_len=64)
    m.save_quantized(out)
    return folder, out


def test_gpu_logits_match_cpu(quantized):
    folder, out = quantized
    ids = np.array([[72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]])
    cpu = AutoAWQForCausalLM.from_quantized(out).forward(ids)
    gpu = AutoAWQForCausalLM.from_quantized(out, device_map="cuda").forward(ids)
    # fp16 activations on the GPU vs fp32 on the CPU over 3 layers: ~1e-3 relative
    assert rel_err(gpu, cpu) < 2e-2
    f_cpu = AutoAWQForCausalLM.from_pretrained(folder).forward(ids)
    f_gpu = AutoAWQForCausalLM.from_pretrained(folder, device_map="cuda").forward(ids)
    assert rel_err(f_gpu, f_cpu) < 2e-2


def test_gpu_kv_cache_decode_matches_full_forward(quantized):
    _, out = quantized
    m = AutoAWQForCausalLM.from_quantized(out, device_map="cuda")
    ids = np.array([[5, 17, 99, 3, 250, 41, 8, 77], [6, 18, 100, 4, 251, 42, 9, 78]])
    full = m.forward(ids)[:, -1]
    rt = m.runtime()
    cache = rt.new_cache(2, 16)
    rt.forward(ids[:, :5], cache)
    for t in range(5, 8):
        step = rt.forward(ids[:, t:t + 1], cache, last_only=True)[:, -1]
    assert rel_err(step, full) < 2e-2
    g = m.generate(ids[:1], max_new_tokens=6, eos_token_id=None)
    c = AutoAWQForCausalLM.from_quantized(out).generate(ids[:1], max_new_tokens=6, eos_token_id=None)
    assert g.shape == c.shape and g[0, 8] == c[0, 8]  # first new token agrees (later ones may tie-break)
