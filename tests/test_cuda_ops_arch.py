"""GPU twins of the architecture ops (csrc/kernels/ops.cu through awq.gpu) against float64 numpy.

layernorm, the activation table (act / act_mul), GPT-J's interleaved rope, and attention with ALiBi
slopes, tanh soft-capping and a value head dim dv != d. Same conventions as test_cuda_ops.py: inputs
drawn in fp32, rounded to the tested dtype on the host, the reference computed in float64 from
exactly those rounded values, so tolerances only cover the kernel's fp32 arithmetic plus one
rounding of the output (unit roundoff U). Output buffers are poisoned with NaN before every call.
Odd shapes: M = 1, 3, 7, 33; D = 5, 67, 577, 4100; Hq = 6 over Hkv = 2 or 3; d = 10, 24, 67; more
query rows than one attention block and more keys than one key tile. The attention cases cover
both kernels: fp16 / bf16 with d == dv, d % 8 == 0, d <= 128 run on tensor cores, everything else
(fp32, dv != d, odd d) on the CUDA-core kernel. Every test prints its seed. Skips without a CUDA
device.
"""
import math

import numpy as np
import pytest

from awq import gpu
from awq._backend import C
from test_cuda_ops import FLOATS, U, decode, download, encode, poisoned
from test_ops import attention_ref
from test_ops_arch import alibi_slopes

INFO = C.cuda_info()
pytestmark = pytest.mark.skipif(not (INFO["built"] and INFO["devices"]),
                                reason=f"no usable CUDA device: {INFO['error']}")

ACT_KINDS = ["silu", "gelu", "gelu_tanh", "relu"]


def rand(rng, shape, name, scale=1.0, offset=0.0):
    """(GpuTensor of dtype `name`, its exact float64 values)."""
    h = encode(rng.standard_normal(shape) * scale + offset, name)
    return gpu.from_numpy(h, dtype=name), decode(h, name)


def layernorm_ref(x64, w, b, eps):
    mean = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + eps)
    if w is not None:
        y = y * w.astype(np.float64)
    if b is not None:
        y = y + b.astype(np.float64)
    return y


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("M", [1, 3, 7, 33])
@pytest.mark.parametrize("D", [5, 67, 577, 4100])
@pytest.mark.parametrize("affine", ["wb", "none"])
def test_layernorm(rng, name, M, D, affine):
    # An offset of 10 standard deviations: the two-pass statistics keep the variance.
    x, x64 = rand(rng, (M, D), name, 3.0, 30.0)
    w = rng.standard_normal(D).astype(np.float32) if "w" in affine else None
    b = rng.standard_normal(D).astype(np.float32) if "b" in affine else None
    out = gpu.layernorm(x, w, b, 1e-5, out=poisoned((M, D), name))
    # fp32 block sums (tree order) for mean and variance, x - mean of values ~30 (a few 2^-24 of 30
    # relative to the std 3), then one rounding of the output.
    np.testing.assert_allclose(download(out), layernorm_ref(x64, w, b, 1e-5),
                               rtol=2 * U[name] + 2e-5, atol=2e-5)


def test_layernorm_in_place_leading_dims_and_errors(rng):
    x, x64 = rand(rng, (2, 3, 67), "float32")
    w, b = rng.standard_normal(67).astype(np.float32), rng.standard_normal(67).astype(np.float32)
    y = gpu.layernorm(x, w, b, 1e-6, out=x)
    assert y is x
    np.testing.assert_allclose(download(x), layernorm_ref(x64, w, b, 1e-6), rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="layernorm w"):
        gpu.layernorm(x, np.ones(66, np.float32), None, 1e-5)
    with pytest.raises(ValueError, match="layernorm b"):
        gpu.layernorm(x, None, np.ones(68, np.float32), 1e-5)
    with pytest.raises(ValueError, match="eps"):
        gpu.layernorm(x, None, None, -1.0)


# ---------------------------------------------------------------- act / act_mul

_erf = np.vectorize(math.erf, otypes=[np.float64])


def act_ref(kind, x):
    if kind == "silu":
        return x / (1.0 + np.exp(-x))
    if kind == "gelu":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if kind == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return np.maximum(x, 0.0)


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("kind", ACT_KINDS)
@pytest.mark.parametrize("n", [1, 7, 1001, 70001])
def test_act_and_act_mul(rng, name, kind, n):
    x, x64 = rand(rng, (n,), name, 4.0)
    u, u64 = rand(rng, (n,), name)
    y = gpu.act(x, kind, out=poisoned((n,), name))
    # CUDA's expf / erfcf (a few 2^-24), a division and products, then the output rounding; the
    # atol covers results that underflow in the negative tail.
    np.testing.assert_allclose(download(y), act_ref(kind, x64), rtol=2 * U[name] + 4e-6, atol=1e-6)
    z = gpu.act_mul(x, u, kind, out=poisoned((n,), name))
    np.testing.assert_allclose(download(z), act_ref(kind, x64) * u64, rtol=2 * U[name] + 4e-6,
                               atol=1e-6)


