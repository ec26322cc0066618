"""The one binarize of tinyfbi: +1 where w >= 0, else -1 (FBI-LLM, arXiv 2407.07093, section 3.1).

Zero maps to +1 so that one bit holds every weight. Training (NumPy and torch), packing and the
kernels all decide signs through `positive_mask`, so they can never disagree on a zero.
"""
import numpy as np


def positive_mask(w):
    """True where the binarized weight is +1. Works on NumPy arrays and torch tensors alike."""
    return w >= 0


def binarize(w: np.ndarray) -> np.ndarray:
    """sign(w) with sign(0) = +1, in w's dtype."""
    one = np.ones((), dtype=w.dtype)
    return np.where(positive_mask(w), one, -one)
