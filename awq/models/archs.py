"""The rows of the architecture table (awq/models/spec.py), one per config.json model_type.

Each row names the checkpoint's tensors and the kinds of its block; `config_adapter`s rename an
architecture's own config.json keys to the canonical ones `ModelConfig` reads (hidden_size,
num_hidden_layers, norm_eps, ...), and `variant`s pick between layouts one model_type has.
Multimodal models: only the language decoder is described; everything else in the checkpoint
(vision towers, projectors, audio encoders) is left as it is and listed in modules_to_not_convert.
"""
from __future__ import annotations

import math
from dataclasses import replace

from awq.models.spec import ArchSpec

# ---- config adapters ---------------------------------------------------------------------------


def _default_partial(out: dict, value: float) -> None:
    """partial_rotary_factor's class default, unless the config has one (top level, or inside
    transformers 5's rope_parameters)."""
    rp = out.get("rope_parameters") if isinstance(out.get("rope_parameters"), dict) else {}
    if "partial_rotary_factor" not in out and "partial_rotary_factor" not in rp:
        out["partial_rotary_factor"] = value


def _rename(cfg: dict, pairs) -> dict:
    out = dict(cfg)
    for src, dst in pairs:
        if src in cfg and dst not in cfg:
            out[dst] = cfg[src]
    return out


def _gemma(cfg: dict) -> dict:
    out = dict(cfg)
    # transformers' Gemma runs hidden_activation, else the tanh GELU (a legacy hidden_act "gelu" included)
    out["hidden_act"] = cfg.get("hidden_activation") or "gelu_pytorch_tanh"
    out["embed_scale"] = math.sqrt(cfg["hidden_size"]) if isinstance(cfg.get("hidden_size"), int) else None
    if cfg.get("query_pre_attn_scalar"):
        out["attn_scale"] = float(cfg["query_pre_attn_scalar"]) ** -0.5
    return out


