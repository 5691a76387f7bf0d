"""Strict, memory-mapped safetensors reader and an aligned writer (numpy only, no torch).

Why our own: the checkpoints we read come from anywhere, so the reader validates the whole header
when a file is opened (every rule of the format, each failure naming the file and the rule), and
then hands out zero-copy numpy views on a read-only mmap; pages are touched only when a tensor is
read. The writer produces files any safetensors reader accepts: a space-padded header whose length
is a multiple of 8 and tensors ordered so every data offset is aligned to its item size.

File layout (little-endian throughout):
    [0, 8)          u64 N, the header length in bytes
    [8, 8 + N)      UTF-8 JSON object {name: {dtype, shape, data_offsets: [begin, end)}, ...,
                    "__metadata__": {str: str}}, possibly padded with trailing spaces
    [8 + N, EOF)    the data section; offsets are relative to its start and must tile it exactly

bf16 has no numpy dtype: it is read as uint16 (raw bits) and written from uint16 through `BF16`.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import secrets
from typing import Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = [
    "SafetensorsError",
    "SafetensorsFile",
    "BF16",
    "save_file",
    "bf16_to_float32",
    "float32_to_bf16",
    "DTYPES",
    "MAX_HEADER_SIZE",
]

# The reference implementation's limit; a larger header is a corrupt or hostile file.
MAX_HEADER_SIZE = 100_000_000
# numpy's limit on dimensions (NPY_MAXDIMS: 32 before numpy 2, 64 since).
MAX_NDIM = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32

# ---------------------------------------------------------------------------------------------
# dtype table: safetensors name -> numpy dtype of the stored bytes (bf16 stored as raw uint16)
# ---------------------------------------------------------------------------------------------

DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

# Names the format defines that we recognise but do not decode (a clearer message than "unknown").
_UNSUPPORTED_DTYPES = ("F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64")

# numpy kind+itemsize -> safetensors name, for the writer.
_NUMPY_TO_ST: Dict[Tuple[str, int], str] = {
    ("f", 8): "F64", ("f", 4): "F32", ("f", 2): "F16",
    ("i", 8): "I64", ("i", 4): "I32", ("i", 2): "I16", ("i", 1): "I8",
    ("u", 8): "U64", ("u", 4): "U32", ("u", 2): "U16", ("u", 1): "U8",
    ("b", 1): "BOOL",
}


class SafetensorsError(ValueError):
    """A safetensors file breaks a rule of the format; the message names the file and the rule."""


# ---------------------------------------------------------------------------------------------
# bf16 helpers
# ---------------------------------------------------------------------------------------------


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bits: uint16 bf16 patterns -> new float32 array (exact: bf16 is the top half of an f32)."""
    bits = np.asarray(bits)
    if bits.dtype.kind != "u" or bits.dtype.itemsize != 2:
        raise TypeError(f"bf16_to_float32 expects uint16 bit patterns, got {bits.dtype}")
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """x: float array -> uint16 bf16 patterns, round to nearest even; NaN stays a (quiet) NaN."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    # Round to nearest even: add 0x7FFF plus the lowest kept bit, then truncate.
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    # Rounding could carry a NaN's payload into infinity; force the quiet bit instead.
    quiet_nan = (u >> np.uint32(16)) | np.uint32(0x0040)
    return np.where(np.isnan(x), quiet_nan, rounded).astype(np.uint16)


class BF16:
    """Marks a uint16 array as bf16 bit patterns for `save_file` (numpy has no bf16 dtype).

    bits: uint16 array of any shape; `BF16.from_float(x)` rounds a float array first.
    """

    __slots__ = ("bits",)

    def __init__(self, bits: np.ndarray):
        bits = np.asarray(bits)
        if bits.dtype.kind != "u" or bits.dtype.itemsize != 2:
            raise TypeError(f"BF16 wraps uint16 bit patterns, got {bits.dtype}")
        self.bits = bits

    @classmethod
    def from_float(cls, x: np.ndarray) -> "BF16":
        return cls(float32_to_bf16(x))

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.bits.shape

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)

    def __repr__(self) -> str:
        return f"BF16(shape={self.bits.shape})"


# ---------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _pairs_no_duplicates(pairs: List[Tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _is_int(x: object) -> bool:
    # JSON true/false arrive as bool, a subclass of int: they are not sizes.
    return type(x) is int


class _Entry:
    """One tensor's header entry, validated. begin/end are relative to the data section."""

    __slots__ = ("dtype", "shape", "begin", "end")

    def __init__(self, dtype: str, shape: Tuple[int, ...], begin: int, end: int):
        self.dtype = dtype
        self.shape = shape
        self.begin = begin
        self.end = end


