"""The exercises that close notebooks 01-03, solved, each solution checked against an independent oracle.

A reader who wants to work them should not read on.
"""
import math

import numpy as np
import pytest

from tinyfbi.core import reconstruction as R


def test_01_floor_of_laplace_and_uniform_weights():
    """01: the best alpha for beta = 0 is E|w|, so the floor is sqrt(1 - (E|w|)^2 / E w^2).
    Laplace(b): E|w| = b, E w^2 = 2 b^2 -> sqrt(1/2). Uniform[-a, a]: E|w| = a/2, E w^2 = a^2/3 -> 1/2.
    Oracle: a 4M-entry sample binarized with one scale (standard error of the ratio < 1e-3)."""
    rng = np.random.default_rng(0)
    cases = {"laplace": (rng.laplace(0.0, 0.7, (2048, 2048)), math.sqrt(0.5)),
             "uniform": (rng.uniform(-1.3, 1.3, (2048, 2048)), 0.5)}
    for name, (w, answer) in cases.items():
        measured = R.error_table(w)["tensor", "alpha"]
        assert measured == pytest.approx(answer, abs=2e-3), name
