"""AutoAWQ's benchmark (its examples/benchmark.py), reborn: prefill and decode tokens/s and peak
memory of an AWQ model over growing prompt lengths, beside an fp16 baseline measured in the same run.

    python examples/benchmark.py --model_path llama-2-7b-awq [--baseline_path llama-2-7b-hf]
    python examples/benchmark.py --random-weights --config llama-3-8b            # nothing to download
    python examples/benchmark.py --random-weights --config tiny --device cpu --rounds 16,32

Rounds are AutoAWQ's: prompt length = number of new tokens = 32, 64, ..., 4096 (`--rounds 512:128,...`
sets prompt:new pairs); a round past max_position_embeddings, or one that runs out of memory, ends
the run cleanly. Each round generates greedily from random token ids (eos cannot stop it) and times
every new token (awq: generate's callback; transformers: a logits processor, after a device sync):
prefill tokens/s = batch * prompt / (time to the first new token), decode tokens/s = batch * (n - 1) /
(first to last new token). Untimed warm-ups, the same for both models: one at load, and before each
round the round itself stopped after 2 new tokens (first use of a shape and cache size is not
timed). Memory is the peak since the model was loaded (awq's GPU allocator's
peak_in_use, torch.cuda.max_memory_allocated, or on the CPU the peak resident set), as AutoAWQ reports it.

Baseline: on cuda, transformers' fp16 model (eager generate, KV cache) built from the same config with
random init (or loaded from --baseline_path); without torch/transformers, awq's own fp16 runtime. On
the CPU, awq's fp16 runtime. --random-weights writes the checkpoints under $AWQ_CACHE (default
~/.cache/awq)/random/ once and reuses them. torch is imported only inside the baseline.
"""
import argparse
import gc
import inspect
import json
import os
import re
import resource
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from awq import AutoAWQForCausalLM  # noqa: E402
from awq._backend import C, cpu_info, cuda_index  # noqa: E402
from awq.io.checkpoint import read_json  # noqa: E402
from awq.models.config import ModelConfig  # noqa: E402
from awq.utils import random_model  # noqa: E402
from machine import cpu_model  # noqa: E402  (bench/machine.py)

AUTOAWQ_ROUNDS = [(n, n) for n in (32, 64, 128, 256, 512, 1024, 2048, 4096)]
COLUMNS = ["Batch Size", "Prefill Length", "Decode Length", "Prefill tokens/s", "Decode tokens/s", "Memory (GB)"]
GB = 1024 ** 3

# ---------------------------------------------------------------------------------------------
# Machine and memory
# ---------------------------------------------------------------------------------------------


def machine_line(device: str) -> str:
    cpu = f"{cpu_model()}, {os.cpu_count()} cores, awq kernels {cpu_info()['isa']}"
    if device.startswith("cuda"):
        name = C.cuda_info()["devices"][cuda_index(device)][0]
        return f"GPU {name} ({device}); CPU {cpu}"
    return f"CPU {cpu}"


def _vm_hwm() -> int:
    """Peak resident set of this process in bytes (Linux /proc; resettable through clear_refs)."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


class CpuMemory:
    """Peak RSS since reset(). Linux resets the high-water mark when "5" is written to clear_refs;
    elsewhere the process's lifetime peak (getrusage) is all there is, and `note` says so."""

    def __init__(self):
        self.note = None

    def reset(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _vm_hwm()
        except (OSError, AttributeError):
            self.note = "peak RSS of the whole process (this OS cannot reset the high-water mark)"

    def peak(self) -> int:
        if self.note is None:
            return _vm_hwm()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class AwqGpuMemory:
    """Peak bytes held in tensors by awq's caching allocator. The allocator keeps one peak for the
    process and has no reset, so a second awq model on the GPU reports max(its peak, earlier peaks)."""

    note = None

    def __init__(self, device: str):
        self.index = cuda_index(device)

    def reset(self):
        pass

    def peak(self) -> int:
        import awq.gpu

        return awq.gpu.memory_stats(self.index)["peak_in_use"]


def available_host_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            return int(re.search(r"MemAvailable:\s+(\d+) kB", f.read()).group(1)) * 1024
    except (OSError, AttributeError):
        return 1 << 62


def is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


# ---------------------------------------------------------------------------------------------
# Timed generation
# ---------------------------------------------------------------------------------------------


class AwqRunner:
    """awq model (quantized or fp16): times generate() through its per-token callback."""

    def __init__(self, model, label: str, memory):
        self.model, self.label, self.memory = model, label, memory

    def timed_generate(self, ids: np.ndarray, n: int, stop_after: int = 0):
        """-> the perf_counter time at the start and after each of the n new tokens (the first
        `stop_after` only, when given: the cache is sized for n, the rest is not generated)."""
        stamps = []

        def on_token(tok):
            stamps.append(time.perf_counter())
            return len(stamps) == stop_after

        t0 = time.perf_counter()
        # eos_token_id=[]: no eos, so random weights cannot end a round early
        self.model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=[], callback=on_token)
        return t0, stamps

    def close(self):
        self.model = None
        gc.collect()


