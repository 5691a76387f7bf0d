"""A quantization run in its own process, for tests/test_resume.py to kill -9 and rerun.

usage: python tests/resume_worker.py MODEL RESUME_DIR OUT [DEVICE]
Quantizes MODEL with the fixed settings below (RESUME_DIR "-" for none), then save_quantized(OUT).
The test imports SETTINGS so its in-process reference run uses the very same call.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # this checkout's awq, never an installed copy

from tiny import CharTokenizer, calib_texts  # noqa: E402

SETTINGS = dict(quant_config={"zero_point": True, "q_group_size": 32, "w_bit": 4, "version": "GEMM"},
                max_calib_seq_len=64, max_calib_samples=14, n_parallel_calib_samples=1)


def quantize(model_path, resume_dir, out, device=None):
    from awq import AutoAWQForCausalLM

    model = AutoAWQForCausalLM.from_pretrained(model_path, device_map=device)
    model.quantize(CharTokenizer(), calib_data=calib_texts(14), resume_dir=resume_dir, **SETTINGS)
    model.save_quantized(out)
    return model


if __name__ == "__main__":
    model_path, resume_dir, out = sys.argv[1:4]
    quantize(model_path, None if resume_dir == "-" else resume_dir, out, sys.argv[4] if len(sys.argv) > 4 else None)
