"""The one comparison helper of tests and notebooks: ours against a reference, with a stated tolerance.

    cmp("dW", ours, torch_grad, 1e-9)                  # prints max |diff|, asserts it is <= 1e-9
    assert_close(ours, ref, rtol=1e-5, atol=1e-8)      # elementwise |diff| <= atol + rtol * |ref|

References may be NumPy arrays, Python numbers or torch tensors (read through .detach(), so this
file imports no torch).
"""
from __future__ import annotations

import numpy as np


def as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close(actual, expected, rtol, atol, name=""):
    """Elementwise |actual - expected| <= atol + rtol * |expected|, shapes equal."""
    actual, expected = as_array(actual), as_array(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    if not actual.size:
        return
    err = np.max(np.abs(actual - expected) / (atol + rtol * np.abs(expected)))
    assert err <= 1.0, (f"{name}: max |diff| {np.max(np.abs(actual - expected)):.3e} exceeds "
                        f"atol {atol} + rtol {rtol} * |expected|")


def cmp(name, ours, ref, tol, rtol=0.0) -> float:
    """Print one line (max |diff|, ok or MISMATCH) and assert |ours - ref| <= tol + rtol * |ref|."""
    ours, ref = as_array(ours), as_array(ref)
    diff = np.abs(ours - ref)
    err = float(diff.max()) if diff.size else 0.0
    ok = bool(np.all(diff <= tol + rtol * np.abs(ref)))
    print(f"{name:<34} max |diff| = {err:.2e}  {'ok' if ok else 'MISMATCH'}")
    assert ok, f"{name}: max |diff| {err:.3e} exceeds {tol}" + (f" + {rtol} * |ref|" if rtol else "")
    return err