@pytest.mark.parametrize("name", FLOATS)
def test_act_mul_silu_is_silu_mul_and_in_place(rng, name):
    g, _ = rand(rng, (3, 77), name, 4.0)
    u, _ = rand(rng, (3, 77), name)
    a = gpu.act_mul(g, u, "silu")
    np.testing.assert_array_equal(a.to_numpy(), gpu.silu_mul(g, u).to_numpy())
    b = gpu.act_mul(g, u, "gelu")
    gpu.act_mul(g, u, "gelu", out=g)  # out may be gate
    np.testing.assert_array_equal(g.to_numpy(), b.to_numpy())


def test_act_matches_cpu_core(rng):
    x = (rng.standard_normal(4097) * 4).astype(np.float32)
    for kind in ACT_KINDS:
        got = gpu.act(gpu.from_numpy(x), kind).to_numpy()
        np.testing.assert_allclose(got, C.act(x, kind), rtol=1e-5, atol=1e-6)


def test_act_bad_kind(rng):
    x, _ = rand(rng, (4,), "float32")
    with pytest.raises(ValueError, match='unknown activation "swish"'):
        gpu.act(x, "swish")
    with pytest.raises(ValueError, match='unknown activation "gelu_new"'):
        gpu.act_mul(x, x, "gelu_new")
    with pytest.raises(ValueError, match="different sizes"):
        gpu.act_mul(x, gpu.empty((5,), "float32"), "relu")


