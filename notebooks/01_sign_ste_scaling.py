# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Sign, the straight-through estimator, and column-wise scaling
#
# [FBI-LLM](https://arxiv.org/abs/2407.07093) (Ma, Sun, Shen 2024), **section 3.1**, replaces every
# linear layer in the transformer blocks by an **FBI-Linear**. Its weight is the sign of a
# full-precision *latent* weight $W^f$, then scaled column by column, the paper's eq. (3):
#
# $$\tilde W_{\cdot,j} = \alpha_j\, \operatorname{sign}(W^f)_{\cdot,j} + \beta_j, \qquad \alpha, \beta \in \mathbb R^{1\times \text{in}}$$
#
# one $\alpha_j, \beta_j$ per **input column** $j$, broadcast over the output rows. Only training sees
# $W^f$ (written $W$ below); a deployed model keeps one bit per weight plus $\alpha$ and $\beta$.
# This notebook re-derives four things one step at a time, each checked against `tinyfbi` or torch:
# the sign, the straight-through estimator, what the column-wise scales can and cannot do, and the
# form the 1-bit kernels compute.

# %% tags=["parameters"]
import os

FAST = os.environ.get("TINYFBI_FAST") == "1"  # CI runs every notebook small
SEED = 0
OUT, IN = (256, 128) if FAST else (1024, 512)  # the matrices of Steps 3 and 4

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from tinyfbi.core import layers as L
from tinyfbi.core import reconstruction as R
from tinyfbi.core.binarize import binarize
from tinyfbi.core.compare import cmp
from tinyfbi.torch_backend.model import SignSTE

rng = np.random.default_rng(SEED)

# %% [markdown]
# ## Step 1 · one binarize, and where zero goes
# *Paper: [section 3.1](https://arxiv.org/abs/2407.07093), the sign function that makes $W^b$ from $W^f$.*
# The paper's code calls torch's `sign`, which sends 0 to 0: a third value that one bit cannot hold.
# tinyfbi uses **w >= 0 → +1** everywhere (training, torch, packing and the kernels), so every
# weight, zero included, is one bit.

# %%
w = np.array([-1.5, -0.0, 0.0, 1e-9, 2.0], dtype=np.float32)
ours = np.where(w >= 0, 1.0, -1.0)
cmp("binarize", ours, binarize(w), 0)
cmp("torch SignSTE forward", ours, SignSTE.apply(torch.from_numpy(w)).numpy(), 0)
print("weights:", w, "-> signs:", binarize(w), "(torch.sign gives", torch.sign(torch.from_numpy(w)).numpy(), ")")

# %% [markdown]
# ## Step 2 · the straight-through estimator
# *Paper: [section 3](https://arxiv.org/abs/2407.07093) trains through sign with the straight-through
# estimator (STE).* d sign(w)/dw is zero almost everywhere, so plain backprop would never move $W$.
# The STE passes the gradient through as if the derivative were 1 (FBI-LLM uses the identity, no
# clipping). For $\tilde W = \alpha\,\mathrm{sign}(W)+\beta$ and $y = x\tilde W^T$ the chain rule then gives
# $\partial L/\partial W = \alpha \odot \partial L/\partial \tilde W$,
# $\partial L/\partial \alpha_j = \sum_i \partial L/\partial \tilde W_{ij}\,\mathrm{sign}(W_{ij})$ and
# $\partial L/\partial \beta_j = \sum_i \partial L/\partial \tilde W_{ij}$ (sums over the output rows $i$).

# %%
out_f, in_f = 6, 5
W = rng.standard_normal((out_f, in_f)) * 0.02
alpha, beta = L.init_scales(W)                          # (1, in) each
x = rng.standard_normal((3, in_f))
dy = rng.standard_normal((3, out_f))                   # an upstream gradient

dW_tilde = dy.T @ x                                     # (out, in): y = x @ W~.T
dW = alpha * dW_tilde                                   # STE: d sign/dW := 1
dalpha = np.sum(dW_tilde * binarize(W), axis=0, keepdims=True)   # (1, in): sum over rows
dbeta = np.sum(dW_tilde, axis=0, keepdims=True)

