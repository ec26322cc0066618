"""tinyfbi.core.reconstruction (notebook 01): each kind of scale against an independent solution."""
import numpy as np
import pytest

from tinyfbi.core import layers as L
from tinyfbi.core import reconstruction as R


def signs(w):
    return np.where(w >= 0, 1.0, -1.0)


@pytest.mark.parametrize("scaling", ["tensor", "row", "column"])
def test_least_squares_scales_solve_the_least_squares_problem(scaling):
    # oracle: np.linalg.lstsq on [sign(W), 1] for every group that shares one alpha, beta;
    # float64 on 40-200 entries: agreement to 1e-12
    rng = np.random.default_rng(1)
    w = R.column_structured(40, 24, rng, outliers=2)
    w[:, 3] = np.abs(w[:, 3])                                  # one column with a single sign: alpha = 0
    alpha, beta = R.scales(w, scaling, "lsq")
    as_groups = {"tensor": lambda m: m.reshape(1, -1), "row": lambda m: m, "column": lambda m: m.T}[scaling]
    oracle = []
    for g in as_groups(w):                                     # each group shares one alpha, beta
        a, b = np.linalg.lstsq(np.stack([signs(g), np.ones_like(g)], 1), g, rcond=None)[0]
        oracle.append(a * signs(g) + b)
    np.testing.assert_allclose(as_groups(alpha * signs(w) + beta), np.array(oracle), atol=1e-12)

def test_fbi_kind_is_the_library_init_and_alpha_kind_is_mean_abs():
    w = np.random.default_rng(2).standard_normal((8, 6))
    for scaling in ("row", "column"):
        np.testing.assert_array_equal(R.scales(w, scaling, "fbi")[0], L.init_scales(w, scaling)[0])
    a, b = R.scales(w, "tensor", "fbi")
    np.testing.assert_allclose(b, w.mean(), atol=1e-15)
    np.testing.assert_allclose(a, np.abs(w - w.mean()).mean(), atol=1e-15)
    np.testing.assert_allclose(R.scales(w, "column", "alpha")[0], np.abs(w).mean(0, keepdims=True), atol=1e-15)


def test_gaussian_floor_is_what_a_large_gaussian_sample_gives():
    # 4M i.i.d. entries: the sample relative error is within 1e-3 of sqrt(1 - 2/pi) = 0.6028
    w = np.random.default_rng(3).standard_normal((2048, 2048)) * 0.37
    assert abs(R.relative_error(w, R.scaled_signs(w, "tensor", "alpha")) - 0.6028) < 1e-3
    assert R.GAUSSIAN_FLOOR == pytest.approx(0.60281, abs=1e-5)
