"""Batched generation with prompts of different lengths (issue 4, part 2) on the CPU runtime:
each row must generate exactly what it generates alone, whatever the padding or batching; the
length limit raises before any work; repeated calls and forward() carry no state into generate().
"""
import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from tiny import CharTokenizer, calib_texts, tiny_config, write_tiny_model

PROMPTS = [[72, 101, 108, 108, 111], [87, 104, 97, 116, 32, 105, 115, 32, 97], [65], [10, 20, 30, 40]]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("gen_batch") / "m")
    write_tiny_model(folder, tiny_config(), dtype=np.float16)
    m = AutoAWQForCausalLM.from_pretrained(folder)
    m.quantize(CharTokenizer(), quant_config={"w_bit": 4, "q_group_size": 32}, calib_data=calib_texts(),
               max_calib_seq_len=64)
    return m


def alone(model, n=8):
    return [model.generate(p, max_new_tokens=n, eos_token_id=[])[0].tolist() for p in PROMPTS]


def test_ragged_list_equals_one_by_one(model):
    want = alone(model)
    got = model.generate(PROMPTS, max_new_tokens=8, eos_token_id=[])
    assert isinstance(got, list) and [g.tolist() for g in got] == want
    assert all(len(g) == len(p) + 8 for g, p in zip(got, PROMPTS))


@pytest.mark.parametrize("side", ["left", "right"])
def test_attention_mask_padding_equals_one_by_one(model, side):
    want = alone(model)
    T = max(len(p) for p in PROMPTS)
    ids = np.zeros((len(PROMPTS), T), np.int64)
    mask = np.zeros_like(ids)
    for b, p in enumerate(PROMPTS):
        sl = slice(T - len(p), T) if side == "left" else slice(0, len(p))
        ids[b, sl], mask[b, sl] = p, 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[])
    assert out.shape == (len(PROMPTS), T + 8)
    np.testing.assert_array_equal(out[:, :T], ids)  # rows keep their padding
    for b in range(len(PROMPTS)):
        assert out[b, T:].tolist() == want[b][len(PROMPTS[b]):]


def test_equal_lengths_batch_equals_one_by_one(model):
    ids = np.array([PROMPTS[0], [1, 2, 3, 4, 5], [200, 100, 50, 25, 12]])
    got = model.generate(ids, max_new_tokens=6, eos_token_id=[])
    for b in range(3):
        assert got[b].tolist() == model.generate(ids[b], max_new_tokens=6, eos_token_id=[])[0].tolist()


def test_no_stale_state_between_calls(model):
    first = model.generate(PROMPTS, max_new_tokens=5, eos_token_id=[])
    model.forward(np.array([[1, 2, 3, 4, 5, 6, 7]]))
    model.generate([[9, 9, 9]], max_new_tokens=20, eos_token_id=[])
    again = model.generate(PROMPTS, max_new_tokens=5, eos_token_id=[])
    assert [a.tolist() for a in again] == [f.tolist() for f in first]


def test_length_limit_raises_before_work(model):
    with pytest.raises(ValueError, match="exceeds max_seq_len 512"):
        model.generate(PROMPTS, max_new_tokens=505, eos_token_id=[])  # longest prompt 9 + 505 > 512
    assert model.generate(PROMPTS, max_new_tokens=503, eos_token_id=[], callback=lambda t: True)


def test_bad_masks(model):
    with pytest.raises(ValueError, match="without any token"):
        model.generate(np.array([[1, 2], [3, 4]]), attention_mask=np.array([[1, 1], [0, 0]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.generate(np.array([[1, 2], [3, 4]]), attention_mask=np.array([[1, 1, 1]]), max_new_tokens=2)
