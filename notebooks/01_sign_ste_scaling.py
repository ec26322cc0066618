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
# FBI-LLM (arXiv 2407.07093, section 3.1) replaces every linear layer in the transformer blocks by an
# **FBI-Linear**: the weight it multiplies by is
#
# $$\tilde W = \alpha \odot \operatorname{sign}(W) + \beta, \qquad \alpha, \beta \in \mathbb R^{1\times \text{in}}$$
#
# one $\alpha_j, \beta_j$ per **input column** $j$, broadcast over the output rows. $W$ is a full-precision
# *latent* weight that only training sees. This notebook re-derives the three ideas one step at a time,
# checking each against `tinyfbi` or torch.

# %% tags=["parameters"]
import os

FAST = os.environ.get("TINYFBI_FAST") == "1"  # CI runs every notebook small
SEED = 0

# %%
import numpy as np
import torch

from tinyfbi.core import layers as L
from tinyfbi.core.binarize import binarize
from tinyfbi.core.compare import cmp
from tinyfbi.torch_backend.model import SignSTE

rng = np.random.default_rng(SEED)

# %% [markdown]
# ## Step 1 · one binarize, and where zero goes
# sign(0) must land on +1 or -1 so that one bit can hold every weight. tinyfbi uses **w >= 0 → +1**
# everywhere: training, torch, packing and the kernels.

# %%
w = np.array([-1.5, -0.0, 0.0, 1e-9, 2.0], dtype=np.float32)
ours = np.where(w >= 0, 1.0, -1.0)
cmp("binarize", ours, binarize(w), 0)
cmp("torch SignSTE forward", ours, SignSTE.apply(torch.from_numpy(w)).numpy(), 0)
print("signs:", binarize(w))

# %% [markdown]
# ## Step 2 · the straight-through estimator
# d sign(w)/dw is zero almost everywhere, so plain backprop would never move $W$. The STE pretends the
# derivative is 1 (FBI-LLM uses the identity, no clipping). For $\tilde W = \alpha\,\mathrm{sign}(W)+\beta$
# the chain rule then gives
# $\partial L/\partial W = \alpha \odot \partial L/\partial \tilde W$,
# $\partial L/\partial \alpha_j = \sum_i \partial L/\partial \tilde W_{ij}\,\mathrm{sign}(W_{ij})$ and
# $\partial L/\partial \beta_j = \sum_i \partial L/\partial \tilde W_{ij}$.

# %%
out_f, in_f = 6, 5
W = rng.standard_normal((out_f, in_f)) * 0.02
alpha, beta = L.init_scales(W)
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
_, _, lib_da, lib_db = L.fbi_linear_backward(dy, L.fbi_linear_forward(x, W, alpha, beta)[1])
cmp("dalpha vs tinyfbi", dalpha, lib_da, 1e-12)

# %% [markdown]
# ## Step 3 · why a scale and a bias per input column?
# A column $j$ of $W$ multiplies input feature $x_j$. Trained LLM weights have columns of very different
# magnitude and mean (outlier features), so one scale per column tracks them. FBI initializes
# $\beta_j = \operatorname{mean}_i W_{ij}$ and $\alpha_j = \operatorname{mean}_i |W_{ij}-\beta_j|$.
# We measure the relative reconstruction error $\|W - \tilde W\|/\|W\|$ of four choices on **real trained
# weights**: a full-precision model trained for a few steps on text right here (or the quickstart's
# teacher in `runs/`, if you ran it).

# %%
from pathlib import Path

from tinyfbi import Model, load_model


def trained_weights():
    found = sorted(Path("runs").glob("teacher-*/checkpoint")) + sorted(Path("../runs").glob("teacher-*/checkpoint"))
    if found:
        print("using", found[0])
        return load_model(found[0])
    import pydoc_data.topics

    from tinyfbi import ModelConfig
    from tinyfbi.core.optim import AdamW, OptimConfig
    text = np.frombuffer("\n".join(pydoc_data.topics.topics.values()).encode(), dtype=np.uint8)
    model = Model(ModelConfig(vocab_size=256, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=4, intermediate_size=256, max_position_embeddings=64,
                              binarized=False), seed=SEED)
    opt = AdamW(model.params, OptimConfig(lr=3e-3, warmup_steps=5, total_steps=100))
    steps = 20 if FAST else 150
    for step in range(steps):
        starts = rng.integers(0, len(text) - 65, 16)
        batch = np.stack([text[s:s + 65] for s in starts]).astype(np.int64)
        loss, cache = L.cross_entropy_forward(model.forward(batch[:, :-1]), batch[:, 1:])
        opt.step(model.params, model.backward(L.cross_entropy_backward(cache)))
    print(f"trained a small full-precision model for {steps} steps on pydoc topics (loss {loss:.2f})")
    return model


model = trained_weights()


def rel_error(W, W_tilde):
    return float(np.linalg.norm(W - W_tilde) / np.linalg.norm(W))


def errors(W):
    S = binarize(W)
    g = np.mean(np.abs(W))                                   # one global scale (fair "no scaling")
    a_row, b_row = L.init_scales(W, "row")
    a_col, b_col = L.init_scales(W, "column")
    return {"sign only x mean|W|": rel_error(W, g * S), "per row (out, 1)": rel_error(W, a_row * S + b_row),
            "per column (1, in)": rel_error(W, a_col * S + b_col)}


rows = {name: errors(model.params[name].astype(np.float64)) for name in model.params
        if name.endswith("proj.weight") and ".0." in name}
print(f"{'layer 0 weight':<36}" + "".join(f"{k:>22}" for k in next(iter(rows.values()))))
for name, errs in rows.items():
    print(f"{name:<36}" + "".join(f"{v:>22.3f}" for v in errs.values()))
means = {k: np.mean([e[k] for e in rows.values()]) for k in next(iter(rows.values()))}
print("mean".ljust(36) + "".join(f"{v:>22.3f}" for v in means.values()))

# %% [markdown]
# Any 1-bit code loses a lot (the relative error of the best choice is still large): that is why FBI
# trains $\alpha$ and $\beta$ and distills instead of rounding a trained model. The table shows how much
# of the structure each scaling keeps on these weights; the random init of a fresh model has no column
# structure at all, so compare with a random matrix:

# %%
print("random N(0, 0.02):", {k: round(v, 3) for k, v in errors(rng.standard_normal((256, 256)) * 0.02).items()})

# %% [markdown]
# ## Step 4 · the kernel's form
# $y = x\tilde W^T = \operatorname{sign}(W)\,(\alpha\odot x) + (\beta\cdot x)$: scale the *activations*
# by $\alpha$ once, multiply by pure ±1 (bits), and add one dot product. This is what the 1-bit
# kernels compute (notebook 04).

# %%
y_kernel_form = (x * alpha) @ binarize(W).T + (x * beta).sum(-1, keepdims=True)
cmp("kernel form vs FBI-Linear", y_kernel_form, L.fbi_linear_forward(x, W, alpha, beta)[0], 1e-12)