tW, ta, tb, tx = (torch.tensor(a, requires_grad=True) for a in (W, alpha, beta, x))
ty = tx @ (ta * SignSTE.apply(tW) + tb).T
ty.backward(torch.from_numpy(dy))
cmp("dW (STE) vs torch", dW, tW.grad, 1e-12)
cmp("dalpha vs torch", dalpha, ta.grad, 1e-12)
cmp("dbeta vs torch", dbeta, tb.grad, 1e-12)
_, lib_dW, lib_da, lib_db = L.fbi_linear_backward(dy, L.fbi_linear_forward(x, W, alpha, beta)[1])
cmp("dW vs tinyfbi", dW, lib_dW, 1e-12)
cmp("dalpha vs tinyfbi", dalpha, lib_da, 1e-12)
cmp("dbeta vs tinyfbi", dbeta, lib_db, 1e-12)
print("the STE gradient of W is alpha times that of W~: nonzero although d sign/dW is 0")

# %% [markdown]
# ## Step 3 · the floor: i.i.d. Gaussian weights sit at $\sqrt{1-2/\pi}$ whatever the scaling
# How well can $\alpha\,\mathrm{sign}(W)+\beta$ stand in for $W$? Measure the relative reconstruction
# error $\|W-\tilde W\|_F/\|W\|_F$ for a scale **per tensor** (one $\alpha$), **per output row**
# (per output channel, common in 4- and 8-bit quantization) or **per input column** (FBI's), each with
# three kinds of scales:
#
# * $\alpha$ only: $\beta = 0$, $\alpha = \operatorname{mean}|W|$, the least-squares scale for $\mathrm{sign}(W)$;
# * FBI's init as the authors' code computes it
#   ([`qat/learnable_binarizer.py`](https://github.com/LiqunMa/FBI-LLM/blob/main/qat/learnable_binarizer.py)):
#   $\beta = \operatorname{mean} W$, $\alpha = \operatorname{mean}|W-\beta|$. The paper writes its init as
#   eqs. (4)-(5); [issue #1](https://github.com/LiqunMa/FBI-LLM/issues/1) on the authors' repository
#   asks whether those two swap $\alpha$ and $\beta$;
# * least squares for the fixed signs: the two levels $\beta\pm\alpha$ are the means of the entries
#   that $\mathrm{sign}(W)$ sends to $+1$ and to $-1$.
#
# For $w \sim \mathcal N(0,\sigma^2)$ with $\beta=0$: $E(w-\alpha\,\mathrm{sign}\,w)^2 = \sigma^2 - 2\alpha E|w| + \alpha^2$
# is smallest at $\alpha = E|w| = \sigma\sqrt{2/\pi}$, where it is $\sigma^2(1-2/\pi)$. The relative error is
# $\sqrt{1-2/\pi} = 0.6028$ **for every** $\sigma$. When all entries are i.i.d., each row, each column and
# the whole tensor estimate the same $\sigma$ and $\beta \approx 0$: every choice lands on the floor.

# %%
def show(table, title):
    print(f"{title:<28}" + "".join(f"{k:>14}" for k in R.KINDS))
    for s in R.AXES:
        print(f"  per {s:<24}" + "".join(f"{table[s, k]:>14.3f}" for k in R.KINDS))


gaussian = rng.standard_normal((OUT, IN)) * 0.02
gaussian_errors = R.error_table(gaussian)
show(gaussian_errors, f"i.i.d. N(0, 0.02^2), {OUT}x{IN}")
print(f"floor sqrt(1 - 2/pi) = {R.GAUSSIAN_FLOOR:.4f}")
worst = max(abs(e - R.GAUSSIAN_FLOOR) for e in gaussian_errors.values())
assert worst < 0.01, gaussian_errors    # each row/column estimates sigma from >= 128 samples: O(1/n) below
print(f"all nine within {worst:.4f} of the floor")

