"""Float64 central differences: the oracle for every hand-written backward. The tests compare with
the package's one helper, tinyfbi.core.compare.assert_close, shared with the notebooks."""
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
