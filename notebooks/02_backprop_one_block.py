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
# # 02 · Backprop by hand through one FBI transformer block
#
# [FBI-LLM](https://arxiv.org/abs/2407.07093), **section 3.1**, keeps LLaMA's decoder block (RMSNorm,
# rotary attention, SwiGLU MLP, residuals) and replaces each of its seven linear layers (q, k, v, o,
# gate, up, down) by an FBI-Linear $\tilde W = \alpha\,\mathrm{sign}(W) + \beta$ (notebook 01). Embeddings, norms and
# the output head stay in full precision. Training needs the gradient of every parameter, with the
# straight-through estimator for sign (section 3).
#
# Here is one such block written as named forward steps, then its backward: a line or a few per step,
# in reverse order, and **every** parameter's gradient (7 latent weights, 7 $\alpha$, 7 $\beta$, both norm
# weights) and the input's compared with torch autograd on the same numbers. The same steps, packaged
# as forward/backward pairs, are `tinyfbi/core/layers.py`; `Model.backward` in `tinyfbi/core/model.py`
# chains them over a whole model.

# %% tags=["parameters"]
import os

FAST = os.environ.get("TINYFBI_FAST") == "1"
SEED = 0
B, T, C, H, I = 2, 6, 16, 4, 24   # batch, time, width, heads, SwiGLU width

# %%
import numpy as np
import torch
import torch.nn.functional as F

from tinyfbi import Model
from tinyfbi.core import layers as L
from tinyfbi.core.binarize import binarize
from tinyfbi.core.compare import cmp
from tinyfbi.torch_backend.model import SignSTE, rotate_half

rng = np.random.default_rng(SEED)
D = C // H
p = {"ln1": 1 + 0.1 * rng.standard_normal(C), "ln2": 1 + 0.1 * rng.standard_normal(C)}
for name, (o, i) in {"q": (C, C), "k": (C, C), "v": (C, C), "o": (C, C), "gate": (I, C), "up": (I, C),
                     "down": (C, I)}.items():
    p[name] = 0.2 * rng.standard_normal((o, i))
    a, b = L.init_scales(p[name])
    p[name + ".a"], p[name + ".b"] = a * (1 + 0.1 * rng.standard_normal(a.shape)), b   # (1, in) each
x = rng.standard_normal((B, T, C))
cos, sin = L.rope_cos_sin(np.arange(T), D, 10000.0, np.float64)
W = {n: p[n + ".a"] * binarize(p[n]) + p[n + ".b"] for n in ("q", "k", "v", "o", "gate", "up", "down")}

# %% [markdown]
# ## Forward, step by step (float64)
# *Paper: [section 3.1](https://arxiv.org/abs/2407.07093): LLaMA's block with every linear an FBI-Linear.*
# Each linear uses its $\tilde W$ (`W[n]` below), built once from the latent weight and its column
# scales. Float64 keeps rounding far below the tolerances, so a wrong formula cannot hide.

# %%
ms = np.mean(x * x, -1, keepdims=True)                    # (B, T, 1) mean square
rstd = 1 / np.sqrt(ms + 1e-5)
xhat = x * rstd
h1 = xhat * p["ln1"]                                       # RMSNorm
q = (h1 @ W["q"].T).reshape(B, T, H, D).transpose(0, 2, 1, 3)   # (B, H, T, D) FBI-Linear + split heads
k = (h1 @ W["k"].T).reshape(B, T, H, D).transpose(0, 2, 1, 3)
v = (h1 @ W["v"].T).reshape(B, T, H, D).transpose(0, 2, 1, 3)
qr = q * cos + L.rotate_half(q) * sin                      # RoPE
kr = k * cos + L.rotate_half(k) * sin
s = qr @ kr.swapaxes(-1, -2) / np.sqrt(D) + L.causal_bias(T, T, np.float64)   # (B, H, T, T)
P = L.softmax(s)
att = (P @ v).transpose(0, 2, 1, 3).reshape(B, T, C)       # merge heads
x2 = x + att @ W["o"].T                                    # residual 1
ms2 = np.mean(x2 * x2, -1, keepdims=True)
rstd2 = 1 / np.sqrt(ms2 + 1e-5)
xhat2 = x2 * rstd2
h2 = xhat2 * p["ln2"]
g, u = h2 @ W["gate"].T, h2 @ W["up"].T                    # (B, T, I)
sig = 1 / (1 + np.exp(-g))
m = g * sig * u                                            # SwiGLU
out = x2 + m @ W["down"].T                                 # residual 2
dout = rng.standard_normal(out.shape)                      # loss = sum(out * dout)

