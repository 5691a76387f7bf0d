"""awq.gpu.GpuTensor, the caching allocator and DLPack / __cuda_array_interface__ exchange.

Three tiers: tests that need no GPU (the no-GPU error, DLPack capsule parsing in C) run in CI;
the rest skip cleanly without a device, and the torch round trips also skip without torch.
Zero-copy is verified through data_ptr(); ownership by dropping the producer before reading.
"""
import gc
import sys

import numpy as np
import pytest

from awq import gpu
from awq._backend import C

INFO = C.cuda_info()
HAS_GPU = bool(INFO["built"] and INFO["devices"])
needs_cuda_build = pytest.mark.skipif(not INFO["built"], reason="awq was built without CUDA")
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason=f"no usable CUDA device: {INFO['error']}")


@pytest.fixture
def torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    return torch


def bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even (finite inputs)."""
    b = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_values(bits):
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------- no GPU (runs in CI)


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_no_gpu_raises_clear_runtime_error():
    assert not gpu.is_available()
    reason = INFO["error"] or "no CUDA device found"
    for call in (lambda: gpu.empty((2, 3), "float16"), lambda: gpu.from_numpy(np.zeros(3, np.float32)),
                 lambda: gpu.context(0), lambda: gpu.memory_stats()):
        with pytest.raises(RuntimeError, match="CUDA is not available") as e:
            call()
        assert reason in str(e.value)  # names why: the failing CUDA call, or no build / no device


def test_import_touches_no_gpu():
    import subprocess

    code = "import awq.gpu as g, sys; assert not g._contexts; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_dtype_names():
    assert gpu.as_dtype("float16") is gpu.float16
    assert gpu.as_dtype(np.float32) is gpu.float32
    assert gpu.as_dtype("torch.bfloat16") is gpu.bfloat16
    assert gpu.as_dtype(np.dtype("int64")) is gpu.int64
    with pytest.raises(TypeError, match="unsupported GPU dtype"):
        gpu.as_dtype("complex64")


@needs_cuda_build
def test_dtype_table_matches_core():
    names = C.cuda_dtype_names()
    assert {d.name: d.code for d in gpu.DTYPES.values()} == {n: i for i, n in enumerate(names)}


@needs_cuda_build
def test_size_classes():
    assert C.cuda_size_class(1) == 512
    for n in [513, 1000, 4097, 3 << 20, (5 << 30) + 7, 1 << 50]:
        c = C.cuda_size_class(n)
        assert n <= c <= n + max(n // 4, 512) and c - n < (2 << 20)


@needs_cuda_build
def test_dlpack_capsule_roundtrip_in_c():
    """Export then import a capsule without touching a GPU: shape, dtype, device, pointer and the
    owner's reference count through the consumer's lifetime."""
    owner = object()
    before = sys.getrefcount(owner)
    for versioned in (False, True):
        cap = C.dlpack_export(owner, 0x1000, (3, 4, 5), (2, 16, 1), 1, versioned)
        assert sys.getrefcount(owner) == before + 1
        imp_owner, ptr, shape, strides, dl, dev, ro = C.dlpack_import(cap)
        assert (ptr, shape, strides, dl, dev, ro) == (0x1000, (3, 4, 5), (20, 5, 1), (2, 16, 1), (2, 1), False)
        with pytest.raises(ValueError, match="consumed only once"):
            C.dlpack_import(cap)
        del cap
        assert sys.getrefcount(owner) == before + 1  # the importer's owner keeps it
        del imp_owner
        gc.collect()
        assert sys.getrefcount(owner) == before
    cap = C.dlpack_export(owner, 0x1000, (2,), (2, 32, 1), 0, False)
    del cap  # never consumed: the capsule's destructor releases the owner
    assert sys.getrefcount(owner) == before


@needs_cuda_build
def test_dlpack_import_parses_foreign_capsules():
    """numpy's own capsules (legacy and versioned, a strided and a read-only array) parse right."""
    a = np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2]
    owner, ptr, shape, strides, dl, dev, ro = C.dlpack_import(a.__dlpack__())
    assert (ptr, shape, strides, dl, dev) == (a.ctypes.data, (4, 3), (6, 2), (0, 32, 1), (1, 0))
    b = np.ones(5, np.float16)
    b.flags.writeable = False
    try:
        cap = b.__dlpack__(max_version=(1, 0))
    except TypeError:
        pytest.skip("this numpy exports no versioned DLPack capsules")
    owner, ptr, shape, strides, dl, dev, ro = C.dlpack_import(cap)
    assert (ptr, shape, dl, dev, ro) == (b.ctypes.data, (5,), (2, 16, 1), (1, 0), True)
    with pytest.raises(ValueError, match="only CUDA device tensors"):
        gpu.from_dlpack(b) if HAS_GPU else gpu.from_dlpack(np.ones(2).__dlpack__())


