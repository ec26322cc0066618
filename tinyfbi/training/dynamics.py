"""How steady a run's training was: the flip-flop ratio and the gradient norm of its metrics.jsonl.

FBI-LLM (arXiv 2407.07093, section 5) compares training from scratch with training from pretrained
weights by how the flip-flop ratio (the fraction of binarized weights whose sign changes per step)
and the gradient norm move over training. Both curves follow the learning-rate schedule (they rise
in warmup and fall with the cosine), so their spread says little about steadiness; what does is how
far a value moves from one step to the next. Notebook 06 reads its runs with this.

    rows = read_metrics("runs/tiny-ad/metrics.jsonl")
    jitter(series(rows, "flips"), start=warmup)          # 0.05: a typical step changes it by 5%
"""
from __future__ import annotations

import numpy as np

WINDOW = 9          # steps in the running median that stands for the local trend (odd: centred)


def series(rows: list[dict], key: str) -> np.ndarray:
    """(steps,) values of one metric per optimizer step: "flips" (all layers), "grad_norm", "lr", "loss"."""
    return np.array([r["flips"]["all"] if key == "flips" else r[key] for r in rows], dtype=np.float64)


def running_median(values: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """(n,) median of the `window` values centred on each step (fewer at the ends)."""
    half = window // 2
    return np.array([np.median(values[max(0, i - half):i + half + 1]) for i in range(len(values))])


def jitter(values: np.ndarray, start: int = 0) -> float:
    """Median over steps >= start of |value / previous value - 1|: how much a typical step changes it.
    A smooth schedule adds little (300 cosine steps from 0.4% to 0.05% change it by under 1% a step)."""
    v = values[max(start, 1) - 1:]
    return float(np.median(np.abs(v[1:] / v[:-1] - 1)))


def spikes(values: np.ndarray, factor: float = 3.0, start: int = 0, window: int = WINDOW) -> list[int]:
    """Steps (1-based, as metrics.jsonl numbers them) >= start + 1 whose value exceeds `factor` times
    the running median around them."""
    trend = running_median(values, window)
    return [i + 1 for i in range(start, len(values)) if values[i] > factor * trend[i]]