# ---------------------------------------------------------------- rope (interleaved)


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("M,H", [(1, 1), (3, 6), (33, 2)])
@pytest.mark.parametrize("d,rot", [(10, 10), (64, 64), (67, 20), (256, 64)])
def test_rope_interleaved(rng, name, M, H, d, rot):
    x, x64 = rand(rng, (M, H, d), name)
    ang = rng.uniform(-50, 50, (M, rot // 2))
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    assert gpu.rope_(x, cos, sin, rot, interleaved=True) is x
    c, s = cos.astype(np.float64)[:, None, :], sin.astype(np.float64)[:, None, :]
    ref = x64.copy()
    even, odd = x64[..., 0:rot:2], x64[..., 1:rot:2]
    ref[..., 0:rot:2] = even * c - odd * s
    ref[..., 1:rot:2] = odd * c + even * s
    got = download(x)
    np.testing.assert_array_equal(got[..., rot:], x64[..., rot:])  # untouched dims
    # two fp32 products and a sum + output rounding
    np.testing.assert_allclose(got, ref, rtol=2 * U[name], atol=1e-6)


def test_rope_interleaved_matches_cpu_and_checks_its_flag(rng):
    x = rng.standard_normal((7, 6, 10)).astype(np.float32)
    ang = rng.uniform(-5, 5, (7, 4))
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    for inter in (False, True):
        cpu = x.copy()
        C.rope_(cpu, cos, sin, 8, inter)
        g = gpu.rope_(gpu.from_numpy(x), cos, sin, 8, interleaved=inter).to_numpy()
        np.testing.assert_allclose(g, cpu, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="interleaved must be a bool"):
        gpu.rope_(gpu.from_numpy(x), cos, sin, 8, 0)


# ---------------------------------------------------------------- attention: alibi, softcap, dv


ARCH_CASES = [
    # B, T, S, Hq, Hkv, d, dv, q_pos0, window, kv_len, alibi, softcap
    (2, 33, 33, 6, 2, 64, 64, 0, 0, None, True, 0.0),  # ALiBi prefill (tensor cores for 16-bit)
    (2, 5, 100, 6, 3, 128, 128, 95, 0, [100, 61], True, 0.0),  # ALiBi on a cache, kv_len
    (1, 70, 90, 6, 2, 10, 10, 20, 0, None, True, 0.0),  # odd d: CUDA-core kernel
    (2, 33, 33, 6, 2, 64, 64, 0, 0, None, False, 2.0),  # softcap, tight cap
    (1, 40, 40, 6, 3, 128, 128, 0, 7, None, False, 50.0),  # softcap + window (Gemma2 local)
    (2, 13, 13, 6, 2, 67, 10, 0, 0, None, False, 0.0),  # dv < d
    (2, 5, 13, 6, 3, 24, 67, 8, 0, None, False, 0.0),  # dv > d
    (2, 9, 41, 6, 6, 192, 128, 32, 0, None, False, 0.0),  # DeepSeek MLA head dims
    (2, 7, 90, 6, 2, 40, 24, 83, 20, [90, 0], True, 3.0),  # everything, an empty batch row
]


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("case", ARCH_CASES,
                         ids=lambda c: "B{}T{}S{}H{}-{}d{}dv{}p{}w{}kvl{}al{}cap{}".format(
                             *c[:9], int(c[9] is not None), int(c[10]), c[11]))
def test_attention_arch(rng, name, case):
    B, T, S, Hq, Hkv, d, dv, q_pos0, window, kv_len, use_alibi, softcap = case
    q, q64 = rand(rng, (B, T, Hq, d), name, 3.0 if softcap else 1.0)
    k, k64 = rand(rng, (B, S, Hkv, d), name)
    v, v64 = rand(rng, (B, S, Hkv, dv), name)
    scale = d**-0.5
    alibi = alibi_slopes(Hq) if use_alibi else None
    out = gpu.attention(q, k, v, scale, q_pos0, window, kv_len, out=poisoned((B, T, Hq, dv), name),
                        alibi=alibi, softcap=softcap)
    assert out.shape == (B, T, Hq, dv)
    ref = attention_ref(q64, k64, v64, scale, q_pos0, window, kv_len, alibi, softcap)
    # As test_cuda_ops.test_attention: fp32 scores and softmax (the extra terms add a few 2^-24 of
    # |alibi (j - p)| and of the cap), P rounded to the input dtype on tensor cores (at most
    # U max|v|), one rounding of the output (rtol).
    atol = U[name] * np.abs(v64).max() + 4e-6
    np.testing.assert_allclose(download(out), ref, rtol=2 * U[name], atol=atol)
    if kv_len is not None and 0 in kv_len:
        assert not download(out)[kv_len.index(0)].any()


def test_attention_arch_matches_cpu_core(rng):
    """Same suite, two backends: GPU and CPU core agree on fp32 inputs with every option."""
    B, T, S, Hq, Hkv, d, dv = 2, 9, 41, 6, 2, 32, 20
    q = (rng.standard_normal((B, T, Hq, d)) * 3).astype(np.float32)
    k = rng.standard_normal((B, S, Hkv, d)).astype(np.float32)
    v = rng.standard_normal((B, S, Hkv, dv)).astype(np.float32)
    kw = dict(alibi=alibi_slopes(Hq), softcap=4.0)
    cpu = C.attention(q, k, v, 0.2, S - T, 5, **kw)
    got = gpu.attention(gpu.from_numpy(q), gpu.from_numpy(k), gpu.from_numpy(v), 0.2, S - T, 5, **kw)
    np.testing.assert_allclose(got.to_numpy(), cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_attention_defaults_keep_the_plain_path(rng, name):
    """softcap 0 and alibi of zeros give the plain kernel's result bit for bit (the tensor-core
    path keeps its arithmetic when the terms are off or zero)."""
    q, _ = rand(rng, (1, 20, 6, 64), name)
    k, _ = rand(rng, (1, 20, 2, 64), name)
    v, _ = rand(rng, (1, 20, 2, 64), name)
    plain = gpu.attention(q, k, v, 0.125, 0).to_numpy()
    np.testing.assert_array_equal(gpu.attention(q, k, v, 0.125, 0, softcap=0.0).to_numpy(), plain)
    np.testing.assert_array_equal(
        gpu.attention(q, k, v, 0.125, 0, alibi=np.zeros(6, np.float32)).to_numpy(), plain)


def test_attention_arch_bad_arguments():
    q = gpu.empty((1, 2, 6, 64), "float16")
    k = gpu.empty((1, 4, 2, 64), "float16")
    with pytest.raises(ValueError, match="attention alibi"):
        gpu.attention(q, k, k, 1.0, 2, alibi=np.ones(5, np.float32))
    for cap in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="softcap"):
            gpu.attention(q, k, k, 1.0, 2, softcap=cap)
    with pytest.raises(ValueError, match="do not fit"):
        gpu.attention(q, k, gpu.empty((1, 4, 3, 64), "float16"), 1.0, 2)
    with pytest.raises(ValueError, match="head dim 300"):
        gpu.attention(q, k, gpu.empty((1, 4, 2, 300), "float16"), 1.0, 2)
