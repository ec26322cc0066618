"""The one binarize of tinyfbi: +1 where w >= 0, else -1 (FBI-LLM, arXiv 2407.07093, section 3.1).

Zero maps to +1 so that one bit holds every weight. Training (NumPy and torch), packing and the
kernels all decide signs through `positive_mask`, so they can never disagree on a zero.
The one exception: the authors trained with torch's sign, sign(0) = 0, so a released FBI-LLM
checkpoint read in a float backend keeps an exact-zero latent weight at 0 (ModelConfig.sign_of_zero).
"""
import numpy as np


def positive_mask(w):
    """True where the binarized weight is +1. Works on NumPy arrays and torch tensors alike."""
    return w >= 0


def binarize(w: np.ndarray, zero: int = 1) -> np.ndarray:
    """sign(w) with sign(0) = `zero` (+1, tinyfbi's rule; 0, the authors' torch.sign), in w's dtype."""
    one = np.ones((), dtype=w.dtype)
    signs = np.where(positive_mask(w), one, -one)
    return signs if zero == 1 else np.where(w == 0, np.asarray(zero, w.dtype), signs)
