"""Float64 central differences: the oracle for every hand-written backward."""
import numpy as np


def numerical_grad(f, x, eps=1e-6):
    """d f() / d x by central differences, perturbing x in place; f returns a scalar."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def assert_close(actual, expected, rtol, atol, name=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    err = np.max(np.abs(actual - expected) / (atol + rtol * np.abs(expected))) if actual.size else 0.0
    assert err <= 1.0, (f"{name}: max |diff| {np.max(np.abs(actual - expected)):.3e} exceeds "
                        f"atol {atol} + rtol {rtol} * |expected|")
