"""Resumable quantization: `quantize(..., resume_dir=...)` keeps every finished decoder layer on disk,
so a run killed at any moment (kill -9, OOM, power loss) continues at its first unfinished layer and
ends with the same checkpoint, byte for byte, as an uninterrupted run.

Why per layer and why this is enough: layer i's result depends only on the float weights of layer i
and on its input x_i, the FLOAT output of layers 0..i-1 on the calibration blocks (the quantized
weights never feed forward). So a resumed run loads layers 0..k-1 from here, recomputes x_k by the
float forwards of layers 0..k-1 (the same code and chunking as the uninterrupted run, so the same
bits), and carries on. Activations are never stored: they would be GBs, the replay is seconds.

resume_dir layout:
  manifest.json             the run's fingerprint (model files, quant config, quantizer options,
                            backend, calibration blocks hash); written first, compared on resume
  layer-00012.safetensors   layer 12: its quantizer output (packed or dense linears, rounded norms)
                            and its LayerReport (in the safetensors __metadata__), one file
  lock                      flock'ed while a run uses the folder (two runs never share it)

Every file is written under a temporary name, fsynced, renamed into place and the folder fsynced:
after a kill a file is complete or absent. A layer file that still fails to read back (truncated,
foreign, or a tensor layout the current run would not produce) is reported and recomputed; a
manifest that differs from the current run raises, naming what differs (never silently reused).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from awq.io.safetensors import SafetensorsFile, save_file, write_atomic

FORMAT = "awq-resume/1"
MANIFEST = "manifest.json"
LOCK = "lock"
_LAYER_RE = re.compile(r"^layer-(\d{5})\.safetensors$")
_TMP_RE = re.compile(r"\.tmp-[0-9a-f]+$")

# dtype names as the safetensors header spells them, for the expected layout of a layer file
F32, F16, I32 = "F32", "F16", "I32"


def layer_file(i: int) -> str:
    return f"layer-{i:05d}.safetensors"


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fingerprint_hash(fp: dict) -> str:
    return hashlib.sha256(canonical(fp).encode()).hexdigest()


def blocks_digest(blocks: Optional[np.ndarray]) -> Optional[dict]:
    """Identity of the calibration token blocks [n_blocks, T] (None for RTN)."""
    if blocks is None:
        return None
    b = np.ascontiguousarray(blocks, dtype="<i8")
    return {"shape": list(b.shape), "sha256": hashlib.sha256(b.tobytes()).hexdigest()}


def files_identity(paths: List[str]) -> List[list]:
    """[name, size, mtime_ns] per checkpoint file: a replaced or re-written weights file (same
    header, other values) changes its mtime even when its size does not."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([os.path.basename(p), st.st_size, st.st_mtime_ns])
    return out


def _flatten(d, prefix="") -> Dict[str, object]:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def describe_mismatch(stored: dict, now: dict) -> str:
    """'options.apply_clip: stored True, now False; ...' for every differing leaf."""
    a, b = _flatten(stored), _flatten(now)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if canonical(a.get(k, "<absent>")) != canonical(b.get(k, "<absent>")):
            diffs.append(f"{k}: stored {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}")
    return "; ".join(diffs) or "the fingerprints differ"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: str, obj: dict) -> None:
    write_atomic(path, lambda fh: fh.write(json.dumps(obj, indent=1, sort_keys=True) + "\n"), binary=False)
    _fsync_dir(os.path.dirname(path))


# ---------------------------------------------------------------------------------------------
# A layer result <-> tensors + metadata
# ---------------------------------------------------------------------------------------------


