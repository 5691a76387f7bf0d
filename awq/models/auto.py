"""AutoAWQ's factory and registry, built from the architecture table in awq/models/spec.py.

`AWQ_CAUSAL_LM_MODEL_MAP` maps config.json model_type -> model class, as in AutoAWQ; every class is
made from its spec row, so the table stays the one source of truth.
"""
from __future__ import annotations

from typing import Dict, Type

from awq.models.base import BaseAWQForCausalLM, read_model_config, resolve_model_path
from awq.models.spec import ARCH_SPECS, ArchSpec, register_spec


def _class_name(model_type: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in model_type.replace("-", "_").split("_")) + "AWQForCausalLM"


def _make_class(spec: ArchSpec) -> Type[BaseAWQForCausalLM]:
    return type(_class_name(spec.model_type), (BaseAWQForCausalLM,), {"spec": spec, "__module__": __name__})


AWQ_CAUSAL_LM_MODEL_MAP: Dict[str, Type[BaseAWQForCausalLM]] = {t: _make_class(s) for t, s in ARCH_SPECS.items()}


def register_architecture(spec: ArchSpec, model_class: Type[BaseAWQForCausalLM] = None):
    """Adds an architecture (a spec row, optionally with a subclass of BaseAWQForCausalLM).
    Raises ValueError for a duplicate model_type or an inconsistent spec."""
    if spec.model_type in AWQ_CAUSAL_LM_MODEL_MAP:
        raise ValueError(f"model_type {spec.model_type!r} is already registered")
    register_spec(spec)
    cls = model_class or _make_class(spec)
    if model_class is not None:
        if not issubclass(model_class, BaseAWQForCausalLM):
            raise TypeError("model_class must subclass awq.models.base.BaseAWQForCausalLM")
        cls = type(model_class.__name__, (model_class,), {"spec": spec, "__module__": model_class.__module__})
    AWQ_CAUSAL_LM_MODEL_MAP[spec.model_type] = cls
    return cls


def check_and_get_model_type(model_dir, trust_remote_code=True, **model_init_kwargs) -> str:
    config = read_model_config(model_dir)
    model_type = config.get("model_type")
    if model_type not in AWQ_CAUSAL_LM_MODEL_MAP:
        raise TypeError(f"{model_type} isn't supported yet.")
    return model_type


class AutoAWQForCausalLM:
    def __init__(self):
        raise EnvironmentError(
            "You must instantiate AutoAWQForCausalLM with\n"
            "AutoAWQForCausalLM.from_quantized or AutoAWQForCausalLM.from_pretrained")

    @classmethod
    def from_pretrained(cls, model_path, trust_remote_code=True, safetensors=True, device_map=None,
                        download_kwargs=None, **model_init_kwargs) -> BaseAWQForCausalLM:
        folder = resolve_model_path(str(model_path), download_kwargs)
        model_type = check_and_get_model_type(folder)
        return AWQ_CAUSAL_LM_MODEL_MAP[model_type].from_pretrained(
            folder, model_type, trust_remote_code=trust_remote_code, safetensors=safetensors,
            device_map=device_map, download_kwargs=download_kwargs, **model_init_kwargs)

    @classmethod
    def from_quantized(cls, quant_path, quant_filename="", max_seq_len=2048, trust_remote_code=True,
                       fuse_layers=True, use_exllama=False, use_exllama_v2=False, use_ipex=False,
                       batch_size=1, safetensors=True, device_map="balanced", max_memory=None,
                       offload_folder=None, download_kwargs=None, **config_kwargs) -> BaseAWQForCausalLM:
        folder = resolve_model_path(str(quant_path), download_kwargs)
        model_type = check_and_get_model_type(folder)
        return AWQ_CAUSAL_LM_MODEL_MAP[model_type].from_quantized(
            folder, model_type, quant_filename=quant_filename, max_seq_len=max_seq_len,
            trust_remote_code=trust_remote_code, fuse_layers=fuse_layers, use_exllama=use_exllama,
            use_exllama_v2=use_exllama_v2, use_ipex=use_ipex, batch_size=batch_size, safetensors=safetensors,
            device_map=device_map, max_memory=max_memory, offload_folder=offload_folder,
            download_kwargs=download_kwargs, **config_kwargs)
