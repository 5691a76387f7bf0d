"""push_to_hub (awq/hub.py) against a local endpoint: a small HTTP server on 127.0.0.1 that emulates
the Hub API calls huggingface_hub makes for create_repo + upload_folder, and records every request.

No test here reaches the internet: HF_ENDPOINT points at the local server (and the endpoint is
passed to HfApi explicitly, since huggingface_hub reads its constants at import).

Emulated routes (as huggingface_hub 0.2x-2.x calls them; an unknown route answers 404 and is
recorded, so a new call shows up as a failing test, not a silent pass):
  POST /api/repos/create                              create_repo
  POST /api/validate-yaml                             README.md front matter check (upload_folder)
  POST /api/models/{repo}/branch/{branch}             create_branch (revision=)
  POST /api/models/{repo}/preupload/{rev}             upload mode per file: "regular" or "lfs"
  POST /{repo}.git/info/lfs/objects/batch             LFS batch (basic transfer), for "lfs" files
  PUT  /lfs-storage/{oid}, POST .../objects/verify    the LFS upload and its verification
  POST /api/models/{repo}/discussions, GET .../{num}  create_pr with the streamed uploader
  POST /api/models/{repo}/commit/{rev}                the commit (ndjson: header, file, lfsFile)
  GET  /api/models/{repo}                             repo_info (create_repo after a 401/403)
"""
import base64
import hashlib
import importlib.util
import json
import os
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

hf = pytest.importorskip("huggingface_hub")
hf_constants = pytest.importorskip("huggingface_hub.constants")

from awq.hub import CARD_MARKER, HubPushError, model_card, push_to_hub  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "archs", "llama")
TOKEN = "hf_local_test_token"


# ---- the local Hub ---------------------------------------------------------------------------

