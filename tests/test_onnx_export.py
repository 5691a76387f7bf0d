"""ONNX export (awq/export/onnx.py): MatMulNBits built from AWQ GEMM tensors, and whole decoders
with a KV cache, run by onnxruntime on the CPU and checked against awq's own forward.

Tolerances and why:
- One MatMulNBits node vs a float64 matmul on the dequantized weight: both see the same weights
  exactly (codes, zeros and fp16 scales carried over bit for bit), so the only error is ORT's fp32
  accumulation: max |err| <= 1e-5 * max(|x| @ |W|) (K <= 256 products of fp32 rounding 6e-8).
- Whole decoders vs model.forward: both run float32 activations over identical weights; they differ
  only in summation order (MLAS vs awq's GEMM/attention kernels) and exp/sqrt implementations.
  Measured here: ~3e-7 of max|logits| on the tiny fixtures, 2.7e-6 on SmolLM2-135M. Required:
  max|diff| < 1e-3 * max|logits| (a wrong layout, rope or mask gives errors of order 1) and the
  same argmax at every position.
Tests needing onnx / onnxruntime skip without them (pytest.importorskip); the scope and missing-
package errors are checked without them.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from awq._backend import C

ARCHS = Path(__file__).resolve().parent / "fixtures" / "archs"
# Fixture model types inside the exporter's scope (Llama-family blocks), and what each exercises.
EXPORTABLE = ["llama", "mistral", "qwen2", "qwen3", "gemma", "minicpm", "Yi", "aquila", "exaone", "llava",
              "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen2_5_omni"]
REL_TOL = 1e-3


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def _session(ort, path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _empty_past(cfg, batch):
    return {f"past_key_values.{i}.{kv}": np.zeros((batch, cfg.num_kv_heads, 0, cfg.head_dim), np.float32)
            for i in range(cfg.num_layers) for kv in ("key", "value")}


def run_decoder(sess, cfg, ids, chunks):
    """Feeds ids [B, T] in chunks of the given lengths (prefill, then decode steps), passing each
    call's present.* back as past_key_values.*; returns the logits of every position [B, T, V]."""
    B = ids.shape[0]
    past, pos, out = _empty_past(cfg, B), 0, []
    names = [o.name for o in sess.get_outputs()]
    for n in chunks:
        feed = {"input_ids": ids[:, pos:pos + n], "attention_mask": np.ones((B, pos + n), np.int64),
                "position_ids": np.tile(np.arange(pos, pos + n, dtype=np.int64), (B, 1)), **past}
        r = dict(zip(names, sess.run(None, feed)))
        out.append(r["logits"])
        past = {k: r[k.replace("past_key_values", "present")] for k in past}
        pos += n
    assert pos == ids.shape[1]
    return np.concatenate(out, axis=1)


def _assert_close(got, ref, tol=REL_TOL):
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < tol, f"max |onnx - awq| / max |awq| = {err:.3g} (limit {tol})"
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    return err


def _calib(vocab, n=4, T=32, seed=0):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(3, vocab, T)] for _ in range(n)]


def _quantized(name, group=32, **qc):
    from awq import AutoAWQForCausalLM

    m = AutoAWQForCausalLM.from_pretrained(str(ARCHS / name))
    m.quantize(None, quant_config={"q_group_size": group, **qc}, calib_data=_calib(m.cfg.vocab_size),
               max_calib_seq_len=32, verbose=False)
    return m


def _count(path, op):
    import onnx

    return sum(n.op_type == op for n in onnx.load(str(path), load_external_data=False).graph.node)


# ================================================================ MatMulNBits packing

def _awq_tensors(K, N, g, seed):
    """Hand-made AWQ layer: codes, zeros (uint8), fp16 scales, with an all-zero group (codes equal
    to the zero point) and one large-scale outlier group, packed to the AutoAWQ GEMM layout."""
    rng = np.random.default_rng(seed)
    G = K // g
    codes = rng.integers(0, 16, (K, N)).astype(np.uint8)
    zeros = rng.integers(0, 16, (G, N)).astype(np.uint8)
    scales = rng.uniform(0.005, 0.05, (G, N)).astype(np.float16)
    codes[:g, 0] = zeros[0, 0]  # column 0, group 0 dequantizes to exactly 0
    scales[G - 1, N - 1] = np.float16(3.0)  # outlier group
    return codes, zeros, scales, C.pack_gemm(codes), C.pack_gemm(zeros)


