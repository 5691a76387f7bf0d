"""The architecture table as users see it: AutoAWQ's model map, adding an architecture (a spec row or
a subclass), refusing duplicates and inconsistent rows, and MoE quantization rules (router kept in
float and compensated, unrouted experts still quantized)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import awq.runtime.layers as layers_mod
from awq import AutoAWQForCausalLM
from awq._backend import C
from awq.io.safetensors import SafetensorsFile, save_file
from awq.models.auto import AWQ_CAUSAL_LM_MODEL_MAP, register_architecture
from awq.models.base import BaseAWQForCausalLM
from awq.models.spec import ARCH_SPECS, ArchSpec, ScaleGroup, register_spec

ARCHS = Path(__file__).resolve().parent / "fixtures" / "archs"

AUTOAWQ_TYPES = [
    "mpt", "llama", "opt", "RefinedWeb", "RefinedWebModel", "falcon", "exaone", "bloom", "gptj", "gpt_bigcode",
    "mistral", "mixtral", "gpt_neox", "aquila", "Yi", "qwen", "baichuan", "llava", "qwen2", "qwen3", "qwen3_moe",
    "gemma", "gemma2", "stablelm", "starcoder2", "llava_next", "phi3", "phi3_v", "cohere", "deepseek_v2",
    "deepseek_v3", "minicpm", "internlm2", "minicpm3", "qwen2_vl", "qwen2_5_vl", "qwen2_5_omni",
]


def test_every_autoawq_type_is_in_the_model_map():
    missing = [t for t in AUTOAWQ_TYPES + ["gemma3", "gemma3_text", "glm4"] if t not in AWQ_CAUSAL_LM_MODEL_MAP]
    assert not missing
    for t, cls in AWQ_CAUSAL_LM_MODEL_MAP.items():
        assert issubclass(cls, BaseAWQForCausalLM) and cls.spec.model_type == t


@pytest.fixture
def registry_guard():
    """Restores the table and the model map after a test registers architectures."""
    specs, classes = dict(ARCH_SPECS), dict(AWQ_CAUSAL_LM_MODEL_MAP)
    yield
    ARCH_SPECS.clear()
    ARCH_SPECS.update(specs)
    AWQ_CAUSAL_LM_MODEL_MAP.clear()
    AWQ_CAUSAL_LM_MODEL_MAP.update(classes)


def test_duplicate_registration_raises(registry_guard):
    with pytest.raises(ValueError, match="already registered"):
        register_spec(ArchSpec("llama", "LlamaForCausalLM"))
    with pytest.raises(ValueError, match="already registered"):
        register_architecture(ArchSpec("mistral", "MistralForCausalLM"))


@pytest.mark.parametrize("kw, msg", [
    ({"block": "weird"}, "block 'weird'"),
    ({"norm_kind": "batchnorm"}, "norm_kind"),
    ({"mlp": "gated_fused"}, "needs gate_up"),
    ({"position": "learned"}, "needs pos_embed"),
    ({"block": "sequential", "post_attn_norm": None}, "needs post_attn_norm"),
    ({"q_norm": "self_attn.q_norm"}, "go together"),
    ({"groups": (ScaleGroup("input_layernorm", ("self_attn.nope",), "attn"),)}, "not a linear"),
    ({"groups": (ScaleGroup("nowhere", ("self_attn.q_proj",), "attn"),)}, "prev_op"),
    ({"groups": (ScaleGroup("input_layernorm", ("self_attn.q_proj",), "attn"),
                 ScaleGroup("self_attn.v_proj", ("self_attn.q_proj",), "self_attn.q_proj"))}, "two scaling groups"),
])
def test_inconsistent_spec_raises(registry_guard, kw, msg):
    with pytest.raises(ValueError, match=msg):
        register_architecture(ArchSpec("my_arch", "MyForCausalLM", **kw))
    assert "my_arch" not in AWQ_CAUSAL_LM_MODEL_MAP and "my_arch" not in ARCH_SPECS


def _renamed_llama(tmp_path, model_type):
    """The llama fixture with other tensor names (decoder.blocks.N.*) and model_type."""
    src = ARCHS / "llama"
    dst = tmp_path / model_type
    dst.mkdir()
    sf = SafetensorsFile(str(src / "model.safetensors"))
    ren = {"model.layers.": "decoder.blocks.", "self_attn.": "attn.", "input_layernorm": "norm1",
           "post_attention_layernorm": "norm2", "mlp.": "ffn.", "model.embed_tokens": "decoder.wte",
           "model.norm": "decoder.norm_f"}
    out = {}
    for k in sf.keys():
        n = k
        for a, b in ren.items():
            n = n.replace(a, b)
        out[n] = np.array(sf.get(k))
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = model_type
    (dst / "config.json").write_text(json.dumps(cfg))
    shutil.copy(src / "reference.npz", dst / "reference.npz")
    return dst


MY_SPEC = dict(layers_prefix="decoder.blocks", embed="decoder.wte.weight", final_norm="decoder.norm_f.weight",
               input_norm="norm1", post_attn_norm="norm2", q="attn.q_proj", k="attn.k_proj", v="attn.v_proj",
               o="attn.o_proj", gate="ffn.gate_proj", up="ffn.up_proj", down="ffn.down_proj")


def test_user_spec_row_runs_and_quantizes(registry_guard, tmp_path):
    folder = _renamed_llama(tmp_path, "my_llama")
    with pytest.raises(TypeError, match="isn't supported yet"):
        AutoAWQForCausalLM.from_pretrained(str(folder))
    register_architecture(ArchSpec("my_llama", "MyLlamaForCausalLM", **MY_SPEC))
    ref = np.load(folder / "reference.npz")
    model = AutoAWQForCausalLM.from_pretrained(str(folder))
    got = model.forward(ref["input_ids"])
    assert np.linalg.norm(got - ref["logits"]) / np.linalg.norm(ref["logits"]) < 1e-4
    rng = np.random.default_rng(0)
    calib = [list(map(int, rng.integers(3, 128, 32))) for _ in range(4)]
    model.quantize(None, quant_config={"q_group_size": 32}, calib_data=calib, max_calib_seq_len=32)
    model.save_quantized(str(tmp_path / "q"))
    names = SafetensorsFile(str(tmp_path / "q" / "model.safetensors")).keys()
    assert "decoder.blocks.0.attn.q_proj.qweight" in names and "decoder.blocks.1.ffn.down_proj.scales" in names


def test_user_subclass_is_used(registry_guard, tmp_path):
    folder = _renamed_llama(tmp_path, "my_llama2")

    class MyLlama(BaseAWQForCausalLM):
        def forward(self, input_ids, **kw):
            return super().forward(input_ids, **kw) * 2.0

    cls = register_architecture(ArchSpec("my_llama2", "MyLlamaForCausalLM", **MY_SPEC), MyLlama)
    assert issubclass(cls, MyLlama) and AWQ_CAUSAL_LM_MODEL_MAP["my_llama2"] is cls
    ref = np.load(folder / "reference.npz")
    got = AutoAWQForCausalLM.from_pretrained(str(folder)).forward(ref["input_ids"])
    np.testing.assert_allclose(got, 2 * ref["logits"], rtol=2e-4, atol=2e-4)
    with pytest.raises(TypeError, match="subclass"):
        register_architecture(ArchSpec("my_llama3", "X", **MY_SPEC), dict)


# ---- MoE -------------------------------------------------------------------------------------------


def _calib(n=8, T=32, vocab=128):
    rng = np.random.default_rng(11)
    return [list(map(int, rng.integers(3, vocab, T))) for _ in range(n)]


def test_router_is_kept_in_float_and_compensated(tmp_path):
    d = ARCHS / "mixtral"
    model = AutoAWQForCausalLM.from_pretrained(str(d))
    src = SafetensorsFile(str(d / "model.safetensors"))
    model.quantize(None, quant_config={"q_group_size": 32}, calib_data=_calib(), max_calib_seq_len=32)
    model.save_quantized(str(tmp_path / "q"))
    out = SafetensorsFile(str(tmp_path / "q" / "model.safetensors"))
    scaled = 0
    for i in range(model.cfg.num_layers):
        p = f"model.layers.{i}."
        r0 = src.get_float32(p + "block_sparse_moe.gate.weight")
        r1 = out.get_float32(p + "block_sparse_moe.gate.weight")
        assert p + "block_sparse_moe.gate.qweight" not in out.keys()
        n0 = src.get_float32(p + "post_attention_layernorm.weight")
        n1 = out.get_float32(p + "post_attention_layernorm.weight")
        s = n0 / n1  # the scale folded out of the norm ...
        # ... must be folded into the router's input columns, so routing is unchanged
        np.testing.assert_allclose(r1, r0 * s[None, :], rtol=3e-3, atol=1e-4)
        scaled += not np.allclose(s, 1.0)
    assert scaled, "no layer's norm->experts group chose a non-identity scale; the test shows nothing"


def test_unrouted_expert_is_still_quantized(tmp_path, monkeypatch):
    """An expert no calibration token reaches gets no scale search for its up->down group and no
    clip: its down_proj is plain min/max 4-bit of the original weight (the documented fallback)."""
    real_route = layers_mod.route

    def never_expert_3(cfg, logits, bias):
        lg = np.array(logits, copy=True)
        lg[:, 3] = -1e30
        return real_route(cfg, lg, bias)

    monkeypatch.setattr(layers_mod, "route", never_expert_3)
    d = ARCHS / "mixtral"
    model = AutoAWQForCausalLM.from_pretrained(str(d))
    src = SafetensorsFile(str(d / "model.safetensors"))
    model.quantize(None, quant_config={"q_group_size": 32}, calib_data=_calib(), max_calib_seq_len=32)
    for rep in model.reports:
        key = [k for k in rep.ratios if "experts.3.w3" in k.split("->")[0]]
        assert key and np.isnan(rep.ratios[key[0]])
    layer = model._layers[0]
    q = layer["block_sparse_moe.experts.3.w2"]
    w = src.get_float32("model.layers.0.block_sparse_moe.experts.3.w2.weight")
    codes = C.unpack_gemm(q.qweight).astype(np.int32)  # [K, N]
    zeros = C.unpack_gemm(q.qzeros).astype(np.int32)  # [G, N]
    scales = q.scales.astype(np.float32)  # [G, N]
    g = np.arange(codes.shape[0]) // 32
    deq = ((codes - zeros[g]) * scales[g]).T
    ref = C.pseudo_quantize(w, 32, 4, True)
    np.testing.assert_allclose(deq, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    other = layer["block_sparse_moe.experts.0.w2"]
    assert other.qweight.shape == q.qweight.shape


@pytest.mark.parametrize("name, drop", [("bloom", "transformer."), ("opt", "model.")])
def test_original_prefixless_names_load(tmp_path, name, drop):
    """bigscience's BLOOM and facebook's OPT files name tensors without the leading module prefix
    (h.0..., decoder.layers.0...); both spellings load to the same model."""
    src = ARCHS / name
    sf = SafetensorsFile(str(src / "model.safetensors"))
    out = {(k[len(drop):] if k.startswith(drop) else k): np.array(sf.get(k)) for k in sf.keys()}
    assert any(k != k2 for k, k2 in zip(sorted(sf.keys()), sorted(out)))
    dst = tmp_path / name
    dst.mkdir()
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(src / "config.json", dst / "config.json")
    ref = np.load(src / "reference.npz")
    got = AutoAWQForCausalLM.from_pretrained(str(dst)).forward(ref["input_ids"])
    assert np.linalg.norm(got - ref["logits"]) / np.linalg.norm(ref["logits"]) < 1e-4


def test_vision_tower_listed_under_new_transformers_names(tmp_path):
    """transformers 5 saves llava as model.language_model.* / model.vision_tower.*: the decoder is
    found through the spec's alternative prefixes and the tower is listed by its full path."""
    src = ARCHS / "llava"
    sf = SafetensorsFile(str(src / "model.safetensors"))
    ren = {"language_model.model.": "model.language_model.", "language_model.lm_head": "lm_head",
           "vision_tower.": "model.vision_tower.", "multi_modal_projector.": "model.multi_modal_projector."}
    out = {}
    for k in sf.keys():
        n = k
        for a, b in ren.items():
            if n.startswith(a):
                n = b + n[len(a):]
                break
        out[n] = np.array(sf.get(k))
    d = tmp_path / "llava5"
    d.mkdir()
    save_file(out, str(d / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(src / "config.json", d / "config.json")
    ref = np.load(src / "reference.npz")
    m = AutoAWQForCausalLM.from_pretrained(str(d))
    assert m.spec.layers_prefix == "model.language_model.layers"
    got = m.forward(ref["input_ids"])
    assert np.linalg.norm(got - ref["logits"]) / np.linalg.norm(ref["logits"]) < 1e-4
    m.quantize(None, quant_config={"q_group_size": 32}, calib_data=_calib(4), max_calib_seq_len=32)
    m.save_quantized(str(tmp_path / "q"))
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert "model.vision_tower" in qc["modules_to_not_convert"]
    assert "model.multi_modal_projector" in qc["modules_to_not_convert"]


def test_baichuan_13b_uses_alibi():
    """Baichuan-13B / Baichuan2-13B (hidden 5120) use ALiBi, the 7B models RoPE, as their remote code."""
    from awq.models.config import ModelConfig
    from awq.runtime.layers import alibi_slopes

    row = ARCH_SPECS["baichuan"]
    cfg13 = {"model_type": "baichuan", "hidden_size": 5120, "num_attention_heads": 40, "num_hidden_layers": 40,
             "intermediate_size": 13696, "vocab_size": 125696, "model_max_length": 4096, "rms_norm_eps": 1e-6,
             "z_loss_weight": 0}
    spec = row.for_config(cfg13)
    assert spec.position == "alibi" and row.for_config(dict(cfg13, hidden_size=4096, num_attention_heads=32)).position == "rope"
    c = ModelConfig.from_dict(cfg13, spec.config_adapter)
    assert c.alibi == "bloom" and c.lm_head_norm and c.max_position_embeddings == 4096
    s = alibi_slopes("bloom", 40)
    # Baichuan's _get_interleave(40): 32 slopes 2^(-8i/32), then every other slope of 64 heads
    want = [2 ** (-(i + 1) / 4) for i in range(32)] + [2 ** (-(2 * j + 1) / 8) for j in range(8)]
    np.testing.assert_allclose(s, want, rtol=1e-6)


# ---- config and routing details (review findings) ---------------------------------------------


def _cfg(model_type, **kw):
    from awq.models.config import ModelConfig

    base = {"model_type": model_type, "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 96, "vocab_size": 128}
    base.update(kw)
    spec = ARCH_SPECS[model_type].for_config(base)
    return spec, ModelConfig.from_dict(base, spec.config_adapter, default_act=spec.act)


def test_partial_rotary_inside_rope_parameters():
    """transformers 5 writes partial_rotary_factor only under rope_parameters."""
    _, c = _cfg("gpt_neox", rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                             "partial_rotary_factor": 1.0})
    assert c.rotary_dim == 16
    _, c = _cfg("stablelm", rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                             "partial_rotary_factor": 0.5})
    assert c.rotary_dim == 8


def test_activation_defaults_follow_the_architecture():
    _, c = _cfg("gptj", n_embd=64, n_head=4, n_layer=2)  # no activation_function: GPT-J's gelu_new
    assert c.act == "gelu_tanh"
    _, c = _cfg("gemma", hidden_act="gelu", head_dim=16)  # Gemma-1's legacy key: still the tanh GELU
    assert c.act == "gelu_tanh"
    _, c = _cfg("llama")
    assert c.act == "silu"


def test_qwen_sliding_windows_follow_max_window_layers():
    _, c = _cfg("qwen2", sliding_window=4, use_sliding_window=True, max_window_layers=1)
    assert [c.layer_window(i) for i in range(2)] == [0, 4]
    _, c = _cfg("qwen2", sliding_window=4)  # use_sliding_window defaults to false for Qwen
    assert [c.layer_window(i) for i in range(2)] == [0, 0]
    _, c = _cfg("mistral", sliding_window=4)  # Mistral: always on
    assert [c.layer_window(i) for i in range(2)] == [4, 4]


def test_qwen3_moe_reads_num_local_experts_and_refuses_no_experts():
    from awq.models.config import ConfigError

    moe = dict(num_experts_per_tok=2, moe_intermediate_size=32)
    _, c = _cfg("qwen3_moe", num_local_experts=4, **moe)
    assert c.moe["num_experts"] == 4
    with pytest.raises(ConfigError, match="number of experts"):
        _cfg("qwen3_moe", **moe)


def test_mpt_clip_qkv_has_no_fused_v_to_o_group():
    kw = dict(d_model=64, n_heads=4, n_layers=2, expansion_ratio=2)
    spec, c = _cfg("mpt", attn_config={"alibi": True, "clip_qkv": 0.5}, **kw)
    assert not any(g.prev == spec.qkv for g in spec.plan(c, 0).groups)
    spec, c = _cfg("mpt", attn_config={"alibi": True}, **kw)
    assert any(g.prev == spec.qkv and g.linears == (spec.o,) for g in spec.plan(c, 0).groups)


def test_group_limited_routing_drops_other_groups_and_v2_v3_weights():
    from awq.runtime.layers import route

    class C:
        moe = {"top_k": 2, "scoring": "sigmoid", "n_group": 4, "topk_group": 2, "group_score": "top2sum",
               "norm_topk_prob": True, "routed_scaling_factor": 2.5, "scale_after_norm": True}

    logits = np.array([[3, 2.9, -3, -3, -3, -3, 2, 1.9]], np.float32)
    idx, w = route(C, logits, np.full(8, -1.0, np.float32))
    # groups {0,1}={3,2.9}->sum of sigmoid+bias top-2 is highest for groups 0 and 3; never experts 2..5
    assert set(idx[0]) == {0, 1} and np.isclose(w.sum(), 2.5)
    C.moe = dict(C.moe, scoring="softmax", group_score="max", scale_after_norm=False, routed_scaling_factor=16.0)
    idx, w = route(C, logits, None)
    assert np.isclose(w.sum(), 1.0)  # DeepSeek-V2: renormalised, not scaled
    C.moe = dict(C.moe, norm_topk_prob=False)
    idx, w = route(C, logits, None)
    p = np.exp(logits[0] - logits[0].max())
    p /= p.sum()
    assert np.allclose(np.sort(w[0]), np.sort(p[[0, 1]]) * 16.0)  # V2 without renormalisation: scaled


def test_shared_experts_are_calibrated(tmp_path):
    m = AutoAWQForCausalLM.from_pretrained(str(ARCHS / "deepseek_v3"))
    m.quantize(None, quant_config={"q_group_size": 32}, calib_data=_calib(4), max_calib_seq_len=32)
    rep = m.reports[1]  # layer 1 is a MoE layer
    for n in ("mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj", "mlp.shared_experts.down_proj"):
        assert n in rep.clips, n


def test_untied_model_without_lm_head_is_refused(tmp_path):
    src = ARCHS / "llama"
    sf = SafetensorsFile(str(src / "model.safetensors"))
    d = tmp_path / "nohead"
    d.mkdir()
    save_file({k: np.array(sf.get(k)) for k in sf.keys() if k != "lm_head.weight"}, str(d / "model.safetensors"))
    shutil.copy(src / "config.json", d / "config.json")
    assert json.loads((d / "config.json").read_text())["tie_word_embeddings"] is False
    with pytest.raises(ValueError, match="lm_head.weight"):
        AutoAWQForCausalLM.from_pretrained(str(d))
