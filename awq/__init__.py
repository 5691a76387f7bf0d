"""awq: activation-aware weight quantization (AWQ) for LLMs over a C core.

A drop-in for AutoAWQ's API (`from awq import AutoAWQForCausalLM`) that quantizes and runs models
with numpy and its own compiled core; torch, transformers and datasets are optional.
Importing awq changes nothing global.
"""
__version__ = "0.3.0"


def _preload_blas():
    """Makes the OpenBLAS of the scipy-openblas32 wheel findable by awq._awq_C.

    The extension links libscipy_openblas.so; the wheel's folder is not on the loader's path (and
    the build-time one may have been a temporary build environment), so the library is loaded
    here, by absolute path, before the extension asks for it by name. Nothing else changes."""
    try:
        import ctypes
        import os

        import scipy_openblas32

        lib = os.path.join(scipy_openblas32.get_lib_dir(), "lib" + scipy_openblas32.get_library() + ".so")
        if os.path.exists(lib):
            ctypes.CDLL(lib, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
    except (ImportError, OSError):
        pass  # a build without scipy-openblas32 uses its builtin GEMM


_preload_blas()


def __getattr__(name):
    # Lazy: `import awq` stays cheap and never fails for lack of the compiled core until it is used.
    if name == "AutoAWQForCausalLM":
        from awq.models.auto import AutoAWQForCausalLM

        return AutoAWQForCausalLM
    raise AttributeError(f"module 'awq' has no attribute {name!r}")


__all__ = ["AutoAWQForCausalLM", "__version__"]