def test_awq_gemm_worked_example_layout():
    """REFERENCE.md s3: codes 1..8 in columns 0..7 pack to 0x86427531; the converted B holds them
    per column along K, low nibble first."""
    from awq.export.onnx import awq_gemm_to_matmulnbits

    K, N, g = 32, 8, 32
    codes = np.zeros((K, N), np.uint8)
    codes[0] = np.arange(1, 9)
    codes[1] = np.arange(8, 0, -1)
    qw = C.pack_gemm(codes)
    assert np.uint32(qw[0, 0].view(np.uint32)) == 0x86427531
    zeros = np.arange(8, dtype=np.uint8)[None] + 3
    B, s, zp, b = awq_gemm_to_matmulnbits(qw, C.pack_gemm(zeros), np.ones((1, N), np.float16), g)
    assert b == 32 and B.shape == (8, 1, 16) and s.shape == (8,) and zp.shape == (8,)
    for n in range(N):
        assert B[n, 0, 0] == (n + 1) | ((8 - n) << 4)  # k=0 low nibble, k=1 high nibble
        assert not B[n, 0, 1:].any()
        assert zp[n] == n + 3  # one block: low nibble, high nibble padding 0
    assert s.dtype == np.float32


@pytest.mark.parametrize("K,N,g", [(64, 24, 32), (96, 24, 32), (256, 40, 128), (96, 16, 96), (128, 8, 128)])
def test_matmulnbits_layout_matches_dequant(K, N, g):
    """The converted tensors, read back by the contrib-op spec's rules, give W[k, n] = (q - z) s."""
    from awq.export.onnx import awq_gemm_to_matmulnbits

    codes, zeros, scales, qw, qz = _awq_tensors(K, N, g, seed=K + N)
    B, s, zp, b = awq_gemm_to_matmulnbits(qw, qz, scales, g)
    nb = K // b
    assert B.shape == (N, nb, b // 2) and s.shape == (N * nb,) and zp.shape == (N * ((nb + 1) // 2),)
    q = np.stack([B & 0xF, B >> 4], axis=-1).reshape(N, K)  # [N, K], k even = low nibble
    zrow = zp.reshape(N, -1)
    z = np.stack([zrow & 0xF, zrow >> 4], axis=-1).reshape(N, -1)[:, :nb]
    W = (q.astype(np.float64) - np.repeat(z, b, axis=1)) * np.repeat(s.reshape(N, nb).astype(np.float64), b, axis=1)
    G = K // g
    ref = (codes.T.astype(np.float64) - np.repeat(zeros.T, g, axis=1)) * np.repeat(scales.T.astype(np.float64), g, 1)
    assert G == zeros.shape[0]
    np.testing.assert_array_equal(W, ref)


def _nbits_session(ort, K, N, g, qw, qz, scales, rank3=False):
    from onnx import TensorProto, helper, numpy_helper

    from awq.export.onnx import MS_DOMAIN, awq_gemm_to_matmulnbits

    B, s, zp, b = awq_gemm_to_matmulnbits(qw, qz, scales, g)
    shape = ["b", "m", K] if rank3 else ["m", K]
    node = helper.make_node("MatMulNBits", ["A", "B", "scales", "zp"], ["Y"], domain=MS_DOMAIN,
                            K=K, N=N, bits=4, block_size=b, accuracy_level=0)
    graph = helper.make_graph(
        [node], "one_nbits", [helper.make_tensor_value_info("A", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shape[:-1] + [N])],
        [numpy_helper.from_array(B, "B"), numpy_helper.from_array(s, "scales"), numpy_helper.from_array(zp, "zp")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("K,N,g", [(64, 24, 32), (96, 24, 32), (256, 40, 128), (96, 16, 96), (128, 8, 128)])
@pytest.mark.parametrize("M", [1, 2, 3])
def test_matmulnbits_node_matches_dequantized_matmul(ort, K, N, g, M):
    """One MatMulNBits node from hand-made AWQ tensors, in onnxruntime, vs float64 x @ W. N = 24 and
    K = 96 with g = 32 give an odd number of blocks (zero points padded per column); g = 96 is split
    into three 32-blocks sharing one scale."""
    codes, zeros, scales, qw, qz = _awq_tensors(K, N, g, seed=7 * K + N)
    W = (codes.astype(np.float64) - np.repeat(zeros, g, axis=0)) * np.repeat(scales.astype(np.float64), g, axis=0)
    x = np.random.default_rng(M).normal(size=(M, K)).astype(np.float32)
    ref = x.astype(np.float64) @ W
    bound = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(W)).max()
    y = _nbits_session(ort, K, N, g, qw, qz, scales).run(None, {"A": x})[0]
    assert np.abs(y - ref).max() <= bound
    assert y[0, 0] == pytest.approx(float(ref[0, 0]), abs=bound)
    y3 = _nbits_session(ort, K, N, g, qw, qz, scales, rank3=True).run(None, {"A": np.stack([x, 2 * x])})[0]
    assert np.abs(y3[1] - 2 * ref).max() <= 2 * bound


def test_block_size_choice():
    from awq.export.onnx import pick_block_size

    assert [pick_block_size(g) for g in (16, 32, 64, 128, 256, 96, 576, 4096)] == [16, 32, 64, 128, 128, 32, 64, 128]
    with pytest.raises(ValueError, match="multiple of 16"):
        pick_block_size(24)


# ================================================================ whole decoders

@pytest.fixture(scope="module")
def llama_q():
    return _quantized("llama")


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_tiny_llama_prefill_then_decode(ort, llama_q, tmp_path, opset):
    """Quantized tiny Llama (GQA 4/2, g=32 so K=96 has 3 groups): 7-token prefill, then 3 decode
    steps feeding present -> past, vs model.forward on the whole 10 tokens."""
    m = llama_q
    path = m_path = tmp_path / "llama.onnx"
    from awq.export.onnx import export_onnx

    assert export_onnx(m, m_path, opset=opset, verbose=False) == str(path)
    assert _count(path, "MatMulNBits") == 7 * m.cfg.num_layers
    ids = np.random.default_rng(1).integers(3, m.cfg.vocab_size, (1, 10)).astype(np.int64)
    got = run_decoder(_session(ort, path), m.cfg, ids, [7, 1, 1, 1])
    _assert_close(got, m.forward(ids))
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left behind


@pytest.mark.parametrize("name", ["qwen3", "qwen2", "gemma", "mistral", "minicpm"])
def test_quantized_family_members(ort, tmp_path, name):
    """q/k RMSNorm (qwen3), qkv bias (qwen2), 1+w norms, gelu_tanh and a tied fp16 head (gemma),
    a sliding window of 4 crossed by the decode steps (mistral), embedding / residual / logit
    scales (minicpm); batch of 2."""
    from awq.export.onnx import export_onnx

    m = _quantized(name)
    path = export_onnx(m, tmp_path / "m.onnx", verbose=False)
    ids = np.random.default_rng(2).integers(3, m.cfg.vocab_size, (2, 10)).astype(np.int64)
    got = run_decoder(_session(ort, path), m.cfg, ids, [6, 2, 1, 1])
    _assert_close(got, m.forward(ids))


def test_group_size_minus_one_and_unconverted_linear(ort, tmp_path):
    """g = -1 (one group over K: K=64 -> one 64-block, K=96 -> three 32-blocks sharing a scale) and a
    linear kept in float (modules_to_not_convert) -> a plain MatMul."""
    from awq.export.onnx import export_onnx

    m = _quantized("llama", group=-1, modules_to_not_convert=["mlp.down_proj"])
    path = export_onnx(m, tmp_path / "m.onnx", verbose=False)
    assert _count(path, "MatMulNBits") == 6 * m.cfg.num_layers
    ids = np.random.default_rng(3).integers(3, m.cfg.vocab_size, (1, 9)).astype(np.int64)
    _assert_close(run_decoder(_session(ort, path), m.cfg, ids, [5, 4]), m.forward(ids))


def test_from_quantized_checkpoint(ort, llama_q, tmp_path):
    """A saved and reloaded AWQ checkpoint (AWQLinear read from safetensors) exports the same."""
    from awq import AutoAWQForCausalLM
    from awq.export.onnx import export_onnx

    llama_q.save_quantized(str(tmp_path / "q"))
    m = AutoAWQForCausalLM.from_quantized(str(tmp_path / "q"), device_map="cpu")
    path = export_onnx(m, tmp_path / "m.onnx", verbose=False)
    ids = np.random.default_rng(4).integers(3, m.cfg.vocab_size, (1, 8)).astype(np.int64)
    _assert_close(run_decoder(_session(ort, path), m.cfg, ids, [8]), m.forward(ids))


def test_partial_rotary_yarn_tied_fp32(ort, tmp_path):
    """tests/tiny.py Llama in fp32 with partial rotary (half of each head rotated), yarn rope
    scaling (attention factor folded into the tables) and a tied fp32 head shared with the
    embedding in the file; g=32, so down_proj (K=160) has an odd number (5) of blocks."""
    from tiny import tiny_config, write_tiny_model

    from awq import AutoAWQForCausalLM
    from awq.export.onnx import export_onnx

    cfg = tiny_config(partial_rotary_factor=0.5, tie_word_embeddings=True,
                      rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128})
    write_tiny_model(str(tmp_path / "tiny"), cfg)
    m = AutoAWQForCausalLM.from_pretrained(str(tmp_path / "tiny"))
    assert m.cfg.rotary_dim == m.cfg.head_dim // 2 and m.cfg.rope_attention_factor() != 1.0
    m.quantize(None, quant_config={"q_group_size": 32}, calib_data=_calib(m.cfg.vocab_size), max_calib_seq_len=32,
               verbose=False)
    path = export_onnx(m, tmp_path / "m.onnx", max_positions=64, verbose=False)
    import onnx

    names = {t.name for t in onnx.load(path).graph.initializer}
    assert "embed_tokens.weight" in names and not any(n.startswith("lm_head") for n in names)
    ids = np.random.default_rng(6).integers(0, 256, (1, 12)).astype(np.int64)
    _assert_close(run_decoder(_session(ort, path), m.cfg, ids, [9, 1, 1, 1]), m.forward(ids))


@pytest.mark.parametrize("name", EXPORTABLE)
def test_float_fixture_matches_transformers(ort, tmp_path, name):
    """Unquantized fixtures exported with plain MatMuls reproduce the transformers oracle's logits
    (the same criterion as test_arch_fixtures: relative L2 < 1e-4, same argmax)."""
    from awq import AutoAWQForCausalLM
    from awq.export.onnx import export_onnx

    d = ARCHS / name
    ref = np.load(d / "reference.npz")
    m = AutoAWQForCausalLM.from_pretrained(str(d))
    path = export_onnx(m, tmp_path / "m.onnx", verbose=False)
    ids = ref["input_ids"].astype(np.int64)
    got = run_decoder(_session(ort, path), m.cfg, ids, [ids.shape[1]])
    want = ref["logits"]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_left_padding(ort, llama_q, tmp_path):
    """attention_mask 0 hides padding keys: a left-padded row gives the logits of the same tokens
    run alone (positions counted from the first real token), in prefill and in a decode step."""
    from awq.export.onnx import export_onnx

    m = llama_q
    sess = _session(ort, export_onnx(m, tmp_path / "m.onnx", verbose=False))
    rng = np.random.default_rng(5)
    a = rng.integers(3, m.cfg.vocab_size, (1, 6)).astype(np.int64)
    b = rng.integers(3, m.cfg.vocab_size, (1, 9)).astype(np.int64)
    pad = 3
    ids = np.concatenate([np.concatenate([np.zeros((1, pad), np.int64), a], 1), b])  # [2, 9]
    mask = np.ones((2, 9), np.int64)
    mask[0, :pad] = 0
    pos = np.stack([np.concatenate([np.zeros(pad, np.int64), np.arange(6)]), np.arange(9)])
    names = [o.name for o in sess.get_outputs()]
    r = dict(zip(names, sess.run(None, {"input_ids": ids[:, :8], "attention_mask": mask[:, :8],
                                         "position_ids": pos[:, :8], **_empty_past(m.cfg, 2)})))
    past = {f"past_key_values.{k[len('present.'):]}": v for k, v in r.items() if k.startswith("present.")}
    r2 = dict(zip(names, sess.run(None, {"input_ids": ids[:, 8:], "attention_mask": mask, "position_ids": pos[:, 8:],
                                          **past})))
    got = np.concatenate([r["logits"], r2["logits"]], 1)
    alone_a = run_decoder(sess, m.cfg, a, [6])
    alone_b = run_decoder(sess, m.cfg, b, [9])
    np.testing.assert_allclose(got[0, pad:], alone_a[0], rtol=0, atol=1e-5 * np.abs(alone_a).max())
    np.testing.assert_allclose(got[1], alone_b[0], rtol=0, atol=1e-5 * np.abs(alone_b).max())


def test_external_data(ort, llama_q, tmp_path):
    """external_data=True puts the tensors in '<name>.data' beside the graph; ORT reads them."""
    from awq.export.onnx import export_onnx

    path = export_onnx(llama_q, tmp_path / "m.onnx", external_data=True, verbose=False)
    assert (tmp_path / "m.onnx.data").is_file()
    assert os.path.getsize(path) < os.path.getsize(tmp_path / "m.onnx.data")
    ids = np.arange(3, 10, dtype=np.int64)[None]
    _assert_close(run_decoder(_session(ort, path), llama_q.cfg, ids, [7]), llama_q.forward(ids))


# ================================================================ errors

def test_unsupported_architecture_is_refused(tmp_path):
    """Out-of-scope blocks raise NotImplementedError naming the model type (no onnx needed)."""
    from awq import AutoAWQForCausalLM
    from awq.export.onnx import export_onnx

    m = AutoAWQForCausalLM.from_pretrained(str(ARCHS / "bloom"))
    with pytest.raises(NotImplementedError, match="'bloom'.*layernorm"):
        export_onnx(m, tmp_path / "m.onnx", verbose=False)
    assert not list(tmp_path.iterdir())


def test_sequence_dependent_rope_is_refused(tmp_path):
    from tiny import tiny_config, write_tiny_model

    from awq import AutoAWQForCausalLM
    from awq.export.onnx import export_onnx

    write_tiny_model(str(tmp_path / "tiny"), tiny_config(rope_scaling={"rope_type": "dynamic", "factor": 2.0}))
    m = AutoAWQForCausalLM.from_pretrained(str(tmp_path / "tiny"))
    with pytest.raises(NotImplementedError, match="'llama'.*dynamic"):
        export_onnx(m, tmp_path / "m.onnx", verbose=False)


def test_missing_onnx_names_the_package(monkeypatch, tmp_path):
    from awq import AutoAWQForCausalLM
    from awq.export.onnx import export_onnx

    m = AutoAWQForCausalLM.from_pretrained(str(ARCHS / "llama"))
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(ImportError, match="pip install onnx"):
        export_onnx(m, tmp_path / "m.onnx", verbose=False)


def test_bad_arguments(ort, llama_q, tmp_path):
    from awq.export.onnx import export_onnx

    with pytest.raises(ValueError, match="opset"):
        export_onnx(llama_q, tmp_path / "m.onnx", opset=11, verbose=False)
    with pytest.raises(ValueError, match="accuracy_level"):
        export_onnx(llama_q, tmp_path / "m.onnx", accuracy_level=7, verbose=False)
    with pytest.raises(IsADirectoryError):
        export_onnx(llama_q, tmp_path, verbose=False)


def test_failed_save_keeps_existing_file(ort, llama_q, tmp_path, monkeypatch):
    """A failure while writing leaves an existing file as it was and no temporary files."""
    import onnx

    from awq.export.onnx import export_onnx

    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", boom)
    with pytest.raises(OSError, match="No space"):
        export_onnx(llama_q, target, verbose=False)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# ================================================================ the real default model

@pytest.mark.slow
def test_smollm2_135m_rtn(ort, smollm2_path, tmp_path):
    """SmolLM2-135M-Instruct (GQA 9/3, tied fp16 head, 30 layers), RTN 4-bit g64, exported and run:
    a 13-token prompt as 10-token prefill + 3 decode steps. Measured on the dev box (ORT 1.32 CPU):
    max |diff| 7.8e-5 with max |logits| 28.6, i.e. 2.7e-6 relative, identical argmax."""
    from tokenizers import Tokenizer

    from awq import AutoAWQForCausalLM
    from awq.export.onnx import export_onnx

    m = AutoAWQForCausalLM.from_pretrained(smollm2_path)
    m.quantize(None, quant_config={"q_group_size": 64}, rtn=True, verbose=False)
    path = export_onnx(m, tmp_path / "smollm2.onnx", verbose=False)
    assert _count(path, "MatMulNBits") == 7 * m.cfg.num_layers
    tok = Tokenizer.from_file(os.path.join(smollm2_path, "tokenizer.json"))
    ids = np.array([tok.encode("The capital of France is Paris, and the capital of Germany is").ids], np.int64)
    T = ids.shape[1]
    got = run_decoder(_session(ort, path), m.cfg, ids, [T - 3, 1, 1, 1])
    ref = m.forward(ids)
    err = _assert_close(got, ref)
    print(f"SmolLM2-135M RTN g64: max abs {np.abs(got - ref).max():.3g}, max |logits| {np.abs(ref).max():.3g}, "
          f"relative {err:.3g}")
