"""Dense ops of the C core (csrc/ops.c, csrc/sgemm.c) against float64 numpy references.

Every test draws fresh random data; the seed is printed so a failure can be replayed
(pytest shows captured output of failing tests). Shapes are deliberately odd: M = 1, 2, 3, 7;
K and N not multiples of 8 or 64; more query rows than one attention task (64) holds.
"""
import numpy as np
import pytest

import awq._awq_C as C

CPU_ISA = C.cpu_info()["isa"]
# Attention kernel families this CPU can run; the suite runs on each so none can drift.
ISAS = ["generic"] + (["avx2"] if CPU_ISA in ("avx2", "avx512") else []) + (
    ["avx512"] if CPU_ISA == "avx512" else [])


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------- linear


@pytest.mark.parametrize("M", [1, 2, 3, 7])
@pytest.mark.parametrize("K,N", [(5, 3), (96, 65), (577, 191)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear(rng, M, K, N, with_bias):
    x, w = randn(rng, M, K), randn(rng, N, K)
    b = randn(rng, N) if with_bias else None
    y = C.linear(x, w, b)
    assert y.dtype == np.float32 and y.shape == (M, N)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    if with_bias:
        ref += b
    # Tolerance: the worst-case bound of an fp32 dot product of K terms, whatever the BLAS's
    # summation order and FMA use: |err| <= K * 2^-24 * sum_k |x_k w_k| (+ one rounding for bias).
    bound = K * 2.0**-24 * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T)
    if with_bias:
        bound += 2.0**-24 * np.abs(ref)
    assert np.all(np.abs(y - ref) <= bound + 1e-30)


def test_linear_bias_keyword_and_bad_shapes(rng):
    x, w, b = randn(rng, 3, 10), randn(rng, 4, 10), randn(rng, 4)
    np.testing.assert_array_equal(C.linear(x, w, bias=b), C.linear(x, w, b))
    with pytest.raises(ValueError, match="input features"):
        C.linear(x, randn(rng, 4, 11))
    with pytest.raises(ValueError, match="bias"):
        C.linear(x, w, randn(rng, 5))
    with pytest.raises(ValueError, match="linear x"):
        C.linear(randn(rng, 2, 3, 10), w)


# ---------------------------------------------------------------- rmsnorm


@pytest.mark.parametrize("M", [1, 2, 3, 7])
@pytest.mark.parametrize("D", [5, 64, 577])
@pytest.mark.parametrize("unit_offset", [0.0, 1.0])
def test_rmsnorm(rng, M, D, unit_offset):
    x, w = randn(rng, M, D, scale=3.0), randn(rng, D)
    eps = 1e-5
    y = C.rmsnorm(x, w, eps, unit_offset) if unit_offset else C.rmsnorm(x, w, eps)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + eps) * (w + unit_offset)
    # fp32 sum of squares over D terms plus four roundings: a few ulp of each output.
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=1e-6)


def test_rmsnorm_bad_shapes(rng):
    with pytest.raises(ValueError, match="rmsnorm: w has 5 entries"):
        C.rmsnorm(randn(rng, 3, 6), randn(rng, 5), 1e-6)
    with pytest.raises(ValueError, match="rmsnorm x"):
        C.rmsnorm(randn(rng, 6), randn(rng, 6), 1e-6)


# ---------------------------------------------------------------- rope


def rope_ref(x, cos, sin, rot):
    """HF apply_rotary_pos_emb on the first rot dims: x * cat(cos, cos) + rotate_half(x) * ..."""
    x64 = x.astype(np.float64)
    xr = x64[..., :rot]
    half = rot // 2
    rotate_half = np.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)
    c = np.concatenate([cos, cos], axis=-1)[:, None, :].astype(np.float64)
    s = np.concatenate([sin, sin], axis=-1)[:, None, :].astype(np.float64)
    out = x64.copy()
    out[..., :rot] = xr * c + rotate_half * s
    return out


