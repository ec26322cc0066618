"""Per-token int8 activations for the int8 kernels (v4, v5 and v7).

xs = alpha * x is rounded to q = round(xs / scale), scale = max|xs| / 127, q in [-127, 127] (never
-128, so |q| fits 7 bits and maddubs pair sums never saturate). The int8 kernels then compute
sign(W) @ (scale * q) exactly in integers, so their only error is the rounding of xs:
|xs_j - scale * q_j| <= scale / 2, hence |y_o - y_ref_o| <= scale / 2 * in_features for every
output (a hard bound), and about scale * sqrt(in_features / 12) for typical, independent rounding
errors. For Gaussian-like activations that is about 1% of max|y| (measured in kernels/bench.py).
"""
import numba
import numpy as np


@numba.njit(cache=True)
def quantize_int8(alpha, beta, x, q):
    # alpha, beta, x (in,) float32; q (n_pad,) int8, zero past in -> (scale, sum(q), beta . x)
    n_in = x.shape[0]
    amax = np.float32(0.0)
    bx = np.float32(0.0)
    for j in range(n_in):
        amax = max(amax, abs(alpha[j] * x[j]))
        bx += beta[j] * x[j]
    scale = amax / np.float32(127.0)
    inv = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
    qsum = 0
    for j in range(n_in):
        v = min(max(np.rint(alpha[j] * x[j] * inv), -127.0), 127.0)
        q[j] = np.int8(v)
        qsum += np.int64(v)
    for j in range(n_in, q.shape[0]):
        q[j] = 0
    return scale, qsum, bx


def quantize_reference(alpha, x):
    """NumPy twin of quantize_int8, for tests: (q (in,) int8, scale)."""
    xs = (np.asarray(alpha, np.float32) * np.asarray(x, np.float32)).reshape(-1)
    scale = np.float32(np.abs(xs).max() / np.float32(127.0))
    inv = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
    return np.clip(np.rint(xs * inv), -127, 127).astype(np.int8), scale