def layer_to_tensors(layer: Dict) -> Tuple[Dict[str, np.ndarray], Dict[str, dict]]:
    """Quantizer output of one layer -> (tensors, layout). Norms keep their key ('<norm>.weight');
    a linear '<lin>' becomes '<lin>.qweight|qzeros|scales' (4-bit), '<lin>.dequantized' (other
    widths) or '<lin>.weight' (dense), plus '<lin>.bias' when it has one."""
    from awq.quantize.quantizer import DenseWeight, QuantizedLinear

    tensors: Dict[str, np.ndarray] = {}
    layout: Dict[str, dict] = {}
    host = lambda a: np.ascontiguousarray(a)  # noqa: E731  (host numpy arrays only, by contract)
    for name, v in layer.items():
        if isinstance(v, QuantizedLinear):
            layout[name] = {"kind": "quantized", "w_bit": v.w_bit, "group_size": v.group_size,
                            "in_features": v.in_features, "out_features": v.out_features}
            if v.w_bit == 4:
                tensors[name + ".qweight"] = host(v.qweight)
                tensors[name + ".qzeros"] = host(v.qzeros)
                tensors[name + ".scales"] = host(v.scales)
            else:
                tensors[name + ".dequantized"] = host(v.dequantized)
        elif isinstance(v, DenseWeight):
            layout[name] = {"kind": "dense"}
            tensors[name + ".weight"] = host(v.weight)
        elif isinstance(v, np.ndarray):
            tensors[name] = host(v)
            continue
        else:
            raise TypeError(f"resume: cannot persist {name!r} of type {type(v).__name__}")
        if v.bias is not None:
            tensors[name + ".bias"] = host(v.bias)
    return tensors, layout


def tensors_to_layer(tensors: Dict[str, np.ndarray], layout: Dict[str, dict], order: List[str]) -> Dict:
    """Inverse of layer_to_tensors; `order` is the key order of the quantizer's own dict."""
    from awq.quantize.quantizer import DenseWeight, QuantizedLinear

    out: Dict = {}
    for name in order:
        if name not in layout:
            out[name] = tensors[name]
            continue
        info, bias = layout[name], tensors.get(name + ".bias")
        if info["kind"] == "dense":
            out[name] = DenseWeight(tensors[name + ".weight"], bias)
        elif info["w_bit"] == 4:
            out[name] = QuantizedLinear(info["in_features"], info["out_features"], 4, info["group_size"], bias,
                                        qweight=tensors[name + ".qweight"], qzeros=tensors[name + ".qzeros"],
                                        scales=tensors[name + ".scales"])
        else:
            out[name] = QuantizedLinear(info["in_features"], info["out_features"], info["w_bit"],
                                        info["group_size"], bias, dequantized=tensors[name + ".dequantized"])
    return out


# ---------------------------------------------------------------------------------------------
# The folder
# ---------------------------------------------------------------------------------------------