@pytest.mark.parametrize("M", [1, 2, 3, 7])
@pytest.mark.parametrize("H,d,rot", [(9, 64, 64), (3, 64, 32), (2, 80, 20), (1, 6, 2)])
def test_rope(rng, M, H, d, rot):
    x = randn(rng, M, H, d)
    pos = rng.integers(0, 4096, M) + np.arange(M)
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, rot, 2) / rot))
    ang = pos[:, None] * inv_freq[None, :]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    ref = rope_ref(x, cos, sin, rot)
    y = x.copy()
    assert C.rope_(y, cos, sin, rot) is None
    # Dims past rot are untouched, bit for bit.
    np.testing.assert_array_equal(y[..., rot:], x[..., rot:])
    # Two fp32 products and one sum of O(1) values: within a few ulp.
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)


def test_rope_rejects_inputs_it_cannot_rotate_in_place(rng):
    cos, sin = randn(rng, 4, 8), randn(rng, 4, 8)
    x = randn(rng, 4, 2, 16)
    for bad in (x.astype(np.float64), np.asfortranarray(x), x[:, :, ::-1], x.tolist()):
        with pytest.raises(ValueError, match="writeable C-contiguous"):
            C.rope_(bad, cos, sin, 16)
    ro = x.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        C.rope_(ro, cos, sin, 16)
    with pytest.raises(ValueError, match="cos and sin"):
        C.rope_(x, randn(rng, 3, 8), sin, 16)
    with pytest.raises(ValueError, match="rot must be even"):
        C.rope_(x, randn(rng, 4, 9), randn(rng, 4, 9), 18)


# ---------------------------------------------------------------- silu_mul


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 17), (2, 1000), (16385,)])
def test_silu_mul(rng, shape):
    g = randn(rng, *shape, scale=8.0)
    g.reshape(-1)[:3] = [-30.0, 30.0, 0.0][: g.size]
    u = randn(rng, *shape)
    y = C.silu_mul(g, u.reshape(-1))  # up may have another shape of the same size
    assert y.shape == g.shape and y.dtype == np.float32
    g64 = g.astype(np.float64)
    ref = g64 / (1.0 + np.exp(-g64)) * u
    # exp is a < 1 ulp polynomial, then a division and a product: a few ulp.
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-30)


def test_silu_mul_size_mismatch(rng):
    with pytest.raises(ValueError, match="silu_mul: gate has 6 elements, up has 7"):
        C.silu_mul(randn(rng, 2, 3), randn(rng, 7))


# ---------------------------------------------------------------- attention


