"""Exporters from awq models to other runtimes' formats.

`awq.export.onnx.export_onnx(model, path)`: an ONNX decoder graph whose 4-bit linears are ONNX
Runtime `com.microsoft.MatMulNBits` nodes built from the packed AWQ tensors (needs the optional
`onnx` package; running the result needs `onnxruntime`). Nothing here imports them until used.
"""


def export_onnx(model, path, **kwargs):
    """See awq.export.onnx.export_onnx."""
    from awq.export.onnx import export_onnx as _export

    return _export(model, path, **kwargs)


__all__ = ["export_onnx"]
