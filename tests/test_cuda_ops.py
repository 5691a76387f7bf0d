"""Dense GPU ops (csrc/kernels/ops.cu through awq.gpu) against float64 numpy references.

Inputs are drawn in fp32, rounded to the tested dtype on the host, and the reference is computed in
float64 from exactly those rounded values, so the tolerances only cover the kernel's own error: fp32
arithmetic inside plus one rounding of the output to its dtype (unit roundoff U below). Output
buffers are poisoned with NaN (0xFF bytes) before every call. Shapes are odd on purpose: M = 1, 2,
3, 7, 33; K and N not multiples of 64; GQA with 9 query heads over 3 kv heads; more query rows
than one attention block (16) and more keys than one key tile (32). The quantization ops are
compared bit for bit with the CPU core (itself tested against its references). Every test draws
fresh random data and prints its seed. Skips without a CUDA device.
"""
import numpy as np
import pytest

from awq import gpu
from awq._backend import C

INFO = C.cuda_info()
pytestmark = pytest.mark.skipif(not (INFO["built"] and INFO["devices"]),
                                reason=f"no usable CUDA device: {INFO['error']}")

FLOATS = ["float16", "bfloat16", "float32"]
# Unit roundoff of each storage type: the error of rounding one fp32 result to it.
U = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24}


def bf16_bits(x):
    b = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def encode(x, name):
    """float array -> host storage of dtype `name` (round to nearest even)."""
    x = np.asarray(x, np.float32)
    return bf16_bits(x) if name == "bfloat16" else x.astype(name)


