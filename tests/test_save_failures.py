"""Saving never damages what is already there (issue 6, part 5, disk): a full disk, an I/O error,
a failed rename or an interrupt at any point of save_quantized leaves the previous checkpoint at the
destination byte for byte, deletes the temporary folder, and raises an OSError that names the
destination and keeps the errno. The faults are injected by patching the low-level writes, plus one
real one from the kernel: a file-size limit (RLIMIT_FSIZE) in a child process, which fails write(2)
with EFBIG as a full small file system would fail it with ENOSPC."""
import errno
import os
import subprocess
import sys

import numpy as np
import pytest

import awq.io.checkpoint as checkpoint
import awq.io.safetensors as safetensors
from awq import AutoAWQForCausalLM
from tiny import CharTokenizer, tiny_config, write_tiny_model

QC = {"zero_point": True, "q_group_size": 32, "w_bit": 4, "version": "GEMM"}


@pytest.fixture
def saved(tmp_path):
    """(model quantized with RTN, destination holding its checkpoint, that checkpoint's bytes)."""
    folder = str(tmp_path / "m")
    write_tiny_model(folder, tiny_config(layers=2))
    model = AutoAWQForCausalLM.from_pretrained(folder)
    model.quantize(CharTokenizer(), quant_config=QC, rtn=True)
    dest = str(tmp_path / "out" / "q")
    model.save_quantized(dest, shard_size="40KB")
    return model, dest, snapshot(dest)


def snapshot(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


def assert_untouched(dest, before):
    assert snapshot(dest) == before
    assert os.listdir(os.path.dirname(dest)) == [os.path.basename(dest)]  # no temp or backup folders


def enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_on_call(n, error=enospc, partial_write=False):
    """A _write_array that writes its first n-1 tensors, then (optionally half of) the n-th fails."""
    real, calls = safetensors._write_array, [0]

    def write(fh, arr):
        calls[0] += 1
        if calls[0] < n:
            return real(fh, arr)
        if partial_write:
            fh.write(arr.reshape(-1).view(np.uint8)[: arr.nbytes // 2])
            fh.flush()
        error()

    return write


@pytest.mark.parametrize("where", ["first tensor", "mid tensor", "second shard", "last shard"])
def test_disk_full_while_writing_weights(saved, where):
    model, dest, before = saved
    n_tensors = len(model._state_tensors())
    n = {"first tensor": 1, "mid tensor": 3, "second shard": 12, "last shard": n_tensors}[where]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(safetensors, "_write_array", fail_on_call(n, partial_write=where == "mid tensor"))
        with pytest.raises(OSError) as e:
            model.save_quantized(dest, shard_size="40KB")
    assert e.value.errno == errno.ENOSPC
    assert dest in str(e.value) and "previous checkpoint there is unchanged" in str(e.value)
    assert_untouched(dest, before)


def test_disk_full_while_copying_generation_config(saved):
    model, dest, before = saved
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("awq.models.base.shutil.copyfile", enospc)
        with pytest.raises(OSError, match="could not save") as e:
            model.save_quantized(dest)
    assert e.value.errno == errno.ENOSPC and e.value.filename == dest
    assert_untouched(dest, before)


def test_io_error_at_fsync(saved):
    # A delayed-allocation file system may report ENOSPC/EIO only at fsync; the new folder is then
    # not known to be on disk and must not replace the old one.
    model, dest, before = saved
    real = os.fsync
    calls = [0]

    def fsync(fd):
        calls[0] += 1
        if calls[0] == 4:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", fsync)
        with pytest.raises(OSError) as e:
            model.save_quantized(dest)
    assert e.value.errno == errno.EIO and dest in str(e.value)
    assert_untouched(dest, before)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_failed_swap_restores_the_previous_checkpoint(saved, exchange):
    model, dest, before = saved
    real = os.rename

    def rename(src, dst):
        if os.path.basename(src).startswith(".q.tmp-"):  # the new folder moving into place
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src)
        return real(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "rename", rename)
        if exchange:
            mp.setattr(checkpoint, "_exchange", lambda a, b: (_ for _ in ()).throw(
                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), a)))
        else:
            mp.setattr(checkpoint, "_exchange", lambda a, b: False)
        with pytest.raises(OSError) as e:
            model.save_quantized(dest)
    assert e.value.errno == errno.ENOSPC and dest in str(e.value)
    assert_untouched(dest, before)


def test_replacing_a_checkpoint_still_works_both_ways(saved):
    model, dest, before = saved
    for exchange_available in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            if not exchange_available:
                mp.setattr(checkpoint, "_exchange", lambda a, b: False)
            model.save_quantized(dest, shard_size="40KB")
        assert_untouched(dest, before)  # same model, same bytes; nothing left beside it


def test_interrupted_save_to_a_new_destination_leaves_nothing(saved, tmp_path):
    model, _, _ = saved
    dest = str(tmp_path / "fresh" / "q")

    def interrupt():
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(safetensors, "_write_array", fail_on_call(5, interrupt, partial_write=True))
        with pytest.raises(KeyboardInterrupt):
            model.save_quantized(dest, shard_size="40KB")
    assert os.listdir(tmp_path / "fresh") == []  # no half-written checkpoint, no temp folder

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(safetensors, "_write_array", fail_on_call(5, enospc))
        with pytest.raises(OSError, match="nothing was written there"):
            model.save_quantized(dest, shard_size="40KB")
    assert os.listdir(tmp_path / "fresh") == []


CHILD = r"""
import os, resource, signal, sys
sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], "tests")]
from awq import AutoAWQForCausalLM
from tiny import CharTokenizer
model = AutoAWQForCausalLM.from_pretrained(sys.argv[2])
model.quantize(CharTokenizer(), quant_config={"q_group_size": 32}, rtn=True)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then write(2) past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    model.save_quantized(sys.argv[3])
except OSError as e:
    print("errno", e.errno, "|", e)
    sys.exit(3)
"""


def test_real_file_size_limit_in_a_child_process(saved):
    model, dest, before = saved
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", CHILD, repo, model.model_path, dest], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 3, p.stdout + p.stderr
    assert f"errno {errno.EFBIG} |" in p.stdout and dest in p.stdout, p.stdout
    assert_untouched(dest, before)