class SafetensorsFile:
    """A safetensors file opened read-only with mmap; the whole header is validated at open.

    `get` returns read-only numpy views on the mapping (no copy). A view keeps the mapping alive
    after `close()`; the mapping is released when the last view is gone.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        self._mmap: Optional[mmap.mmap] = None
        self._entries: Dict[str, _Entry] = {}
        self._metadata: Dict[str, str] = {}
        self._data_start = 0
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                self._fail(f"file is {size} bytes, shorter than the 8-byte header length")
            # mmap keeps its own descriptor, so the file object can be closed right away.
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse_header(mm, len(mm))
        except BaseException:
            mm.close()
            raise
        self._mmap = mm

    def _fail(self, rule: str) -> "None":
        raise SafetensorsError(f"{self.path}: {rule}")

    def _parse_header(self, mm: mmap.mmap, size: int) -> None:
        n = int.from_bytes(mm[:8], "little")
        if n > MAX_HEADER_SIZE:
            self._fail(f"header length {n} exceeds the limit of {MAX_HEADER_SIZE} bytes")
        if 8 + n > size:
            self._fail(f"header length {n} runs past the end of the file ({size} bytes)")
        raw = mm[8:8 + n]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self._fail(f"header is not valid UTF-8 (byte {e.start})")
        if not text.startswith("{"):
            self._fail("header is not a JSON object (it must begin with '{')")
        try:
            header = json.loads(text, object_pairs_hook=_pairs_no_duplicates)
        except _DuplicateKey as e:
            self._fail(f"duplicate key {e.key!r} in the header")
        except json.JSONDecodeError as e:
            self._fail(f"header is not valid JSON: {e.msg} at byte {e.pos}")
        except ValueError as e:  # an integer literal past Python's 4300-digit conversion limit
            self._fail(f"header is not valid JSON: {e}")
        except RecursionError:
            self._fail("header JSON is nested too deeply")
        # Trailing padding (spaces from writers; any JSON whitespace, as the reference reader
        # accepts) is consumed by json.loads; anything else after the object is "Extra data".
        if not isinstance(header, dict):
            self._fail("header is not a JSON object")

        data_len = size - 8 - n
        self._data_start = 8 + n

        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            self._fail("__metadata__ must be a map of strings to strings")
        self._metadata = metadata

        entries: Dict[str, _Entry] = {}
        for name, info in header.items():
            entries[name] = self._parse_entry(name, info, data_len)

        # Sorted by position, the tensors must tile [0, data_len) exactly.
        pos = 0
        for name, e in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
            if e.begin > pos:
                self._fail(f"hole in the data section: bytes [{pos}, {e.begin}) before tensor "
                           f"{name!r} belong to no tensor")
            if e.begin < pos:
                self._fail(f"tensor {name!r} data [{e.begin}, {e.end}) overlaps the previous "
                           f"tensor, which ends at {pos}")
            pos = e.end
        if pos != data_len:
            self._fail(f"{data_len - pos} trailing bytes after the last tensor (data section is "
                       f"{data_len} bytes, tensors end at {pos})")
        self._entries = entries

    def _parse_entry(self, name: str, info: object, data_len: int) -> _Entry:
        where = f"tensor {name!r}"
        if not isinstance(info, dict):
            self._fail(f"{where}: entry is not a JSON object")
        for key in ("dtype", "shape", "data_offsets"):
            if key not in info:
                self._fail(f"{where}: entry has no {key!r}")
        dtype = info["dtype"]
        if not isinstance(dtype, str):
            self._fail(f"{where}: dtype must be a string, got {dtype!r}")
        if dtype not in DTYPES:
            if dtype in _UNSUPPORTED_DTYPES:
                self._fail(f"{where}: dtype {dtype} is not supported by this reader")
            self._fail(f"{where}: unknown dtype {dtype!r}")
        shape = info["shape"]
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            self._fail(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
        # numpy's limits, which an empty tensor would otherwise only hit in get(): at most 64
        # dimensions, and the extents (zeros counted as 1) times the item size within int64.
        if len(shape) > MAX_NDIM:
            self._fail(f"{where}: shape has {len(shape)} dimensions, more than {MAX_NDIM}")
        if math.prod(max(d, 1) for d in shape) * DTYPES[dtype].itemsize >= 2**63:
            self._fail(f"{where}: shape {shape} is too large to index")
        offsets = info["data_offsets"]
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) and o >= 0 for o in offsets)):
            self._fail(f"{where}: data_offsets must be [begin, end] non-negative integers, "
                       f"got {offsets!r}")
        begin, end = offsets
        if end < begin:
            self._fail(f"{where}: data_offsets end {end} < begin {begin}")
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if end - begin != expected:
            self._fail(f"{where}: data_offsets span {end - begin} bytes but shape {shape} of "
                       f"{dtype} needs {expected}")
        if end > data_len:
            self._fail(f"{where}: data_offsets [{begin}, {end}) run past the data section "
                       f"({data_len} bytes)")
        return _Entry(dtype, tuple(shape), begin, end)

    # -- queries -------------------------------------------------------------------------------

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} not found in {self.path}") from None

    def keys(self) -> List[str]:
        """Tensor names in header order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def metadata(self) -> Dict[str, str]:
        return dict(self._metadata)

    def dtype(self, name: str) -> str:
        """The safetensors dtype name ("F16", "BF16", "I32", ...)."""
        return self._entry(name).dtype

    def shape(self, name: str) -> Tuple[int, ...]:
        return self._entry(name).shape

    def nbytes(self, name: str) -> int:
        e = self._entry(name)
        return e.end - e.begin

    def get(self, name: str) -> np.ndarray:
        """Read-only array of the stored bytes (BF16 as uint16); a view on the mmap when aligned."""
        e = self._entry(name)
        if self._mmap is None:
            raise ValueError(f"{self.path} is closed")
        dt = DTYPES[e.dtype]
        count = (e.end - e.begin) // dt.itemsize
        if count == 0:
            arr = np.empty(e.shape, dtype=dt)
            arr.flags.writeable = False
            return arr
        offset = self._data_start + e.begin
        arr = np.frombuffer(self._mmap, dtype=dt, count=count, offset=offset).reshape(e.shape)
        if offset % dt.itemsize:
            # Other writers need not align data; an unaligned view is slow or unusable downstream.
            arr = arr.copy()
            arr.flags.writeable = False
        return arr

    def get_float32(self, name: str) -> np.ndarray:
        """A new float32 array from an F16, BF16, F32 or F64 tensor. F64 values beyond the float32
        range become +-Inf, which the quantizer and loaders then report as non-finite weights."""
        dtype = self._entry(name).dtype
        raw = self.get(name)
        if dtype == "BF16":
            return bf16_to_float32(raw)
        if dtype in ("F16", "F32", "F64"):
            with np.errstate(over="ignore"):
                return raw.astype(np.float32)  # astype always copies here
        raise TypeError(f"tensor {name!r} in {self.path} is {dtype}, not a float type")

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        mm, self._mmap = self._mmap, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                # Views from get() still export the buffer; the mapping goes with the last one.
                pass

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._mmap is None else f"{len(self._entries)} tensors"
        return f"SafetensorsFile({self.path!r}, {state})"


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------