class ResumeStore:
    """One run's resume_dir. open() checks (or writes) the manifest and takes the lock; close()
    releases the lock. expected(i) -> (key order, {tensor name: (dtype, shape)}, layout) is what
    layer i's file must hold for the current run."""

    def __init__(self, folder: str, fingerprint: dict, log=print):
        self.folder = os.path.abspath(os.fspath(folder))
        self.fingerprint = fingerprint
        self.fp_hash = fingerprint_hash(fingerprint)
        self.log = log
        self._lock_fd: Optional[int] = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def open(self) -> "ResumeStore":
        if os.path.lexists(self.folder) and not os.path.isdir(self.folder):
            raise NotADirectoryError(f"resume_dir {self.folder} exists and is not a folder")
        os.makedirs(self.folder, exist_ok=True)
        entries = os.listdir(self.folder)
        manifest = os.path.join(self.folder, MANIFEST)
        if MANIFEST not in entries:
            ours = [e for e in entries if e == LOCK or _TMP_RE.search(e) or _LAYER_RE.match(e)]
            if len(ours) != len(entries):
                others = sorted(set(entries) - set(ours))[:5]
                raise ValueError(f"resume_dir {self.folder} is not empty and holds no {MANIFEST} "
                                 f"({', '.join(others)}); pass a new or empty folder")
        self._lock()
        try:
            self._clean_temps()
            if os.path.exists(manifest):
                self._check_manifest(manifest)
            else:
                for e in entries:  # layer files without a manifest belong to no known run
                    if _LAYER_RE.match(e):
                        os.unlink(os.path.join(self.folder, e))
                _write_json_atomic(manifest, {"format": FORMAT, "fingerprint_sha256": self.fp_hash,
                                              "fingerprint": self.fingerprint})
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process guard, the rest works the same
            return
        fd = os.open(os.path.join(self.folder, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"resume_dir {self.folder} is in use by another running quantization") from None
        self._lock_fd = fd

    def _clean_temps(self) -> None:
        """Temp files of a killed writer (never renamed, so never part of the state)."""
        for e in os.listdir(self.folder):
            if _TMP_RE.search(e):
                try:
                    os.unlink(os.path.join(self.folder, e))
                except OSError:
                    pass

    def _check_manifest(self, path: str) -> None:
        from awq.io.checkpoint import read_json

        m = read_json(path, "resume manifest")
        if m.get("format") != FORMAT:
            raise ValueError(f"resume_dir {self.folder}: {MANIFEST} has format {m.get('format')!r}, "
                             f"expected {FORMAT!r}; use a new resume_dir")
        stored = m.get("fingerprint")
        if not isinstance(stored, dict) or fingerprint_hash(stored) != self.fp_hash:
            raise ValueError(
                f"resume_dir {self.folder} belongs to a different quantization run "
                f"({describe_mismatch(stored if isinstance(stored, dict) else {}, self.fingerprint)}); "
                f"rerun with the same model and settings, or use a new resume_dir")

    # ---- layers ------------------------------------------------------------------------------
    def save(self, i: int, layer: Dict, report) -> None:
        tensors, layout = layer_to_tensors(layer)
        meta = {"format": FORMAT, "fingerprint_sha256": self.fp_hash, "layer": str(i),
                "layout": canonical(layout),
                # not sorted: the report's group order is kept
                "report": json.dumps({"ratios": report.ratios, "losses": report.losses,
                                      "seconds": report.seconds})}
        path = os.path.join(self.folder, layer_file(i))
        try:
            save_file(tensors, path, meta)  # temp name + fsync + rename
            _fsync_dir(self.folder)
        except OSError as e:
            raise OSError(e.errno, f"could not persist layer {i} to resume_dir {self.folder}: "
                                   f"{e.strerror or e}", path) from e

    def load(self, i: int, expected) -> Optional[Tuple[Dict, object]]:
        """Layer i's (result, LayerReport), or None when it is absent or unusable (said why)."""
        from awq.quantize.quantizer import LayerReport

        path = os.path.join(self.folder, layer_file(i))
        if not os.path.exists(path):
            return None
        order, want, want_layout = expected
        try:
            st = SafetensorsFile(path)
        except Exception as e:  # a strict reader: truncated or garbled files land here
            self.log(f"awq: resume: {path} is unreadable ({e}); recomputing layer {i}")
            return None
        try:
            meta = st.metadata
            why = None
            if meta.get("format") != FORMAT or meta.get("fingerprint_sha256") != self.fp_hash:
                why = "it was written by another run"
            elif meta.get("layer") != str(i):
                why = f"it holds layer {meta.get('layer')!r}"
            else:
                have = {k: (st.dtype(k), tuple(st.shape(k))) for k in st.keys()}
                if have != want:
                    why = "its tensors are not the ones this run produces"
                else:
                    layout = json.loads(meta.get("layout", "null"))
                    rep = json.loads(meta.get("report", "null"))
                    if layout != want_layout or not isinstance(rep, dict):
                        why = "its layout or report does not match this run"
            if why:
                self.log(f"awq: resume: {path} is not usable ({why}); recomputing layer {i}")
                return None
            report = LayerReport(i, {k: float(v) for k, v in rep["ratios"].items()},
                                 {k: float(v) for k, v in rep["losses"].items()}, float(rep["seconds"]))
            tensors = {k: np.array(st.get(k)) for k in st.keys()}  # copies: the file is closed below
        except Exception as e:
            self.log(f"awq: resume: {path} is unreadable ({e}); recomputing layer {i}")
            return None
        finally:
            st.close()
        return tensors_to_layer(tensors, layout, order), report
