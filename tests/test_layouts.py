"""AutoAWQ's gemv, gemv_fast and marlin checkpoints load through from_quantized (converted once to
GEMM by awq/io/layouts.py) and compute exactly what the same codes in GEMM compute.

Every packer below is written here from the layout descriptions (REFERENCE.md s3 and the
awq/io/layouts.py docstring), in the forward direction, one destination index per weight; the
converter under test runs the other way. Known codes, zero points and scales are packed into both
GEMM and the layout under test; the loaded model must hold the same dequantized weights and give
bit-identical logits. Torch-free: runs in CI.
"""
import json
import os

import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from awq.io import layouts
from awq.io.checkpoint import open_checkpoint
from awq.io.safetensors import SafetensorsFile, save_file
from awq.runtime.layers import AWQLinear
from awq.utils.random_model import write_random_checkpoint

P = [0, 2, 4, 6, 1, 3, 5, 7]  # GEMM: nibble i of word j holds column 8j + P[i]

# A Llama small enough to be quick and large enough for every layout: K in {128, 256} (gemv_fast
# needs K % 64), N in {64, 128, 256} (marlin needs N % 16 and K * N % 1024); attention biases.
CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", hidden_size=128,
              intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128, rms_norm_eps=1e-5, attention_bias=True, mlp_bias=False, rope_theta=10000.0,
              max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
              torch_dtype="float16")
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
IDS = np.array([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79, 50]]) % 128


# ---------------------------------------------------------------------------------------------
# Hand packers (forward direction, from the layout descriptions)
# ---------------------------------------------------------------------------------------------

def scatter_nibbles(shape, dtype, rows, cols, shifts, codes):
    """A zero array of `shape` with codes[i] << shifts[i] OR-ed into [rows[i], cols[i]]."""
    out = np.zeros(shape, np.uint64)
    np.add.at(out, (rows, cols), codes.astype(np.uint64) << shifts.astype(np.uint64))  # disjoint bits: + is |
    return out.astype(dtype)


