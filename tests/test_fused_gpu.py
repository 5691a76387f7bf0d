"""The fused GPU runtime (issue 4): against the layer-by-layer GPU runtime, batched rows against
rows alone, graph replays against eager launches. Skipped without a CUDA device.

Tolerance: both runtimes round activations to fp16 at the same points; they differ by summation
order (fused q|k|v and gate|up calls, split-K decode attention) and where RoPE angles are
evaluated, so logits agree to about 1e-3 relative; we assert < 1e-2.
"""
import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from awq._backend import C
from tiny import CharTokenizer, calib_texts, tiny_config, write_tiny_model

pytestmark = pytest.mark.skipif(not (C.cuda_info()["built"] and C.cuda_info()["devices"]), reason="no CUDA device")

PROMPTS = [[72, 101, 108, 108, 111], [87, 104, 97, 116, 32, 105, 115, 32, 97, 110, 32], [65], [10, 20, 30, 40]]
ARCHS = {
    "llama": dict(),
    "llama3-rope": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "mistral-window": dict(sliding_window=6),
    "qwen2-bias": dict(),
    "qwen3-qknorm": dict(),
}
TYPES = {"llama3-rope": "llama", "mistral-window": "mistral", "qwen2-bias": "qwen2", "qwen3-qknorm": "qwen3"}


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module", params=list(ARCHS))
def quantized(request, tmp_path_factory):
    name = request.param
    d = tmp_path_factory.mktemp("fused_" + name)
    folder, out = str(d / "f16"), str(d / "q")
    cfg = tiny_config(TYPES.get(name, name), hidden=128, inter=384, layers=3, heads=4, kv_heads=2, **ARCHS[name])
    write_tiny_model(folder, cfg, dtype=np.float16)
    m = AutoAWQForCausalLM.from_pretrained(folder)
    m.quantize(CharTokenizer(), quant_config={"w_bit": 4, "q_group_size": 64}, calib_data=calib_texts(),
               max_calib_seq_len=64)
    m.save_quantized(out)
    return out


def fused_model(out):
    from awq.runtime.fused import FusedGpuLM

    m = AutoAWQForCausalLM.from_quantized(out, device_map="cuda")
    rt = m.generation_runtime()
    assert isinstance(rt, FusedGpuLM)
    return m, rt


def test_fused_prefill_and_decode_match_layer_by_layer(quantized):
    m, rt = fused_model(quantized)
    ids = np.array(PROMPTS[1] + [5, 17, 99, 3, 250, 41, 8, 77])
    full = m.forward(ids[None])[0]  # unfused GPU runtime, every position
    got = rt.start([ids[:11]], 32)
    assert rel_err(got[0], full[10]) < 1e-2
    for t in range(11, len(ids)):
        step = rt.step(ids[t:t + 1])
        assert rel_err(step[0], full[t]) < 1e-2, t


def test_batched_rows_equal_rows_alone(quantized):
    m, _ = fused_model(quantized)
    alone = [m.generate(p, max_new_tokens=10, eos_token_id=[])[0].tolist() for p in PROMPTS]
    got = m.generate(PROMPTS, max_new_tokens=10, eos_token_id=[])
    assert [g.tolist() for g in got] == alone
    T = max(map(len, PROMPTS))
    ids = np.zeros((len(PROMPTS), T), np.int64)
    mask = np.zeros_like(ids)
    for b, p in enumerate(PROMPTS):
        ids[b, T - len(p):], mask[b, T - len(p):] = p, 1
    out = m.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[])
    for b, p in enumerate(PROMPTS):
        assert out[b, T:].tolist() == alone[b][len(p):]


def test_graph_replay_equals_eager_launches(quantized):
    _, rt = fused_model(quantized)
    outs = []
    for use_graph in (False, True):
        rt.use_graph = use_graph
        first = rt.start([np.array(PROMPTS[0]), np.array(PROMPTS[3] + [1])], 40)
        steps = [rt.step(np.array([7 + i, 9 + i])) for i in range(6)]  # graph captured on step 2
        outs.append((first, steps))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        np.testing.assert_array_equal(a, b)


