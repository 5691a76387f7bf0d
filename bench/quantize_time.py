"""Time AWQ quantization of a Llama-2-7B-shaped model with random fp16 weights (issue 3, part 6).

    python bench/quantize_time.py --device cuda [--layers 32] [--blocks 128] [--seqlen 512]

The checkpoint is generated here (no download): weights are windows of one random normal pool
(std 0.02), written as fp16 safetensors shards; calibration is `blocks` rows of `seqlen` random
token ids. Prints the quantization time (checkpoint generation and saving excluded) beside
AutoAWQ's published 10-15 minutes for a 7B model, and the machine.
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from awq import AutoAWQForCausalLM  # noqa: E402
from awq.io.checkpoint import write_checkpoint  # noqa: E402

LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "max_position_embeddings": 4096, "tie_word_embeddings": False, "torch_dtype": "float16"}


def make_checkpoint(folder, layers, seed=0):
    cfg = dict(LLAMA2_7B, num_hidden_layers=layers)
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(1 << 26) * 0.02).astype(np.float16)
    D, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]

    def rand(shape):
        n = int(np.prod(shape))
        reps = -(-n // pool.size)
        src = np.tile(pool, reps) if reps > 1 else pool
        off = int(rng.integers(0, src.size - n + 1))
        return src[off:off + n].reshape(shape).copy()

    t = {"model.embed_tokens.weight": rand((V, D)), "lm_head.weight": rand((V, D)),
         "model.norm.weight": np.ones(D, np.float16)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n, s in {"self_attn.q_proj": (D, D), "self_attn.k_proj": (D, D), "self_attn.v_proj": (D, D),
                     "self_attn.o_proj": (D, D), "mlp.gate_proj": (F, D), "mlp.up_proj": (F, D),
                     "mlp.down_proj": (D, F)}.items():
            t[p + n + ".weight"] = rand(s)
        t[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(D)).astype(np.float16)
        t[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(D)).astype(np.float16)
    os.makedirs(folder, exist_ok=True)
    write_checkpoint(t, folder, shard_size="4GB")
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--folder", default="/tmp/awq-llama2-7b-random")
    ap.add_argument("--profile", action="store_true", help="cProfile the quantization, top 20 by own time")
    args = ap.parse_args()
    shutil.rmtree(args.folder, ignore_errors=True)
    t0 = time.time()
    make_checkpoint(args.folder, args.layers)
    t_gen = time.time() - t0
    rng = np.random.default_rng(1)
    calib = rng.integers(0, LLAMA2_7B["vocab_size"], size=(args.blocks, args.seqlen)).tolist()
    model = AutoAWQForCausalLM.from_pretrained(args.folder, device_map=args.device)
    t0 = time.time()
    run = lambda: model.quantize(None, quant_config={"w_bit": 4, "q_group_size": 128, "zero_point": True},  # noqa: E731
                                 calib_data=calib, max_calib_samples=args.blocks, max_calib_seq_len=args.seqlen)
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(run)
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    else:
        run()
    t_q = time.time() - t0
    dev = args.device
    if dev.startswith("cuda"):
        from awq._backend import C

        dev = f"{dev} ({C.cuda_info()['devices'][0][0]})"
    per_layer = t_q / args.layers
    print(f"\nmachine: {dev}, {os.cpu_count()} CPU cores")
    print(f"Llama-2-7B shape, {args.layers} layers, calibration {args.blocks} x {args.seqlen} tokens, w4 g128")
    print("| what | minutes | vs AutoAWQ 10-15 min |")
    print("|---|---|---|")
    full = per_layer * 32
    print(f"| awq quantize ({args.layers} layers measured) | {t_q / 60:.2f} | - |")
    print(f"| awq quantize, 32 layers (per-layer x 32) | {full / 60:.2f} | {10 * 60 / full:.1f}x-{15 * 60 / full:.1f}x (speed-up) |")
    print(f"(checkpoint generation {t_gen:.0f} s, not counted)")


if __name__ == "__main__":
    main()
