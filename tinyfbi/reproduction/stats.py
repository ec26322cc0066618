"""Student's t interval of a mean of paired differences, written out so the rule needs no SciPy.

A claim compares two arms trained with the same seeds (same init and batch order), so the
per-seed differences d_i = loss_A(seed i) - loss_B(seed i) are paired: the seed's luck cancels in
d_i, and the interval is mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n).
"""
from __future__ import annotations

import math

import numpy as np


def t_pdf(x, df):
    """Density of Student's t with df degrees of freedom."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return np.exp(log_c - (df + 1) / 2 * np.log1p(np.asarray(x, dtype=np.float64) ** 2 / df))


def t_cdf(x, df, points=20001):
    """P(T <= x): 0.5 plus the density integrated from 0 to |x| (Simpson's rule on a fine grid)."""
    grid = np.linspace(0.0, abs(x), points)                      # points is odd: Simpson needs even intervals
    f = t_pdf(grid, df)
    h = grid[1] - grid[0] if points > 1 else 0.0
    area = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    return 0.5 + math.copysign(area, x)


def t_quantile(p, df):
    """The x with P(T <= x) = p, for 0.5 < p < 1, by bisection on t_cdf."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def paired_interval(a, b, level=0.95) -> dict:
    """Per-seed differences a - b (same seeds in the same order), their mean, standard error and
    two-sided `level` interval. With one seed there is no spread: the interval is unbounded."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return {"diffs": d.tolist(), "mean": mean, "se": math.inf, "low": -math.inf, "high": math.inf, "n": n}
    se = float(d.std(ddof=1) / math.sqrt(n))
    half = t_quantile(0.5 + level / 2, n - 1) * se
    return {"diffs": d.tolist(), "mean": mean, "se": se, "low": mean - half, "high": mean + half, "n": n}