# %% [markdown]
# ## Step 4 · weights whose columns differ: where per-column $\alpha$ and $\beta$ matter
# *Paper: [section 3.1](https://arxiv.org/abs/2407.07093), the column-wise $\alpha_j, \beta_j$ of its eq. (3).*
# Column $j$ of $W$ multiplies input feature $x_j$. If the features are uncorrelated, with RMS $r_j$, a
# layer's output error is $E\|(W-\tilde W)x\|^2 = \sum_j r_j^2\,\|W_{\cdot j}-\tilde W_{\cdot j}\|^2$: the
# reconstruction error of $W\operatorname{diag}(r)$, the weight as the output sees it (and as a quantizer
# sees it once a norm's gain is folded into the next linear). Large input features make large columns.
# What is published about them for LLaMA-class models:
#
# * They sit in a few **fixed feature dimensions**. LLM.int8() (Dettmers et al. 2022,
#   [arXiv 2208.07339](https://arxiv.org/abs/2208.07339), abstract) keeps such "outlier feature
#   dimensions" in 16 bits; in LLaMA2-7B the largest activations sit in two fixed feature dimensions,
#   1415 and 2533 (Sun et al. 2024, "Massive activations", [arXiv 2402.17762](https://arxiv.org/abs/2402.17762),
#   Figure 1), "e.g., 100,000 times larger" than the others (its abstract), on a few tokens.
# * About **1% of the input channels** matter most: AWQ (Lin et al. 2023,
#   [arXiv 2306.00978](https://arxiv.org/abs/2306.00978), abstract) finds that protecting "only 1% of
#   salient weights", picked per input channel by the size of its activations, removes most of the
#   low-bit error. `R.SALIENT_CHANNEL_FRACTION` is that 1%.
# * SpQR (Dettmers et al. 2023, [arXiv 2306.03078](https://arxiv.org/abs/2306.03078)) finds the weights
#   of LLaMA most sensitive to quantization in column patterns that follow input features (no number
#   is taken from it).
#
# None of these measures how much larger LLaMA's weight columns are: the 100,000x is one activation on
# a few tokens, not a feature's RMS. So the matrix here is Step 3's i.i.d. Gaussian matrix with the
# published 1% of its columns scaled by a gain $g$, and $g$ is **swept** from 1 (Step 3 itself) to 100
# rather than chosen; nothing else about the matrix is structured. With a fraction $p$ of the columns $g$
# times larger, Step 3's argument with $E|w|$ and $E w^2$ averaged over the columns leaves one $\alpha$ for
# the whole tensor at the relative error $\sqrt{1-\tfrac{2}{\pi}\,((1-p)+pg)^2/((1-p)+pg^2)}$
# (`R.one_scale_error`), which climbs towards 1 as $g$ grows: the few large columns hold a growing share
# of $\|W\|^2$ and one scale cannot fit both sizes. Per-column scales follow any $r$ exactly (the first
# cell checks it for all three kinds).

# %%
outlier = np.zeros(IN, dtype=bool)                      # (in,) the published 1% of the input columns
outlier[rng.choice(IN, R.n_outlier_columns(IN), replace=False)] = True
p = outlier.mean()
r = np.where(outlier, 10.0, 1.0)                        # (in,) input-feature sizes folded into W
for kind in R.KINDS:   # sign(W diag r) = sign(W), and each kind of per-column alpha and beta scales with r_j
    cmp(f"column {kind}: (W diag r)~ = W~ diag r", R.scaled_signs(gaussian * r, "column", kind),
        R.scaled_signs(gaussian, "column", kind) * r, 1e-12)    # float64 rounding, |W| < 1

gains = [1, 2, 5, 10, 20, 50, 100]                       # an outlier feature's RMS / the others'
sweep = {g: R.error_table(gaussian * np.where(outlier, g, 1.0)) for g in gains}   # W diag(r), (out, in)
print(f"\n{outlier.sum()} of {IN} columns ({100 * p:.1f}%) scaled by g; least-squares alpha and beta each time")
print(f"{'g':>5}{'per tensor':>12}{'per row':>10}{'per column':>12}{'formula, one alpha':>20}")
for g in gains:
    e = sweep[g]
    print(f"{g:>5}{e['tensor', 'lsq']:>12.3f}{e['row', 'lsq']:>10.3f}{e['column', 'lsq']:>12.3f}"
          f"{R.one_scale_error(p, g):>20.3f}")
for g in gains:
    e = sweep[g]
    # every column i.i.d.: Step 3's floor. As g grows the outlier columns hold most of ||W||^2, so this is
    # their own floor, from OUT samples each (one column of 256 rows at the CI size: about +-0.02)
    assert abs(e["column", "lsq"] - R.GAUSSIAN_FLOOR) < 0.02, (g, e)
    # the formula uses a Gaussian's exact E|z| and E z^2; the outlier columns' own come from OUT entries
    # each (+-9% on E z^2 at 256 rows, about +-0.01 on the error)
    assert abs(e["tensor", "lsq"] - R.one_scale_error(p, g)) < 0.03, (g, e)
