"""Backend dispatch: the one place Python reaches the C core.

`C` is the compiled `awq._awq_C`. Importing this module changes nothing global; a missing build is
reported with the command that fixes it.
"""
try:
    from awq import _awq_C as C
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "awq's C core (awq._awq_C) is not built: install with `pip install .` or build in place with "
        f"`python setup.py build_ext -i` ({e})"
    ) from e


def cpu_info() -> dict:
    """ISA chosen at run time, worker threads, BLAS provider, whether CUDA kernels were built."""
    return C.cpu_info()


def cuda_index(device: str) -> int:
    """"cuda" -> 0, "cuda:N" -> N."""
    return int(device.split(":", 1)[1]) if ":" in device else 0


def require_cuda():
    """Raises RuntimeError naming why the GPU cannot be used (no CUDA build, no driver, no device)."""
    info = C.cuda_info()
    if not info["built"] or not info["devices"]:
        raise RuntimeError(f"CUDA is not available: {info['error'] or 'no CUDA device found'}")
    return info
