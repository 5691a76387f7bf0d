"""Resumable quantization (issue 6, part 3): quantize(..., resume_dir=...) keeps every finished layer;
after an interruption (an exception, or kill -9 of a real run in another process, at a chosen or a
random moment) the same call continues at the first unfinished layer and the saved checkpoint is
byte-identical to an uninterrupted run's. A resume_dir of another run raises, naming what differs.

Timing: 20-30 s for the file on the shared 2-core dev box, 9 s on a 16-core machine (about four
6-layer runs plus five interpreter starts); the repeated-kill variant is marked slow."""
import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from awq._backend import C
from awq.models.base import BaseAWQForCausalLM
from awq.quantize.quantizer import AwqQuantizer
from awq.quantize.resume import MANIFEST, ResumeStore, layer_file
from resume_worker import SETTINGS, quantize
from tiny import CharTokenizer, calib_texts, tiny_config, write_tiny_model

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resume_worker.py")
N_LAYERS = 6


class Interrupt(BaseException):
    """Stands for Ctrl-C / a crash inside the layer loop (BaseException: nothing may swallow it)."""


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("resume") / "m")
    write_tiny_model(folder, tiny_config(layers=N_LAYERS))
    return folder


@pytest.fixture(scope="module")
def reference(model_path, tmp_path_factory):
    """The uninterrupted run, without resume_dir: (output folder, reports, seconds it took)."""
    out = str(tmp_path_factory.mktemp("ref") / "q")
    t0 = time.monotonic()
    reports = quantize(model_path, None, out).reports
    return out, reports, time.monotonic() - t0


def assert_same_files(out, ref):
    names = sorted(os.listdir(ref))
    assert sorted(os.listdir(out)) == names
    for name in names:
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(ref, name), "rb") as b:
            assert a.read() == b.read(), f"{name} differs from the uninterrupted run's"


def layer_files(folder):
    return sorted(e for e in os.listdir(folder) if e.startswith("layer-") and e.endswith(".safetensors")) \
        if os.path.isdir(folder) else []


def interrupted_run(model_path, resume_dir, after_layer, device=None):
    """quantize() with resume_dir, stopped by an exception right after layer `after_layer` is saved."""
    save = ResumeStore.save

    def save_then_stop(self, i, layer, report):
        save(self, i, layer, report)
        if i == after_layer:
            raise Interrupt()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ResumeStore, "save", save_then_stop)
        with pytest.raises(Interrupt):
            quantize(model_path, resume_dir, resume_dir + "-never-saved", device)


# ---------------------------------------------------------------------------------------------
# In process
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed(model_path, tmp_path_factory):
    """Interrupted after layer 3, layer 3's file then truncated (and a writer's temp file left
    behind), resumed to the end: (resume_dir, output folder, stdout of the resumed call, reports)."""
    base = tmp_path_factory.mktemp("inproc")
    rdir, out = str(base / "resume"), str(base / "q")
    interrupted_run(model_path, rdir, after_layer=3)
    assert layer_files(rdir) == [layer_file(i) for i in range(4)]
    path = os.path.join(rdir, layer_file(3))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with open(os.path.join(rdir, layer_file(4) + ".tmp-0badf00d"), "wb") as f:
        f.write(b"half a layer")
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        reports = quantize(model_path, rdir, out).reports
    return rdir, out, log.getvalue(), reports


def test_interrupted_then_resumed_in_process(resumed, reference):
    rdir, out, log, reports = resumed
    assert "recomputing layer 3" in log and f"resuming at layer 3 of {N_LAYERS}" in log, log
    assert layer_files(rdir) == [layer_file(i) for i in range(N_LAYERS)]
    assert not [e for e in os.listdir(rdir) if ".tmp-" in e]  # the dead writer's temp file is gone
    assert_same_files(out, reference[0])
    # loaded and recomputed layers report the same search results as the uninterrupted run
    assert [(r.index, r.ratios, r.losses) for r in reports] == \
        [(r.index, r.ratios, r.losses) for r in reference[1]]


def test_all_layers_done_does_no_calibration_work(model_path, resumed, reference, tmp_path):
    rdir = resumed[0]
    out = str(tmp_path / "q")

    def forbidden(*a, **k):
        raise AssertionError("a finished resume_dir must not load, forward or search any layer")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("_awq_layer", "_float_forward", "_to_backend", "_finish_layer"):
            mp.setattr(AwqQuantizer, name, forbidden)
        for name in ("load_layer_f32", "embed_tokens"):
            mp.setattr(BaseAWQForCausalLM, name, forbidden)
        t0 = time.perf_counter()
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            model = quantize(model_path, rdir, out)
        seconds = time.perf_counter() - t0
    assert f"all {N_LAYERS} layers already done" in log.getvalue()
    assert_same_files(out, reference[0])
    assert [r.index for r in model.reports] == list(range(N_LAYERS))
    assert seconds < 10, seconds  # tokenizing, reading 6 small files, saving: no layer work


