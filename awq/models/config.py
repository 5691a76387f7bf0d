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
    rms_norm_eps: float
    rope_theta: float
    rotary_dim: int
    rope_scaling: Optional[dict]
    tie_word_embeddings: bool
    sliding_window: int  # 0 = none
    max_position_embeddings: int

    @classmethod
    def from_dict(cls, cfg: dict) -> "ModelConfig":
        if not isinstance(cfg, dict):
            raise ConfigError("config.json must hold a JSON object")
        # Multimodal / nested configs keep the decoder under text_config.
        text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
        model_type = cfg.get("model_type")
        if not isinstance(model_type, str) or not model_type:
            raise ConfigError("config.json: missing 'model_type'")
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
        if head_dim % 2:
            raise ConfigError(f"config.json: head_dim must be even for rotary embeddings, got {head_dim}")
        partial = _float(text, "partial_rotary_factor", 1.0)
        if partial > 1:
            raise ConfigError(f"config.json: partial_rotary_factor must be in (0, 1], got {partial}")
        rot = int(head_dim * partial)
        rot -= rot % 2
        if rot < 2:
            raise ConfigError(f"config.json: partial_rotary_factor {partial} leaves no rotary "
                              f"dimension of head_dim {head_dim}")
        scaling = text.get("rope_scaling")
        theta = text.get("rope_theta")
        # transformers 5 moves theta and scaling under rope_parameters.
        params = text.get("rope_parameters")
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
        out = cls(
            raw=cfg,
            model_type=model_type,
            hidden_size=hidden,
            intermediate_size=_int(text, "intermediate_size"),
            num_layers=_int(text, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            vocab_size=_int(text, "vocab_size"),
            rms_norm_eps=_float(text, "rms_norm_eps", 1e-6),
            rope_theta=theta,
            rotary_dim=rot,
            rope_scaling=scaling,
            tie_word_embeddings=_bool(cfg, "tie_word_embeddings", _bool(text, "tie_word_embeddings", False)),
            sliding_window=sliding,
            max_position_embeddings=_int(text, "max_position_embeddings", 2048),
        )
        out.inv_freq()  # validates rope_scaling now, at load, not at the first forward
        return out

    # ---- rotary tables ------------------------------------------------------------------
    def inv_freq(self) -> np.ndarray:
        """Rotary inverse frequencies [rot/2] (float64), with rope scaling applied."""
        with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
            inv = self._scaled_inv_freq()
        # extreme (finite) theta or scaling factors overflow to Inf / NaN angles
        if not np.all(np.isfinite(inv)):
            raise ConfigError(f"config.json: rope_theta {self.rope_theta} with rope_scaling "
                              f"{self.rope_scaling!r} gives non-finite RoPE frequencies")
        return inv

    def _scaled_inv_freq(self) -> np.ndarray:
        rot = self.rotary_dim
        inv = 1.0 / (self.rope_theta ** (np.arange(0, rot, 2, dtype=np.float64) / rot))
        sc = self.rope_scaling
        if not sc:
            return inv
        kind = sc.get("rope_type", sc.get("type", "default"))
        if kind == "default":
            return inv
        if kind == "linear":
            return inv / _float(sc, "factor")
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
            return np.where(medium, smoothed, scaled)
        raise ConfigError(f"rope_scaling type {kind!r} isn't supported yet (supported: default, linear, llama3)")

    def rope_tables(self, positions: np.ndarray):
        """cos, sin float32 [len(positions), rot/2] for absolute positions."""
        ang = np.asarray(positions, dtype=np.float64)[:, None] * self.inv_freq()[None, :]
        return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
