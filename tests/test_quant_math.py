"""AWQ quantization math of the C core (csrc/quant.c) against numpy references written here.

pseudo-quantize reference: the formulas of REFERENCE.md section 2 evaluated in numpy float32,
the dtype the C core (and AutoAWQ's torch code on fp32 weights) works in. Agreement is asserted
bit for bit: both sides run the same sequence of IEEE fp32 operations, each correctly rounded
(true division w / s, no reciprocal), np.round and nearbyintf both round half to even, and the C
build never fuses a*b+c into an FMA (-std=c11 implies -ffp-contract=off). A float64 evaluation is
checked too, to at most one quantization step (it may round a different way at exact .5 ties).

Every test draws fresh random data; the seed is printed so a failure can be replayed.
"""
import numpy as np
import pytest

import awq._awq_C as C

BITS = [2, 3, 4, 8]
R_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]  # column c of a word is nibble R_ORDER[c]


def make_weights(rng, N, K, g):
    """Random weights with an all-zero group (row 1, group 0) and a one-outlier group (row 2)."""
    w = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    if N > 1:
        w[1, :g] = 0.0
    if N > 2:
        j = (K // g) - 1
        w[2, j * g + rng.integers(g)] = 3.0  # 60 sigma
    return w


# ---------------------------------------------------------------- references


def quant_ref(w, g, bits, zero_point, dtype=np.float32):
    """(dequantized w, codes, scales, zeros) by the AutoAWQ formulas, every op in `dtype`."""
    N, K = w.shape
    wg = w.astype(dtype).reshape(N, K // g, g)
    f = lambda v: dtype(v)  # noqa: E731 (scalar constant in the working dtype)
    if zero_point:
        qmax, qmin = f(2**bits - 1), f(0)
        mx, mn = wg.max(axis=2, keepdims=True), wg.min(axis=2, keepdims=True)
        s = np.maximum(mx - mn, f(1e-5)) / qmax
        z = np.clip(-np.round(mn / s), qmin, qmax)
        q = np.clip(np.round(wg / s) + z, qmin, qmax)
        codes, zeros = q, z
    else:
        qmax, qmin = f(2 ** (bits - 1) - 1), f(-(2 ** (bits - 1)))
        amax = np.abs(wg).max(axis=2, keepdims=True)
        s = np.maximum(amax, f(1e-5)) / qmax
        z = np.zeros_like(s)
        q = np.clip(np.round(wg / s), qmin, qmax)
        codes, zeros = q - qmin, np.full_like(s, -qmin)
    wdq = (q - z) * s
    return (wdq.reshape(N, K), codes.reshape(N, K).astype(np.uint8), s[..., 0],
            zeros[..., 0].astype(np.uint8))


def unpack_ref(packed):
    """AutoAWQ GEMM unpacker: column 8j + c of row r is nibble R_ORDER[c] of word [r, j]."""
    words = np.asarray(packed).view(np.uint32).astype(np.uint64)
    R, W = words.shape
    out = np.zeros((R, 8 * W), dtype=np.uint8)
    for c in range(8):
        out[:, c::8] = (words >> np.uint64(4 * R_ORDER[c])) & np.uint64(0xF)
    return out


def clip_search_ref(w, x, g, bits, zero_point, n_grid=20, max_shrink=0.5):
    """AutoAWQ _compute_best_clip (no token subsampling) with errors in float64.
    Returns (best max_val [N, G], errors [n_cand, N, G], candidate values [n_cand, N, G])."""
    N, K = w.shape
    G = K // g
    org_max = np.abs(w.reshape(N, G, g)).max(axis=2)
    x64 = x.astype(np.float64).reshape(-1, G, g)
    n_cand = int(max_shrink * n_grid)
    errs, cands = [], []
    for i in range(n_cand):
        mv = org_max * np.float32(1 - i / n_grid)  # fp32, as torch multiplies a python float
        cur = np.clip(w.reshape(N, G, g), -mv[..., None], mv[..., None]).reshape(N, K)
        qw = quant_ref(cur, g, bits, zero_point)[0].reshape(N, G, g).astype(np.float64)
        d = qw - w.reshape(N, G, g).astype(np.float64)
        out = np.einsum("tjk,njk->ntj", x64, d)  # x . (q_w - w) per token and group
        errs.append((out**2).mean(axis=1))
        cands.append(mv)
    errs, cands = np.array(errs), np.array(cands)
    best = org_max.copy()
    min_err = np.full(org_max.shape, np.inf)
    for i in range(n_cand):  # first strict minimum, as AutoAWQ's `err < min_errs`
        better = errs[i] < min_err
        min_err[better] = errs[i][better]
        best[better] = cands[i][better]
    return best, errs, cands


# ---------------------------------------------------------------- pseudo_quantize


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("zero_point", [True, False])
@pytest.mark.parametrize("N,K,g", [(1, 384, 32), (3, 384, 64), (7, 384, 128), (5, 100, 100),
                                   (2, 36, 36)])
def test_pseudo_quantize_matches_float32_formulas(rng, bits, zero_point, N, K, g):
    w = make_weights(rng, N, K, g)
    got = C.pseudo_quantize(w, g, bits, zero_point)
    assert got.dtype == np.float32 and got.shape == (N, K)
    ref, _, s, _ = quant_ref(w, g, bits, zero_point)
    np.testing.assert_array_equal(got, ref)  # bit for bit, see the module docstring
    if N > 1:
        assert not got[1, :g].any()  # an all-zero group stays zero
    # float64 evaluation of the same formulas: at most one step apart (different .5 ties).
    ref64 = quant_ref(w, g, bits, zero_point, np.float64)[0]
    step = np.repeat(s, g, axis=1)
    assert np.all(np.abs(got - ref64) <= step * (1 + 1e-6))


def test_pseudo_quantize_rounds_half_to_even():
    # Symmetric 4 bit: max |w| = 7 -> s = 7 / 7 = 1 exactly, so w / s are the .5 ties themselves.
    w = np.array([[7.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]], dtype=np.float32)
    got = C.pseudo_quantize(w, 8, 4, False)
    np.testing.assert_array_equal(got, [[7.0, 0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 4.0]])


def test_quantize_codes_consistent_with_pseudo_quantize(rng):
    for bits in BITS:
        for zero_point in (True, False):
            w = make_weights(rng, 5, 192, 64)
            codes, scales, zeros = C.quantize_codes(w, 64, bits, zero_point)
            assert codes.dtype == np.uint8 and codes.shape == (5, 192)
            assert scales.dtype == np.float32 and scales.shape == (5, 3)
            assert zeros.dtype == np.uint8 and zeros.shape == (5, 3)
            assert codes.max() <= 2**bits - 1 and zeros.max() <= 2**bits - 1
            if not zero_point:
                assert np.all(zeros == 2 ** (bits - 1))
            _, rc, rs, rz = quant_ref(w, 64, bits, zero_point)
            np.testing.assert_array_equal(codes, rc)
            np.testing.assert_array_equal(scales, rs)
            np.testing.assert_array_equal(zeros, rz)
            # (q - z) * s in fp32 is exactly pseudo_quantize's output.
            dq = (codes.astype(np.float32) - np.repeat(zeros, 64, axis=1).astype(np.float32)) \
                * np.repeat(scales, 64, axis=1)
            np.testing.assert_array_equal(dq, C.pseudo_quantize(w, 64, bits, zero_point))


@pytest.mark.parametrize("fn", ["pseudo_quantize", "quantize_codes"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_name_row_and_group(rng, fn, bad):
    w = make_weights(rng, 5, 128, 32)
    w[3, 70] = bad
    w[4, 0] = bad  # a later row must not be the one reported
    with pytest.raises(FloatingPointError, match=r"row 3, group 2 \(columns 64\.\.95\).*column 70"):
        getattr(C, fn)(w, 32, 4, True)


def test_quant_bad_arguments(rng):
    w = make_weights(rng, 3, 96, 32)
    for fn in (C.pseudo_quantize, C.quantize_codes):
        with pytest.raises(ValueError, match="group size 40 must be positive and divide K=96"):
            fn(w, 40, 4, True)
        with pytest.raises(ValueError, match="group size -1"):
            fn(w, -1, 4, True)
        with pytest.raises(ValueError, match="w_bit must be 2, 3, 4 or 8"):
            fn(w, 32, 5, True)
        with pytest.raises(ValueError, match="w: expected a 2-d"):
            fn(w[0], 32, 4, True)


# ---------------------------------------------------------------- packing


def test_pack_hand_example():
    codes = np.arange(1, 9, dtype=np.uint8)[None, :]
    packed = C.pack_gemm(codes)
    assert packed.dtype == np.int32 and packed.shape == (1, 1)
    assert packed.view(np.uint32)[0, 0] == 0x86427531
    np.testing.assert_array_equal(unpack_ref(packed), codes)


@pytest.mark.parametrize("R,Cols", [(1, 8), (3, 40), (7, 1536)])
def test_pack_round_trip_and_reference_unpacker(rng, R, Cols):
    codes = rng.integers(0, 16, size=(R, Cols), dtype=np.uint8)
    packed = C.pack_gemm(codes)
    assert packed.shape == (R, Cols // 8)
    np.testing.assert_array_equal(unpack_ref(packed), codes)
    np.testing.assert_array_equal(C.unpack_gemm(packed), codes)
    np.testing.assert_array_equal(C.unpack_gemm(packed.view(np.uint32)), codes)


def test_quantize_pack_dequantize_pipeline(rng):
    """codes -> GEMM words -> reference unpack -> float64 dequant == pseudo_quantize (to 1/2 ulp:
    the only difference is one fp32 rounding of (q - z) * s)."""
    w = make_weights(rng, 6, 256, 128)
    codes, scales, zeros = C.quantize_codes(w, 128, 4, True)
    q = unpack_ref(C.pack_gemm(codes)).astype(np.float64)
    z = unpack_ref(C.pack_gemm(np.repeat(zeros, 8, axis=1)))[:, ::8].astype(np.float64)
    dq = (q - np.repeat(z, 128, axis=1)) * np.repeat(scales.astype(np.float64), 128, axis=1)
    pq = C.pseudo_quantize(w, 128, 4, True)
    np.testing.assert_array_equal(dq.astype(np.float32), pq)


def test_pack_bad_inputs(rng):
    with pytest.raises(ValueError, match="not a multiple of 8"):
        C.pack_gemm(np.zeros((2, 12), np.uint8))
    bad = np.zeros((2, 16), np.uint8)
    bad[1, 5] = 16
    with pytest.raises(ValueError, match="code 16 at row 1, column 5"):
        C.pack_gemm(bad)
    with pytest.raises(ValueError, match="unpack_gemm packed"):
        C.unpack_gemm(np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------- clip search


@pytest.mark.parametrize("zero_point", [True, False])
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("g", [32, 96])  # g <= T: Gram-matrix path; g > T: direct path
def test_clip_search_matches_autoawq_loop(rng, zero_point, bits, g):
    N, K, T = 5, 96, 40
    w = make_weights(rng, N, K, g)
    x = randn_tokens(rng, T, K)
    got = C.clip_search(w, x, g, bits, zero_point)
    assert got.dtype == np.float32 and got.shape == (N, K // g)
    best, errs, cands = clip_search_ref(w, x, g, bits, zero_point)
    # Every answer is one of the fp32 candidates, bit for bit.
    picked = np.argmax(cands == got[None], axis=0)
    assert np.all((cands == got[None]).any(axis=0))
    # C sums errors from an fp32 GEMM (relative error ~1e-6), the reference in float64: exact
    # near-ties may flip, so require the picked candidate's reference error to be within 1e-4 of
    # the minimum, and the exact reference choice almost everywhere.
    picked_err = np.take_along_axis(errs, picked[None], axis=0)[0]
    assert np.all(picked_err <= errs.min(axis=0) * (1 + 1e-4) + 1e-30)
    assert np.mean(got == best) >= 0.8
    # The all-zero group (row 1, group 0) keeps its max (0): every candidate is 0.
    assert got[1, 0] == 0.0


def test_clip_search_grid_arguments(rng):
    N, K, T, g = 4, 64, 30, 32
    w, x = make_weights(rng, N, K, g), randn_tokens(rng, T, K)
    for n_grid, max_shrink in [(10, 0.3), (20, 0.7), (5, 0.0)]:
        got = C.clip_search(w, x, g, 4, True, n_grid=n_grid, max_shrink=max_shrink)
        best, errs, _ = clip_search_ref(w, x, g, 4, True, n_grid, max_shrink)
        assert len(errs) == int(max_shrink * n_grid)
        assert np.mean(got == best) >= 0.8


def test_clip_search_errors(rng):
    w, x = make_weights(rng, 4, 64, 32), randn_tokens(rng, 10, 64)
    with pytest.raises(ValueError, match="x has 63 features"):
        C.clip_search(w, x[:, :63], 32, 4, True)
    with pytest.raises(ValueError, match="group size 48"):
        C.clip_search(w, x, 48, 4, True)
    wn = w.copy()
    wn[2, 40] = np.nan
    with pytest.raises(FloatingPointError, match=r"row 2, group 1"):
        C.clip_search(wn, x, 32, 4, True)
    xn = x.copy()
    xn[7, 3] = np.inf
    with pytest.raises(FloatingPointError, match=r"x token 7, column 3"):
        C.clip_search(w, xn, 32, 4, True)


def randn_tokens(rng, T, K):
    """Activations with a few large channels, as real hidden states have."""
    x = rng.standard_normal((T, K)).astype(np.float32)
    x[:, rng.integers(K, size=3)] *= 20.0
    return x
