"""Dense ops that architectures beyond llama need (csrc/ops.c) against float64 numpy references.

layernorm (OPT, BLOOM, MPT, Falcon, GPT-J, GPT-NeoX, StarCoder2, StableLM, Cohere), the activation
table (gelu / gelu_tanh / relu besides silu), GPT-J's interleaved rotary embedding, and the attention
options: ALiBi slopes (BLOOM, MPT), tanh soft-capping (Gemma2) and a value head dim that differs from
the query/key head dim (DeepSeek MLA).

The references below are written from the models' formulas, independently of the kernels (no call
into awq). Every test draws fresh random data and prints its seed (pytest shows captured output of
failing tests). Shapes are odd on purpose: M = 7, D = 67, T = 5, S = 13, Hq = 6, Hkv = 2 or 3, d = 10,
more query rows than one attention task (64) holds, head dims that are not multiples of the 32-wide
kernel tiles.
"""
import math

import numpy as np
import pytest

import awq._awq_C as C
from test_ops import attention_ref

CPU_ISA = C.cpu_info()["isa"]
# Attention kernel families this CPU can run; the suite runs on each so none can drift.
ISAS = ["generic"] + (["avx2"] if CPU_ISA in ("avx2", "avx512") else []) + (
    ["avx512"] if CPU_ISA == "avx512" else [])

ACT_KINDS = ["silu", "gelu", "gelu_tanh", "relu"]


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------- layernorm


