"""WQLinear_GEMM (torch module over awq's kernels) and packing_utils on torch tensors.

Layers are made by from_linear from a known nn.Linear and per-group min/max scales and zero points
computed here (AutoAWQ's zero-point formula, REFERENCE.md s2). Their forward is compared with
(i) a float64 numpy matmul on the dequantized weight the codes define and (ii) awq's runtime
AWQLinear on the same packed tensors. Needs torch (skipped without); the CUDA test also needs a
device torch can see and awq built with CUDA.

Tolerance vs float64 (CPU): the kernel dequantizes exactly in fp32 (small integer times an fp16
scale) and accumulates in fp32: |error| <= K * 2^-24 * (|x| @ |W|) in the worst case; we allow
1e-5 * (|x| @ |W|) + 1e-6 (K <= 256 here). Against AWQLinear: the same kernel on the same
memory, bit-identical.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from awq import _awq_C as C  # noqa: E402
from awq.modules.linear import WQLinear_GEMM  # noqa: E402
from awq.modules.linear.gemm import HAS_TORCH  # noqa: E402
from awq.runtime.layers import AWQLinear  # noqa: E402
from awq.utils.packing_utils import dequantize_gemm, reverse_awq_order, unpack_awq  # noqa: E402

P = [0, 2, 4, 6, 1, 3, 5, 7]


def unpack_cols(words):
    """int32 [R, C/8] -> codes [R, C] (independent of the C unpacker)."""
    w = np.asarray(words).view(np.uint32)
    out = np.zeros((w.shape[0], w.shape[1] * 8), np.int64)
    for i in range(8):
        out[:, P[i]::8] = (w >> np.uint32(4 * i)) & 0xF
    return out


def minmax_params(w, g):
    """Per-group asymmetric 4-bit scales and zero points of weight [N, K], in the [G, N]
    orientation from_linear takes: s = max(max - min, 1e-5) / 15, z = clamp(-round(min / s), 0, 15)."""
    N, K = w.shape
    wg = w.reshape(N, K // g, g).astype(np.float32)
    mx, mn = wg.max(axis=2), wg.min(axis=2)
    s = np.maximum(mx - mn, np.float32(1e-5)) / np.float32(15)
    z = np.clip(-np.rint(mn / s), 0, 15)
    return s.T.copy(), z.T.copy()  # [G, N]


def expected_codes(w, s, z, g):
    """The codes from_linear must produce, in the same float32 operations: round((w + z * s) / fp16(s))."""
    K = w.shape[1]
    gi = np.arange(K) // g
    zs = (z * s).astype(np.float32)[gi]  # [K, N]
    s16 = s.astype(np.float16).astype(np.float32)[gi]
    return np.clip(np.rint((w.T.astype(np.float32) + zs) / s16), 0, 15).astype(np.int64)


def make_layer(K, N, g, bias=True, seed=0, symmetric=False):
    """from_linear(group_size=g) of a known Linear; returns (layer, codes [K, N], zero points [G, N],
    float64 W [K, N] the codes define, fp16 bias as float64 or None)."""
    g_arg, g = g, K if g == -1 else g
    torch.manual_seed(seed)
    lin = torch.nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, 0.05)
        lin.weight[0, :g] = 0.0  # an all-zero group
        lin.weight[N // 2, 3] = 1.0  # one outlier
        if bias:
            lin.bias.normal_(0, 0.1)
    w = lin.weight.detach().numpy()
    if symmetric:
        s = np.maximum(np.abs(w.reshape(N, K // g, g)).max(axis=2), 1e-5).T.copy() / np.float32(7)
        z = None
        layer = WQLinear_GEMM.from_linear(lin, 4, g_arg, scales=torch.from_numpy(s), zeros=None)
        q = np.clip(np.rint(w.T / s.astype(np.float16).astype(np.float32)[np.arange(K) // g]) + 8, 0, 15)
        zz = np.full(s.shape, 8)
    else:
        s, z = minmax_params(w, g)
        layer = WQLinear_GEMM.from_linear(lin, 4, g_arg, scales=torch.from_numpy(s), zeros=torch.from_numpy(z))
        q, zz = expected_codes(w, s, z, g), z.astype(np.int64)
    gi = np.arange(K) // g
    W = (q - zz[gi]) * s.astype(np.float16).astype(np.float64)[gi]  # [K, N] float64, what the codes define
    b = None if not bias else lin.bias.detach().half().double().numpy()
    return layer, q, zz, W, b


def check_close(y, x, W, b):
    xd = x.detach().double().reshape(-1, W.shape[0]).numpy()
    ref = xd @ W + (0 if b is None else b)
    yd = y.detach().double().reshape(ref.shape).numpy()
    bound = 1e-5 * (np.abs(xd) @ np.abs(W)) + 1e-6
    assert (np.abs(yd - ref) <= bound).all(), float(np.abs(yd - ref).max())


def test_has_torch_and_import_paths():
    import awq.modules.linear.gemm as gemm

    assert HAS_TORCH and issubclass(WQLinear_GEMM, torch.nn.Module) and gemm.WQLinear_GEMM is WQLinear_GEMM


@pytest.mark.parametrize("K,N,g", [(96, 72, 32), (128, 64, 64), (256, 40, 128), (64, 16, -1)])
@pytest.mark.parametrize("bias", [True, False])
def test_from_linear_buffers_and_codes(K, N, g, bias):
    layer, q, z, _, _ = make_layer(K, N, g, bias)
    gg = K if g == -1 else g
    assert layer.group_size == gg
    G = K // gg
    assert layer.qweight.dtype == torch.int32 and tuple(layer.qweight.shape) == (K, N // 8)
    assert layer.qzeros.dtype == torch.int32 and tuple(layer.qzeros.shape) == (G, N // 8)
    assert layer.scales.dtype == torch.float16 and tuple(layer.scales.shape) == (G, N)
    assert (layer.bias is None) == (not bias) and (layer.bias is None or layer.bias.dtype == torch.float16)
    np.testing.assert_array_equal(unpack_cols(layer.qweight.numpy()), q)
    np.testing.assert_array_equal(unpack_cols(layer.qzeros.numpy()), z)
    assert set(dict(layer.named_buffers())) == ({"qweight", "qzeros", "scales"} | ({"bias"} if bias else set()))
    assert "w_bit=4" in repr(layer)


@pytest.mark.parametrize("K,N,g", [(96, 72, 32), (128, 64, 64), (256, 40, 128)])
@pytest.mark.parametrize("lead", [(1,), (2,), (3,), (2, 5), (1, 1, 7)])
def test_forward_cpu_against_float64_and_runtime(K, N, g, lead):
    layer, _, _, W, b = make_layer(K, N, g, bias=True, seed=K + N)
    layer.eval()
    x = torch.randn(*lead, K)
    y = layer(x)
    assert y.dtype == torch.float32 and tuple(y.shape) == (*lead, N)
    check_close(y, x, W, b)
    ref = AWQLinear(layer.qweight.numpy(), layer.qzeros.numpy(), layer.scales.numpy(), layer.bias.float().numpy(), g)
    np.testing.assert_array_equal(y.reshape(-1, N).numpy(), ref(x.reshape(-1, K).numpy()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_forward_cpu_dtypes(dtype):
    layer, _, _, W, b = make_layer(128, 64, 32)
    x = torch.randn(3, 128).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and tuple(y.shape) == (3, 64)
    y32 = layer(x.float())  # the kernel runs in fp32; only the final cast differs
    assert torch.equal(y, y32.to(dtype))
    assert layer(torch.zeros(0, 128)).shape == (0, 64)


def test_from_linear_on_a_half_linear():
    """AutoAWQ quantizes fp16 models: (w + z * s) / s runs in fp16, each op rounded once (numpy's
    float16 arithmetic rounds the same way)."""
    torch.manual_seed(3)
    lin = torch.nn.Linear(128, 64).half()
    w16 = lin.weight.detach().numpy()
    s, z = minmax_params(w16.astype(np.float32), 32)
    s16, z16 = s.astype(np.float16), z.astype(np.float16)
    half = WQLinear_GEMM.from_linear(lin, 4, 32, scales=torch.from_numpy(s16), zeros=torch.from_numpy(z16))
    gi = np.arange(128) // 32
    want = np.clip(np.rint((w16.T + (z16 * s16)[gi]) / s16[gi]), 0, 15)
    np.testing.assert_array_equal(unpack_cols(half.qweight.numpy()), want)
    assert half.bias.dtype == torch.float16 and half(torch.randn(1, 128, dtype=torch.float16)).dtype == torch.float16


def test_two_layer_mlp_against_float64():
    torch.manual_seed(1)
    l1, _, _, W1, b1 = make_layer(128, 96, 32, seed=1)
    l2, _, _, W2, b2 = make_layer(96, 64, 32, seed=2, symmetric=True)
    model = torch.nn.Sequential(l1, torch.nn.SiLU(), l2).eval()
    x = torch.randn(2, 4, 128)
    with torch.no_grad():
        y = model(x)
    h = x.double().numpy().reshape(-1, 128) @ W1 + b1
    h = h / (1 + np.exp(-h))
    ref = h @ W2 + b2
    np.testing.assert_allclose(y.double().numpy().reshape(-1, 64), ref, rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_and_repack_on_change():
    layer, _, _, W, b = make_layer(128, 64, 64)
    empty = WQLinear_GEMM.from_linear(torch.nn.Linear(128, 64), 4, 64, init_only=True)
    assert int(empty.qweight.abs().sum()) == 0
    empty.load_state_dict(layer.state_dict())
    x = torch.randn(5, 128)
    np.testing.assert_array_equal(empty(x).numpy(), layer(x).numpy())


def test_training_mode_gradient_to_input():
    layer, _, _, W, b = make_layer(96, 72, 32)
    layer.train()
    x = torch.randn(4, 96, requires_grad=True)
    gy = torch.randn(4, 72)
    (layer(x) * gy).sum().backward()
    np.testing.assert_allclose(x.grad.double().numpy(), gy.double().numpy() @ W.T, rtol=1e-5, atol=1e-5)
    layer.eval()  # AutoAWQ: no graph outside training mode
    assert layer(torch.randn(2, 96, requires_grad=True)).grad_fn is None


def test_bad_inputs():
    with pytest.raises(NotImplementedError, match="w_bit=8"):
        WQLinear_GEMM(8, 128, 128, 64, False, "cpu")
    with pytest.raises(ValueError, match="group_size 48 does not divide in_features 128"):
        WQLinear_GEMM(4, 48, 128, 64, False, "cpu")
    with pytest.raises(ValueError, match="out_features 60 is not a multiple of 8"):
        WQLinear_GEMM(4, 32, 128, 60, False, "cpu")
    lin = torch.nn.Linear(128, 64)
    with pytest.raises(ValueError, match=r"scales: shape \(2, 64\), expected \(4, 64\)"):
        WQLinear_GEMM.from_linear(lin, 4, 32, scales=torch.ones(2, 64), zeros=torch.zeros(2, 64))
    with pytest.raises(ValueError, match="needs scales"):
        WQLinear_GEMM.from_linear(lin, 4, 32)
    layer, *_ = make_layer(128, 64, 32)
    with pytest.raises(ValueError, match="input has 96 features"):
        layer(torch.randn(2, 96))


def test_packing_utils_on_torch_tensors():
    layer, q, z, W, _ = make_layer(96, 72, 32)
    iw, iz = unpack_awq(layer.qweight, layer.qzeros, 4)
    assert isinstance(iw, torch.Tensor) and iw.dtype == torch.int8 and tuple(iw.shape) == (96, 72)
    rw, rz = reverse_awq_order(iw, iz, 4)
    assert isinstance(rw, torch.Tensor)
    np.testing.assert_array_equal(rw.numpy(), q)
    np.testing.assert_array_equal(rz.numpy(), z)
    w = dequantize_gemm(layer.qweight, layer.qzeros, layer.scales, 4, 32)
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float16
    np.testing.assert_array_equal(w.numpy(), W.astype(np.float16))
    np.testing.assert_array_equal(layer.dequantized_weight().numpy(), W.astype(np.float16))
    wb = dequantize_gemm(layer.qweight, layer.qzeros, layer.scales.bfloat16(), 4, 32)
    assert wb.dtype == torch.bfloat16


CUDA_OK = torch.cuda.is_available() and bool(C.cuda_info()["devices"])


@pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA device visible to torch and awq built with CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("M", [1, 3, 33, 300])
def test_forward_cuda_against_float64(dtype, M):
    # kernel rounds the dequantized weight once to the activation dtype and y once (REFERENCE of
    # tests/test_cuda_w4a16.py): |y - ref| <= u (|x| @ |W|) + u |ref|, u = 2^-11 fp16, 2^-8 bf16
    u = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    layer, _, _, W, b = make_layer(256, 72, 64, seed=M)
    layer = layer.cuda().eval()
    x = torch.randn(M, 256, device="cuda").to(dtype)
    y = layer(x)
    y2 = layer(x)  # the repacked weight is reused
    torch.cuda.synchronize()
    assert y.dtype == dtype and y.device == x.device and torch.equal(y, y2)
    run = torch.float16 if dtype == torch.float32 else dtype  # fp32 input runs in fp16, as AutoAWQ's did
    xd = x.to(run).double().cpu().numpy()
    bias = layer.bias.to(run).double().cpu().numpy()
    if dtype == torch.bfloat16:  # bf16 activations: the kernel rounds fp16 scales to bf16
        s = layer.scales.bfloat16().double().cpu().numpy()
        qz = unpack_cols(layer.qzeros.cpu().numpy())
        q = unpack_cols(layer.qweight.cpu().numpy())
        gi = np.arange(256) // 64
        W = (q - qz[gi]) * s[gi]
    ref = xd @ W + bias
    bound = u * (np.abs(xd) @ np.abs(W)) + u * np.abs(ref) + 2 * u * np.abs(bias) + 1e-6
    err = np.abs(y.double().cpu().numpy() - ref)
    assert (err <= bound).all(), float((err / bound).max())
    # a new qweight (load_state_dict writes in place) is repacked
    other, _, _, W2, b2 = make_layer(256, 72, 64, seed=M + 1)
    layer.load_state_dict(other.state_dict())
    x32 = torch.randn(M, 256, device="cuda")
    y3 = layer(x32.to(torch.float16)).double().cpu().numpy()
    ref3 = x32.half().double().cpu().numpy() @ W2 + b2
    assert np.abs(y3 - ref3).max() <= 2.0 ** -11 * 4 * (np.abs(x32.cpu().numpy()) @ np.abs(W2)).max() + 1e-3


def test_from_linear_refuses_non_finite_codes():
    lin = torch.nn.Linear(64, 16)
    s = torch.full((2, 16), 0.01)
    s[1, 3] = 0.0
    with pytest.raises(FloatingPointError, match="non-finite codes"):
        WQLinear_GEMM.from_linear(lin, 4, 32, scales=s, zeros=torch.full((2, 16), 8.0))


@pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA device visible to torch and awq built with CUDA")
def test_forward_cuda_layer_made_under_inference_mode():
    """Inference tensors have no version counter: a layer built / moved under torch.inference_mode()
    still runs (and gives the layer's normal output)."""
    layer, _, _, W, b = make_layer(128, 40, 64, seed=5)
    x = torch.randn(3, 128).half()
    want = layer.cuda().eval()(x.cuda()).cpu()
    with torch.inference_mode():
        layer2, _, _, _, _ = make_layer(128, 40, 64, seed=5)
        layer2 = layer2.cuda().eval()
        got = layer2(x.cuda()).cpu()
    assert torch.equal(got, want)
