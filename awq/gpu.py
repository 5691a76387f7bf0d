"""awq.gpu: GPU tensors and the dense GPU ops of the forward and of AWQ's statistics.

`GpuTensor` is a C-contiguous block of device memory with a shape and a dtype (float32, float16,
bfloat16, int32, int64, uint8). It either owns its memory (from the device's caching allocator,
returned to the cache when the last reference goes) or is a zero-copy view of a foreign tensor
(torch, cupy, ...) whose owner it keeps alive. Tensors travel without copies through DLPack
(`from_dlpack`, `__dlpack__`, `__dlpack_device__`) and `__cuda_array_interface__` (version 3);
`from_numpy` / `to_numpy` copy to and from the host.

Streams: work is queued on the legacy default stream (stream 0) unless an op is given `stream=`
(an int handle, or an object with `.cuda_stream` like torch.cuda.Stream or `.ptr` like cupy's).
DLPack exchanges synchronize the two sides' streams as the protocol asks. Freed memory is reused in
stream order, so a tensor used on a side stream must outlive that stream's work (as in torch).

bfloat16 has no numpy dtype: `to_numpy()` of a bfloat16 tensor returns its raw bits as uint16, and
`from_numpy(bits_u16, dtype="bfloat16")` takes raw bits back; `t.to("float32").to_numpy()` gives
values, `from_numpy(float_array, dtype="bfloat16")` rounds values to nearest even.

Importing this module touches no GPU; the first call that needs one creates that device's context
and raises RuntimeError naming why when there is no usable GPU (no CUDA build, no driver, no
device). All checks of dtype, shape and device happen here, before the C bindings (which take raw
device pointers) are called.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Dict, Optional, Tuple

import numpy as np

from awq import _backend

C = _backend.C

# ---------------------------------------------------------------- dtypes


@dataclass(frozen=True)
class DType:
    name: str
    code: int  # the core's awq_dtype number (csrc/kernels/ops_cuda.h)
    itemsize: int
    dl: Tuple[int, int, int]  # DLPack (type code, bits, lanes)
    storage: np.dtype  # numpy dtype of to_numpy() (bfloat16: its raw bits as uint16)
    typestr: Optional[str]  # __cuda_array_interface__ typestr (None: no standard one)

    def __repr__(self):
        return self.name


# The table: one row per dtype. Tests check it against the core (C.cuda_dtypenames()).
DTYPES: Dict[str, DType] = {
    d.name: d
    for d in (
        DType("float32", 0, 4, (2, 32, 1), np.dtype(np.float32), "<f4"),
        DType("float16", 1, 2, (2, 16, 1), np.dtype(np.float16), "<f2"),
        DType("bfloat16", 2, 2, (4, 16, 1), np.dtype(np.uint16), None),
        DType("int32", 3, 4, (0, 32, 1), np.dtype(np.int32), "<i4"),
        DType("int64", 4, 8, (0, 64, 1), np.dtype(np.int64), "<i8"),
        DType("uint8", 5, 1, (1, 8, 1), np.dtype(np.uint8), "|u1"),
    )
}
float32, float16, bfloat16 = DTYPES["float32"], DTYPES["float16"], DTYPES["bfloat16"]
int32, int64, uint8 = DTYPES["int32"], DTYPES["int64"], DTYPES["uint8"]
FLOATS = (float32, float16, bfloat16)
_BY_DL = {d.dl: d for d in DTYPES.values()}
_DL_DEVICE_NAMES = {1: "CPU", 2: "CUDA", 3: "CUDA host (pinned)", 4: "OpenCL", 7: "Vulkan", 8: "Metal",
                    10: "ROCm", 13: "CUDA managed", 14: "oneAPI"}


def as_dtype(x) -> DType:
    """DType of a name ('float16'), a DType, a numpy dtype or a torch dtype."""
    if isinstance(x, DType):
        return x
    name = str(x)
    name = name[len("torch."):] if name.startswith("torch.") else name
    name = {"half": "float16", "float": "float32", "bf16": "bfloat16", "fp16": "float16",
            "fp32": "float32", "long": "int64", "int": "int32"}.get(name, name)
    if name not in DTYPES:
        try:
            name = np.dtype(x).name
        except TypeError:
            pass
    if name not in DTYPES:
        raise TypeError(f"unsupported GPU dtype {x!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


# ---------------------------------------------------------------- device contexts


class Context:
    """One device's CUDA context: the caching allocator (its blocks, stats) and the cuBLAS handle.
    Obtained through `context(device)`; lives as long as a tensor of its device does."""

    def __init__(self, device: int):
        self.device = device
        self.handle = C.cuda_context_new(device)

    def memory_stats(self) -> dict:
        """Bytes in use / cached / reserved (and peaks), allocation and cudaMalloc counters."""
        return C.cuda_memory_stats(self.handle)

    def empty_cache(self) -> None:
        """Gives every cached (free) block back to the driver."""
        C.cuda_empty_cache(self.handle)

    def synchronize(self, stream=None) -> None:
        C.cuda_sync(self.handle, _stream(stream))

    def __repr__(self):
        return f"<awq.gpu.Context device={self.device}>"


_contexts: Dict[int, Context] = {}


def is_available() -> bool:
    """True when awq was built with CUDA and a device is visible."""
    info = C.cuda_info()
    return bool(info["built"] and info["devices"])


def device_count() -> int:
    return len(C.cuda_info()["devices"])


def context(device: int = 0) -> Context:
    """The context of `device`, created on first use. RuntimeError naming why when no GPU is
    usable; ValueError for a device index that does not exist."""
    ctx = _contexts.get(device)
    if ctx is None:
        info = _backend.require_cuda()
        if not isinstance(device, int) or not 0 <= device < len(info["devices"]):
            raise ValueError(f"CUDA device {device!r} does not exist ({len(info['devices'])} visible)")
        ctx = _contexts.setdefault(device, Context(device))
    return ctx


def memory_stats(device: int = 0) -> dict:
    return context(device).memory_stats()


def empty_cache(device: Optional[int] = None) -> None:
    """Empties the cache of `device`, or of every context created so far."""
    for ctx in ([context(device)] if device is not None else list(_contexts.values())):
        ctx.empty_cache()


def synchronize(device: int = 0, stream=None) -> None:
    context(device).synchronize(stream)


def _stream(s) -> int:
    """cudaStream_t handle as an int: None -> 0 (legacy default stream)."""
    if s is None:
        return 0
    if isinstance(s, (int, np.integer)):
        return int(s)
    for attr in ("cuda_stream", "ptr", "handle"):
        if hasattr(s, attr):
            return int(getattr(s, attr))
    raise TypeError(f"stream: expected an int handle or a stream object, got {type(s).__name__}")


# ---------------------------------------------------------------- the tensor


def _shape(shape) -> Tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    if len(shape) > 8:
        raise ValueError(f"at most 8 dimensions (shape {shape})")
    return shape


class GpuTensor:
    """A C-contiguous tensor in device memory. Build one with `empty`, `zeros`, `from_numpy` or
    `from_dlpack`; the constructor is internal."""

    __slots__ = ("shape", "dtype", "device", "ptr", "nbytes", "readonly", "_owner", "__weakref__")

    def __init__(self, shape, dtype, device: int, ptr: int, owner, readonly: bool = False):
        self.shape = _shape(shape)
        self.dtype = as_dtype(dtype)
        self.device = int(device)
        self.ptr = int(ptr)
        self.nbytes = prod(self.shape) * self.dtype.itemsize
        self.readonly = bool(readonly)
        self._owner = owner  # block capsule, DLPack owner capsule or a foreign object

    # -------------------------------------------------- properties
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return prod(self.shape)

    numel = size

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def strides(self) -> Tuple[int, ...]:
        """Byte strides (C order)."""
        st, acc = [], self.itemsize
        for s in reversed(self.shape):
            st.append(acc)
            acc *= s
        return tuple(reversed(st))

    def data_ptr(self) -> int:
        return self.ptr

    @property
    def context(self) -> Context:
        return context(self.device)

    def __repr__(self):
        return f"GpuTensor(shape={self.shape}, dtype={self.dtype.name}, device=cuda:{self.device})"

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d GpuTensor")
        return self.shape[0]

    # -------------------------------------------------- views and copies
    def reshape(self, *shape) -> "GpuTensor":
        """A view with another shape (one dimension may be -1)."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        if shape.count(-1) > 1:
            raise ValueError("reshape: at most one -1")
        if -1 in shape:
            rest = prod(s for s in shape if s != -1)
            if rest == 0 or self.size % rest:
                raise ValueError(f"reshape: cannot view {self.shape} as {shape}")
            shape = tuple(self.size // rest if s == -1 else s for s in shape)
        if prod(shape) != self.size:
            raise ValueError(f"reshape: cannot view {self.shape} ({self.size} elements) as {shape}")
        return GpuTensor(shape, self.dtype, self.device, self.ptr, self._owner, self.readonly)

    view = reshape

    def to(self, dtype, stream=None) -> "GpuTensor":
        """A converted copy (float dtypes: round to nearest even). Same dtype: a copy too."""
        d = as_dtype(dtype)
        if d == self.dtype:
            return self.clone(stream)
        if self.dtype not in FLOATS or d not in FLOATS:
            raise TypeError(f"to: only conversions among {', '.join(f.name for f in FLOATS)} run on "
                            f"the GPU ({self.dtype.name} -> {d.name})")
        out = empty(self.shape, d, self.device, what=f"{d.name} copy of {self!r}")
        C.cuda_cast(self.context.handle, self.dtype.code, self.ptr, d.code, out.ptr, self.size,
                    _stream(stream))
        return out

    def float(self, stream=None) -> "GpuTensor":
        return self.to(float32, stream)

    def clone(self, stream=None) -> "GpuTensor":
        out = empty(self.shape, self.dtype, self.device, what=f"copy of {self!r}")
        C.cuda_copy_dtod(self.context.handle, out.ptr, self.ptr, self.nbytes, _stream(stream))
        return out

    def copy_(self, src: "GpuTensor", stream=None) -> "GpuTensor":
        """Copies src (same dtype and number of elements, any device of this process) into self."""
        _check_tensor("copy_ src", src)
        self._check_writable("copy_")
        if src.dtype != self.dtype or src.size != self.size:
            raise ValueError(f"copy_: source {src!r} does not match {self!r}")
        C.cuda_copy_dtod(self.context.handle, self.ptr, src.ptr, self.nbytes, _stream(stream))
        return self

    def fill_bytes_(self, byte: int, stream=None) -> "GpuTensor":
        """Sets every byte to `byte` (0xFF poisons floats with NaN: tests use it)."""
        self._check_writable("fill_bytes_")
        C.cuda_memset(self.context.handle, self.ptr, int(byte), self.nbytes, _stream(stream))
        return self

    def zero_(self, stream=None) -> "GpuTensor":
        return self.fill_bytes_(0, stream)

    def to_numpy(self, stream=None) -> np.ndarray:
        """A host copy (waits for the stream). bfloat16 comes back as its raw bits (uint16)."""
        out = np.empty(self.shape, self.dtype.storage)
        if self.nbytes:
            C.cuda_copy_dtoh(self.context.handle, out, self.ptr, _stream(stream))
        return out

    numpy = to_numpy

    def _check_writable(self, op):
        if self.readonly:
            raise ValueError(f"{op}: {self!r} is read-only (imported from a read-only DLPack tensor)")

    # -------------------------------------------------- DLPack and CUDA array interface
    def __dlpack_device__(self) -> Tuple[int, int]:
        return (2, self.device)  # kDLCUDA

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """DLPack capsule of this tensor. `stream`: the consumer's stream (None / 1: the legacy
        default stream, where our work runs; -1: no synchronization; otherwise that stream waits on
        the device for the work queued so far on ours). Versioned capsule (DLPack 1.0) when the
        consumer passes max_version >= (1, 0)."""
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(f"__dlpack__: {self!r} cannot be exported to device {tuple(dl_device)} "
                              "without a copy across devices")
        src = self.clone() if copy else self
        if stream is not None and stream != -1 and int(stream) not in (0, 1):
            C.cuda_stream_wait(self.context.handle, int(stream), 0)
        versioned = max_version is not None and tuple(max_version)[0] >= 1
        return C.dlpack_export(src, src.ptr, src.shape, src.dtype.dl, src.device, versioned)

    @property
    def __cuda_array_interface__(self) -> dict:
        if self.dtype.typestr is None:
            raise AttributeError(f"{self.dtype.name} has no __cuda_array_interface__ typestr; "
                                 "exchange it through DLPack (__dlpack__)")
        return {"shape": self.shape, "typestr": self.dtype.typestr, "data": (self.ptr, self.readonly),
                "version": 3, "strides": None, "stream": 1}


def _check_tensor(what: str, t, dtypes=None, ndim=None, device=None) -> GpuTensor:
    """Raises a clear TypeError / ValueError unless t is a GpuTensor of the wanted kind."""
    if not isinstance(t, GpuTensor):
        hint = " (copy host arrays with awq.gpu.from_numpy)" if isinstance(t, np.ndarray) else (
            " (wrap CUDA tensors with awq.gpu.from_dlpack)" if hasattr(t, "__dlpack__") else "")
        raise TypeError(f"{what}: expected a GpuTensor, got {type(t).__name__}{hint}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{what}: dtype {t.dtype.name} is not supported here "
                        f"({', '.join(d.name for d in dtypes)})")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim} dimensions, got shape {t.shape}")
    if device is not None and t.device != device:
        raise ValueError(f"{what}: tensor is on cuda:{t.device}, the op runs on cuda:{device}")
    return t