def layernorm_ref(x, w, b, eps):
    """torch.nn.functional.layer_norm over the last dim, in float64 (population variance)."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=1, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


@pytest.mark.parametrize("M", [1, 2, 3, 7])
@pytest.mark.parametrize("D", [1, 5, 67, 577])
@pytest.mark.parametrize("affine", ["wb", "w", "b", "none"])
def test_layernorm(rng, M, D, affine):
    # An offset of 10 standard deviations: two-pass statistics must not lose the variance to it.
    x = randn(rng, M, D, scale=3.0) + np.float32(30.0)
    w = randn(rng, D) if "w" in affine else None
    b = randn(rng, D) if "b" in affine else None
    eps = 1e-5
    y = C.layernorm(x, w, b, eps)
    assert y.dtype == np.float32 and y.shape == (M, D)
    # Statistics in double, then one double product rounded to fp32 and an fp32 affine step:
    # within a few ulp of each output.
    np.testing.assert_allclose(y, layernorm_ref(x, w, b, eps), rtol=1e-5, atol=1e-5)


def test_layernorm_keywords_eps_and_constant_rows(rng):
    x, w, b = randn(rng, 7, 67), randn(rng, 67), randn(rng, 67)
    np.testing.assert_array_equal(C.layernorm(x, w=w, b=b, eps=1e-6), C.layernorm(x, w, b, 1e-6))
    # A constant row has variance 0: the output is b exactly (eps keeps it finite).
    xc = np.full((3, 67), 2.5, dtype=np.float32)
    np.testing.assert_array_equal(C.layernorm(xc, w, b, 1e-5), np.broadcast_to(b, (3, 67)))
    # eps = 0 is allowed (finite rows of non-zero variance stay finite).
    np.testing.assert_allclose(C.layernorm(x, None, None, 0.0), layernorm_ref(x, None, None, 0.0),
                               rtol=1e-5, atol=1e-5)
    # Non-contiguous float32 input is converted; float64 is refused (no silent downcast).
    xs = randn(rng, 5, 134)[:, ::2]
    np.testing.assert_allclose(C.layernorm(xs, w, None, 1e-5), layernorm_ref(xs, w, None, 1e-5),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="layernorm x"):
        C.layernorm(xs.astype(np.float64), w, None, 1e-5)


def test_layernorm_bad_arguments(rng):
    x = randn(rng, 3, 6)
    with pytest.raises(ValueError, match="layernorm: w has 5 entries"):
        C.layernorm(x, randn(rng, 5), None, 1e-5)
    with pytest.raises(ValueError, match="layernorm: b has 7 entries"):
        C.layernorm(x, None, randn(rng, 7), 1e-5)
    with pytest.raises(ValueError, match="layernorm x"):
        C.layernorm(randn(rng, 6), None, None, 1e-5)
    with pytest.raises(ValueError, match="layernorm w"):
        C.layernorm(x, randn(rng, 2, 3), None, 1e-5)
    for eps in (-1e-5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            C.layernorm(x, None, None, eps)
    with pytest.raises(ValueError, match="bad shape"):
        C.layernorm(np.zeros((3, 0), np.float32), None, None, 1e-5)


# ---------------------------------------------------------------- act / act_mul

_erf = np.vectorize(math.erf, otypes=[np.float64])


def act_ref(kind, x):
    x = x.astype(np.float64)
    if kind == "silu":
        return x / (1.0 + np.exp(-x))
    if kind == "gelu":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if kind == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if kind == "relu":
        return np.maximum(x, 0.0)
    raise AssertionError(kind)


# Tolerances: silu is a few ulp (exp < 1 ulp), relu exact. gelu goes through an erfc fit of
# fractional error < 1.2e-7 plus the fp32 rounding of x^2 / 2 inside exp (~1e-6 relative at |x| ~ 10);
# gelu_tanh is x / (1 + exp(-2u)), a few ulp. rtol 1e-5 / atol 1e-6 holds them with margin for
# |x| <= 40 (the atol only matters where the result underflows in the negative tail).
ACT_TOL = {"silu": (1e-6, 1e-30), "relu": (0, 0), "gelu": (1e-5, 1e-6), "gelu_tanh": (1e-5, 1e-6)}


def act_input(rng, shape):
    x = randn(rng, *shape, scale=4.0)
    special = [0.0, -0.0, 1e-8, -1e-8, 0.3, -0.3, 0.62, -0.63, 5.0, -5.0, 12.0, -12.0, 40.0, -40.0]
    n = min(len(special), x.size)
    x.reshape(-1)[:n] = special[:n]
    return x


@pytest.mark.parametrize("kind", ACT_KINDS)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 17), (7, 67), (2, 1000), (16385,)])
def test_act(rng, kind, shape):
    x = act_input(rng, shape)
    y = C.act(x, kind)
    assert y.shape == x.shape and y.dtype == np.float32
    rtol, atol = ACT_TOL[kind]
    np.testing.assert_allclose(y, act_ref(kind, x), rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", ACT_KINDS)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 17), (16385,)])
def test_act_mul(rng, kind, shape):
    g, u = act_input(rng, shape), randn(rng, *shape)
    y = C.act_mul(g, u.reshape(-1), kind)  # up may have another shape of the same size
    assert y.shape == g.shape and y.dtype == np.float32
    rtol, atol = ACT_TOL[kind]
    # One more fp32 product: half an ulp on top of act's tolerance.
    np.testing.assert_allclose(y, act_ref(kind, g) * u, rtol=rtol + 1e-7, atol=atol * 4)
    # act_mul is act then the product, element for element.
    np.testing.assert_array_equal(y, C.act(g, kind) * u)


def test_act_mul_silu_is_silu_mul(rng):
    g, u = randn(rng, 7, 67, scale=8.0), randn(rng, 7, 67)
    np.testing.assert_array_equal(C.act_mul(g, u, "silu"), C.silu_mul(g, u))
    np.testing.assert_array_equal(C.act_mul(gate=g, up=u, kind="silu"), C.silu_mul(g, u))


def test_act_special_values():
    x = np.array([np.inf, -np.inf, np.nan, 0.0], dtype=np.float32)
    relu = C.act(x, "relu")
    assert relu[0] == np.inf and relu[1] == 0.0 and np.isnan(relu[2]) and relu[3] == 0.0
    for kind in ("gelu", "gelu_tanh", "silu"):
        y = C.act(x, kind)
        assert y[0] == np.inf and np.isnan(y[2]) and y[3] == 0.0, kind


def test_act_bad_arguments(rng):
    with pytest.raises(ValueError, match='act: unknown activation "swish"'):
        C.act(randn(rng, 4), "swish")
    with pytest.raises(ValueError, match='act_mul: unknown activation "gelu_new"'):
        C.act_mul(randn(rng, 4), randn(rng, 4), "gelu_new")
    with pytest.raises(ValueError, match="act_mul: gate has 6 elements, up has 7"):
        C.act_mul(randn(rng, 2, 3), randn(rng, 7), "gelu")
    with pytest.raises(TypeError):
        C.act(randn(rng, 4), None)


# ---------------------------------------------------------------- rope (interleaved)


def rope_interleaved_ref(x, cos, sin, rot):
    """GPT-J apply_rotary_pos_emb: rotate_every_two on the first rot dims, cos/sin repeated per pair."""
    x64 = x.astype(np.float64)
    out = x64.copy()
    c = cos.astype(np.float64)[:, None, :]
    s = sin.astype(np.float64)[:, None, :]
    even, odd = x64[..., 0:rot:2], x64[..., 1:rot:2]
    out[..., 0:rot:2] = even * c - odd * s
    out[..., 1:rot:2] = odd * c + even * s
    return out


def rope_half_ref(x, cos, sin, rot):
    x64 = x.astype(np.float64)
    out = x64.copy()
    half = rot // 2
    c = cos.astype(np.float64)[:, None, :]
    s = sin.astype(np.float64)[:, None, :]
    a, b = x64[..., :half], x64[..., half:rot]
    out[..., :half] = a * c - b * s
    out[..., half:rot] = b * c + a * s
    return out


def rope_tables(rng, M, rot):
    pos = rng.integers(0, 4096, M) + np.arange(M)
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, rot, 2) / rot))
    ang = pos[:, None] * inv_freq[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


@pytest.mark.parametrize("M", [1, 2, 3, 7])
@pytest.mark.parametrize("H,d,rot", [(6, 10, 10), (3, 67, 64), (2, 67, 20), (1, 6, 2), (16, 256, 64)])
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_conventions(rng, M, H, d, rot, interleaved):
    x = randn(rng, M, H, d)
    cos, sin = rope_tables(rng, M, rot)
    y = x.copy()
    assert C.rope_(y, cos, sin, rot, interleaved) is None
    ref = (rope_interleaved_ref if interleaved else rope_half_ref)(x, cos, sin, rot)
    np.testing.assert_array_equal(y[..., rot:], x[..., rot:])  # untouched, bit for bit
    # Two fp32 products and one sum of O(1) values: within a few ulp.
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)


def test_rope_interleaved_keyword_and_default(rng):
    x = randn(rng, 7, 6, 10)
    cos, sin = rope_tables(rng, 7, 8)
    a, b, c = x.copy(), x.copy(), x.copy()
    C.rope_(a, cos, sin, 8)
    C.rope_(b, cos, sin, 8, interleaved=False)
    C.rope_(c, cos, sin, rot=8, interleaved=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # The two conventions are one permutation of the rotated dims apart.
    perm = np.concatenate([np.arange(0, 8, 2), np.arange(1, 8, 2), np.arange(8, 10)])
    d = x[..., perm].copy()
    C.rope_(d, cos, sin, 8)
    np.testing.assert_array_equal(d, c[..., perm])
    with pytest.raises(ValueError, match="rot must be even"):
        C.rope_(x.copy(), randn(rng, 7, 6), randn(rng, 7, 6), 12, interleaved=True)


# ---------------------------------------------------------------- attention: alibi, softcap, dv


def alibi_slopes(n):
    """BLOOM's build_alibi_tensor slopes (closest power of two, then the interleaved extras)."""
    p = 2 ** math.floor(math.log2(n))
    base = 2.0 ** (-(2.0 ** -(math.log2(p) - 3)))
    slopes = [base ** (i + 1) for i in range(p)]
    if p != n:
        extra = 2.0 ** (-(2.0 ** -(math.log2(2 * p) - 3)))
        slopes += [extra ** (i + 1) for i in range(0, 2 * (n - p), 2)]
    return np.array(slopes, dtype=np.float32)