class TorchRunner:
    """transformers fp16 model on cuda: times generate() with a logits processor that synchronizes
    the device and records the time after every forward (the first right after the prefill)."""

    def __init__(self, model, label: str, device: str, eos):
        import torch

        self.torch, self.model, self.label, self.device, self.eos = torch, model, label, device, eos
        self.memory = self

    note = None

    def reset(self):
        self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        return self.torch.cuda.max_memory_allocated(self.device)

    def timed_generate(self, ids: np.ndarray, n: int, stop_after: int = 0):
        import torch
        from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

        stamps = []
        dev = self.device

        class Stamp(LogitsProcessor):
            def __call__(self, input_ids, scores):
                torch.cuda.synchronize(dev)
                stamps.append(time.perf_counter())
                return scores

        n = min(n, stop_after) if stop_after else n  # transformers' cache grows as it goes
        x = torch.from_numpy(ids).to(dev)
        gc_ = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                               num_beams=1, pad_token_id=0, eos_token_id=self.eos)
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc_,
                                logits_processor=LogitsProcessorList([Stamp()]))
        return t0, stamps

    def close(self):
        self.model = None
        gc.collect()
        self.torch.cuda.empty_cache()


def load_torch_baseline(config: dict, path, device: str):
    """transformers' fp16 model on `device`: from `path` when given, else built from `config` with
    random init directly on the GPU (no download). None when torch or transformers is missing."""
    try:
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        return None
    if path:
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float16)
        source = path
    else:
        kw = {k: v for k, v in config.items() if k not in ("model_type", "quantization_config")}
        hf_cfg = AutoConfig.for_model(config["model_type"], **kw)
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float16)
        try:
            with torch.device(device):
                model = AutoModelForCausalLM.from_config(hf_cfg)
        finally:
            torch.set_default_dtype(old)
        source = "random init from the same config"
    model = model.to(device=device, dtype=torch.float16).eval()
    label = (f"fp16 baseline: torch {torch.__version__} + transformers {transformers.__version__} "
             f"({source}; eager generate, attn {getattr(model.config, '_attn_implementation', '?')})")
    return TorchRunner(model, label, device, config.get("eos_token_id"))