def attention_ref(q, k, v, scale, q_pos0, window=0, kv_len=None, alibi=None, softcap=0.0):
    """float64 causal GQA in the models' own order: scores = q.k * scale; Gemma2 soft-capping
    (s / cap, tanh, * cap); + ALiBi bias slope * (j - p); mask; softmax; @ v. v's last dim may differ
    from q's. Rows that see no key give 0."""
    B, T, Hq, d = q.shape
    S, Hkv, dv = k.shape[1], k.shape[2], v.shape[3]
    rep = Hq // Hkv
    out = np.zeros((B, T, Hq, dv))
    pos = q_pos0 + np.arange(T)[:, None]
    j = np.arange(S)[None, :]
    for b in range(B):
        mask = j <= pos
        if window > 0:
            mask &= j > pos - window
        if kv_len is not None:
            mask &= j < kv_len[b]
        for h in range(Hq):
            kk = k[b, :, h // rep].astype(np.float64)
            vv = v[b, :, h // rep].astype(np.float64)
            s = q[b, :, h].astype(np.float64) @ kk.T * scale
            if softcap > 0:
                s = np.tanh(s / softcap) * softcap
            if alibi is not None:
                s = s + float(alibi[h]) * (j - pos)
            s = np.where(mask, s, -np.inf)
            m = s.max(axis=1, keepdims=True)
            p = np.exp(s - np.where(np.isfinite(m), m, 0.0))
            den = p.sum(axis=1, keepdims=True)
            p = np.divide(p, den, out=np.zeros_like(p), where=den > 0)
            out[b, :, h] = p @ vv
    return out


ATTENTION_CASES = {
    # name: (B, T, S, Hq, Hkv, d, q_pos0, window, kv_len)
    "causal_gqa_9_3": (2, 37, 37, 9, 3, 64, 0, 0, None),
    "several_row_blocks": (1, 130, 130, 9, 3, 64, 0, 0, None),
    "kv_cache_q_pos0": (2, 5, 70, 9, 3, 64, 65, 0, None),
    "decode_one_token": (3, 1, 41, 4, 2, 64, 40, 0, None),
    "sliding_window": (1, 100, 100, 6, 2, 64, 0, 7, None),
    "window_with_cache": (2, 7, 90, 3, 1, 32, 83, 20, None),
    "kv_len": (2, 3, 70, 9, 3, 64, 40, 0, [70, 42]),
    "kv_len_zero_gives_zero": (2, 4, 16, 2, 2, 64, 12, 0, [16, 0]),
    "head_dim_not_multiple_of_32": (2, 19, 19, 3, 3, 40, 0, 0, None),
    "mha_head_dim_7": (1, 9, 9, 2, 2, 7, 0, 0, None),
}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention(rng, isa, case):
    B, T, S, Hq, Hkv, d, q_pos0, window, kv_len = ATTENTION_CASES[case]
    q, k, v = randn(rng, B, T, Hq, d), randn(rng, B, S, Hkv, d), randn(rng, B, S, Hkv, d)
    scale = 1.0 / np.sqrt(d)
    kvl = None if kv_len is None else np.array(kv_len, dtype=np.int64)
    out = C.attention(q, k, v, scale, q_pos0, window=window, kv_len=kvl, isa=isa)
    assert out.shape == q.shape and out.dtype == np.float32
    ref = attention_ref(q, k, v, scale, q_pos0, window, kv_len)
    # fp32 dot products over d terms and a weighted sum over <= S values, all O(1): ~1e-6 abs.
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    if case == "kv_len_zero_gives_zero":
        assert not out[1].any()


def test_attention_isas_agree(rng):
    """The kernel families differ only in summation order: all within fp32 rounding of each other."""
    q, k, v = randn(rng, 2, 70, 9, 64), randn(rng, 2, 70, 3, 64), randn(rng, 2, 70, 3, 64)
    outs = [C.attention(q, k, v, 0.125, 0, isa=isa) for isa in ISAS]
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(C.attention(q, k, v, 0.125, 0), outs[-1])


def test_attention_bad_arguments(rng):
    q, k = randn(rng, 1, 4, 9, 16), randn(rng, 1, 4, 3, 16)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        C.attention(q, randn(rng, 1, 4, 2, 16), randn(rng, 1, 4, 2, 16), 1.0, 0)
    with pytest.raises(ValueError, match="q_pos0"):
        C.attention(q, k, k, 1.0, 1)
    with pytest.raises(ValueError, match="attention: v is"):
        C.attention(q, k, randn(rng, 1, 5, 3, 16), 1.0, 0)
    with pytest.raises(ValueError, match="attention: k is"):
        C.attention(q, randn(rng, 1, 4, 3, 8), randn(rng, 1, 4, 3, 8), 1.0, 0)
    with pytest.raises(ValueError, match="kv_len has 2 entries"):
        C.attention(q, k, k, 1.0, 0, kv_len=np.array([4, 4]))
    with pytest.raises(ValueError, match=r"kv_len\[0\] = 5"):
        C.attention(q, k, k, 1.0, 0, kv_len=np.array([5]))
    with pytest.raises(ValueError, match="window"):
        C.attention(q, k, k, 1.0, 0, window=-1)
    with pytest.raises(ValueError, match="isa"):
        C.attention(q, k, k, 1.0, 0, isa="sse9")
