"""Stacked int8 decode with v13's masked-load rows (kernels.stacked): bit for bit what each segment
gives through v10 on its own (v10 and v13 compute the same int32 sums of q under the +1 bits, and the
same float32 epilogue), so the stacking and the permuted activations change nothing. The generic-IR
twin runs on every CPU; the real kernel where the CPU has AVX-512 VNNI (skipped elsewhere: LLVM
cannot compile vpdpbusd for it)."""
import numpy as np
import pytest

from kernels import bitpack
from kernels.dispatch import kernel_name, matvec
from kernels.simd import HAS_AVX512_VNNI
from kernels.stacked import _int8_kmask, _int8_kmask_emulated, stack_linears, stacked_kernel_name, stacked_matvec
from kernels.v10_vnni512_int8 import matvec_vnni512_int8


def stacked_case(seed, outs=(96, 40, 64), n_in=300):
    rng = np.random.default_rng(seed)
    linears = [(bitpack.pack_signs(rng.standard_normal((o, n_in)).astype(np.float32)),
                rng.uniform(0.1, 2, n_in).astype(np.float32), (rng.standard_normal(n_in) * 0.1).astype(np.float32))
               for o in outs]
    return linears, stack_linears(linears, lut=False), rng.standard_normal(n_in).astype(np.float32)


@pytest.mark.parametrize("seed,n_in", [(0, 300), (1, 1100), (3, 256)])
def test_twin_equals_v10_on_each_segment(seed, n_in):
    linears, st, x = stacked_case(seed, n_in=n_in)
    y = np.empty(st.rows, np.float32)
    _int8_kmask_emulated(st.bits, st.ends, st.alpha, st.beta, x, y)
    for (p, a, b), r0 in zip(linears, st.starts):
        alone = matvec_vnni512_int8(p, a, b, x, emulated=True)
        assert np.array_equal(y[r0:r0 + p.out_features], alone)


@pytest.mark.skipif(not HAS_AVX512_VNNI, reason="needs AVX-512 BW + VNNI (kernels.simd.ISA == 'avx512')")
def test_real_kernel_equals_twin_and_dispatch():
    linears, st, x = stacked_case(2)
    assert stacked_kernel_name(st, "int8") == "v13_kmask_int8"
    assert kernel_name(linears[0][0], 1, "int8") == "v13_kmask_int8"
    y, twin = stacked_matvec(st, x, "int8"), np.empty(st.rows, np.float32)
    _int8_kmask_emulated(st.bits, st.ends, st.alpha, st.beta, x, twin)
    assert np.array_equal(y, twin)
    one = stack_linears(linears[:1], lut=False)                      # one segment: no parallel quantize
    alone = np.empty(one.rows, np.float32)
    _int8_kmask(one.bits, one.ends, one.alpha, one.beta, x, alone)
    assert np.array_equal(alone[:linears[0][0].out_features], y[:linears[0][0].out_features])
    for (p, a, b), r0 in zip(linears, st.starts):
        assert np.array_equal(y[r0:r0 + p.out_features], matvec(p, a, b, x, "int8"))
        assert np.array_equal(y[r0:r0 + p.out_features], matvec_vnni512_int8(p, a, b, x))