# ---------------------------------------------------------------- constructors


def empty(shape, dtype="float32", device: int = 0, *, what: Optional[str] = None) -> GpuTensor:
    """Uninitialised tensor from the device's caching allocator. Out of memory: MemoryError naming
    `what` (default: the tensor's shape and dtype) and the size in bytes."""
    shape, d = _shape(shape), as_dtype(dtype)
    ctx = context(device)
    nbytes = prod(shape) * d.itemsize
    block, ptr = C.cuda_alloc(ctx.handle, nbytes, what or f"GpuTensor{shape} {d.name}")
    return GpuTensor(shape, d, device, ptr, block)


def zeros(shape, dtype="float32", device: int = 0) -> GpuTensor:
    return empty(shape, dtype, device).zero_()


def from_numpy(arr, device: int = 0, dtype=None, stream=None) -> GpuTensor:
    """Host -> device copy. dtype converts on the way (to bfloat16: values rounded to nearest even
    on the GPU; a uint16 array with dtype='bfloat16' is taken as raw bfloat16 bits)."""
    arr = np.asarray(arr)
    d = as_dtype(dtype if dtype is not None else arr.dtype)
    if d == bfloat16 and arr.dtype != np.uint16:
        return from_numpy(np.asarray(arr, np.float32), device, float32, stream).to(bfloat16, stream)
    host = np.asarray(arr, dtype=d.storage, order="C")  # keeps 0-d arrays 0-d
    t = empty(host.shape, d, device)
    if t.nbytes:
        C.cuda_copy_htod(context(device).handle, t.ptr, host, _stream(stream))
    return t


