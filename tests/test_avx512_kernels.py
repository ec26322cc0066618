"""The 512-bit kernels (v10: zmm vpdpbusd, v11: zmm vpshufb, v12: zmm vpopcntq, v13: masked loads) against v1 and bit for bit against the
256-bit kernels they widen; each real kernel where the CPU has the instructions, its generic-IR twin
on every CPU, and the assembly for an AVX-512 target everywhere (compiled, never run).

References and tolerances (as tests/test_runtime_kernels.py and tests/test_lut4_kernel.py):
- v1_reference in float64 on the kernel's own int8 activations scale * q, to the float32 rounding
  of the final scale-and-add (4 u of the terms' mass): the integer part is exact;
- v10 equals v8 (and v5 where AVX2 runs) bit for bit, v11 equals v9, v12 equals v4, v13 equals v10: the same integer
  sums, the same float steps after them; v8's twin stands in where the real v8 cannot run.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import bitpack
from kernels.act_int8 import quantize_int8, quantize_int8_bit_order, quantize_reference
from kernels.simd import HAS_AVX2, HAS_AVX512_VNNI, ISA
from kernels.v1_reference import fbi_linear_v1
from kernels.v4_popcount_int8 import matvec_popcount_int8
from kernels.v4_popcount_int8 import pack_planes as pack_planes_v4
from kernels.v5_maddubs_int8 import matvec_maddubs_int8
from kernels.v7_maddubs_gemm_int8 import matmul_maddubs_int8
from kernels.v8_vnni_int8 import matmul_vnni_int8, matvec_vnni_int8
from kernels.v9_lut4_int8 import matvec_lut4_int8
from kernels.v10_vnni512_int8 import matmul_vnni512_int8, matvec_vnni512_int8
from kernels.v11_lut4_512_int8 import matvec_lut4_512_int8
from kernels.v12_vpopcnt_int8 import matvec_vpopcnt_int8, pack_planes
from kernels.v13_kmask_int8 import matvec_kmask_int8

REPO = Path(__file__).resolve().parents[1]
U = 2.0 ** -24
FAST = settings(max_examples=15, deadline=None)
REASON = (f"needs AVX-512 F/BW/VL + VNNI, which this CPU (or TINYFBI_ISA) lacks (kernels.simd.ISA = {ISA!r}); "
          "its generic-IR twin is tested instead")
needs_avx512 = pytest.mark.skipif(not HAS_AVX512_VNNI, reason=REASON)
PARAMS = [pytest.param(True, id="emulated"), pytest.param(False, id="avx512", marks=needs_avx512)]
AVX512_TARGET = {"NUMBA_CPU_NAME": "icelake-server",      # an Intel tuning: prefers 256-bit vectors
                 "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+f16c,+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx512vnni"}


def case(rng, out_f, in_f, batch):
    w = rng.standard_normal((out_f, in_f)).astype(np.float32)
    w[rng.random((out_f, in_f)) < 0.05] = 0.0                          # zeros count as +1
    alpha = rng.uniform(0.01, 2.0, in_f).astype(np.float32)
    beta = (rng.standard_normal(in_f) * 0.1).astype(np.float32)
    return w, alpha, beta, rng.standard_normal((batch, in_f)).astype(np.float32)


def v1_on_own_activations(words, in_f, alpha, beta, x):
    """float64 v1 on the int8-rounded alpha * x the kernels use, and the float32 slack of the last step."""
    q, scale = quantize_reference(alpha, x)
    deq = scale * q.astype(np.float64)
    ref = fbi_linear_v1(words, in_f, np.ones_like(alpha), np.zeros_like(beta), deq) + x.astype(np.float64) @ beta
    return ref, 4 * U * (np.abs(deq).sum() + np.abs(ref) + np.abs(x * beta).sum()) + 1e-6


def asm_for_avx512(tmp_path, code, extra_features=""):
    """Run `code` compiled for an AVX-512 VNNI target in a fresh Numba cache (cached code has no assembly)."""
    target = dict(AVX512_TARGET, NUMBA_CPU_FEATURES=AVX512_TARGET["NUMBA_CPU_FEATURES"] + extra_features)
    env = dict(os.environ, PYTHONPATH=str(REPO), NUMBA_CACHE_DIR=str(tmp_path), **target)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split("@@@@\n")[1:]


def count(asm, op, reg):
    return len(re.findall(op + r"\s[^\n]*%" + reg, asm))


# ---- v10: 512-bit vpdpbusd, two bit planes per instruction ----

@pytest.mark.parametrize("emulated", PARAMS)
@FAST
@given(seed=st.integers(0, 2**32 - 1), out_f=st.integers(1, 40), in_f=st.integers(1, 1100), batch=st.integers(1, 9))
def test_v10_equals_v1_and_v8(emulated, seed, out_f, in_f, batch):
    w, a, b, x = case(np.random.default_rng(seed), out_f, in_f, batch)
    packed, words = bitpack.pack_signs(w), bitpack.pack_canonical(w)
    y1 = matvec_vnni512_int8(packed, a, b, x[0], emulated=emulated)
    yb = matmul_vnni512_int8(packed, a, b, x, emulated=emulated)               # (B, out)
    for t in range(batch):
        ref, slack = v1_on_own_activations(words, in_f, a, b, x[t])
        assert np.all(np.abs(yb[t] - ref) <= slack)
    v8 = not HAS_AVX512_VNNI                                                    # v8's twin where v8 cannot run
    assert np.array_equal(y1, matvec_vnni_int8(packed, a, b, x[0], emulated=v8))
    assert np.array_equal(yb, matmul_vnni_int8(packed, a, b, x, emulated=v8))
    if HAS_AVX2:                                                                # and the same integers as maddubs
        assert np.array_equal(y1, matvec_maddubs_int8(packed, a, b, x[0]))
        assert np.array_equal(yb, matmul_maddubs_int8(packed, a, b, x))


def test_v10_assembles_to_zmm_vpdpbusd(tmp_path):
    """Compiled (never run) for an AVX-512 VNNI target with Intel's 256-bit-preferring tuning: the
    explicit 512-bit vectors stay zmm, 4 vpdpbusd per block (16 for 4 tokens), each plane pair one
    vpsrlvw, no 256-bit vpdpbusd."""
    code = """
