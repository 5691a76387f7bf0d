"""Checkpoints in AutoAWQ's own GEMM format, packed here by hand with an independent numpy packer,
load in awq and compute what their dequantized weights define (float64 reference)."""
import json
import os

import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from awq.io.safetensors import save_file
from reference_llama import ref_forward
from tiny import tiny_config, tiny_tensors

P = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i of a word holds column 8j + P[i]


def pack_cols(codes):
    """codes uint [R, C] -> int32 [R, C/8], AutoAWQ order, written from the format description."""
    R, C = codes.shape
    out = np.zeros((R, C // 8), np.uint32)
    for j in range(C // 8):
        for i in range(8):
            out[:, j] |= (codes[:, 8 * j + P[i]].astype(np.uint32) & 0xF) << (4 * i)
    return out.view(np.int32)


def test_pack_cols_hand_example():
    assert pack_cols(np.arange(1, 9)[None]).view(np.uint32)[0, 0] == 0x86427531


def autoawq_checkpoint(folder, g, seed=0, legacy=True):
    """Writes a checkpoint as AutoAWQ 0.2.x does; returns (cfg, float64 tensors the codes define)."""
    rng = np.random.default_rng(seed)
    cfg = tiny_config("llama")
    t = tiny_tensors(cfg, seed)
    stored, ref = {}, {}
    for name, w in t.items():
        is_lin = name.endswith("_proj.weight")
        if not is_lin:
            stored[name] = w.astype(np.float16)
            ref[name] = stored[name].astype(np.float64)
            continue
        base = name[: -len(".weight")]
        N, K = w.shape
        G = K // g
        q = rng.integers(0, 16, size=(K, N))
        z = rng.integers(0, 16, size=(G, N))
        s = (rng.uniform(0.5, 1.5, size=(G, N)) * np.abs(w).max() / 8).astype(np.float16)
        stored[base + ".qweight"] = pack_cols(q)
        stored[base + ".qzeros"] = pack_cols(z)
        stored[base + ".scales"] = s
        gi = np.arange(K) // g
        ref[name] = ((q - z[gi]) * s[gi].astype(np.float64)).T  # HF [N, K]
    os.makedirs(folder, exist_ok=True)
    save_file(stored, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    qc = {"zero_point": True, "q_group_size": g, "w_bit": 4, "version": "GEMM"}
    if legacy:
        json.dump(qc, open(os.path.join(folder, "quant_config.json"), "w"))
    else:
        cfg = dict(cfg, quantization_config={"quant_method": "awq", "bits": 4, "group_size": g,
                                             "zero_point": True, "version": "gemm"})
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    return cfg, ref


@pytest.mark.parametrize("g,legacy", [(32, True), (32, False), (16, True)])
def test_autoawq_gemm_checkpoint_loads(tmp_path, g, legacy):
    folder = str(tmp_path / "ck")
    cfg, ref = autoawq_checkpoint(folder, g, legacy=legacy)
    m = AutoAWQForCausalLM.from_quantized(folder)
    ids = np.array([3, 14, 15, 92, 65, 35, 89, 79, 32, 38])
    got = m.forward(ids[None])[0]
    want = ref_forward(cfg, ref, ids)
    # fp32 W4A16 kernels vs float64 on the same dequantized weights: rounding only (~1e-6 relative)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4


def test_quantized_checkpoint_errors(tmp_path):
    folder = str(tmp_path / "ck")
    autoawq_checkpoint(folder, 32)
    os.remove(os.path.join(folder, "quant_config.json"))
    with pytest.raises(ValueError, match="quantization_config"):
        AutoAWQForCausalLM.from_quantized(folder)
    json.dump({"zero_point": True, "q_group_size": 32, "w_bit": 4, "version": "marlin"},
              open(os.path.join(folder, "quant_config.json"), "w"))
    with pytest.raises(ValueError, match="marlin"):
        AutoAWQForCausalLM.from_quantized(folder)
    # a float checkpoint is refused by from_quantized, a quantized one by from_pretrained
    json.dump({"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "gemm"},
              open(os.path.join(folder, "quant_config.json"), "w"))
    with pytest.raises(ValueError):
        AutoAWQForCausalLM.from_quantized(folder).forward([[1, 2, 3]])
