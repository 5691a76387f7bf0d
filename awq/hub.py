"""Publishing a quantized model on the Hugging Face Hub: `push_to_hub`.

The saved checkpoint folder (what save_quantized writes) is uploaded with huggingface_hub, together
with a generated model card (README.md) that states the quantization settings, the tool versions
and the perplexities the caller measured. The card never carries a number it was not given.

huggingface_hub is an optional dependency (the `hub` extra), imported only when pushing. Its errors
are passed on as they are, except HTTP and network failures, which become HubPushError naming the
endpoint and the repository, since huggingface_hub's own message may name neither.
"""
from __future__ import annotations

import json
import numbers
import os
import platform
import re
import sys
import tempfile
from typing import Mapping, Optional

CARD_MARKER = "<!-- model card written by awq.hub -->"  # tells our own README from a user's
DEFAULT_ENDPOINT = "https://huggingface.co"

# The Hub's rule for repo ids (ASCII letters, digits, "-", "_", "."; at most 96 per part; no part
# starting or ending with "-" or "."; no "--" or ".."; no ".git" ending).
_REPO_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")


class HubPushError(OSError):
    """An upload failed on the network or with an HTTP error. Carries the endpoint, the repo id and
    the HTTP status (None when the server was never reached); the original error is __cause__."""

    def __init__(self, message: str, endpoint: str, repo_id: str, status_code: Optional[int] = None):
        super().__init__(message)
        self.endpoint = endpoint
        self.repo_id = repo_id
        self.status_code = status_code


# ---- checks --------------------------------------------------------------------------------------

def check_repo_id(repo_id) -> str:
    """`name` or `namespace/name` by the Hub's rules; ValueError naming the rule broken."""
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ValueError(f"repo_id must be a non-empty string like 'user/model-awq', got {repo_id!r}")
    parts = repo_id.split("/")
    if len(parts) > 2:
        raise ValueError(f"repo_id {repo_id!r}: expected 'name' or 'namespace/name' (one '/' at most)")
    for part in parts:
        if not _REPO_PART.fullmatch(part):
            raise ValueError(f"repo_id {repo_id!r}: each part must be 1-96 ASCII letters, digits, '-', '_' or '.', "
                             f"not starting or ending with '-' or '.' (bad part: {part!r})")
    if "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise ValueError(f"repo_id {repo_id!r}: '--', '..' and a '.git' ending are not allowed on the Hub")
    return repo_id


def check_quantized(model) -> None:
    if not getattr(model, "is_quantized", False) or getattr(model, "_layers", None) is None:
        extra = ""
        if getattr(model, "_layers", None) is not None:  # quantize(export_compatible=True)
            extra = " (this model was quantized with export_compatible=True: its weights are fp16 with the AWQ " \
                    "scales folded in, not an AWQ checkpoint)"
        raise ValueError("push_to_hub uploads AWQ-quantized models: quantize first (model.quantize(...)) or load "
                         f"a quantized checkpoint with AutoAWQForCausalLM.from_quantized{extra}")


def check_perplexities(perplexities) -> dict:
    """{label: number}, kept in the caller's order; an empty mapping means none measured."""
    if perplexities is None:
        return {}
    if not isinstance(perplexities, Mapping):
        raise ValueError(f"perplexities must be a mapping like {{'fp16': 5.47, 'awq': 5.60}}, "
                         f"got {type(perplexities).__name__}")
    out = {}
    for k, v in perplexities.items():
        if not isinstance(k, str) or not k.strip() or "|" in k or "\n" in k:
            raise ValueError(f"perplexities: label {k!r} must be a non-empty one-line string without '|'")
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"perplexities[{k!r}] must be a number, got {v!r}")
        out[k] = v
    return out


def _number(v) -> str:
    """A measured value as given: the shortest text that reads back as the same number (of the
    caller's float type: numpy float32 33.8 prints as 33.8, not 33.79999923706055)."""
    import numpy as np

    x = v if isinstance(v, np.floating) else np.float64(v)
    return np.format_float_positional(x, trim="-")