from numba import types
import kernels.v10_vnni512_int8 as v10
arr = lambda dt, nd: types.Array(dt, nd, "C")
sig1 = (arr(types.uint8, 2), arr(types.float32, 1), arr(types.float32, 1), arr(types.float32, 1), arr(types.float32, 1))
sig2 = sig1[:3] + (arr(types.float32, 2), arr(types.float32, 2))
for fn, sig in ((v10._matvec, sig1), (v10._matmul, sig2)):
    fn.compile(sig)
    print("@@@@")
    print(fn.inspect_asm(sig))
"""
    matvec, matmul = asm_for_avx512(tmp_path, code)
    for asm, per_block in ((matvec, 4), (matmul, 16)):
        assert count(asm, "vpdpbusd", "zmm") >= per_block and count(asm, "vpdpbusd", "ymm") == 0
        assert count(asm, "vpsrlvw", "zmm") >= 4 and "vpmaddubsw" not in asm


# ---- v13: 64 bits in a mask register select activation bytes, vpdpbusd sums them ----

@pytest.mark.parametrize("n_in", [256, 300, 1100])
def test_v13_activations_sit_where_the_blocked_bits_keep_their_signs(n_in):
    """quantize_int8_bit_order writes quantize_int8's values where the blocked layout keeps each input's
    sign when a row's bytes are read as 64-bit words (kernels.bitpack's own packing is the oracle: the
    one set bit of input j's one-hot row), and zeros everywhere else."""
    rng = np.random.default_rng(n_in)
    a, b, x = (rng.standard_normal(n_in).astype(np.float32) for _ in range(3))
    n_pad = -(-n_in // 256) * 256
    q, qb = np.empty(n_pad, np.int8), np.full(n_pad, 99, np.int8)
    assert quantize_int8(a, b, x, q) == quantize_int8_bit_order(a, b, x, qb)       # scale, sum q, beta . x
    one_hot = np.unpackbits(bitpack.pack_blocked_mask(np.eye(n_in, dtype=bool)), axis=1, bitorder="little")
    where = one_hot.argmax(axis=1)                                                 # (n_in,) bit of input j
    assert np.array_equal(one_hot.sum(axis=1), np.ones(n_in)) and np.array_equal(qb[where], q[:n_in])
    assert not np.delete(qb, where).any()


@pytest.mark.parametrize("emulated", PARAMS)
@FAST
@given(seed=st.integers(0, 2**32 - 1), out_f=st.integers(1, 40), in_f=st.integers(1, 1100))
def test_v13_equals_v1_and_v10(emulated, seed, out_f, in_f):
    w, a, b, x = case(np.random.default_rng(seed), out_f, in_f, 1)
    packed = bitpack.pack_signs(w)
    y = matvec_kmask_int8(packed, a, b, x[0], emulated=emulated)
    ref, slack = v1_on_own_activations(bitpack.pack_canonical(w), in_f, a, b, x[0])
    assert np.all(np.abs(y - ref) <= slack)
    assert np.array_equal(y, matvec_vnni512_int8(packed, a, b, x[0], emulated=not HAS_AVX512_VNNI))


def test_v13_assembles_to_masked_loads_and_zmm_vpdpbusd(tmp_path):
    """Compiled (never run) for an AVX-512 VNNI target: per block 4 mask loads (kmovq), 4 zero-masking
    byte loads into zmm, 4 zmm vpdpbusd, a prefetch, and none of v10's shifts."""
    code = """
from numba import types
import kernels.v13_kmask_int8 as v13
arr = lambda dt, nd: types.Array(dt, nd, "C")
sig = (arr(types.uint8, 2), arr(types.float32, 1), arr(types.float32, 1), arr(types.float32, 1), arr(types.float32, 1))
v13._matvec.compile(sig)
print("@@@@")
print(v13._matvec.inspect_asm(sig))
"""
    (asm,) = asm_for_avx512(tmp_path, code)
    assert count(asm, "vpdpbusd", "zmm") >= 4 and count(asm, "vpdpbusd", "ymm") == 0
    assert len(re.findall(r"kmovq\s+[^\n]*\(", asm)) >= 4                 # masks straight from memory
    assert len(re.findall(r"vmovdqu8\s[^\n]*%zmm\d+ \{%k\d\} \{z\}", asm)) >= 4
    assert "prefetch" in asm and "vpsrlvw" not in asm


# ---- v11: 512-bit vpshufb over v9's layout and tables ----

@pytest.mark.parametrize("emulated", PARAMS)
@FAST
@given(seed=st.integers(0, 2**32 - 1), out_f=st.integers(1, 70), in_f=st.integers(1, 1100))
def test_v11_equals_v1_and_v9(emulated, seed, out_f, in_f):
    w, a, b, x = case(np.random.default_rng(seed), out_f, in_f, 1)
    packed = bitpack.pack_signs(w).with_nib4()
    y = matvec_lut4_512_int8(packed, a, b, x[0], emulated=emulated)
    ref, slack = v1_on_own_activations(bitpack.pack_canonical(w), in_f, a, b, x[0])
    assert np.all(np.abs(y - ref) <= slack)
    if HAS_AVX2:
        assert np.array_equal(y, matvec_lut4_int8(packed, a, b, x[0]))        # the same integer sums
    assert np.array_equal(y, matvec_maddubs_int8(packed, a, b, x[0]) if HAS_AVX2 else
                          matvec_vnni_int8(packed, a, b, x[0], emulated=True))


@pytest.mark.parametrize("emulated", PARAMS)
def test_v11_widens_before_int16_overflows(emulated):
    in_f = 11008                                                           # 11 runs of 64 zmm iterations
    packed = bitpack.pack_signs(np.ones((40, in_f), np.float32)).with_nib4()
    ones = np.ones(in_f, np.float32)
    y = matvec_lut4_512_int8(packed, ones, np.zeros(in_f, np.float32), ones, emulated=emulated)
    np.testing.assert_allclose(y, in_f, rtol=4 * U)                        # 127 * 11008 exactly, times 1/127


def test_v11_assembles_to_zmm_vpshufb(tmp_path):
    code = """
from numba import types
import kernels.v11_lut4_512_int8 as v11
arr = lambda dt, nd: types.Array(dt, nd, "C")
sig = (arr(types.uint8, 3), arr(types.float32, 1), arr(types.float32, 1), arr(types.float32, 1), arr(types.float32, 1))
v11._matvec.compile(sig)
print("@@@@")
print(v11._matvec.inspect_asm(sig))
"""
    (asm,) = asm_for_avx512(tmp_path, code)
    assert count(asm, "vpshufb", "zmm") >= 4 and count(asm, "vpshufb", "ymm") == 0     # 4 per 64 bytes
    assert count(asm, "vpunpcklbw", "zmm") >= 2 and count(asm, "vpunpckhbw", "zmm") >= 2


# ---- v12: popcount planes, vpopcntq on zmm (generic llvm.ctpop: the same code runs on every CPU) ----

@FAST
@given(seed=st.integers(0, 2**32 - 1), out_f=st.integers(1, 40), in_f=st.integers(1, 1100))
def test_v12_equals_v1_and_v4(seed, out_f, in_f):
    """On a VPOPCNTDQ CPU this runs vpopcntq; elsewhere LLVM's expansion of the same IR (its twin)."""
    w, a, b, x = case(np.random.default_rng(seed), out_f, in_f, 1)
    packed = bitpack.pack_signs(w)
    y = matvec_vpopcnt_int8(packed, a, b, x[0])
    ref, slack = v1_on_own_activations(bitpack.pack_canonical(w), in_f, a, b, x[0])
    assert np.all(np.abs(y - ref) <= slack)
    assert np.array_equal(y, matvec_popcount_int8(packed, a, b, x[0]))          # the same integer sums
    q = np.zeros(packed.bits.shape[1] * 8, np.int8)
    q[:in_f] = quantize_reference(a, x[0])[0]
    planes, planes_v4 = (np.empty((8, packed.bits.shape[1]), np.uint8) for _ in range(2))
    pack_planes(q, planes)
    pack_planes_v4(q, planes_v4)
    assert np.array_equal(planes, planes_v4)                                    # v4's scalar transpose


def test_v12_assembles_to_zmm_vpopcntq(tmp_path):
    code = """
from numba import types
import kernels.v12_vpopcnt_int8 as v12
arr = lambda dt, nd: types.Array(dt, nd, "C")
sig = (arr(types.uint8, 2), arr(types.float32, 1), arr(types.float32, 1), arr(types.float32, 1), arr(types.float32, 1))
v12._matvec.compile(sig)
print("@@@@")
print(v12._matvec.inspect_asm(sig))
"""
    (asm,) = asm_for_avx512(tmp_path, code, "+avx512vpopcntdq")
    assert count(asm, "vpopcntq", "zmm") >= 8                                  # 8 planes per 64 bytes