def _gemma2(cfg: dict) -> dict:
    out = _gemma(cfg)
    n = cfg.get("num_hidden_layers")
    if "layer_types" not in cfg and isinstance(n, int):
        out["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    return out


def _gemma3(cfg: dict) -> dict:
    cfg = dict(cfg)
    for key, val in (("rope_theta", 1_000_000.0), ("query_pre_attn_scalar", 256)):  # Gemma3TextConfig defaults
        cfg.setdefault(key, val)
    out = _gemma(cfg)
    n = cfg.get("num_hidden_layers")
    if "layer_types" not in cfg and isinstance(n, int):
        p = cfg.get("sliding_window_pattern", 6)
        out["layer_types"] = ["full_attention" if (i + 1) % p == 0 else "sliding_attention" for i in range(n)]
    out.setdefault("rope_local_base_freq", 10000.0)
    return out


def _qwen1(cfg: dict) -> dict:
    out = _rename(cfg, [("layer_norm_epsilon", "norm_eps"), ("rotary_emb_base", "rope_theta"),
                        ("rotary_pct", "partial_rotary_factor"), ("seq_length", "max_position_embeddings")])
    if isinstance(cfg.get("intermediate_size"), int):
        out["intermediate_size"] = cfg["intermediate_size"] // 2  # w1/w2 are half of it wide
    if cfg.get("kv_channels"):
        out["head_dim"] = cfg["kv_channels"]
    return out


def _qwen_windows(cfg: dict) -> dict:
    """Qwen2-family sliding windows: off unless use_sliding_window; then layers from max_window_layers
    on slide (transformers' Qwen2Config.layer_types)."""
    out = dict(cfg)
    use = bool(cfg.get("use_sliding_window", False))
    out["use_sliding_window"] = use
    n = cfg.get("num_hidden_layers")
    if use and cfg.get("sliding_window") and "layer_types" not in cfg and isinstance(n, int):
        mwl = cfg.get("max_window_layers", n)
        mwl = n if not isinstance(mwl, int) else mwl
        out["layer_types"] = ["sliding_attention" if i >= mwl else "full_attention" for i in range(n)]
    return out


def _baichuan_13b(cfg: dict) -> bool:
    # Baichuan's remote code picks the position encoding by size: the 13B models (hidden 5120) use
    # ALiBi, the 7B ones RoPE; their configs carry no other sign of it.
    return cfg.get("hidden_size") == 5120


def _baichuan(cfg: dict) -> dict:
    out = _rename(cfg, [("model_max_length", "max_position_embeddings")])
    out["lm_head_norm"] = "z_loss_weight" in cfg  # Baichuan2's NormHead (Baichuan-1 has no such key)
    if _baichuan_13b(cfg):
        out["alibi"] = "bloom"  # the same slopes (Press et al., interleaved for 40 heads)
    return out


def _baichuan_variant(cfg: dict) -> dict:
    return {"position": "alibi"} if _baichuan_13b(cfg) else {}


def _exaone(cfg: dict) -> dict:
    return _rename(cfg, [("num_layers", "num_hidden_layers"), ("layer_norm_epsilon", "norm_eps")])


def _minicpm(cfg: dict) -> dict:
    out = dict(cfg)
    n, D = cfg.get("num_hidden_layers"), cfg.get("hidden_size")
    out["embed_scale"] = float(cfg.get("scale_emb", 1.0))
    if cfg.get("scale_depth") is not None and isinstance(n, int):
        out["residual_scale"] = float(cfg["scale_depth"]) / math.sqrt(n)
    if cfg.get("dim_model_base") and isinstance(D, int):
        out["logit_scale"] = float(cfg["dim_model_base"]) / D
    return out


def _minicpm3(cfg: dict) -> dict:
    out = _minicpm(cfg)
    out["rope_interleave"] = False  # MiniCPM3 rotates q_pe / k_pe in rotate_half form
    return out


def _opt(cfg: dict) -> dict:
    out = _rename(cfg, [("ffn_dim", "intermediate_size"), ("activation_function", "hidden_act")])
    out["norm_eps"] = 1e-5
    out["pos_offset"] = 2
    if cfg.get("do_layer_norm_before", True) is False:
        out["unsupported"] = "OPT with do_layer_norm_before=false (post-norm, OPT-350m)"
    wp = cfg.get("word_embed_proj_dim")
    if wp is not None and wp != cfg.get("hidden_size"):
        out["unsupported"] = "OPT with word_embed_proj_dim != hidden_size (project_in/out, OPT-350m)"
    return out


def _bloom(cfg: dict) -> dict:
    out = _rename(cfg, [("n_embed", "hidden_size"), ("n_head", "num_attention_heads"),
                        ("n_layer", "num_hidden_layers"), ("layer_norm_epsilon", "norm_eps"),
                        ("seq_length", "max_position_embeddings")])
    if isinstance(out.get("hidden_size"), int):
        out.setdefault("intermediate_size", 4 * out["hidden_size"])
    out["hidden_act"] = "gelu_tanh"
    out["alibi"] = "bloom"
    out.setdefault("max_position_embeddings", 2048)
    if cfg.get("apply_residual_connection_post_layernorm"):
        out["unsupported"] = "BLOOM with apply_residual_connection_post_layernorm=true"
    return out


def _mpt(cfg: dict) -> dict:
    out = _rename(cfg, [("d_model", "hidden_size"), ("n_heads", "num_attention_heads"),
                        ("n_layers", "num_hidden_layers"), ("max_seq_len", "max_position_embeddings")])
    D = out.get("hidden_size")
    if isinstance(D, int):
        out["intermediate_size"] = int(cfg.get("expansion_ratio", 4) * D)
    ac = cfg.get("attn_config") or {}
    out["norm_eps"] = cfg.get("layer_norm_epsilon", 1e-5)
    out["hidden_act"] = "gelu"
    out["tie_word_embeddings"] = True
    if ac.get("alibi", True):
        out["alibi"] = "mpt"
        out["alibi_bias_max"] = ac.get("alibi_bias_max", 8)
    else:
        out["unsupported"] = "MPT without ALiBi (learned positions)"
    if ac.get("qk_ln"):
        out["unsupported"] = "MPT with attn_config.qk_ln"
    if ac.get("clip_qkv"):
        out["clip_qkv"] = float(ac["clip_qkv"])
    if ac.get("softmax_scale"):
        out["attn_scale"] = float(ac["softmax_scale"])
    return out


def _falcon(cfg: dict) -> dict:
    out = _rename(cfg, [("n_embed", "hidden_size"), ("n_head", "num_attention_heads"),
                        ("n_layer", "num_hidden_layers"), ("layer_norm_epsilon", "norm_eps"),
                        ("ffn_hidden_size", "intermediate_size")])
    D, H = out.get("hidden_size"), out.get("num_attention_heads")
    if isinstance(D, int):
        out.setdefault("intermediate_size", 4 * D)
    new = _falcon_new(cfg)
    if new:
        out["num_key_value_heads"] = cfg.get("num_kv_heads", cfg.get("n_head_kv", H))
    elif cfg.get("multi_query", cfg.get("model_type") == "RefinedWebModel"):
        out["num_key_value_heads"] = 1
    else:
        out["num_key_value_heads"] = H
    out["hidden_act"] = cfg.get("activation", "gelu")
    if cfg.get("alibi"):  # Falcon-RW: BLOOM's slopes, added before the 1/sqrt(d) scaling
        out["alibi"] = "bloom"
        if isinstance(D, int) and isinstance(H, int) and H and D % H == 0:
            out["alibi_scale"] = (D // H) ** -0.5
    out.setdefault("max_position_embeddings", 2048)
    return out


def _falcon_new(cfg: dict) -> bool:
    if cfg.get("model_type") == "RefinedWeb":
        return True
    return bool(cfg.get("new_decoder_architecture", False))


def _falcon_variant(cfg: dict) -> dict:
    out = _falcon_layout(cfg)
    if cfg.get("alibi"):
        out["position"] = "alibi"
    return out


def _falcon_layout(cfg: dict) -> dict:
    if _falcon_new(cfg):
        if cfg.get("num_ln_in_parallel_attn", 2) == 1:
            return {"block": "parallel", "input_norm": "input_layernorm", "post_attn_norm": None,
                    "qkv_layout": "groups"}
        return {"block": "parallel2", "input_norm": "ln_attn", "post_attn_norm": "ln_mlp", "qkv_layout": "groups"}
    mq = cfg.get("multi_query", cfg.get("model_type") == "RefinedWebModel")
    layout = "concat" if mq else "heads"
    if cfg.get("parallel_attn", True):
        return {"block": "parallel", "post_attn_norm": None, "qkv_layout": layout}
    return {"block": "sequential", "qkv_layout": layout}


def _gpt2_keys(cfg: dict) -> dict:
    """GPT-2 style keys (n_embd, n_head, n_layer, n_inner, ...) -> canonical ones."""
    out = _rename(cfg, [("n_embd", "hidden_size"), ("n_head", "num_attention_heads"), ("n_layer", "num_hidden_layers"),
                        ("layer_norm_epsilon", "norm_eps"), ("n_positions", "max_position_embeddings"),
                        ("activation_function", "hidden_act")])
    D = out.get("hidden_size")
    if isinstance(D, int):
        out["intermediate_size"] = cfg.get("n_inner") or 4 * D
    return out


def _gptj(cfg: dict) -> dict:
    out = _gpt2_keys(cfg)
    D = out.get("hidden_size")
    H = out.get("num_attention_heads")
    if cfg.get("rotary_dim") and isinstance(D, int) and isinstance(H, int) and H and D % H == 0:
        out["partial_rotary_factor"] = cfg["rotary_dim"] / (D // H)
    out["tie_word_embeddings"] = False
    return out


def _gpt_bigcode(cfg: dict) -> dict:
    out = _gpt2_keys(cfg)
    out["num_key_value_heads"] = 1 if cfg.get("multi_query", True) else out.get("num_attention_heads")
    out.setdefault("tie_word_embeddings", True)
    return out


def _gpt_bigcode_variant(cfg: dict) -> dict:
    # multi-query: [q (all heads); k; v]; multi-head: per head [q_h; k_h; v_h]
    return {} if cfg.get("multi_query", True) else {"qkv_layout": "heads"}


def _gpt_neox(cfg: dict) -> dict:
    out = _rename(cfg, [("layer_norm_eps", "norm_eps"), ("rotary_emb_base", "rope_theta"),
                        ("rotary_pct", "partial_rotary_factor")])
    _default_partial(out, 0.25)
    out.setdefault("hidden_act", "gelu")
    return out


def _gpt_neox_variant(cfg: dict) -> dict:
    if cfg.get("use_parallel_residual", True):
        return {}
    return {"block": "sequential"}


def _stablelm(cfg: dict) -> dict:
    out = _rename(cfg, [("layer_norm_eps", "norm_eps")])
    _default_partial(out, 0.25)
    return out


def _stablelm_variant(cfg: dict) -> dict:
    out = {}
    if cfg.get("use_parallel_residual", False):
        out.update(block="parallel", post_attn_norm=None)
    if cfg.get("qk_layernorm"):  # StableLM-2-12B: a bias-free LayerNorm per head, one module each
        out.update(q_norm="self_attn.q_layernorm", k_norm="self_attn.k_layernorm", qk_norm_per_head=True,
                   qk_norm_split=True)
    return out


def _starcoder2(cfg: dict) -> dict:
    out = _rename(cfg, [("norm_epsilon", "norm_eps")])
    out.setdefault("hidden_act", "gelu_pytorch_tanh")
    return out


def _cohere(cfg: dict) -> dict:
    out = _rename(cfg, [("layer_norm_eps", "norm_eps")])
    if cfg.get("logit_scale") is not None:
        out["logit_scale"] = float(cfg["logit_scale"])
    out.setdefault("tie_word_embeddings", True)
    return out


def _cohere_variant(cfg: dict) -> dict:
    if cfg.get("use_qk_norm"):  # Command R+: LayerNorm per head with a weight per head [H, d]
        return {"q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm", "qk_norm_per_head": True}
    return {}


def _glm4(cfg: dict) -> dict:
    out = dict(cfg)
    _default_partial(out, 0.5)
    return out


def _moe_common(cfg: dict, *, experts_key, topk_key, inter_key, norm_default, shared_key=None,
                shared_mult=1) -> dict:
    out = dict(cfg)
    n_exp = cfg.get(experts_key) or cfg.get("num_local_experts") or cfg.get("num_experts")
    if not n_exp and experts_key != "n_routed_experts":
        out["unsupported"] = f"a MoE config without {experts_key!r} (the number of experts)"
    out["moe"] = {
        "num_experts": n_exp, "top_k": cfg.get(topk_key),
        "moe_intermediate_size": cfg.get(inter_key), "norm_topk_prob": cfg.get("norm_topk_prob", norm_default),
        "shared_intermediate_size": (cfg.get(shared_key) or 0) * shared_mult if shared_key else 0,
        "scoring": "softmax", "routed_scaling_factor": 1.0, "n_group": 1, "topk_group": 1,
        "router_bias": False,
    }
    return out


def _mixtral(cfg: dict) -> dict:
    out = _moe_common(cfg, experts_key="num_local_experts", topk_key="num_experts_per_tok",
                      inter_key="intermediate_size", norm_default=True)
    out["moe"]["norm_topk_prob"] = True
    out["moe"]["dense_layers"] = []
    return out


def _qwen3_moe(cfg: dict) -> dict:
    out = _moe_common(_qwen_windows(cfg), experts_key="num_experts", topk_key="num_experts_per_tok",
                      inter_key="moe_intermediate_size", norm_default=False)
    n = cfg.get("num_hidden_layers") or 0
    only = set(cfg.get("mlp_only_layers") or [])
    step = cfg.get("decoder_sparse_step", 1) or 1
    out["moe"]["dense_layers"] = [i for i in range(n) if i in only or (i + 1) % step != 0]
    return out


def _deepseek(cfg: dict) -> dict:
    out = _moe_common(cfg, experts_key="n_routed_experts", topk_key="num_experts_per_tok",
                      inter_key="moe_intermediate_size", norm_default=False, shared_key="n_shared_experts",
                      shared_mult=cfg.get("moe_intermediate_size") or 0)
    m = out["moe"]
    v3 = cfg.get("model_type") == "deepseek_v3" or cfg.get("scoring_func") == "sigmoid"
    m["scoring"] = cfg.get("scoring_func", "sigmoid" if v3 else "softmax")
    m["routed_scaling_factor"] = float(cfg.get("routed_scaling_factor", 1.0) or 1.0)
    method = cfg.get("topk_method", "noaux_tc" if v3 else "greedy")
    if method in ("group_limited_greedy", "noaux_tc"):
        m["n_group"], m["topk_group"] = cfg.get("n_group", 1) or 1, cfg.get("topk_group", 1) or 1
    m["group_score"] = "top2sum" if method == "noaux_tc" else "max"
    # DeepSeek-V2's code renormalises OR scales by routed_scaling_factor; V3's does both
    m["scale_after_norm"] = v3
    m["router_bias"] = method == "noaux_tc"
    n = cfg.get("num_hidden_layers") or 0
    k = cfg.get("first_k_dense_replace", 0) or 0
    freq = cfg.get("moe_layer_freq", 1) or 1
    if cfg.get("n_routed_experts"):
        m["dense_layers"] = [i for i in range(n) if not (i >= k and i % freq == 0)]
    else:
        m["dense_layers"] = list(range(n))
    out["mla"] = {"q_lora_rank": cfg.get("q_lora_rank"), "kv_lora_rank": cfg.get("kv_lora_rank"),
                  "qk_nope_head_dim": cfg.get("qk_nope_head_dim"), "qk_rope_head_dim": cfg.get("qk_rope_head_dim"),
                  "v_head_dim": cfg.get("v_head_dim")}
    out["rope_interleave"] = cfg.get("rope_interleave", True)
    return out


def _minicpm3_mla(cfg: dict) -> dict:
    out = _minicpm3(cfg)
    D, H = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    out["mla"] = {"q_lora_rank": cfg.get("q_lora_rank"), "kv_lora_rank": cfg.get("kv_lora_rank"),
                  "qk_nope_head_dim": cfg.get("qk_nope_head_dim"), "qk_rope_head_dim": cfg.get("qk_rope_head_dim"),
                  "v_head_dim": cfg.get("v_head_dim") or ((D // H) if isinstance(D, int) and H else None)}
    return out


# ---- rows --------------------------------------------------------------------------------------

LLAMA = ArchSpec("llama", "LlamaForCausalLM", fusable=True)
_LLAVA_PREFIXES = ((("language_model.model.", "model.language_model."), ("language_model.lm_head", "lm_head")),)
_GEMMA3_PREFIXES = _LLAVA_PREFIXES
_QWEN_VL_PREFIXES = ((("model.layers", "model.language_model.layers"), ("model.embed_tokens", "model.language_model.embed_tokens"),
                      ("model.norm", "model.language_model.norm")),)


def _lm(prefix: str, **kw) -> dict:
    """Names of a language model nested under `prefix` (multimodal checkpoints)."""
    return dict(layers_prefix=f"{prefix}model.layers", embed=f"{prefix}model.embed_tokens.weight",
                final_norm=f"{prefix}model.norm.weight", lm_head=f"{prefix}lm_head.weight", **kw)


_GPT = dict(layers_prefix="transformer.h", embed="transformer.wte.weight", final_norm="transformer.ln_f.weight")

TABLE = [
    LLAMA,
    ArchSpec("aquila", "AquilaForCausalLM", fusable=True),
    ArchSpec("mistral", "MistralForCausalLM", qkv_bias=False, o_bias=False, mlp_bias=False, fusable=True),
    # Qwen2: q/k/v always carry a bias, o_proj never.
    ArchSpec("qwen2", "Qwen2ForCausalLM", qkv_bias=True, o_bias=False, mlp_bias=False, fusable=True,
             config_adapter=_qwen_windows),
    # Qwen3: per-head RMSNorm on q and k before RoPE; optional attention bias.
    ArchSpec("qwen3", "Qwen3ForCausalLM", q_norm="self_attn.q_norm", k_norm="self_attn.k_norm", mlp_bias=False,
             fusable=True, config_adapter=_qwen_windows),
    ArchSpec("Yi", "YiForCausalLM", input_norm="ln1", post_attn_norm="ln2", qkv_bias=False, o_bias=False,
             mlp_bias=False),
    ArchSpec("exaone", "ExaoneForCausalLM", **_GPT, input_norm="ln_1", post_attn_norm="ln_2",
             q="attn.attention.q_proj", k="attn.attention.k_proj", v="attn.attention.v_proj",
             o="attn.attention.out_proj", gate="mlp.c_fc_0", up="mlp.c_fc_1", down="mlp.c_proj",
             qkv_bias=False, o_bias=False, mlp_bias=False, config_adapter=_exaone),
    ArchSpec("qwen", "QWenLMHeadModel", **_GPT, input_norm="ln_1", post_attn_norm="ln_2", qkv="attn.c_attn",
             o="attn.c_proj", gate="mlp.w2", up="mlp.w1", down="mlp.c_proj", qkv_bias=True, o_bias=False,
             mlp_bias=False, config_adapter=_qwen1),
    ArchSpec("baichuan", "BaichuanForCausalLM", qkv="self_attn.W_pack", qkv_bias=False, o_bias=False, mlp_bias=False,
             config_adapter=_baichuan, variant=_baichuan_variant),
    ArchSpec("internlm2", "InternLM2ForCausalLM", embed="model.tok_embeddings.weight", lm_head="output.weight",
             input_norm="attention_norm", post_attn_norm="ffn_norm", qkv="attention.wqkv", qkv_layout="groups",
             o="attention.wo", gate="feed_forward.w1", up="feed_forward.w3", down="feed_forward.w2",
             qkv_bias="bias", o_bias="bias", mlp_bias=False),
    ArchSpec("minicpm", "MiniCPMForCausalLM", qkv_bias=False, o_bias=False, mlp_bias=False, config_adapter=_minicpm),
    ArchSpec("minicpm3", "MiniCPM3ForCausalLM", attn="mla", qkv_bias=False, o_bias=False, mlp_bias=False,
             config_adapter=_minicpm3_mla),
    ArchSpec("gemma", "GemmaForCausalLM", norm_kind="rms_unit", act="gelu_tanh", config_adapter=_gemma),
    ArchSpec("gemma2", "Gemma2ForCausalLM", norm_kind="rms_unit", act="gelu_tanh", post_attn_norm="pre_feedforward_layernorm",
             attn_out_norm="post_attention_layernorm", mlp_out_norm="post_feedforward_layernorm", config_adapter=_gemma2),
    ArchSpec("gemma3_text", "Gemma3ForCausalLM", norm_kind="rms_unit", act="gelu_tanh",
             post_attn_norm="pre_feedforward_layernorm", attn_out_norm="post_attention_layernorm",
             mlp_out_norm="post_feedforward_layernorm", q_norm="self_attn.q_norm", k_norm="self_attn.k_norm",
             config_adapter=_gemma3),
    ArchSpec("phi3", "Phi3ForCausalLM", qkv="self_attn.qkv_proj", mlp="gated_fused", gate_up="mlp.gate_up_proj",
             qkv_bias=False, o_bias=False, mlp_bias=False),
    ArchSpec("phi3_v", "Phi3VForCausalLM", qkv="self_attn.qkv_proj", mlp="gated_fused", gate_up="mlp.gate_up_proj",
             qkv_bias=False, o_bias=False, mlp_bias=False,
             not_converted=("model.vision_embed_tokens",)),
    ArchSpec("stablelm", "StableLmForCausalLM", norm_kind="layernorm", qkv_bias="use_qkv_bias", o_bias=False,
             mlp_bias=False, config_adapter=_stablelm, variant=_stablelm_variant),
    ArchSpec("starcoder2", "Starcoder2ForCausalLM", norm_kind="layernorm", mlp="plain", up="mlp.c_fc",
             down="mlp.c_proj", act="gelu_tanh", qkv_bias="use_bias", o_bias="use_bias", mlp_bias="use_bias",
             config_adapter=_starcoder2),
    ArchSpec("cohere", "CohereForCausalLM", norm_kind="layernorm", block="parallel", post_attn_norm=None,
             position="rope_interleaved", config_adapter=_cohere, variant=_cohere_variant),
    ArchSpec("glm4", "Glm4ForCausalLM", post_attn_norm="post_attention_layernorm",
             attn_out_norm="post_self_attn_layernorm", mlp_out_norm="post_mlp_layernorm", mlp="gated_fused",
             gate_up="mlp.gate_up_proj", position="rope_interleaved", qkv_bias="attention_bias", o_bias=False,
             mlp_bias=False, config_adapter=_glm4),
    ArchSpec("opt", "OPTForCausalLM", layers_prefix="model.decoder.layers", embed="model.decoder.embed_tokens.weight",
             final_norm="model.decoder.final_layer_norm.weight", pos_embed="model.decoder.embed_positions.weight",
             position="learned", norm_kind="layernorm", input_norm="self_attn_layer_norm",
             post_attn_norm="final_layer_norm", o="self_attn.out_proj", mlp="plain", up="fc1", down="fc2",
             act="relu", qkv_bias="enable_bias", o_bias="enable_bias", mlp_bias="enable_bias", config_adapter=_opt,
             alt_prefixes=((("model.decoder.", "decoder."),),)),  # facebook's own files drop "model."
    ArchSpec("bloom", "BloomForCausalLM", layers_prefix="transformer.h", embed="transformer.word_embeddings.weight",
             final_norm="transformer.ln_f.weight", embed_norm="transformer.word_embeddings_layernorm.weight",
             position="alibi", norm_kind="layernorm", qkv="self_attention.query_key_value", qkv_layout="heads",
             o="self_attention.dense", mlp="plain", up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h",
             act="gelu_tanh", qkv_bias=True, o_bias=True, mlp_bias=True, config_adapter=_bloom,
             alt_prefixes=((("transformer.", ""),),)),  # bigscience's own files drop "transformer."
    ArchSpec("mpt", "MPTForCausalLM", layers_prefix="transformer.blocks", embed="transformer.wte.weight",
             final_norm="transformer.norm_f.weight", position="alibi", norm_kind="layernorm", input_norm="norm_1",
             post_attn_norm="norm_2", qkv="attn.Wqkv", o="attn.out_proj", mlp="plain", up="ffn.up_proj",
             down="ffn.down_proj", act="gelu", qkv_bias=False, o_bias=False, mlp_bias=False, config_adapter=_mpt),
    ArchSpec("falcon", "FalconForCausalLM", layers_prefix="transformer.h", embed="transformer.word_embeddings.weight",
             final_norm="transformer.ln_f.weight", norm_kind="layernorm", qkv="self_attention.query_key_value",
             o="self_attention.dense", mlp="plain", up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h", act="gelu",
             qkv_bias="bias", o_bias="bias", mlp_bias="bias", config_adapter=_falcon, variant=_falcon_variant),
    ArchSpec("gptj", "GPTJForCausalLM", **_GPT, block="parallel", norm_kind="layernorm", input_norm="ln_1",
             post_attn_norm=None, position="rope_interleaved", q="attn.q_proj", k="attn.k_proj", v="attn.v_proj",
             o="attn.out_proj", mlp="plain", up="mlp.fc_in", down="mlp.fc_out", act="gelu_tanh",
             qkv_bias=False, o_bias=False, mlp_bias=True, config_adapter=_gptj),
    ArchSpec("gpt_bigcode", "GPTBigCodeForCausalLM", **_GPT, pos_embed="transformer.wpe.weight", position="learned",
             norm_kind="layernorm", input_norm="ln_1", post_attn_norm="ln_2", qkv="attn.c_attn", o="attn.c_proj",
             mlp="plain", up="mlp.c_fc", down="mlp.c_proj", act="gelu_tanh", qkv_bias=True, o_bias=True,
             mlp_bias=True, config_adapter=_gpt_bigcode, variant=_gpt_bigcode_variant),
    ArchSpec("gpt_neox", "GPTNeoXForCausalLM", layers_prefix="gpt_neox.layers", embed="gpt_neox.embed_in.weight",
             final_norm="gpt_neox.final_layer_norm.weight", lm_head="embed_out.weight", block="parallel2",
             norm_kind="layernorm", qkv="attention.query_key_value", qkv_layout="heads", o="attention.dense",
             mlp="plain", up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h", act="gelu", qkv_bias=True, o_bias=True,
             mlp_bias=True, config_adapter=_gpt_neox, variant=_gpt_neox_variant),
    ArchSpec("mixtral", "MixtralForCausalLM", mlp="moe", router="block_sparse_moe.gate", experts="block_sparse_moe.experts",
             expert_linears=("w1", "w3", "w2"), qkv_bias=False, o_bias=False, mlp_bias=False, config_adapter=_mixtral),
    ArchSpec("qwen3_moe", "Qwen3MoeForCausalLM", mlp="moe", q_norm="self_attn.q_norm", k_norm="self_attn.k_norm",
             mlp_bias=False, config_adapter=_qwen3_moe),
    ArchSpec("deepseek_v2", "DeepseekV2ForCausalLM", attn="mla", mlp="moe", shared_experts="mlp.shared_experts",
             qkv_bias=False, o_bias=False, mlp_bias=False, config_adapter=_deepseek),
    ArchSpec("deepseek_v3", "DeepseekV3ForCausalLM", attn="mla", mlp="moe", shared_experts="mlp.shared_experts",
             router_bias="mlp.gate.e_score_correction_bias", qkv_bias=False, o_bias=False, mlp_bias=False,
             config_adapter=_deepseek),
    # Multimodal: the language decoder only.
    ArchSpec("llava", "LlavaForConditionalGeneration", **_lm("language_model."), alt_prefixes=_LLAVA_PREFIXES,
             not_converted=("vision_tower", "multi_modal_projector")),
    ArchSpec("llava_next", "LlavaNextForConditionalGeneration", **_lm("language_model."), alt_prefixes=_LLAVA_PREFIXES,
             not_converted=("vision_tower", "multi_modal_projector", "image_newline")),
    ArchSpec("qwen2_vl", "Qwen2VLForConditionalGeneration", alt_prefixes=_QWEN_VL_PREFIXES, qkv_bias=True, o_bias=False,
             mlp_bias=False, not_converted=("visual",), config_adapter=_qwen_windows),
    ArchSpec("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", alt_prefixes=_QWEN_VL_PREFIXES, qkv_bias=True,
             o_bias=False, mlp_bias=False, not_converted=("visual",), config_adapter=_qwen_windows),
    ArchSpec("qwen2_5_omni", "Qwen2_5OmniForConditionalGeneration", **_lm("thinker."), qkv_bias=True, o_bias=False,
             mlp_bias=False, not_converted=("thinker.visual", "thinker.audio_tower", "talker", "token2wav"), config_adapter=_qwen_windows),
    ArchSpec("gemma3", "Gemma3ForConditionalGeneration", **_lm("language_model."), alt_prefixes=_GEMMA3_PREFIXES,
             norm_kind="rms_unit", act="gelu_tanh", post_attn_norm="pre_feedforward_layernorm",
             attn_out_norm="post_attention_layernorm", mlp_out_norm="post_feedforward_layernorm",
             q_norm="self_attn.q_norm", k_norm="self_attn.k_norm", config_adapter=_gemma3,
             not_converted=("vision_tower", "multi_modal_projector")),
]

# Falcon's older model_type names (Hub remote code of the first Falcon releases).
TABLE += [replace(TABLE[[s.model_type for s in TABLE].index("falcon")], model_type=t, hf_architecture="RWForCausalLM")
          for t in ("RefinedWeb", "RefinedWebModel")]
