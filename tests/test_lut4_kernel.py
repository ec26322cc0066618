"""v9 (16-entry tables, vpshufb, exact int16) and its nib4 layout against independent references.

- nib4: the layout rules decoded by unpack_nib4_mask (written from the rules, not from the bit trick
  nib4_from_blocked uses) give back sign(W) exactly, zeros as +1;
- tables: every entry equals the signed sum of its 4 activations computed in NumPy int32;
- v9: v1_reference in float64 on the kernel's own int8 activations, to float32 rounding of the final
  scale-and-add (4 u of the terms' mass); the same integers as v5 (maddubs), so equal bit for bit;
  all-+1 rows of q = 127 over 11008 inputs (the most an int16 run could overflow) are exact;
- stacked with nib4: per segment as above; dispatch and the forced portable ISA never pick v9.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import bitpack, dispatch
from kernels.act_int8 import quantize_reference
from kernels.simd import HAS_AVX2, HAS_AVX512_VNNI
from kernels.stacked import stack_linears, stacked_kernel_name, stacked_matvec
from kernels.v1_reference import fbi_linear_v1
from kernels.v5_maddubs_int8 import matvec_maddubs_int8
from kernels.v9_lut4_int8 import lut4_tables, matvec_lut4_int8

REPO = Path(__file__).resolve().parents[1]
U = 2.0 ** -24
FAST = settings(max_examples=15, deadline=None)
needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason="v9 uses AVX2 vpshufb; this CPU (or TINYFBI_ISA) has none")


def signed_case(rng, out_f, in_f):
    w = rng.standard_normal((out_f, in_f)).astype(np.float32)
    w[rng.random((out_f, in_f)) < 0.05] = 0.0                           # zeros count as +1
    alpha = rng.uniform(0.01, 2.0, in_f).astype(np.float32)
    beta = (rng.standard_normal(in_f) * 0.1).astype(np.float32)
    return w, alpha, beta, rng.standard_normal(in_f).astype(np.float32)


def v1_on_own_activations(w, alpha, beta, x):
    """float64 v1 on the int8-rounded alpha * x the kernel uses, and the float32 slack of its last step."""
    q, scale = quantize_reference(alpha, x)
    deq = scale * q.astype(np.float64)
    ref = fbi_linear_v1(bitpack.pack_canonical(w), w.shape[1], np.ones_like(alpha), np.zeros_like(beta), deq)
    ref = ref + x.astype(np.float64) @ beta
    slack = 4 * U * (np.abs(deq).sum() + np.abs(ref) + np.abs(x * beta).sum()) + 1e-6
    return ref, slack


@FAST
@given(seed=st.integers(0, 2**32 - 1), out_f=st.integers(1, 70), in_f=st.integers(1, 700))
def test_nib4_round_trip(seed, out_f, in_f):
    w, *_ = signed_case(np.random.default_rng(seed), out_f, in_f)
    nib = bitpack.pack_signs(w).with_nib4().nib4
    assert nib.shape == (-(-out_f // 32), 32 * -(-in_f // 256), 32)       # 1 bit per weight, padded
    assert np.array_equal(bitpack.unpack_nib4_mask(nib, out_f, in_f), w >= 0)


def test_tables_hold_every_signed_sum():
    q = np.random.default_rng(0).integers(-127, 128, 64).astype(np.int8)
    tlo, thi = np.empty((8, 32), np.uint8), np.empty((8, 32), np.uint8)
    lut4_tables(q, tlo, thi)
    got = (tlo.astype(np.int32) | (thi.astype(np.int32) << 8)).astype(np.uint16).view(np.int16)  # (8, 32)
    for g in range(16):
        for i in range(16):
            want = sum(int(q[4 * g + t]) * (1 if (i >> t) & 1 else -1) for t in range(4))
            assert got[g // 2, 16 * (g % 2) + i] == want


@needs_avx2
@FAST
@given(seed=st.integers(0, 2**32 - 1), out_f=st.integers(1, 70), in_f=st.integers(1, 1100))
def test_v9_equals_v1_and_v5(seed, out_f, in_f):
    w, a, b, x = signed_case(np.random.default_rng(seed), out_f, in_f)
    packed = bitpack.pack_signs(w).with_nib4()
    y = matvec_lut4_int8(packed, a, b, x)
    ref, slack = v1_on_own_activations(w, a, b, x)
    assert np.all(np.abs(y - ref) <= slack)
    assert np.array_equal(y, matvec_maddubs_int8(packed, a, b, x))         # the same integer sums


@needs_avx2
def test_v9_widens_before_int16_overflows():
    in_f = 11008                                                           # 22 runs of 64 vectors
    packed = bitpack.pack_signs(np.ones((40, in_f), np.float32)).with_nib4()
    ones = np.ones(in_f, np.float32)
    y = matvec_lut4_int8(packed, ones, np.zeros(in_f, np.float32), ones)   # q = 127 everywhere, scale 1/127
    np.testing.assert_allclose(y, in_f, rtol=4 * U)                        # 127 * 11008 = 1,398,016 exactly


@needs_avx2
def test_v9_executes_vpshufb_and_unpacks(tmp_path):
    """Read the instructions from a fresh compile (Numba returns no assembly for cached code)."""
    code = """
