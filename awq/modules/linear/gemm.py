"""WQLinear_GEMM: AutoAWQ's 4-bit linear as a torch module, computed by awq's own kernels.

Why: transformers 4.x, PEFT and user scripts import `awq.modules.linear.gemm.WQLinear_GEMM`. With
torch installed it is a `torch.nn.Module` with AutoAWQ's constructor, buffers and `from_linear`;
its forward hands the tensors' memory to awq's W4A16 kernels without copying the weights:

  CPU   x, qweight, qzeros, scales as numpy views through DLPack -> awq._awq_C.w4a16_matmul
        (fp32 activations, fp32 accumulation); the output is cast back to x's dtype.
  CUDA  raw device pointers -> awq._awq_C.cuda_w4a16 on torch's current stream (fp16 or bf16
        activations; fp32 input runs in fp16, as AutoAWQ did). The kernels' repacked copy of
        qweight is made once per device and kept on the module (rebuilt when qweight changes).

Buffers (K in_features, N out_features, g group size, G = K / g): qweight int32 [K, N/8],
qzeros int32 [G, N/8], scales fp16 [G, N], bias fp16 [N] or None: the AutoAWQ GEMM layout
(REFERENCE.md s3), so state dicts load unchanged.

awq itself never needs torch: without it this module still imports (HAS_TORCH is False) and
constructing WQLinear_GEMM raises ImportError saying so.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from awq._backend import C

try:
    import torch
    import torch.nn as nn

    HAS_TORCH = True
except ImportError:  # torch is optional: the module still imports, the class refuses to build
    torch = None
    HAS_TORCH = False

__all__ = ["WQLinear_GEMM", "HAS_TORCH"]

_NEEDS_TORCH = ("awq.modules.linear.gemm.WQLinear_GEMM needs torch, which is not installed (pip install torch); "
                "awq's own loader and runtime (AutoAWQForCausalLM) run without it")

# CUDA W4A16 contexts (workspaces, split-K counters, cuBLAS handle), one per (device, stream): a
# context serves one stream at a time and is too heavy to make per layer. Filled on first use.
_CUDA_CTX: Dict[Tuple[int, int], object] = {}


def _cuda_context(device_index: int, stream: int):
    key = (device_index, stream)
    ctx = _CUDA_CTX.get(key)
    if ctx is None:
        ctx = _CUDA_CTX[key] = C.cuda_w4a16_context()  # on the current device (the caller set it)
    return ctx


if HAS_TORCH:

    class _W4A16Function(torch.autograd.Function):
        """y = x @ W (+ bias) with W frozen: the gradient flows to x only (W^T from the dequantized
        codes), as AutoAWQ's training mode does."""

        @staticmethod
        def forward(ctx, x2, layer):
            ctx.layer = layer
            return layer._matmul(x2)

        @staticmethod
        def backward(ctx, gy):
            w = ctx.layer.dequantized_weight(torch.float32).to(device=gy.device, dtype=gy.dtype)  # [K, N]
            return gy @ w.t(), None

    class WQLinear_GEMM(nn.Module):
        def __init__(self, w_bit, group_size, in_features, out_features, bias, dev, training=False):
            super().__init__()
            if w_bit != 4:
                raise NotImplementedError(f"w_bit={w_bit}: only 4-bit AWQ layers exist")
            g = in_features if group_size == -1 else group_size
            if not isinstance(g, int) or g <= 0 or in_features % g:
                raise ValueError(f"group_size {group_size!r} does not divide in_features {in_features}")
            if out_features % 8:
                raise ValueError(f"out_features {out_features} is not a multiple of 8 (8 codes per int32)")
            self.in_features, self.out_features = in_features, out_features
            self.w_bit, self.group_size = w_bit, g
            self.training = training  # as AutoAWQ: gradients flow to x only in training mode
            G = in_features // g
            n8 = out_features // 8
            self.register_buffer("qweight", torch.zeros((in_features, n8), dtype=torch.int32, device=dev))
            self.register_buffer("qzeros", torch.zeros((G, n8), dtype=torch.int32, device=dev))
            self.register_buffer("scales", torch.zeros((G, out_features), dtype=torch.float16, device=dev))
            if bias:
                self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16, device=dev))
            else:
                self.bias = None
            self._repacked = None  # (key, uint8 tensor): the CUDA kernels' layout of qweight

        @classmethod
        def from_linear(cls, linear, w_bit, group_size, init_only=False, scales=None, zeros=None):
            """An nn.Linear quantized with given per-group scales [G, N] and zero points [G, N]
            (integers 0..15; None: symmetric, zero point 8), as AutoAWQ's quantizer passes them:
            q[k, n] = round((W[n, k] + z * s) / s_fp16), s and z of group k // g, then packed to the
            GEMM layout. Codes are clamped to 0..15 (AutoAWQ OR-ed out-of-range codes into their
            neighbours). init_only=True: zero buffers, ready for load_state_dict."""
            layer = cls(w_bit, group_size, linear.in_features, linear.out_features, linear.bias is not None,
                        linear.weight.device)
            if init_only:
                return layer
            if scales is None:
                raise ValueError("from_linear needs scales (and zeros, or None for symmetric codes) to quantize; "
                                 "pass init_only=True for an empty layer")
            K, N, g = layer.in_features, layer.out_features, layer.group_size
            G = K // g
            if tuple(scales.shape) != (G, N):
                raise ValueError(f"scales: shape {tuple(scales.shape)}, expected {(G, N)} ([in/group, out])")
            if zeros is not None and tuple(zeros.shape) != (G, N):
                raise ValueError(f"zeros: shape {tuple(zeros.shape)}, expected {(G, N)} ([in/group, out])")
            with torch.no_grad():
                w = linear.weight.detach().t()  # [K, N]
                s16 = scales.detach().to(device=w.device, dtype=torch.float16)
                s_k = s16.repeat_interleave(g, dim=0)
                if zeros is None:
                    q = torch.round(w / s_k) + 8
                    z = torch.full((G, N), 8, dtype=torch.int32)
                else:
                    zf = zeros.detach().to(w.device)
                    q = torch.round((w + (zf * scales.detach().to(w.device)).repeat_interleave(g, dim=0)) / s_k)
                    z = torch.round(zf.float()).clamp(0, 15).to(torch.int32)
                if not bool(torch.isfinite(q).all()):
                    raise FloatingPointError("from_linear: non-finite codes (NaN/Inf in the weight, or a zero scale)")
                codes = q.clamp(0, 15).to(torch.uint8).cpu().numpy()
                dev = linear.weight.device
                layer.qweight = torch.from_numpy(C.pack_gemm(codes)).to(dev)
                layer.qzeros = torch.from_numpy(C.pack_gemm(z.to(torch.uint8).cpu().numpy())).to(dev)
                layer.scales = s16.clone().to(dev)
                if linear.bias is not None:
                    layer.bias = linear.bias.detach().clone().half()
            return layer

        def _apply(self, fn, *args, **kwargs):
            self._repacked = None  # .to() / .cuda() / .half(): drop the kernels' copy, remade on use
            return super()._apply(fn, *args, **kwargs)

        # ---- compute ------------------------------------------------------------------------
        def forward(self, x):
            if x.shape[-1] != self.in_features:
                raise ValueError(f"WQLinear_GEMM: input has {x.shape[-1]} features, the layer takes {self.in_features}")
            if x.device != self.qweight.device:
                raise ValueError(f"WQLinear_GEMM: input on {x.device}, layer buffers on {self.qweight.device}")
            x2 = x.reshape(-1, self.in_features)
            if self.training and torch.is_grad_enabled():
                y = _W4A16Function.apply(x2, self)
            else:
                with torch.no_grad():
                    y = self._matmul(x2)
            return y.reshape(*x.shape[:-1], self.out_features)

        def _matmul(self, x2):
            """x2 [M, K] -> [M, N] in x2's dtype."""
            if x2.shape[0] == 0:
                return x2.new_empty((0, self.out_features))
            if x2.device.type == "cpu":
                return self._matmul_cpu(x2)
            if x2.device.type == "cuda":
                return self._matmul_cuda(x2)
            raise NotImplementedError(f"WQLinear_GEMM runs on cpu and cuda tensors, not {x2.device.type}")

        def _scales_f16(self):
            s = self.scales.detach()
            return s if s.dtype == torch.float16 else s.to(torch.float16)  # a model cast with .to(dtype)

        def _matmul_cpu(self, x2):
            xf = x2.detach().to(torch.float32).contiguous()
            bias = None if self.bias is None else np.from_dlpack(self.bias.detach().float().contiguous())
            y = C.w4a16_matmul(np.from_dlpack(xf), np.from_dlpack(self.qweight.detach().contiguous()),
                               np.from_dlpack(self.qzeros.detach().contiguous()),
                               np.from_dlpack(self._scales_f16().contiguous()), bias, self.group_size)
            return torch.from_numpy(y).to(x2.dtype)

        def _repacked_qweight(self, stream: int):
            """The CUDA kernels' layout of qweight on its device, made once; remade when qweight is
            replaced or written in place (load_state_dict)."""
            qw = self.qweight
            # inference-mode tensors have no version counter (and cannot be written in place later)
            key = (qw.device, qw.data_ptr(), None if torch.is_inference(qw) else qw._version)
            if self._repacked is None or self._repacked[0] != key:
                K, N = self.in_features, self.out_features
                out = torch.empty(C.cuda_w4a16_repack_nbytes(K, N), dtype=torch.uint8, device=qw.device)
                C.cuda_w4a16_repack(qw.contiguous().data_ptr(), out.data_ptr(), K, N, stream)
                self._repacked = (key, out)
            return self._repacked[1]

        def _matmul_cuda(self, x2):
            # a build without CUDA raises RuntimeError("awq was built without CUDA ...") at the first call
            dt = x2.dtype if x2.dtype in (torch.float16, torch.bfloat16) else torch.float16
            name = "float16" if dt == torch.float16 else "bfloat16"
            dev = x2.device
            with torch.cuda.device(dev):
                stream = torch.cuda.current_stream(dev).cuda_stream
                xc = x2.detach().to(dt).contiguous()
                s = self.scales.detach()
                if s.dtype != torch.float16 and s.dtype != dt:
                    s = s.to(dt)
                s = s.contiguous()
                qz = self.qzeros.detach().contiguous()
                bias = None if self.bias is None else self.bias.detach().to(dt).contiguous()
                M, K, N = xc.shape[0], self.in_features, self.out_features
                y = torch.empty((M, N), dtype=dt, device=dev)
                C.cuda_w4a16(xc.data_ptr(), self._repacked_qweight(stream).data_ptr(), qz.data_ptr(), s.data_ptr(),
                             0 if bias is None else bias.data_ptr(), y.data_ptr(), M, K, N, self.group_size, name,
                             stream=stream, path="auto", ctx=_cuda_context(dev.index, stream),
                             scales_dtype="float16" if s.dtype == torch.float16 else name)
            return y if y.dtype == x2.dtype else y.to(x2.dtype)

        def dequantized_weight(self, dtype=None):
            """W [K, N] = (q - z) * s on the buffers' device, in `dtype` (default: the scales'; float32
            is exact)."""
            from awq.utils.packing_utils import dequantize_gemm

            s = self.scales if dtype is None else self.scales.to(dtype)
            return dequantize_gemm(self.qweight, self.qzeros, s, self.w_bit, self.group_size)

        def extra_repr(self) -> str:
            return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                    f"w_bit={self.w_bit}, group_size={self.group_size}")

else:

    class WQLinear_GEMM:  # noqa: N801 - AutoAWQ's name
        """Stands in for the torch module when torch is missing: importing works, building raises."""

        def __init__(self, *args, **kwargs):
            raise ImportError(_NEEDS_TORCH)

        @classmethod
        def from_linear(cls, *args, **kwargs):
            raise ImportError(_NEEDS_TORCH)
