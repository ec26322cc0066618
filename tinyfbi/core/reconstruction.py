"""How well sign(W) with scales stands in for W, and what that measure leaves out (notebook 01).

FBI-Linear (arXiv 2407.07093, section 3.1) uses W~ = alpha * sign(W) + beta with one alpha_j, beta_j
per input column j. Here the same code with the scale taken per tensor, per output row or per input
column, with and without beta, so that they can be compared on one matrix:

    W_tilde = scaled_signs(W, "column", "fbi")          # FBI's init: beta = mean, alpha = mean |W - beta|
    relative_error(W, W_tilde)                          # ||W - W~|| / ||W||
    GAUSSIAN_FLOOR                                      # sqrt(1 - 2/pi): i.i.d. Gaussian W, any of them

Reconstruction is not what FBI-LLM optimizes: it trains alpha, beta and the latent W (so the signs
too) on the loss, from random weights; notebook 01 says what this measure leaves out.
"""
from __future__ import annotations

import math

import numpy as np

from .binarize import binarize
from .layers import init_scales

# E|w| = sigma sqrt(2/pi) for w ~ N(0, sigma^2); the best alpha is E|w|, leaving
# E(w - alpha sign w)^2 = sigma^2 (1 - 2/pi): this relative error whatever sigma is
GAUSSIAN_FLOOR = math.sqrt(1.0 - 2.0 / math.pi)

AXES = {"tensor": None, "row": 1, "column": 0}   # which axis one scale is averaged over


KINDS = ("alpha", "fbi", "lsq")   # alpha only; FBI's init of alpha and beta; least squares for sign(W)

# The one published number notebook 01's Step 4 builds on: AWQ (Lin et al. 2023, arXiv 2306.00978,
# abstract) finds that protecting "only 1% of salient weights", picked per input channel by the size
# of that channel's activations, removes most of the low-bit error. How much larger those channels
# are is not pinned by a published statistic of LLaMA's weights, so Step 4 sweeps it.
SALIENT_CHANNEL_FRACTION = 0.01


def n_outlier_columns(in_features, fraction=SALIENT_CHANNEL_FRACTION) -> int:
    """How many of in_features input columns `fraction` makes outliers; at least one."""
    return max(1, round(fraction * in_features))


def one_scale_error(fraction, gain) -> float:
    """Relative error of one alpha (beta = 0) on W = z diag(s), z i.i.d. Gaussian, s_j = gain on
    `fraction` of the columns and 1 elsewhere: E|w| = E[s] sqrt(2/pi) and E w^2 = E[s^2] give
    sqrt(1 - (2/pi) E[s]^2 / E[s^2]); GAUSSIAN_FLOOR at gain 1, towards 1 as gain grows."""
    mean_s, mean_s2 = 1 - fraction + fraction * gain, 1 - fraction + fraction * gain ** 2
    return math.sqrt(1.0 - (2.0 / math.pi) * mean_s ** 2 / mean_s2)


def scales(weight, scaling="column", kind="fbi"):
    """(alpha, beta) of `scaling`, broadcastable to weight (out, in).

    scaling: tensor (1, 1); row (out, 1), one per output; column (1, in), one per input feature (FBI's).
    kind "alpha": beta = 0, alpha = mean |W| (the least-squares scale of sign(W), XNOR-Net's);
    "fbi": the paper's init, beta = mean W, alpha = mean |W - beta| (a start for training);
    "lsq": the least-squares alpha, beta for the fixed signs sign(W): the two levels beta +- alpha
    are the means of the entries that sign(W) sends to +1 and to -1 (half their gap, their midpoint).
    """
    keep = {"axis": AXES[scaling], "keepdims": True}
    if kind == "alpha":
        return np.abs(weight).mean(**keep), np.zeros((1, 1), weight.dtype)
    if kind == "fbi":   # the library's init; a whole tensor is one column of all its entries
        return init_scales(weight.reshape(-1, 1)) if scaling == "tensor" else init_scales(weight, scaling)
    plus = binarize(weight) > 0
    n_plus, n_minus = plus.sum(**keep), (~plus).sum(**keep)
    mean_plus = np.where(plus, weight, 0).sum(**keep) / np.maximum(n_plus, 1)
    mean_minus = np.where(plus, 0, weight).sum(**keep) / np.maximum(n_minus, 1)
    # one level only (every sign alike): alpha = 0 and beta the mean fits it exactly as well
    mean_plus = np.where(n_plus > 0, mean_plus, mean_minus)
    mean_minus = np.where(n_minus > 0, mean_minus, mean_plus)
    return (mean_plus - mean_minus) / 2, (mean_plus + mean_minus) / 2


def scaled_signs(weight, scaling="column", kind="fbi"):
    """W~ = alpha * sign(W) + beta with the scales of `scaling` (FBI-Linear's form, section 3.1)."""
    alpha, beta = scales(weight, scaling, kind)
    return alpha * binarize(weight) + beta


def relative_error(weight, approx) -> float:
    """||W - W~||_F / ||W||_F."""
    return float(np.linalg.norm(weight - approx) / np.linalg.norm(weight))


def error_table(weight) -> dict:
    """{(scaling, kind): relative error} for every scaling and kind of scales, on one matrix."""
    return {(s, k): relative_error(weight, scaled_signs(weight, s, k)) for s in AXES for k in KINDS}


def column_structured(out_features, in_features, rng, scale_sigma=1.0, mean_to_scale=0.5, outliers=0,
                      outlier_gain=10.0, std=0.02):
    """A Gaussian matrix whose input columns differ in scale and mean: W_ij = s_j (z_ij + mu_j).

    s_j = std * exp(scale_sigma * g_j) (log-normal spread of column magnitudes), mu_j ~ N(0,
    mean_to_scale^2) (a column offset in units of its own spread), and `outliers` columns whose scale
    is multiplied by outlier_gain. Within a column the entries stay i.i.d. Gaussian, so per-column
    alpha and beta can reach the Gaussian floor and nothing coarser can. Read s_j as the size of input
    feature j folded into W: for uncorrelated inputs of RMS r_j, E||(W - W~) x||^2 weighs column j's
    error by r_j^2, i.e. it is the reconstruction error of W diag(r).
    """
    s = std * np.exp(scale_sigma * rng.standard_normal(in_features))                # (in,)
    if outliers:
        s[rng.choice(in_features, outliers, replace=False)] *= outlier_gain
    mu = mean_to_scale * rng.standard_normal(in_features)                           # (in,)
    return s * (rng.standard_normal((out_features, in_features)) + mu)              # (out, in)
