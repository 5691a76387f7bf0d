"""The quantization quality report: where a model suffers from 4-bit, layer by layer.

`model.quantize(..., report=True)` records, per decoder layer, the relative output error of the
layer quantized by AWQ and by plain round-to-nearest (both against the float layer, on the first
calibration blocks: ||f_q(x) - f(x)||^2 / ||f(x) - x||^2, i.e. relative to the layer's own residual
update), the scale ratio chosen for every scaling group with the scales' spread, and how far every
linear's groups were clipped (max_val / the group's max |w|). `write_report` turns that into
report.json and, when matplotlib is installed, report.png.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import numpy as np


def _num(x) -> Optional[float]:
    """A JSON number, or null for NaN / Inf (strict JSON has neither)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _stats(a: np.ndarray) -> Dict[str, float]:
    a = np.asarray(a, np.float64).ravel()
    return {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean())}


def build_report(model) -> dict:
    """The report as a JSON-ready dict, from a model quantized in this process."""
    reports = getattr(model, "reports", None)
    if not reports:
        raise ValueError("no quantization report: quantize(..., report=True) first")
    layers = []
    for r in reports:
        groups = [{"group": g, "ratio": (None if not np.isfinite(r.ratios[g]) else float(r.ratios[g])),
                   "identity": r.ratios[g] == -1.0, "loss": _num(r.losses.get(g, float("nan"))),
                   **({"scale": _stats(r.scales[g])} if g in r.scales else {})} for g in r.ratios]
        clips = [{"linear": lin, "max_val": _stats(v), **({"clip_ratio": _stats(r.clip_ratios[lin])}
                                                          if lin in getattr(r, "clip_ratios", {}) else {})}
                 for lin, v in r.clips.items()]
        layers.append({"index": r.index, "seconds": r.seconds, "errors": {k: _num(v) for k, v in r.errors.items()},
                       "groups": groups,
                       "clips": clips})
    return {"model_type": model.spec.model_type, "model_path": str(model.model_path),
            "quant_config": dict(model.quant_config), "num_layers": len(layers),
            "error_definition": "||f_q(x) - f(x)||^2 / ||f(x) - x||^2 over the first calibration blocks",
            "layers": layers}


def _plot(rep: dict, path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    L = rep["layers"]
    idx = [l["index"] for l in L]
    fig, ax = plt.subplots(3, 1, figsize=(10, 11), constrained_layout=True)
    for key, style in (("rtn", "o--"), ("awq", "s-")):
        ys = [l["errors"].get(key, np.nan) for l in L]
        ax[0].semilogy(idx, ys, style, label=key.upper())
    ax[0].set(title="per-layer relative output error (lower is better)", xlabel="layer", ylabel="rel. MSE")
    ax[0].legend()
    names = sorted({g["group"] for l in L for g in l["groups"]})
    for n in names:
        ys = [next((g["ratio"] if g["ratio"] is not None and not g["identity"] else np.nan
                    for g in l["groups"] if g["group"] == n), np.nan) for l in L]
        ax[1].plot(idx, ys, ".-", label=n if len(names) <= 8 else None)
    ax[1].set(title="chosen scale ratio per group (gaps: identity kept)", xlabel="layer", ylabel="ratio", ylim=(-0.05, 1))
    if len(names) <= 8:
        ax[1].legend(fontsize=7)
    lins = sorted({c["linear"] for l in L for c in l["clips"] if "clip_ratio" in c})
    for n in lins:
        ys = [next((c["clip_ratio"]["mean"] for c in l["clips"] if c["linear"] == n and "clip_ratio" in c), np.nan)
              for l in L]
        ax[2].plot(idx, ys, ".-", label=n if len(lins) <= 8 else None)
    ax[2].set(title="mean clip (max_val / group max |w|)", xlabel="layer", ylabel="ratio")
    if len(lins) <= 8:
        ax[2].legend(fontsize=7)
    from matplotlib.ticker import MaxNLocator

    for a in ax:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{rep['model_type']} w{rep['quant_config'].get('w_bit')} g{rep['quant_config'].get('q_group_size')}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(model, out_dir: str, png: bool = True) -> Dict[str, Optional[str]]:
    """Writes out_dir/report.json (and report.png with matplotlib); returns their paths (png None
    when matplotlib is missing or png=False)."""
    rep = build_report(model)
    os.makedirs(out_dir, exist_ok=True)
    jp = os.path.join(out_dir, "report.json")
    tmp = jp + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(rep, f, indent=1, allow_nan=False)
        os.replace(tmp, jp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    pp = _plot(rep, os.path.join(out_dir, "report.png")) if png else None
    return {"json": jp, "png": pp}
