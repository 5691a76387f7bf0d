"""Model hyper-parameters read from an HF config.json, validated once.

Every value the forward needs is checked here, so a bad config fails at load time with a message
naming the key, never as a shape error deep in a kernel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


class ConfigError(ValueError):
    """A config.json value is missing, of the wrong type, or inconsistent."""


def _int(cfg: dict, key: str, default=None, minimum: int = 1) -> int:
    v = cfg.get(key, default)
    if v is None:
        raise ConfigError(f"config.json: missing required key {key!r}")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"config.json: {key!r} must be an integer, got {v!r}")
    if v < minimum:
        raise ConfigError(f"config.json: {key!r} must be >= {minimum}, got {v}")
    return v


def _bool(cfg: dict, key: str, default: bool) -> bool:
    v = cfg.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ConfigError(f"config.json: {key} must be true or false, got {v!r}")
    return v


def _float(cfg: dict, key: str, default=None, positive: bool = True) -> float:
    v = cfg.get(key, default)
    if v is None:
        raise ConfigError(f"config.json: missing required key {key!r}")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"config.json: {key!r} must be a finite number, got {v!r}")
    try:
        f = float(v)
    except OverflowError:  # a JSON integer past the float range
        f = math.inf
    if not math.isfinite(f):
        raise ConfigError(f"config.json: {key!r} must be a finite number, got {v!r}")
    if positive and f <= 0:
        raise ConfigError(f"config.json: {key!r} must be > 0, got {v}")
    return f


ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh", "relu": "relu"}


def text_config(cfg: dict) -> dict:
    """The decoder's config: top level, or text_config / thinker_config.text_config (multimodal)."""
    if isinstance(cfg.get("thinker_config"), dict):
        inner = cfg["thinker_config"]
        return inner["text_config"] if isinstance(inner.get("text_config"), dict) else inner
    if isinstance(cfg.get("text_config"), dict):
        t = dict(cfg["text_config"])
        for k in ("vocab_size", "tie_word_embeddings"):  # some keep these at the top level
            if k not in t and k in cfg:
                t[k] = cfg[k]
        return t
    return cfg


def _opt_float(cfg: dict, key: str, positive: bool = True) -> Optional[float]:
    v = cfg.get(key)
    if v is None:
        return None
    return _float(cfg, key, positive=positive)


def _moe_config(m, num_layers: int) -> Optional[dict]:
    if m is None:
        return None
    if not m.get("num_experts"):
        return None
    out = dict(m)
    for key in ("num_experts", "top_k", "moe_intermediate_size"):
        _int(m, key)
    if m["top_k"] > m["num_experts"]:
        raise ConfigError(f"config.json: experts per token ({m['top_k']}) exceed the number of experts "
                          f"({m['num_experts']})")
    if m.get("n_group", 1) < 1 or m["num_experts"] % m.get("n_group", 1):
        raise ConfigError(f"config.json: n_group {m.get('n_group')} does not divide the {m['num_experts']} experts")
    if not (1 <= m.get("topk_group", 1) <= m.get("n_group", 1)):
        raise ConfigError(f"config.json: topk_group {m.get('topk_group')} must be in 1..n_group")
    if m.get("scoring") not in ("softmax", "sigmoid"):
        raise ConfigError(f"config.json: scoring_func {m.get('scoring')!r} isn't supported (softmax, sigmoid)")
    out["dense_layers"] = sorted(set(int(i) for i in m.get("dense_layers", [])))
    return out


def _mla_config(m) -> Optional[dict]:
    if not m or not m.get("kv_lora_rank"):
        return None
    out = {}
    for key in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
        out[key] = _int(m, key)
    q = m.get("q_lora_rank")
    out["q_lora_rank"] = 0 if q in (None, 0) else _int(m, "q_lora_rank")
    if out["qk_rope_head_dim"] % 2:
        raise ConfigError("config.json: qk_rope_head_dim must be even")
    return out