# ---------------------------------------------------------------- tensors on the GPU


@needs_gpu
@pytest.mark.parametrize("name", ["float32", "float16", "int32", "int64", "uint8"])
@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5), (2, 0, 3), (2, 3, 33)])
def test_numpy_roundtrip(rng, name, shape):
    a = (rng.standard_normal(shape) * 100).astype(name)
    t = gpu.from_numpy(a)
    assert (t.shape, t.dtype.name, t.device, t.nbytes) == (a.shape, name, 0, a.nbytes)
    b = t.to_numpy()
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(b, a)


@needs_gpu
def test_bfloat16_values_and_bits(rng):
    x = rng.standard_normal((3, 37)).astype(np.float32) * 10
    t = gpu.from_numpy(x, dtype="bfloat16")
    np.testing.assert_array_equal(t.to_numpy(), bf16_bits(x))  # device rounding == host RNE
    np.testing.assert_array_equal(t.to("float32").to_numpy(), bf16_values(bf16_bits(x)))
    u = gpu.from_numpy(t.to_numpy(), dtype="bfloat16")  # raw bits back in
    np.testing.assert_array_equal(u.to_numpy(), t.to_numpy())
    h = t.to("float16").to_numpy()
    np.testing.assert_array_equal(h, bf16_values(bf16_bits(x)).astype(np.float16))


@needs_gpu
def test_views_copies_and_fill(rng):
    a = rng.standard_normal((4, 6)).astype(np.float32)
    t = gpu.from_numpy(a)
    v = t.reshape(-1, 3)
    assert v.shape == (8, 3) and v.ptr == t.ptr
    np.testing.assert_array_equal(v.to_numpy(), a.reshape(8, 3))
    with pytest.raises(ValueError, match="cannot view"):
        t.reshape(5, 5)
    c = t.clone()
    assert c.ptr != t.ptr
    t.fill_bytes_(0xFF)
    assert np.isnan(t.to_numpy()).all()
    np.testing.assert_array_equal(c.to_numpy(), a)
    t.copy_(c)
    np.testing.assert_array_equal(t.to_numpy(), a)
    t.zero_()
    assert not t.to_numpy().any()
    del t
    np.testing.assert_array_equal(v.to_numpy().ravel(), np.zeros(24))  # the view keeps the block


