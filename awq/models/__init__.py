"""Architectures: the spec table (spec.py), the model object (base.py), the registry (auto.py)."""
from awq.models.auto import AWQ_CAUSAL_LM_MODEL_MAP, AutoAWQForCausalLM, register_architecture
from awq.models.spec import ARCH_SPECS, ArchSpec, ScaleGroup

__all__ = ["AWQ_CAUSAL_LM_MODEL_MAP", "AutoAWQForCausalLM", "register_architecture", "ARCH_SPECS", "ArchSpec",
           "ScaleGroup"]