# ---- the model card --------------------------------------------------------------------------

def _hub_id(path) -> Optional[str]:
    """A Hub model id from a config `_name_or_path` or a model folder: an id as is, or the id
    encoded in a huggingface_hub cache path (.../models--org--name/snapshots/<rev>); None for any
    other local path."""
    if not isinstance(path, str) or not path:
        return None
    m = re.search(r"(?:^|/)models--([^/]+?)--([^/]+)(?:/|$)", path)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    if os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") != 1:
        return None
    try:
        return check_repo_id(path)
    except ValueError:
        return None


def base_model_id(model) -> Optional[str]:
    """The Hub id of the float model this one was quantized from, when it is known."""
    config = getattr(model, "config", None) or {}
    base = _hub_id(config.get("_name_or_path"))
    if base is None and "quantization_config" not in config:
        # from_pretrained: model_path is the float model (from_quantized: the quantized one)
        base = _hub_id(getattr(model, "model_path", None))
    return base


def _front_matter(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return ""
    m = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    return m.group(1) if m else ""


def license_of(model) -> Optional[str]:
    """`license` from config.json, else from the front matter of the model folder's README.md."""
    config = getattr(model, "config", None) or {}
    lic = config.get("license")
    if isinstance(lic, str) and lic.strip():
        return lic.strip()
    folder = getattr(model, "model_path", None)
    if isinstance(folder, str) and os.path.isdir(folder):
        m = re.search(r"^license:\s*['\"]?([A-Za-z0-9_.+-]+)['\"]?\s*$",
                      _front_matter(os.path.join(folder, "README.md")), re.M)
        if m:
            return m.group(1)
    return None


def tool_versions() -> dict:
    import numpy

    import awq

    out = {"awq": awq.__version__, "numpy": numpy.__version__}
    try:
        import huggingface_hub

        out["huggingface_hub"] = huggingface_hub.__version__
    except ImportError:
        pass
    out["python"] = platform.python_version()
    return out


def _yaml(value, indent: int = 0) -> str:
    """A small YAML writer for the card's front matter (str, int, float, bool, None, lists of
    scalars, dicts). Strings are written as JSON strings, which YAML reads back unchanged."""
    pad = " " * indent
    lines = []
    for k, v in value.items():
        if isinstance(v, dict):
            lines.append(f"{pad}{k}:")
            lines.append(_yaml(v, indent + 2))
        elif isinstance(v, list):
            lines.append(f"{pad}{k}:")
            lines += [f"{pad}- {_yaml_scalar(e)}" for e in v]
        else:
            lines.append(f"{pad}{k}: {_yaml_scalar(v)}")
    return "\n".join(lines)


def _yaml_scalar(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return json.dumps(v)
    s = str(v)
    plain = re.fullmatch(r"[A-Za-z][A-Za-z0-9_./-]*", s) and s.lower() not in ("null", "true", "false", "yes", "no",
                                                                              "on", "off", "y", "n", "nan", "inf")
    return s if plain else json.dumps(s)


def _cell(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ", ".join(f"`{e}`" for e in v) if v else "none"
    return str(v)


def model_card(model, repo_id: Optional[str] = None, perplexities=None) -> str:
    """The README.md pushed with the model: YAML front matter (library_name, tags, base_model and
    license when known, the quantization settings), the settings table, the perplexities given
    (none invented) and the versions of the tools that made the checkpoint."""
    qc = dict(getattr(model, "quant_config", None) or {})
    ppl = check_perplexities(perplexities)
    w_bit = qc.get("w_bit", 4)
    base, lic = base_model_id(model), license_of(model)
    model_type = (getattr(model, "config", None) or {}).get("model_type")
    versions = tool_versions()

    meta = {"library_name": "transformers"}  # the folder is a transformers-format AWQ checkpoint
    if base:
        meta["base_model"] = base
        meta["base_model_relation"] = "quantized"
    if lic:
        meta["license"] = lic
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["awq", f"{w_bit}-bit"]
    meta["quantization_config"] = {"quant_method": "awq", "bits": w_bit, "group_size": qc.get("q_group_size"),
                                   "zero_point": qc.get("zero_point"), "version": qc.get("version", "gemm")}

    title = repo_id.split("/")[-1] if repo_id else "AWQ model"
    of = f"[{base}](https://huggingface.co/{base})" if base else f"a `{model_type}` model" if model_type else "a model"
    lines = ["---", _yaml(meta), "---", CARD_MARKER, "", f"# {title}", "",
             f"{w_bit}-bit AWQ (activation-aware weight quantization) of {of}, made with awq {versions['awq']}. "
             "The weights are in the AutoAWQ GEMM layout (`quantization_config` in config.json), which "
             "transformers, vLLM, SGLang and TGI load.", "",
             "## Quantization", "", "| setting | value |", "|---|---|"]
    for key in ("w_bit", "q_group_size", "zero_point", "version", "modules_to_not_convert"):
        if key in qc or key != "modules_to_not_convert":
            lines.append(f"| {key} | {_cell(qc.get(key))} |")
    if model_type:
        lines.append(f"| model_type | {model_type} |")

    lines += ["", "## Perplexity", ""]
    if ppl:
        lines += ["| model | perplexity |", "|---|---|"]
        lines += [f"| {k} | {_number(v)} |" for k, v in ppl.items()]
        lines += ["", "As measured by the uploader and passed to `push_to_hub`; lower is better."]
    else:
        lines += ["None was measured for this upload."]

    lines += ["", "## Tools", "", "| tool | version |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in versions.items()]
    ref = repo_id or "<this repo>"
    lines += ["", "## Use", "", "```python", "from awq import AutoAWQForCausalLM", "",
              f'model = AutoAWQForCausalLM.from_quantized("{ref}")', "```", ""]
    return "\n".join(lines)


# ---- the upload ------------------------------------------------------------------------------

def _import_hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError("push_to_hub needs huggingface_hub: pip install huggingface_hub "
                          "(or pip install 'autoawq[hub]')") from None
    return huggingface_hub


def hub_endpoint(hf) -> str:
    """HF_ENDPOINT as set now (huggingface_hub reads it once, at import), else its default.

    huggingface_hub before 1.x also builds the returned CommitInfo from the endpoint it read at
    import, and raises ValueError after a successful commit elsewhere; so with such a version an
    HF_ENDPOINT changed after the import is refused here, before anything is sent."""
    imported = getattr(_submodule(hf, "constants"), "ENDPOINT", None)
    ep = (os.environ.get("HF_ENDPOINT") or imported or DEFAULT_ENDPOINT).rstrip("/")
    fields = getattr(getattr(hf, "CommitInfo", None), "__dataclass_fields__", None) or {}
    if imported and ep != imported.rstrip("/") and fields and "_endpoint" not in fields:
        raise ValueError(f"HF_ENDPOINT is {ep} but huggingface_hub {hf.__version__} was imported while it was "
                         f"{imported}, and this version cannot commit to an endpoint set that late: set HF_ENDPOINT "
                         "before starting Python, or upgrade huggingface_hub")
    return ep


def _submodule(hf, name: str):
    """huggingface_hub.<name>, or None where this version has no such module."""
    import importlib

    try:
        return importlib.import_module(f"{hf.__name__}.{name}")
    except ImportError:
        return None


def _checkpoint_error(model, folder: str) -> Optional[str]:
    """Why `folder` (holding a config.json) is not this model's saved checkpoint, or None."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        return f"its config.json cannot be read ({e})"
    if not isinstance(config, dict):
        return "its config.json is not a JSON object"
    saved = config.get("quantization_config")
    if not isinstance(saved, dict) or str(saved.get("quant_method", "")).lower() != "awq":
        return "its config.json has no AWQ quantization_config"
    if config.get("model_type") != model.config.get("model_type"):
        return f"it holds a {config.get('model_type')!r} model, this is a {model.config.get('model_type')!r} one"
    qc = model.quant_config
    want = {"bits": qc.get("w_bit"), "group_size": qc.get("q_group_size"), "zero_point": qc.get("zero_point")}
    diff = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
    if diff:
        return "its quantization settings differ from the model's: " + \
            ", ".join(f"{k} saved {a!r}, model {b!r}" for k, (a, b) in diff.items())
    version = str(saved.get("version", "gemm")).lower()
    if version != "gemm":
        return f"it holds the AWQ {version!r} layout; awq publishes the GEMM layout (save_quantized writes it)"
    from awq.models.config import text_config

    mine, theirs = text_config(model.config), text_config(config)
    shape_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size")
    diff = {k: (theirs.get(k), mine.get(k)) for k in shape_keys if theirs.get(k) != mine.get(k)}
    if diff:
        return "its config describes another model: " + \
            ", ".join(f"{k} saved {a!r}, model {b!r}" for k, (a, b) in diff.items())
    try:
        from awq.io.checkpoint import open_checkpoint

        open_checkpoint(folder).close()  # every shard of the index present and readable
    except (OSError, ValueError) as e:
        return f"its tensors cannot be opened ({e})"
    return None


def _stage(source: str, stage: str, card: str, has_ppl: bool) -> None:
    """Links every file of `source` into `stage` and writes the card there, so the caller's folder
    is uploaded without being changed. A README.md of the caller's own (not one of ours) is kept and
    uploaded instead of the card."""
    own_readme = os.path.join(source, "README.md")
    keep_readme = False
    if os.path.isfile(own_readme):
        with open(own_readme, encoding="utf-8", errors="replace") as f:
            keep_readme = CARD_MARKER not in f.read()
        if keep_readme and has_ppl:
            raise ValueError(f"{own_readme} is not an awq model card, so the perplexities passed would not be "
                             "published; remove or rename it to have push_to_hub write the card")
        if keep_readme:
            print(f"awq: uploading {own_readme} as the model card (a README.md of your own; awq writes one only "
                  "when the folder has none)", file=sys.stderr)
    for root, dirs, files in os.walk(source):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(root, source)
        os.makedirs(os.path.join(stage, rel), exist_ok=True)
        for name in files:
            if rel == "." and name == "README.md" and not keep_readme:
                continue
            os.symlink(os.path.abspath(os.path.join(root, name)), os.path.join(stage, rel, name))
    if not keep_readme:
        with open(os.path.join(stage, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)


def _failure(e: BaseException, hf):
    """The HTTP or network error behind `e` (its own or one in its __cause__/__context__ chain) as
    (error, status code or None), or None when `e` is neither (a local or usage error)."""
    http_types = tuple(t for t in (getattr(_submodule(hf, "errors"), "HfHubHTTPError", None),
                                   getattr(_submodule(hf, "utils"), "HfHubHTTPError", None)) if isinstance(t, type))
    net_types = [ConnectionError, TimeoutError]
    for mod in ("httpx2", "httpx", "requests"):  # whichever HTTP client this huggingface_hub uses
        m = sys.modules.get(mod)
        for n in ("TransportError", "RequestException", "HTTPError"):
            t = getattr(m, n, None) if m is not None else None
            if isinstance(t, type) and issubclass(t, BaseException):
                net_types.append(t)
    seen, cur = set(), e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, http_types + tuple(net_types)):
            status = getattr(getattr(cur, "response", None), "status_code", None)
            return cur, status if isinstance(status, int) else None
        cur = cur.__cause__ or cur.__context__
    return None


def _hub_call(hf, what: str, endpoint: str, repo_id: str, fn, kwargs: dict):
    """fn(**kwargs), with HTTP and network failures raised as HubPushError naming `what`."""
    try:
        return fn(**kwargs)
    except Exception as e:
        found = _failure(e, hf)
        if found is None:
            raise
        err, status = found
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        said = (str(getattr(err, "server_message", None) or "").strip().splitlines() or [""])[0]
        if said and said not in detail:
            detail += f" (the server said: {said})"
        if status is None:
            msg = (f"push_to_hub: {what} for {repo_id!r} could not reach {endpoint} ({type(err).__name__}: {detail}); "
                   "check the network, HF_ENDPOINT and HF_HUB_OFFLINE")
        else:
            hint = ""
            if status in (401, 403):
                hint = "; check the token (token=, HF_TOKEN or `hf auth login`) and its write access to the namespace"
            elif status == 404:
                hint = "; the repository or revision does not exist there"
            msg = f"push_to_hub: {what} for {repo_id!r} at {endpoint} failed with HTTP {status}: {detail}{hint}"
        raise HubPushError(msg, endpoint, repo_id, status) from e


def push_to_hub(model, repo_id: str, private: bool = False, token=None, commit_message: str = "Upload AWQ model",
                save_dir=None, perplexities=None, revision: Optional[str] = None, create_pr: bool = False):
    """Uploads the quantized `model` to the Hub repo `repo_id` (created when missing, as private when
    `private`), with a generated model card. Returns huggingface_hub's CommitInfo (`.commit_url`,
    `.oid`, `.pr_url` for create_pr).

    save_dir: a folder holding this model's saved checkpoint (uploaded as is, after a check that it
    is an AWQ checkpoint with this model's settings), or where to save it first when it holds no
    config.json; by default the model is saved into a temporary folder deleted afterwards. The card
    (README.md) is added to the upload only: save_dir is never changed by the upload.
    perplexities: {label: value} as measured by the caller, e.g. {"fp16": 5.47, "awq": 5.60}; shown
    in the card as given. revision: the branch to commit to (created from the default branch when
    missing); create_pr: open a pull request against the default branch instead of committing to it.

    HF_ENDPOINT (read at this call) selects a Hub other than huggingface.co, e.g. a mirror.

    Raises ValueError for a bad repo_id or an unquantized model, ImportError without
    huggingface_hub, HubPushError (an OSError naming the endpoint and repo) on HTTP or network errors.
    """
    check_repo_id(repo_id)
    check_quantized(model)
    ppl = check_perplexities(perplexities)
    if not isinstance(commit_message, str) or not commit_message.strip():
        raise ValueError(f"commit_message must be a non-empty string, got {commit_message!r}")
    hf = _import_hub()
    endpoint = hub_endpoint(hf)

    with tempfile.TemporaryDirectory(prefix="awq-push-") as tmp:
        if save_dir is None:
            source = os.path.join(tmp, "model")
            model.save_quantized(source)
        else:
            source = os.fspath(save_dir)
            if os.path.isfile(os.path.join(source, "config.json")):
                why = _checkpoint_error(model, source)
                if why:
                    raise ValueError(f"save_dir {source} is not this model's saved checkpoint: {why}; pass an "
                                     "empty or new folder to save the model there, or omit save_dir")
            else:
                model.save_quantized(source)
        stage = os.path.join(tmp, "upload")
        os.mkdir(stage)
        _stage(source, stage, model_card(model, repo_id, ppl), bool(ppl))

        api = hf.HfApi(endpoint=endpoint, token=token)
        url = _hub_call(hf, "creating the repository", endpoint, repo_id, api.create_repo,
                        dict(repo_id=repo_id, private=private, exist_ok=True, token=token, repo_type="model"))
        full_id = getattr(url, "repo_id", None) or repo_id  # "name" alone gets the token owner's namespace
        if revision is not None and not create_pr and not str(revision).startswith("refs/pr/"):
            # A commit to a branch needs the branch; it starts from the default branch's head.
            _hub_call(hf, f"creating branch {revision!r}", endpoint, full_id, api.create_branch,
                      dict(repo_id=full_id, branch=revision, exist_ok=True, token=token, repo_type="model"))
        return _hub_call(hf, "uploading the folder", endpoint, full_id, api.upload_folder,
                         dict(repo_id=full_id, folder_path=stage, commit_message=commit_message, token=token,
                              repo_type="model", revision=revision, create_pr=create_pr))