def pack_gemm(codes):
    """codes [R, C] -> int32 [R, C/8]: nibble i of word j = column 8j + P[i]."""
    R, Cn = codes.shape
    r, c = np.meshgrid(np.arange(R), np.arange(Cn), indexing="ij")
    Rinv = np.argsort(P)  # column 8j + c sits in nibble Rinv[c]
    return scatter_nibbles((R, Cn // 8), np.uint32, r.ravel(), (c // 8).ravel(), 4 * Rinv[c % 8].ravel(),
                           codes.ravel()).view(np.int32)


def unpack_gemm(words):
    """Inverse of pack_gemm, for reading back what was loaded."""
    w = np.asarray(words).view(np.uint32)
    out = np.zeros((w.shape[0], w.shape[1] * 8), np.int64)
    for i in range(8):
        out[:, P[i]::8] = (w >> (4 * i)) & 0xF
    return out


def zeros_width(K, g):
    m = 1 if g >= 128 else {64: 2, 32: 4}[g]
    return -(-(-(-(K // g) // 8)) // m) * m


def pack_gemv(q, z, s, g):
    """gemv: qweight [N, K/8] (nibble i of word j = k 8j + i), qzeros [N, Z] (same along groups,
    zero-padded), scales [N, 8Z] (zero-padded)."""
    K, N = q.shape
    G, Z = K // g, zeros_width(K, g)
    k, n = np.meshgrid(np.arange(K), np.arange(N), indexing="ij")
    qw = scatter_nibbles((N, K // 8), np.uint32, n.ravel(), (k // 8).ravel(), (4 * (k % 8)).ravel(), q.ravel())
    gi, n = np.meshgrid(np.arange(G), np.arange(N), indexing="ij")
    qz = scatter_nibbles((N, Z), np.uint32, n.ravel(), (gi // 8).ravel(), (4 * (gi % 8)).ravel(), z.ravel())
    sc = np.zeros((N, 8 * Z), np.float16)
    sc[:, :G] = s.T
    return {"qweight": qw.view(np.int32), "qzeros": qz.view(np.int32), "scales": sc}


def pack_gemv_fast(q, z, s, g):
    """gemv_fast: the code of (n, k) moves inside its 32-block (8a + 2b + c -> 8b + 2a + c), then
    inside its 8-block (2d + e -> 4e + d); rows go in fours: chunk [4 rows, 64 k] flat index
    f = 64 * (n % 4) + k % 64 is 16-bit word 64 * (k // 64) + f // 4 of row n // 4, nibble f % 4.
    scales and scaled_zeros = fp16(-(s * z)) are [8Z, N], rows G.. zero."""
    K, N = q.shape
    G, Z = K // g, zeros_width(K, g)
    k, n = np.meshgrid(np.arange(K), np.arange(N), indexing="ij")
    r = k % 32
    a, b, c = r // 8, (r % 8) // 2, r % 2
    p1 = 8 * b + 2 * a + c
    t = p1 % 8
    p2 = (p1 // 8) * 8 + 4 * (t % 2) + t // 2
    k2 = (k // 32) * 32 + p2
    f = 64 * (n % 4) + k2 % 64
    qw = scatter_nibbles((N // 4, K), np.uint16, (n // 4).ravel(), (64 * (k2 // 64) + f // 4).ravel(),
                         (4 * (f % 4)).ravel(), q.ravel())
    sc = np.zeros((8 * Z, N), np.float16)
    sc[:G] = s
    sz = np.zeros((8 * Z, N), np.float16)
    sz[:G] = (-(s.astype(np.float32) * z)).astype(np.float16)
    return {"qweight": qw.view(np.int16), "scales": sc, "scaled_zeros": sz}


def pack_marlin(q, s, g):
    """marlin (zero point 8): weight (k, n) sits at flat F = (k // 16) * 16N + (n // 16) * 256 +
    (k % 16) * 16 + n % 16 of the tiled array; in its chunk of 1024 (4 tiles), offset o -> tile j,
    row rr, column cc -> mma lane 4 * (cc % 8) + (rr % 8) // 2, fragment slot u = 4 * (cc // 8) +
    rr % 2 + 2 * (rr // 8), stored slot [0, 4, 1, 5, 2, 6, 3, 7][u]: position 32 lane + 8 j + slot,
    then 8 per int32 in natural order over rows of 16N. Scales: within runs of 64 (flat [G, N]),
    o -> 8 (o % 8) + o // 8; one group (G == 1): runs of 32, o -> 8 ((o % 8) // 2) + 2 (o // 8) + o % 2."""
    K, N = q.shape
    k, n = np.meshgrid(np.arange(K), np.arange(N), indexing="ij")
    F = (k // 16) * 16 * N + (n // 16) * 256 + (k % 16) * 16 + n % 16
    o = F % 1024
    j, rr, cc = o // 256, (o % 256) // 16, o % 16
    lane = 4 * (cc % 8) + (rr % 8) // 2
    u = 4 * (cc // 8) + rr % 2 + 2 * (rr // 8)
    slot = np.array([0, 4, 1, 5, 2, 6, 3, 7])[u]
    flat = (F // 1024) * 1024 + 32 * lane + 8 * j + slot
    row, col = flat // (16 * N), flat % (16 * N)
    qw = scatter_nibbles((K // 16, 2 * N), np.uint32, row.ravel(), (col // 8).ravel(), (4 * (col % 8)).ravel(),
                         q.ravel())
    G = K // g
    o = np.arange(G * N)
    if G == 1:
        run, within = 32, o % 32
        dest = 8 * ((within % 8) // 2) + 2 * (within // 8) + within % 2
    else:
        run, within = 64, o % 64
        dest = 8 * (within % 8) + within // 8
    sc = np.empty(G * N, np.float16)
    sc[(o // run) * run + dest] = s.ravel()
    return {"qweight": qw.view(np.int32), "scales": sc.reshape(G, N)}


def test_hand_packers_worked_examples():
    # REFERENCE.md s3: codes 1..8 for columns 0..7 pack to 0x86427531 (GEMM); natural order in gemv
    assert pack_gemm(np.arange(1, 9)[None]).view(np.uint32)[0, 0] == 0x86427531
    q = np.tile(np.arange(1, 9), 4)[:, None] * np.ones((1, 8), int)  # K=32, N=8: k -> code k % 8 + 1
    t = pack_gemv(q, np.zeros((1, 8), int), np.ones((1, 8), np.float16), 32)
    assert t["qweight"].view(np.uint32)[0, 0] == 0x87654321
    assert t["qzeros"].shape == (8, 4) and t["scales"].shape == (8, 32)  # g=32: Z rounded up to 4


# ---------------------------------------------------------------------------------------------
# Known weights and checkpoints
# ---------------------------------------------------------------------------------------------

def known_linear(rng, K, N, g, symmetric):
    """Codes q [K, N], zero points z [G, N] (8 when symmetric), scales s [G, N] fp16, with an
    all-zero-point group and one outlier scale."""
    G = K // g
    q = rng.integers(0, 16, size=(K, N))
    z = np.full((G, N), 8) if symmetric else rng.integers(0, 16, size=(G, N))
    s = rng.uniform(0.002, 0.03, size=(G, N)).astype(np.float16)
    q[:g, : N // 2] = z[0, : N // 2]  # a group whose weights dequantize to zero
    s[G - 1, N // 3] = np.float16(0.5)  # one outlier scale
    return q, z, s


def dequant(q, z, s, g):
    gi = np.arange(q.shape[0]) // g
    return (q - z[gi]) * s[gi].astype(np.float64)


def pack_layout(layout, q, z, s, g):
    if layout == "gemm":
        return {"qweight": pack_gemm(q), "qzeros": pack_gemm(z), "scales": s}
    if layout == "gemv":
        return pack_gemv(q, z, s, g)
    if layout == "gemv_fast":
        return pack_gemv_fast(q, z, s, g)
    assert (z == 8).all()
    return pack_marlin(q, s, g)


def write_pair(tmp_path, layout, g, seed=0):
    """GEMM and `layout` checkpoints of the same known weights; returns (gemm dir, layout dir, known)."""
    base = str(tmp_path / "base")
    write_random_checkpoint(base, CONFIG, group_size=g, seed=seed)
    st = SafetensorsFile(os.path.join(base, "model.safetensors"))
    common = {k: np.array(st.get(k)) for k in st.keys() if not k.endswith((".qweight", ".qzeros", ".scales"))}
    st.close()
    cfg = json.load(open(os.path.join(base, "config.json")))
    rng = np.random.default_rng(seed)
    known, tensors = {}, {"gemm": dict(common), layout: dict(common)}
    for i in range(CONFIG["num_hidden_layers"]):
        for lin in LINEARS:
            name = f"model.layers.{i}.{lin}"
            N, K = {"self_attn.k_proj": (64, 128), "self_attn.v_proj": (64, 128), "mlp.gate_proj": (256, 128),
                    "mlp.up_proj": (256, 128), "mlp.down_proj": (128, 256)}.get(lin, (128, 128))
            q, z, s = known_linear(rng, K, N, g, symmetric=layout == "marlin")
            known[name] = dequant(q, z, s, g)
            for lay in tensors:
                for part, a in pack_layout(lay, q, z, s, g).items():
                    tensors[lay][f"{name}.{part}"] = a
    dirs = {}
    for lay, t in tensors.items():
        d = str(tmp_path / lay)
        os.makedirs(d)
        save_file(t, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        qc = dict(cfg["quantization_config"], version=lay.upper() if lay == "gemv" else lay)  # versions: any case
        if lay == "marlin":
            qc["zero_point"] = False
        json.dump(dict(cfg, quantization_config=qc), open(os.path.join(d, "config.json"), "w"))
        dirs[lay] = d
    return dirs["gemm"], dirs[layout], known


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("layout", ["gemv", "gemv_fast", "marlin"])
def test_layout_checkpoint_loads_as_gemm(tmp_path, layout, g):
    gemm_dir, lay_dir, known = write_pair(tmp_path, layout, g)
    ref = AutoAWQForCausalLM.from_quantized(gemm_dir)
    m = AutoAWQForCausalLM.from_quantized(lay_dir)
    assert m.quant_config["version"] == "gemm" and m.quant_config["source_version"] == layout
    for name, W in known.items():
        i, lin = int(name.split(".")[2]), name.split(".", 3)[3]
        mod = m._layers[i][lin]
        assert isinstance(mod, AWQLinear) and mod.group_size == g
        G = mod.in_features // g
        got = dequant(unpack_gemm(mod.qweight), unpack_gemm(mod.qzeros), np.asarray(mod.scales), g)
        assert got.shape == W.shape and mod.qzeros.shape == (G, mod.out_features // 8)
        np.testing.assert_array_equal(got, W, err_msg=name)  # same codes, zero points, fp16 scales: exact
        assert (mod.bias is not None) == lin.startswith("self_attn.")  # Llama attention_bias: q, k, v, o
    # same dequantized weights, same kernels: the logits are bit-identical to the GEMM original's
    np.testing.assert_array_equal(m.forward(IDS), ref.forward(IDS))


def test_converted_model_saves_gemm(tmp_path):
    _, lay_dir, known = write_pair(tmp_path, "gemv_fast", 64)
    m = AutoAWQForCausalLM.from_quantized(lay_dir)
    out = str(tmp_path / "resaved")
    m.save_quantized(out)
    qc = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
    assert qc["version"] == "gemm" and qc["group_size"] == 64
    ck = open_checkpoint(out)
    assert not [k for k in ck.keys() if k.endswith(".scaled_zeros")]  # converted away, not copied
    assert ck.shape("model.layers.0.mlp.down_proj.qweight") == (256, 16)
    again = AutoAWQForCausalLM.from_quantized(out)
    assert again.quant_config["source_version"] == "gemm"
    np.testing.assert_array_equal(again.forward(IDS), m.forward(IDS))


@pytest.mark.parametrize("layout", ["gemv", "gemv_fast", "marlin"])
@pytest.mark.parametrize("K,N,g", [(64, 32, 32), (128, 64, 64), (64, 32, 64), (256, 16, 256), (192, 48, 64),
                                   (384, 128, 128)])
def test_to_gemm_odd_shapes(layout, K, N, g):
    """The converter alone, on shapes the model does not have: padding words (G not a multiple of
    8), N not a multiple of 64, one group per column, and a zero scale (gemv_fast: zero point 0)."""
    G = K // g
    if layout == "gemv_fast" and K % 64 or layout == "marlin" and ((K * N) % 1024 or (G * N) % (32 if G == 1 else 64)):
        pytest.skip(f"{layout} cannot hold K={K}, N={N}, g={g}")
    rng = np.random.default_rng(K * N + g)
    q, z, s = known_linear(rng, K, N, g, symmetric=layout == "marlin")
    if layout == "gemv_fast":
        s[0, 1] = 0
        z[0, 1] = 0
    qw, qz, sc = layouts.to_gemm(layout, pack_layout(layout, q, z, s, g), K, N, g, "layer")
    assert qw.dtype == np.int32 and qz.dtype == np.int32 and sc.dtype == np.float16
    np.testing.assert_array_equal(unpack_gemm(qw), q)
    np.testing.assert_array_equal(unpack_gemm(qz), z)
    np.testing.assert_array_equal(sc, s)


def test_exllama_and_ipex_versions_read_gemm(tmp_path):
    gemm_dir, _, _ = write_pair(tmp_path, "gemv", 128)
    ref = AutoAWQForCausalLM.from_quantized(gemm_dir).forward(IDS)
    cfg_path = os.path.join(gemm_dir, "config.json")
    cfg = json.load(open(cfg_path))
    for v in ("exllama", "ExLlama_V2", "ipex"):
        cfg["quantization_config"]["version"] = v
        json.dump(cfg, open(cfg_path, "w"))
        np.testing.assert_array_equal(AutoAWQForCausalLM.from_quantized(gemm_dir).forward(IDS), ref)


def rewrite(folder, fn):
    p = os.path.join(folder, "model.safetensors")
    st = SafetensorsFile(p)
    t = {k: np.array(st.get(k)) for k in st.keys()}
    st.close()
    fn(t)
    save_file(t, p)


def set_version(folder, version):
    p = os.path.join(folder, "config.json")
    cfg = json.load(open(p))
    cfg["quantization_config"]["version"] = version
    json.dump(cfg, open(p, "w"))


L0 = "model.layers.0.mlp.up_proj"


@pytest.mark.parametrize("layout,edit,match", [
    ("gemv", lambda t: t.__setitem__(L0 + ".qzeros", t[L0 + ".qzeros"][:, :-1].copy()),
     r"mlp\.up_proj\.qzeros: shape \(256, 1\), expected \(256, 2\) \(AutoAWQ gemv layout"),
    ("gemv", lambda t: t.__setitem__(L0 + ".qweight", t[L0 + ".qweight"].T.copy()),
     r"up_proj\.qweight: shape \(16, 256\), expected \(256, 16\)"),
    ("gemv_fast", lambda t: t.__setitem__(L0 + ".qweight", t[L0 + ".qweight"].astype(np.int32)),
     r"up_proj\.qweight: dtype int32, expected int16"),
    ("gemv_fast", lambda t: t[L0 + ".scaled_zeros"].__setitem__((0, 3), t[L0 + ".scales"][0, 3] * np.float16(-2.5)),
     r"up_proj\.scaled_zeros: entry \[0, 3\].*not -scale \* an integer zero point"),
    ("gemv_fast", lambda t: t.pop(L0 + ".scaled_zeros"), r"up_proj\.scaled_zeros missing"),
    ("marlin", lambda t: t.pop(L0 + ".scales"), r"up_proj\.scales missing"),
    ("marlin", lambda t: t.__setitem__(L0 + ".scales", t[L0 + ".scales"][:, :-8].copy()),
     r"up_proj\.scales: shape \(2, 248\), expected \(2, 256\) \(AutoAWQ marlin layout"),
])
def test_bad_layout_tensors_name_the_tensor(tmp_path, layout, edit, match):
    _, lay_dir, _ = write_pair(tmp_path, layout, 64)
    rewrite(lay_dir, edit)
    with pytest.raises(ValueError, match=match):
        AutoAWQForCausalLM.from_quantized(lay_dir)


def test_unknown_version_and_mismatched_layout(tmp_path):
    gemm_dir, lay_dir, _ = write_pair(tmp_path, "marlin", 64)
    set_version(gemm_dir, "gemv_turbo")
    with pytest.raises(ValueError, match=r"AWQ version 'gemv_turbo' is not a known layout \(known: gemm, gemv, "):
        AutoAWQForCausalLM.from_quantized(gemm_dir)
    set_version(lay_dir, "gemm")  # marlin tensors under a gemm config: refused by shape, naming the tensor
    with pytest.raises(ValueError, match=r"layers\.0\.\S+\.qweight present but \S+\.qzeros missing \(AutoAWQ gemm"):
        AutoAWQForCausalLM.from_quantized(lay_dir)
    with pytest.raises(ValueError, match="group size 48: AutoAWQ's gemv layouts exist only for group sizes"):
        layouts.gemv_zeros_width(96, 48)
    with pytest.raises(ValueError, match=r"layer\.qweight: the marlin layout needs"):
        layouts.to_gemm("marlin", {"qweight": np.zeros((2, 16), np.int32), "scales": np.zeros((1, 8), np.float16)},
                        32, 8, 32, "layer")
    with pytest.raises(ValueError, match=r"layer\.qweight: the gemv_fast layout needs in_features a multiple of 64"):
        layouts.to_gemm("gemv_fast", {"qweight": np.zeros((8, 96), np.int16), "scales": np.zeros((32, 32), np.float16),
                                      "scaled_zeros": np.zeros((32, 32), np.float16)}, 96, 32, 32, "layer")
    with pytest.raises(ValueError, match=r"^layer: group size 48: AutoAWQ's gemv layouts exist only"):
        layouts.to_gemm("gemv", {}, 48, 8, 48, "layer")
