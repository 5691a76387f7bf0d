"""AutoAWQ's `awq.utils.packing_utils` API over numpy and awq's C unpack.

Why: transformers' and PEFT's AWQ code paths (and scripts that convert AWQ checkpoints) import
`unpack_awq`, `reverse_awq_order` and `dequantize_gemm` from here; they must keep working with awq
installed in place of AutoAWQ, with or without torch.

Layout (REFERENCE.md s3): qweight int32 [K, N/8], qzeros int32 [G, N/8], nibble i of word j holds
column 8j + AWQ_ORDER[i]; scales [G, N]; W[k, n] = (q[k, n] - z[k // g, n]) * s[k // g, n].

Arrays in, arrays of the same kind out: numpy in -> numpy out; torch tensors in -> torch tensors out,
on the input's device (unpacking runs on the CPU). torch is never imported here: a torch tensor is
recognised through the already imported torch module.

One difference from AutoAWQ, on purpose: `unpack_awq` returns the codes masked to 0..2^bits-1.
AutoAWQ returned the low byte of each shifted word (the next code's bits included) and left the
masking to every caller; callers that mask get the same values.
"""
from __future__ import annotations

import sys

import numpy as np

from awq._backend import C

__all__ = ["AWQ_ORDER", "AWQ_REVERSE_ORDER", "unpack_awq", "reverse_awq_order", "dequantize_gemm"]

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i of a word holds column 8j + AWQ_ORDER[i]
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]  # column 8j + c sits in nibble AWQ_REVERSE_ORDER[c]


def _torch_in(*xs):
    """The torch module when any of xs is a torch tensor, else None (torch is not imported here)."""
    torch = sys.modules.get("torch")
    if torch is not None and any(isinstance(x, torch.Tensor) for x in xs):
        return torch
    return None


def _numpy(x, what: str) -> np.ndarray:
    """A host numpy view (zero-copy for CPU tensors and arrays) of a numpy array or torch tensor;
    bfloat16 tensors become float32 (numpy has no bfloat16)."""
    torch = _torch_in(x)
    if torch is not None:
        t = x.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - name what could not be read
        raise TypeError(f"{what}: expected a numpy array or torch tensor, got {type(x).__name__} ({e})") from None


def _check_bits(bits):
    if bits != 4:
        raise ValueError(f"bits={bits!r}: AWQ packing exists for 4-bit codes only")


def _codes_gemm(words: np.ndarray, what: str) -> np.ndarray:
    """qweight/qzeros [R, C/8] -> codes uint8 [R, C] in logical column order (C core)."""
    if words.ndim != 2 or words.dtype.kind not in "iu" or words.dtype.itemsize != 4:
        raise ValueError(f"{what}: expected a 2-d int32 array of packed words, got {words.ndim}-d {words.dtype}")
    return C.unpack_gemm(np.ascontiguousarray(words))


def _packed_order(codes: np.ndarray) -> np.ndarray:
    """Logical columns -> the order the nibbles sit in (column 8j + i <- nibble i)."""
    R = codes.shape[0]
    return codes.reshape(R, -1, 8)[:, :, AWQ_ORDER].reshape(R, -1)


def unpack_awq(qweight, qzeros, bits: int):
    """(qweight [K, N/8], qzeros [G, N/8]) -> (iweights [K, N], izeros [G, N]) int8 codes in packed
    (nibble) order: column 8j + i is nibble i of word j. `reverse_awq_order` then gives the logical
    column order. Codes are already masked to 0..15 (see the module docstring). qzeros None (a
    symmetric layer) gives izeros None, as AutoAWQ's does."""
    _check_bits(bits)
    torch = _torch_in(qweight) if qzeros is None else _torch_in(qweight, qzeros)
    w = _packed_order(_codes_gemm(_numpy(qweight, "qweight"), "qweight")).astype(np.int8)
    z = None if qzeros is None else _packed_order(_codes_gemm(_numpy(qzeros, "qzeros"), "qzeros")).astype(np.int8)
    if torch is None:
        return w, z
    return torch.from_numpy(w).to(qweight.device), None if z is None else torch.from_numpy(z).to(qzeros.device)


def reverse_awq_order(iweights, izeros, bits: int):
    """Codes in packed order (unpack_awq's output) -> logical column order: column 8j + c is taken
    from column 8j + AWQ_REVERSE_ORDER[c]. Any dtype; returns (iweights, izeros) of the input kind."""
    _check_bits(bits)
    out = []
    for x, what in ((iweights, "iweights"), (izeros, "izeros")):
        if x is None:  # symmetric layer: no zeros
            out.append(None)
            continue
        n = x.shape[-1]
        if n % 8:
            raise ValueError(f"{what}: {n} columns is not a multiple of 8")
        idx = (np.arange(n).reshape(-1, 8)[:, AWQ_REVERSE_ORDER]).ravel()
        torch = _torch_in(x)
        out.append(x[:, torch.as_tensor(idx, device=x.device)] if torch is not None else np.asarray(x)[:, idx])
    return out[0], out[1]


def dequantize_gemm(qweight, qzeros, scales, bits: int, group_size: int):
    """The dequantized weight W [K, N] = (q - z[k // g]) * s[k // g], in scales' dtype (fp16 for an
    AWQ checkpoint; the product of a small integer and a scale is exact before that one rounding).
    group_size -1 means one group over all of K."""
    _check_bits(bits)
    torch = _torch_in(qweight, qzeros, scales)
    q = _codes_gemm(_numpy(qweight, "qweight"), "qweight")
    z = _codes_gemm(_numpy(qzeros, "qzeros"), "qzeros")
    s = _numpy(scales, "scales")
    K, N = q.shape
    g = K if group_size == -1 else group_size
    if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g <= 0 or K % g:
        raise ValueError(f"group_size {group_size!r} does not divide in_features {K}")
    G = K // g
    if z.shape != (G, N):
        raise ValueError(f"qzeros: shape {tuple(np.shape(qzeros))}, expected {(G, N // 8)} for qweight "
                         f"{tuple(np.shape(qweight))} and group size {g}")
    if s.shape != (G, N):
        raise ValueError(f"scales: shape {tuple(s.shape)}, expected {(G, N)} for qweight "
                         f"{tuple(np.shape(qweight))} and group size {g}")
    if s.dtype.kind != "f":
        raise ValueError(f"scales: expected floating point, got {s.dtype}")
    ct = np.result_type(s.dtype, np.float32)  # fp16 scales: exact in fp32, then one rounding
    diff = (q.reshape(G, g, N).astype(np.int16) - z[:, None, :].astype(np.int16)).astype(ct)
    w = (diff * s.astype(ct)[:, None, :]).reshape(K, N)
    if torch is None:
        return w.astype(s.dtype)
    return torch.from_numpy(w).to(device=scales.device, dtype=scales.dtype)
