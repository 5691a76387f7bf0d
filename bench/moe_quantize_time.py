"""Time AWQ quantization of MoE layers against dense layers, per decoder layer, on one device.

    python bench/moe_quantize_time.py --device cuda [--layers 2] [--blocks 128] [--seqlen 512]

Checkpoints with random fp16 weights are generated here (awq.utils.random_model): a Llama-2-7B-shaped
model (the baseline: dense, 7 linears of 4096 x 4096 / 11008) and a Mixtral-8x7B-shaped one (8
experts x 3 linears of 4096 x 14336, top-2 routing, router kept in float), `layers` layers each.
Calibration is `blocks` rows of `seqlen` random token ids (AutoAWQ's default 128 x 512). Prints
seconds per layer for both and the ratio, and the machine.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from awq import AutoAWQForCausalLM  # noqa: E402
from awq.utils.random_model import CONFIGS, write_random_checkpoint  # noqa: E402

MIXTRAL_8X7B = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
                "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 8, "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2,
                "rms_norm_eps": 1e-5, "rope_theta": 1e6, "max_position_embeddings": 32768,
                "tie_word_embeddings": False}


def time_one(cfg, layers, device, blocks, seqlen, root):
    cfg = dict(cfg, num_hidden_layers=layers)
    folder = os.path.join(root, cfg["model_type"])
    write_random_checkpoint(folder, cfg, quantized=False)
    model = AutoAWQForCausalLM.from_pretrained(folder, device_map=device)
    rng = np.random.default_rng(0)
    calib = [list(map(int, rng.integers(0, cfg["vocab_size"], seqlen))) for _ in range(blocks)]
    t0 = time.time()
    model.quantize(None, quant_config={"w_bit": 4, "q_group_size": 128, "zero_point": True}, calib_data=calib,
                   max_calib_samples=blocks, max_calib_seq_len=seqlen)
    dt = (time.time() - t0) / layers
    shutil.rmtree(folder, ignore_errors=True)
    return dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    a = ap.parse_args(argv)
    root = tempfile.mkdtemp(prefix="awq-moe-bench-")
    try:
        dense = time_one(CONFIGS["llama-2-7b"], a.layers, a.device, a.blocks, a.seqlen, root)
        moe = time_one(MIXTRAL_8X7B, a.layers, a.device, a.blocks, a.seqlen, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    dev = a.device
    if dev.startswith("cuda"):
        from awq._backend import C

        dev = f"{dev} ({C.cuda_info()['devices'][0][0]})"
    print(f"\nmachine: {dev}, {os.cpu_count()} CPU cores")
    print(f"calibration: {a.blocks} x {a.seqlen} tokens, w4 g128, {a.layers} layers each")
    print("| model (layer shape) | s / layer | ratio to dense |")
    print("|---|---|---|")
    print(f"| Llama-2-7B (baseline, dense) | {dense:.2f} | 1.00 |")
    print(f"| Mixtral-8x7B (8 experts, top-2) | {moe:.2f} | {moe / dense:.2f} |")


if __name__ == "__main__":
    main()