assert all(abs(sweep[1][s, "lsq"] - R.GAUSSIAN_FLOOR) < 0.01 for s in R.AXES)    # g = 1 is Step 3's matrix
for g in gains[3:]:                                      # from g = 10 on: visibly apart, > 0.1 against +-0.01 noise
    assert min(sweep[g]["tensor", "lsq"], sweep[g]["row", "lsq"]) > sweep[g]["column", "lsq"] + 0.1, sweep[g]

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.8))
for s, marker in zip(R.AXES, "os^"):
    ax.plot(gains, [sweep[g][s, "lsq"] for g in gains], marker=marker, label=f"per {s}")
g_fine = np.geomspace(1, 100, 200)
ax.plot(g_fine, [R.one_scale_error(p, g) for g in g_fine], ls=":", color="black", label="formula, one alpha")
ax.axhline(R.GAUSSIAN_FLOOR, ls="--", color="gray", label="Gaussian floor sqrt(1 - 2/pi)")
ax.set_xscale("log")
ax.set_xlabel(f"gain g of the {outlier.sum()} outlier columns (ratio to the others, log scale)")
ax.set_ylabel("relative error ||W - W~|| / ||W|| (ratio)")
ax.set_title(f"1% of the columns g times larger, {OUT}x{IN}, least-squares alpha, beta")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The published 1% alone is enough: once the outlier columns are ten times the others, one scale per
# tensor or per row is far off the floor, and per column stays on it at every gain.
#
# ### 4b · columns that differ in size and in mean: what $\beta$ adds
# Columns of a trained matrix need not differ only by a few outliers, and with zero-mean columns $\beta$
# has nothing to do. To show it at work the next matrix, $W_{ij} = s_j (z_{ij} + \mu_j)$
# (`R.column_structured`), adds two things with **chosen**, not published, numbers: log-normal column
# sizes $s_j$ with spread $e^{\pm 1}$ and column offsets $\mu_j \sim \mathcal N(0, 0.5^2)$ in units of the
# column's own spread; the published 1% of the columns are again outliers, at $g = 10$. The spread and
# the offsets are chosen to make the mechanism visible; they are **not** statistics measured on LLaMA's
# weights.

# %%
structured = R.column_structured(OUT, IN, rng, scale_sigma=1.0, mean_to_scale=0.5, outliers=R.n_outlier_columns(IN),
                                 outlier_gain=10.0)
col_size = np.abs(structured).mean(axis=0)
print(f"column mean |W|: median {np.median(col_size):.4f}, largest / median {col_size.max() / np.median(col_size):.1f}x, "
      f"smallest / median {col_size.min() / np.median(col_size):.2f}x")
structured_errors = R.error_table(structured)
show(structured_errors, f"column-structured, {OUT}x{IN}")

coarse = min(structured_errors[s, k] for s in ("tensor", "row") for k in R.KINDS)
per_col = {k: structured_errors["column", k] for k in R.KINDS}
assert max(per_col.values()) < coarse - 0.15, structured_errors        # per column: far below any coarser scale
assert per_col["lsq"] < per_col["alpha"] < per_col["fbi"], per_col      # beta helps only when fitted
assert per_col["lsq"] < R.GAUSSIAN_FLOOR + 0.01, per_col                # per column gets back to the floor
print(f"per tensor or per row: no better than {coarse:.3f}; per column: {per_col['lsq']:.3f} (least squares), "
      f"{per_col['alpha']:.3f} (alpha only), {per_col['fbi']:.3f} (FBI's init)")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
styles = {"alpha": ("tab:blue", "", "alpha only (beta = 0)"), "fbi": ("tab:orange", "//", "FBI's init of alpha, beta"),
          "lsq": ("tab:green", "..", "alpha, beta by least squares")}
