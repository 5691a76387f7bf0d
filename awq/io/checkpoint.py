"""Hugging Face model folders: read single-file or sharded safetensors checkpoints, write them,
and replace an output folder atomically.

Why: loading and saving go through one place that enforces the index rules (every tensor listed
exactly once, shard names that cannot leave the folder, no pickle files), and saving never leaves
a half-written model where a good one used to be.

Reading: `open_checkpoint(folder)` validates the index and every shard header up front (headers
only; tensor data is paged in from the mmap when read). Writing: `write_checkpoint` into a fresh
folder, normally the one `atomic_folder(target)` yields.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import re
import secrets
import shutil
import warnings
from typing import Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from .safetensors import BF16, SafetensorsFile, TensorLike, _DuplicateKey, _pairs_no_duplicates, save_file

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "open_checkpoint",
    "write_checkpoint",
    "parse_size",
    "atomic_folder",
    "check_writable",
    "read_json",
    "SAFE_WEIGHTS_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
]

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

# Deeper JSON than this is not a config or an index; reject before it can exhaust the stack.
MAX_JSON_DEPTH = 64

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint folder or one of its JSON files is malformed; the message names the file."""


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------


def _json_depth(value: object) -> int:
    """Maximum nesting depth of containers (iterative, so it cannot recurse too deep itself)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in v)
    return deepest


def read_json(path: PathLike, what: str) -> dict:
    """Read a JSON object from `path`; `what` names the file's role in messages ("config").

    Missing file -> FileNotFoundError; bad UTF-8, bad JSON, duplicate keys, a non-object or
    nesting deeper than MAX_JSON_DEPTH -> CheckpointError naming the file (and position).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{what} not found", path) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{what} {path}: not valid UTF-8 at byte {e.start}") from None
    try:
        value = json.loads(text, object_pairs_hook=_pairs_no_duplicates)
    except _DuplicateKey as e:
        raise CheckpointError(f"{what} {path}: duplicate key {e.key!r}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{what} {path}: invalid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except ValueError as e:  # an integer literal past Python's 4300-digit conversion limit
        raise CheckpointError(f"{what} {path}: invalid JSON: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{what} {path}: JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} {path}: expected a JSON object, got {type(value).__name__}")
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{what} {path}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _check_shard_name(name: str, index_path: str) -> None:
    """A shard name from an index must name a file inside the folder (checked lexically, so the
    symlinked files of a Hugging Face cache snapshot still load)."""
    bad = None
    if not name:
        bad = "is empty"
    elif "\x00" in name:
        bad = "contains a NUL byte"
    elif "\\" in name:
        bad = "contains a backslash"
    elif name.startswith("/") or os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        bad = "is an absolute path"
    elif ".." in name.split("/"):
        bad = "contains '..'"
    elif posixpath.normpath(name) in (".", "") or name.endswith("/"):
        bad = "does not name a file"
    if bad:
        raise CheckpointError(f"{index_path}: shard name {name!r} {bad}; shards must be files "
                              f"inside the checkpoint folder")


class Checkpoint:
    """Tensors of a checkpoint folder, across one or more safetensors files (kept open, mmapped).

    `get` returns the raw read-only view (BF16 as uint16); `get_float32` a new float32 array.
    """

    def __init__(self, folder: str, files: Dict[str, SafetensorsFile], weight_map: Dict[str, str],
                 index_metadata: Optional[dict] = None):
        self.folder = folder
        self._files = files                  # file name -> open SafetensorsFile
        self._weight_map = weight_map        # tensor name -> file name
        self.index_metadata = index_metadata  # the index's "metadata" object, None if unsharded

    @property
    def files(self) -> List[str]:
        """Paths of the safetensors files, in the order they are first referenced."""
        return [f.path for f in self._files.values()]

    @property
    def sharded(self) -> bool:
        return self.index_metadata is not None

    def _file(self, name: str) -> SafetensorsFile:
        try:
            return self._files[self._weight_map[name]]
        except KeyError:
            raise KeyError(f"tensor {name!r} not found in checkpoint {self.folder}") from None

    def keys(self) -> List[str]:
        """Tensor names: index order for a sharded checkpoint, file order otherwise."""
        return list(self._weight_map)

    def __contains__(self, name: object) -> bool:
        return name in self._weight_map

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._weight_map))

    def __len__(self) -> int:
        return len(self._weight_map)

    def shard_of(self, name: str) -> str:
        """Path of the file holding tensor `name`."""
        return self._file(name).path

    def dtype(self, name: str) -> str:
        return self._file(name).dtype(name)

    def shape(self, name: str) -> Tuple[int, ...]:
        return self._file(name).shape(name)

    def nbytes(self, name: str) -> int:
        return self._file(name).nbytes(name)

    def get(self, name: str) -> np.ndarray:
        return self._file(name).get(name)

    def get_float32(self, name: str) -> np.ndarray:
        return self._file(name).get_float32(name)

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Checkpoint({self.folder!r}, {len(self._weight_map)} tensors, "
                f"{len(self._files)} files)")