class LocalHub:
    """State and answers of the emulated Hub. `requests` lists every request received as dicts:
    method, path, query, headers (lower-case names), body (bytes), json (parsed JSON, or a list of
    objects for ndjson). Set `fail[route] = (status, message)` to make a route fail, `token` to
    demand that Bearer token, `lfs_suffixes` to send files with those endings through LFS."""

    def __init__(self):
        self.requests = []
        self.repos = {}  # repo_id -> {"private": bool, "branches": set, "commits": [dict]}
        self.lfs = {}  # sha256 hex -> bytes received
        self.lfs_suffixes = ()
        self.fail = {}
        self.token = None
        self.prs = {}  # (repo_id, num) -> title
        self.lock = threading.Lock()
        self.base = None  # "http://127.0.0.1:port"

    ROUTES = [
        ("POST", r"/api/repos/create", "create"),
        ("POST", r"/api/validate-yaml", "validate-yaml"),
        ("POST", r"/api/models/(?P<repo>.+?)/branch/(?P<rev>[^/]+)", "branch"),
        ("POST", r"/api/models/(?P<repo>.+?)/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", r"/api/models/(?P<repo>.+?)/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", r"/api/models/(?P<repo>.+?)/discussions", "pr-create"),
        ("GET", r"/api/models/(?P<repo>.+?)/discussions/(?P<num>\d+)", "pr-details"),
        ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/[^/]+)?", "repo-info"),
        ("POST", r"/(?P<repo>.+?)\.git/info/lfs/objects/batch", "lfs-batch"),
        ("POST", r"/(?P<repo>.+?)\.git/info/lfs/objects/verify", "lfs-verify"),
        ("PUT", r"/lfs-storage/(?P<oid>[0-9a-f]{64})", "lfs-put"),
    ]

    def route(self, method, path):
        for m, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, path)
            if m == method and match:
                return name, match.groupdict()
        return None, {}

    def handle(self, method, path, query, headers, body):
        """-> (status, JSON-able answer)."""
        name, args = self.route(method, path)
        record = {"method": method, "path": path, "query": query, "headers": headers, "body": body,
                  "route": name, "json": _parse_body(headers, body)}
        with self.lock:
            self.requests.append(record)
        if name is None:
            return 404, {"error": f"{method} {path} is not emulated by the local endpoint"}
        if name in self.fail:
            status, message = self.fail[name]
            return status, {"error": message}
        if self.token is not None and name != "lfs-put" and headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}
        with self.lock:
            return getattr(self, "on_" + name.replace("-", "_"))(record, **args)

    def on_create(self, rec):
        body = rec["json"]
        repo_id = f"{body.get('organization') or 'local-user'}/{body['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.base}/{repo_id}"}
        private = body.get("private", body.get("visibility") == "private")
        self.repos[repo_id] = {"private": bool(private), "branches": {"main"}, "commits": []}
        return 200, {"url": f"{self.base}/{repo_id}", "name": repo_id}

    def on_validate_yaml(self, rec):
        import yaml  # a huggingface_hub dependency

        text = rec["json"]["content"]
        m = re.match(r"---\n(.*?)\n---\n", text, re.S)
        if m is None:  # as the Hub does: a card without metadata is allowed, with a warning
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        try:
            meta = yaml.safe_load(m.group(1))
        except yaml.YAMLError as e:
            return 400, {"errors": [{"message": f"invalid YAML: {e}"}]}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "the front matter is not a YAML mapping"}]}
        return 200, {"errors": [], "warnings": []}

    def _repo(self, repo):
        return self.repos.get(repo)

    def on_repo_info(self, rec, repo):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}
        return 200, {"id": repo, "modelId": repo, "sha": "0" * 40, "private": self.repos[repo]["private"]}

    def on_branch(self, rec, repo, rev):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}
        if unquote(rev) in self.repos[repo]["branches"]:
            return 409, {"error": "Reference already exists"}
        self.repos[repo]["branches"].add(unquote(rev))
        return 200, {}

    def on_preupload(self, rec, repo, rev):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}
        files = [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(self.lfs_suffixes) else "regular",
                  "shouldIgnore": False, "oid": None} for f in rec["json"]["files"]]
        return 200, {"files": files, "commitOid": "0" * 40}

    def on_lfs_batch(self, rec, repo):
        objects = []
        for o in rec["json"]["objects"]:
            objects.append({"oid": o["oid"], "size": o["size"], "authenticated": True, "actions": {
                "upload": {"href": f"{self.base}/lfs-storage/{o['oid']}"},
                "verify": {"href": f"{self.base}/{repo}.git/info/lfs/objects/verify", "header": {}}}})
        return 200, {"transfer": "basic", "objects": objects}

    def on_lfs_put(self, rec, oid):
        if hashlib.sha256(rec["body"]).hexdigest() != oid:
            return 400, {"error": "content does not match the oid"}
        self.lfs[oid] = rec["body"]
        return 200, {}

    def on_lfs_verify(self, rec, repo):
        o = rec["json"]
        ok = o["oid"] in self.lfs and len(self.lfs[o["oid"]]) == o["size"]
        return (200, {}) if ok else (404, {"error": "object not uploaded"})

    def on_pr_create(self, rec, repo):
        num = 1 + sum(1 for r, _ in self.prs if r == repo)
        self.prs[(repo, num)] = rec["json"]["title"]
        return 200, {"num": num}

    def on_pr_details(self, rec, repo, num):
        title = self.prs[(repo, int(num))]
        return 200, {"title": title, "num": int(num), "author": {"name": "local-user"},
                     "createdAt": "2025-01-01T00:00:00.000Z", "status": "draft", "isPullRequest": True,
                     "repo": {"name": repo, "type": "model"}, "events": [], "filesWithConflicts": [],
                     "changes": {"base": "refs/heads/main"}, "diff": ""}

    def on_commit(self, rec, repo, rev):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}
        lines = rec["json"]
        header = next(l["value"] for l in lines if l["key"] == "header")
        files, lfs_files = {}, {}
        for line in lines:
            v = line["value"]
            if line["key"] == "file":
                assert v["encoding"] == "base64"
                files[v["path"]] = base64.b64decode(v["content"])
            elif line["key"] == "lfsFile":
                if v["oid"] not in self.lfs:
                    return 422, {"error": f"LFS object {v['oid']} for {v['path']} was never uploaded"}
                files[v["path"]] = self.lfs[v["oid"]]
                lfs_files[v["path"]] = v
        oid = hashlib.sha1(rec["body"]).hexdigest()
        revision = unquote(rev)
        pr_url = None
        if rec["query"].get("create_pr") == "1":
            num = 1 + sum(1 for r, _ in self.prs if r == repo)
            self.prs[(repo, num)] = header["summary"]
            pr_url, revision = f"{self.base}/{repo}/discussions/{num}", f"refs/pr/{num}"
        self.repos[repo]["commits"].append({"revision": revision, "summary": header["summary"], "files": files,
                                            "lfs_files": lfs_files, "oid": oid})
        return 200, {"commitUrl": f"{self.base}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": pr_url}

    def routes_called(self):
        return [r["route"] for r in self.requests]