def test_repeated_generate_and_forward_carry_no_state(quantized):
    m, _ = fused_model(quantized)
    a = m.generate(PROMPTS, max_new_tokens=6, eos_token_id=[])
    m.forward(np.array([[1, 2, 3]]))
    m.generate([[9, 9, 9, 9, 9, 9, 9]], max_new_tokens=30, eos_token_id=[])
    b = m.generate(PROMPTS, max_new_tokens=6, eos_token_id=[])
    assert [x.tolist() for x in a] == [y.tolist() for y in b]


def test_fused_greedy_tokens_follow_unfused_logits(quantized):
    """Teacher-forced: each fused greedy token is the unfused argmax, or within the tolerance of it."""
    m, _ = fused_model(quantized)
    out = m.generate(PROMPTS[1], max_new_tokens=12, eos_token_id=[])[0]
    logits = m.forward(out[None])[0]
    for t in range(len(PROMPTS[1]) - 1, len(out) - 1):
        row = logits[t]
        assert row[out[t + 1]] >= row.max() - 1e-2 * np.abs(row).max(), t


def test_length_limit_and_bad_tokens(quantized):
    m, rt = fused_model(quantized)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        m.generate(PROMPTS, max_new_tokens=2048, eos_token_id=[])
    rt.start([np.array([1, 2, 3])], 8)
    with pytest.raises(ValueError, match="KV cache holds 8"):
        for _ in range(6):
            rt.step(np.array([4]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        rt.start([np.array([1, 100000])], 8)


def test_unfusable_model_falls_back(tmp_path):
    folder, out = str(tmp_path / "f16"), str(tmp_path / "q")
    write_tiny_model(folder, tiny_config(hidden=128, inter=384, layers=2, heads=4, kv_heads=2), dtype=np.float16)
    m = AutoAWQForCausalLM.from_pretrained(folder)
    m.quantize(CharTokenizer(), quant_config={"w_bit": 4, "q_group_size": 64,
                                              "modules_to_not_convert": ["mlp.down_proj"]},
               calib_data=calib_texts(), max_calib_seq_len=64)
    m.save_quantized(out)
    g = AutoAWQForCausalLM.from_quantized(out, device_map="cuda")
    from awq.runtime.model import DecoderLM

    assert isinstance(g.generation_runtime(), DecoderLM)
    assert g.generate(PROMPTS[0], max_new_tokens=3, eos_token_id=[]).shape == (1, 8)


def test_new_prefill_shapes_after_capture_keep_the_graph_valid(tmp_path):
    """Regression: a prefill of a new shape used to grow the W4A16 workspace that the captured decode
    graph points into (illegal memory access on the next replay). Layers wide enough for split-K."""
    folder, out = str(tmp_path / "f16"), str(tmp_path / "q")
    write_tiny_model(folder, tiny_config(hidden=512, inter=1536, layers=2, heads=8, kv_heads=4), dtype=np.float16)
    m = AutoAWQForCausalLM.from_pretrained(folder)
    m.quantize(None, quant_config={"w_bit": 4, "q_group_size": 128}, rtn=True)
    m.save_quantized(out)
    runs = [(list(range(1, 17)), 40), (list(range(3, 35)), 2), ([5, 6, 7, 8, 9], 3), ([i % 250 for i in range(7, 300)], 4)]
    g = AutoAWQForCausalLM.from_quantized(out, device_map="cuda")
    got = [g.generate(p, max_new_tokens=n, eos_token_id=[])[0].tolist() for p, n in runs]
    for (p, n), tokens in zip(runs, got):
        fresh = AutoAWQForCausalLM.from_quantized(out, device_map="cuda")
        assert fresh.generate(p, max_new_tokens=n, eos_token_id=[])[0].tolist() == tokens
