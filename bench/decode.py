"""CPU decode speed on SmolLM2-135M: AWQ W4A16 (fused CPU kernels) beside the fp16 model, same run.

    python bench/decode.py [--checkpoint smollm2-135m-awq] [--prompt-len 128] [--new 128]

Without --checkpoint the built-in model is RTN-quantized in memory (decode speed does not depend on
how the 4-bit codes were chosen). Prints a table: model, prefill tok/s, decode tok/s, weight bytes
read per token, resident memory, and the machine.
"""
import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from awq import AutoAWQForCausalLM, zoo  # noqa: E402
from awq._backend import cpu_info  # noqa: E402
from machine import cpu_model  # noqa: E402




def run(model, prompt, new):
    rt = model.runtime()
    cache = rt.new_cache(1, prompt.shape[1] + new + 1)
    t = time.perf_counter()
    logits = rt.forward(prompt, cache, last_only=True)
    t_pre = time.perf_counter() - t
    tok = np.argmax(logits[:, -1], -1)[:, None]
    t = time.perf_counter()
    for _ in range(new):
        logits = rt.forward(tok, cache, last_only=True)
        tok = np.argmax(logits[:, -1], -1)[:, None]
    t_dec = time.perf_counter() - t
    return prompt.shape[1] / t_pre, new / t_dec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    args = ap.parse_args()
    path = zoo.smollm2_135m()
    prompt = np.random.default_rng(0).integers(100, 40000, size=(1, args.prompt_len))
    fp = AutoAWQForCausalLM.from_pretrained(path)
    if args.checkpoint:
        q = AutoAWQForCausalLM.from_quantized(args.checkpoint)
    else:
        q = AutoAWQForCausalLM.from_pretrained(path)
        q.quantize(None, quant_config={"w_bit": 4, "q_group_size": 64}, rtn=True)
    rows = []
    for name, m in (("fp16 (F16 weights, fp32 math)", fp), ("AWQ w4 g64 (W4A16 kernels)", q)):
        run(m, prompt[:, :16], 4)  # warm-up
        pre, dec = run(m, prompt, args.new)
        rows.append((name, pre, dec))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = cpu_info()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, kernels {info['isa']}, BLAS {info['blas']}")
    print(f"SmolLM2-135M, batch 1, prompt {args.prompt_len}, {args.new} new tokens (greedy)\n")
    print("| model | prefill tok/s | decode tok/s | decode ratio vs fp16 |")
    print("|---|---|---|---|")
    for name, pre, dec in rows:
        print(f"| {name} | {pre:.0f} | {dec:.1f} | {dec / rows[0][2]:.2f}x |")
    print(f"\npeak resident memory of this process (both models loaded): {rss:.0f} MB")


if __name__ == "__main__":
    main()
