"""The AWQ quantizer loop (REFERENCE.md s2), layer by layer, over the C core.

Per decoder layer: (1) forward the float layer on all calibration blocks in chunks, caching the
input of every linear; its float output is the next layer's input; (2) per scaling group, search
the scale ratio on a grid of n_grid=20 points plus the identity, keeping the first minimum of the
output MSE; apply it (prev op / s, consumers * s, cached inputs / s); (3) clip search for every
linear but q/k; (4) quantize (and pack 4-bit to the AutoAWQ GEMM layout).

With resume_dir every finished layer is persisted (awq/quantize/resume.py); a rerun loads the
finished layers, replays the float forwards of those layers to rebuild the next layer's input, and
continues, ending with the same results bit for bit.

Two deliberate differences from AutoAWQ, both fixing its defects: the identity scale (no scaling)
is a candidate, evaluated first, so AWQ never does worse than plain RTN on the searched loss; and
group_size -1 means one group spanning in_features, everywhere. For groups whose loss is the output
of a single linear (v->o, up->down) the MSE is computed from the Gram matrix X^T X (the same number,
computed in N*K^2 instead of T*K*N; KERNELS.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from awq._backend import C
from awq.runtime.layers import attn_forward, block_rope, layer_forward, mlp_forward
from awq.utils.progress import progress

N_GRID = 20
N_SAMPLE_TOKENS_CLIP = 512


class QuantizationError(RuntimeError):
    """The scale or clip search could not produce a finite result."""


@dataclass
class QuantizedLinear:
    """Result for one linear. 4-bit: packed GEMM tensors. Other widths: the dequantized weight."""

    in_features: int
    out_features: int
    w_bit: int
    group_size: int
    bias: Optional[np.ndarray]
    qweight: Optional[np.ndarray] = None  # int32 [K, N/8]
    qzeros: Optional[np.ndarray] = None  # int32 [G, N/8]
    scales: Optional[np.ndarray] = None  # float16 [G, N]
    dequantized: Optional[np.ndarray] = None  # float32 [N, K] (w_bit != 4)


@dataclass
class LayerReport:
    index: int
    ratios: Dict[str, float] = field(default_factory=dict)  # group name -> chosen ratio (-1 identity)
    losses: Dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    # The applied transform, for the quality report and for reproducing export_compatible outputs:
    scales: Dict[str, np.ndarray] = field(default_factory=dict)  # group name -> s [K] (only non-identity)
    clips: Dict[str, np.ndarray] = field(default_factory=dict)  # linear -> max_val [N, G]
    # Relative output MSE of the whole layer against its float forward (quantize(report=True)):
    errors: Dict[str, float] = field(default_factory=dict)  # "awq" / "rtn" -> ||y_q - y||^2 / ||y - x||^2
    clip_ratios: Dict[str, np.ndarray] = field(default_factory=dict)  # linear -> max_val / group max|w|


def _group_name(g) -> str:
    return f"{g.prev}->[{','.join(g.linears)}]"


def quantize_weight(w: np.ndarray, w_bit: int, group_size: int, zero_point: bool,
                    bias: Optional[np.ndarray], name: str) -> QuantizedLinear:
    """Quantizes one fp32 weight [N, K]; 4-bit is packed to the AutoAWQ GEMM layout."""
    N, K = w.shape
    try:
        if w_bit != 4:
            dq = C.pseudo_quantize(w, group_size, w_bit, zero_point)
            return QuantizedLinear(K, N, w_bit, group_size, bias, dequantized=dq)
        codes, scales, zeros = C.quantize_codes(w, group_size, w_bit, zero_point)
    except (FloatingPointError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from None
    if N % 8:
        raise ValueError(f"{name}: out_features {N} is not a multiple of 8, required by the AWQ GEMM packing")
    qweight = C.pack_gemm(np.ascontiguousarray(codes.T))
    qzeros = C.pack_gemm(np.ascontiguousarray(zeros.T))
    return QuantizedLinear(K, N, w_bit, group_size, bias, qweight=qweight, qzeros=qzeros,
                           scales=np.ascontiguousarray(scales.T).astype(np.float16))


class AwqQuantizer:
    def __init__(self, awq_model, model=None, tokenizer=None, w_bit=4, group_size=128, zero_point=True,
                 version="gemm", calib_data="pileval", split="train", text_column="text",
                 duo_scaling=True, modules_to_not_convert=None, export_compatible=False,
                 apply_clip=True, n_parallel_calib_samples=None, max_calib_samples=128,
                 max_calib_seq_len=512, max_chunk_memory=1024 ** 3, rtn=False, verbose=True, device=None,
                 calib_dtype=None, resume_dir=None, report=False, report_blocks=16, **kwargs):
        if w_bit not in (2, 3, 4, 8):
            raise ValueError(f"w_bit must be one of 2, 3, 4, 8, got {w_bit!r}")
        if not (group_size == -1 or (isinstance(group_size, int) and group_size > 0)):
            raise ValueError(f"q_group_size must be a positive integer or -1, got {group_size!r}")
        self.awq_model = awq_model
        self.spec, self.cfg = awq_model.spec, awq_model.cfg
        self.tokenizer = tokenizer
        self.w_bit, self.group_size, self.zero_point = w_bit, group_size, bool(zero_point)
        self.version = version
        self.calib_data, self.split, self.text_column = calib_data, split, text_column
        self.duo_scaling, self.apply_clip = duo_scaling, apply_clip
        self.export_compatible = export_compatible
        self.modules_to_not_convert = list(modules_to_not_convert or [])
        self.n_parallel_calib_samples = n_parallel_calib_samples
        self.max_calib_samples, self.max_calib_seq_len = max_calib_samples, max_calib_seq_len
        self.max_chunk_memory = max_chunk_memory
        self.rtn, self.verbose = rtn, verbose
        self.resume_dir = None if resume_dir is None else os.fspath(resume_dir)
        self.reports: List[LayerReport] = []
        self.collect_errors, self.report_blocks = bool(report), int(report_blocks)
        self.compute_dtype = "float32"  # what the backend computes in (set for cuda below)
        self.be = self._make_backend(device, calib_dtype)

    def _make_backend(self, device, calib_dtype):
        """CPU (fp32) by default; "cuda[:N]": the GPU in calib_dtype, by default the checkpoint's
        16-bit dtype (fp32 checkpoints stay fp32)."""
        from awq._backend import cuda_index
        from awq.quantize.backend import CpuBackend, CudaBackend

        if device in (None, "cpu"):
            return CpuBackend()
        if not (isinstance(device, str) and device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        if calib_dtype is None:
            first = next(iter(self.awq_model.plans[0].linears))
            stored = self.awq_model.ckpt.dtype(self.spec.layer_prefix(0) + first + ".weight")
            calib_dtype = {"F16": "float16", "BF16": "bfloat16"}.get(stored, "float32")
        self.compute_dtype = str(calib_dtype).removeprefix("torch.")
        return CudaBackend(calib_dtype, cuda_index(device))

    # ---- helpers ---------------------------------------------------------------------------
    def _g(self, K: int) -> int:
        return K if self.group_size == -1 else self.group_size

    def converted(self, layer_idx: int, name: str) -> bool:
        """False for linears listed in modules_to_not_convert (AutoAWQ's block-relative substring rule,
        which a substring match of the full dotted name includes, and full paths match too) and for
        MoE routers, which stay in floating point."""
        if name in self.awq_model.plans[layer_idx].not_quantized:
            return False
        full = self.spec.layer_prefix(layer_idx) + name
        return not any(m in full for m in self.modules_to_not_convert)

    def _chunk_blocks(self, n_blocks: int, T: int) -> int:
        if self.n_parallel_calib_samples:
            return max(1, min(n_blocks, int(self.n_parallel_calib_samples)))
        c = self.cfg
        per_block = T * (3 * c.intermediate_size + 6 * c.hidden_size + 2 * c.num_heads * c.head_dim) * 4
        return max(1, min(n_blocks, int(self.max_chunk_memory // max(per_block, 1))))

    # ---- main loop -------------------------------------------------------------------------
    def quantize(self):
        """Returns (layers, reports): per layer a dict of tensors ready for the runtime/save. With
        resume_dir, layers finished by an earlier run of the same call are loaded, not recomputed."""
        if self.group_size != -1:  # fail before any calibration work, naming the linear
            for lin in self.awq_model.plans[-1].quantized_linears() + self.awq_model.plans[0].quantized_linears():
                K = self.awq_model._expected_shape(lin, 0 if lin in self.awq_model.plans[0].linears else -1)[1]
                if K % self.group_size:
                    raise ValueError(
                        f"q_group_size {self.group_size} does not divide in_features {K} of {lin}; "
                        f"use a group size that divides every layer width (or -1)")
        if self.rtn:
            blocks = None
        else:
            from awq.quantize.calib import get_calib_dataset

            blocks = get_calib_dataset(self.calib_data, self.tokenizer, self.max_calib_samples,
                                       self.max_calib_seq_len, self.split, self.text_column)
            if self.verbose:
                print(f"awq: calibrating on {blocks.shape[0]} blocks x {blocks.shape[1]} tokens", flush=True)
        store = None
        if self.resume_dir is not None:
            from awq.quantize.resume import ResumeStore

            log = (lambda m: print(m, flush=True)) if self.verbose else (lambda m: None)
            store = ResumeStore(self.resume_dir, self.fingerprint(blocks), log).open()
        try:
            return self._run(blocks, store)
        finally:
            if store is not None:
                store.close()

    def _run(self, blocks, store):
        """The layer loop from the first layer the store does not hold (every layer without one)."""
        cfg = self.cfg
        layers_out, start = [], 0
        if store is not None:
            for i in range(cfg.num_layers):  # the finished prefix; the first unusable layer ends it
                got = store.load(i, self.expected_layer(i))
                if got is None:
                    break
                layers_out.append(got[0])
                self.reports.append(got[1])
            start = len(layers_out)
            if self.verbose and start == cfg.num_layers:
                print(f"awq: all {start} layers already done in {store.folder}; nothing to compute", flush=True)
            elif self.verbose and start:
                print(f"awq: resuming at layer {start} of {cfg.num_layers} "
                      f"(layers 0..{start - 1} loaded from {store.folder})", flush=True)
        x = None
        if blocks is not None and start < cfg.num_layers:
            x = self.be.activations(self.awq_model.embed_tokens(blocks))
            # Resuming at layer k needs x_k, the float output of layers 0..k-1: replay their float
            # forwards exactly as _awq_layer runs them (same code, same chunks, so the same bits).
            for i in range(start):
                self.be.begin_layer()
                x = self._float_forward(i, self._to_backend(i, self.awq_model.load_layer_f32(i)), x)
        bar = progress(range(start, cfg.num_layers), desc="AWQ" if not self.rtn else "RTN", disable=not self.verbose)
        for i in bar:
            t0 = time.time()
            self.be.begin_layer()
            host = self.awq_model.load_layer_f32(i)
            tensors = self._to_backend(i, host)
            report = LayerReport(i)
            x_in = x
            if blocks is not None:
                x = self._awq_layer(i, tensors, x, report)
            layer = self._finish_layer(i, tensors)
            if self.collect_errors and blocks is not None:
                self._layer_errors(i, host, layer, x_in, report)
            report.seconds = time.time() - t0
            if store is not None:
                store.save(i, layer, report)
            layers_out.append(layer)
            self.reports.append(report)
        return layers_out, self.reports

    # ---- resume ------------------------------------------------------------------------------
    def fingerprint(self, blocks) -> dict:
        """What makes two runs produce the same layers: the model files, the quant config, every
        option the search reads, the backend and the calibration blocks. Stored in resume_dir's
        manifest; a resumed run must match it exactly."""
        from awq.quantize.resume import blocks_digest, files_identity

        m = self.awq_model
        return {
            "model": {"path": os.path.realpath(m.model_path), "files": files_identity(m.ckpt.files),
                      "config_sha256": hashlib.sha256(json.dumps(m.config, sort_keys=True).encode()).hexdigest()},
            "quant_config": {"w_bit": self.w_bit, "q_group_size": self.group_size, "zero_point": self.zero_point,
                             "version": str(self.version).lower()},
            "options": {"duo_scaling": bool(self.duo_scaling), "apply_clip": bool(self.apply_clip),
                        "n_grid": N_GRID, "n_sample_tokens_clip": N_SAMPLE_TOKENS_CLIP,
                        "max_calib_samples": self.max_calib_samples, "max_calib_seq_len": self.max_calib_seq_len,
                        "n_parallel_calib_samples": self.n_parallel_calib_samples,
                        "max_chunk_memory": self.max_chunk_memory,
                        "modules_to_not_convert": self.modules_to_not_convert,
                        "export_compatible": bool(self.export_compatible), "rtn": bool(self.rtn)},
            "backend": {"name": self.be.name, "dtype": self.compute_dtype},
            "calibration": blocks_digest(blocks),
            "num_layers": self.cfg.num_layers,
        }

    def expected_layer(self, i: int):
        """(key order of _finish_layer's dict, {tensor: (dtype, shape)}, linear layout) of layer i's
        resume file, derived from the config and the options, never from the file itself."""
        from awq.quantize.resume import F16, F32, I32

        spec, ck, m = self.spec, self.awq_model.ckpt, self.awq_model
        order, want, layout = [], {}, {}
        plan = m.plans[i]
        for n, shape in plan.norms.items():
            order.append(n + ".weight")
            want[n + ".weight"] = (F32, tuple(shape))
            if spec.layer_prefix(i) + n + ".bias" in ck:
                order.append(n + ".bias")
                want[n + ".bias"] = (F32, tuple(ck.shape(spec.layer_prefix(i) + n + ".bias")))
        if plan.moe is not None and plan.moe.router_bias:
            order.append(plan.moe.router_bias)
            want[plan.moe.router_bias] = (F32, tuple(ck.shape(spec.layer_prefix(i) + plan.moe.router_bias)))
        for lin in plan.linears:
            order.append(lin)
            N, K = m._expected_shape(lin, i)
            if spec.layer_prefix(i) + lin + ".bias" in ck:
                want[lin + ".bias"] = (F32, (N,))
            if self.export_compatible or not self.converted(i, lin):
                layout[lin] = {"kind": "dense"}
                want[lin + ".weight"] = (F32, (N, K))
                continue
            g = self._g(K)
            layout[lin] = {"kind": "quantized", "w_bit": self.w_bit, "group_size": g,
                           "in_features": K, "out_features": N}
            if self.w_bit == 4:
                want[lin + ".qweight"] = (I32, (K, N // 8))
                want[lin + ".qzeros"] = (I32, (K // g, N // 8))
                want[lin + ".scales"] = (F16, (K // g, N))
            else:
                want[lin + ".dequantized"] = (F32, (N, K))
        return order, want, layout

    def _to_backend(self, i: int, host: Dict[str, np.ndarray]) -> Dict:
        """Linear weights become backend masters (fp32 on the backend's device); norms and biases stay
        host arrays. Non-finite values are refused here, naming the tensor."""
        tensors = {}
        lins = self.awq_model.plans[i].linears
        for name, t in host.items():
            is_weight = name.endswith(".weight") and name[:-7] in lins
            if is_weight:
                t = self.be.master(t)
            if not (self.be.all_finite(t) if is_weight else np.isfinite(t).all()):
                h = self.be.to_host(t) if is_weight else t
                bad = int((~np.isfinite(h)).sum())
                raise FloatingPointError(
                    f"{self.spec.layer_prefix(i)}{name} has {bad} NaN/Inf values; cannot quantize")
            tensors[name] = t
        return tensors

    def _layer_modules(self, i: int, tensors: Dict[str, np.ndarray]) -> Dict:
        W = {}
        plan = self.awq_model.plans[i]
        for lin in plan.linears:
            W[lin] = self.be.linear(tensors[lin + ".weight"], tensors.get(lin + ".bias"))
        for name, t in tensors.items():  # norms (+ LayerNorm biases), router correction bias
            base = name.removesuffix(".weight").removesuffix(".bias")
            if base not in plan.linears:
                W[name.removesuffix(".weight")] = t
        return W

    def _float_forward(self, i: int, tensors: Dict, x, feats: Optional[Dict] = None):
        """Layer i's float forward on x [nb, T, D] in chunks -> its output, the next layer's input.
        With feats, the input of every linear is gathered into it (one [rows, K] array per capture
        key; MoE experts get only their routed rows). The resume replay calls this without feats:
        the same forwards, so the same bits."""
        spec, cfg, be = self.spec, self.cfg, self.be
        plan = self.awq_model.plans[i]
        nb, T, D = x.shape
        chunk = self._chunk_blocks(nb, T)
        W = self._layer_modules(i, tensors)
        out = be.empty(x.shape)
        parts: Dict = {}  # routed (MoE expert) captures: row counts vary, joined at the end
        for b0 in range(0, nb, chunk):
            b1 = min(nb, b0 + chunk)
            cap: Dict = {} if feats is not None else None
            y = layer_forward(spec, cfg, plan, W, be.rows(x, b0, b1), block_rope(cfg, b1 - b0, T), capture=cap,
                              ops=be.ops)
            be.set_rows(out, b0, b1, y)
            if feats is None:
                continue
            for name, a in cap.items():
                if isinstance(a, list):
                    parts.setdefault(name, []).extend(a)
                    continue
                if name not in feats:
                    feats[name] = be.empty((nb * T, a.shape[1]))
                be.set_rows(feats[name], b0 * T, b1 * T, a)
        for name, lst in parts.items():
            feats[name] = lst[0] if len(lst) == 1 else be.ops.concat_rows(lst)
        return out

    def _awq_layer(self, i: int, tensors: Dict[str, np.ndarray], x, report: LayerReport):
        plan = self.awq_model.plans[i]
        nb, T, D = x.shape
        chunk = self._chunk_blocks(nb, T)
        # (1) float forward with captured linear inputs, before any scaling or clipping: its output
        # (float weights throughout) feeds the next layer.
        feats: Dict = {}
        out = self._float_forward(i, tensors, x, feats)
        # (2) scale search and application, group by group.
        for g in plan.groups:
            if g.only_if_same_shape and not self._same_shape(g, tensors):
                continue  # GQA rule: v and o_proj differ in shape
            key = plan.feat_key[g.linears[0]]
            if key not in feats:  # an MoE expert that no calibration token was routed to
                report.ratios[_group_name(g)], report.losses[_group_name(g)] = float("nan"), float("nan")
                continue
            s, ratio, loss = self._search_scale(i, g, tensors, feats[key], T, chunk)
            report.ratios[_group_name(g)], report.losses[_group_name(g)] = ratio, loss
            if s is not None:
                self._apply_scale(i, g, tensors, feats, s)
                report.scales[_group_name(g)] = np.asarray(s, np.float32)
        # (3) clip search.
        if self.apply_clip:
            for lin in plan.linears:
                if any(t in lin for t in ("q_", "k_", "query", "key", "Wqkv")) or not self.converted(i, lin):
                    continue
                if plan.feat_key[lin] not in feats:
                    continue  # unrouted expert: nothing to measure the clip on; plain min/max quantization
                report.clips[lin] = self._clip(i, lin, tensors, feats[plan.feat_key[lin]])
                if self.collect_errors:
                    report.clip_ratios[lin] = self._clip_ratio
        return out

    def _same_shape(self, g, tensors) -> bool:
        """The GQA rule: scale v -> o only when the v rows feeding o are as many as o's inputs."""
        o_in = tensors[g.linears[0] + ".weight"].shape[1]
        pw = tensors[g.prev + ".weight"]
        if g.prev == self.spec.qkv:
            return self.cfg.num_kv_heads == self.cfg.num_heads and pw.shape[0] >= o_in
        return pw.shape == tensors[g.linears[0] + ".weight"].shape

    # ---- scale search ----------------------------------------------------------------------
    def _search_scale(self, i, g, tensors, x_in, T: int, chunk: int):
        """Returns (scales or None for identity, chosen ratio, loss)."""
        spec, be = self.spec, self.be
        weights = [tensors[l + ".weight"] for l in g.linears]
        K = weights[0].shape[1]
        gs = self._g(K)
        x_mean = be.abs_mean(x_in)
        w_mean = be.w_mean(weights, gs)

        loss_fn = self._loss_fn(i, g, tensors, x_in, T, chunk)
        best, best_ratio, best_s = np.inf, None, None
        candidates = [(-1.0, None)]
        for k in range(N_GRID):
            r = k / N_GRID
            if self.duo_scaling:
                s = np.power(x_mean, r) / (np.power(w_mean, 1 - r) + 1e-4)
            else:
                s = np.power(x_mean, r)
            s = np.clip(s, 1e-4, None)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                s = s / np.sqrt(s.max() * s.min())
            s[~np.isfinite(s)] = 1.0
            candidates.append((r, s.astype(np.float32)))
        for r, s in candidates:
            cand = {}
            for name, w in zip(g.linears, weights):
                cand[name] = w if not self.converted(i, name) else be.candidate(
                    w, s, gs, self.w_bit, self.zero_point)
            loss = loss_fn(cand)
            if loss < best:  # NaN never wins; first strict minimum kept (AutoAWQ)
                best, best_ratio, best_s = loss, r, s
        if best_ratio is None:
            raise QuantizationError(
                f"layer {i} ({spec.layer_prefix(i)}), scaling group {_group_name(g)}: every candidate "
                "scale gave a NaN loss; the layer's activations or weights are not finite")
        return best_s, best_ratio, float(best)

    def _loss_fn(self, i, g, tensors, x_in, T, chunk):
        """Builds loss(candidate weights) = mean squared error of the inspected module's output."""
        spec, cfg, be = self.spec, self.cfg, self.be
        plan = self.awq_model.plans[i]
        if g.inspect in ("attn", "mlp", "layer"):
            W = self._layer_modules(i, tensors)
            ntok = x_in.shape[0]
            rows = chunk * T
            ropes = {}

            def run(mods, a0, a1):
                h = be.rows(x_in, a0, a1)
                if g.inspect == "mlp":
                    return mlp_forward(spec, cfg, plan, mods, h, ops=be.ops)
                nbk = (a1 - a0) // T
                if nbk not in ropes:
                    ropes[nbk] = block_rope(cfg, nbk, T)
                a = attn_forward(spec, cfg, plan, mods, h, nbk, T, ropes[nbk], ops=be.ops)
                if g.inspect == "layer":  # parallel block: attention + MLP of one normed input
                    a = be.ops.add(a, mlp_forward(spec, cfg, plan, mods, h, ops=be.ops))
                return a

            ref = [run(W, a0, min(ntok, a0 + rows)) for a0 in range(0, ntok, rows)]

            def loss(cand):
                mods = dict(W)
                for name, w in cand.items():
                    mods[name] = be.linear(w, tensors.get(name + ".bias"))
                tot = 0.0
                for j, a0 in enumerate(range(0, ntok, rows)):
                    tot += be.sq_diff_sum(run(mods, a0, min(ntok, a0 + rows)), ref[j])
                return tot / (ntok * cfg.hidden_size)

            return loss
        lin_loss = be.single_linear_loss(x_in, tensors[g.inspect + ".weight"])
        return lambda cand: lin_loss(cand[g.inspect])

    def _apply_scale(self, i, g, tensors, feats, s: np.ndarray):
        """prev_op / s (norm weight, or the LAST len(s) output rows and bias of a linear);
        consumers' input columns * s; the cached input / s."""
        pw = tensors[g.prev + ".weight"]
        n = s.shape[0]
        if pw.ndim == 1:  # norm
            if self.spec.norm_kind == "rms_unit":
                tensors[g.prev + ".weight"] = ((pw + 1.0) / s - 1.0).astype(np.float32)
            else:
                tensors[g.prev + ".weight"] = (pw / s).astype(np.float32)
            if g.prev + ".bias" in tensors:
                tensors[g.prev + ".bias"] = (tensors[g.prev + ".bias"] / s).astype(np.float32)
        else:  # linear: rows produce the consumers' input channels
            tensors[g.prev + ".weight"] = self.be.unscale_out_rows(pw, s)
            if g.prev + ".bias" in tensors:
                b = tensors[g.prev + ".bias"].copy()
                b[-n:] /= s
                tensors[g.prev + ".bias"] = b
        for lin in g.linears:
            tensors[lin + ".weight"] = self.be.scale_in(tensors[lin + ".weight"], s)
        plan = self.awq_model.plans[i]
        for key in dict.fromkeys(plan.feat_key[lin] for lin in g.linears):  # each distinct capture once
            if key in feats:
                self.be.unscale_(feats[key], s)

    # ---- clip ------------------------------------------------------------------------------
    def _clip(self, i, lin, tensors, x_in):
        w = tensors[lin + ".weight"]
        gs = self._g(w.shape[1])
        step = max(1, x_in.shape[0] // N_SAMPLE_TOKENS_CLIP)
        max_val = self.be.clip_search(w, x_in, step, gs, self.w_bit, self.zero_point, N_GRID, 0.5)
        if self.collect_errors:  # the report shows how far each group was clipped
            wh = np.asarray(self.be.to_host(w), np.float32)
            N, K = wh.shape
            self._clip_ratio = np.asarray(self.be.to_host(max_val), np.float32) / np.maximum(
                np.abs(wh.reshape(N, K // gs, gs)).max(axis=2), 1e-30)
        tensors[lin + ".weight"] = self.be.clamp(w, max_val, gs)
        return np.asarray(self.be.to_host(max_val) if not isinstance(max_val, np.ndarray) else max_val, np.float32)

    def _layer_errors(self, i: int, host: Dict, layer: Dict, x, report: LayerReport):
        """Relative output MSE of layer i quantized with AWQ (what was produced) and with plain RTN
        (the original weights, no scale, no clip), against the float layer, on the first
        report_blocks calibration blocks; computed on the CPU."""
        from awq.models.base import _runtime_modules
        from awq.runtime.layers import DenseLinear

        spec, cfg, plan = self.spec, self.cfg, self.awq_model.plans[i]
        xb = np.ascontiguousarray(self.be.to_host(self.be.rows(x, 0, min(x.shape[0], self.report_blocks))),
                                  np.float32) if not isinstance(x, np.ndarray) else x[: self.report_blocks]
        nb, T, _ = xb.shape
        ropes = block_rope(cfg, nb, T)
        norms = {k.removesuffix(".weight"): v for k, v in host.items()
                 if k.removesuffix(".weight").removesuffix(".bias") not in plan.linears}
        fl = dict(norms)
        rtn = dict(norms)
        for lin in plan.linears:
            w, b = host[lin + ".weight"], host.get(lin + ".bias")
            fl[lin] = DenseLinear(w, b)
            if self.converted(i, lin):
                K = w.shape[1]
                rtn.update(_runtime_modules({lin: quantize_weight(w, self.w_bit, self._g(K), self.zero_point, b, lin)}))
            else:
                rtn[lin] = fl[lin]
        ref = layer_forward(spec, cfg, plan, fl, xb, ropes)
        den = float(np.sum(np.square(ref - xb, dtype=np.float64)))  # the layer's own contribution
        for key, mods in (("awq", _runtime_modules(layer)), ("rtn", rtn)):
            y = layer_forward(spec, cfg, plan, mods, xb, ropes)
            report.errors[key] = float(np.sum(np.square(y - ref, dtype=np.float64)) / max(den, 1e-30))

    # ---- quantize --------------------------------------------------------------------------
    def _finish_layer(self, i: int, tensors: Dict[str, np.ndarray]) -> Dict:
        spec = self.spec
        out: Dict = {}
        # Norms and biases are saved in fp16; round them now so the in-memory model computes what
        # the saved checkpoint will.
        r16 = lambda a: None if a is None else a.astype(np.float16).astype(np.float32)  # noqa: E731
        plan = self.awq_model.plans[i]
        for n in plan.norms:
            out[n + ".weight"] = r16(tensors[n + ".weight"])
            if n + ".bias" in tensors:
                out[n + ".bias"] = r16(tensors[n + ".bias"])
        if plan.moe is not None and plan.moe.router_bias:
            out[plan.moe.router_bias] = tensors[plan.moe.router_bias]
        for lin in plan.linears:
            w, b = tensors[lin + ".weight"], r16(tensors.get(lin + ".bias"))
            if self.export_compatible or not self.converted(i, lin):
                # rounded to fp16 as it will be saved, so the in-memory model computes what the file holds
                out[lin] = DenseWeight(r16(self.be.to_host(w)), b)
            else:
                K = w.shape[1]
                out[lin] = self.be.quantize(w, self.w_bit, self._g(K), self.zero_point, b,
                                            spec.layer_prefix(i) + lin)
        return out


@dataclass
class DenseWeight:
    """A linear kept in floating point (export_compatible, or listed in modules_to_not_convert)."""

    weight: np.ndarray  # float32 [N, K]
    bias: Optional[np.ndarray]