# %% [markdown]
# ## The same block in torch (the oracle)
# Autograd on the same float64 numbers, with `SignSTE` (sign forward, identity backward) for the
# straight-through estimator. Its gradients are what every hand-written line below is checked against.

# %%
t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
tx = torch.tensor(x, requires_grad=True)
tcos, tsin = torch.from_numpy(cos), torch.from_numpy(sin)


def tW(n):
    return t[n + ".a"] * SignSTE.apply(t[n]) + t[n + ".b"]


def rms(z, w):
    return z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-5) * w


th1 = rms(tx, t["ln1"])
tq, tk, tv = ((th1 @ tW(n).T).view(B, T, H, D).transpose(1, 2) for n in "qkv")
tq, tk = tq * tcos + rotate_half(tq) * tsin, tk * tcos + rotate_half(tk) * tsin
tatt = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True).transpose(1, 2).reshape(B, T, C)
tx2 = tx + tatt @ tW("o").T
th2 = rms(tx2, t["ln2"])
tout = tx2 + (F.silu(th2 @ tW("gate").T) * (th2 @ tW("up").T)) @ tW("down").T
tout.backward(torch.from_numpy(dout))
cmp("out", out, tout, 1e-9)
print("the hand-written forward and torch agree on the block's output")

# %% [markdown]
# ## Backward, one step at a time, in reverse
# The loss is $\sum \text{out}\odot\text{dout}$, so the gradient arriving at the block's output is `dout`.
# Every FBI-Linear $y = x\tilde W^T$ gives $\partial L/\partial x = \partial L/\partial y\;\tilde W$ and
# $\partial L/\partial\tilde W = (\partial L/\partial y)^T x$, and then the straight-through estimator of
# [section 3](https://arxiv.org/abs/2407.07093) (notebook 01, Step 2) turns $\partial L/\partial\tilde W$ into
# the three parameter gradients. `ste` writes those three lines once; each call is compared with torch.

# %%
checked = []                                               # the names whose gradient matched torch


def check(name, ours):
    cmp(name, ours, t[name].grad, 1e-9)                    # float64 on O(1) values: 1e-9 is loose
    checked.append(name)


def ste(name, dW_tilde):
    """dW~ (out, in) of linear `name` -> its latent weight, alpha, beta gradients, each checked."""
    check(name, p[name + ".a"] * dW_tilde)                                       # dW = alpha * dW~
    check(name + ".a", np.sum(dW_tilde * binarize(p[name]), 0, keepdims=True))   # (1, in): sum over rows
    check(name + ".b", np.sum(dW_tilde, 0, keepdims=True))                       # (1, in)


flat = lambda z: z.reshape(-1, z.shape[-1])                # noqa: E731  (B, T, n) -> (B*T, n)

# residual 2: out = x2 + m @ W~down^T, the gradient reaches x2 unchanged and the down projection
dx2 = dout.copy()
dm = dout @ W["down"]                                      # (B, T, I)
ste("down", flat(dout).T @ flat(m))                        # (C, I)

# SwiGLU: m = silu(g) * u, with d silu(g)/dg = sig (1 + g (1 - sig))
dg = dm * u * sig * (1 + g * (1 - sig))
du = dm * g * sig
ste("gate", flat(dg).T @ flat(h2))                         # (I, C)
ste("up", flat(du).T @ flat(h2))

# both MLP inputs read h2: their gradients add
dh2 = dg @ W["gate"] + du @ W["up"]                        # (B, T, C)

# RMSNorm 2: h2 = xhat2 * ln2, xhat2 = x2 * rstd2
check("ln2", np.sum(dh2 * xhat2, axis=(0, 1)))
dxhat2 = dh2 * p["ln2"]
dx2 += rstd2 * (dxhat2 - xhat2 * np.mean(dxhat2 * xhat2, -1, keepdims=True))   # adds to the residual's

# residual 1: x2 = x + att @ W~o^T
datt = dx2 @ W["o"]                                        # (B, T, C)
ste("o", flat(dx2).T @ flat(att))

# attention: split heads, P = softmax(s), s = qr kr^T / sqrt(D) + causal mask
datt = datt.reshape(B, T, H, D).transpose(0, 2, 1, 3)     # (B, H, T, D)
dP = datt @ v.swapaxes(-1, -2)                             # (B, H, T, T)
dv = P.swapaxes(-1, -2) @ datt
ds = P * (dP - np.sum(dP * P, -1, keepdims=True)) / np.sqrt(D)   # softmax backward, then the 1/sqrt(D)
dqr, dkr = ds @ kr, ds.swapaxes(-1, -2) @ qr

