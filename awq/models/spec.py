"""The architecture table: one declarative spec per model type.

Generic code (the calibration forward, the AWQ scale groups, the runtime, checkpoint I/O) reads
these rows and never asks "is this llama?". A new architecture is a new row: tensor names plus a
few kinds, each handled once in `awq/runtime/layers.py`:

  block      "sequential" (x += attn(n1 x); x += mlp(n2 x)), "parallel" (one norm feeds both:
             x += attn(n1 x) + mlp(n1 x); GPT-J, Falcon-7B, Cohere), "parallel2" (two norms:
             x += attn(n1 x) + mlp(n2 x); GPT-NeoX, Falcon-40B). Optional norms on the attention
             and MLP outputs (Gemma2/3, GLM-4: "sandwich" norms).
  norm_kind  "rms", "rms_unit" (Gemma's 1 + w), "layernorm" (weight, and a bias when the
             checkpoint has one).
  attn       "mha" with q/k/v linears or one fused qkv linear (qkv_layout "concat": [q; k; v] rows,
             "heads": per head [q_h; k_h; v_h] (BLOOM, GPT-NeoX), "groups": per kv head
             [q heads of the group; k; v] (InternLM2, Falcon-40B)), or "mla" (DeepSeek-V2/V3).
  position   "rope" (rotate_half), "rope_interleaved" (pairs 2i, 2i+1: GPT-J, Cohere, GLM-4),
             "alibi" (BLOOM, MPT), "learned" (OPT, StarCoder-1).
  mlp        "gated" (down(act(gate) * up)), "gated_fused" (one gate|up linear: Phi-3, GLM-4),
             "plain" (down(act(up))), "moe" (router + experts, optional shared experts; layers the
             config marks dense use "gated").

Model-wide numbers (eps, activation, softcaps, embedding/residual/logit scales, sliding windows,
MoE routing, MLA ranks) come from config.json through `awq/models/config.py`; a spec's
`config_adapter` renames an architecture's own config keys to the canonical ones there.

`plan(cfg, i)` turns a row into one layer's concrete list of linears (with shapes), norms, AWQ
scaling groups (REFERENCE.md s2) and routing, which everything downstream reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Tuple

BLOCKS = ("sequential", "parallel", "parallel2")
NORM_KINDS = ("rms", "rms_unit", "layernorm")
ATTN_KINDS = ("mha", "mla")
QKV_LAYOUTS = ("concat", "heads", "groups")
POSITIONS = ("rope", "rope_interleaved", "alibi", "learned")
MLP_KINDS = ("gated", "gated_fused", "plain", "moe")


@dataclass(frozen=True)
class ScaleGroup:
    """One AWQ scale search. `inspect` is a linear name, or "attn" / "mlp" / "layer" for a whole
    sub-block. `only_if_same_shape` is the GQA rule: v_proj -> o_proj only when both weights have
    one shape. Scaling a fused linear as `prev` divides its LAST len(s) output rows."""

    prev: str
    linears: Tuple[str, ...]
    inspect: str
    only_if_same_shape: bool = False


@dataclass(frozen=True)
class MoePlan:
    router: str
    router_bias: Optional[str]  # DeepSeek-V3 e_score_correction_bias
    experts: Tuple[Tuple[str, str, str], ...]  # (gate, up, down) per expert
    shared: Optional[Tuple[str, str, str]]


@dataclass(frozen=True)
class LayerPlan:
    """One decoder layer as the generic code sees it."""

    index: int
    linears: Dict[str, Tuple[int, int]]  # name -> (out_features, in_features), in forward order
    not_quantized: Tuple[str, ...]  # MoE routers
    norms: Dict[str, Tuple[int, ...]]  # name -> weight shape
    groups: Tuple[ScaleGroup, ...]
    feat_key: Dict[str, str]  # linear -> name its input is captured under (linears sharing an input share one)
    mlp: str  # "gated" | "gated_fused" | "plain" | "moe"
    moe: Optional[MoePlan]
    window: int  # sliding window of this layer, 0 = none
    rope_key: str  # which rope table this layer uses ("global" / "local")

    def quantized_linears(self) -> Tuple[str, ...]:
        return tuple(n for n in self.linears if n not in self.not_quantized)


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    hf_architecture: str
    layers_prefix: str = "model.layers"
    embed: str = "model.embed_tokens.weight"
    final_norm: str = "model.norm.weight"
    lm_head: str = "lm_head.weight"
    pos_embed: Optional[str] = None  # learned absolute positions (OPT, StarCoder-1)
    embed_norm: Optional[str] = None  # a norm right after the embedding (BLOOM)
    # Other spellings of the model-wide prefixes (old / new transformers names of multimodal
    # checkpoints): pairs (this spec's prefix, alternative); the first scheme whose embedding
    # tensor exists is used.
    alt_prefixes: Tuple[Tuple[Tuple[str, str], ...], ...] = ()
    not_converted: Tuple[str, ...] = ()  # modules outside the decoder kept as they are (vision towers)
    block: str = "sequential"
    norm_kind: str = "rms"
    input_norm: str = "input_layernorm"
    post_attn_norm: Optional[str] = "post_attention_layernorm"  # the norm feeding the MLP
    attn_out_norm: Optional[str] = None  # norm applied to the attention output (Gemma2 / GLM-4)
    mlp_out_norm: Optional[str] = None
    attn: str = "mha"
    position: str = "rope"
    q: str = "self_attn.q_proj"
    k: str = "self_attn.k_proj"
    v: str = "self_attn.v_proj"
    o: str = "self_attn.o_proj"
    qkv: Optional[str] = None  # one fused linear instead of q, k, v
    qkv_layout: str = "concat"
    q_norm: Optional[str] = None  # per-head norms on q and k (Qwen3, Gemma3)
    k_norm: Optional[str] = None
    qk_norm_per_head: bool = False  # q/k norm weights [heads, head_dim] (Cohere), not [head_dim]
    qk_norm_split: bool = False  # ... stored as one tensor per head, "<norm>.norms.<h>.weight" (StableLM-2)
    mlp: str = "gated"
    gate: str = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"
    gate_up: Optional[str] = None  # gated_fused
    act: str = "silu"  # default when config.json names none
    # MoE
    router: str = "mlp.gate"
    router_bias: Optional[str] = None
    experts: str = "mlp.experts"
    expert_linears: Tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    shared_experts: Optional[str] = None  # prefix of the shared experts' gate/up/down
    # MLA (DeepSeek-V2/V3, MiniCPM3)
    q_a: str = "self_attn.q_a_proj"
    q_a_norm: str = "self_attn.q_a_layernorm"
    q_b: str = "self_attn.q_b_proj"
    kv_a: str = "self_attn.kv_a_proj_with_mqa"
    kv_a_norm: str = "self_attn.kv_a_layernorm"
    kv_b: str = "self_attn.kv_b_proj"
    # Whether linears carry a bias: True, False, or the name of a boolean config key. Only the random
    # model writer reads these; loaders take a bias whenever the checkpoint has one.
    qkv_bias: object = "attention_bias"
    o_bias: object = "attention_bias"
    mlp_bias: object = "mlp_bias"
    groups: Tuple[ScaleGroup, ...] = field(default=())  # explicit groups; () = derived from the kinds
    config_adapter: Optional[Callable[[dict], dict]] = None
    variant: Optional[Callable[[dict], dict]] = None  # config -> field overrides (Falcon's three layouts)
    fusable: bool = False  # the fused GPU decoder (decoder.cu) covers this block

    # ---- config-dependent form ------------------------------------------------------------------
    def for_config(self, config: dict) -> "ArchSpec":
        """The row with the config-dependent overrides applied (e.g. Falcon's layouts)."""
        if self.variant is None:
            return self
        over = self.variant(config)
        return replace(self, **over) if over else self

    def layer_prefix(self, i: int) -> str:
        return f"{self.layers_prefix}.{i}."

    def norm_tensors(self, name: str, shape) -> Tuple[str, ...]:
        """The checkpoint tensors (relative to the layer) holding norm `name`'s weight."""
        if self.qk_norm_split and name in (self.q_norm, self.k_norm):
            return tuple(f"{name}.norms.{h}.weight" for h in range(shape[0]))
        return (name + ".weight",)

    def has_bias(self, which: str, config: dict) -> bool:
        flag = {"qkv": self.qkv_bias, "o": self.o_bias, "mlp": self.mlp_bias}[which]
        if isinstance(flag, bool):
            return flag
        return bool(config.get(flag, False))

    # ---- the per-layer plan -----------------------------------------------------------------------
    def attn_linears(self, cfg) -> Dict[str, Tuple[int, int]]:
        D, Hq, Hkv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        if self.attn == "mla":
            m = cfg.mla
            qk = m["qk_nope_head_dim"] + m["qk_rope_head_dim"]
            out = {}
            if m["q_lora_rank"]:
                out[self.q_a] = (m["q_lora_rank"], D)
                out[self.q_b] = (Hq * qk, m["q_lora_rank"])
            else:
                out[self.q] = (Hq * qk, D)
            out[self.kv_a] = (m["kv_lora_rank"] + m["qk_rope_head_dim"], D)
            out[self.kv_b] = (Hq * (m["qk_nope_head_dim"] + m["v_head_dim"]), m["kv_lora_rank"])
            out[self.o] = (D, Hq * m["v_head_dim"])
            return out
        if self.qkv:
            return {self.qkv: ((Hq + 2 * Hkv) * d, D), self.o: (D, Hq * d)}
        return {self.q: (Hq * d, D), self.k: (Hkv * d, D), self.v: (Hkv * d, D), self.o: (D, Hq * d)}

    def plan(self, cfg, i: int) -> LayerPlan:
        D = cfg.hidden_size
        lin = dict(self.attn_linears(cfg))
        norms = {self.input_norm: (D,)}
        if self.post_attn_norm and self.block != "parallel":
            norms[self.post_attn_norm] = (D,)
        for n in (self.attn_out_norm, self.mlp_out_norm):
            if n:
                norms[n] = (D,)
        if self.q_norm:
            d = cfg.head_dim
            norms[self.q_norm] = (cfg.num_heads, d) if self.qk_norm_per_head else (d,)
            norms[self.k_norm] = (cfg.num_kv_heads, d) if self.qk_norm_per_head else (d,)
        if self.attn == "mla":
            if cfg.mla["q_lora_rank"]:
                norms[self.q_a_norm] = (cfg.mla["q_lora_rank"],)
            norms[self.kv_a_norm] = (cfg.mla["kv_lora_rank"],)
        mlp = self.mlp
        moe = None
        if mlp == "moe" and not cfg.moe_layer(i):
            mlp = "gated"
        F = cfg.intermediate_size
        not_q: Tuple[str, ...] = ()
        if mlp == "gated":
            lin.update({self.gate: (F, D), self.up: (F, D), self.down: (D, F)})
        elif mlp == "gated_fused":
            lin.update({self.gate_up: (2 * F, D), self.down: (D, F)})
        elif mlp == "plain":
            lin.update({self.up: (F, D), self.down: (D, F)})
        else:
            m = cfg.moe
            Fe = m["moe_intermediate_size"]
            lin[self.router] = (m["num_experts"], D)
            not_q = (self.router,)
            g, u, dn = self.expert_linears
            experts = []
            for e in range(m["num_experts"]):
                names = (f"{self.experts}.{e}.{g}", f"{self.experts}.{e}.{u}", f"{self.experts}.{e}.{dn}")
                lin.update({names[0]: (Fe, D), names[1]: (Fe, D), names[2]: (D, Fe)})
                experts.append(names)
            shared = None
            if self.shared_experts and m.get("shared_intermediate_size"):
                Fs = m["shared_intermediate_size"]
                shared = tuple(f"{self.shared_experts}.{n}" for n in ("gate_proj", "up_proj", "down_proj"))
                lin.update({shared[0]: (Fs, D), shared[1]: (Fs, D), shared[2]: (D, Fs)})
            rb = self.router_bias if (self.router_bias and m.get("router_bias")) else None
            moe = MoePlan(self.router, rb, tuple(experts), shared)
        groups, feat = self._groups(cfg, lin, mlp, moe)
        window = cfg.layer_window(i)
        return LayerPlan(i, lin, not_q, norms, groups, feat, mlp, moe, window,
                         "local" if cfg.layer_is_local(i) else "global")

    def _groups(self, cfg, lin, mlp, moe) -> Tuple[Tuple[ScaleGroup, ...], Dict[str, str]]:
        """AWQ scaling groups (REFERENCE.md s2) for the layer's kinds, and which linears share an
        input. No group ever scales an activation function (no act.scales tensors are written)."""
        s = self
        groups: List[ScaleGroup] = []
        feat: Dict[str, str] = {}
        if s.attn == "mla":
            first = [s.q_a if cfg.mla["q_lora_rank"] else s.q, s.kv_a]
            attn_in = tuple(first)
        elif s.qkv:
            attn_in = (s.qkv,)
        else:
            attn_in = (s.q, s.k, s.v)
        if mlp == "gated":
            mlp_in = (s.gate, s.up)
        elif mlp == "gated_fused":
            mlp_in = (s.gate_up,)
        elif mlp == "plain":
            mlp_in = (s.up,)
        else:
            mlp_in = (moe.router,) + tuple(x for e in moe.experts for x in e[:2])
            if moe.shared:
                mlp_in += moe.shared[:2]
        for n in attn_in:
            feat[n] = attn_in[0]
        for n in mlp_in:
            feat[n] = attn_in[0] if s.block == "parallel" else mlp_in[0]
        if moe:  # each expert sees only its routed tokens: its own capture
            for e in moe.experts:
                feat[e[0]] = feat[e[1]] = e[0]
            if moe.shared:
                feat[moe.shared[0]] = feat[moe.shared[1]] = moe.shared[0]
            feat[moe.router] = moe.router
        for n in lin:
            feat.setdefault(n, n)
        if s.groups:
            return s.groups, feat
        if s.block == "parallel":
            groups.append(ScaleGroup(s.input_norm, attn_in + mlp_in, "layer"))
        else:
            groups.append(ScaleGroup(s.input_norm, attn_in, "attn"))
        if s.attn == "mla":
            if cfg.mla["q_lora_rank"]:
                groups.append(ScaleGroup(s.q_a_norm, (s.q_b,), s.q_b))
            groups.append(ScaleGroup(s.kv_a_norm, (s.kv_b,), s.kv_b))
        elif s.qkv is None:
            groups.append(ScaleGroup(s.v, (s.o,), s.o, only_if_same_shape=True))
        elif s.qkv_layout == "concat" and not cfg.clip_qkv:
            # v is the last rows of the fused linear (AutoAWQ's Phi-3 / Qwen rule); not under MPT's
            # clip_qkv, which clamps v before o sees it (clamp(v / s) * s != clamp(v))
            groups.append(ScaleGroup(s.qkv, (s.o,), s.o, only_if_same_shape=True))
        if s.block != "parallel":  # MoE: router + every expert's gate/up, the whole MoE block inspected
            groups.append(ScaleGroup(s.post_attn_norm, mlp_in, "mlp"))
        if mlp == "gated":
            groups.append(ScaleGroup(s.up, (s.down,), s.down))
        elif mlp == "gated_fused":
            groups.append(ScaleGroup(s.gate_up, (s.down,), s.down))
        elif mlp == "moe":
            for g, u, d in moe.experts:
                groups.append(ScaleGroup(u, (d,), d))
            if moe.shared:
                groups.append(ScaleGroup(moe.shared[1], (moe.shared[2],), moe.shared[2]))
        return tuple(groups), feat

    # ---- consistency ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raises ValueError when the row is inconsistent (unknown kinds, missing names for the
        chosen kinds, explicit groups naming unknown modules)."""
        t = self.model_type
        for val, allowed, what in ((self.block, BLOCKS, "block"), (self.norm_kind, NORM_KINDS, "norm_kind"),
                                   (self.attn, ATTN_KINDS, "attn"), (self.qkv_layout, QKV_LAYOUTS, "qkv_layout"),
                                   (self.position, POSITIONS, "position"), (self.mlp, MLP_KINDS, "mlp")):
            if val not in allowed:
                raise ValueError(f"spec {t!r}: {what} {val!r} is not one of {allowed}")
        if not isinstance(t, str) or not t:
            raise ValueError("spec: model_type must be a non-empty string")
        if self.block != "parallel" and not self.post_attn_norm:
            raise ValueError(f"spec {t!r}: block {self.block!r} needs post_attn_norm (the norm feeding the MLP)")
        if self.mlp == "gated_fused" and not self.gate_up:
            raise ValueError(f"spec {t!r}: mlp 'gated_fused' needs gate_up")
        if self.position == "learned" and not self.pos_embed:
            raise ValueError(f"spec {t!r}: position 'learned' needs pos_embed")
        if bool(self.q_norm) != bool(self.k_norm):
            raise ValueError(f"spec {t!r}: q_norm and k_norm go together")
        if self.groups:
            self._validate_groups()

    def _validate_groups(self) -> None:
        t = self.model_type
        lin = set()
        for n in (self.q, self.k, self.v, self.o, self.qkv, self.gate, self.up, self.down, self.gate_up):
            if n:
                lin.add(n)
        norms = {n for n in (self.input_norm, self.post_attn_norm, self.q_norm, self.k_norm) if n}
        seen = set()
        for g in self.groups:
            if g.prev not in lin | norms:
                raise ValueError(f"spec {t!r}: group prev_op {g.prev!r} is not a module of the layer")
            for n in g.linears:
                if n not in lin:
                    raise ValueError(f"spec {t!r}: group linear {n!r} is not a linear of the layer")
                if n in seen:
                    raise ValueError(f"spec {t!r}: linear {n!r} is in two scaling groups")
                seen.add(n)
            if g.inspect not in ("attn", "mlp", "layer") and g.inspect not in lin:
                raise ValueError(f"spec {t!r}: group inspects unknown module {g.inspect!r}")


def llama_groups(s: "ArchSpec") -> Tuple[ScaleGroup, ...]:
    """The Llama scaling groups (REFERENCE.md s2), expressed with the spec's own names."""
    return (
        ScaleGroup(prev=s.input_norm, linears=(s.q, s.k, s.v), inspect="attn"),
        ScaleGroup(prev=s.v, linears=(s.o,), inspect=s.o, only_if_same_shape=True),
        ScaleGroup(prev=s.post_attn_norm, linears=(s.gate, s.up), inspect="mlp"),
        ScaleGroup(prev=s.up, linears=(s.down,), inspect=s.down),
    )


# The table. Keys are config.json model_type values.
ARCH_SPECS: Dict[str, ArchSpec] = {}


def register_spec(spec: ArchSpec, *, replace_existing: bool = False) -> ArchSpec:
    """Adds an architecture. Raises ValueError on a duplicate model_type or an inconsistent spec."""
    if not isinstance(spec, ArchSpec):
        raise TypeError("register_spec needs an awq.models.spec.ArchSpec")
    spec.validate()
    if spec.model_type in ARCH_SPECS and not replace_existing:
        raise ValueError(f"model_type {spec.model_type!r} is already registered")
    ARCH_SPECS[spec.model_type] = spec
    return spec


from awq.models import archs as _archs  # noqa: E402  (fills the table)

for _s in _archs.TABLE:
    register_spec(_s)