def _parse_body(headers, body):
    ctype = headers.get("content-type", "")
    try:
        if "ndjson" in ctype:
            return [json.loads(l) for l in body.decode().splitlines() if l.strip()]
        if "json" in ctype:
            return json.loads(body.decode()) if body else None
    except ValueError:
        return None
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _serve(self):
        url = urlsplit(self.path)
        query = dict(p.split("=", 1) if "=" in p else (p, "") for p in url.query.split("&") if p)
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer = self.server.hub.handle(self.command, url.path, query, headers, self._body())
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"local"')
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _serve

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def local_hub(monkeypatch):
    """A running local Hub; HF_ENDPOINT points at it; telemetry, offline mode and xet are off
    (the xet storage protocol is not emulated: LFS files go through the basic LFS transfer)."""
    hub = LocalHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.hub = hub
    hub.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", hub.base)
    # huggingface_hub < 1.0 builds CommitInfo.repo_url from the ENDPOINT read at import: the
    # constant stands for "HF_ENDPOINT was set before Python started", as a user of a mirror does.
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.base)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    for name, value in (("HF_HUB_DISABLE_TELEMETRY", True), ("HF_HUB_OFFLINE", False), ("HF_HUB_DISABLE_XET", True),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", True)):  # xet: see the `uploader` fixture
        if hasattr(hf_constants, name):
            monkeypatch.setattr(hf_constants, name, value)
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["single_commit", "streamed"])
def uploader(request, local_hub, monkeypatch):
    """Which of huggingface_hub's upload paths runs: the single create_commit (no hf_xet, or
    HF_HUB_DISABLE_XET) or the streamed multi-commit pipeline (hf_xet installed; 1.x+). With every
    file answered "regular" by the local endpoint, neither touches xet storage."""
    if request.param == "streamed":
        if importlib.util.find_spec("hf_xet") is None or \
                importlib.util.find_spec("huggingface_hub._upload_pipeline") is None:
            pytest.skip("this huggingface_hub has no streamed (hf_xet) uploader")
        monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", False)
    return request.param


@pytest.fixture(scope="module")
def quantized():
    from awq import AutoAWQForCausalLM

    m = AutoAWQForCausalLM.from_pretrained(FIXTURE)
    calib = [[int(t) for t in row] for row in np.random.default_rng(0).integers(3, 128, (4, 32))]
    m.quantize(None, quant_config={"q_group_size": 32}, calib_data=calib, max_calib_seq_len=32)
    return m


@pytest.fixture(scope="module")
def saved(quantized, tmp_path_factory):
    """The model saved once by save_quantized, to compare the upload with."""
    d = str(tmp_path_factory.mktemp("saved") / "model")
    quantized.save_quantized(d)
    return d


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _front_matter(readme: str) -> dict:
    import yaml

    m = re.match(r"---\n(.*?)\n---\n", readme, re.S)
    assert m, readme[:200]
    return yaml.safe_load(m.group(1))


# ---- uploads ---------------------------------------------------------------------------------