def decode(h, name):
    """host storage -> float64 values."""
    if name == "bfloat16":
        return (np.asarray(h, np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.asarray(h).astype(np.float64)


def rand(rng, shape, name, scale=1.0):
    """(GpuTensor of dtype `name`, its exact float64 values)."""
    h = encode(rng.standard_normal(shape) * scale, name)
    return gpu.from_numpy(h, dtype=name), decode(h, name)


def poisoned(shape, name):
    return gpu.empty(shape, name).fill_bytes_(0xFF)


def download(t):
    return decode(t.to_numpy(), t.dtype.name)


# ---------------------------------------------------------------- rmsnorm


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("M", [1, 2, 3, 7, 33])
@pytest.mark.parametrize("D", [5, 77, 577, 4100])
@pytest.mark.parametrize("unit_offset", [0.0, 1.0])
def test_rmsnorm(rng, name, M, D, unit_offset):
    x, x64 = rand(rng, (M, D), name, 3.0)
    w = rng.standard_normal(D).astype(np.float32)
    out = gpu.rmsnorm(x, w, 1e-5, unit_offset, out=poisoned((M, D), name))
    ref = x64 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + 1e-5) * (w + unit_offset)
    # fp32 sum of squares over D (<= ~D 2^-24 relative, far less in practice) + output rounding.
    np.testing.assert_allclose(download(out), ref, rtol=2 * U[name] + 2e-6, atol=1e-6)


def test_rmsnorm_in_place(rng):
    x, x64 = rand(rng, (3, 64), "float16")
    w = np.ones(64, np.float32)
    y = gpu.rmsnorm(x, w, 1e-6, out=x)
    assert y is x
    ref = x64 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(download(x), ref, rtol=2 * U["float16"], atol=1e-6)


# ---------------------------------------------------------------- rope


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("M,H", [(1, 1), (3, 9), (33, 2)])
@pytest.mark.parametrize("d,rot", [(8, 8), (64, 64), (80, 40), (128, 64)])
def test_rope(rng, name, M, H, d, rot):
    x, x64 = rand(rng, (M, H, d), name)
    ang = rng.uniform(-50, 50, (M, rot // 2))
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    gpu.rope_(x, cos, sin, rot)
    h = rot // 2
    c, s = cos.astype(np.float64)[:, None, :], sin.astype(np.float64)[:, None, :]
    ref = x64.copy()
    x1, x2 = x64[..., :h], x64[..., h:rot]
    ref[..., :h] = x1 * c - x2 * s
    ref[..., h:rot] = x2 * c + x1 * s
    got = download(x)
    np.testing.assert_array_equal(got[..., rot:], x64[..., rot:])  # untouched dims
    # two fp32 products and a sum (a few 2^-24 of |x1| + |x2|) + output rounding
    np.testing.assert_allclose(got, ref, rtol=2 * U[name], atol=1e-6)


# ---------------------------------------------------------------- attention


def attention_ref(q, k, v, scale, q_pos0, window, kv_len):
    B, T, Hq, d = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    G = Hq // Hkv
    out = np.zeros((B, T, Hq, d))
    pos = q_pos0 + np.arange(T)[:, None]
    j = np.arange(S)[None, :]
    for b in range(B):
        mask = (j <= pos) & (j < (S if kv_len is None else kv_len[b]))
        if window > 0:
            mask &= j > pos - window
        for h in range(Hq):
            s = np.where(mask, q[b, :, h] @ k[b, :, h // G].T * scale, -np.inf)
            m = s.max(axis=1, keepdims=True)
            p = np.where(mask, np.exp(s - np.where(np.isfinite(m), m, 0.0)), 0.0)
            lsum = p.sum(axis=1, keepdims=True)
            out[b, :, h] = np.where(lsum > 0, (p @ v[b, :, h // G]) / np.where(lsum > 0, lsum, 1), 0)
    return out


ATTENTION_CASES = [
    # B, T, S, Hq, Hkv, d, q_pos0, window, kv_len
    (1, 1, 1, 1, 1, 64, 0, 0, None),
    (2, 33, 33, 9, 3, 64, 0, 0, None),  # prefill, GQA 9/3, rows cross blocks
    (2, 7, 100, 9, 3, 128, 93, 0, None),  # a chunk against a cache, keys cross tiles
    (1, 3, 70, 4, 4, 80, 67, 0, None),  # d not a multiple of 32
    (2, 40, 40, 8, 2, 256, 0, 7, None),  # sliding window
    (3, 2, 50, 6, 2, 17, 48, 0, [50, 30, 0]),  # kv_len, an empty row set
    (1, 5, 64, 9, 3, 96, 10, 0, None),  # keys past the last query are masked
    (1, 70, 90, 3, 1, 64, 20, 33, None),  # MQA, window across tiles
]


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: "B{}T{}S{}H{}-{}d{}p{}w{}".format(*c))
def test_attention(rng, name, case):
    B, T, S, Hq, Hkv, d, q_pos0, window, kv_len = case
    q, q64 = rand(rng, (B, T, Hq, d), name)
    k, k64 = rand(rng, (B, S, Hkv, d), name)
    v, v64 = rand(rng, (B, S, Hkv, d), name)
    scale = d**-0.5
    out = gpu.attention(q, k, v, scale, q_pos0, window, kv_len, out=poisoned((B, T, Hq, d), name))
    ref = attention_ref(q64, k64, v64, scale, q_pos0, window, kv_len)
    # Outputs are convex combinations of v: fp32 scores, softmax and sums (~1e-6), the rounding of
    # the probabilities to the input dtype before P V on the tensor-core path (as FlashAttention
    # does; changes the result by at most U max|v|), and one rounding of the output (rtol).
    atol = U[name] * np.abs(v64).max() + 2e-6
    np.testing.assert_allclose(download(out), ref, rtol=2 * U[name], atol=atol)
    if kv_len is not None and 0 in kv_len:
        assert not download(out)[kv_len.index(0)].any()  # rows that see no key are 0


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_attention_unaligned_views_use_the_cuda_core_kernel(rng, name):
    """Tensors whose rows are not 16-byte aligned take the CUDA-core kernel (the tensor-core one
    loads 16 bytes at a time); both agree with the reference."""
    B, T, S, Hq, Hkv, d = 1, 20, 45, 6, 3, 64
    ref_in = []
    views = []
    for shape in [(B, T, Hq, d), (B, S, Hkv, d), (B, S, Hkv, d)]:
        h = encode(rng.standard_normal(shape), name)
        base = gpu.from_numpy(np.concatenate([np.zeros(1, h.dtype), h.ravel()]), dtype=name)
        views.append(gpu.GpuTensor(shape, name, 0, base.ptr + 2, base))  # one element in
        ref_in.append(decode(h, name))
    out = gpu.attention(*views, d**-0.5, S - T)
    ref = attention_ref(*ref_in, d**-0.5, S - T, 0, None)
    np.testing.assert_allclose(download(out), ref, rtol=2 * U[name], atol=2 * U[name] + 2e-6)


def test_attention_matches_cpu_core(rng):
    """Same suite, two backends: the GPU kernel and the CPU core agree on fp32 inputs."""
    B, T, S, Hq, Hkv, d = 2, 9, 41, 6, 2, 32
    q = rng.standard_normal((B, T, Hq, d)).astype(np.float32)
    k = rng.standard_normal((B, S, Hkv, d)).astype(np.float32)
    v = rng.standard_normal((B, S, Hkv, d)).astype(np.float32)
    cpu = C.attention(q, k, v, 0.2, S - T, 5)
    got = gpu.attention(gpu.from_numpy(q), gpu.from_numpy(k), gpu.from_numpy(v), 0.2, S - T, 5)
    np.testing.assert_allclose(got.to_numpy(), cpu, rtol=1e-5, atol=1e-5)


def test_attention_bad_shapes():
    q = gpu.empty((1, 2, 9, 64), "float16")
    with pytest.raises(ValueError, match="not a multiple"):
        gpu.attention(q, gpu.empty((1, 4, 2, 64), "float16"), gpu.empty((1, 4, 2, 64), "float16"), 1.0)
    with pytest.raises(ValueError, match="do not fit"):
        gpu.attention(q, gpu.empty((1, 4, 3, 32), "float16"), gpu.empty((1, 4, 3, 32), "float16"), 1.0)
    big = gpu.empty((1, 2, 1, 300), "float16")
    with pytest.raises(ValueError, match="head dim 300"):
        gpu.attention(big, big, big, 1.0)


# ---------------------------------------------------------------- element-wise


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("n", [1, 7, 1001])
def test_silu_mul_and_add(rng, name, n):
    g, g64 = rand(rng, (n,), name, 3.0)
    u, u64 = rand(rng, (n,), name)
    y = gpu.silu_mul(g, u, out=poisoned((n,), name))
    ref = g64 / (1.0 + np.exp(-g64)) * u64
    # fp32 expf, one division and product (a few 2^-24) + output rounding
    np.testing.assert_allclose(download(y), ref, rtol=2 * U[name] + 1e-6, atol=1e-7)
    s = gpu.add(g, u, out=poisoned((n,), name))
    np.testing.assert_allclose(download(s), g64 + u64, rtol=U[name], atol=1e-7)
    gpu.add(g, u, out=g)  # residual add in place
    np.testing.assert_array_equal(download(g), download(s))


# ---------------------------------------------------------------- abs_mean


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("M", [1, 2, 3, 7, 33, 4099])
@pytest.mark.parametrize("K", [1, 70, 577])
def test_abs_mean(rng, name, M, K):
    x, x64 = rand(rng, (M, K), name, 2.0)
    out = gpu.abs_mean(x, out=poisoned((K,), "float32"))
    # fp32 sums of at most M/32 + 32 terms of one sign: relative error <= ~(M/32 + 32) 2^-24
    np.testing.assert_allclose(out.to_numpy(), np.abs(x64).mean(axis=0), rtol=(M / 32 + 40) * 2.0**-24)


def test_abs_mean_leading_dims(rng):
    x, x64 = rand(rng, (2, 3, 5), "float16")
    np.testing.assert_allclose(gpu.abs_mean(x).to_numpy(), np.abs(x64).reshape(6, 5).mean(0), rtol=1e-6)


# ---------------------------------------------------------------- linear (cuBLAS)


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("out_fp32", [False, True])
@pytest.mark.parametrize("M", [1, 2, 3, 7, 33])
@pytest.mark.parametrize("K,N", [(5, 3), (96, 65), (577, 191)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear(rng, name, out_fp32, M, K, N, with_bias):
    x, x64 = rand(rng, (M, K), name)
    w, w64 = rand(rng, (N, K), name)
    b = rng.standard_normal(N).astype(np.float32) if with_bias else None
    yname = "float32" if out_fp32 else name
    y = gpu.linear(x, w, b, out=poisoned((M, N), yname), out_dtype=yname)
    ref = x64 @ w64.T + (b if with_bias else 0.0)
    # fp32 accumulation of K exact products (worst case K 2^-24 sum|x w|), then the output rounding
    # (twice with a bias: the GEMM result, then the sum with the bias).
    mag = np.abs(x64) @ np.abs(w64).T
    bound = K * 2.0**-24 * mag + (2 if with_bias else 1) * U[yname] * (mag + np.abs(b if with_bias else 0))
    assert np.all(np.abs(download(y) - ref) <= bound + 1e-30)


def test_linear_leading_dims(rng):
    x, x64 = rand(rng, (2, 3, 40), "bfloat16")
    w, w64 = rand(rng, (24, 40), "bfloat16")
    y = gpu.linear(x, w, out_dtype="float32")
    assert y.shape == (2, 3, 24) and y.dtype is gpu.float32
    np.testing.assert_allclose(y.to_numpy(), x64 @ w64.T, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- pseudo-quantize and clip search


def quant_weights(rng, N, K, g):
    """Random weights with an all-zero group and a group holding one outlier."""
    w = rng.standard_normal((N, K)).astype(np.float32)
    w[0, :g] = 0.0
    if N > 1:
        w[1, g + 3 if K > g else 3] = 40.0
    return w


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("N", [1, 3, 33])
@pytest.mark.parametrize("K,g", [(128, 32), (192, 64), (256, 128), (96, 96)])
@pytest.mark.parametrize("bits,zp", [(4, True), (4, False), (3, True), (8, True)])
def test_pseudo_quantize_matches_cpu_bit_for_bit(rng, name, N, K, g, bits, zp):
    h = encode(quant_weights(rng, N, K, g), name)
    w32 = decode(h, name).astype(np.float32)
    w = gpu.from_numpy(h, dtype=name)
    out = gpu.pseudo_quantize(w, g, bits, zp, out=poisoned((N, K), name))
    want = encode(C.pseudo_quantize(w32, g, bits, zp), name)  # same fp32 math, one final rounding
    np.testing.assert_array_equal(out.to_numpy(), want)


def test_pseudo_quantize_in_place_and_whole_rows(rng):
    w32 = rng.standard_normal((5, 100)).astype(np.float32)
    w = gpu.from_numpy(w32)
    gpu.pseudo_quantize(w, -1, 4, True, out=w)
    np.testing.assert_array_equal(w.to_numpy(), C.pseudo_quantize(w32, 100, 4, True))


def test_pseudo_quantize_reports_nonfinite_group(rng):
    w32 = rng.standard_normal((4, 128)).astype(np.float32)
    w32[2, 37] = np.nan
    w32[3, 5] = np.inf
    with pytest.raises(FloatingPointError, match=r"row 2, group 1 \(columns 32..63\) holds NaN at column 37"):
        gpu.pseudo_quantize(gpu.from_numpy(w32, dtype="float16"), 32, 4, True)
    gpu.pseudo_quantize(gpu.from_numpy(w32), 32, 4, True, check_finite=False)  # no check, no error


def clip_err64(w, x, mv, bits, zp):
    """float64 AWQ clip error of one group: mean_t (x_t . (Q(clamp(w)) - w))^2."""
    wq = C.pseudo_quantize(np.clip(w, -mv, mv).astype(np.float32)[None], w.size, bits, zp)[0]
    return float(np.mean((x.astype(np.float64) @ (wq.astype(np.float64) - w)) ** 2))


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("N,K,T,g", [(7, 128, 64, 32), (33, 256, 300, 128), (3, 192, 40, 64)])
@pytest.mark.parametrize("zp", [True, False])
def test_clip_search_agrees_with_cpu(rng, name, N, K, T, g, zp):
    wh = encode(quant_weights(rng, N, K, g), name)
    xh = encode(rng.standard_normal((T, K)), name)
    w32, x32 = decode(wh, name).astype(np.float32), decode(xh, name).astype(np.float32)
    got = gpu.clip_search(gpu.from_numpy(wh, dtype=name), gpu.from_numpy(xh, dtype=name), g, 4, zp).to_numpy()
    want = C.clip_search(w32, x32, g, 4, zp)
    assert got.shape == want.shape == (N, K // g)
    same = got == want
    # Near-ties may pick a neighbouring candidate (fp32 vs the CPU's double final sum): most groups
    # agree exactly, and every GPU choice is as good as the CPU's to rounding.
    assert same.mean() >= 0.8, same.mean()
    for n, j in zip(*np.nonzero(~same)):
        sl = slice(j * g, (j + 1) * g)
        e_gpu = clip_err64(w32[n, sl], x32[:, sl], got[n, j], 4, zp)
        e_cpu = clip_err64(w32[n, sl], x32[:, sl], want[n, j], 4, zp)
        assert e_gpu <= e_cpu * (1 + 1e-3) + 1e-12, (n, j, e_gpu, e_cpu)


def test_clip_search_rejects_nonfinite_inputs(rng):
    w = gpu.from_numpy(rng.standard_normal((4, 64)).astype(np.float32))
    x32 = rng.standard_normal((10, 64)).astype(np.float32)
    x32[3, 17] = np.inf
    with pytest.raises(FloatingPointError, match="x token 3, column 17"):
        gpu.clip_search(w, gpu.from_numpy(x32), 32, 4, True)


# ---------------------------------------------------------------- casts


def test_casts_round_to_nearest_even(rng):
    x = (rng.standard_normal(1001) * 1000).astype(np.float32)
    t = gpu.from_numpy(x)
    np.testing.assert_array_equal(t.to("float16").to_numpy(), x.astype(np.float16))
    np.testing.assert_array_equal(t.to("bfloat16").to_numpy(), bf16_bits(x))
    h = t.to("float16")
    np.testing.assert_array_equal(h.to("float32").to_numpy(), x.astype(np.float16).astype(np.float32))


# ---- quantizer weight ops: w_mean, row scaling, clamp, 4-bit GEMM packing ----------------------

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i of a packed word holds column AWQ_ORDER[i] of its 8


def unpack_by_hand(qweight, N):
    """int32 [K, N/8] AutoAWQ GEMM words -> uint8 codes [K, N]."""
    q = qweight.view(np.uint32)
    codes = np.zeros((q.shape[0], N), np.uint8)
    for i in range(8):
        codes[:, AWQ_ORDER[i]::8] = (q >> (4 * i)) & 0xF
    return codes


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("shapes,g", [([(3, 96)], 32), ([(33, 192), (8, 192), (1, 192)], 64), ([(300, 256)], 128)])
def test_weight_mean_matches_float64(rng, name, shapes, g):
    hs = [encode(rng.standard_normal(s) * rng.uniform(0.1, 3.0, (s[0], 1)), name) for s in shapes]
    ws = [decode(h, name).astype(np.float32) for h in hs]
    got = gpu.weight_mean([gpu.from_numpy(h, dtype=name) for h in hs], g)
    wcat = np.concatenate(ws).astype(np.float64)
    wa = np.abs(wcat).reshape(-1, g)
    amax = wa.max(axis=1, keepdims=True).astype(np.float32).astype(np.float64)
    want = (wa / (amax + 1e-6)).reshape(wcat.shape).mean(axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", FLOATS)
def test_scale_rows_divides_a_row_range(rng, name):
    N, K, n = 37, 45, 11
    h = encode(rng.standard_normal((N, K)), name)
    s = rng.uniform(0.5, 2.0, n).astype(np.float32)
    w = gpu.from_numpy(h, dtype=name)
    tail = gpu.rows(w, N - n, N)
    gpu.scale_rows(tail, s, inverse=True, out=tail)
    got = decode(w.to_numpy(), name)
    want = decode(h, name)
    want[N - n:] /= s[:, None]
    np.testing.assert_allclose(got, want, rtol=U[name], atol=0)
    np.testing.assert_array_equal(got[:N - n], decode(h, name)[:N - n])  # rows above untouched
    out = gpu.scale_rows(gpu.from_numpy(h, dtype=name), np.full(N, 2.0, np.float32), out=poisoned((N, K), name))
    np.testing.assert_allclose(decode(out.to_numpy(), name), decode(h, name) * 2.0, rtol=U[name], atol=0)


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("N,K,g", [(3, 96, 32), (33, 192, 64), (17, 256, 128)])
def test_clamp_groups_matches_numpy_clip(rng, name, N, K, g):
    h = encode(rng.standard_normal((N, K)), name)
    mv = rng.uniform(0.2, 2.0, (N, K // g)).astype(np.float32)
    got = gpu.clamp_groups(gpu.from_numpy(h, dtype=name), mv, g, out=poisoned((N, K), name))
    w = decode(h, name)
    want = np.clip(w.reshape(N, K // g, g), -mv[:, :, None], mv[:, :, None]).reshape(N, K)
    np.testing.assert_allclose(decode(got.to_numpy(), name), want, rtol=U[name], atol=0)


@pytest.mark.parametrize("N,K,g", [(8, 32, 32), (24, 192, 64), (40, 256, 128), (16, 96, 96)])
@pytest.mark.parametrize("zp", [True, False])
def test_quantize_gemm_matches_cpu_codes_and_hand_packing(rng, N, K, g, zp):
    w = quant_weights(rng, N, K, g)
    qweight, scales, zeros = gpu.quantize_gemm(gpu.from_numpy(w), g, zp)
    codes, s_cpu, z_cpu = C.quantize_codes(w, g, 4, zp)
    np.testing.assert_array_equal(unpack_by_hand(qweight, N), codes.T)
    np.testing.assert_array_equal(scales, s_cpu)
    np.testing.assert_array_equal(zeros, z_cpu)
    assert qweight.dtype == np.int32 and qweight.shape == (K, N // 8)


def test_quantize_gemm_rejects_bad_input(rng):
    w = rng.standard_normal((16, 64)).astype(np.float32)
    w[9, 40] = np.inf
    with pytest.raises(FloatingPointError, match="row 9, group 1"):
        gpu.quantize_gemm(gpu.from_numpy(w), 32)
    with pytest.raises(ValueError, match="multiple of 8"):
        gpu.quantize_gemm(gpu.from_numpy(w[:12]), 32)
    with pytest.raises(ValueError, match="does not divide"):
        gpu.quantize_gemm(gpu.from_numpy(w), 48)


def test_grid_overflow_near_flt_max_is_refused_like_the_cpu():
    w = np.zeros((8, 32), np.float32)
    w[5, 40 % 32] = 3.0e38
    w[5, 0] = -3.0e38  # finite, but max - min overflows float32
    with pytest.raises(FloatingPointError, match="row 5, group 0"):
        C.pseudo_quantize(w, 32, 4, True)  # the CPU core's verdict
    with pytest.raises(FloatingPointError, match="row 5, group 0 .*overflows float32"):
        gpu.pseudo_quantize(gpu.from_numpy(w), 32, 4, True)
    with pytest.raises(FloatingPointError, match="row 5, group 0 .*overflows float32"):
        gpu.quantize_gemm(gpu.from_numpy(w), 32, True)
