"""Writes the seed inputs of fuzz/corpus/<target>/ (committed; rerun after changing a harness's
input layout): a few valid cases per target that reach every path at once (GEMV and packed GEMM,
a full AVX-512 tile, each quantizer op, a rejected shape), so a short CI run starts deep.
The byte layouts are the ones the harnesses decode (see the comment atop each fuzz/*.c).

    python fuzz/seeds.py
"""
import os
import random
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def palette(v: float) -> int:
    """Palette byte of a multiple of 1/16 in [-7, 6.9375] (fuzz_input.h)."""
    return int(round(v * 16)) + 112


def write(target: str, name: str, data: bytes) -> None:
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    with open(os.path.join(ROOT, target, name), "wb") as fh:
        fh.write(data)


def w4a16_case(rng, M, W, G, g, bias=False):
    K, N = G * g, 8 * W
    out = bytes([0, 2 if bias else 0, M, W - 1, G - 1, g - 1])
    out += bytes(palette(rng.uniform(-2, 2)) for _ in range(M * K))
    out += b"".join(struct.pack("<I", rng.getrandbits(32)) for _ in range(K * W + G * W))
    out += b"".join(struct.pack("<H", rng.choice([0x211F, 0x1C00, 0x2E66, 0x0001, 0x3C00]))
                    for _ in range(G * N))
    if bias:
        out += bytes(palette(rng.uniform(-1, 1)) for _ in range(N))
    return out


def main() -> None:
    rng = random.Random(0)
    # fuzz_gemm_pack: [op][R][C][mask][codes] / [op][R][W][words] / [op][R u64][C u64]
    write("fuzz_gemm_pack", "pack", bytes([0, 3, 16, 1]) + bytes(rng.randrange(16) for _ in range(48)))
    write("fuzz_gemm_pack", "pack_bad_code", bytes([0, 1, 8, 0, 1, 2, 3, 4, 5, 6, 16, 7]))
    write("fuzz_gemm_pack", "unpack", bytes([1, 2, 17]) + rng.randbytes(2 * 17 * 4))
    write("fuzz_gemm_pack", "bad_shape", bytes([2]) + struct.pack("<qq", -3, 12))
    # fuzz_w4a16: GEMV, packed GEMM over two panels, a full AVX-512 tile, fp16 weights, bad shapes
    write("fuzz_w4a16", "gemv", w4a16_case(rng, 2, 2, 2, 4, bias=True))
    write("fuzz_w4a16", "gemm", w4a16_case(rng, 10, 7, 1, 8))
    write("fuzz_w4a16", "tile", w4a16_case(rng, 1, 17, 1, 2))
    for name, M in (("f16", 3), ("f16_gemm", 10)):  # [2][flags][M][N - 1][K - 1][x][w][bias]
        f16 = bytes([2, 2, M, 9, 16]) + bytes(palette(rng.uniform(-2, 2)) for _ in range(M * 17))
        f16 += b"".join(struct.pack("<H", rng.choice([0x3C00, 0xBC00, 0x3555, 0x0400]))
                        for _ in range(10 * 17))
        write("fuzz_w4a16", name, f16 + bytes(palette(0.5) for _ in range(10)))
    write("fuzz_w4a16", "bad", bytes([3, 0, 3, 1]) + struct.pack("<q", 12))
    # fuzz_quant: quantize (N=3, G=2, g=8, 4 bits, zero point), clip search, bad arguments
    q = bytes([0, 0, 3, 1, 7, 2, 1]) + bytes(palette(rng.uniform(-3, 3)) for _ in range(3 * 16))
    write("fuzz_quant", "quantize", q)
    c = bytes([1, 0, 2, 1, 7, 3, 2, 1, 19, 8])  # N=2 G=2 g=8 T=4 4-bit zp n_grid=20 shrink=0.5
    write("fuzz_quant", "clip", c + bytes(palette(rng.uniform(-3, 3)) for _ in range((2 + 4) * 16)))
    write("fuzz_quant", "bad", bytes([2, 0, 1, 4]) + struct.pack("<q", 5))
    # fuzz_fp16: (half, float) records: 1.0, the largest half, a subnormal, a tie, 65520, NaN
    recs = [(0x3C00, 1.0), (0x7BFF, 65504.0), (0x0001, 2.0**-24), (0x3C01, 1.0 + 2.0**-11),
            (0x7C00, 65520.0), (0x7E00, float("nan")), (0x8400, -2.0**-25 * 3)]
    write("fuzz_fp16", "values", b"".join(struct.pack("<Hf", h, f) for h, f in recs))
    # larger cases (their own generator, so the ones above stay byte-identical): W4A16 GEMM over
    # two 256-row K blocks (K = 280); quantize N=8 G=4 g=64 3-bit symmetric; clip search N=4 G=2
    # g=32 T=8 8-bit, n_grid=20, shrink=0.5
    rng = random.Random(1)
    write("fuzz_w4a16", "gemm_two_kblocks", w4a16_case(rng, 9, 1, 4, 70))
    big = bytes([0, 0, 8, 3, 63, 1, 0]) + bytes(palette(rng.uniform(-7, 6.9)) for _ in range(8 * 256))
    write("fuzz_quant", "quantize_big", big)
    c = bytes([1, 0, 4, 1, 31, 7, 3, 1, 19, 8])
    write("fuzz_quant", "clip_big", c + bytes(palette(rng.uniform(-3, 3)) for _ in range((4 + 8) * 64)))


if __name__ == "__main__":
    main()
