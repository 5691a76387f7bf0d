"""lm-evaluation-harness adapter: our runtime as an `lm_eval` LM (loglikelihood, loglikelihood_rolling,
generate_until), registered as model "awq" when lm_eval is installed.

    from awq.lm_eval_adapter import AWQLM
    import lm_eval
    results = lm_eval.simple_evaluate(model=AWQLM(model, tokenizer), tasks=["hellaswag"])

or, once this module is imported, `simple_evaluate(model="awq", model_args="pretrained=<folder>")` (the
tokenizer is read from the folder with `tokenizers`). Scoring follows the harness's reference HF model: the continuation's
tokens are those of encode(context + continuation) past encode(context); inputs longer than
max_length keep their last tokens; an empty context is conditioned on the prefix token (BOS, else
EOS). Rolling log-likelihoods use the harness's disjoint windows, so every token is scored once.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model

    HAS_LM_EVAL = True
except ImportError:  # lm_eval is optional
    HAS_LM_EVAL = False
    LM = object

    def register_model(*names):
        return lambda cls: cls

from awq.evaluation import log_softmax


def _encode(tok, text: str) -> List[int]:
    try:
        enc = tok.encode(text, add_special_tokens=False)
    except TypeError:
        enc = tok.encode(text)
    return [int(t) for t in getattr(enc, "ids", enc)]


def _decode(tok, ids) -> str:
    try:
        return tok.decode(list(map(int, ids)), skip_special_tokens=True)
    except TypeError:
        return tok.decode(list(map(int, ids)))


@register_model("awq")
class AWQLM(LM):
    def __init__(self, model=None, tokenizer=None, pretrained: Optional[str] = None, max_length: int = 2048,
                 max_gen_toks: int = 256, device: str = "cpu", prefix_token_id: Optional[int] = None, **kwargs):
        if not HAS_LM_EVAL:
            raise ImportError("awq.lm_eval_adapter needs lm-evaluation-harness: pip install lm_eval")
        super().__init__()
        if model is None:
            if pretrained is None:
                raise ValueError("AWQLM needs a model object or pretrained=<folder>")
            from awq import AutoAWQForCausalLM
            from awq.models.base import read_model_config

            cfg = read_model_config(pretrained)
            load = AutoAWQForCausalLM.from_quantized if cfg.get("quantization_config") else \
                AutoAWQForCausalLM.from_pretrained
            model = load(pretrained, device_map=device)
        if tokenizer is None:
            path = getattr(model, "model_path", pretrained)
            tj = os.path.join(str(path), "tokenizer.json")
            if not os.path.isfile(tj):
                raise ValueError(f"AWQLM: pass a tokenizer (no tokenizer.json in {path})")
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(tj)
        self.model, self.tok = model, tokenizer
        self._max_length = int(max_length)
        self.max_gen_toks = int(max_gen_toks)
        cfg = getattr(model, "config", {}) or {}
        if prefix_token_id is None:
            prefix_token_id = cfg.get("bos_token_id")
            if prefix_token_id is None:
                prefix_token_id = getattr(tokenizer, "eos_token_id", None) or cfg.get("eos_token_id")
            if isinstance(prefix_token_id, list):
                prefix_token_id = prefix_token_id[0]
        if prefix_token_id is None:
            raise ValueError("AWQLM: the model has no bos/eos token id; pass prefix_token_id")
        self.prefix_token_id = int(prefix_token_id)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def eot_token_id(self) -> int:
        eos = (getattr(self.model, "config", {}) or {}).get("eos_token_id", self.prefix_token_id)
        return int(eos[0] if isinstance(eos, list) else eos)

    def tok_encode(self, s: str) -> List[int]:
        return _encode(self.tok, s)

    # ---- scoring --------------------------------------------------------------------------------
    def _score(self, context: List[int], cont: List[int]) -> Tuple[float, bool]:
        """log P(cont | context) and whether greedy decoding yields cont, with the input cut to the
        last max_length tokens."""
        if len(cont) > self.max_length:
            raise ValueError(f"AWQLM: a continuation of {len(cont)} tokens does not fit max_length {self.max_length}")
        full = (context + cont)[-(self.max_length + 1):]
        inp = np.asarray(full[:-1], np.int64)[None]
        logits = np.asarray(self.model.forward(inp)[0], np.float32)
        n = len(cont)
        lp = log_softmax(logits[-n:])
        tgt = np.asarray(full[-n:])
        return float(lp[np.arange(n), tgt].sum()), bool((logits[-n:].argmax(-1) == tgt).all())

    def loglikelihood(self, requests) -> List[Tuple[float, bool]]:
        out = []
        for req in requests:
            context, continuation = req.args
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:  # the harness moves trailing context spaces into the continuation
                continuation = context[-n_spaces:] + continuation
                context = context[:-n_spaces]
            whole = self.tok_encode(context + continuation)
            ctx = self.tok_encode(context) if context else []
            cont = whole[len(ctx):]
            if not ctx:
                ctx = [self.prefix_token_id]
            if not cont:
                raise ValueError(f"AWQLM: the continuation {continuation!r} encodes to no tokens")
            res = self._score(ctx, cont)
            out.append(res)
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return out

    def loglikelihood_rolling(self, requests) -> List[float]:
        from lm_eval import utils

        out = []
        for req in requests:
            (string,) = req.args
            windows = map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1))
            total = 0.0
            for ctx, pred in windows:
                inp = np.asarray((ctx + pred)[:-1], np.int64)[None]
                logits = np.asarray(self.model.forward(inp)[0], np.float32)
                lp = log_softmax(logits[-len(pred):])
                total += float(lp[np.arange(len(pred)), np.asarray(pred)].sum())
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return out

    def generate_until(self, requests) -> List[str]:
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(gen_kwargs.pop("do_sample", False))
            temperature = gen_kwargs.pop("temperature", None)
            if temperature == 0:
                do_sample = False
            ctx = self.tok_encode(context) or [self.prefix_token_id]
            ctx = ctx[-max(1, self.max_length - max_new):]
            ids = np.asarray(self.model.generate(np.asarray([ctx], np.int64), max_new_tokens=max_new,
                                                 do_sample=do_sample, temperature=temperature,
                                                 eos_token_id=self.eot_token_id))[0]
            text = _decode(self.tok, ids[len(ctx):])
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out