def _is_capsule(obj) -> bool:
    return type(obj).__name__ == "PyCapsule"


def _contiguous(shape, strides) -> bool:
    expect = 1
    for s, st in zip(reversed(shape), reversed(strides)):
        if s != 1 and st != expect:
            return False
        expect *= s
    return True


def from_dlpack(obj, stream=None) -> GpuTensor:
    """Zero-copy GpuTensor over a CUDA DLPack producer (torch / cupy tensor, or a raw capsule).
    The producer's memory stays alive as long as the GpuTensor (or a view) does. Non-contiguous
    inputs are gathered into a new contiguous tensor (a copy). Host tensors: use from_numpy."""
    if isinstance(obj, GpuTensor):
        return obj
    if _is_capsule(obj):
        cap = obj
    else:
        if not hasattr(obj, "__dlpack__"):
            raise TypeError(f"from_dlpack: {type(obj).__name__} is not a DLPack producer")
        dev_type, dev_id = obj.__dlpack_device__()
        if dev_type != 2:
            raise ValueError(f"from_dlpack: the tensor lives on a {_DL_DEVICE_NAMES.get(dev_type, dev_type)}"
                             " device; only CUDA device tensors come in zero-copy (copy host "
                             "arrays with awq.gpu.from_numpy)")
        context(dev_id)  # fails clearly when the GPU is not usable
        # 1 = the legacy default stream, where our work runs: the producer makes its work visible.
        consumer_stream = 1 if stream is None else _stream(stream)
        try:
            cap = obj.__dlpack__(stream=consumer_stream, max_version=(1, 0))
        except TypeError:  # producers older than DLPack 1.0 take no max_version
            cap = obj.__dlpack__(stream=consumer_stream)
    owner, ptr, shape, strides, dl, (dev_type, dev_id), readonly = C.dlpack_import(cap)
    if dev_type != 2:
        raise ValueError(f"from_dlpack: capsule of a {_DL_DEVICE_NAMES.get(dev_type, dev_type)} "
                         "tensor; only CUDA device tensors come in zero-copy")
    if dl not in _BY_DL:
        raise TypeError(f"from_dlpack: DLPack dtype (code {dl[0]}, {dl[1]} bits, {dl[2]} lanes) is not"
                        f" one of {', '.join(DTYPES)}")
    t = GpuTensor(shape, _BY_DL[dl], dev_id, ptr, owner, readonly)
    if strides is not None and not _contiguous(shape, strides):
        out = empty(shape, t.dtype, dev_id, what=f"contiguous copy of a strided DLPack {t!r}")
        ctx = context(dev_id)
        C.cuda_copy_strided(ctx.handle, t.itemsize, ptr, shape, strides, out.ptr, 0)
        ctx.synchronize()  # the producer may reuse its memory once `t` is dropped
        return out
    return t


