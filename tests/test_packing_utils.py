"""awq.utils.packing_utils on numpy inputs, and WQLinear_GEMM's refusal without torch. Torch-free:
runs in CI (the torch side is tests/test_torch_interop.py).

The weight is packed here by hand, from REFERENCE.md s3 (nibble i of word j holds column 8j + P[i]),
so the expected codes are known independently of the C packer the utilities use.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from awq.utils.packing_utils import AWQ_ORDER, AWQ_REVERSE_ORDER, dequantize_gemm, reverse_awq_order, unpack_awq

P = [0, 2, 4, 6, 1, 3, 5, 7]


def pack_cols(codes):
    """codes [R, C] 0..15 -> int32 [R, C/8], AutoAWQ GEMM order."""
    R, Cn = codes.shape
    out = np.zeros((R, Cn // 8), np.uint32)
    for j in range(Cn // 8):
        for i in range(8):
            out[:, j] |= (codes[:, 8 * j + P[i]].astype(np.uint32) & 0xF) << np.uint32(4 * i)
    return out.view(np.int32)


def known(K=96, N=72, g=32, seed=0):
    rng = np.random.default_rng(seed)
    G = K // g
    q = rng.integers(0, 16, size=(K, N))
    z = rng.integers(0, 16, size=(G, N))
    s = rng.uniform(0.001, 0.05, size=(G, N)).astype(np.float16)
    q[:g, :8] = z[0, :8]  # an all-zero group
    s[-1, 5] = np.float16(3.0)  # an outlier scale
    return q, z, s


def test_orders_are_inverse():
    assert [AWQ_ORDER[r] for r in AWQ_REVERSE_ORDER] == list(range(8))
    assert pack_cols(np.arange(1, 9)[None]).view(np.uint32)[0, 0] == 0x86427531  # REFERENCE.md worked example


def test_unpack_reverse_dequantize_numpy():
    K, N, g = 96, 72, 32
    q, z, s = known(K, N, g)
    qw, qz = pack_cols(q), pack_cols(z)
    iw, iz = unpack_awq(qw, qz, 4)
    assert isinstance(iw, np.ndarray) and iw.dtype == np.int8 and iw.shape == (K, N) and iz.shape == (K // g, N)
    # packed (nibble) order: column 8j + i of the unpacked array is nibble i, i.e. logical column 8j + P[i]
    for i in range(8):
        np.testing.assert_array_equal(iw[:, i::8], q[:, P[i]::8])
        np.testing.assert_array_equal(iz[:, i::8], z[:, P[i]::8])
    rw, rz = reverse_awq_order(iw, iz, 4)
    np.testing.assert_array_equal(rw, q)
    np.testing.assert_array_equal(rz, z)
    w = dequantize_gemm(qw, qz, s, 4, g)
    assert w.dtype == np.float16 and w.shape == (K, N)
    gi = np.arange(K) // g
    ref = ((q - z[gi]) * s[gi].astype(np.float64)).astype(np.float16)  # one rounding of an exact product
    np.testing.assert_array_equal(w, ref)
    # float32 scales stay float32; group_size -1 is one group
    w32 = dequantize_gemm(qw, pack_cols(z[:1]), s[:1].astype(np.float32), 4, -1)
    np.testing.assert_array_equal(w32, (q - z[0]) * s[:1].astype(np.float32))


def test_packing_utils_errors():
    q, z, s = known()
    qw, qz = pack_cols(q), pack_cols(z)
    with pytest.raises(ValueError, match="bits=8"):
        unpack_awq(qw, qz, 8)
    with pytest.raises(ValueError, match=r"qzeros: shape \(3, 9\), expected \(2, 9\)"):
        dequantize_gemm(qw, qz, s[:2], 4, 48)
    with pytest.raises(ValueError, match=r"scales: shape \(2, 72\), expected \(3, 72\)"):
        dequantize_gemm(qw, qz, s[:2], 4, 32)
    with pytest.raises(ValueError, match="group_size 40 does not divide in_features 96"):
        dequantize_gemm(qw, qz, s, 4, 40)
    with pytest.raises(ValueError, match="qweight: expected a 2-d int32 array"):
        dequantize_gemm(qw.astype(np.int64), qz, s, 4, 32)
    with pytest.raises(ValueError, match="iweights: 12 columns"):
        reverse_awq_order(np.zeros((2, 12)), np.zeros((1, 8)), 4)


def test_wqlinear_without_torch_raises_importerror():
    """torch blocked (sys.modules['torch'] = None): the modules import, building one raises."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import awq.modules.linear.gemm as gemm\n"
        "from awq.modules.linear import WQLinear_GEMM\n"
        "assert gemm.HAS_TORCH is False and WQLinear_GEMM is gemm.WQLinear_GEMM\n"
        "for call in (lambda: WQLinear_GEMM(4, 128, 256, 256, False, 'cpu'),\n"
        "             lambda: WQLinear_GEMM.from_linear(None, 4, 128, init_only=True)):\n"
        "    try:\n"
        "        call()\n"
        "    except ImportError as e:\n"
        "        assert 'needs torch' in str(e), e\n"
        "    else:\n"
        "        raise SystemExit('no ImportError')\n"
        "import awq.utils.packing_utils, awq.io.layouts\n"
        "assert sys.modules['torch'] is None\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr + r.stdout


def test_unpack_without_zeros_gives_none():
    """A symmetric layer has no qzeros: unpack_awq / reverse_awq_order pass None through (AutoAWQ)."""
    from awq._backend import C
    from awq.utils.packing_utils import reverse_awq_order, unpack_awq

    codes = (np.arange(16 * 24) % 16).reshape(16, 24).astype(np.uint8)
    qw = C.pack_gemm(codes)
    iw, iz = unpack_awq(qw, None, 4)
    assert iz is None
    iw, iz = reverse_awq_order(iw, None, 4)
    assert iz is None and np.array_equal(iw, codes.astype(np.int8))
