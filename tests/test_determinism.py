"""Determinism (issue 6, part 4): the same inputs, config and machine give byte-identical
checkpoints on the CPU.

What is promised, and what is not:
  - Same checkpoint, calibration data, quant config, machine and thread count -> every file that
    save_quantized writes is identical byte for byte, within one process (fresh model objects) and
    across processes (another interpreter with another PYTHONHASHSEED, so nothing may depend on
    set or str-hash order). save_quantized writes no timestamps and no random names: the random
    part of the temp folder's name never reaches a file, and two saves more than a second apart
    are compared.
  - Not promised across thread counts (OMP_NUM_THREADS, or a CPU affinity mask, which sets the
    OpenMP default). The C core's reductions are thread-count independent (quantize, clip search,
    abs_mean, attention and silu give the same bits for 1..4 threads), but awq_linear_f32
    (csrc/sgemm.c) splits a GEMM into one OpenBLAS call per thread, by rows or by columns, and
    OpenBLAS picks its kernel, and with it the fp32 summation order, from each call's shape.
    Measured on an AVX-512 host: linear(x[1, 576], w[1536, 576]), x[2, 1536] @ w[576, 1536]^T and
    x[31, 160] @ w[64, 160]^T differ between 1 and 2 threads in most outputs (relative 5e-7, the
    last bit). numpy's own OpenBLAS (np.dot in the scale search's MSE) also threads by
    OMP_NUM_THREADS / OPENBLAS_NUM_THREADS. Such last-bit differences in a loss can flip a near
    tie in the scale or clip grid, so checkpoints made with different thread counts may differ
    (for the tiny model here they happen to agree). The runtime's W4A16 GEMV (csrc/w4a16.c)
    likewise sums split-K partials per thread, so logits can differ in the last bit across thread
    counts; generation is not part of this promise.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import awq
from awq import AutoAWQForCausalLM
from awq.io.safetensors import SafetensorsFile
from tiny import CharTokenizer, calib_texts, write_tiny_model

HERE = os.path.dirname(os.path.abspath(__file__))
QC = {"zero_point": True, "q_group_size": 32, "w_bit": 4, "version": "GEMM"}

# Quantize + save in another interpreter: argv = model folder, output folder.
CHILD = """
import sys
from awq import AutoAWQForCausalLM
from test_determinism import quantize_and_save
quantize_and_save(sys.argv[1], sys.argv[2])
"""


def quantize_and_save(model_dir, out_dir):
    """AWQ with real calibration (scale search, clip search, packing) on a fresh model object."""
    model = AutoAWQForCausalLM.from_pretrained(model_dir)
    model.quantize(CharTokenizer(), quant_config=QC, calib_data=calib_texts(24), max_calib_seq_len=64)
    model.save_quantized(out_dir)


def folder_bytes(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def assert_same_files(a, b):
    fa, fb = folder_bytes(a), folder_bytes(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], f"{name} differs between {a} and {b}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("det") / "fp16")
    # the tokenizer file is copied into the checkpoint, so it is compared too
    write_tiny_model(folder, dtype=np.float16)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        f.write('{"model_max_length": 512}\n')
    return folder


def test_same_process_twice_is_byte_identical(model_dir, tmp_path):
    t0 = time.time()
    quantize_and_save(model_dir, str(tmp_path / "a"))
    # a second-resolution timestamp in any file would differ between the two saves
    time.sleep(max(0.0, 1.1 - (time.time() - t0)))
    quantize_and_save(model_dir, str(tmp_path / "b"))
    assert_same_files(tmp_path / "a", tmp_path / "b")
    files = sorted(os.listdir(tmp_path / "a"))
    assert files == ["config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"]
    # nothing but the fixed metadata in the safetensors header, and no temp folders left beside
    with SafetensorsFile(str(tmp_path / "a" / "model.safetensors")) as sf:
        assert sf.metadata == {"format": "pt"}
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_another_process_is_byte_identical(model_dir, tmp_path):
    """Same thread count (the child inherits the environment), another PYTHONHASHSEED."""
    quantize_and_save(model_dir, str(tmp_path / "here"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(awq.__file__)))
    env = dict(os.environ, PYTHONHASHSEED="12345",
               PYTHONPATH=os.pathsep.join([root, HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    r = subprocess.run([sys.executable, "-c", CHILD, model_dir, str(tmp_path / "there")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert_same_files(tmp_path / "here", tmp_path / "there")