ARCH_CASES = {
    # name: (B, T, S, Hq, Hkv, d, dv, q_pos0, window, kv_len, alibi, softcap)
    "alibi_prefill": (2, 13, 13, 6, 2, 10, 10, 0, 0, None, True, 0.0),
    "alibi_kv_cache": (2, 5, 13, 6, 3, 10, 10, 8, 0, None, True, 0.0),
    "alibi_decode_kv_len": (3, 1, 41, 6, 6, 67, 67, 40, 0, [41, 17, 1], True, 0.0),
    "alibi_several_row_blocks_shared_heads": (3, 70, 70, 6, 3, 10, 10, 0, 0, None, True, 0.0),
    "softcap_prefill": (2, 13, 13, 6, 2, 67, 67, 0, 0, None, False, 2.0),
    "softcap_window_cache": (2, 5, 70, 6, 3, 10, 10, 65, 7, None, False, 50.0),
    "softcap_several_row_blocks": (1, 130, 130, 6, 2, 32, 32, 0, 0, None, False, 1.5),
    "dv_smaller": (2, 13, 13, 6, 2, 67, 10, 0, 0, None, False, 0.0),
    "dv_larger": (2, 5, 13, 6, 3, 10, 67, 8, 0, None, False, 0.0),
    "dv_tile_multiple": (1, 70, 70, 6, 2, 40, 32, 0, 0, None, False, 0.0),
    "mla_like_decode": (2, 1, 37, 6, 6, 24, 16, 36, 0, [37, 5], False, 0.0),
    "everything": (2, 7, 90, 6, 2, 10, 67, 83, 20, [90, 85], True, 3.0),
    "kv_len_zero_gives_zero": (2, 4, 16, 6, 2, 10, 7, 12, 0, [16, 0], True, 5.0),
}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", list(ARCH_CASES))
def test_attention_arch(rng, isa, case):
    B, T, S, Hq, Hkv, d, dv, q_pos0, window, kv_len, use_alibi, softcap = ARCH_CASES[case]
    # q scaled up so that soft-capping is far from the identity (|scores| reach several caps).
    q = randn(rng, B, T, Hq, d, scale=3.0 if softcap else 1.0)
    k, v = randn(rng, B, S, Hkv, d), randn(rng, B, S, Hkv, dv)
    scale = 1.0 / np.sqrt(d)
    kvl = None if kv_len is None else np.array(kv_len, dtype=np.int64)
    alibi = alibi_slopes(Hq) if use_alibi else None
    out = C.attention(q, k, v, scale, q_pos0, window=window, kv_len=kvl, isa=isa, alibi=alibi,
                      softcap=softcap)
    assert out.shape == (B, T, Hq, dv) and out.dtype == np.float32
    ref = attention_ref(q, k, v, scale, q_pos0, window, kv_len, alibi, softcap)
    # fp32 dot products over d terms (q pre-scaled in fp32), a few-ulp tanh, an exact fp32 ALiBi
    # distance times the slope, and a weighted sum over <= S values, all O(1): ~1e-6 abs.
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    if case == "kv_len_zero_gives_zero":
        assert not out[1].any()