def as_gpu(obj, device: int = 0, dtype=None) -> GpuTensor:
    """GpuTensor from a GpuTensor (as is), a CUDA DLPack producer (zero-copy) or host data (copy);
    dtype converts (a copy) when given and different."""
    if isinstance(obj, GpuTensor) or (hasattr(obj, "__dlpack_device__") and obj.__dlpack_device__()[0] == 2):
        t = from_dlpack(obj)
        return t if dtype is None or as_dtype(dtype) == t.dtype else t.to(dtype)
    return from_numpy(obj, device, dtype)


# ---------------------------------------------------------------- ops


def _out(op: str, out, shape, d: DType, device: int) -> GpuTensor:
    if out is None:
        return empty(shape, d, device, what=f"{op} output")
    _check_tensor(f"{op} out", out, (d,), device=device)
    if out.shape != tuple(shape):
        raise ValueError(f"{op} out: expected shape {tuple(shape)}, got {out.shape}")
    out._check_writable(op)
    return out


def _param_f32(op: str, what: str, obj, shape, device: int) -> GpuTensor:
    """Small fp32 parameter (norm weight, bias, rope table): a GpuTensor, or host data uploaded."""
    t = obj if isinstance(obj, GpuTensor) else from_numpy(np.asarray(obj, np.float32), device)
    _check_tensor(f"{op} {what}", t, (float32,), device=device)
    if t.shape != tuple(shape):
        raise ValueError(f"{op} {what}: expected shape {tuple(shape)}, got {t.shape}")
    return t


def rmsnorm(x: GpuTensor, w, eps: float, unit_offset: float = 0.0, out=None, stream=None) -> GpuTensor:
    """y[..., D] = x / sqrt(mean(x^2) + eps) * (w + unit_offset); w: [D] fp32; fp32 math."""
    _check_tensor("rmsnorm x", x, FLOATS)
    if x.ndim < 1:
        raise ValueError("rmsnorm x: needs at least one dimension")
    D = x.shape[-1]
    w = _param_f32("rmsnorm", "w", w, (D,), x.device)
    out = _out("rmsnorm", out, x.shape, x.dtype, x.device)
    C.cuda_rmsnorm(x.context.handle, x.dtype.code, x.ptr, w.ptr, out.ptr, x.size // max(D, 1), D,
                   float(eps), float(unit_offset), _stream(stream))
    return out


def layernorm(x: GpuTensor, w, b, eps: float, out=None, stream=None) -> GpuTensor:
    """y[..., D] = (x - mean) / sqrt(var + eps) * w + b over the last dim (population variance,
    two-pass fp32 statistics); w, b: [D] fp32 or None (ones / zeros). Contract of
    awq._awq_C.layernorm."""
    _check_tensor("layernorm x", x, FLOATS)
    if x.ndim < 1:
        raise ValueError("layernorm x: needs at least one dimension")
    D = x.shape[-1]
    w = _param_f32("layernorm", "w", w, (D,), x.device) if w is not None else None
    b = _param_f32("layernorm", "b", b, (D,), x.device) if b is not None else None
    out = _out("layernorm", out, x.shape, x.dtype, x.device)
    C.cuda_layernorm(x.context.handle, x.dtype.code, x.ptr, w.ptr if w is not None else 0,
                     b.ptr if b is not None else 0, out.ptr, x.size // max(D, 1), D, float(eps),
                     _stream(stream))
    return out


