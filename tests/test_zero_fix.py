"""kernels.zero_fix against NumPy's unbuffered scatter-add in float64 (np.subtract.at), the reference
its docstring names. Zeros repeat rows and columns (sums collide), tokens run in parallel; float32
accumulation in a fixed order: within 1e-5 of the largest |y|. The packed runner's use of it (exact
logits of a checkpoint with zeros) is tested in tests/test_packed.py."""
import numpy as np

from kernels.zero_fix import subtract_zeros
from tinyfbi.runtime.packed_runner import Zeros


def case(seed, N=7, out=300, inn=200, n=2000):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, inn)).astype(np.float32)
    y = rng.standard_normal((N, out)).astype(np.float32)
    rows, cols = rng.integers(0, out, n), rng.integers(0, inn, n)
    coef = rng.standard_normal(n).astype(np.float32)
    ref = y.astype(np.float64)
    np.subtract.at(ref, (slice(None), rows), coef.astype(np.float64) * x[:, cols])
    return x, y, rows, cols, coef, ref


def test_kernel_equals_the_scatter_add():
    x, y, rows, cols, coef, ref = case(0)
    subtract_zeros(y, x, rows, cols, coef)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


def test_runner_corrects_views_in_place():
    x, y, rows, cols, coef, ref = case(1, N=1)
    wide = np.zeros((1, 500), np.float32)
    wide[:, 100:400] = y                                          # a stacked output: this linear's columns
    zeros = Zeros(300, rows, cols, coef)
    zeros.subtract(wide[:, 100:400], x)                            # (1, out) non-contiguous view
    assert np.abs(wide[:, 100:400] - ref).max() <= 1e-5 * np.abs(ref).max()
    assert not wide[:, :100].any() and not wide[:, 400:].any()
    flat = y[0].copy()
    zeros.subtract(flat, x[0])                                     # decode: (out,) and (in,)
    assert np.abs(flat - ref[0]).max() <= 1e-5 * np.abs(ref).max()
