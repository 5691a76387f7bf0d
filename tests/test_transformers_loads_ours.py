"""Checkpoints awq writes, in torch models (runs where torch, transformers and a CUDA device exist:
the device machine; skipped elsewhere).

1. The transformers-4 AWQ path: transformers builds the model, every quantized nn.Linear is replaced
   by awq.modules.linear.gemm.WQLinear_GEMM (this package's torch interop) and the checkpoint's
   tensors are loaded into it, as transformers' replace_with_awq_linear + load_state_dict do.
   Logits must equal our runtime's.
2. transformers' own from_pretrained on the checkpoint: transformers 5 loads AWQ through gptqmodel,
   so this runs only where that backend is installed.
"""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

ARCHS = Path(__file__).resolve().parent / "fixtures" / "archs"


def _quantized(name, tmp_path):
    from awq import AutoAWQForCausalLM

    d = ARCHS / name
    ids = np.load(d / "reference.npz")["input_ids"]
    m = AutoAWQForCausalLM.from_pretrained(str(d))
    rng = np.random.default_rng(0)
    m.quantize(None, quant_config={"q_group_size": 32},
               calib_data=[list(map(int, rng.integers(3, 128, 32))) for _ in range(8)], max_calib_seq_len=32)
    m.save_quantized(str(tmp_path / "q"))
    ours = AutoAWQForCausalLM.from_quantized(str(tmp_path / "q"), device_map="cpu").forward(ids)
    return tmp_path / "q", ids, ours


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "phi3", "gemma2"])
def test_transformers_model_with_our_wqlinear(name, tmp_path):
    from safetensors.torch import load_file

    from awq.modules.linear.gemm import WQLinear_GEMM

    q, ids, ours = _quantized(name, tmp_path)
    cfg = transformers.AutoConfig.from_pretrained(str(q))
    del cfg.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float16).cuda().eval()
    sd = load_file(str(q / "model.safetensors"))
    replaced = []
    for key in [k for k in sd if k.endswith(".qweight")]:
        base = key[: -len(".qweight")]
        replaced.append(base + ".")
        parent = model.get_submodule(base.rsplit(".", 1)[0])
        old = getattr(parent, base.rsplit(".", 1)[1])
        new = WQLinear_GEMM(4, 32, old.in_features, old.out_features, old.bias is not None, "cuda")
        new.qweight.copy_(sd.pop(key))
        new.qzeros.copy_(sd.pop(base + ".qzeros"))
        new.scales.copy_(sd.pop(base + ".scales"))
        if old.bias is not None:
            new.bias.copy_(sd.pop(base + ".bias"))
        setattr(parent, base.rsplit(".", 1)[1], new)
    missing, unexpected = model.load_state_dict({k: v.cuda() for k, v in sd.items()}, strict=False)
    assert not unexpected, unexpected
    missing = [m for m in missing if not m.startswith(tuple(replaced))]  # loaded by hand above
    assert all(m.endswith("lm_head.weight") for m in missing), missing  # tied heads only
    if missing:
        model.tie_weights()
    with torch.no_grad():
        got = model(torch.from_numpy(ids).cuda()).logits.float().cpu().numpy()
    rel = np.linalg.norm(got - ours) / np.linalg.norm(ours)
    assert rel < 2e-2, rel


def test_transformers_from_pretrained_loads_awq_checkpoint(tmp_path):
    from transformers.utils import import_utils

    if hasattr(import_utils, "is_gptqmodel_available") and not import_utils.is_gptqmodel_available() \
            and int(transformers.__version__.split(".")[0]) >= 5:
        pytest.skip("transformers >= 5 loads AWQ checkpoints through gptqmodel, which is not installed")
    q, ids, ours = _quantized("llama", tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(q), dtype=torch.float16, device_map="cuda")
    with torch.no_grad():
        got = hf(torch.from_numpy(ids).cuda()).logits.float().cpu().numpy()
    assert np.linalg.norm(got - ours) / np.linalg.norm(ours) < 2e-2