@needs_gpu
def test_allocator_reuses_blocks_and_empties_cache():
    ctx = gpu.context(0)
    ctx.empty_cache()
    s0 = ctx.memory_stats()
    nbytes = (1 << 20) + 12
    t = gpu.empty(nbytes, "uint8")
    p = t.ptr
    s1 = ctx.memory_stats()
    assert s1["in_use"] - s0["in_use"] == C.cuda_size_class(nbytes)
    assert s1["requested"] - s0["requested"] == nbytes
    assert s1["n_cuda_malloc"] == s0["n_cuda_malloc"] + 1
    del t
    s2 = ctx.memory_stats()
    assert s2["in_use"] == s0["in_use"] and s2["cached"] == C.cuda_size_class(nbytes)
    t2 = gpu.empty(nbytes - 5, "uint8")  # same size class: the cached block comes back
    assert t2.ptr == p
    s3 = ctx.memory_stats()
    assert s3["n_cuda_malloc"] == s1["n_cuda_malloc"] and s3["n_cache_hit"] == s1["n_cache_hit"] + 1
    assert s3["peak_in_use"] >= s3["in_use"] and s3["reserved"] == s3["in_use"] + s3["cached"]
    del t2
    gpu.empty_cache()
    s4 = ctx.memory_stats()
    assert s4["cached"] == 0 and s4["reserved"] == s4["in_use"]
    assert s4["n_cuda_free"] >= s3["n_cuda_free"] + 1