import numpy as np
from kernels import bitpack
from kernels.v9_lut4_int8 import _matvec, matvec_lut4_int8
ones = np.ones(256, np.float32)
matvec_lut4_int8(bitpack.pack_signs(np.ones((32, 256), np.float32)).with_nib4(), ones, 0 * ones, ones)
asm = _matvec.inspect_asm(_matvec.signatures[0])
print(asm.count("vpshufb"), asm.count("vpunpcklbw"), asm.count("vpunpckhbw"))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    shufb, unpack_lo, unpack_hi = map(int, out.stdout.split())
    assert shufb >= 4 and unpack_lo >= 2 and unpack_hi >= 2          # per 32 bytes: 4 lookups, 2 + 2 unpacks


@FAST
@given(seed=st.integers(0, 2**32 - 1), outs=st.lists(st.integers(1, 70), min_size=1, max_size=3),
       in_f=st.integers(1, 600))
def test_stacked_nib4_equals_v1_per_segment(seed, outs, in_f):
    rng = np.random.default_rng(seed)
    cases = [signed_case(rng, o, in_f) for o in outs]
    x = cases[0][3]
    stacked = stack_linears([(bitpack.pack_signs(w), a, b) for w, a, b, _ in cases], lut=False, nib4=True)
    assert stacked_kernel_name(stacked, "int8") == ("v9_lut4_int8" if HAS_AVX2 else "v4_popcount_int8")
    y = stacked_matvec(stacked, x, "int8")
    for s, (w, a, b, _) in enumerate(cases):
        got = y[stacked.starts[s]: stacked.starts[s] + outs[s]]
        if HAS_AVX2:
            ref, slack = v1_on_own_activations(w, a, b, x)
            assert np.all(np.abs(got - ref) <= slack), s
        assert np.array_equal(got, dispatch.matvec(bitpack.pack_signs(w), a, b, x, "int8")), s


def test_dispatch_picks_v9_only_with_nib4_and_avx2():
    p = bitpack.pack_signs(np.ones((8, 64), np.float32))
    assert dispatch.kernel_name(p, 1, "int8") != "v9_lut4_int8"
    assert dispatch.kernel_name(p.with_nib4(), 1, "int8") == ("v9_lut4_int8" if HAS_AVX2 else "v4_popcount_int8")
    # without the nib4 copy: v13 where AVX-512 VNNI runs it; the copy is built only where decode wants it
    assert dispatch.kernel_name(p, 1, "int8") == ("v13_kmask_int8" if HAS_AVX512_VNNI else
                                                  "v5_maddubs_int8" if HAS_AVX2 else "v4_popcount_int8")
    assert dispatch.int8_decode_layout() == ("blocked" if HAS_AVX512_VNNI or not HAS_AVX2 else "nib4")
    assert dispatch.int8_decode_layout("nib4") == "nib4"
    assert dispatch.kernel_name(p.with_nib4(), 4, "int8") != "v9_lut4_int8"   # batches: v7 / v8 / v6


def test_forced_portable_never_runs_v9(tmp_path):
    code = """
import numpy as np
from kernels import bitpack, dispatch
from kernels.stacked import stack_linears, stacked_kernel_name
p = bitpack.pack_signs(np.ones((37, 300), np.float32))
st = stack_linears([(p, np.ones(300), np.zeros(300))], lut=False, nib4=True)
print(dispatch.kernel_name(p.with_nib4(), 1, "int8"), stacked_kernel_name(st, "int8"))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), TINYFBI_ISA="portable")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["v4_popcount_int8", "v4_popcount_int8"]