for ax, (table, name) in zip(axes, ((gaussian_errors, "i.i.d. Gaussian W"), (structured_errors, "column-structured W"))):
    for i, kind in enumerate(R.KINDS):
        color, hatch, label = styles[kind]
        ax.bar(np.arange(3) + (i - 1) * 0.27, [table[s, kind] for s in R.AXES], 0.27, color=color, hatch=hatch,
               edgecolor="black", label=label)
    ax.axhline(R.GAUSSIAN_FLOOR, ls="--", color="black", label="Gaussian floor sqrt(1 - 2/pi)")
    ax.set_xticks(range(3), [f"per {s}" for s in R.AXES])
    ax.set_xlabel("where one alpha (and beta) is shared")
    ax.set_title(f"{name}, {OUT}x{IN}")
axes[0].set_ylabel("relative error ||W - W~|| / ||W|| (ratio)")
handles, labels = axes[0].get_legend_handles_labels()
fig.suptitle("Reconstruction error of alpha * sign(W) + beta")
fig.tight_layout(rect=(0, 0.1, 1, 1))
fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
plt.show()

# %% [markdown]
# Two things the table and plot of 4b show. Per-column $\alpha$ is what recovers columns of different size:
# a scale shared over a row or the whole tensor cannot follow them. And $\beta$ helps only when it is
# fitted to the signs: FBI's init takes $\beta_j$ as the column mean but keeps the signs of $W$ (not of
# $W-\beta$), so on offset columns it reconstructs *worse* than $\alpha$ alone. That is no flaw in the
# paper, because the init is only where training starts.
#
# **What the reconstruction error does not measure.** (1) A layer's output weighs the error in column
# $j$ by the size of the input $x_j$; reconstruction of $W$ alone weighs every column alike, and equals
# the output's error only for $W\operatorname{diag}(r)$ with the inputs' sizes $r$ folded in, as in Step 4.
# Whether a trained FBI-LLM's latent $W$ grows large columns of its own is not measured here. (2) FBI-LLM
# never rounds a trained full-precision $W$: it trains from random weights, and the loss moves $\alpha$,
# $\beta$ and the latent $W$, hence the signs themselves (section 3; the flip rate of notebook 06). The
# question the paper answers is what a binary layer with trained column scales can *learn*, not how close
# it comes to some full-precision matrix; notebook 03 trains such layers.

# %% [markdown]
# ## Step 5 · the kernel's form
# $y = x\tilde W^T = \operatorname{sign}(W)\,(\alpha\odot x) + (\beta\cdot x)$: scale the *activations*
# by $\alpha$ once, multiply by pure ±1 (bits), and add one dot product. This is what the 1-bit
# kernels compute (notebook 04), and why $\alpha$ and $\beta$ run along the input columns: they fold into
# the input vector, one multiply per input feature, not one per weight.

# %%
y_kernel_form = (x * alpha) @ binarize(W).T + (x * beta).sum(-1, keepdims=True)
cmp("kernel form vs FBI-Linear", y_kernel_form, L.fbi_linear_forward(x, W, alpha, beta)[0], 1e-12)
print("sign(W) (alpha * x) + beta . x equals x W~^T")

# %% [markdown]
# ## Summary
# * One binarize, $w \ge 0 \to +1$, so that one bit holds every weight (Step 1).
# * The straight-through estimator gives $\partial L/\partial W = \alpha\odot\partial L/\partial\tilde W$ and the column
#   sums for $\alpha$ and $\beta$; both agree with torch and with `tinyfbi.core.layers` (Step 2).
# * I.i.d. Gaussian weights reconstruct at $\sqrt{1-2/\pi}\approx 0.603$ whatever the scaling (Step 3). With the
#   published 1% of the columns (outlier input features) $g$ times larger, one scale per tensor or row climbs
#   towards 1 as $g$ grows while per-column scales stay on the floor; a fitted $\beta$ matters when columns
#   differ in mean (Step 4).
#   Reconstruction is not what FBI optimizes: it trains the scales and the signs on the loss.
# * $\alpha$ and $\beta$ fold into the activations, so the product itself needs only the bits (Step 5).
#
# ## Exercise
# Weights are not always Gaussian. Using Step 3's derivation (the best $\alpha$ for $\beta=0$ is $E|w|$),
# find the floor $\sqrt{1-(E|w|)^2/E w^2}$ of the relative error for i.i.d. **Laplace** weights and for
# i.i.d. **uniform** weights on $[-a, a]$, and check both numbers with `R.error_table` on a large sample.
# (`tests/test_exercises.py` holds the answer and checks it.)
