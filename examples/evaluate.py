"""Quality of a quantized model against its float original: perplexity, KL divergence and top-1
agreement per position, for plain RTN and for AWQ, on held-out text.

    python examples/evaluate.py                          # built-in SmolLM2-135M, Lee held-out text
    python examples/evaluate.py --model FP_FOLDER --quantized AWQ_FOLDER --text wikitext

--text: "wikitext" (wikitext-2 test when `datasets` reaches it, else the built-in held-out text),
a .txt path, or "lee" (the built-in held-out text). Without --quantized, the model is quantized
here with AWQ (and RTN for comparison) using the Lee calibration texts.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from awq import AutoAWQForCausalLM  # noqa: E402
from awq.evaluation import eval_kl_divergence  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--quantized", default=None, help="an AWQ checkpoint folder of --model")
    ap.add_argument("--text", default="lee")
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=None)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--calib-samples", type=int, default=48)
    a = ap.parse_args(argv)
    from awq import zoo

    path = a.model or zoo.smollm2_135m()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    text = zoo.heldout_text() if a.text == "lee" else a.text
    ref = AutoAWQForCausalLM.from_pretrained(path)
    qc = {"w_bit": 4, "q_group_size": a.group_size, "zero_point": True}
    models = []
    rtn = AutoAWQForCausalLM.from_pretrained(path)
    rtn.quantize(tok, quant_config=qc, rtn=True)
    models.append((f"RTN w4 g{a.group_size}", rtn))
    if a.quantized:
        models.append(("AWQ (" + os.path.basename(a.quantized.rstrip("/")) + ")",
                       AutoAWQForCausalLM.from_quantized(a.quantized, device_map="cpu")))
    else:
        q = AutoAWQForCausalLM.from_pretrained(path)
        q.quantize(tok, quant_config=qc, calib_data=zoo.lee_corpus()["calibration"],
                   max_calib_samples=a.calib_samples, max_calib_seq_len=512)
        models.append((f"AWQ w4 g{a.group_size}", q))
    rows = []
    for name, m in models:
        r = eval_kl_divergence(ref, m, tok, text, seqlen=a.seqlen, max_windows=a.windows)
        rows.append((name, r))
    print(f"\nmodel: {path}; text: {a.text}; {rows[0][1]['positions']} predicted positions, windows of {a.seqlen}")
    print("| model | perplexity | KL(fp16 || model) mean | median | p95 | top-1 agreement |")
    print("|---|---|---|---|---|---|")
    print(f"| fp16 | {rows[0][1]['ppl_ref']:.3f} | 0 | 0 | 0 | 100% |")
    for name, r in rows:
        print(f"| {name} | {r['ppl_model']:.3f} | {r['kl_mean']:.4f} | {r['kl_median']:.4f} | {r['kl_p95']:.4f} "
              f"| {100 * r['top1_agreement']:.2f}% |")
    return rows


if __name__ == "__main__":
    main()
