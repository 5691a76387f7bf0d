"""W4A16 matmul on the AutoAWQ GEMM layout, and the fp16-weight matmul, against float64 numpy.

The packer here is written from the format description (REFERENCE.md section 3), independently of
the C code: nibble i of word [r, j] holds column 8j + P[i], P = [0, 2, 4, 6, 1, 3, 5, 7].
Every kernel family this CPU can run (avx512 / avx2 / generic) is tested on the same shapes.
"""
import numpy as np
import pytest

import awq._awq_C as C

P = [0, 2, 4, 6, 1, 3, 5, 7]
ISAS = {"avx512": ["avx512", "avx2", "generic"], "avx2": ["avx2", "generic"], "generic": ["generic"]}[
    C.cpu_info()["isa"]
]

# Kernel vs float64 product: the kernels accumulate in fp32 (K terms, each rounded at 2^-24
# relative), so the error is a few ulp of sum |x| * |W| along k, i.e. ~1e-6 relative to that
# magnitude; 2e-5 leaves headroom for K=320 and the z * sum_x cancellation. The _ref twin
# accumulates in double and rounds once, so it meets 1e-6.
RTOL_KERNEL = 2e-5
RTOL_REF = 1e-6


def pack_awq(codes):
    """codes [R, N] ints 0..15 -> [R, N/8] int32 in the AutoAWQ order."""
    codes = np.asarray(codes, dtype=np.uint32) & 0xF
    r, n = codes.shape
    words = np.zeros((r, n // 8), dtype=np.uint32)
    for i, c in enumerate(P):
        words |= codes[:, c::8] << np.uint32(4 * i)
    return words.view(np.int32)


def make_layer(rng, K, N, g, outliers=True):
    G = K // g
    q = rng.integers(0, 16, size=(K, N))
    z = rng.integers(0, 16, size=(G, N))
    s = (rng.random((G, N)) * 0.02 + 0.001).astype(np.float16)
    if outliers:
        s[0, :] = 0  # an all-zero group
        if G > 1:
            s[1, 3] = np.float16(30.0)  # one outlier scale
    W = (q - np.repeat(z, g, axis=0)) * np.repeat(s.astype(np.float64), g, axis=0)  # [K, N]
    return pack_awq(q), pack_awq(z), s, W


def check_close(y, ref, xabs_wabs, rtol):
    """|y - ref| <= rtol * (sum_k |x||W|): error bound scaled by the magnitude of the terms."""
    err = np.abs(y.astype(np.float64) - ref)
    bound = rtol * xabs_wabs + 1e-30
    assert np.all(err <= bound), f"max err/bound {np.max(err / bound):.3g}"


def test_pack_hand_example():
    assert pack_awq([[1, 2, 3, 4, 5, 6, 7, 8]]).view(np.uint32)[0, 0] == 0x86427531


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "M,K,N,g",
    [
        (1, 96, 72, 32),
        (2, 320, 200, 64),
        (3, 256, 136, 128),
        (7, 320, 200, 320),  # g = K
        (1, 128, 1032, 64),  # several tiles, last one partial
        (8, 192, 264, 32),
        (33, 320, 200, 64),
        (300, 96, 72, 32),
        (33, 256, 2056, 128),  # several GEMM tiles, the last one 8 columns
    ],
)
@pytest.mark.parametrize("with_bias", [False, True])
def test_w4a16_matmul(isa, M, K, N, g, with_bias):
    rng = np.random.default_rng(M * 1000 + K + N + g)
    qw, qz, s, W = make_layer(rng, K, N, g)
    x = rng.standard_normal((M, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    ref = x.astype(np.float64) @ W + (bias if with_bias else 0)
    mag = np.abs(x.astype(np.float64)) @ np.abs(W) + (np.abs(bias) if with_bias else 0)
    y = C.w4a16_matmul(x, qw, qz, s, bias, g, isa=isa)
    assert y.shape == (M, N) and y.dtype == np.float32
    check_close(y, ref, mag, RTOL_KERNEL)
    if isa == ISAS[0]:
        yr = C.w4a16_matmul_ref(x, qw, qz, s, bias, g)
        check_close(yr, ref, mag, RTOL_REF)


def test_w4a16_default_isa_and_empty():
    rng = np.random.default_rng(0)
    qw, qz, s, W = make_layer(rng, 64, 16, 32)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_array_equal(C.w4a16_matmul(x, qw, qz, s, None, 32),
                                  C.w4a16_matmul(x, qw, qz, s, None, 32, isa=ISAS[0]))
    assert C.w4a16_matmul(x[:0], qw, qz, s, None, 32).shape == (0, 16)
    # uint32 words and raw fp16 bits are accepted as the same data
    y2 = C.w4a16_matmul(x, qw.view(np.uint32), qz.view(np.uint32), s.view(np.uint16), None, 32)
    np.testing.assert_array_equal(y2, C.w4a16_matmul(x, qw, qz, s, None, 32))


def test_w4a16_bad_inputs():
    rng = np.random.default_rng(1)
    qw, qz, s, _ = make_layer(rng, 64, 16, 32)
    x = np.zeros((2, 64), np.float32)
    f = C.w4a16_matmul
    with pytest.raises(ValueError):
        f(np.zeros((2, 63), np.float32), qw, qz, s, None, 32)  # K mismatch
    with pytest.raises(ValueError):
        f(x, qw, qz, s, None, 48)  # g does not divide K
    with pytest.raises(ValueError):
        f(x, qw, qz, s, None, 0)
    with pytest.raises(ValueError):
        f(x, qw, qz[:1], s, None, 32)  # qzeros groups
    with pytest.raises(ValueError):
        f(x, qw, qz, s[:, :8], None, 32)  # scales columns
    with pytest.raises(ValueError):
        f(x, qw, qz, s.astype(np.float32), None, 32)  # scales dtype
    with pytest.raises(ValueError):
        f(x, qw.astype(np.int64), qz, s, None, 32)  # qweight dtype
    with pytest.raises(ValueError):
        f(x, qw.view(np.float32), qz, s, None, 32)  # qweight float bits
    with pytest.raises(ValueError):
        f(x, qw, qz, s, np.zeros(15, np.float32), 32)  # bias length
    with pytest.raises(ValueError):
        f(x[0], qw, qz, s, None, 32)  # x 1-d
    with pytest.raises(ValueError):
        f(x, qw, qz, s, None, 32, isa="sse9")
    with pytest.raises(ValueError):
        C.w4a16_matmul_ref(x, qw, qz, s, None, 48)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M,K,N", [(1, 96, 72), (2, 77, 13), (3, 320, 200), (7, 33, 5),
                                   (33, 96, 300), (300, 77, 13), (20, 200, 520)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_f16_matmul(isa, M, K, N, with_bias):
    rng = np.random.default_rng(M * 100 + K + N)
    w = (rng.standard_normal((N, K)) * 0.1).astype(np.float16)
    x = rng.standard_normal((M, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    wd = w.astype(np.float64)
    ref = x.astype(np.float64) @ wd.T + (bias if with_bias else 0)
    mag = np.abs(x.astype(np.float64)) @ np.abs(wd).T + (np.abs(bias) if with_bias else 0)
    y = C.f16_matmul(x, w, bias, isa=isa)
    assert y.shape == (M, N) and y.dtype == np.float32
    check_close(y, ref, mag, RTOL_KERNEL)


def test_f16_bad_inputs():
    x = np.zeros((2, 8), np.float32)
    w = np.zeros((4, 8), np.float16)
    with pytest.raises(ValueError):
        C.f16_matmul(x, w[:, :7], None)
    with pytest.raises(ValueError):
        C.f16_matmul(x, w.astype(np.float32), None)
    with pytest.raises(ValueError):
        C.f16_matmul(x, w, np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        C.f16_matmul(x, w, None, isa="neon")
