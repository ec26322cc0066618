"""Per-token int8 activations for the int8 kernels (v4, v5, v7-v10 and v13, which reads them in its bits' order).

xs = alpha * x is rounded to q = round(xs / scale), scale = max|xs| / 127, q in [-127, 127] (never
-128, so |q| fits 7 bits and maddubs pair sums never saturate). The int8 kernels then compute
sign(W) @ (scale * q) exactly in integers, so their only error is the rounding of xs:
|xs_j - scale * q_j| <= scale / 2, hence |y_o - y_ref_o| <= scale / 2 * in_features for every
output (a hard bound), and about scale * sqrt(in_features / 12) for typical, independent rounding
errors. For Gaussian-like activations that is about 1% of max|y| (measured in tinyfbi/bench/kernels.py).
"""
import numba
import numpy as np

LANES = 8                                       # independent partial sums: one AVX2 register


@numba.njit(cache=True)
def _amax_and_dot(alpha, beta, x):
    # alpha, beta, x (in,) float32 -> (max |alpha * x|, beta . x). Eight partial sums in a fixed order
    # vectorize without fastmath, so every caller gets the same bits (v9 == v5 is tested bit for bit)
    amax = np.zeros(LANES, np.float32)
    acc = np.zeros(LANES, np.float32)
    n8 = x.shape[0] // LANES * LANES
    for j0 in range(0, n8, LANES):
        for k in range(LANES):
            amax[k] = max(amax[k], abs(alpha[j0 + k] * x[j0 + k]))
            acc[k] += beta[j0 + k] * x[j0 + k]
    for j in range(n8, x.shape[0]):
        amax[0] = max(amax[0], abs(alpha[j] * x[j]))
        acc[0] += beta[j] * x[j]
    bx = np.float32(0.0)
    for k in range(LANES):
        bx += acc[k]
    return amax.max(), bx


@numba.njit(cache=True, inline="always")
def _scale_and_inverse(amax):
    scale = amax / np.float32(127.0)
    return scale, (np.float32(1.0) / scale if scale > 0 else np.float32(0.0))


@numba.njit(cache=True, inline="always")
def _round_q(alpha_j, x_j, inv):
    # strict float32: the same q as quantize_reference
    return min(max(np.int32(np.rint(alpha_j * x_j * inv)), np.int32(-127)), np.int32(127))


@numba.njit(cache=True)
def quantize_int8(alpha, beta, x, q):
    # alpha, beta, x (in,) float32; q (n_pad,) int8, zero past in -> (scale, sum(q), beta . x)
    n_in = x.shape[0]
    amax, bx = _amax_and_dot(alpha, beta, x)
    scale, inv = _scale_and_inverse(amax)
    qsum = np.int32(0)                          # |sum q| <= 127 * in fits int32 for in < 16.9M
    for j in range(n_in):
        v = _round_q(alpha[j], x[j], inv)
        q[j] = v
        qsum += v
    for j in range(n_in, q.shape[0]):
        q[j] = 0
    return scale, qsum, bx


@numba.njit(cache=True)
def quantize_int8_bit_order(alpha, beta, x, qb):
    # the same q as quantize_int8, written where the blocked bits (kernels/bitpack.py) keep each input's
    # sign when a block's 32 bytes are read as 4 64-bit words: input 256 blk + 32 b + k (bit b of byte k)
    # is bit 8 (k % 8) + b of word k // 8, so it goes to qb[256 blk + 64 (k // 8) + 8 (k % 8) + b]
    n_in = x.shape[0]
    amax, bx = _amax_and_dot(alpha, beta, x)
    scale, inv = _scale_and_inverse(amax)
    qsum = np.int32(0)
    full = n_in // 256 * 256
    for base in range(0, full, 256):                    # whole blocks: inputs read in order, no index division
        for b in range(8):
            for w in range(4):
                for k in range(8):
                    j = base + 32 * b + 8 * w + k
                    v = _round_q(alpha[j], x[j], inv)
                    qb[base + 64 * w + 8 * k + b] = v
                    qsum += v
    for j in range(full, qb.shape[0]):                  # the last block's padding, wherever it lands
        qb[j] = 0
    for j in range(full, n_in):
        v = _round_q(alpha[j], x[j], inv)
        r = j - full
        qb[full + 64 * ((r % 32) // 8) + 8 * (r % 8) + r // 32] = v
        qsum += v
    return scale, qsum, bx


def quantize_reference(alpha, x):
    """NumPy twin of quantize_int8, for tests: (q (in,) int8, scale)."""
    xs = (np.asarray(alpha, np.float32) * np.asarray(x, np.float32)).reshape(-1)
    scale = np.float32(np.abs(xs).max() / np.float32(127.0))
    inv = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
    return np.clip(np.rint(xs * inv), -127, 127).astype(np.int8), scale
