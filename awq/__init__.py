"""awq: activation-aware weight quantization (AWQ) for LLMs over a C core.

A drop-in for AutoAWQ's API (`from awq import AutoAWQForCausalLM`) that quantizes and runs models
with numpy and its own compiled core; torch, transformers and datasets are optional.
Importing awq changes nothing global.
"""
__version__ = "0.3.0"


def __getattr__(name):
    # Lazy: `import awq` stays cheap and never fails for lack of the compiled core until it is used.
    if name == "AutoAWQForCausalLM":
        from awq.models.auto import AutoAWQForCausalLM

        return AutoAWQForCausalLM
    raise AttributeError(f"module 'awq' has no attribute {name!r}")


__all__ = ["AutoAWQForCausalLM", "__version__"]