def test_push_to_hub_local_endpoint_uploads_folder(local_hub, uploader, quantized, saved):
    info = push_to_hub(quantized, "tester/llama-awq", private=True, token=TOKEN,
                       commit_message="Tiny llama, AWQ g32", perplexities={"fp16": 29.9, "awq": 33.8})

    routes = local_hub.routes_called()
    assert routes[0] == "create" and routes[-1] == "commit" and None not in routes, routes
    create = local_hub.requests[0]
    assert create["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert create["json"]["name"] == "llama-awq" and create["json"]["organization"] == "tester"
    assert create["json"].get("private", create["json"].get("visibility") == "private") is True
    assert local_hub.repos["tester/llama-awq"]["private"] is True
    for r in local_hub.requests:  # every Hub API call carries the token (LFS storage PUTs are presigned)
        if r["route"] != "lfs-put":
            assert r["headers"].get("authorization") == f"Bearer {TOKEN}", r["path"]

    [commit] = local_hub.repos["tester/llama-awq"]["commits"]
    assert commit["summary"] == "Tiny llama, AWQ g32" and commit["revision"] == "main"
    assert sorted(commit["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert commit["files"]["model.safetensors"] == _read(os.path.join(saved, "model.safetensors"))
    assert commit["files"]["config.json"] == _read(os.path.join(saved, "config.json"))
    assert json.loads(commit["files"]["config.json"])["quantization_config"]["group_size"] == 32

    readme = commit["files"]["README.md"].decode()
    assert CARD_MARKER in readme
    for row in ("| w_bit | 4 |", "| q_group_size | 32 |", "| zero_point | true |", "| version | gemm |",
                "| fp16 | 29.9 |", "| awq | 33.8 |", "| model_type | llama |", "| huggingface_hub | "):
        assert row in readme, row
    meta = _front_matter(readme)
    assert meta["tags"] == ["awq", "4-bit"] and meta["library_name"] == "transformers"
    assert meta["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True,
                                           "version": "gemm"}
    assert "base_model" not in meta and "license" not in meta  # a local fixture folder: neither is known
    card = hf.ModelCard(readme)  # huggingface_hub reads the card back
    assert card.data.library_name == "transformers" and "awq" in card.data.tags

    assert info.commit_url == f"{local_hub.base}/tester/llama-awq/commit/{commit['oid']}"
    assert info.oid == commit["oid"]


def test_push_to_hub_local_endpoint_public_repo_without_perplexities(local_hub, quantized, tmp_path):
    push_to_hub(quantized, "tester/public-awq", token=TOKEN)
    create = local_hub.requests[0]
    assert create["json"].get("private", create["json"].get("visibility") == "private") is False
    [commit] = local_hub.repos["tester/public-awq"]["commits"]
    assert commit["summary"] == "Upload AWQ model"
    readme = commit["files"]["README.md"].decode()
    assert "None was measured for this upload." in readme and "| perplexity |" not in readme


@pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # huggingface_hub's own LFS PUT
def test_push_to_hub_local_endpoint_lfs_transfer(local_hub, quantized, saved):
    """model.safetensors through the LFS batch API (basic transfer): the bytes stored under the
    announced sha256 are the saved file's, and the commit references them by oid and size."""
    local_hub.lfs_suffixes = (".safetensors",)
    push_to_hub(quantized, "tester/lfs-awq", token=TOKEN, perplexities={"awq": 33.8})
    data = _read(os.path.join(saved, "model.safetensors"))
    oid = hashlib.sha256(data).hexdigest()
    [batch] = [r for r in local_hub.requests if r["route"] == "lfs-batch"]
    assert batch["json"]["operation"] == "upload" and "basic" in batch["json"]["transfers"]
    assert batch["json"]["objects"] == [{"oid": oid, "size": len(data)}]
    [put] = [r for r in local_hub.requests if r["route"] == "lfs-put"]
    assert put["path"] == f"/lfs-storage/{oid}" and put["body"] == data
    [commit] = local_hub.repos["tester/lfs-awq"]["commits"]
    assert commit["lfs_files"] == {"model.safetensors": {"path": "model.safetensors", "algo": "sha256", "oid": oid,
                                                         "size": len(data)}}
    assert sorted(commit["files"]) == ["README.md", "config.json", "model.safetensors"]


def test_push_to_hub_local_endpoint_save_dir(local_hub, quantized, saved, tmp_path):
    """save_dir without a checkpoint: the model is saved there and uploaded; save_dir gets no README.
    save_dir holding this model's checkpoint: uploaded as is."""
    out = tmp_path / "out"
    push_to_hub(quantized, "tester/dir-awq", token=TOKEN, save_dir=out)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert _read(out / "model.safetensors") == _read(os.path.join(saved, "model.safetensors"))
    push_to_hub(quantized, "tester/dir-awq", token=TOKEN, save_dir=saved, commit_message="again")
    commits = local_hub.repos["tester/dir-awq"]["commits"]
    assert [c["summary"] for c in commits] == ["Upload AWQ model", "again"]
    assert commits[0]["files"] == commits[1]["files"]
    assert sorted(os.listdir(saved)) == ["config.json", "model.safetensors"]


def test_push_to_hub_local_endpoint_revision_creates_branch(local_hub, quantized):
    push_to_hub(quantized, "tester/branch-awq", token=TOKEN, revision="awq-g32")
    [branch] = [r for r in local_hub.requests if r["route"] == "branch"]
    assert branch["path"] == "/api/models/tester/branch-awq/branch/awq-g32"
    [commit] = local_hub.repos["tester/branch-awq"]["commits"]
    assert commit["revision"] == "awq-g32"


def test_push_to_hub_local_endpoint_create_pr(local_hub, uploader, quantized):
    info = push_to_hub(quantized, "tester/pr-awq", token=TOKEN, create_pr=True, commit_message="AWQ as a PR")
    [commit] = local_hub.repos["tester/pr-awq"]["commits"]
    assert commit["revision"] == "refs/pr/1" and commit["summary"] == "AWQ as a PR"
    assert info.pr_url == f"{local_hub.base}/tester/pr-awq/discussions/1"


def test_push_to_hub_local_endpoint_name_only_repo_id(local_hub, quantized):
    """A bare name lands in the namespace the Hub answers with (the token's owner)."""
    info = push_to_hub(quantized, "solo-awq", token=TOKEN)
    assert "local-user/solo-awq" in local_hub.repos
    assert info.commit_url.startswith(f"{local_hub.base}/local-user/solo-awq/commit/")
    assert len(local_hub.repos["local-user/solo-awq"]["commits"]) == 1


def test_push_to_hub_local_endpoint_from_quantized_model(local_hub, quantized, saved):
    """A model loaded with from_quantized is saved again and uploaded: the same checkpoint bytes."""
    from awq import AutoAWQForCausalLM

    m = AutoAWQForCausalLM.from_quantized(saved)
    push_to_hub(m, "tester/reloaded-awq", token=TOKEN, perplexities={"awq": np.float32(33.8), "fp16": 30})
    [commit] = local_hub.repos["tester/reloaded-awq"]["commits"]
    assert commit["files"]["model.safetensors"] == _read(os.path.join(saved, "model.safetensors"))
    readme = commit["files"]["README.md"].decode()
    assert "| awq | 33.8 |" in readme and "| fp16 | 30 |" in readme  # as given, in the order given
    assert readme.index("| awq | 33.8 |") < readme.index("| fp16 | 30 |")
    assert "| q_group_size | 32 |" in readme


# ---- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("repo_id", ["", "   ", None, 7, "a/b/c", "bad id/x", "-x/y", "x/y-", "x/y.git", "a--b/c",
                                     "a/b..c", "ü/model", "x/" + "y" * 97])
def test_push_to_hub_local_endpoint_rejects_bad_repo_id(local_hub, quantized, repo_id):
    with pytest.raises(ValueError, match="repo_id"):
        push_to_hub(quantized, repo_id, token=TOKEN)
    assert local_hub.requests == []


def test_push_to_hub_local_endpoint_rejects_unquantized_model(local_hub):
    from awq import AutoAWQForCausalLM

    m = AutoAWQForCausalLM.from_pretrained(FIXTURE)
    with pytest.raises(ValueError, match="quantize first"):
        push_to_hub(m, "tester/float", token=TOKEN)
    assert local_hub.requests == []


@pytest.mark.parametrize("ppl", [{"awq": "33.8"}, {"awq": True}, {"awq": None}, {"": 3.0}, {"a|b": 3.0}, [29.9, 33.8],
                                 "33.8"])
def test_push_to_hub_local_endpoint_rejects_bad_perplexities(local_hub, quantized, ppl):
    with pytest.raises(ValueError, match="perplexities"):
        push_to_hub(quantized, "tester/ppl", token=TOKEN, perplexities=ppl)
    assert local_hub.requests == []


def test_push_to_hub_local_endpoint_rejects_foreign_save_dir(local_hub, quantized, saved, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads(_read(os.path.join(saved, "config.json")))
    cfg["quantization_config"]["group_size"] = 128
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="group_size saved 128, model 32"):
        push_to_hub(quantized, "tester/x", token=TOKEN, save_dir=other)
    # a README.md of the user's own would drop the perplexities passed: refused, not hidden
    mine = tmp_path / "mine"
    quantized.save_quantized(str(mine))
    (mine / "README.md").write_text("---\nlicense: mit\n---\n# my card\n")
    with pytest.raises(ValueError, match="not an awq model card"):
        push_to_hub(quantized, "tester/x", token=TOKEN, save_dir=mine, perplexities={"awq": 33.8})
    assert local_hub.requests == []
    push_to_hub(quantized, "tester/x", token=TOKEN, save_dir=mine)  # without perplexities: uploaded as is
    [commit] = local_hub.repos["tester/x"]["commits"]
    assert commit["files"]["README.md"] == b"---\nlicense: mit\n---\n# my card\n"


def test_push_to_hub_local_endpoint_http_500(local_hub, quantized):
    local_hub.fail["create"] = (500, "internal error (emulated)")
    with pytest.raises(HubPushError) as exc:
        push_to_hub(quantized, "tester/err", token=TOKEN)
    msg = str(exc.value)
    assert local_hub.base in msg and "'tester/err'" in msg and "HTTP 500" in msg and "internal error (emulated)" in msg
    assert exc.value.status_code == 500 and exc.value.endpoint == local_hub.base and exc.value.repo_id == "tester/err"
    assert TOKEN not in msg


def test_push_to_hub_local_endpoint_http_401_bad_token(local_hub, quantized):
    local_hub.token = "hf_the_right_one"
    with pytest.raises(HubPushError, match="HTTP 401") as exc:
        push_to_hub(quantized, "tester/err", token="hf_wrong")
    assert local_hub.base in str(exc.value) and "token" in str(exc.value)
    assert exc.value.status_code == 401 and "tester/err" not in local_hub.repos


def test_push_to_hub_local_endpoint_commit_refused(local_hub, quantized):
    local_hub.fail["commit"] = (403, "You don't have the rights to commit here (emulated)")
    with pytest.raises(HubPushError, match="uploading the folder") as exc:
        push_to_hub(quantized, "tester/err", token=TOKEN)
    assert local_hub.base in str(exc.value) and exc.value.status_code == 403
    assert local_hub.repos["tester/err"]["commits"] == []


def test_push_to_hub_local_endpoint_unreachable(local_hub, quantized, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setattr(hf_constants, "ENDPOINT", dead)
    with pytest.raises(HubPushError, match="could not reach") as exc:
        push_to_hub(quantized, "tester/err", token=TOKEN)
    assert dead in str(exc.value) and exc.value.status_code is None


def test_push_to_hub_local_endpoint_without_huggingface_hub(local_hub, quantized, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub -> ImportError
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        push_to_hub(quantized, "tester/x", token=TOKEN)
    assert local_hub.requests == []


# ---- the card on its own -----------------------------------------------------------------------

def test_local_endpoint_card_base_model_and_license(quantized, monkeypatch):
    """base_model comes from config _name_or_path when it is a Hub id (never from a local path);
    license from config.json; nothing else is made up."""
    monkeypatch.setitem(quantized.config, "_name_or_path", "meta-llama/Llama-2-7b-hf")
    monkeypatch.setitem(quantized.config, "license", "llama2")
    meta = _front_matter(model_card(quantized, "tester/x", {"awq": 5.6}))
    assert meta["base_model"] == "meta-llama/Llama-2-7b-hf" and meta["base_model_relation"] == "quantized"
    assert meta["license"] == "llama2"
    monkeypatch.setitem(quantized.config, "_name_or_path", "/data/models/llama")
    monkeypatch.setitem(quantized.config, "license", None)
    meta = _front_matter(model_card(quantized))
    assert "base_model" not in meta and "license" not in meta
    monkeypatch.setitem(quantized.config, "_name_or_path",
                        "/root/.cache/huggingface/hub/models--Qwen--Qwen2-0.5B/snapshots/abc123")
    assert _front_matter(model_card(quantized))["base_model"] == "Qwen/Qwen2-0.5B"


def test_local_endpoint_not_needed_save_dir_checks_version_and_shapes(quantized, tmp_path):
    """save_dir must hold this model's GEMM checkpoint: another layout or another model's shapes
    are refused before anything is sent (no endpoint is contacted)."""
    import json as _json
    import shutil as _shutil

    from awq.hub import _checkpoint_error

    model = quantized
    good = tmp_path / "good"
    model.save_quantized(str(good))
    assert _checkpoint_error(model, str(good)) is None
    for name, edit in (("gemv", lambda c: c["quantization_config"].update(version="gemv")),
                       ("wider", lambda c: c.update(hidden_size=2 * c["hidden_size"]))):
        d = tmp_path / name
        _shutil.copytree(good, d)
        cfg = _json.loads((d / "config.json").read_text())
        edit(cfg)
        (d / "config.json").write_text(_json.dumps(cfg))
        assert _checkpoint_error(model, str(d)), name
    d = tmp_path / "noweights"
    _shutil.copytree(good, d)
    (d / "model.safetensors").unlink()
    assert "cannot be opened" in _checkpoint_error(model, str(d))