def _open_single(folder: str, file_name: str) -> Checkpoint:
    st = SafetensorsFile(os.path.join(folder, file_name))
    return Checkpoint(folder, {file_name: st}, {k: file_name for k in st.keys()})


def _open_sharded(folder: str, index_name: str) -> Checkpoint:
    index_path = os.path.join(folder, index_name)
    index = read_json(index_path, "safetensors index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: 'weight_map' must be an object of tensor name -> "
                              f"shard file name")
    metadata = index.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{index_path}: 'metadata' must be an object")
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index_path}: weight_map[{tensor!r}] must be a file name "
                                  f"string, got {shard!r}")

    files: Dict[str, SafetensorsFile] = {}
    try:
        for shard in dict.fromkeys(weight_map.values()):
            _check_shard_name(shard, index_path)
            shard_path = os.path.join(folder, shard)
            if not os.path.isfile(shard_path):
                raise CheckpointError(f"{index_path}: shard {shard!r} is missing ({shard_path})")
            files[shard] = SafetensorsFile(shard_path)
        for tensor, shard in weight_map.items():
            if tensor not in files[shard]:
                raise CheckpointError(f"{index_path}: tensor {tensor!r} is listed in shard "
                                      f"{shard!r} but {files[shard].path} does not contain it")
        for shard, st in files.items():
            for tensor in st.keys():
                listed = weight_map.get(tensor)
                if listed is None:
                    raise CheckpointError(f"{index_path}: tensor {tensor!r} of shard {shard!r} "
                                          f"is not listed in the weight_map")
                if listed != shard:
                    raise CheckpointError(f"{index_path}: tensor {tensor!r} is in shard "
                                          f"{shard!r} and in {listed!r}; the index lists "
                                          f"{listed!r}")
        _check_no_orphan_shards(folder, index_path, files)
    except BaseException:
        for st in files.values():
            st.close()
        raise
    return Checkpoint(folder, files, dict(weight_map), metadata)


_SHARD_RE = re.compile(r"^(.*)-(\d+)-of-(\d+)\.safetensors$")


def _check_no_orphan_shards(folder: str, index_path: str, referenced: Mapping[str, object]) -> None:
    """A file named like a shard of the set (same prefix and count) that the index never points
    to holds tensors the index forgot; loading without them would silently drop weights."""
    sets = set()
    for name in referenced:
        m = _SHARD_RE.match(name)
        if m:
            sets.add((m.group(1), m.group(3)))
    if not sets:
        return
    for name in sorted(os.listdir(folder)):
        m = _SHARD_RE.match(name)
        if m and (m.group(1), m.group(3)) in sets and name not in referenced:
            raise CheckpointError(f"{index_path}: shard file {name!r} is in the folder but the "
                                  f"weight_map lists none of its tensors")


def open_checkpoint(folder: PathLike, filename: Optional[str] = None) -> Checkpoint:
    """Open the safetensors weights of a model folder.

    Uses model.safetensors, else model.safetensors.index.json and its shards (the order
    transformers uses). `filename` picks another file in the folder: a `.safetensors` file or a
    `.index.json` index. Pickle checkpoints (.bin/.pt) are refused, never unpickled.
    """
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise FileNotFoundError(errno.ENOENT, "checkpoint folder not found", folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(errno.ENOTDIR, "checkpoint path is not a folder", folder)

    if filename:
        _check_shard_name(filename, folder)
        path = os.path.join(folder, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, "checkpoint file not found", path)
        if filename.endswith(".index.json"):
            return _open_sharded(folder, filename)
        return _open_single(folder, filename)

    if os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_NAME)):
        return _open_single(folder, SAFE_WEIGHTS_NAME)
    if os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)):
        return _open_sharded(folder, SAFE_WEIGHTS_INDEX_NAME)

    names = sorted(os.listdir(folder))
    other_st = [n for n in names if n.endswith((".safetensors", ".safetensors.index.json"))]
    if other_st:
        raise CheckpointError(f"{folder}: no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}; "
                              f"found {', '.join(other_st)}: pass filename= to pick one")
    pickles = [n for n in names if n.endswith(_PICKLE_SUFFIXES) or n.endswith(".bin.index.json")]
    if pickles:
        raise CheckpointError(f"{folder}: only PyTorch pickle checkpoints found "
                              f"({', '.join(pickles)}); pickle files are not loaded because "
                              f"unpickling can run arbitrary code. Convert the model to "
                              f"safetensors first (e.g. save_pretrained(..., "
                              f"safe_serialization=True) in transformers)")
    raise CheckpointError(f"{folder}: no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} found")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

