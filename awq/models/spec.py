"""The architecture table: one declarative spec per model type.

Generic code (the calibration forward, the AWQ scale groups, the runtime, checkpoint I/O) reads
these rows and never asks "is this llama?". A new Llama-like architecture is a new row; a truly
different block (parallel attention+MLP, MoE, MLA) adds a block kind to `awq/runtime/layers.py`
and names it here.

A spec names, relative to one decoder layer (`{layers_prefix}.{i}.`):
  - the norms feeding attention and MLP, and the norm kind ("rms", or "rms_unit" for Gemma's 1+w);
  - the attention linears (q, k, v, o) and optional per-head q/k norms (Qwen3);
  - the MLP linears (gate, up, down) and activation;
  - the AWQ scaling groups (REFERENCE.md s2): (prev_op, linears sharing one input, module whose
    output defines the loss), with the GQA rule for v_proj -> o_proj;
and, model-wide, the embedding, final norm and lm_head tensor names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class ScaleGroup:
    """One AWQ scale search. `inspect` is a linear name, or "attn" / "mlp" for the whole block.
    `only_if_same_shape` is the GQA rule: v_proj -> o_proj only when both weights have one shape."""

    prev: str
    linears: Tuple[str, ...]
    inspect: str
    only_if_same_shape: bool = False


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    hf_architecture: str
    layers_prefix: str = "model.layers"
    embed: str = "model.embed_tokens.weight"
    final_norm: str = "model.norm.weight"
    lm_head: str = "lm_head.weight"
    block: str = "llama"  # block kind in awq/runtime/layers.py
    norm_kind: str = "rms"
    input_norm: str = "input_layernorm"
    post_attn_norm: str = "post_attention_layernorm"
    q: str = "self_attn.q_proj"
    k: str = "self_attn.k_proj"
    v: str = "self_attn.v_proj"
    o: str = "self_attn.o_proj"
    q_norm: Optional[str] = None
    k_norm: Optional[str] = None
    gate: str = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"
    act: str = "silu"
    # Whether q/k/v carry a bias: True, False, or the name of a boolean config key.
    qkv_bias: object = "attention_bias"
    o_bias: object = "attention_bias"
    mlp_bias: object = "mlp_bias"
    groups: Tuple[ScaleGroup, ...] = field(default=())

    # ---- derived names -------------------------------------------------------------------
    def linear_names(self) -> Tuple[str, ...]:
        """Every linear of one decoder layer, in forward order (all are quantized)."""
        return (self.q, self.k, self.v, self.o, self.gate, self.up, self.down)

    def norm_names(self) -> Tuple[str, ...]:
        names = [self.input_norm, self.post_attn_norm]
        names += [n for n in (self.q_norm, self.k_norm) if n]
        return tuple(names)

    def layer_prefix(self, i: int) -> str:
        return f"{self.layers_prefix}.{i}."

    def has_bias(self, which: str, config: dict) -> bool:
        flag = {"qkv": self.qkv_bias, "o": self.o_bias, "mlp": self.mlp_bias}[which]
        if isinstance(flag, bool):
            return flag
        return bool(config.get(flag, False))

    def validate(self) -> None:
        """Raises ValueError when the spec is inconsistent (a group naming an unknown module)."""
        known = set(self.linear_names()) | set(self.norm_names())
        if not self.groups:
            raise ValueError(f"spec {self.model_type!r} has no scaling groups")
        seen = set()
        for g in self.groups:
            if g.prev not in known:
                raise ValueError(f"spec {self.model_type!r}: group prev_op {g.prev!r} is not a module of the layer")
            for lin in g.linears:
                if lin not in self.linear_names():
                    raise ValueError(f"spec {self.model_type!r}: group linear {lin!r} is not a linear of the layer")
                if lin in seen:
                    raise ValueError(f"spec {self.model_type!r}: linear {lin!r} is in two scaling groups")
                seen.add(lin)
            if g.inspect not in ("attn", "mlp") and g.inspect not in self.linear_names():
                raise ValueError(f"spec {self.model_type!r}: group inspects unknown module {g.inspect!r}")
        if seen != set(self.linear_names()):
            missing = sorted(set(self.linear_names()) - seen)
            raise ValueError(f"spec {self.model_type!r}: linears {missing} belong to no scaling group")


def llama_groups(s: "ArchSpec") -> Tuple[ScaleGroup, ...]:
    """The Llama scaling groups (REFERENCE.md s2), expressed with the spec's own names."""
    return (
        ScaleGroup(prev=s.input_norm, linears=(s.q, s.k, s.v), inspect="attn"),
        ScaleGroup(prev=s.v, linears=(s.o,), inspect=s.o, only_if_same_shape=True),
        ScaleGroup(prev=s.post_attn_norm, linears=(s.gate, s.up), inspect="mlp"),
        ScaleGroup(prev=s.up, linears=(s.down,), inspect=s.down),
    )


def _llama_like(model_type: str, hf_architecture: str, **kw) -> ArchSpec:
    base = ArchSpec(model_type=model_type, hf_architecture=hf_architecture, **kw)
    from dataclasses import replace

    return replace(base, groups=llama_groups(base))


# The table. Keys are config.json model_type values.
ARCH_SPECS: Dict[str, ArchSpec] = {}


def register_spec(spec: ArchSpec, *, replace_existing: bool = False) -> ArchSpec:
    """Adds an architecture. Raises ValueError on a duplicate model_type or an inconsistent spec."""
    spec.validate()
    if spec.model_type in ARCH_SPECS and not replace_existing:
        raise ValueError(f"model_type {spec.model_type!r} is already registered")
    ARCH_SPECS[spec.model_type] = spec
    return spec


register_spec(_llama_like("llama", "LlamaForCausalLM"))
register_spec(_llama_like("mistral", "MistralForCausalLM", qkv_bias=False, o_bias=False, mlp_bias=False))
# Qwen2: q/k/v always carry a bias, o_proj never.
register_spec(_llama_like("qwen2", "Qwen2ForCausalLM", qkv_bias=True, o_bias=False, mlp_bias=False))
# Qwen3: per-head RMSNorm on q and k before RoPE; optional attention bias.
register_spec(_llama_like("qwen3", "Qwen3ForCausalLM", q_norm="self_attn.q_norm",
                          k_norm="self_attn.k_norm", mlp_bias=False))