@dataclass
class ModelConfig:
    raw: dict
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float  # the eps of every norm (RMSNorm or LayerNorm)
    rope_theta: float
    rotary_dim: int
    rope_scaling: Optional[dict]
    tie_word_embeddings: bool
    sliding_window: int  # 0 = none
    max_position_embeddings: int
    act: str = "silu"
    attn_scale: Optional[float] = None  # None: head_dim ** -0.5
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    embed_scale: Optional[float] = None
    residual_scale: Optional[float] = None
    logit_scale: Optional[float] = None
    alibi: Optional[str] = None  # "bloom" | "mpt"
    alibi_bias_max: float = 8.0
    alibi_scale: float = 1.0  # slopes multiplied by this (Falcon-RW adds ALiBi before the 1/sqrt(d))
    clip_qkv: Optional[float] = None
    pos_offset: int = 0
    layer_types: Optional[list] = None
    rope_local_theta: Optional[float] = None
    lm_head_norm: bool = False
    rope_interleave: bool = True
    moe: Optional[dict] = None
    mla: Optional[dict] = None
    original_max_position_embeddings: Optional[int] = None  # longrope (Phi-3, MiniCPM3)

    @classmethod
    def from_dict(cls, cfg: dict, adapter=None, default_act: str = "silu",
                  default_eps: float = 1e-6) -> "ModelConfig":
        """cfg: config.json; adapter: the architecture row's key renaming; default_act / default_eps:
        what the architecture uses when config.json names no activation / eps."""
        if not isinstance(cfg, dict):
            raise ConfigError("config.json must hold a JSON object")
        model_type = cfg.get("model_type")
        if not isinstance(model_type, str) or not model_type:
            raise ConfigError("config.json: missing 'model_type'")
        text = text_config(cfg)
        if adapter is not None:
            try:
                text = adapter(text)
            except (TypeError, ValueError, KeyError, ZeroDivisionError) as e:
                raise ConfigError(f"config.json: unusable values for {model_type} ({type(e).__name__}: {e})") from None
        if text.get("unsupported"):
            raise ConfigError(f"config.json: {text['unsupported']} isn't supported yet")
        hidden = _int(text, "hidden_size")
        heads = _int(text, "num_attention_heads")
        kv = _int(text, "num_key_value_heads", heads)
        if heads % kv:
            raise ConfigError(f"config.json: num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv})")
        head_dim = text.get("head_dim")
        if head_dim is None:
            if hidden % heads:
                raise ConfigError(f"config.json: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
            head_dim = hidden // heads
        head_dim = _int({"head_dim": head_dim}, "head_dim")
        mla = _mla_config(text.get("mla"))
        rope_dim = mla["qk_rope_head_dim"] if mla else head_dim
        if rope_dim % 2:
            raise ConfigError(f"config.json: head_dim must be even for rotary embeddings, got {head_dim}")
        rp = text.get("rope_parameters") if isinstance(text.get("rope_parameters"), dict) else {}
        if "partial_rotary_factor" not in text and "partial_rotary_factor" in rp:  # transformers 5 configs
            text = dict(text, partial_rotary_factor=rp["partial_rotary_factor"])
        partial = _float(text, "partial_rotary_factor", 1.0)
        if partial > 1:
            raise ConfigError(f"config.json: partial_rotary_factor must be in (0, 1], got {partial}")
        rot = int(rope_dim * partial)
        rot -= rot % 2
        if rot < 2:
            raise ConfigError(f"config.json: partial_rotary_factor {partial} leaves no rotary "
                              f"dimension of head_dim {rope_dim}")
        scaling = text.get("rope_scaling")
        theta = text.get("rope_theta")
        # transformers 5 moves theta and scaling under rope_parameters.
        params = text.get("rope_parameters")
        local_theta = text.get("rope_local_base_freq")
        if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):  # per layer kind (Gemma3)
            local = params.get("sliding_attention")
            if isinstance(local, dict) and local.get("rope_theta"):
                local_theta = local["rope_theta"]
            params = params["full_attention"]
        if isinstance(params, dict):
            theta = params.get("rope_theta", theta)
            if params.get("rope_type", "default") != "default":
                scaling = params
        if theta is None:
            theta = 10000.0
        theta = _float({"rope_theta": theta}, "rope_theta")
        if scaling is not None and not isinstance(scaling, dict):
            raise ConfigError(f"config.json: rope_scaling must be an object or null, got {scaling!r}")
        sw = text.get("sliding_window")
        use_sw = _bool(text, "use_sliding_window", True)
        sliding = int(sw) if (isinstance(sw, int) and not isinstance(sw, bool) and sw > 0 and use_sw) else 0
        eps = None
        for key in ("norm_eps", "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"):
            if text.get(key) is not None:
                eps = _float(text, key)  # > 0: a zero eps divides by zero on an all-zero row
                break
        act_name = text.get("hidden_act", None)
        act = ACTIVATIONS.get(default_act, default_act) if act_name is None else ACTIVATIONS.get(act_name)
        if act is None:
            raise ConfigError(f"config.json: activation {act_name!r} isn't supported yet "
                              f"(supported: {sorted(ACTIVATIONS)})")
        layer_types = text.get("layer_types")
        n_layers = _int(text, "num_hidden_layers")
        if layer_types is not None:
            if not isinstance(layer_types, list) or len(layer_types) != n_layers or not all(
                    t in ("full_attention", "sliding_attention") for t in layer_types):
                raise ConfigError(f"config.json: layer_types must list 'full_attention' / 'sliding_attention' "
                                  f"for each of the {n_layers} layers")
        tie = cfg.get("tie_word_embeddings")
        if tie is None:
            tie = text.get("tie_word_embeddings")
        out = cls(
            raw=cfg,
            model_type=model_type,
            hidden_size=hidden,
            intermediate_size=_int(text, "intermediate_size", 1 if text.get("moe") else None),
            num_layers=n_layers,
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            vocab_size=_int(text, "vocab_size"),
            rms_norm_eps=default_eps if eps is None else eps,
            rope_theta=theta,
            rotary_dim=rot,
            rope_scaling=scaling,
            tie_word_embeddings=_bool({"tie_word_embeddings": tie}, "tie_word_embeddings", False),
            sliding_window=sliding,
            max_position_embeddings=_int(text, "max_position_embeddings", 2048),
            act=act,
            attn_scale=_opt_float(text, "attn_scale"),
            attn_softcap=_opt_float(text, "attn_logit_softcapping") or 0.0,
            final_softcap=_opt_float(text, "final_logit_softcapping") or 0.0,
            embed_scale=_opt_float(text, "embed_scale"),
            residual_scale=_opt_float(text, "residual_scale"),
            logit_scale=_opt_float(text, "logit_scale"),
            alibi=text.get("alibi"),
            alibi_bias_max=_float(text, "alibi_bias_max", 8.0),
            alibi_scale=_float(text, "alibi_scale", 1.0),
            clip_qkv=_opt_float(text, "clip_qkv"),
            pos_offset=int(text.get("pos_offset", 0)),
            layer_types=layer_types,
            rope_local_theta=_opt_float(text, "rope_local_base_freq"),
            lm_head_norm=bool(text.get("lm_head_norm", False)),
            rope_interleave=bool(text.get("rope_interleave", True)),
            moe=_moe_config(text.get("moe"), n_layers),
            mla=mla,
            original_max_position_embeddings=text.get("original_max_position_embeddings"),
        )
        if local_theta is not None:
            out.rope_local_theta = _float({"rope_local_base_freq": local_theta}, "rope_local_base_freq")
        out.inv_freq()  # validates rope_scaling now, at load, not at the first forward
        return out

    # ---- per-layer facts ------------------------------------------------------------------------
    def layer_is_local(self, i: int) -> bool:
        """A sliding-window layer of a model that alternates (Gemma2/3); all layers of a model with
        one sliding_window and no layer_types count as global."""
        return bool(self.layer_types) and self.layer_types[i] == "sliding_attention"

    def layer_window(self, i: int) -> int:
        if self.layer_types:
            return self.sliding_window if self.layer_types[i] == "sliding_attention" else 0
        return self.sliding_window

    def moe_layer(self, i: int) -> bool:
        return self.moe is not None and i not in self.moe["dense_layers"]

    def softmax_scale(self) -> float:
        if self.attn_scale is not None:
            return self.attn_scale
        if self.mla:
            scale = (self.mla["qk_nope_head_dim"] + self.mla["qk_rope_head_dim"]) ** -0.5
            sc = self.rope_scaling or {}
            if sc.get("mscale_all_dim") and float(sc.get("factor", 1)) > 1:  # DeepSeek's yarn
                m = 0.1 * float(sc["mscale_all_dim"]) * math.log(float(sc["factor"])) + 1.0
                scale *= m * m
            return scale
        return self.head_dim ** -0.5

    # ---- rotary tables ------------------------------------------------------------------
    def _freqs(self, local: bool = False, seq_len: int = 0):
        """(rotary inverse frequencies [rot/2] float64 with rope scaling applied, attention factor
        multiplying cos and sin). local: the sliding layers of a model with their own base (Gemma3's
        rope_local_base_freq, unscaled). seq_len: the call's longest position + 1 (longrope, dynamic)."""
        with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
            if local and self.rope_local_theta:
                rot = self.rotary_dim
                inv, att = 1.0 / (self.rope_local_theta ** (np.arange(0, rot, 2, dtype=np.float64) / rot)), 1.0
            else:
                inv, att = self._scaled_inv_freq(seq_len)
        # extreme (finite) theta or scaling factors overflow to Inf / NaN angles
        if not np.all(np.isfinite(inv)):
            raise ConfigError(f"config.json: rope_theta {self.rope_theta} with rope_scaling "
                              f"{self.rope_scaling!r} gives non-finite RoPE frequencies")
        return inv, att

    def inv_freq(self, local: bool = False, seq_len: int = 0) -> np.ndarray:
        """Rotary inverse frequencies [rot/2] (float64), with rope scaling applied (see _freqs)."""
        return self._freqs(local, seq_len)[0]

    def _yarn(self, sc: dict, inv_base: np.ndarray):
        rot = self.rotary_dim
        factor = _float(sc, "factor")

        def mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        att = sc.get("attention_factor")
        if att is None:
            m, mall = sc.get("mscale"), sc.get("mscale_all_dim")
            att = mscale(factor, m) / mscale(factor, mall) if (m and mall) else mscale(factor)
        beta_fast = float(sc.get("beta_fast") or 32)
        beta_slow = float(sc.get("beta_slow") or 1)
        old = float(sc.get("original_max_position_embeddings") or self.max_position_embeddings)
        base = self.rope_theta

        def corr_dim(n_rot):
            return (rot * math.log(old / (n_rot * 2 * math.pi))) / (2 * math.log(base))

        low, high = corr_dim(beta_fast), corr_dim(beta_slow)
        if sc.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, rot - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(rot // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extra = 1 - ramp
        inv = (inv_base / factor) * (1 - extra) + inv_base * extra
        return inv, float(att)

    def _longrope(self, sc: dict, long: bool):
        rot = self.rotary_dim
        top = self.original_max_position_embeddings
        if top:
            old, factor = float(top), self.max_position_embeddings / float(top)
        else:
            old = float(sc.get("original_max_position_embeddings") or self.max_position_embeddings)
            factor = float(sc.get("factor", 1.0) or 1.0)
        att = sc.get("attention_factor")
        if att is None:
            att = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(old))
        ext = sc.get("long_factor" if long else "short_factor")
        if not isinstance(ext, list) or len(ext) != rot // 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in ext):
            raise ConfigError(f"rope_scaling: longrope needs short_factor and long_factor lists of {rot // 2} "
                              "positive numbers")
        inv = 1.0 / (np.asarray(ext, np.float64) * self.rope_theta ** (np.arange(0, rot, 2, dtype=np.float64) / rot))
        return inv, float(att), old

    def _scaled_inv_freq(self, seq_len: int = 0):
        """(inverse frequencies, attention factor multiplying cos and sin). seq_len: the longest
        position + 1 of the call (longrope switches to its long factors past the original context)."""
        rot = self.rotary_dim
        inv = 1.0 / (self.rope_theta ** (np.arange(0, rot, 2, dtype=np.float64) / rot))
        sc = self.rope_scaling
        if not sc:
            return inv, 1.0
        kind = sc.get("rope_type", sc.get("type", "default"))
        if kind in ("default", "mrope"):
            # mrope (Qwen2-VL family) rotates three position streams (time, height, width) by sections
            # of the frequencies; for text, the only input awq's runtime takes, the three positions are
            # equal and mrope is exactly the plain rope.
            return inv, 1.0
        if kind == "linear":
            return inv / _float(sc, "factor"), 1.0
        if kind == "yarn":
            return self._yarn(sc, inv)
        if kind == "dynamic":  # dynamic NTK: the base grows once a call runs past the trained context
            factor = _float(sc, "factor")
            L = self.max_position_embeddings
            if seq_len > L:
                base = self.rope_theta * ((factor * seq_len / L) - (factor - 1)) ** (rot / max(rot - 2, 1))
                inv = 1.0 / (base ** (np.arange(0, rot, 2, dtype=np.float64) / rot))
            return inv, 1.0
        if kind in ("longrope", "su"):
            inv_s, att, old = self._longrope(sc, False)
            inv_l, att_l, _ = self._longrope(sc, True)  # validates the long factors too
            return (inv_l, att_l) if seq_len > old else (inv_s, att)
        if kind == "llama3":
            factor = _float(sc, "factor")
            low = _float(sc, "low_freq_factor")
            high = _float(sc, "high_freq_factor")
            old_ctx = _float(sc, "original_max_position_embeddings")
            if high <= low:
                raise ConfigError("rope_scaling: high_freq_factor must exceed low_freq_factor")
            low_wavelen = old_ctx / low
            high_wavelen = old_ctx / high
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
            smooth = (old_ctx / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return np.where(medium, smoothed, scaled), 1.0
        raise ConfigError(f"rope_scaling type {kind!r} isn't supported yet "
                          f"(supported: default, linear, dynamic, llama3, yarn, longrope)")

    def rope_attention_factor(self, local: bool = False) -> float:
        return self._freqs(local)[1]

    def rope_tables(self, positions: np.ndarray, local: bool = False):
        """cos, sin float32 [len(positions), rot/2] for absolute positions."""
        pos = np.asarray(positions, dtype=np.float64)
        n = int(pos.max()) + 1 if pos.size else 0
        inv, f = self._freqs(local, n)
        ang = pos[:, None] * inv[None, :]
        return (np.cos(ang) * f).astype(np.float32), (np.sin(ang) * f).astype(np.float32)
