"""awq: activation-aware weight quantization over a C core (AutoAWQ-compatible API)."""
__version__ = "0.3.0"