@pytest.mark.parametrize("quant_config, export_compatible", [
    ({"w_bit": 4, "q_group_size": 32, "modules_to_not_convert": ["mlp.down_proj"]}, False),
    ({"w_bit": 3, "q_group_size": 32}, False),
    ({"w_bit": 4, "q_group_size": 32}, True),
], ids=["w4-with-dense-down", "w3-dequantized", "export-compatible"])
def test_every_layer_kind_round_trips(tmp_path, quant_config, export_compatible):
    # qwen2: q/k/v biases. RTN keeps it fast; the layer files hold the same kinds either way.
    folder = str(tmp_path / "m")
    write_tiny_model(folder, tiny_config("qwen2", layers=3))

    def run(resume_dir, stop_after=None):
        model = AutoAWQForCausalLM.from_pretrained(folder)
        kw = dict(quant_config=quant_config, export_compatible=export_compatible, rtn=True, resume_dir=resume_dir)
        if stop_after is None:
            return model.quantize(CharTokenizer(), **kw)._layers
        save = ResumeStore.save

        def save_then_stop(self, i, layer, report):
            save(self, i, layer, report)
            if i == stop_after:
                raise Interrupt()

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ResumeStore, "save", save_then_stop)
            with pytest.raises(Interrupt):
                model.quantize(CharTokenizer(), **kw)

    want = run(None)
    rdir = str(tmp_path / "resume")
    run(rdir, stop_after=0)
    got = run(rdir)
    assert [list(layer) for layer in got] == [list(layer) for layer in want]  # same keys, same order
    for g, w in zip(got, want):
        for name in w:
            a, b = g[name], w[name]
            assert type(a) is type(b), name
            fields = vars(b) if hasattr(b, "__dict__") else {"": b}
            for f, v in fields.items():
                u = getattr(a, f) if f else a
                if isinstance(v, np.ndarray):
                    assert u.dtype == v.dtype and u.shape == v.shape and np.array_equal(u, v), (name, f)
                else:
                    assert u == v, (name, f)


# ---------------------------------------------------------------------------------------------
# The run's identity
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def started(model_path, tmp_path):
    """A resume_dir whose run wrote its manifest and was stopped before the first layer."""
    rdir = str(tmp_path / "resume")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AwqQuantizer, "_run", lambda self, blocks, store: (_ for _ in ()).throw(Interrupt()))
        with pytest.raises(Interrupt):
            quantize(model_path, rdir, str(tmp_path / "never"))
    assert os.listdir(rdir) and os.path.exists(os.path.join(rdir, MANIFEST))
    return rdir


def _quantize_with(model_path, rdir, **change):
    kw = dict(SETTINGS, calib_data=calib_texts(14))
    kw.update(change)
    model = AutoAWQForCausalLM.from_pretrained(model_path)
    model.quantize(CharTokenizer(), resume_dir=rdir, **kw)


@pytest.mark.parametrize("change, named", [
    ({"quant_config": {"q_group_size": 16}}, "quant_config.q_group_size: stored 32, now 16"),
    ({"duo_scaling": False}, "options.duo_scaling: stored True, now False"),
    ({"apply_clip": False}, "options.apply_clip"),
    ({"calib_data": calib_texts(14, seed=7)}, "calibration.sha256"),
    ({"quant_config": {"q_group_size": 32, "modules_to_not_convert": ["mlp.down_proj"]}},
     "options.modules_to_not_convert"),
])
def test_fingerprint_mismatch_raises_naming_what_differs(model_path, started, change, named):
    before = open(os.path.join(started, MANIFEST), "rb").read()
    with pytest.raises(ValueError, match="different quantization run") as e:
        _quantize_with(model_path, started, **change)
    assert named in str(e.value) and started in str(e.value)
    assert open(os.path.join(started, MANIFEST), "rb").read() == before  # never rewritten


