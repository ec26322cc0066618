"""Exact-zero correction for released checkpoints: the authors' sign(0) = 0, one bit holds +1.

A released FBI-LLM checkpoint can hold latent weights that are exactly 0; the authors' torch.sign
gives them 0, so W~ there is beta alone, while a packed bit says +1 (alpha + beta). The packed
runner multiplies by the bits, then takes the extra alpha_j x_j back out for each zero (i, j):

    y[t, rows[k]] -= coef[k] * x[t, cols[k]]        coef[k] = alpha at column cols[k]

Reference (NumPy, a scatter-add): np.subtract.at(y, (slice(None), rows), coef * x[:, cols]).
Tokens run in parallel (prefill); zeros in order, so every token's sums are the same as serial.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def _subtract(y, x, rows, cols, coef):
    for t in numba.prange(x.shape[0]):                    # (N,) tokens
        for k in range(rows.shape[0]):                    # (n,) zeros of this linear
            y[t, rows[k]] -= coef[k] * x[t, cols[k]]


def subtract_zeros(y: np.ndarray, x: np.ndarray, rows: np.ndarray, cols: np.ndarray, coef: np.ndarray):
    """y (N, out) float32, in place (a view is fine); x (N, in) float32; rows, cols (n,) int64; coef (n,) float32."""
    _subtract(y, x, rows, cols, coef)