def kv_bytes_estimate(cfg: ModelConfig, batch: int, total: int, device: str) -> int:
    """Host bytes a CPU round needs beyond the weights: the fp32 KV cache and the prefill activations."""
    kv = cfg.num_layers * 2 * batch * total * cfg.num_kv_heads * cfg.head_dim * 4
    acts = batch * (total // 2) * (3 * cfg.intermediate_size + 6 * cfg.hidden_size) * 4
    return kv + acts if device == "cpu" else 0


def run_rounds(runner, rounds, batch: int, cfg: ModelConfig, device: str, seed: int = 0):
    """Measures every round (stopping at the first OOM); returns the table rows.

    Warm-up, untimed, the same for both models: a short generation at load (weights go to the
    device), then before each round the round itself, stopped after 2 new tokens, so the round
    times neither the first use of its prompt shape (kernel choice, workspace growth) nor the
    allocation of its cache and the capture of its decode step."""
    rows = []
    t = time.perf_counter()
    warm = np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(batch, min(16, rounds[0][0])))
    runner.timed_generate(warm, 4)
    print(f" -- {runner.label}: warm-up (weights to the device) {time.perf_counter() - t:.1f} s", flush=True)
    for ctx, n in rounds:
        need = kv_bytes_estimate(cfg, batch, ctx + n, device)
        if need > 0.9 * available_host_bytes():
            print(f" -- stopping: prompt {ctx} + {n} new tokens needs ~{need / GB:.1f} GB more host memory, "
                  f"{available_host_bytes() / GB:.1f} GB available", flush=True)
            break
        ids = np.random.default_rng(seed + ctx).integers(0, cfg.vocab_size, size=(batch, ctx))
        print(f" -- {runner.label}: batch {batch}, prompt {ctx}, {n} new tokens", flush=True)
        row = {"Batch Size": batch, "Prefill Length": ctx, "Decode Length": n}
        try:
            runner.timed_generate(ids, n, stop_after=2)
            t0, stamps = runner.timed_generate(ids, n)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is a result; anything else re-raises
            if not is_oom(e):
                raise
            print(f" ** out of memory ({type(e).__name__}: {str(e).splitlines()[0][:200]}); stopping", flush=True)
            row.update({"Prefill tokens/s": "OOM", "Decode tokens/s": "OOM", "Memory (GB)": "OOM"})
            rows.append(row)
            break
        if len(stamps) != n:
            raise RuntimeError(f"{runner.label}: asked for {n} new tokens, got {len(stamps)}")
        steps = np.diff(stamps)
        row["Prefill tokens/s"] = round(batch * ctx / (stamps[0] - t0), 2)
        row["Decode tokens/s"] = round(batch * (n - 1) / (stamps[-1] - stamps[0]), 2) if n > 1 else None
        # AutoAWQ's own figure: batch / median per-token time (kept in the JSON)
        row["Decode tokens/s (median)"] = round(batch / float(np.median(steps)), 2) if n > 1 else None
        row["Memory (GB)"] = round(runner.memory.peak() / GB, 3)
        print(f" ** prefill {row['Prefill tokens/s']} tok/s, decode {row['Decode tokens/s']} tok/s, "
              f"memory {row['Memory (GB)']} GB", flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _cell(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def print_table(title: str, rows, columns=COLUMNS):
    print(f"\n### {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |")


def ratio_rows(ours, base):
    by_key = {(r["Batch Size"], r["Prefill Length"], r["Decode Length"]): r for r in base}
    out = []
    for r in ours:
        b = by_key.get((r["Batch Size"], r["Prefill Length"], r["Decode Length"]))
        row = {c: r[c] for c in COLUMNS[:3]}
        for col, name in (("Prefill tokens/s", "Prefill ratio"), ("Decode tokens/s", "Decode ratio"),
                          ("Memory (GB)", "Memory ratio")):
            x, y = r.get(col), b.get(col) if b else None
            ok = isinstance(x, (int, float)) and isinstance(y, (int, float)) and y > 0
            row[name] = round(x / y, 3) if ok else None
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def parse_rounds(text: str):
    """"32,64" -> [(32, 32), (64, 64)]; "512:128" -> [(512, 128)]."""
    rounds = []
    for part in text.split(","):
        ctx, _, n = part.strip().partition(":")
        try:
            r = (int(ctx), int(n or ctx))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad round {part!r}: use PROMPT or PROMPT:NEW, e.g. 512:128") from None
        if r[0] < 1 or r[1] < 1:
            raise argparse.ArgumentTypeError(f"bad round {part!r}: lengths must be >= 1")
        rounds.append(r)
    return rounds


def random_checkpoints(name: str, layers, group_size: int, want_fp16: bool):
    """(config, quantized folder, fp16 folder or None) under $AWQ_CACHE/random, written once."""
    from awq.zoo import cache_dir

    overrides = {"num_hidden_layers": layers} if layers else {}
    config = random_model.get_config(name, **overrides)
    if name in random_model.CONFIGS:
        slug = name
    else:
        p = os.path.abspath(name)
        slug = "custom-" + os.path.basename(os.path.dirname(p) if p.endswith(".json") else p)
    root = cache_dir() / "random" / f"{slug}-L{config['num_hidden_layers']}"
    qdir, fdir = root / f"awq-g{group_size}", root / "fp16"
    jobs = [(qdir, True)] + ([(fdir, False)] if want_fp16 else [])
    for folder, quantized in jobs:
        want = dict(config, torch_dtype="float16")
        if quantized:
            want["quantization_config"] = random_model.quantization_config(group_size)
        if random_model.checkpoint_matches(folder, want):
            print(f" -- reusing {folder}", flush=True)
            continue
        t = time.perf_counter()
        print(f" -- writing random {'AWQ w4 g%d' % group_size if quantized else 'fp16'} checkpoint to {folder}",
              flush=True)
        random_model.write_random_checkpoint(folder, config, quantized=quantized, group_size=group_size)
        print(f"    done in {time.perf_counter() - t:.1f} s", flush=True)
    return config, str(qdir), str(fdir) if want_fp16 else None


def load_awq(path: str, pretrained: bool, args, max_len: int, memory):
    memory.reset()
    t = time.perf_counter()
    if pretrained:
        model = AutoAWQForCausalLM.from_pretrained(path, device_map=args.device)
        label = "awq fp16 runtime"
    else:
        kw = {"quant_filename": args.quant_file, "max_seq_len": max_len, "device_map": args.device}
        if "fuse_layers" in inspect.signature(AutoAWQForCausalLM.from_quantized).parameters:
            kw["fuse_layers"] = args.fuse_layers
        model = AutoAWQForCausalLM.from_quantized(path, **kw)
        qc = model.quant_config
        label = f"awq {qc['version'].upper()} w{qc['w_bit']} g{qc['q_group_size']}"
    print(f" -- loaded {label} from {path} in {time.perf_counter() - t:.1f} s", flush=True)
    return AwqRunner(model, label, memory)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_path", default=None, help="AWQ checkpoint folder (fp16 folder with --pretrained)")
    ap.add_argument("--quant_file", default="", help="weights file inside model_path (as AutoAWQ's)")
    ap.add_argument("--batch_size", type=int, default=1)
    ap.add_argument("--pretrained", action="store_true", help="benchmark the unquantized fp16 model")
    ap.add_argument("--baseline_path", default=None, help="fp16 folder for the baseline of a real checkpoint")
    ap.add_argument("--device", default=None, help="cuda[:N] or cpu (default: cuda when a GPU is usable)")
    ap.add_argument("--random-weights", dest="random_weights", action="store_true",
                    help="build random checkpoints from --config instead of loading --model_path")
    ap.add_argument("--config", default="llama-2-7b",
                    help=f"with --random-weights: {', '.join(random_model.CONFIGS)} or a config.json path")
    ap.add_argument("--group_size", type=int, default=128, help="with --random-weights")
    ap.add_argument("--layers", type=int, default=None, help="with --random-weights: num_hidden_layers")
    ap.add_argument("--rounds", type=parse_rounds, default=AUTOAWQ_ROUNDS,
                    help="PROMPT[:NEW],... (default AutoAWQ's 32,64,...,4096 with NEW = PROMPT)")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false")
    ap.add_argument("--fuse_layers", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)

    if args.device is None:
        import awq.gpu

        args.device = "cuda" if awq.gpu.is_available() else "cpu"
    if args.device != "cpu" and not args.device.startswith("cuda"):
        ap.error(f"--device {args.device!r}: use cuda, cuda:N or cpu")
    if args.random_weights == bool(args.model_path):
        ap.error("give either --model_path or --random-weights (with --config)")
    if args.layers is not None and not args.random_weights:
        ap.error("--layers applies to --random-weights only")
    if args.batch_size < 1:
        ap.error("--batch_size must be >= 1")
    cuda = args.device.startswith("cuda")
    torch_ok = False
    if cuda and args.baseline:
        import importlib.util

        torch_ok = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    # The awq fp16 runtime is needed as the model under test (--pretrained) or as the baseline
    # (CPU, or cuda without torch); beside --pretrained on the CPU it would only measure itself.
    awq_fp16_baseline = args.baseline and not torch_ok and not args.pretrained

    if args.random_weights:
        try:
            config, qdir, fdir = random_checkpoints(args.config, args.layers, args.group_size,
                                                    args.pretrained or awq_fp16_baseline)
        except ValueError as e:
            ap.error(str(e))
        model_path = fdir if args.pretrained else qdir
        base_path = fdir if awq_fp16_baseline else None
        what = f"random weights, {args.config} shape, {config['num_hidden_layers']} layers"
    else:
        model_path = args.model_path
        config = read_json(os.path.join(model_path, "config.json"), "model config")
        base_path = args.baseline_path or (model_path if args.pretrained else None)
        what = model_path
    cfg = ModelConfig.from_dict(config)

    rounds, limit = [], cfg.max_position_embeddings
    for ctx, n in args.rounds:
        if ctx + n > limit:
            print(f" -- stopping before prompt {ctx} + {n} new tokens: exceeds max_position_embeddings {limit}")
            break
        rounds.append((ctx, n))
    if not rounds:
        ap.error(f"no round fits max_position_embeddings {limit}")
    max_len = max(c + n for c, n in rounds)

    memory = AwqGpuMemory(args.device) if cuda else CpuMemory()
    ours = load_awq(model_path, args.pretrained, args, max_len, memory)
    ours_label = ours.label
    ours_rows = run_rounds(ours, rounds, args.batch_size, cfg, args.device)
    ours.close()
    del ours
    if cuda:
        import awq.gpu

        awq.gpu.empty_cache()

    machine = machine_line(args.device)
    run = {"model": what, "device": args.device, "weights": ours_label,
           "dtype": "float16" if cuda else "float16 weights, float32 activations", "batch_size": args.batch_size}
    print(f"\nmachine: {machine}")
    print("run: " + ", ".join(f"{k} {v}" for k, v in run.items()))
    print_table(f"{ours_label} (ours)", ours_rows)

    base_rows, base_label, note = [], None, None
    if not args.baseline:
        note = "baseline skipped (--no-baseline)"
    elif torch_ok and (args.random_weights or base_path):
        runner = load_torch_baseline(config, None if args.random_weights else base_path, args.device)
        runner.reset()
        base_rows = run_rounds(runner, rounds, args.batch_size, cfg, args.device)
        base_label = runner.label
        runner.close()
    elif base_path and not args.pretrained:
        why = "torch/transformers not installed, so " if cuda else ""
        base_mem = AwqGpuMemory(args.device) if cuda else CpuMemory()
        runner = load_awq(base_path, True, args, max_len, base_mem)
        base_rows = run_rounds(runner, rounds, args.batch_size, cfg, args.device)
        base_label = f"fp16 baseline: {why}awq's own fp16 runtime ({base_path})"
        if cuda:
            base_label += "; memory: awq's allocator peak since process start"
        runner.close()
    elif args.pretrained:
        note = ("no baseline: --pretrained measures awq's fp16 runtime, and the fp16 baseline here would be "
                "that same runtime (the transformers baseline needs cuda, torch and transformers)")
    else:
        note = "no baseline: pass --baseline_path with the fp16 model to compare"
    if base_rows:
        print_table(base_label, base_rows)
        print_table("ratio, ours / fp16 baseline", ratio_rows(ours_rows, base_rows),
                    COLUMNS[:3] + ["Prefill ratio", "Decode ratio", "Memory ratio"])
    if note:
        print(f"\n({note})")
    if memory.note:
        print(f"(memory: {memory.note})")

    if args.out:
        rows = [dict(r, model=ours_label) for r in ours_rows] + [dict(r, model=base_label) for r in base_rows]
        with open(args.out, "w") as f:
            json.dump({"machine": machine, "run": run, "baseline": base_label or note, "rows": rows}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