def test_changed_model_file_is_a_different_run(model_path, started):
    weights = os.path.join(model_path, "model.safetensors")
    st = os.stat(weights)
    try:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "rewritten" a second later
        with pytest.raises(ValueError, match=r"model\.files"):
            _quantize_with(model_path, started)
    finally:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_resume_dir_must_be_new_or_a_resume_folder(model_path, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep")
    with pytest.raises(ValueError, match="holds no manifest.json"):
        _quantize_with(model_path, str(other))
    assert os.listdir(other) == ["todo.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        _quantize_with(model_path, str(tmp_path / "file"))


def test_one_run_at_a_time_per_resume_dir(tmp_path):
    fp = {"run": 1}
    with ResumeStore(str(tmp_path / "r"), fp):
        with pytest.raises(RuntimeError, match="in use"):
            ResumeStore(str(tmp_path / "r"), fp).open()
    with ResumeStore(str(tmp_path / "r"), fp):  # released on close (and by the kernel on kill -9)
        pass


# ---------------------------------------------------------------------------------------------
# kill -9 of a real run in another process
# ---------------------------------------------------------------------------------------------


def run_worker(model_path, rdir, out, log_path, kill_when=None):
    """Runs resume_worker.py; kill_when(elapsed_s, rdir) -> True sends SIGKILL. Returns the exit
    code (-9 when killed) and the log."""
    with open(log_path, "w") as log:
        p = subprocess.Popen([sys.executable, WORKER, model_path, rdir, out], stdout=log, stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            while kill_when is not None and p.poll() is None:
                if kill_when(time.monotonic() - t0, rdir):
                    p.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.002)
            p.wait(timeout=300)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    with open(log_path) as f:
        return p.returncode, f.read()


def kill_then_resume(model_path, base, kill_when, reference_out, must_kill=False):
    rdir, out = str(base / "resume"), str(base / "q")
    rc, log = run_worker(model_path, rdir, out, str(base / "killed.log"), kill_when)
    if must_kill:
        assert rc == -signal.SIGKILL, f"the run ended (rc {rc}) before it could be killed:\n{log}"
        assert not os.path.exists(out)
    done = len(layer_files(rdir))
    rc, log = run_worker(model_path, rdir, out, str(base / "resumed.log"))
    assert rc == 0, log
    if 0 < done < N_LAYERS:
        assert f"resuming at layer {done} of {N_LAYERS}" in log, log
    assert_same_files(out, reference_out)
    return done


def test_kill_9_after_two_layers_then_resume(model_path, reference, tmp_path):
    done = kill_then_resume(model_path, tmp_path, lambda t, rdir: len(layer_files(rdir)) >= 2,
                            reference[0], must_kill=True)
    assert 2 <= done < N_LAYERS


def _run_seconds(reference):
    """About how long a worker process takes: its interpreter start and imports plus the run."""
    return 0.5 + reference[2]


def test_kill_9_at_a_random_early_moment_then_resume(model_path, reference, tmp_path):
    # Anywhere from interpreter start to about the middle of the layer loop.
    seed = int(os.environ.get("AWQ_TEST_SEED", time.time_ns() % 10**6))
    at = random.Random(seed).uniform(0.0, 0.8 * _run_seconds(reference))
    when = lambda t, rdir: t >= at  # noqa: E731
    try:
        kill_then_resume(model_path, tmp_path, when, reference[0])
    except AssertionError as e:
        raise AssertionError(f"AWQ_TEST_SEED={seed} (killed {at:.3f} s in): {e}") from None


@pytest.mark.slow
def test_killed_again_and_again_until_done(model_path, reference, tmp_path):
    """Kill -9 at random moments, restart the same call each time, until one run completes."""
    seed = int(os.environ.get("AWQ_TEST_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    rdir, out = str(tmp_path / "resume"), str(tmp_path / "q")
    for attempt in range(30):
        at = rng.uniform(0.0, _run_seconds(reference))
        rc, log = run_worker(model_path, rdir, out, str(tmp_path / f"run{attempt}.log"), lambda t, r: t >= at)
        if rc == 0:
            break
        assert rc == -signal.SIGKILL, log
    else:
        rc, log = run_worker(model_path, rdir, out, str(tmp_path / "last.log"))
        assert rc == 0, log
    assert_same_files(out, reference[0])


# ---------------------------------------------------------------------------------------------
# GPU backend (same resume logic; skipped without a CUDA device)
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not C.cuda_info()["devices"], reason="no CUDA device")
def test_resume_on_gpu(model_path, tmp_path):
    ref = str(tmp_path / "ref")
    quantize(model_path, None, ref, "cuda")
    rdir = str(tmp_path / "resume")
    interrupted_run(model_path, rdir, after_layer=1, device="cuda")
    out = str(tmp_path / "q")
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        quantize(model_path, rdir, out, "cuda")
    assert f"resuming at layer 2 of {N_LAYERS}" in log.getvalue()
    assert_same_files(out, ref)
    # a CPU run cannot continue a GPU run's folder (different arithmetic)
    with pytest.raises(ValueError, match="backend.name: stored 'cuda', now 'cpu'"):
        quantize(model_path, rdir, str(tmp_path / "never"))
