"""The quality report (quantize(report=True) -> report.json / report.png) and export_compatible end to
end: the folded fp16 checkpoint equals the float model transformed by the recorded AWQ scales and
clips, applied here independently."""
import json

import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from awq.io.safetensors import SafetensorsFile, save_file
from awq.report import build_report, write_report
from tests.tiny import CharTokenizer, calib_texts, write_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rep") / "m"
    write_tiny_model(str(folder))
    return str(folder)


def _quant(folder, **kw):
    m = AutoAWQForCausalLM.from_pretrained(folder)
    m.quantize(CharTokenizer(), quant_config={"q_group_size": 32}, calib_data=calib_texts(24),
               max_calib_seq_len=64, max_calib_samples=24, **kw)
    return m


def test_report_json_and_png(tiny, tmp_path):
    m = _quant(tiny, report=True)
    paths = write_report(m, str(tmp_path / "r"))
    rep = json.loads(open(paths["json"]).read())
    assert rep["num_layers"] == m.cfg.num_layers == len(rep["layers"])
    tot_awq = tot_rtn = 0.0
    for layer in rep["layers"]:
        e = layer["errors"]
        assert 0 < e["awq"] < 1 and 0 < e["rtn"] < 1
        tot_awq += e["awq"]
        tot_rtn += e["rtn"]
        assert {g["group"] for g in layer["groups"]} and all(0 <= c["clip_ratio"]["min"] <= c["clip_ratio"]["max"] <= 1.0001
                                                            for c in layer["clips"])
    # the tiny model has planted activation outliers: AWQ must beat plain RTN overall
    assert tot_awq < tot_rtn
    if paths["png"] is not None:
        assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    else:
        pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="report"):
        build_report(AutoAWQForCausalLM.from_pretrained(tiny))


def test_export_compatible_folds_scales_and_clips(tiny, tmp_path):
    m = _quant(tiny, export_compatible=True)
    out = tmp_path / "folded"
    m.save_quantized(str(out))
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["torch_dtype"] == "float16"
    folded = SafetensorsFile(str(out / "model.safetensors"))
    assert not any(k.endswith((".qweight", ".qzeros", ".scales")) for k in folded.keys())
    src = SafetensorsFile(str(__import__("pathlib").Path(tiny) / "model.safetensors"))
    assert set(folded.keys()) == set(src.keys())

    # Independently apply the recorded transform to the source weights (float64).
    t = {k: np.asarray(src.get_float32(k), np.float64) for k in src.keys()}
    spec = m.spec
    for i, (plan, rep) in enumerate(zip(m.plans, m.reports)):
        p = spec.layer_prefix(i)
        for g in plan.groups:
            name = f"{g.prev}->[{','.join(g.linears)}]"
            if name not in rep.scales:
                continue
            s = rep.scales[name].astype(np.float64)
            pw = t[p + g.prev + ".weight"]
            if pw.ndim == 1:
                t[p + g.prev + ".weight"] = pw / s
            else:
                pw = pw.copy()
                pw[-len(s):] /= s[:, None]
                t[p + g.prev + ".weight"] = pw
            for lin in g.linears:
                t[p + lin + ".weight"] = t[p + lin + ".weight"] * s[None, :]
        for lin, mv in rep.clips.items():
            w = t[p + lin + ".weight"]
            N, K = w.shape
            G = mv.shape[1]
            lim = np.asarray(mv, np.float64)[:, :, None]
            t[p + lin + ".weight"] = np.clip(w.reshape(N, G, K // G), -lim, lim).reshape(N, K)
    assert any(rep.scales for rep in m.reports) and any(rep.clips for rep in m.reports)
    mine = tmp_path / "mine"
    mine.mkdir()
    save_file({k: v.astype(np.float16) for k, v in t.items()}, str(mine / "model.safetensors"))
    (mine / "config.json").write_text((out / "config.json").read_text())
    for k in folded.keys():
        np.testing.assert_allclose(folded.get_float32(k), t[k].astype(np.float16).astype(np.float32),
                                   rtol=2e-3, atol=2e-3 * np.abs(t[k]).max(), err_msg=k)
    ids = np.asarray([CharTokenizer().encode("the quick brown fox jumps")], np.int64)
    a = AutoAWQForCausalLM.from_pretrained(str(out)).forward(ids)
    b = AutoAWQForCausalLM.from_pretrained(str(mine)).forward(ids)
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2 * np.abs(b).max())
    # the scales alone change nothing and the clips (chosen for 4-bit, kept in float here) move the
    # tiny model's logits by about 13%: the folded model stays near the float one
    f = AutoAWQForCausalLM.from_pretrained(tiny).forward(ids)
    assert np.linalg.norm(a - f) / np.linalg.norm(f) < 0.3