def test_attention_alibi_matches_hf_position_independent_bias(rng):
    """HF BLOOM adds slope * j (no query position): the same softmax, since the difference
    slope * p is constant along a row."""
    B, T, S, Hq, Hkv, d = 2, 5, 13, 6, 2, 10
    q, k, v = randn(rng, B, T, Hq, d), randn(rng, B, S, Hkv, d), randn(rng, B, S, Hkv, d)
    slopes = alibi_slopes(Hq)
    out = C.attention(q, k, v, 0.3, S - T, alibi=slopes)
    # Reference with the HF bias, written out directly.
    rep = Hq // Hkv
    ref = np.zeros(q.shape)
    pos = S - T + np.arange(T)[:, None]
    j = np.arange(S)[None, :]
    for b in range(B):
        for h in range(Hq):
            s = q[b, :, h].astype(np.float64) @ k[b, :, h // rep].T.astype(np.float64) * 0.3
            s = s + float(slopes[h]) * j
            s = np.where(j <= pos, s, -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            ref[b, :, h] = (p / p.sum(axis=1, keepdims=True)) @ v[b, :, h // rep].astype(np.float64)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_attention_defaults_are_the_plain_path(rng):
    """alibi of zeros, softcap 0 and dv == d change nothing, bit for bit, on every ISA."""
    q, k, v = randn(rng, 2, 13, 6, 10), randn(rng, 2, 13, 2, 10), randn(rng, 2, 13, 2, 10)
    for isa in ISAS:
        plain = C.attention(q, k, v, 0.3, 0, isa=isa)
        np.testing.assert_array_equal(
            C.attention(q, k, v, 0.3, 0, isa=isa, alibi=np.zeros(6, np.float32), softcap=0.0), plain)
        np.testing.assert_array_equal(C.attention(q, k, v, 0.3, 0, 0, None, isa, None, 0.0), plain)


def test_attention_arch_isas_agree(rng):
    """The kernel families differ only in summation order: all within fp32 rounding of each other."""
    q, k, v = randn(rng, 2, 70, 6, 67, scale=3.0), randn(rng, 2, 70, 3, 67), randn(rng, 2, 70, 3, 10)
    kw = dict(alibi=alibi_slopes(6), softcap=4.0, window=33)
    outs = [C.attention(q, k, v, 0.125, 0, isa=isa, **kw) for isa in ISAS]
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(C.attention(q, k, v, 0.125, 0, **kw), outs[-1])


def test_attention_arch_bad_arguments(rng):
    q, k = randn(rng, 1, 5, 6, 10), randn(rng, 1, 13, 2, 10)
    v = randn(rng, 1, 13, 2, 7)
    with pytest.raises(ValueError, match="alibi has 5 slopes, there are Hq=6"):
        C.attention(q, k, v, 1.0, 8, alibi=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="attention alibi"):
        C.attention(q, k, v, 1.0, 8, alibi=np.ones((2, 3), np.float32))
    for cap in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="softcap"):
            C.attention(q, k, v, 1.0, 8, softcap=cap)
    # v may differ from k in its head dim only.
    with pytest.raises(ValueError, match="attention: v is"):
        C.attention(q, k, randn(rng, 1, 12, 2, 7), 1.0, 8)
    with pytest.raises(ValueError, match="attention: v is"):
        C.attention(q, k, randn(rng, 1, 13, 3, 7), 1.0, 8)
    with pytest.raises(ValueError, match="attention: k is"):
        C.attention(q, randn(rng, 1, 13, 2, 7), v, 1.0, 8)
    with pytest.raises(ValueError, match="attention v"):
        C.attention(q, k, randn(rng, 1, 13, 2), 1.0, 8)
