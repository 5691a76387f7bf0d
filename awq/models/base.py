"""The model object behind AutoAWQ's API: from_pretrained / quantize / save_quantized /
from_quantized / forward / generate. No math here: the quantizer, runtime and I/O do the work.

One class serves every architecture; `awq.models.auto` makes a named subclass per spec row so
`AWQ_CAUSAL_LM_MODEL_MAP` looks as AutoAWQ users know it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Dict, List, Optional

import numpy as np

from awq.io.checkpoint import atomic_folder, check_writable, open_checkpoint, parse_size, read_json, write_checkpoint
from awq.models.config import ConfigError, ModelConfig
from awq.runtime.layers import AWQLinear, DenseLinear, F16Linear, make_linear
from awq.runtime.model import DecoderLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")
IGNORED_FLAGS = {"use_exllama": False, "use_exllama_v2": False, "use_ipex": False,
                 "batch_size": 1, "max_memory": None, "offload_folder": None, "low_cpu_mem_usage": True,
                 "use_cache": False, "torch_dtype": "auto", "trust_remote_code": True}


def resolve_model_path(path: str, download_kwargs: Optional[dict] = None) -> str:
    """A local folder as is; otherwise a Hub id fetched with huggingface_hub when possible."""
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise NotADirectoryError(f"{path!r} is a file; expected a model folder (config.json + *.safetensors)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"{path!r} is not a local folder, and huggingface_hub is not installed to fetch it from the "
            "Hub (pip install huggingface_hub)") from None
    try:
        return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
                                 **(download_kwargs or {}))
    except Exception as e:
        raise FileNotFoundError(f"{path!r} is not a local folder and could not be fetched from the Hub "
                                f"({type(e).__name__}: {e})") from None


def read_model_config(folder: str) -> dict:
    return read_json(os.path.join(folder, "config.json"), "model config")


def _note_ignored(kwargs: dict):
    for k, v in kwargs.items():
        if k in IGNORED_FLAGS and v != IGNORED_FLAGS[k]:
            print(f"awq: {k}={v!r} has no effect in awq; ignored", file=sys.stderr)


def _check_device(device_map):
    """Returns the device the model runs (and quantizes) on: "cpu" or "cuda[:N]"."""
    if device_map in (None, "cpu", "auto", "balanced", "sequential") or device_map == {"": "cpu"}:
        return "cpu"
    if isinstance(device_map, str) and device_map.startswith("cuda"):
        return device_map
    raise ValueError(f"device_map={device_map!r}: use None/'cpu' or 'cuda[:N]' (one device)")


def normalize_quant_config(qc: Optional[dict]) -> dict:
    """AutoAWQ quant_config (zero_point, q_group_size, w_bit, version, modules_to_not_convert)."""
    qc = dict(qc or {})
    out = {
        "zero_point": qc.pop("zero_point", True),
        "q_group_size": qc.pop("q_group_size", qc.pop("group_size", 128)),
        "w_bit": qc.pop("w_bit", qc.pop("bits", 4)),
        "version": str(qc.pop("version", "gemm")).lower(),
        "modules_to_not_convert": qc.pop("modules_to_not_convert", None),
    }
    qc.pop("quant_method", None)
    if qc:
        raise ValueError(f"unknown quant_config keys: {sorted(qc)}")
    if out["version"] != "gemm":
        raise ValueError(f"quant_config version {out['version']!r}: only 'gemm' is written by awq")
    g = out["q_group_size"]
    if isinstance(g, bool) or not isinstance(g, int) or not (g == -1 or g > 0):
        raise ValueError(f"q_group_size must be a positive integer or -1, got {g!r}")
    w = out["w_bit"]
    if isinstance(w, bool) or not isinstance(w, int) or w not in (2, 3, 4, 8):
        raise ValueError(f"w_bit must be one of the integers 2, 3, 4, 8, got {w!r}")
    if not isinstance(out["zero_point"], bool):
        raise ValueError(f"zero_point must be true or false, got {out['zero_point']!r}")
    m = out["modules_to_not_convert"]
    if m is not None and (not isinstance(m, list) or not all(isinstance(e, str) and e for e in m)):
        raise ValueError(f"modules_to_not_convert must be a list of non-empty strings, got {m!r}")
    return out


def module_matches(entry: str, full_name: str) -> bool:
    """True when any engine's rule for modules_to_not_convert would match. The rules are substring
    (vLLM, SGLang, transformers 4), start/end anchored (transformers 5) and block-relative substring
    (AutoAWQ); each of the others implies a substring match of the full dotted name, so that one
    test covers all of them."""
    return entry in full_name


class BaseAWQForCausalLM:
    spec = None  # set per architecture by awq.models.auto

    def __init__(self, model_path: str, config: dict, ckpt, is_quantized: bool, quant_config: dict,
                 layers: Optional[List[Dict]] = None):
        self.model_path = model_path
        self.config = config
        self.ckpt = ckpt
        self.spec = _resolve_spec(type(self).spec, config, ckpt)
        self.cfg = ModelConfig.from_dict(config, self.spec.config_adapter, default_act=self.spec.act,
                                         default_eps=1e-5 if self.spec.norm_kind == "layernorm" else 1e-6)
        self.plans = [self.spec.plan(self.cfg, i) for i in range(self.cfg.num_layers)]
        self.is_quantized = is_quantized
        self.quant_config = quant_config
        self._layers = layers  # None: read float layers from the checkpoint
        self._float_cache: Dict[int, Dict] = {}  # converted float layers (non-fp16 checkpoints)
        self.run_device = "cpu"  # where forward/generate and quantize run: "cpu" or "cuda[:N]"
        self.max_seq_len: Optional[int] = None
        self._tokenizer = None
        self.reports = []
        self._check_tensors()
        self._runtime: Optional[DecoderLM] = None
        self.fuse_layers = True  # generate() on cuda through the fused runtime (awq/runtime/fused.py)
        self._fused = None  # FusedGpuLM once built, False when the model cannot be fused

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_path, model_type=None, torch_dtype="auto", trust_remote_code=True,
                        safetensors=True, device_map=None, download_kwargs=None, low_cpu_mem_usage=True,
                        use_cache=False, **model_init_kwargs):
        device = _check_device(device_map)
        _note_ignored({"torch_dtype": torch_dtype, **model_init_kwargs})
        folder = resolve_model_path(model_path, download_kwargs)
        config = read_model_config(folder)
        if config.get("quantization_config"):
            raise ValueError(f"{folder} holds an already quantized checkpoint; load it with from_quantized")
        ckpt = open_checkpoint(folder)
        model = cls(folder, config, ckpt, False, {})
        model.run_device = device
        return model

    @classmethod
    def from_quantized(cls, quant_path, model_type=None, quant_filename="", max_seq_len=2048,
                       trust_remote_code=True, fuse_layers=True, use_exllama=False, use_exllama_v2=False,
                       use_ipex=False, batch_size=1, safetensors=True, device_map="balanced", max_memory=None,
                       offload_folder=None, download_kwargs=None, **config_kwargs):
        device = _check_device(device_map)
        _note_ignored({"use_exllama": use_exllama, "use_exllama_v2": use_exllama_v2, "use_ipex": use_ipex,
                       "batch_size": batch_size, "max_memory": max_memory, "offload_folder": offload_folder})
        folder = resolve_model_path(quant_path, download_kwargs)
        config = read_model_config(folder)
        qc = load_quant_config(folder, config)
        ckpt = open_checkpoint(folder, quant_filename or None)
        model = cls(folder, config, ckpt, True, qc)
        model._layers = [model._load_quantized_layer(i) for i in range(model.cfg.num_layers)]
        model.max_seq_len = max_seq_len
        model.run_device = device
        model.fuse_layers = bool(fuse_layers)
        return model

    # ---- tensors -----------------------------------------------------------------------------
    def _name(self, i: int, local: str) -> str:
        return self.spec.layer_prefix(i) + local

    def _check_tensors(self):
        """Fails early, naming the tensor, when the checkpoint lacks what the spec needs."""
        spec, ck = self.spec, self.ckpt
        for name in (spec.embed, spec.final_norm, spec.pos_embed, spec.embed_norm):
            if name and name not in ck:
                raise ValueError(f"{self.model_path}: missing tensor {name} (model_type {spec.model_type!r})")
        if len(ck.shape(spec.embed)) != 2:
            raise ValueError(f"{spec.embed} must be 2-D, got shape {ck.shape(spec.embed)}")
        V, D = ck.shape(spec.embed)
        from awq.models.config import text_config

        tie = self.config.get("tie_word_embeddings", text_config(self.config).get("tie_word_embeddings"))
        if spec.lm_head not in ck and tie is False:  # an absent key means the class default (often tied)
            raise ValueError(f"{self.model_path}: missing tensor {spec.lm_head} (config.json says the head is not "
                             "tied to the embeddings)")
        if D != self.cfg.hidden_size:
            raise ValueError(f"{spec.embed} has hidden size {D}, config says {self.cfg.hidden_size}")
        for i in sorted({0, self.cfg.num_layers - 1}):
            for n, shape in self.plans[i].norms.items():
                parts = spec.norm_tensors(n, shape)
                for t in parts:
                    name = self._name(i, t)
                    if name not in ck:
                        raise ValueError(f"{self.model_path}: missing tensor {name}")
                    want = shape if len(parts) == 1 else shape[1:]
                    if tuple(ck.shape(name)) != want:
                        raise ValueError(f"{name}: shape {tuple(ck.shape(name))}, expected {want} from config.json")

    def _expected_shape(self, lin: str, i: int = 0):
        """(out_features, in_features) of linear `lin` of layer i, from config.json."""
        return self.plans[i].linears[lin]

    def _layer_extras(self, i: int, as_f32=True) -> Dict[str, np.ndarray]:
        """Layer i's 1-D tensors: norm weights and biases (LayerNorm), the MoE router's correction bias."""
        ck, plan, out = self.ckpt, self.plans[i], {}
        for n, shape in plan.norms.items():
            parts = self.spec.norm_tensors(n, shape)
            if len(parts) == 1:
                out[n + ".weight"] = ck.get_float32(self._name(i, parts[0]))
            else:  # one tensor per head, stacked to [H, d]
                out[n + ".weight"] = np.stack([ck.get_float32(self._name(i, t)) for t in parts])
            if self._name(i, n + ".bias") in ck:
                out[n + ".bias"] = ck.get_float32(self._name(i, n + ".bias"))
        if plan.moe is not None and plan.moe.router_bias:
            name = self._name(i, plan.moe.router_bias)
            if name not in ck:
                raise ValueError(f"{self.model_path}: missing tensor {name}")
            out[plan.moe.router_bias] = ck.get_float32(name)
        return out

    def _tensor_f16_or_f32(self, name: str) -> np.ndarray:
        """An fp16 tensor as its zero-copy view of the mmap; any other float dtype as fp32."""
        ck = self.ckpt
        return ck.get(name) if ck.dtype(name) == "F16" else ck.get_float32(name)

    def _linear_weight(self, i: int, lin: str, shape) -> str:
        """The checkpoint name of layer i's linear `lin` weight, checked present with `shape`."""
        name = self._name(i, lin + ".weight")
        if name not in self.ckpt:
            raise ValueError(f"{self.model_path}: missing tensor {name}")
        if tuple(self.ckpt.shape(name)) != shape:
            raise ValueError(f"{name}: shape {tuple(self.ckpt.shape(name))}, expected {shape} from config.json")
        return name

    def load_layer_f32(self, i: int) -> Dict[str, np.ndarray]:
        """Layer i's float tensors as fp32 copies: '<linear>.weight', '<linear>.bias', '<norm>.weight',
        '<norm>.bias' (LayerNorm), and the router correction bias (DeepSeek-V3)."""
        ck = self.ckpt
        out = {}
        for lin, shape in self.plans[i].linears.items():
            out[lin + ".weight"] = ck.get_float32(self._linear_weight(i, lin, shape))
            bname = self._name(i, lin + ".bias")
            if bname in ck:
                out[lin + ".bias"] = ck.get_float32(bname)
        out.update(self._layer_extras(i))
        return out

    def _float_layer(self, i: int) -> Dict:
        """Runtime modules of an unquantized layer from the checkpoint. fp16 weights are used in
        place (zero-copy views of the mmap); other dtypes are converted once, to fp16 when that is
        exact enough and in range, and kept, so generation does not convert them every token."""
        cache = self._float_cache
        if i in cache:
            return cache[i]
        ck = self.ckpt
        W, converted = {}, False
        for lin, shape in self.plans[i].linears.items():
            wname, bname = self._linear_weight(i, lin, shape), self._name(i, lin + ".bias")
            if ck.dtype(wname) == "F16":
                w = ck.get(wname)
            else:
                converted = True
                w = ck.get_float32(wname)
                if ck.dtype(wname) == "BF16" and np.abs(w).max(initial=0.0) < 6e4:
                    w = w.astype(np.float16)
            W[lin] = make_linear(w, ck.get_float32(bname) if bname in ck else None)
        W.update(_norm_modules(self._layer_extras(i)))
        if converted:
            cache[i] = W
        return W

    def _load_quantized_layer(self, i: int) -> Dict:
        """Layer i's runtime modules from a quantized checkpoint; linears stored in another AutoAWQ
        layout (gemv, gemv_fast, marlin) are converted here, once, to GEMM (awq/io/layouts.py)."""
        from awq.io.layouts import LAYOUTS, to_gemm

        ck, qc, plan = self.ckpt, self.quant_config, self.plans[i]
        layout = LAYOUTS[qc.get("source_version", "gemm")]
        W = {}
        for lin, (N, K) in plan.linears.items():
            base = self._name(i, lin)
            bias = ck.get_float32(base + ".bias") if base + ".bias" in ck else None
            if base + ".qweight" in ck:
                for part in layout.tensors[1:]:
                    if f"{base}.{part}" not in ck:
                        raise ValueError(f"{self.model_path}: {base}.qweight present but {base}.{part} missing "
                                         f"(AutoAWQ {layout.name} layout)")
                g = K if qc["q_group_size"] == -1 else qc["q_group_size"]
                qw, qz, scales = to_gemm(layout.name, _layout_tensors(ck, base, layout), K, N, g, base)
                try:
                    W[lin] = AWQLinear(qw, qz, scales, bias, g)
                except ValueError as e:
                    raise ValueError(f"{base}: {e}") from None
            elif base + ".weight" in ck:
                if tuple(ck.shape(base + ".weight")) != (N, K):
                    raise ValueError(f"{base}.weight: shape {tuple(ck.shape(base + '.weight'))}, expected {(N, K)}")
                W[lin] = make_linear(self._tensor_f16_or_f32(base + ".weight"), bias)
            else:
                raise ValueError(f"{self.model_path}: neither {base}.qweight nor {base}.weight is present")
        W.update(_norm_modules(self._layer_extras(i)))
        return W

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return self.runtime().embed_tokens(ids)

    # ---- runtime -----------------------------------------------------------------------------
    def _model_tensors(self) -> Dict:
        """The model-wide pieces the runtime needs besides the layers: final norm (+ bias), the
        embedding norm (BLOOM), learned positions, lm_head (tied models store none) with its bias."""
        spec, ck = self.spec, self.ckpt
        out = {"final_norm": ck.get_float32(spec.final_norm)}
        fb = _bias_name(spec.final_norm)
        if fb in ck:
            out["final_norm.bias"] = ck.get_float32(fb)
        if spec.embed_norm:
            out["embed_norm"] = ck.get_float32(spec.embed_norm)
            if _bias_name(spec.embed_norm) in ck:
                out["embed_norm.bias"] = ck.get_float32(_bias_name(spec.embed_norm))
        if spec.pos_embed:
            out["pos_embed"] = ck.get_float32(spec.pos_embed)
        head = spec.lm_head if spec.lm_head in ck else spec.embed
        w = self._tensor_f16_or_f32(head)
        if self.cfg.lm_head_norm:  # Baichuan2's NormHead: rows are L2-normalised at run time
            w32 = np.asarray(w, np.float32)
            w = (w32 / np.maximum(np.linalg.norm(w32, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        hb = _bias_name(spec.lm_head)
        out["lm_head"] = make_linear(w, ck.get_float32(hb) if hb in ck else None)
        return out

    def runtime(self) -> DecoderLM:
        if self._runtime is None:
            spec, ck, cfg = self.spec, self.ckpt, self.cfg
            embed, edt = ck.get(spec.embed), ck.dtype(spec.embed)
            mt = self._model_tensors()
            if self._layers is not None:
                layers = [_runtime_modules(l) for l in self._layers]
                get_layer = layers.__getitem__
            else:
                get_layer = self._float_layer
            if self.run_device.startswith("cuda"):
                from awq._backend import cuda_index
                from awq.runtime.gpu_model import GpuDevice, gpu_layers

                dev = GpuDevice("float16", cuda_index(self.run_device))
                layers = gpu_layers(dev, [get_layer(i) for i in range(cfg.num_layers)])
                mt = dict(mt, final_norm=dev.norm(mt["final_norm"]),
                          lm_head=dev.dense(mt["lm_head"].weight, mt["lm_head"].bias))
                self._runtime = DecoderLM(spec, cfg, embed, edt, mt, layers.__getitem__, device=dev,
                                          plans=self.plans)
            else:
                self._runtime = DecoderLM(spec, cfg, embed, edt, mt, get_layer, plans=self.plans)
        return self._runtime

    def forward(self, input_ids, **kwargs) -> np.ndarray:
        """Logits [B, T, vocab] fp32."""
        return self.runtime().forward(input_ids)

    __call__ = forward

    def generate(self, input_ids, max_new_tokens: int = 32, do_sample=None, temperature=None, top_k=None,
                 top_p=None, seed=None, eos_token_id=None, streamer=None, callback=None, **kwargs):
        from awq.runtime.generate import generate

        gen = self.generation_config()
        if eos_token_id is None:
            eos_token_id = gen.get("eos_token_id", self.config.get("eos_token_id"))
        do_sample = gen.get("do_sample", False) if do_sample is None else do_sample
        attention_mask = kwargs.pop("attention_mask", None)
        return generate(self.generation_runtime(), input_ids, max_new_tokens=max_new_tokens, do_sample=bool(do_sample),
                        temperature=gen.get("temperature", 1.0) if temperature is None else temperature,
                        top_k=gen.get("top_k", 0) if top_k is None else top_k,
                        top_p=gen.get("top_p", 1.0) if top_p is None else top_p,
                        seed=seed, eos_token_id=eos_token_id, streamer=streamer, callback=callback,
                        max_seq_len=self.max_seq_len or self.cfg.max_position_embeddings,
                        attention_mask=attention_mask)

    def generation_runtime(self):
        """The fused GPU runtime (awq/runtime/fused.py) for a quantized model on cuda with
        fuse_layers (the default); otherwise, or when the model has something the fused runtime
        does not cover (printed once), the layer-by-layer runtime()."""
        if not (self.is_quantized and self.fuse_layers and self.run_device.startswith("cuda")
                and self.spec.fusable):
            return self.runtime()
        if self._fused is None:
            from awq._backend import cuda_index
            from awq.runtime.fused import FusedGpuLM, NotFusable

            spec, ck = self.spec, self.ckpt
            try:
                head = ck.get(spec.lm_head) if spec.lm_head in ck else None
                self._fused = FusedGpuLM(spec, self.cfg, ck.get(spec.embed), ck.dtype(spec.embed),
                                         ck.get_float32(spec.final_norm), head,
                                         [_runtime_modules(l) for l in self._layers], cuda_index(self.run_device))
            except NotFusable as e:
                print(f"awq: fused runtime not used ({e}); running layer by layer", flush=True)
                self._fused = False
        return self._fused or self.runtime()

    def generation_config(self) -> dict:
        p = os.path.join(self.model_path, "generation_config.json")
        return read_json(p, "generation config") if os.path.exists(p) else {}

    # ---- quantization ------------------------------------------------------------------------
    def quantize(self, tokenizer=None, quant_config={}, calib_data="pileval", split="train", text_column="text",
                 duo_scaling=True, export_compatible=False, apply_clip=True, n_parallel_calib_samples=None,
                 max_calib_samples=128, max_calib_seq_len=512, max_chunk_memory=1024 ** 3, quantizer_cls=None,
                 resume_dir=None, **kwargs):
        """AutoAWQ's quantize. resume_dir (awq only): a folder where every finished layer is kept, so
        that the same call after a crash or kill continues at the first unfinished layer and gives the
        same result, bit for bit (awq/quantize/resume.py). A folder from another run (other model,
        settings or calibration data) raises ValueError naming what differs."""
        from awq.quantize.quantizer import AwqQuantizer

        if self.is_quantized:
            raise ValueError("this model is already quantized")
        qc = normalize_quant_config(quant_config)
        quantizer_cls = quantizer_cls or AwqQuantizer
        kwargs.setdefault("device", self.run_device)
        if resume_dir is not None:
            kwargs["resume_dir"] = resume_dir
        q = quantizer_cls(self, None, tokenizer, qc["w_bit"], qc["q_group_size"], qc["zero_point"], qc["version"],
                          calib_data, split, text_column, duo_scaling,
                          modules_to_not_convert=qc["modules_to_not_convert"], export_compatible=export_compatible,
                          apply_clip=apply_clip, n_parallel_calib_samples=n_parallel_calib_samples,
                          max_calib_samples=max_calib_samples, max_calib_seq_len=max_calib_seq_len,
                          max_chunk_memory=max_chunk_memory, **kwargs)
        self._layers, self.reports = q.quantize()
        self._tokenizer = tokenizer
        self.quant_config = qc
        self.is_quantized = not export_compatible
        self._runtime = None
        self._fused = None
        return self

    def pack(self):
        """Packing happens inside quantize() (4-bit GEMM layout); kept for AutoAWQ scripts."""
        if self._layers is None:
            raise ValueError("quantize() the model before pack()")

    # ---- saving ------------------------------------------------------------------------------
    def _state_tensors(self) -> Dict[str, np.ndarray]:
        """Every tensor of the output checkpoint: the decoder layers as quantized (or kept), the
        embedding, final norm and head in fp16, and every other tensor of the source checkpoint
        (vision towers, projectors, positions, norm biases, buffers) copied unchanged."""
        from awq.io.safetensors import BF16
        from awq.quantize.quantizer import DenseWeight, QuantizedLinear

        spec, ck = self.spec, self.ckpt
        f16 = lambda a: np.ascontiguousarray(a, dtype=np.float16)  # noqa: E731
        t = {spec.embed: f16(ck.get_float32(spec.embed)), spec.final_norm: f16(ck.get_float32(spec.final_norm))}
        if spec.lm_head in ck:
            t[spec.lm_head] = f16(ck.get_float32(spec.lm_head))
        replaced = set(t)
        for i, layer in enumerate(self._layers):
            for lin in self.plans[i].linears:  # every stored form of a linear (incl. other AWQ layouts)
                replaced.update(self._name(i, lin + "." + part) for part in _LINEAR_PARTS)
            for name, v in layer.items():
                full = self._name(i, name)
                if isinstance(v, QuantizedLinear) and v.w_bit != 4:
                    raise ValueError(
                        f"w_bit={v.w_bit}: only 4-bit weights have the AutoAWQ GEMM layout that transformers, "
                        "vLLM, SGLang and TGI load; save with w_bit=4, or quantize(export_compatible=True) "
                        "for an fp16 checkpoint with the AWQ scales folded in")
                if isinstance(v, (QuantizedLinear, AWQLinear)):  # AWQLinear: re-saving a loaded checkpoint
                    t[full + ".qweight"], t[full + ".qzeros"], t[full + ".scales"] = v.qweight, v.qzeros, v.scales
                    if v.bias is not None:
                        t[full + ".bias"] = f16(v.bias)
                elif isinstance(v, (DenseWeight, DenseLinear, F16Linear)):
                    t[full + ".weight"] = f16(v.weight)
                    if v.bias is not None:
                        t[full + ".bias"] = f16(v.bias)
                elif name.removesuffix(".weight") in (spec.q_norm, spec.k_norm) and spec.qk_norm_split:
                    for h, t_name in enumerate(spec.norm_tensors(name.removesuffix(".weight"), v.shape)):
                        t[self._name(i, t_name)] = f16(v[h])
                        replaced.add(self._name(i, t_name))
                else:
                    if not (full.endswith(".weight") or full.endswith(".bias")) and \
                            self._name(i, name + ".weight") in ck:
                        full += ".weight"
                    keep32 = full in ck and ck.dtype(full) == "F32" and not full.endswith((".weight", ".bias"))
                    t[full] = np.ascontiguousarray(v, np.float32) if keep32 else f16(v)
                    replaced.add(full)
        for name in ck.keys():  # everything else, byte for byte
            if name in replaced or name in t:
                continue
            raw = ck.get(name)
            t[name] = BF16(raw) if ck.dtype(name) == "BF16" else raw
        return t

    def _outside_decoder(self) -> List[str]:
        """Full dotted prefixes of the checkpoint's modules outside the language decoder (vision and
        audio towers, projectors) as this checkpoint spells them (old or new multimodal names)."""
        out = []
        for m in self.spec.not_converted:
            for k in self.ckpt.keys():
                if k == m or k.startswith(m + "."):
                    out.append(m)
                elif f".{m}." in k or k.endswith("." + m):
                    j = k.index(f".{m}.") if f".{m}." in k else len(k) - len(m) - 1
                    out.append(k[: j + 1 + len(m)])
        return list(dict.fromkeys(out))

    def _not_converted(self) -> List[str]:
        from awq.quantize.quantizer import DenseWeight

        out = []
        for i, layer in enumerate(self._layers):
            out += [self._name(i, n) for n, v in layer.items()
                    if isinstance(v, (DenseWeight, DenseLinear, F16Linear)) and n in self.plans[i].linears]
        return out

    def save_quantized(self, save_dir, safetensors=True, shard_size="5GB"):
        """Writes config.json (+ quantization_config), generation_config.json (unchanged), the tensors
        (sharded above shard_size) and the tokenizer, into a temporary folder renamed into place. A
        failure (full disk, I/O error, interrupt) leaves save_dir as it was and raises OSError naming it."""
        if self._layers is None:
            raise ValueError("nothing to save: call quantize() first (or save a model from from_quantized)")
        if not safetensors:
            raise ValueError("awq writes safetensors only (safetensors=False is not supported)")
        save_dir = str(save_dir).rstrip("/")
        limit = parse_size(shard_size)
        check_writable(save_dir)
        tensors = self._state_tensors()
        config = {k: v for k, v in self.config.items() if k != "quantization_config"}
        config["torch_dtype"] = "float16"
        if self.is_quantized:
            qc = self.quant_config
            skipped = self._not_converted()
            qmods = [self._name(i, n) for i in range(self.cfg.num_layers) for n in self.plans[i].linears
                     if self._name(i, n) not in skipped]
            skipped = skipped + self._outside_decoder()
            for entry in skipped:
                for m in qmods:
                    if module_matches(entry, m):
                        raise ValueError(f"modules_to_not_convert entry {entry!r} would also match the quantized "
                                         f"module {m!r} in some engine; refusing to save")
            config["quantization_config"] = {
                "quant_method": "awq", "bits": qc["w_bit"], "group_size": qc["q_group_size"],
                "zero_point": qc["zero_point"], "version": "gemm", "modules_to_not_convert": skipped or None,
            }
        with atomic_folder(save_dir) as tmp:
            write_checkpoint(tensors, tmp, shard_size=limit, metadata={"format": "pt"})
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(config, f, indent=2)
                f.write("\n")
            gen = os.path.join(self.model_path, "generation_config.json")
            if os.path.exists(gen):
                shutil.copyfile(gen, os.path.join(tmp, "generation_config.json"))
            self._save_tokenizer(tmp)

    def push_to_hub(self, repo_id, private=False, token=None, commit_message="Upload AWQ model", **kwargs):
        """Uploads the quantized checkpoint (saved to a temporary folder unless save_dir=...) with a
        model card holding the quantization settings and any perplexities=... given (awq/hub.py)."""
        from awq.hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message, **kwargs)

    def export_onnx(self, path, **kwargs):
        """An ONNX decoder graph (com.microsoft MatMulNBits for the 4-bit linears, KV cache inputs and
        outputs) at `path` (awq/export/onnx.py)."""
        from awq.export.onnx import export_onnx

        return export_onnx(self, path, **kwargs)

    def _save_tokenizer(self, folder: str):
        tok = self._tokenizer
        if tok is not None and hasattr(tok, "save_pretrained"):
            tok.save_pretrained(folder)
            return
        for name in TOKENIZER_FILES:
            src = os.path.join(self.model_path, name)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(folder, name))
        if tok is not None and hasattr(tok, "save") and not os.path.exists(os.path.join(folder, "tokenizer.json")):
            tok.save(os.path.join(folder, "tokenizer.json"))  # a bare tokenizers.Tokenizer


def _runtime_modules(layer: Dict) -> Dict:
    """Quantizer output (QuantizedLinear / DenseWeight / arrays) or loaded modules -> runtime modules."""
    from awq.quantize.quantizer import DenseWeight, QuantizedLinear

    out = {}
    for name, v in layer.items():
        if isinstance(v, QuantizedLinear):
            if v.w_bit == 4:
                out[name.removesuffix(".weight")] = AWQLinear(v.qweight, v.qzeros, v.scales, v.bias, v.group_size)
            else:
                out[name] = DenseLinear(v.dequantized, v.bias)
        elif isinstance(v, DenseWeight):
            out[name] = DenseLinear(v.weight, v.bias)
        elif isinstance(v, np.ndarray):
            out[name.removesuffix(".weight")] = v
        else:
            out[name] = v
    return out


def load_quant_config(folder: str, config: dict) -> dict:
    """quantization_config from config.json, else legacy quant_config.json / quantize_config.json."""
    qc = config.get("quantization_config")
    if qc is None:
        for legacy in ("quant_config.json", "quantize_config.json"):
            p = os.path.join(folder, legacy)
            if os.path.exists(p):
                qc = read_json(p, "legacy quantization config")
                break
    if not isinstance(qc, dict):
        raise ValueError(f"{folder}: no quantization_config in config.json and no quant_config.json; "
                         "is this an AWQ checkpoint? (load float models with from_pretrained)")
    method = str(qc.get("quant_method", "awq")).lower()
    if method != "awq":
        raise ValueError(f"{folder}: quant_method {method!r} is not AWQ")
    from awq.io.layouts import canonical_version

    try:
        version = canonical_version(qc.get("version", "gemm"))
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from None
    bits = qc.get("bits", qc.get("w_bit", 4))
    g = qc.get("group_size", qc.get("q_group_size", 128))
    if bits != 4:
        raise ValueError(f"{folder}: {bits}-bit AWQ GEMM checkpoints are not supported (only 4-bit)")
    if isinstance(g, bool) or not isinstance(g, int) or not (g == -1 or g > 0):
        raise ConfigError(f"{folder}: bad group_size {g!r} in the quantization config")
    # loaded layers are converted to GEMM (awq/io/layouts.py), so the model is GEMM from here on;
    # source_version names the layout the checkpoint was stored in
    return {"w_bit": 4, "q_group_size": g, "zero_point": bool(qc.get("zero_point", True)), "version": "gemm",
            "source_version": version, "modules_to_not_convert": qc.get("modules_to_not_convert")}


_LINEAR_PARTS = ("weight", "bias", "qweight", "qzeros", "scales", "scaled_zeros")  # gemm, gemv, gemv_fast, marlin


def _bias_name(weight_name: str) -> str:
    return weight_name[: -len(".weight")] + ".bias" if weight_name.endswith(".weight") else weight_name + ".bias"


def _norm_modules(extras: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """'<norm>.weight' -> '<norm>' (the runtime's key for a norm weight); biases keep their names."""
    return {k.removesuffix(".weight"): v for k, v in extras.items()}


def _resolve_spec(spec, config: dict, ckpt):
    """The class's spec row for this config (layout variants) and this checkpoint's naming scheme
    (old / new multimodal prefixes)."""
    from dataclasses import replace

    from awq.models.config import text_config

    spec = spec.for_config(text_config(config) if spec.variant else config)
    if ckpt is None or spec.embed in ckpt or not spec.alt_prefixes:
        return spec
    for scheme in spec.alt_prefixes:
        def sub(name, scheme=scheme):
            if not name:
                return name
            for a, b in scheme:
                if name.startswith(a):
                    return b + name[len(a):]
            return name
        if sub(spec.embed) in ckpt:
            return replace(spec, layers_prefix=sub(spec.layers_prefix + "."
                                                   ).rstrip("."), embed=sub(spec.embed),
                           final_norm=sub(spec.final_norm), lm_head=sub(spec.lm_head), pos_embed=sub(spec.pos_embed),
                           embed_norm=sub(spec.embed_norm))
    return spec


def _layout_tensors(ck, base: str, layout) -> Dict[str, np.ndarray]:
    """One quantized linear's stored tensors for awq.io.layouts.to_gemm: float ones as fp16 (a
    zero-copy view when stored so), integer words as stored."""
    out = {}
    for part in layout.tensors:
        name = f"{base}.{part}"
        if layout.dtypes[part] != "f16":
            out[part] = ck.get(name)
        elif ck.dtype(name) == "F16":
            out[part] = ck.get(name)
        elif ck.dtype(name) in ("BF16", "F32"):
            out[part] = ck.get_float32(name).astype(np.float16)
        else:
            raise ValueError(f"{name}: unexpected dtype {ck.dtype(name)}")
    return out
