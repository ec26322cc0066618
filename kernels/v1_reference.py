"""v1: the NumPy reference every faster kernel is checked against.

FBI-Linear (arXiv 2407.07093, eq. 3): W~ = alpha * sign(W) + beta with alpha, beta (1, in), one
per input column, so y = x @ W~.T = (alpha * x) @ sign(W).T + x @ beta.T. It unpacks the canonical
bits to +-1 and multiplies in float64, so its own rounding is far below any kernel's.

    python -c "import kernels.v1_reference as v; v._demo()"
"""
import numpy as np

from kernels.bitpack import pack_canonical, unpack_canonical


def fbi_linear_v1(words: np.ndarray, in_features: int, alpha: np.ndarray, beta: np.ndarray,
                  x: np.ndarray) -> np.ndarray:
    """canonical words (out, ceil(in/64)), alpha/beta (1, in) or (in,), x (in,) or (B, in) -> float64 (out,) or (B, out)."""
    signs = unpack_canonical(words, in_features).astype(np.float64)      # (out, in) of +-1
    a = np.asarray(alpha, np.float64).reshape(1, in_features)            # (1, in), per input column
    b = np.asarray(beta, np.float64).reshape(in_features)                # (in,)
    x2 = np.atleast_2d(np.asarray(x, np.float64))                        # (B, in)
    y = (x2 * a) @ signs.T + (x2 @ b)[:, None]                           # (B, out)
    return y[0] if np.ndim(x) == 1 else y


def _demo() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 70))
    alpha, beta, x = rng.random((1, 70)), rng.standard_normal((1, 70)), rng.standard_normal(70)
    w_tilde = alpha * np.where(w >= 0, 1.0, -1.0) + beta                  # (out, in) dequantized
    y = fbi_linear_v1(pack_canonical(w), 70, alpha, beta, x)
    print("max |v1 - x @ W~.T| =", np.abs(y - x @ w_tilde.T).max())
