"""Float64 central differences: the oracle for every hand-written backward. assert_close is the
package's one compare helper (tinyfbi.core.compare), shared with the notebooks."""
import numpy as np

from tinyfbi.core.compare import assert_close  # noqa: F401  (re-exported for the tests)


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