@needs_gpu
def test_out_of_memory_names_allocation_and_size():
    n = 1 << 50  # 1 PiB
    with pytest.raises(MemoryError) as e:
        gpu.empty((n,), "uint8")
    msg = str(e.value)
    assert str(n) in msg and f"GpuTensor({n},) uint8" in msg and "cudaMalloc(" in msg, msg
    with pytest.raises(MemoryError, match="my activations"):
        gpu.empty((n // 4,), "float32", what="my activations")
    t = gpu.from_numpy(np.arange(5, dtype=np.int64))  # the device is still usable
    np.testing.assert_array_equal(t.to_numpy(), np.arange(5))


@needs_gpu
def test_bad_arguments_raise_clear_errors():
    x = gpu.empty((3, 8), "float16")
    with pytest.raises(TypeError, match="expected a GpuTensor, got ndarray.*from_numpy"):
        gpu.rmsnorm(np.zeros((3, 8), np.float16), np.ones(8), 1e-6)
    with pytest.raises(TypeError, match="dtype int32"):
        gpu.rmsnorm(gpu.empty((3, 8), "int32"), np.ones(8), 1e-6)
    with pytest.raises(ValueError, match=r"expected shape \(8,\)"):
        gpu.rmsnorm(x, np.ones(7), 1e-6)
    with pytest.raises(TypeError, match="linear w: dtype float32"):
        gpu.linear(x, gpu.empty((4, 8), "float32"))
    with pytest.raises(ValueError, match="input features"):
        gpu.linear(x, gpu.empty((4, 9), "float16"))
    with pytest.raises(ValueError, match="out: expected shape"):
        gpu.silu_mul(x, x, out=gpu.empty((3, 9), "float16"))
    with pytest.raises(ValueError, match="does not exist"):
        gpu.context(1000)
    with pytest.raises(ValueError, match="group size 5"):
        gpu.pseudo_quantize(x, 5, 4, True)


# ---------------------------------------------------------------- DLPack and the CUDA array interface


TORCH_DTYPES = ["float32", "float16", "bfloat16", "int32", "int64", "uint8"]


@needs_gpu
@pytest.mark.parametrize("name", TORCH_DTYPES)
def test_torch_to_gpu_zero_copy(torch_cuda, name):
    torch = torch_cuda
    x = (torch.randn(3, 5, device="cuda") * 50).to(getattr(torch, name))
    for t in (gpu.from_dlpack(x), gpu.from_dlpack(torch.utils.dlpack.to_dlpack(x))):
        assert t.ptr == x.data_ptr() and t.shape == (3, 5) and t.dtype.name == name
    ref = x.clone()
    del x  # t keeps torch's memory alive
    torch.cuda.empty_cache()
    got = t.to_numpy()
    want = ref.view(torch.int16).cpu().numpy().view(np.uint16) if name == "bfloat16" else ref.cpu().numpy()
    np.testing.assert_array_equal(got, want)


@needs_gpu
def test_torch_writes_and_ours_are_shared(torch_cuda):
    torch = torch_cuda
    x = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4)
    t = gpu.from_dlpack(x)
    t.zero_()  # our kernel on stream 0, torch reads on its current (default) stream
    assert torch.count_nonzero(x).item() == 0
    x.fill_(2.0)
    torch.cuda.synchronize()
    np.testing.assert_array_equal(t.to_numpy(), np.full((3, 4), 2.0, np.float32))


@needs_gpu
def test_torch_strided_input_is_copied(torch_cuda):
    torch = torch_cuda
    x = torch.randn(6, 10, device="cuda", dtype=torch.float16)
    for xs in (x.t(), x[:, ::3], x[1:4, 2:7]):
        t = gpu.from_dlpack(xs)
        np.testing.assert_array_equal(t.to_numpy(), xs.cpu().numpy())
    t = gpu.from_dlpack(x[2:4])  # a contiguous slice with an offset stays zero-copy
    assert t.ptr == x[2:4].data_ptr()


@needs_gpu
@pytest.mark.parametrize("name", TORCH_DTYPES)
def test_gpu_to_torch_zero_copy(torch_cuda, rng, name):
    torch = torch_cuda
    a = (rng.standard_normal((4, 7)) * 50).astype(np.float32)
    t = gpu.from_numpy(a, dtype=name)
    want = t.to_numpy()
    for y in (torch.from_dlpack(t), torch.utils.dlpack.from_dlpack(t),
              torch.utils.dlpack.from_dlpack(t.__dlpack__())):
        assert y.data_ptr() == t.ptr and y.is_cuda and tuple(y.shape) == (4, 7)
        assert str(y.dtype) == f"torch.{name}"
    ptr = t.ptr
    del t  # the torch tensor owns a reference to the GpuTensor
    gc.collect()
    assert gpu.empty((4, 7), name).ptr != ptr  # so the block is not back in the cache
    got = y.view(torch.int16).cpu().numpy().view(np.uint16) if name == "bfloat16" else y.cpu().numpy()
    np.testing.assert_array_equal(got, want)
    y.add_(1)  # torch writes into our memory
    assert y.data_ptr() == ptr


@needs_gpu
def test_roundtrip_torch_gpu_torch_keeps_pointer(torch_cuda):
    torch = torch_cuda
    x = torch.randn(2, 3, 5, device="cuda", dtype=torch.bfloat16)
    y = torch.from_dlpack(gpu.from_dlpack(x))
    assert y.data_ptr() == x.data_ptr() and torch.equal(x, y)


@needs_gpu
def test_cuda_array_interface_with_torch(torch_cuda, rng):
    torch = torch_cuda
    a = rng.standard_normal((3, 11)).astype(np.float16)
    t = gpu.from_numpy(a)
    cai = t.__cuda_array_interface__
    assert cai["version"] == 3 and cai["typestr"] == "<f2" and cai["data"] == (t.ptr, False)
    y = torch.as_tensor(t, device="cuda")
    assert y.data_ptr() == t.ptr
    np.testing.assert_array_equal(y.cpu().numpy(), a)
    assert not hasattr(gpu.empty(3, "bfloat16"), "__cuda_array_interface__")  # no typestr: DLPack


@needs_gpu
def test_dlpack_protocol_arguments(torch_cuda):
    torch = torch_cuda
    t = gpu.from_numpy(np.arange(6, dtype=np.float32))
    assert t.__dlpack_device__() == (2, 0)
    with pytest.raises(BufferError):
        t.__dlpack__(dl_device=(1, 0))
    s = torch.cuda.Stream()
    y = torch.utils.dlpack.from_dlpack(t.__dlpack__(stream=s.cuda_stream))  # side stream waits on ours
    with torch.cuda.stream(s):
        z = y * 2
    s.synchronize()
    np.testing.assert_array_equal(z.cpu().numpy(), np.arange(6) * 2.0)
    c = torch.utils.dlpack.from_dlpack(t.__dlpack__(copy=True))
    assert c.data_ptr() != t.ptr
