"""W4A16 CUDA kernels (csrc/kernels/w4a16.cu) against a float64 host matmul on the dequantized weight.

Every path (gemv, mma, cublas, ref, auto) on fresh random codes, zeros and scales packed by the
independent numpy packer below (AutoAWQ GEMM order), random x, NaN-poisoned output, M in
{1, 2, 3, 7, 33, 300}, group sizes 32/64/128, fp16 and bf16, N not a multiple of 16 or 32 and K not
a multiple of 64. Runs only where torch sees a CUDA device and awq was built with CUDA.

Tolerance (element-wise, rigorous with a factor-2 margin): the kernels round each dequantized
weight once to the activation dtype (relative error <= u/2, u = 2^-11 fp16, 2^-8 bf16), accumulate
in fp32 (K * 2^-24 relative, negligible here) and round y once (u/2). So
|y - ref| <= u * (|x| @ |W|) + u * |ref|, with ref = x @ W in float64 on the exact dequantized W.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
C = pytest.importorskip("awq._awq_C")

if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA device", allow_module_level=True)
if not C.cuda_info()["devices"]:
    pytest.skip(f"awq sees no CUDA device: {C.cuda_info()['error']}", allow_module_level=True)

P = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i of a word holds column 8j + P[i]
DT = {"float16": torch.float16, "bfloat16": torch.bfloat16}
U = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


def pack_awq(codes):
    """[R, N] ints 0..15 -> [R, N/8] int32 in AutoAWQ GEMM order (independent of the C packer)."""
    codes = np.asarray(codes, dtype=np.uint32)
    r, n = codes.shape
    out = np.zeros((r, n // 8), dtype=np.uint32)
    for i in range(8):
        out |= (codes[:, P[i]::8] & 0xF) << np.uint32(4 * i)
    return out.view(np.int32)


def test_packer_worked_example():
    # REFERENCE.md section 3: codes 1..8 for columns 0..7 pack to 0x86427531
    assert pack_awq(np.arange(1, 9)[None]).view(np.uint32)[0, 0] == 0x86427531


@pytest.fixture(scope="module")
def ctx():
    return C.cuda_w4a16_context()


def stream():
    return torch.cuda.current_stream().cuda_stream


class Layer:
    """Random layer on the device: codes, zeros, scales (host copies for the reference)."""

    def __init__(self, K, N, g, dtype, rng, scales_dtype=None, special=True):
        G = K // g
        self.K, self.N, self.g, self.dtype = K, N, g, dtype
        self.sdtype = scales_dtype or dtype
        q = rng.integers(0, 16, size=(K, N))
        z = rng.integers(0, 16, size=(G, N))
        s = rng.uniform(0.002, 0.02, size=(G, N))
        if special and G >= 2:
            q[:g, : N // 2] = np.repeat(z[:1, : N // 2], g, axis=0)  # a group whose weights are all zero
            s[G - 1, N // 3] = 0.9  # one outlier scale
        st = torch.tensor(s, dtype=DT[self.sdtype])
        # the kernel rounds fp16 scales to bf16 with bf16 activations: the reference does too
        s_eff = st.to(DT[dtype]) if dtype == "bfloat16" else st
        self.W = (q - np.repeat(z, g, axis=0)) * np.repeat(s_eff.double().numpy(), g, axis=0)
        dev = "cuda"
        self.qweight = torch.from_numpy(pack_awq(q)).to(dev)
        self.qzeros = torch.from_numpy(pack_awq(z)).to(dev)
        self.scales = st.to(dev)
        nbytes = C.cuda_w4a16_repack_nbytes(K, N)
        self.rp = torch.empty(nbytes, dtype=torch.uint8, device=dev)
        C.cuda_w4a16_repack(self.qweight.data_ptr(), self.rp.data_ptr(), K, N, stream())

    def run(self, x, bias=None, path="auto", ctx=None, config=None):
        M = x.shape[0]
        y = torch.full((M, self.N), float("nan"), dtype=DT[self.dtype], device="cuda")
        used = C.cuda_w4a16(
            x.data_ptr(), self.rp.data_ptr(), self.qzeros.data_ptr(), self.scales.data_ptr(),
            0 if bias is None else bias.data_ptr(), y.data_ptr(), M, self.K, self.N, self.g, self.dtype,
            stream=stream(), path=path, ctx=ctx,
            scales_dtype=None if self.sdtype == self.dtype else self.sdtype, config=config)
        torch.cuda.synchronize()
        return y, used

    def check(self, x, y, bias=None):
        xd = x.double().cpu().numpy()
        ref = xd @ self.W
        if bias is not None:
            ref = ref + bias.double().cpu().numpy()[None]
        yd = y.double().cpu().numpy()
        assert np.isfinite(yd).all(), "output not fully written (NaN poison left) or non-finite"
        u = U[self.dtype]
        bound = u * (np.abs(xd) @ np.abs(self.W)) + u * np.abs(ref) + 1e-6
        err = np.abs(yd - ref)
        worst = np.unravel_index(np.argmax(err / bound), err.shape)
        assert (err <= bound).all(), (
            f"max err/bound {float((err / bound).max()):.3g} at {worst}: y={yd[worst]} ref={ref[worst]}")
        return float(np.linalg.norm(yd - ref) / max(np.linalg.norm(ref), 1e-30))


PATHS = ["gemv", "mma", "cublas", "ref", "auto"]
MS = [1, 2, 3, 7, 33, 300]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("KG,N", [(3, 72), (5, 200), (9, 1032)])
def test_paths_against_float64(ctx, dtype, g, KG, N):
    rng = np.random.default_rng()
    K = KG * g  # 3 * 32 = 96 and 5 * 64 = 320 are not multiples of 64: padded chunks
    lay = Layer(K, N, g, dtype, rng)
    for M in MS:
        x = torch.from_numpy(rng.standard_normal((M, K))).to(DT[dtype]).cuda()
        bias = torch.from_numpy(rng.standard_normal(N)).to(DT[dtype]).cuda() if M % 2 else None
        for path in PATHS:
            if path == "gemv" and M > 8:
                continue
            y, used = lay.run(x, bias, path=path, ctx=ctx)
            assert used == path or path == "auto"
            lay.check(x, y, bias)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_split_k_configs_and_determinism(ctx, dtype):
    rng = np.random.default_rng()
    K, N, g = 2048, 520, 128
    lay = Layer(K, N, g, dtype, rng)
    for M in (1, 5, 16, 40, 70):
        x = torch.from_numpy(rng.standard_normal((M, K))).to(DT[dtype]).cuda()
        for path in ("gemv", "mma"):
            if path == "gemv" and M > 8:
                continue
            # (wn, blocks, stages, tm): blocks that end inside tiles, several partial tiles per tile,
            # more blocks than chunks of a tile, token tiles other than the default
            for cfg in [(1, 1), (1, 7), (2, 3, 6), (4, 50, 3), (8, 5), (2, 101, 8), (8, 1), (4, 13, 4, 2),
                        (2, 9, 3, 8)]:
                if path == "gemv" and len(cfg) == 4 and cfg[3] > 1:
                    continue
                y1, _ = lay.run(x, path=path, ctx=ctx, config=cfg)
                lay.check(x, y1)
                y2, _ = lay.run(x, path=path, ctx=ctx, config=cfg)
                assert torch.equal(y1, y2), f"{path} {cfg} M={M}: two runs differ"


def test_auto_plans_and_large_layer(ctx):
    rng = np.random.default_rng()
    K, N, g = 4096, 4096, 128
    lay = Layer(K, N, g, "float16", rng, special=False)
    for M in (1, 4, 16, 64, 200, 1100):
        plan = C.cuda_w4a16_plan(M, K, N, g, ctx)
        assert plan["path"] in ("mma", "cublas")
        x = torch.from_numpy(rng.standard_normal((M, K))).half().cuda()
        y, used = lay.run(x, ctx=ctx)
        assert used == plan["path"]
        lay.check(x, y)
    # without a context: one block per tile, no cuBLAS, still correct
    x = torch.from_numpy(rng.standard_normal((3, K))).half().cuda()
    y, used = lay.run(x, ctx=None)
    assert used == "mma"
    lay.check(x, y)


def test_bf16_activations_with_fp16_scales(ctx):
    rng = np.random.default_rng()
    lay = Layer(256, 136, 64, "bfloat16", rng, scales_dtype="float16")
    for M in (1, 9, 65):
        x = torch.from_numpy(rng.standard_normal((M, 256))).bfloat16().cuda()
        for path in ("gemv", "mma", "cublas", "ref"):
            if path == "gemv" and M > 8:
                continue
            y, _ = lay.run(x, path=path, ctx=ctx)
            lay.check(x, y)


def test_group_size_not_multiple_of_16(ctx):
    rng = np.random.default_rng()
    lay = Layer(48 * 3, 40, 48, "float16", rng)  # g = 48 is a multiple of 16
    x = torch.from_numpy(rng.standard_normal((5, 144))).half().cuda()
    for path in ("mma", "gemv", "ref", "cublas"):
        y, _ = lay.run(x, path=path, ctx=ctx)
        lay.check(x, y)
    lay = Layer(24 * 4, 40, 24, "float16", rng)  # g = 24: cuBLAS and reference only
    x = torch.from_numpy(rng.standard_normal((5, 96))).half().cuda()
    for path in ("ref", "cublas", "auto"):
        y, _ = lay.run(x, path=path, ctx=ctx)
        lay.check(x, y)
    with pytest.raises(ValueError, match="multiple of 16"):
        lay.run(x, path="mma", ctx=ctx)


def test_bad_arguments(ctx):
    rng = np.random.default_rng()
    lay = Layer(128, 64, 64, "float16", rng)
    x = torch.zeros((9, 128), dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="M <= 8"):
        lay.run(x, path="gemv")
    with pytest.raises(ValueError, match="needs a context"):
        lay.run(x, path="cublas", ctx=None)
    with pytest.raises(ValueError, match="path"):
        lay.run(x, path="fast")
    y = torch.empty((9, 64), dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="float16"):
        C.cuda_w4a16(x.data_ptr(), lay.rp.data_ptr(), lay.qzeros.data_ptr(), lay.scales.data_ptr(), 0,
                     y.data_ptr(), 9, 128, 64, 64, "float32")
    with pytest.raises(ValueError, match="N % 8"):
        C.cuda_w4a16(x.data_ptr(), lay.rp.data_ptr(), lay.qzeros.data_ptr(), lay.scales.data_ptr(), 0,
                     y.data_ptr(), 9, 128, 60, 64, "float16")
    with pytest.raises(ValueError, match="misaligned"):
        C.cuda_w4a16(x.data_ptr() + 2, lay.rp.data_ptr(), lay.qzeros.data_ptr(), lay.scales.data_ptr(), 0,
                     y.data_ptr(), 9, 128, 64, 64, "float16")
    with pytest.raises(TypeError):
        lay.run(x, ctx=object())
    with pytest.raises(ValueError, match="wn"):
        lay.run(x, path="mma", ctx=ctx, config=(3, 1))
    with pytest.raises(ValueError, match="needs a context"):
        lay.run(x, path="mma", ctx=None, config=(1, 5))
