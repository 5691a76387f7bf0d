"""AutoAWQ's checkpoint layouts of a 4-bit linear, and their conversion to the one awq uses.

Why: AutoAWQ wrote a quantized Linear in one of four layouts, named by quant_config["version"]
(REFERENCE.md s3). awq's kernels, runtime and writer know only GEMM; the other three are converted
here ONCE, when a checkpoint is loaded, so nothing downstream ever sees them.

K in_features, N out_features, g group size, G = K / g groups; codes q in 0..15, zero points z:

  gemm       qweight int32 [K, N/8]   packed along N: nibble i of word j = column 8j + P[i],
                                      P = [0, 2, 4, 6, 1, 3, 5, 7]
             qzeros  int32 [G, N/8]   same order
             scales  fp16  [G, N]
  gemv       qweight int32 [N, K/8]   packed along K in natural order: nibble i of word j = k 8j + i
             qzeros  int32 [N, Z]     packed along G, natural order, words past G/8 zero-padded
             scales  fp16  [N, 8Z]    columns G.. are padding
             Z = ceil(ceil(G / 8) / m) * m, m = 1, 2, 4 for g >= 128, 64, 32 (AutoAWQ wrote no other g)
  gemv_fast  qweight int16 [N/4, K]   rows interleaved by four per 64-k chunk, k reordered inside
                                      32- and 8-blocks (_gemv_fast_codes)
             scales        fp16 [8Z, N]  rows G.. are padding
             scaled_zeros  fp16 [8Z, N]  -(s * z) rounded to fp16 (the kernel computes q * s + sz)
  marlin     qweight int32 [K/16, 2N] 16x16 tiles, permuted for the mma fragments (_marlin_perms),
                                      8 codes per word in natural order; symmetric: z = 8 everywhere
             scales  fp16  [G, N]     permuted within runs of 64 (of 32 when G == 1)

Every layout dequantizes to W[k, n] = (q[k, n] - z[k // g, n]) * s[k // g, n]. The conversions are
exact (same codes, zero points and scales), except gemv_fast, whose integer zero points are
recovered as round(-sz / s); that is exact for what AutoAWQ wrote (checked: a stored -s*z that is
not an integer zero point times s, to fp16 rounding, is refused), and the result dequantizes with
(q - z) * s where AutoAWQ's kernel used q * s + fp16(-s * z), a difference of fp16 rounding.

`LAYOUTS` is the table (tensor names per layout); `to_gemm` checks shapes and dtypes, naming the
tensor, and converts. Pure numpy plus awq's C pack/unpack.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Tuple

import numpy as np

from awq._backend import C

__all__ = ["LAYOUTS", "ALIASES", "Layout", "canonical_version", "expected_shapes", "gemv_zeros_width",
           "marlin_perms", "to_gemm"]

P = np.array([0, 2, 4, 6, 1, 3, 5, 7])  # GEMM: nibble i of a word holds column 8j + P[i]


@dataclass(frozen=True)
class Layout:
    name: str
    tensors: Tuple[str, ...]  # per quantized linear, besides the optional bias; qweight first
    shapes: Callable[[int, int, int], Dict[str, tuple]]  # (K, N, g) -> expected shape per tensor
    dtypes: Dict[str, str]  # tensor -> "i4" (4-byte integer words), "i2" (2-byte words) or "f16"
    convert: Callable  # (tensors, K, N, g, name) -> (qweight [K, N/8] i32, qzeros [G, N/8] i32, scales [G, N] f16)
    describe: str  # the qweight layout in words, for error messages


# ---------------------------------------------------------------------------------------------
# Bit helpers
# ---------------------------------------------------------------------------------------------

def _unpack_natural(words: np.ndarray) -> np.ndarray:
    """Words [R, C] of 32 bits whose nibble i holds column 8j + i -> codes uint8 [R, 8C]."""
    logical = C.unpack_gemm(np.ascontiguousarray(words))  # column 8j + P[i] <- nibble i
    R = logical.shape[0]
    return np.ascontiguousarray(logical.reshape(R, -1, 8)[:, :, P].reshape(R, -1))


def _pack_gemm_t(a: np.ndarray) -> np.ndarray:
    """codes [C, R] -> GEMM words [R, C/8] of its transpose."""
    return C.pack_gemm(np.ascontiguousarray(a.T, dtype=np.uint8))


def gemv_zeros_width(K: int, g: int) -> int:
    """Z, the width in int32 words of a gemv / gemv_fast zero-point row (AutoAWQ's padding rule)."""
    m = 1 if g >= 128 else {64: 2, 32: 4}.get(g)
    if m is None:
        raise ValueError(f"group size {g}: AutoAWQ's gemv layouts exist only for group sizes 32, 64 and >= 128")
    words = -(-(K // g) // 8)
    return -(-words // m) * m


def marlin_perms():
    """(weight, scales, scales_single): for each packed position, the source position it holds.

    weight (1024): one chunk = four 16x16 tiles [tile][k row][n col], flat. Marlin's mma.sync
    fragments want, for warp lane i (32 lanes) and tile j (4), the k rows 2a, 2a+1, 2a+8, 2a+9
    (a = i % 4) of n column i // 4 and of column i // 4 + 8: eight codes per (lane, tile), which
    are then stored in the order [0, 2, 4, 6, 1, 3, 5, 7] so the kernel's dequantization trick
    (two codes per 16-bit half) lands them in fragment order.
    scales (64): the transpose of an 8x8 block, so each thread loads its columns' scales at once;
    scales_single (32): the same idea for one group per column (G == 1)."""
    pos = np.arange(1024)
    lane, tile, t = pos // 32, (pos // 8) % 4, pos % 8
    u = np.array([0, 2, 4, 6, 1, 3, 5, 7])[t]  # fragment slot of packed slot t
    block, r = u // 4, u % 4
    a, col = lane % 4, lane // 4
    row = 2 * a + (r % 2) + 8 * (r // 2)
    weight = 256 * tile + 16 * row + col + 8 * block
    p = np.arange(64)
    scales = p // 8 + 8 * (p % 8)
    p = np.arange(32)
    single = 2 * (p // 8) + (p % 2) + 8 * ((p % 8) // 2)
    return weight, scales, single


def _unpermute(a: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Inverse of `b = a.reshape(-1, len(perm))[:, perm]` on the flat array: b -> a (same shape)."""
    flat = a.reshape(-1, len(perm))
    out = np.empty_like(flat)
    out[:, perm] = flat
    return out.reshape(a.shape)


# ---------------------------------------------------------------------------------------------
# The layouts
# ---------------------------------------------------------------------------------------------

def _gemm_shapes(K, N, g):
    return {"qweight": (K, N // 8), "qzeros": (K // g, N // 8), "scales": (K // g, N)}


def _gemm(t, K, N, g, name):
    return t["qweight"], t["qzeros"], t["scales"]


def _gemv_shapes(K, N, g):
    Z = gemv_zeros_width(K, g)
    return {"qweight": (N, K // 8), "qzeros": (N, Z), "scales": (N, 8 * Z)}


def _gemv(t, K, N, g, name):
    G = K // g
    if K % 8:
        raise ValueError(f"{name}.qweight: the gemv layout packs in_features by 8, got in={K}")
    codes = _unpack_natural(t["qweight"])  # [N, K]
    zeros = _unpack_natural(t["qzeros"])[:, :G]  # [N, G]
    return _pack_gemm_t(codes), _pack_gemm_t(zeros), np.ascontiguousarray(t["scales"][:, :G].T)


def _gemv_fast_shapes(K, N, g):
    Z = gemv_zeros_width(K, g)
    return {"qweight": (N // 4, K), "scales": (8 * Z, N), "scaled_zeros": (8 * Z, N)}


def _gemv_fast_codes(qweight: np.ndarray, K: int, N: int) -> np.ndarray:
    """gemv_fast qweight int16 [N/4, K] -> codes [N, K]. The packer (AutoAWQ pack_intweight) did, on
    codes [N, K]: (1) inside each 32-block of k, position 8b + 2a + c <- 8a + 2b + c; (2) inside each
    8-block, position 4e + d <- 2d + e; (3) per 4 rows x 64 k chunk [4, 64], flat element f goes to
    16-bit word f // 4 of the chunk, nibble f % 4. Undone here in reverse order."""
    # 16-bit words as 32-bit pairs (little-endian, as safetensors stores them): nibble 4m + t of a
    # row is nibble t of its 16-bit word m, so the natural unpack keeps their order
    words = np.ascontiguousarray(qweight).view("<u4")
    nib = _unpack_natural(words)  # [N/4, 4K]: row nb, flat 256 kc + f
    a = nib.reshape(N // 4, K // 64, 4, 64).transpose(0, 2, 1, 3).reshape(N, K)  # (3)
    a = a.reshape(N, K // 8, 2, 4).transpose(0, 1, 3, 2).reshape(N, K)  # (2)
    return a.reshape(N, K // 32, 4, 4, 2).transpose(0, 1, 3, 2, 4).reshape(N, K)  # (1)


def _gemv_fast(t, K, N, g, name):
    G = K // g
    if K % 64 or N % 4:
        raise ValueError(f"{name}.qweight: the gemv_fast layout needs in_features a multiple of 64 and "
                         f"out_features a multiple of 4, got in={K}, out={N}")
    codes = _gemv_fast_codes(t["qweight"], K, N)
    s = np.ascontiguousarray(t["scales"][:G])  # [G, N] fp16
    sz = t["scaled_zeros"][:G]
    s64, neg = s.astype(np.float64), -sz.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(s64 != 0, np.rint(neg / s64), 0.0)
    # the writer stored fp16(-(s * z)): |error| <= 2^-11 |s z| for normal fp16, 2^-25 subnormal
    bad = ~((z >= 0) & (z <= 15) & (np.abs(neg - z * s64) <= 2.0 ** -10 * np.abs(z * s64) + 2.0 ** -24))
    if bad.any():
        r, n = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}.scaled_zeros: entry [{r}, {n}] = {float(sz[r, n])!r} with scale {float(s[r, n])!r} is not "
            f"-scale * an integer zero point in 0..15 ({int(bad.sum())} such entries); the GEMM layout "
            "cannot represent it")
    return _pack_gemm_t(codes), C.pack_gemm(z.astype(np.uint8)), s


def _marlin_shapes(K, N, g):
    return {"qweight": (K // 16, 2 * N), "scales": (K // g, N)}


def _marlin(t, K, N, g, name):
    G = K // g
    if K % 16 or N % 16 or (K * N) % 1024:
        raise ValueError(f"{name}.qweight: the marlin layout needs in_features and out_features multiples of 16 "
                         f"and in*out a multiple of 1024, got in={K}, out={N}")
    run = 32 if G == 1 else 64
    if (G * N) % run:
        raise ValueError(f"{name}.scales: the marlin layout permutes scales in runs of {run}; {G} x {N} "
                         "scales do not divide into them")
    wperm, sperm, sperm1 = marlin_perms()
    tiles = _unpermute(_unpack_natural(t["qweight"]), wperm)  # [K/16, 16N]: per k-tile, N/16 tiles 16x16
    codes = tiles.reshape(K // 16, N // 16, 16, 16).transpose(0, 2, 1, 3).reshape(K, N)
    scales = _unpermute(np.ascontiguousarray(t["scales"]), sperm1 if G == 1 else sperm)
    zeros = np.full((G, N), 8, np.uint8)  # symmetric: stored codes are round(w / s) + 8
    return C.pack_gemm(np.ascontiguousarray(codes)), C.pack_gemm(zeros), scales


LAYOUTS: Dict[str, Layout] = {
    "gemm": Layout("gemm", ("qweight", "qzeros", "scales"), _gemm_shapes,
                   {"qweight": "i4", "qzeros": "i4", "scales": "f16"}, _gemm, "[in, out/8]"),
    "gemv": Layout("gemv", ("qweight", "qzeros", "scales"), _gemv_shapes,
                   {"qweight": "i4", "qzeros": "i4", "scales": "f16"}, _gemv, "[out, in/8]"),
    "gemv_fast": Layout("gemv_fast", ("qweight", "scales", "scaled_zeros"), _gemv_fast_shapes,
                        {"qweight": "i2", "scales": "f16", "scaled_zeros": "f16"}, _gemv_fast,
                        "int16 [out/4, in]"),
    "marlin": Layout("marlin", ("qweight", "scales"), _marlin_shapes,
                     {"qweight": "i4", "scales": "f16"}, _marlin, "[in/16, 2*out]"),
}

# Versions that name a load-time kernel choice, not a layout: transformers' AwqConfig "exllama" and
# "ipex" checkpoints hold GEMM tensors (their modules repack them after loading).
ALIASES = {"exllama": "gemm", "exllamav2": "gemm", "exllama_v2": "gemm", "ipex": "gemm"}


def canonical_version(version) -> str:
    """A quant_config version string (any case) -> a LAYOUTS key; ValueError for an unknown one."""
    v = str(version).lower()
    v = ALIASES.get(v, v)
    if v not in LAYOUTS:
        raise ValueError(f"AWQ version {version!r} is not a known layout (known: {', '.join(LAYOUTS)}; "
                         f"aliases of gemm: {', '.join(ALIASES)})")
    return v


def expected_shapes(version: str, K: int, N: int, g: int) -> Dict[str, tuple]:
    return LAYOUTS[canonical_version(version)].shapes(K, N, g)


def to_gemm(version: str, tensors: Mapping[str, np.ndarray], K: int, N: int, g: int,
            name: str = "linear") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One linear's tensors in layout `version` -> (qweight int32 [K, N/8], qzeros int32 [G, N/8],
    scales fp16 [G, N]) in the GEMM layout. `tensors` maps each of LAYOUTS[version].tensors to its
    array (scales / scaled_zeros already fp16); `name` is the linear's checkpoint prefix, used in
    every error. GEMM input is returned as is (no copy). ValueError for a missing tensor, a wrong
    shape or dtype, or values a GEMM layout cannot hold."""
    lay = LAYOUTS[canonical_version(version)]
    if N % 8:
        raise ValueError(f"{name}: out_features {N} is not a multiple of 8, required by every AWQ layout")
    if g <= 0 or K % g:
        raise ValueError(f"{name}: group size {g} does not divide in_features {K}")
    try:
        want = lay.shapes(K, N, g)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    for part in lay.tensors:
        if part not in tensors:
            raise ValueError(f"{name}.{part} is missing (AutoAWQ {lay.name} layout: {', '.join(lay.tensors)})")
        a = np.asarray(tensors[part])
        if tuple(a.shape) != want[part]:
            raise ValueError(f"{name}.{part}: shape {tuple(a.shape)}, expected {want[part]} "
                             f"(AutoAWQ {lay.name} layout; qweight {lay.describe})")
        kind = lay.dtypes[part]
        ok = a.dtype == np.float16 if kind == "f16" else \
            (a.dtype.kind in "iu" and a.dtype.itemsize == (4 if kind == "i4" else 2))
        if not ok:
            what = {"f16": "float16", "i4": "int32", "i2": "int16"}[kind]
            raise ValueError(f"{name}.{part}: dtype {a.dtype}, expected {what} (AutoAWQ {lay.name} layout)")
    return lay.convert({p: np.asarray(tensors[p]) for p in lay.tensors}, K, N, g, name)