TensorLike = Union[np.ndarray, BF16]


def _as_stored(name: str, value: object) -> Tuple[str, np.ndarray]:
    """-> (safetensors dtype, little-endian array of the bytes to store)."""
    if isinstance(value, BF16):
        return "BF16", value.bits.astype("<u2", copy=False)
    if not isinstance(value, (np.ndarray, np.generic)):
        raise TypeError(f"tensor {name!r}: expected a numpy array or BF16, "
                        f"got {type(value).__name__}")
    arr = np.asarray(value)
    st = _NUMPY_TO_ST.get((arr.dtype.kind, arr.dtype.itemsize))
    if st is None:
        raise TypeError(f"tensor {name!r}: numpy dtype {arr.dtype} has no safetensors equivalent")
    return st, arr.astype(DTYPES[st], copy=False)


def _write_array(fh, arr: np.ndarray) -> None:
    if arr.size == 0:
        return
    if arr.flags.c_contiguous:
        fh.write(arr.reshape(-1).view(np.uint8))
        return
    # Non-contiguous: copy in slabs along axis 0 so memory stays bounded by ~64 MiB.
    if arr.ndim == 0:
        fh.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
        return
    row_bytes = max(1, arr.nbytes // arr.shape[0])
    step = max(1, (64 << 20) // row_bytes)
    for i in range(0, arr.shape[0], step):
        fh.write(np.ascontiguousarray(arr[i:i + step]).reshape(-1).view(np.uint8))


def save_file(
    tensors: Mapping[str, TensorLike],
    path: Union[str, os.PathLike],
    metadata: Optional[Mapping[str, str]] = None,
) -> None:
    """Write `tensors` to a safetensors file at `path` (flushed and fsynced).

    tensors: name -> numpy array (any layout; stored C-order, little-endian) or BF16.
    metadata: str -> str, stored as __metadata__; default {"format": "pt"}.
    Tensors are laid out by item size (largest first), then name, so every offset is aligned.
    The file is written beside `path` and renamed into place; nothing is left if writing fails.
    """
    path = os.fspath(path)
    meta = {"format": "pt"} if metadata is None else dict(metadata)
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"{path}: metadata must map str to str, got {k!r}: {v!r}")

    stored: List[Tuple[str, str, np.ndarray]] = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"{path}: tensor names must be str, got {name!r}")
        if name == "__metadata__":
            raise ValueError(f"{path}: '__metadata__' is reserved and cannot name a tensor")
        st, arr = _as_stored(name, value)
        stored.append((name, st, arr))
    # Item sizes are powers of two and the data section starts 8-aligned, so largest-first keeps
    # every tensor aligned to its own item size.
    stored.sort(key=lambda t: (-DTYPES[t[1]].itemsize, t[0]))

    header: Dict[str, object] = {"__metadata__": meta}
    pos = 0
    for name, st, arr in stored:
        header[name] = {"dtype": st, "shape": list(arr.shape),
                        "data_offsets": [pos, pos + arr.nbytes]}
        pos += arr.nbytes
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)

    # Write a temp file beside `path`, then rename: a reader never sees a partial file, and
    # overwriting a file whose mmap views are the input (re-saving in place) cannot truncate the
    # pages being copied.
    def write(fh):
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        for _, _, arr in stored:
            _write_array(fh, arr)

    write_atomic(path, write)


def write_atomic(path: str, write, binary: bool = True) -> None:
    """write(fh) into a new temp file beside `path`, fsync, then rename over `path`; on any error
    the temp file is removed and `path` is untouched."""
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
