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
# One LLaMA decoder block with every linear binarized (FBI-Linear), written as named forward steps.
# Then the backward: one line (or a few) per step, in reverse order, each gradient compared with
# torch autograd on the same numbers. This is exactly what `tinyfbi/model.py` does for every layer.

# %% tags=["parameters"]
import os

FAST = os.environ.get("TINYFBI_FAST") == "1"
SEED = 0
B, T, C, H, I = 2, 6, 16, 4, 24   # batch, time, width, heads, SwiGLU width

# %%
import numpy as np
import torch
import torch.nn.functional as F

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

# %% [markdown]
# ## Backward, one step at a time, in reverse

# %%
dx2 = dout.copy()                                          # residual 2 passes the gradient through
dm = dout @ W["down"]                                      # FBI-Linear: dx = dy @ W~
dWd = dout.reshape(-1, C).T @ m.reshape(-1, I)             # dW~ = dy^T x  (out, in)
cmp("down", p["down.a"] * dWd, t["down"].grad, 1e-9)    # STE: dW = alpha * dW~
cmp("down.a", np.sum(dWd * binarize(p["down"]), 0, keepdims=True), t["down.a"].grad, 1e-9)  # sum over rows
cmp("down.b", np.sum(dWd, 0, keepdims=True), t["down.b"].grad, 1e-9)
dg = dm * u * sig * (1 + g * (1 - sig))                    # d silu(g) = sig (1 + g (1 - sig))
du = dm * g * sig
dWg = dg.reshape(-1, I).T @ h2.reshape(-1, C)
cmp("gate", p["gate.a"] * dWg, t["gate"].grad, 1e-9)
dh2 = dg @ W["gate"] + du @ W["up"]                        # two consumers: gradients add
dln2 = np.sum(dh2 * xhat2, axis=(0, 1))
cmp("ln2", dln2, t["ln2"].grad, 1e-9)
dxhat2 = dh2 * p["ln2"]
dx2 += rstd2 * (dxhat2 - xhat2 * np.mean(dxhat2 * xhat2, -1, keepdims=True))   # RMSNorm backward
datt = dx2 @ W["o"]
dWo = dx2.reshape(-1, C).T @ att.reshape(-1, C)
cmp("o", p["o.a"] * dWo, t["o"].grad, 1e-9)
datt = datt.reshape(B, T, H, D).transpose(0, 2, 1, 3)     # split heads again
dP = datt @ v.swapaxes(-1, -2)
dv = P.swapaxes(-1, -2) @ datt
ds = P * (dP - np.sum(dP * P, -1, keepdims=True)) / np.sqrt(D)   # softmax backward, then the 1/sqrt(D)
dqr, dkr = ds @ kr, ds.swapaxes(-1, -2) @ qr
dq = dqr * cos + L.rotate_half_transpose(dqr * sin)        # RoPE is a rotation: its adjoint
dk = dkr * cos + L.rotate_half_transpose(dkr * sin)
merge = lambda z: z.transpose(0, 2, 1, 3).reshape(B, T, C)  # noqa: E731
dWq = merge(dq).reshape(-1, C).T @ h1.reshape(-1, C)
cmp("q", p["q.a"] * dWq, t["q"].grad, 1e-9)
cmp("q.a", np.sum(dWq * binarize(p["q"]), 0, keepdims=True), t["q.a"].grad, 1e-9)
dh1 = merge(dq) @ W["q"] + merge(dk) @ W["k"] + merge(dv) @ W["v"]
cmp("ln1", np.sum(dh1 * xhat, axis=(0, 1)), t["ln1"].grad, 1e-9)
dxhat = dh1 * p["ln1"]
dx = dx2 + rstd * (dxhat - xhat * np.mean(dxhat * xhat, -1, keepdims=True))
cmp("x", dx, tx.grad, 1e-9)

# %% [markdown]
# ## The library does the same
# `tinyfbi.core.layers` packages each step above as a forward/backward pair; `Model.backward` chains them.

# %%
y, cache = L.fbi_linear_forward(m, p["down"], p["down.a"], p["down.b"])
dm_lib, dW_lib, da_lib, db_lib = L.fbi_linear_backward(dout, cache)
cmp("lib dm", dm_lib, dm, 1e-9)
cmp("lib down", dW_lib, t["down"].grad, 1e-9)
att_lib, att_cache = L.attention_forward(qr, kr, v)
dq_lib, dk_lib, dv_lib = L.attention_backward(datt, att_cache)
cmp("lib dq", dq_lib, dqr, 1e-9)
cmp("lib dv", dv_lib, dv, 1e-9)
