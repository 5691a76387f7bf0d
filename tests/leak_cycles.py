"""Worker of tests/test_leaks.py: `python leak_cycles.py WORKDIR N` runs N cycles of
from_pretrained -> quantize -> save_quantized -> from_quantized -> generate -> del + gc.collect on a
tiny model written once under WORKDIR, and prints {"rss_mb": [RSS after each cycle]} as its last
line."""
import gc
import json
import os
import sys

import numpy as np

from awq import AutoAWQForCausalLM
from tiny import CharTokenizer, calib_texts, write_tiny_model

QC = {"zero_point": True, "q_group_size": 32, "w_bit": 4, "version": "GEMM"}


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def main(work, n):
    src, out = os.path.join(work, "fp16"), os.path.join(work, "q")
    write_tiny_model(src, dtype=np.float16)
    tok = CharTokenizer()
    texts = [t[:30] for t in calib_texts(16)]  # 14 blocks of 32 tokens
    rss = []
    for i in range(n):
        model = AutoAWQForCausalLM.from_pretrained(src)
        model.quantize(tok, quant_config=QC, calib_data=texts, max_calib_seq_len=32, rtn=(i % 5 == 4))
        model.save_quantized(out)
        q = AutoAWQForCausalLM.from_quantized(out, max_seq_len=64)
        ids = q.generate([[10, 20, 30, 40]], max_new_tokens=4, eos_token_id=None)
        assert np.asarray(ids).shape == (1, 8)
        del model, q, ids
        gc.collect()
        rss.append(rss_mb())
    print(json.dumps({"rss_mb": rss}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
