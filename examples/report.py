"""Quantization quality report: per-layer error of AWQ vs RTN, chosen scale ratios and clip values
(report.json + report.png).

    python examples/report.py                      # built-in default model (SmolLM2-135M) and corpus
    python examples/report.py --model PATH --out DIR --w-bit 4 --group-size 128

Needs matplotlib for the PNG (pip install "awq[report]"); the JSON is always written.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from awq import AutoAWQForCausalLM  # noqa: E402
from awq.report import write_report  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="float model folder (default: the built-in SmolLM2-135M)")
    ap.add_argument("--out", default="awq-report")
    ap.add_argument("--w-bit", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=None,
                    help="q_group_size (default 128, or 64 when 128 does not divide the model's widths)")
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--report-blocks", type=int, default=16, help="calibration blocks the errors are measured on")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    path = a.model
    calib = "pileval"
    if path is None:
        from awq.zoo import lee_corpus, smollm2_135m

        path = smollm2_135m()
        calib = lee_corpus()["calibration"]
    model = AutoAWQForCausalLM.from_pretrained(path, device_map=a.device)
    if a.group_size is None:
        widths = [K for plan in model.plans for (_, K) in plan.linears.values()]
        a.group_size = 128 if all(K % 128 == 0 for K in widths) else 64
    tok = None
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    model.quantize(tok, quant_config={"w_bit": a.w_bit, "q_group_size": a.group_size, "zero_point": True},
                   calib_data=calib, max_calib_samples=a.calib_samples, max_calib_seq_len=a.calib_seq_len,
                   report=True, report_blocks=a.report_blocks)
    paths = write_report(model, a.out)
    errs = [(r.index, r.errors.get("awq"), r.errors.get("rtn")) for r in model.reports]
    print(f"{'layer':>5} {'AWQ rel.err':>12} {'RTN rel.err':>12} {'AWQ/RTN':>8}")
    for i, e_a, e_r in errs:
        print(f"{i:>5} {e_a:>12.3e} {e_r:>12.3e} {e_a / e_r:>8.3f}")
    print(f"report: {paths['json']}" + (f", {paths['png']}" if paths["png"] else " (no matplotlib: no PNG)"))
    return paths


if __name__ == "__main__":
    main()
