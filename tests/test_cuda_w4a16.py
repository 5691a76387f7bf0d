"""W4A16 CUDA kernels (csrc/kernels/w4a16.cu) against a float64 host matmul on the dequantized weight.

Every path (gemv, mma, cublas, ref, auto) on fresh random codes, zeros and scales packed by the
independent numpy packer below (AutoAWQ GEMM order), random x, NaN-poisoned output, M in
{1, 2, 3, 7, 8, 33, 300}, group sizes 32/64/128 (and 48), fp16 and bf16, N not a multiple of 16 or
32 and K not a multiple of 64. The decode GEMV kernel also: both dot-product engines, its launch
configurations (warps, K splits across blocks, chunks per round), no context, bit-identical
repeated calls, calls after a call of another shape and CUDA-graph replays (the split-K completion
counters must be back at zero after every call). Runs only where torch sees a CUDA device and awq
was built with CUDA.

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
MS = [1, 2, 3, 7, 8, 33, 300]


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
    for M in (1, 5, 8, 16, 40, 70):
        x = torch.from_numpy(rng.standard_normal((M, K))).to(DT[dtype]).cuda()
        for path in ("gemv", "mma"):
            if path == "gemv" and M > 8:
                continue
            cfgs = GEMV_CFGS if path == "gemv" else [
                # (wn, blocks, stages, tm): blocks that end inside tiles, several partial tiles per tile,
                # more blocks than chunks of a tile, token tiles other than the default
                (1, 1), (1, 7), (2, 3, 6), (4, 50, 3), (8, 5), (2, 101, 8), (8, 1), (4, 13, 4, 2), (2, 9, 3, 8)]
            for cfg in cfgs:
                y1, _ = lay.run(x, path=path, ctx=ctx, config=cfg)
                lay.check(x, y1)
                y2, _ = lay.run(x, path=path, ctx=ctx, config=cfg)
                assert torch.equal(y1, y2), f"{path} {cfg} M={M}: two runs differ"


# gemv (wn, blocks, stages, tm): warps per block; grid = column slices (32 features) x K splits,
# rounded up to whole splits and capped at one 64-k chunk per split; chunks per warp and round;
# engine 1 = mma.sync, 2 = CUDA-core FMA. K = 2048 / N = 520 below: 17 slices, 32 chunks.
GEMV_CFGS = [(1, 1, 2, 1), (2, 0, 4, 1), (4, 7, 8, 1), (8, 40, 2, 1), (4, 17 * 5, 4, 1), (2, 1000, 8, 1),
             (1, 0, 2, 2), (4, 50, 4, 2), (8, 1000, 8, 2), (8, 17, 4, 0)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("K,N,g", [(96, 72, 32), (320, 200, 64), (640, 24, 128), (4224, 1032, 128),
                                   (11008, 136, 128), (144, 40, 48)])
def test_gemv_shapes_engines_and_no_context(ctx, dtype, K, N, g):
    """Both engines, default and forced K splits, with and without a context, M = 1..8, bias."""
    rng = np.random.default_rng()
    lay = Layer(K, N, g, dtype, rng)
    for M in range(1, 9):
        x = torch.from_numpy(rng.standard_normal((M, K))).to(DT[dtype]).cuda()
        bias = torch.from_numpy(rng.standard_normal(N)).to(DT[dtype]).cuda() if M % 2 else None
        for c, cfg in ((ctx, None), (ctx, (0, 0, 0, 2)), (ctx, (2, 100000, 2, 0)), (None, None),
                       (None, (0, 0, 8, 2))):
            y1, used = lay.run(x, bias, path="gemv", ctx=c, config=cfg)
            assert used == "gemv"
            lay.check(x, y1, bias)
            y2, _ = lay.run(x, bias, path="gemv", ctx=c, config=cfg)
            assert torch.equal(y1, y2), f"M={M} cfg={cfg} ctx={c is not None}: two runs differ"


def _gemv_call(lay, x, y, ctx, config):
    M = x.shape[0]
    return C.cuda_w4a16(x.data_ptr(), lay.rp.data_ptr(), lay.qzeros.data_ptr(), lay.scales.data_ptr(), 0,
                        y.data_ptr(), M, lay.K, lay.N, lay.g, lay.dtype,
                        stream=torch.cuda.current_stream().cuda_stream, path="gemv", ctx=ctx, config=config)


@pytest.mark.parametrize("config", [None, (2, 100000, 2, 1), (4, 100000, 4, 2)])
def test_gemv_counters_reset_across_shapes_and_graph_replays(ctx, config):
    """Split-K completion counters are reset by the last block of each slice: interleaved shapes give
    the same bits as isolated calls, eagerly and in CUDA-graph replays."""
    rng = np.random.default_rng()
    a = Layer(2048, 264, 128, "float16", rng)
    b = Layer(320, 72, 64, "float16", rng)
    for M in (1, 4, 8):
        xa = torch.from_numpy(rng.standard_normal((M, a.K))).half().cuda()
        xb = torch.from_numpy(rng.standard_normal((M, b.K))).half().cuda()
        ya1, _ = a.run(xa, path="gemv", ctx=ctx, config=config)
        a.check(xa, ya1)
        yb1, _ = b.run(xb, path="gemv", ctx=ctx, config=config)
        b.check(xb, yb1)
        ya2, _ = a.run(xa, path="gemv", ctx=ctx, config=config)
        assert torch.equal(ya1, ya2), "a call of another shape in between changed the result"
        outs = [torch.full((M, lay.N), float("nan"), dtype=torch.float16, device="cuda") for lay in (a, b, a)]
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm-up on a side stream (workspace already sized above)
            _gemv_call(a, xa, outs[0], ctx, config)
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            _gemv_call(a, xa, outs[0], ctx, config)
            _gemv_call(b, xb, outs[1], ctx, config)
            _gemv_call(a, xa, outs[2], ctx, config)
        for _ in range(3):
            for o in outs:
                o.fill_(float("nan"))
            g.replay()
            torch.cuda.synchronize()
            assert torch.equal(outs[0], ya1) and torch.equal(outs[2], ya1), f"M={M}: replay differs (a)"
            assert torch.equal(outs[1], yb1), f"M={M}: replay differs (b)"
        del g


def test_auto_plans_and_large_layer(ctx):
    rng = np.random.default_rng()
    K, N, g = 4096, 4096, 128
    lay = Layer(K, N, g, "float16", rng, special=False)
    for M in (1, 4, 16, 64, 200, 1100):
        plan = C.cuda_w4a16_plan(M, K, N, g, ctx)
        assert plan["path"] in (("gemv", "mma") if M <= 8 else ("mma", "cublas"))
        x = torch.from_numpy(rng.standard_normal((M, K))).half().cuda()
        y, used = lay.run(x, ctx=ctx)
        assert used == plan["path"]
        lay.check(x, y)
    # without a context: one block per tile, no cuBLAS, still correct
    for M in (3, 40):
        x = torch.from_numpy(rng.standard_normal((M, K))).half().cuda()
        y, used = lay.run(x, ctx=None)
        assert used == C.cuda_w4a16_plan(M, K, N, g, None)["path"] in ("gemv", "mma")
        lay.check(x, y)
    # the plan of a gemv call: the grid is whole K splits per 32-feature slice
    slices = (N + 31) // 32
    plan = C.cuda_w4a16_plan(1, K, N, g, ctx)
    if plan["path"] == "gemv":
        assert plan["blocks"] % slices == 0 and plan["tm"] in (1, 2)


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
    for bad in ((4, 0, 3), (3, 0, 4), (4, 0, 4, 3)):  # stages (chunks per round) 2/4/8, wn, engine 1/2
        with pytest.raises(ValueError, match="gemv configuration"):
            lay.run(x[:2], path="gemv", ctx=ctx, config=bad)
    with pytest.raises(ValueError, match="needs a context"):
        lay.run(x[:2], path="gemv", ctx=None, config=(4, 1000))
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