def rope_(x: GpuTensor, cos, sin, rot: int, interleaved: bool = False, stream=None) -> GpuTensor:
    """Rotary embedding in place on x[M, H, d] (first `rot` dims of each head); cos, sin:
    [M, rot/2] fp32. interleaved=False: rotate_half pairs (i, i + rot/2); True: GPT-J
    rotate_every_two pairs (2i, 2i+1). Returns x."""
    _check_tensor("rope_ x", x, FLOATS, ndim=3)
    x._check_writable("rope_")
    if not isinstance(interleaved, (bool, np.bool_)):
        raise TypeError(f"rope_: interleaved must be a bool, got {type(interleaved).__name__} "
                        "(pass stream= by keyword)")
    M, H, d = x.shape
    if rot % 2 or not 0 <= rot <= d:
        raise ValueError(f"rope_: rot={rot} must be even and at most the head dim {d}")
    cos = _param_f32("rope_", "cos", cos, (M, rot // 2), x.device)
    sin = _param_f32("rope_", "sin", sin, (M, rot // 2), x.device)
    C.cuda_rope(x.context.handle, x.dtype.code, x.ptr, cos.ptr, sin.ptr, M, H, d, rot, _stream(stream),
                bool(interleaved))
    return x


def attention(q: GpuTensor, k: GpuTensor, v: GpuTensor, scale: float, q_pos0: int = 0,
              window: int = 0, kv_len=None, out=None, stream=None, alibi=None,
              softcap: float = 0.0) -> GpuTensor:
    """Causal grouped-query attention (contract of awq._awq_C.attention): q [B, T, Hq, d],
    k [B, S, Hkv, d], v [B, S, Hkv, dv] (same dtype; dv may differ from d, DeepSeek MLA) ->
    [B, T, Hq, dv]. kv_len: optional int64 [B] valid key counts. Query t sits at position
    p = q_pos0 + t. alibi: optional fp32 [Hq] slopes adding alibi[h] * (j - p) to the scores
    (BLOOM / MPT); softcap > 0: scores s -> softcap * tanh(s / softcap) after scaling (Gemma2).
    Rows that see no key output 0. max(d, dv) <= 256."""
    _check_tensor("attention q", q, FLOATS, ndim=4)
    _check_tensor("attention k", k, (q.dtype,), ndim=4, device=q.device)
    _check_tensor("attention v", v, (q.dtype,), ndim=4, device=q.device)
    B, T, Hq, d = q.shape
    if k.shape[0] != B or k.shape[3] != d or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit "
                         "q [B, T, Hq, d], k [B, S, Hkv, d], v [B, S, Hkv, dv]")
    dv = v.shape[3]
    softcap = float(softcap)
    if not (softcap >= 0.0 and np.isfinite(softcap)):
        raise ValueError(f"attention: softcap must be finite and >= 0 (0 = off; got {softcap})")
    alibi_ptr = 0
    if alibi is not None:
        alibi = _param_f32("attention", "alibi", alibi, (Hq,), q.device)
        alibi_ptr = alibi.ptr
    S, Hkv = k.shape[1], k.shape[2]
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"attention: {Hq} query heads are not a multiple of {Hkv} kv heads")
    if q_pos0 < 0:
        raise ValueError(f"attention: q_pos0={q_pos0} must be >= 0")
    kvl_ptr = 0
    if kv_len is not None:
        kv_len = kv_len if isinstance(kv_len, GpuTensor) else from_numpy(np.asarray(kv_len, np.int64), q.device)
        _check_tensor("attention kv_len", kv_len, (int64,), ndim=1, device=q.device)
        if kv_len.shape != (B,):
            raise ValueError(f"attention kv_len: expected [{B}] entries, got {kv_len.shape}")
        kvl_ptr = kv_len.ptr
    out = _out("attention", out, (B, T, Hq, dv), q.dtype, q.device)
    C.cuda_attention(q.context.handle, q.dtype.code, q.ptr, k.ptr, v.ptr, out.ptr, B, T, S, Hq, Hkv,
                     d, float(scale), int(q_pos0), int(window), kvl_ptr, _stream(stream), alibi_ptr,
                     softcap, dv)
    return out


def _binary(op, fn, a, b, out, stream):
    _check_tensor(f"{op} {'gate' if op == 'silu_mul' else 'a'}", a, FLOATS)
    _check_tensor(f"{op} {'up' if op == 'silu_mul' else 'b'}", b, (a.dtype,), device=a.device)
    if a.size != b.size:
        raise ValueError(f"{op}: {a.shape} and {b.shape} have different sizes")
    out = _out(op, out, a.shape, a.dtype, a.device)
    fn(a.context.handle, a.dtype.code, a.ptr, b.ptr, out.ptr, a.size, _stream(stream))
    return out


def silu_mul(gate: GpuTensor, up: GpuTensor, out=None, stream=None) -> GpuTensor:
    """silu(gate) * up element-wise (out may be gate or up)."""
    return _binary("silu_mul", C.cuda_silu_mul, gate, up, out, stream)


ACT_KINDS = ("silu", "gelu", "gelu_tanh", "relu")


def act(x: GpuTensor, kind: str, out=None, stream=None) -> GpuTensor:
    """Element-wise activation (kinds of awq._awq_C.act: silu, gelu, gelu_tanh, relu); out may be x."""
    _check_tensor("act x", x, FLOATS)
    if kind not in ACT_KINDS:
        raise ValueError(f'act: unknown activation "{kind}" (expected {", ".join(ACT_KINDS)})')
    out = _out("act", out, x.shape, x.dtype, x.device)
    C.cuda_act(x.context.handle, x.dtype.code, x.ptr, out.ptr, x.size, kind, _stream(stream))
    return out


def act_mul(gate: GpuTensor, up: GpuTensor, kind: str, out=None, stream=None) -> GpuTensor:
    """act(gate) * up element-wise (kinds of act; out may be gate or up)."""
    _check_tensor("act_mul gate", gate, FLOATS)
    _check_tensor("act_mul up", up, (gate.dtype,), device=gate.device)
    if kind not in ACT_KINDS:
        raise ValueError(f'act_mul: unknown activation "{kind}" (expected {", ".join(ACT_KINDS)})')
    if gate.size != up.size:
        raise ValueError(f"act_mul: {gate.shape} and {up.shape} have different sizes")
    out = _out("act_mul", out, gate.shape, gate.dtype, gate.device)
    C.cuda_act_mul(gate.context.handle, gate.dtype.code, gate.ptr, up.ptr, out.ptr, gate.size, kind,
                   _stream(stream))
    return out


def add(a: GpuTensor, b: GpuTensor, out=None, stream=None) -> GpuTensor:
    """a + b element-wise (residual add; out may be a or b)."""
    return _binary("add", C.cuda_add, a, b, out, stream)


def abs_mean(x: GpuTensor, out=None, stream=None) -> GpuTensor:
    """Per-channel mean of |x| over all leading dimensions: fp32 [K], fp32 accumulation."""
    _check_tensor("abs_mean x", x, FLOATS)
    if x.ndim < 1 or x.shape[-1] == 0 or x.size == 0:
        raise ValueError(f"abs_mean x: needs rows and channels, got shape {x.shape}")
    K = x.shape[-1]
    out = _out("abs_mean", out, (K,), float32, x.device)
    C.cuda_abs_mean(x.context.handle, x.dtype.code, x.ptr, out.ptr, x.size // K, K, _stream(stream))
    return out


def linear(x: GpuTensor, w: GpuTensor, bias=None, out=None, out_dtype=None, stream=None) -> GpuTensor:
    """y[..., N] = x[..., K] @ w[N, K]^T (+ bias[N] fp32) through cuBLAS, fp32 accumulation.
    out_dtype: x's dtype (default) or float32."""
    _check_tensor("linear x", x, FLOATS)
    _check_tensor("linear w", w, (x.dtype,), ndim=2, device=x.device)
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear: x {x.shape} has {x.shape[-1] if x.ndim else '?'} input features "
                         f"but w is {w.shape}")
    N, K = w.shape
    if K == 0:
        raise ValueError("linear: K = 0 input features")
    yd = x.dtype if out_dtype is None else as_dtype(out_dtype)
    if yd not in (x.dtype, float32):
        raise TypeError(f"linear: out_dtype must be {x.dtype.name} or float32, got {yd.name}")
    b = _param_f32("linear", "bias", bias, (N,), x.device) if bias is not None else None
    out = _out("linear", out, x.shape[:-1] + (N,), yd, x.device)
    C.cuda_linear(x.context.handle, x.dtype.code, x.ptr, w.ptr, b.ptr if b is not None else 0,
                  yd.code, out.ptr, x.size // K, K, N, _stream(stream))
    return out


def _group(op, K, group_size):
    g = K if group_size in (-1, 0, None) else int(group_size)
    if g <= 0 or K % g:
        raise ValueError(f"{op}: group size {group_size} does not divide K={K}")
    return g


def pseudo_quantize(w: GpuTensor, group_size: int, w_bit: int, zero_point: bool, out=None,
                    check_finite: bool = True, stream=None) -> GpuTensor:
    """dequant(quant(w)) per group of group_size input columns (-1: whole rows); csrc/quant.h's
    formulas in fp32 (bit-identical to the CPU for fp32 input), rounded once to w's dtype.
    check_finite: synchronizes and raises FloatingPointError naming the first NaN/Inf group."""
    _check_tensor("pseudo_quantize w", w, FLOATS, ndim=2)
    N, K = w.shape
    g = _group("pseudo_quantize", K, group_size)
    out = _out("pseudo_quantize", out, w.shape, w.dtype, w.device)
    C.cuda_pseudo_quantize(w.context.handle, w.dtype.code, w.ptr, out.ptr, N, K, g, int(w_bit),
                           bool(zero_point), bool(check_finite), _stream(stream))
    return out


def clip_search(w: GpuTensor, x: GpuTensor, group_size: int, w_bit: int, zero_point: bool,
                n_grid: int = 20, max_shrink: float = 0.5, stream=None) -> GpuTensor:
    """AWQ clip search (contract of awq._awq_C.clip_search) on already subsampled tokens x [T, K]:
    best max_val fp32 [N, K / group_size]. Synchronizes (reports NaN/Inf inputs)."""
    _check_tensor("clip_search w", w, FLOATS, ndim=2)
    _check_tensor("clip_search x", x, (w.dtype,), ndim=2, device=w.device)
    N, K = w.shape
    if x.shape[1] != K:
        raise ValueError(f"clip_search: x has {x.shape[1]} features but w is {w.shape}")
    g = _group("clip_search", K, group_size)
    out = empty((N, K // g), float32, w.device, what="clip_search max_val")
    C.cuda_clip_search(w.context.handle, w.dtype.code, w.ptr, x.ptr, out.ptr, N, K, x.shape[0], g,
                       int(w_bit), bool(zero_point), int(n_grid), float(max_shrink), _stream(stream))
    return out


def scale_cols(x: GpuTensor, s, inverse: bool = False, out=None, stream=None) -> GpuTensor:
    """x[..., K] * s[K] (inverse: / s[K]), s fp32 (host or GpuTensor): an AWQ input-channel scale
    applied to weights [N, K] or activations [M, K]. out may be x."""
    _check_tensor("scale_cols x", x, FLOATS)
    K = x.shape[-1]
    s = _param_f32("scale_cols", "s", s, (K,), x.device)
    out = _out("scale_cols", out, x.shape, x.dtype, x.device)
    C.cuda_scale_cols(x.context.handle, x.dtype.code, x.ptr, s.ptr, out.ptr, x.size // max(K, 1), K,
                      bool(inverse), _stream(stream))
    return out


def sq_diff_sum(a: GpuTensor, b: GpuTensor, stream=None) -> float:
    """sum((a - b)^2) over all elements, accumulated in double (synchronizes)."""
    _check_tensor("sq_diff_sum a", a, FLOATS)
    _check_tensor("sq_diff_sum b", b, (a.dtype,), device=a.device)
    if a.size != b.size:
        raise ValueError(f"sq_diff_sum: {a.shape} and {b.shape} have different sizes")
    return C.cuda_sq_diff_sum(a.context.handle, a.dtype.code, a.ptr, b.ptr, a.size, _stream(stream))


def scale_rows(x: GpuTensor, s, inverse: bool = False, out=None, stream=None) -> GpuTensor:
    """x[M, K] * s[M] per row (inverse: / s[M]), s fp32 (host or GpuTensor): an AWQ scale folded
    into the output rows of the linear that feeds the scaled group. out may be x."""
    _check_tensor("scale_rows x", x, FLOATS, ndim=2)
    M, K = x.shape
    s = _param_f32("scale_rows", "s", s, (M,), x.device)
    out = _out("scale_rows", out, x.shape, x.dtype, x.device)
    C.cuda_scale_rows(x.context.handle, x.dtype.code, x.ptr, s.ptr, out.ptr, M, K, bool(inverse), _stream(stream))
    return out


def weight_mean(ws, group_size: int, stream=None) -> np.ndarray:
    """AWQ's w_mean over the rows of all weights in ws (each [N_i, K]): per column k the mean of
    |w| / (max |w| of its group + 1e-6), float64 [K] on the host (synchronizes)."""
    ws = list(ws)
    if not ws:
        raise ValueError("weight_mean: no weights")
    for w in ws:
        _check_tensor("weight_mean w", w, FLOATS, ndim=2, device=ws[0].device)
    K = ws[0].shape[1]
    if any(w.shape[1] != K for w in ws):
        raise ValueError(f"weight_mean: weights of different widths {[w.shape for w in ws]}")
    g = _group("weight_mean", K, group_size)
    acc = from_numpy(np.zeros(K, np.int64), ws[0].device)  # K zeroed 8-byte cells: float64 sums
    for w in ws:
        C.cuda_weight_mean(w.context.handle, w.dtype.code, w.ptr, w.shape[0], K, g, acc.ptr, _stream(stream))
    return acc.to_numpy().view(np.float64) / sum(w.shape[0] for w in ws)


def clamp_groups(w: GpuTensor, max_val: GpuTensor, group_size: int, out=None, stream=None) -> GpuTensor:
    """w clamped to +-max_val[n, k // g] per group (numpy.clip); max_val fp32 [N, K / g]."""
    _check_tensor("clamp_groups w", w, FLOATS, ndim=2)
    N, K = w.shape
    g = _group("clamp_groups", K, group_size)
    mv = _param_f32("clamp_groups", "max_val", max_val, (N, K // g), w.device)
    out = _out("clamp_groups", out, w.shape, w.dtype, w.device)
    C.cuda_clamp_groups(w.context.handle, w.dtype.code, w.ptr, mv.ptr, out.ptr, N, K, g, _stream(stream))
    return out


def quantize_gemm(w: GpuTensor, group_size: int, zero_point: bool = True, stream=None):
    """4-bit quantization of w [N, K] on the device into the AutoAWQ GEMM layout, returned on the
    host: (qweight int32 [K, N/8], scales float32 [N, G], zero codes uint8 [N, G]); the same codes
    as awq._awq_C.quantize_codes + pack_gemm on the same fp32 weights. NaN/Inf raise
    FloatingPointError naming the group."""
    _check_tensor("quantize_gemm w", w, FLOATS, ndim=2)
    N, K = w.shape
    g = _group("quantize_gemm", K, group_size)
    if N % 8:
        raise ValueError(f"quantize_gemm: out_features {N} is not a multiple of 8 (AWQ GEMM packing)")
    qw = empty((K, N // 8), int32, w.device, what="quantize_gemm qweight")
    sc = empty((N, K // g), float32, w.device, what="quantize_gemm scales")
    zr = empty((N, K // g), uint8, w.device, what="quantize_gemm zeros")
    C.cuda_quantize_gemm(w.context.handle, w.dtype.code, w.ptr, N, K, g, bool(zero_point), qw.ptr, sc.ptr, zr.ptr,
                         _stream(stream))
    return qw.to_numpy(), sc.to_numpy(), zr.to_numpy()


def rows(t: GpuTensor, a0: int, a1: int) -> GpuTensor:
    """View of rows a0:a1 along the first dimension (no copy; shares t's memory)."""
    if not t.shape or not 0 <= a0 <= a1 <= t.shape[0]:
        raise ValueError(f"rows: {a0}:{a1} outside the {t.shape[0] if t.shape else 0} rows of {t!r}")
    row_bytes = t.nbytes // t.shape[0] if t.shape[0] else 0
    return GpuTensor((a1 - a0,) + t.shape[1:], t.dtype, t.device, t.ptr + a0 * row_bytes, t._owner, t.readonly)


__all__ = [
    "DType", "DTYPES", "GpuTensor", "Context", "context", "is_available", "device_count",
    "memory_stats", "empty_cache", "synchronize", "as_dtype", "empty", "zeros", "from_numpy",
    "from_dlpack", "as_gpu", "rmsnorm", "layernorm", "rope_", "attention", "silu_mul", "act",
    "act_mul", "ACT_KINDS", "add", "abs_mean",
    "linear", "pseudo_quantize", "clip_search", "scale_cols", "scale_rows", "sq_diff_sum", "weight_mean",
    "clamp_groups", "quantize_gemm", "rows", "float32", "float16", "bfloat16", "int32",
    "int64", "uint8",
]


def strided_copy(t: GpuTensor, offset: int, shape, strides, stream=None) -> GpuTensor:
    """A contiguous copy of the strided view of t starting `offset` elements in, with `shape` and
    `strides` in elements (checked to stay inside t)."""
    _check_tensor("strided_copy t", t)
    shape, strides = tuple(int(s) for s in shape), tuple(int(s) for s in strides)
    if len(shape) != len(strides) or offset < 0 or any(s < 0 for s in shape) or any(s < 0 for s in strides):
        raise ValueError(f"strided_copy: bad view offset={offset} shape={shape} strides={strides}")
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else offset
    if last >= max(t.size, 1) and all(shape):
        raise ValueError(f"strided_copy: the view reaches element {last} of a tensor of {t.size}")
    out = empty(shape, t.dtype, t.device, what="strided copy")
    if out.size:
        C.cuda_copy_strided(t.context.handle, t.itemsize, t.ptr + offset * t.itemsize, shape, strides, out.ptr,
                            _stream(stream))
    return out


def split_cols(y: GpuTensor, F: int, stream=None):
    """y [M, N] -> contiguous (y[:, :F], y[:, F:])."""
    M, N = y.shape
    return (strided_copy(y, 0, (M, F), (N, 1), stream), strided_copy(y, F, (M, N - F), (N, 1), stream))


def split_qkv(y: GpuTensor, layout: str, Hq: int, Hkv: int, d: int, stream=None):
    """A fused q|k|v output [M, (Hq + 2 Hkv) d] -> contiguous q [M, Hq, d], k, v [M, Hkv, d]
    (layouts as awq.runtime.layers.CpuOps.split_qkv)."""
    M, N = y.shape
    if N != (Hq + 2 * Hkv) * d:
        raise ValueError(f"split_qkv: {N} columns, expected ({Hq} + 2*{Hkv}) * {d}")
    sc = lambda off, shape, strides: strided_copy(y, off, shape, strides, stream)  # noqa: E731
    if layout == "concat":
        q = sc(0, (M, Hq * d), (N, 1))
        k = sc(Hq * d, (M, Hkv * d), (N, 1))
        v = sc((Hq + Hkv) * d, (M, Hkv * d), (N, 1))
    elif layout == "heads":
        q, k, v = (sc(j * d, (M, Hq, d), (N, 3 * d, 1)) for j in range(3))
    elif layout == "groups":
        G = Hq // Hkv
        q = sc(0, (M, Hkv, G, d), (N, (G + 2) * d, d, 1))
        k = sc(G * d, (M, Hkv, d), (N, (G + 2) * d, 1))
        v = sc((G + 1) * d, (M, Hkv, d), (N, (G + 2) * d, 1))
    else:
        raise ValueError(f"split_qkv: unknown layout {layout!r}")
    return q.reshape(M, Hq, d), k.reshape(M, Hkv, d), v.reshape(M, Hkv, d)


def scale(a: GpuTensor, s: float, stream=None) -> GpuTensor:
    """a * s (a scalar) as a new tensor."""
    K = a.shape[-1]
    return scale_cols(a, np.full(K, s, np.float32), stream=stream)


def to_host(t) -> np.ndarray:
    """A GpuTensor as a host float32 array (host arrays pass through)."""
    return t.to(float32).to_numpy() if isinstance(t, GpuTensor) else np.asarray(t, np.float32)


def zeros_like(t: GpuTensor) -> GpuTensor:
    return zeros(t.shape, t.dtype, t.device)


def _row_index(op: str, idx, M: int, device: int, distinct: bool = False) -> GpuTensor:
    a = np.ascontiguousarray(idx, np.int64).ravel()
    if a.size and (a.min() < 0 or a.max() >= M):
        raise IndexError(f"{op}: row index {int(a[(a < 0) | (a >= M)][0])} is outside [0, {M})")
    if distinct and np.unique(a).size != a.size:
        raise ValueError(f"{op}: indices must be distinct")
    return from_numpy(a, device)


def index_rows(src: GpuTensor, idx, stream=None) -> GpuTensor:
    """src[idx] for src [M, K] and host int indices [n] -> [n, K] (MoE: an expert's tokens)."""
    _check_tensor("index_rows src", src, FLOATS, ndim=2)
    M, K = src.shape
    d_idx = _row_index("index_rows", idx, M, src.device)
    n = d_idx.shape[0]
    out = empty((n, K), src.dtype, src.device, what="gathered rows")
    C.cuda_index_rows(src.context.handle, src.dtype.code, src.ptr, M, d_idx.ptr, n, K, out.ptr, _stream(stream))
    return out


def index_add_rows_(dst: GpuTensor, idx, src: GpuTensor, w=None, stream=None) -> GpuTensor:
    """dst[idx[i]] += w[i] * src[i] in fp32 (host int indices, distinct; w host floats or None)."""
    _check_tensor("index_add_rows dst", dst, FLOATS, ndim=2)
    _check_tensor("index_add_rows src", src, (dst.dtype,), ndim=2, device=dst.device)
    dst._check_writable("index_add_rows_")
    M, K = dst.shape
    d_idx = _row_index("index_add_rows", idx, M, dst.device, distinct=True)
    n = d_idx.shape[0]
    if src.shape != (n, K):
        raise ValueError(f"index_add_rows: src {src.shape}, expected {(n, K)}")
    wp = 0
    if w is not None:
        w = _param_f32("index_add_rows", "w", np.asarray(w, np.float32).ravel(), (n,), dst.device)
        wp = w.ptr
    C.cuda_index_add_rows(dst.context.handle, dst.dtype.code, dst.ptr, M, d_idx.ptr, src.ptr, wp, n, K,
                          _stream(stream))
    return dst


def concat_rows(parts) -> GpuTensor:
    """[n_i, K] tensors -> one [sum n_i, K] tensor."""
    parts = list(parts)
    K = parts[0].shape[1]
    out = empty((sum(p.shape[0] for p in parts), K), parts[0].dtype, parts[0].device, what="concatenated rows")
    r = 0
    for p in parts:
        rows(out, r, r + p.shape[0]).copy_(p)
        r += p.shape[0]
    return out


def concat_cols(x: GpuTensor, y: GpuTensor, y_group: int = 1, stream=None) -> GpuTensor:
    """[x | y] along the last axis: x [M, a], y [M / y_group, b] (row i takes y's row i // y_group,
    so one y row can serve a group of x rows) -> [M, a + b]."""
    _check_tensor("concat_cols x", x, FLOATS, ndim=2)
    _check_tensor("concat_cols y", y, (x.dtype,), ndim=2, device=x.device)
    M, a = x.shape
    if y_group < 1 or M % y_group or y.shape[0] != M // y_group:
        raise ValueError(f"concat_cols: y {y.shape} does not give one row per {y_group} of x's {M} rows")
    b = y.shape[1]
    out = empty((M, a + b), x.dtype, x.device, what="concatenated columns")
    C.cuda_concat_cols(x.context.handle, x.dtype.code, x.ptr, y.ptr, out.ptr, M, a, b, y_group, _stream(stream))
    return out


def clamp_(x: GpuTensor, c: float, stream=None) -> GpuTensor:
    """x clipped to [-c, c] in place (MPT's clip_qkv)."""
    M, N = x.size // x.shape[-1], x.shape[-1]
    x2 = x.reshape(M, N)
    clamp_groups(x2, np.full((M, 1), c, np.float32), N, out=x2, stream=stream)
    return x


def mul_cols(x: GpuTensor, w, stream=None) -> GpuTensor:
    """x [..., K] * w [K] (a new tensor)."""
    return scale_cols(x, w.reshape(-1) if isinstance(w, GpuTensor) else np.asarray(w, np.float32).ravel(),
                      stream=stream)
