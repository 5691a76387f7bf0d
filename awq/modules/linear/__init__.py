"""AutoAWQ's quantized linear modules. Only the GEMM layout is provided (awq reads the gemv,
gemv_fast and marlin checkpoint layouts by converting them to GEMM at load time, awq/io/layouts.py).
Imports torch when it is installed; see awq.modules.linear.gemm."""
from .gemm import HAS_TORCH, WQLinear_GEMM

__all__ = ["WQLinear_GEMM", "HAS_TORCH"]
