"""Generate text from an AWQ checkpoint (ours or AutoAWQ's GEMM format) on the CPU.

    python examples/generate.py smollm2-135m-awq --prompt "The capital of France is" --max-new-tokens 32
    python examples/generate.py smollm2-135m-awq --chat "What is the capital of France?" --sample --seed 1
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from awq import AutoAWQForCausalLM  # noqa: E402


class PrintStreamer:
    """Prints tokens as they come (transformers' put/end protocol)."""

    def __init__(self, tok):
        self.tok, self.ids, self.shown, self.first = tok, [], "", True

    def put(self, v):
        if self.first:  # the prompt
            self.first = False
            return
        self.ids += [int(t) for t in v.reshape(-1)]
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        print(text[len(self.shown):], end="", flush=True)
        self.shown = text

    def end(self):
        print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--chat", default=None, help="use the chat template with this user message")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--sample", action="store_true")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()

    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.checkpoint)
        if args.chat:
            ids = tok.apply_chat_template([{"role": "user", "content": args.chat}], add_generation_prompt=True)
            ids = getattr(ids, "input_ids", ids)
        else:
            ids = tok(args.prompt).input_ids
    except ImportError:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(os.path.join(args.checkpoint, "tokenizer.json"))
        text = f"<|im_start|>user\n{args.chat}<|im_end|>\n<|im_start|>assistant\n" if args.chat else args.prompt
        ids = tok.encode(text).ids
    model = AutoAWQForCausalLM.from_quantized(args.checkpoint)
    print(args.chat or args.prompt, end="" if not args.chat else "\n", flush=True)
    t = time.time()
    out = model.generate([ids], max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                         temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                         streamer=PrintStreamer(tok))
    n = out.shape[1] - len(ids)
    dt = time.time() - t
    print(f"[{n} tokens in {dt:.2f} s: {n / dt:.1f} tok/s incl. prefill of {len(ids)} tokens]", file=sys.stderr)


if __name__ == "__main__":
    main()