# Units as transformers parses them: decimal KB/MB/GB, binary KiB/MiB/GiB; a lowercase final
# "b" ("5Gb") means bits, as in transformers' convert_file_size_to_int.
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*$")


def parse_size(s: Union[int, str]) -> int:
    """"5GB" -> 5_000_000_000, "2MiB" -> 2_097_152, "10Mb" -> 1_250_000 bits; ints pass through."""
    if isinstance(s, bool):
        raise ValueError(f"invalid size {s!r}")
    if isinstance(s, (int, np.integer)):
        if s < 0:
            raise ValueError(f"invalid size {s!r}: negative")
        return int(s)
    if not isinstance(s, str):
        raise ValueError(f"invalid size {s!r}: expected an int or a string like '5GB'")
    m = _SIZE_RE.match(s)
    unit = m.group(2) if m else None
    if m is None or unit.upper() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {s!r}: use a number and a unit, e.g. '5GB', '500MiB'")
    number = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    size = int(number * _SIZE_UNITS[unit.upper()])
    if len(unit) >= 2 and unit.endswith("b"):
        size //= 8
    return size


def _nbytes(value: TensorLike) -> int:
    return int(value.nbytes)


def write_checkpoint(
    tensors: Mapping[str, TensorLike],
    folder: PathLike,
    shard_size: Union[int, str] = "5GB",
    metadata: Optional[Mapping[str, str]] = None,
) -> List[str]:
    """Write `tensors` as model.safetensors, or as shards + model.safetensors.index.json when
    they exceed `shard_size`. Returns the file names written.

    tensors: name -> numpy array or BF16. folder: an existing folder holding no weights yet
    (normally from `atomic_folder`). Shards are filled greedily in insertion order; a tensor
    larger than shard_size gets a shard of its own. metadata goes into every file's __metadata__.
    """
    folder = os.fspath(folder)
    limit = parse_size(shard_size)
    if limit <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size!r}")
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "output folder not found (create it first)", folder)
    stale = [n for n in os.listdir(folder)
             if n.endswith(".safetensors") or n == SAFE_WEIGHTS_INDEX_NAME]
    if stale:
        # Old shards beside new ones would be loaded by mistake; write into a fresh folder.
        raise CheckpointError(f"{folder} already holds weights ({', '.join(sorted(stale))}); "
                              f"write into a fresh folder (see atomic_folder)")
    for name, value in tensors.items():
        if not isinstance(value, (np.ndarray, np.generic, BF16)):
            raise TypeError(f"tensor {name!r}: expected a numpy array or BF16, "
                            f"got {type(value).__name__}")

    shards: List[List[str]] = [[]]
    filled = 0
    for name, value in tensors.items():
        size = _nbytes(value)
        if shards[-1] and filled + size > limit:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += size

    if len(shards) == 1:
        save_file(tensors, os.path.join(folder, SAFE_WEIGHTS_NAME), metadata)
        return [SAFE_WEIGHTS_NAME]

    n = len(shards)
    weight_map: Dict[str, str] = {}
    written: List[str] = []
    for i, names in enumerate(shards, start=1):
        file_name = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file({k: tensors[k] for k in names}, os.path.join(folder, file_name), metadata)
        weight_map.update((k, file_name) for k in names)
        written.append(file_name)
    index = {
        "metadata": {"total_size": sum(_nbytes(v) for v in tensors.values())},
        "weight_map": dict(sorted(weight_map.items())),
    }
    with open(os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as fh:
        fh.write(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    written.append(SAFE_WEIGHTS_INDEX_NAME)
    return written


# ---------------------------------------------------------------------------------------------
# Atomic output folder
# ---------------------------------------------------------------------------------------------

# An existing target is replaced only if it looks like a model folder: flat (no subfolders, so
# replacing it never deletes a tree) and holding weights or a config. Anything else is refused.
_MODEL_MARKERS = (".safetensors", ".index.json", ".bin", "config.json")


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _check_replaceable(target: str) -> None:
    if not os.path.isdir(target):
        raise FileExistsError(errno.EEXIST, "output path exists and is not a folder", target)
    entries = os.listdir(target)
    if not entries:
        return
    subdirs = [e for e in entries if os.path.isdir(os.path.join(target, e))
               and not os.path.islink(os.path.join(target, e))]
    if subdirs:
        raise FileExistsError(errno.EEXIST, f"refusing to replace output folder: it has "
                              f"subfolders ({', '.join(sorted(subdirs)[:5])}), so it does not "
                              f"look like a model folder; choose a new or empty folder", target)
    if not any(e.endswith(_MODEL_MARKERS) for e in entries):
        raise FileExistsError(errno.EEXIST, "refusing to replace output folder: it holds no "
                              "weights or config.json, so it does not look like a model folder; "
                              "choose a new or empty folder", target)


def check_writable(target: PathLike) -> None:
    """Raise now (before any heavy work) if `target` cannot be created or replaced.

    Checks that the nearest existing ancestor is a writable folder (by creating and removing a
    probe folder, which also catches read-only mounts and works for root), and that an existing
    target is a folder that `atomic_folder` may replace.
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.lexists(target):
        target = os.path.realpath(target)
        _check_replaceable(target)
    parent = os.path.dirname(target)
    base = _nearest_existing(parent)
    if not os.path.isdir(base):
        raise NotADirectoryError(errno.ENOTDIR, f"cannot create output folder {target}: "
                                 f"{base} is not a folder", base)
    probe = os.path.join(base, f".awq-write-probe-{secrets.token_hex(4)}")
    try:
        os.mkdir(probe)
    except OSError as e:
        raise PermissionError(e.errno or errno.EACCES, f"cannot write output folder {target}: "
                              f"{base} is not writable ({e.strerror})", base) from None
    os.rmdir(probe)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_folder(folder: str) -> None:
    """fsync every regular file of a flat folder, then the folder itself, so that the folder a
    rename publishes holds complete files even after a power loss. Errors (EIO, ENOSPC on a
    delayed write) propagate: the data is not safely on disk."""
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False):
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE): a reader or a crash
    sees the old folder or the new one, never neither. False where the C library or the file
    system lacks it (the caller then falls back to two renames)."""
    try:
        import ctypes

        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, ImportError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def _save_error(e: OSError, target: str, existed: bool) -> OSError:
    """The OSError of a failed save, naming the destination (not only a temp file) and saying
    what is left there; same errno, so ENOSPC stays recognizable."""
    where = f" (at {os.path.basename(e.filename)})" if getattr(e, "filename", None) else ""
    left = "the previous checkpoint there is unchanged" if existed else "nothing was written there"
    err = OSError(e.errno, f"could not save {target}: {e.strerror or e}{where}; {left}")
    err.filename = target
    return err


@contextlib.contextmanager
def atomic_folder(target: PathLike) -> Iterator[str]:
    """Yield a fresh temp folder beside `target`; on success it becomes `target`.

    On success the temp folder's files and the folder are fsynced, then it takes target's place:
    in one atomic exchange where the system has one (Linux renameat2), else by renaming an existing
    target to a backup, the temp folder to target, and restoring the backup if that fails. The old
    folder is deleted last. If the body or any of this fails (a full disk, an I/O error, Ctrl-C),
    the temp folder is deleted and target is left as it was; an OSError is re-raised naming
    target, with its errno. A symlinked target is resolved and the folder it points to is
    replaced. Missing parent folders are created.
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.lexists(target):
        target = os.path.realpath(target)
    check_writable(target)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    existed = os.path.lexists(target)

    while True:
        tmp = os.path.join(parent, f".{name}.tmp-{secrets.token_hex(4)}")
        try:
            os.mkdir(tmp)  # mode 0o777 minus umask, like any new folder
            break
        except FileExistsError:
            continue

    try:
        yield tmp
        _fsync_folder(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise _save_error(e, target, existed) from e
        raise

    old = None  # the replaced folder, deleted once target is the new one
    try:
        if os.path.lexists(target):
            _check_replaceable(target)
            if _exchange(tmp, target):
                old = tmp
            else:
                old = os.path.join(parent, f".{name}.old-{secrets.token_hex(4)}")
                os.rename(target, old)
                try:
                    os.rename(tmp, target)
                except BaseException:
                    os.rename(old, target)
                    old = None
                    raise
        else:
            os.rename(tmp, target)
    except BaseException as e:
        if old != tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise _save_error(e, target, existed) from e
        raise
    _fsync_dir(parent)
    if old is not None:
        try:
            shutil.rmtree(old)
        except OSError as e:
            warnings.warn(f"replaced {target}, but could not delete the old copy at {old}: {e}")