# RoPE is a rotation of each pair of dimensions: its backward is the transposed rotation
dq = dqr * cos + L.rotate_half_transpose(dqr * sin)
dk = dkr * cos + L.rotate_half_transpose(dkr * sin)
merge = lambda z: z.transpose(0, 2, 1, 3).reshape(B, T, C)  # noqa: E731  undo the head split
ste("q", flat(merge(dq)).T @ flat(h1))                     # (C, C)
ste("k", flat(merge(dk)).T @ flat(h1))
ste("v", flat(merge(dv)).T @ flat(h1))

# q, k and v all read h1: three gradients add
dh1 = merge(dq) @ W["q"] + merge(dk) @ W["k"] + merge(dv) @ W["v"]

# RMSNorm 1, then residual 1 carries dx2 to the input
check("ln1", np.sum(dh1 * xhat, axis=(0, 1)))
dxhat = dh1 * p["ln1"]
dx = dx2 + rstd * (dxhat - xhat * np.mean(dxhat * xhat, -1, keepdims=True))
cmp("x (the block's input)", dx, tx.grad, 1e-9)

assert sorted(checked) == sorted(t), set(t) - set(checked)   # every parameter of the block, none left out
print(f"{len(checked)} parameter gradients and the input's match torch: 7 latent weights, 7 alpha, 7 beta, 2 norms")

# %% [markdown]
# ## The library does the same
# `tinyfbi.core.layers` packages each step above as a forward/backward pair; `Model.backward` chains
# them, block by block, in the same reverse order. Compare the library's pairs with the lines above.

# %%
import inspect
from pathlib import Path

_, cache = L.fbi_linear_forward(m, p["down"], p["down.a"], p["down.b"])
dm_lib, dW_lib, da_lib, db_lib = L.fbi_linear_backward(dout, cache)
cmp("fbi_linear_backward dx", dm_lib, dm, 1e-9)
cmp("fbi_linear_backward dW", dW_lib, t["down"].grad, 1e-9)
cmp("fbi_linear_backward dalpha", da_lib, t["down.a"].grad, 1e-9)
cmp("fbi_linear_backward dbeta", db_lib, t["down.b"].grad, 1e-9)
_, sw_cache = L.swiglu_forward(g, u)
dg_lib, du_lib = L.swiglu_backward(dm, sw_cache)           # (B, T, I) each
cmp("swiglu_backward dgate", dg_lib, dg, 1e-9)
cmp("swiglu_backward dup", du_lib, du, 1e-9)
_, n2_cache = L.rmsnorm_forward(x2, p["ln2"], 1e-5)
dx2_lib, dln2_lib = L.rmsnorm_backward(dh2, n2_cache)
cmp("rmsnorm_backward dweight", dln2_lib, t["ln2"].grad, 1e-9)
cmp("rmsnorm_backward dx", dx2_lib, dx2 - dout, 1e-9)     # dx2 also holds the residual's dout
_, att_cache = L.attention_forward(qr, kr, v)
dq_lib, dk_lib, dv_lib = L.attention_backward(datt, att_cache)
cmp("attention_backward dq", dq_lib, dqr, 1e-9)
cmp("attention_backward dk", dk_lib, dkr, 1e-9)
cmp("attention_backward dv", dv_lib, dv, 1e-9)
for obj in (L, Model):
    source = Path(inspect.getsourcefile(obj))
    print(obj.__name__, "is in", source.relative_to(source.parents[2]))

# %% [markdown]
# ## Summary
# * One FBI decoder block is LLaMA's block with seven FBI-Linears (section 3.1); its forward is the
#   named steps above, and torch computes the same output to 1e-9.
# * The backward runs the forward in reverse. Each FBI-Linear contributes $\partial L/\partial x = \partial L/\partial y\,\tilde W$
#   and, through the straight-through estimator, $\partial L/\partial W = \alpha\odot\partial L/\partial\tilde W$ and the row
#   sums for $\alpha$ and $\beta$. Where one value feeds several consumers (h1 feeds q, k, v; h2 feeds gate
#   and up; each residual feeds two paths), the gradients add.
# * All 23 parameter gradients (q, k, v, o, gate, up, down, each with $\alpha$ and $\beta$; both norms) and
#   the input's agree with torch autograd; the library's forward/backward pairs agree with the lines above.
#
# ## Exercise
# LLaMA-2 70B uses **grouped-query attention**: fewer key/value heads than query heads, each k/v head
# shared by a group of $G$ query heads (tinyfbi's `num_key_value_heads`). The forward is the same
# attention with each k and v head repeated $G$ times. Derive $\partial L/\partial k$ and $\partial L/\partial v$ for
# the shared heads from the per-query-head gradients above, and check them against torch autograd
# for $H = 4$ query heads and 2 key/value heads. (`tests/test_exercises.py` holds the answer and checks it.)
