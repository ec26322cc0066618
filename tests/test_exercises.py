"""The exercises that close notebooks 01-03, solved, each solution checked against an independent oracle.

A reader who wants to work them should not read on.
"""
import math

import numpy as np
import pytest

from tinyfbi.core import reconstruction as R


def test_01_floor_of_laplace_and_uniform_weights():
    """01: the best alpha for beta = 0 is E|w|, so the floor is sqrt(1 - (E|w|)^2 / E w^2).
    Laplace(b): E|w| = b, E w^2 = 2 b^2 -> sqrt(1/2). Uniform[-a, a]: E|w| = a/2, E w^2 = a^2/3 -> 1/2.
    Oracle: a 4M-entry sample binarized with one scale (standard error of the ratio < 1e-3)."""
    rng = np.random.default_rng(0)
    cases = {"laplace": (rng.laplace(0.0, 0.7, (2048, 2048)), math.sqrt(0.5)),
             "uniform": (rng.uniform(-1.3, 1.3, (2048, 2048)), 0.5)}
    for name, (w, answer) in cases.items():
        measured = R.error_table(w)["tensor", "alpha"]
        assert measured == pytest.approx(answer, abs=2e-3), name


def test_02_grouped_query_attention_backward():
    """02: with each k/v head repeated G times in the forward, dk and dv of a shared head are the sums
    of the per-query-head gradients over its group (a copy's backward adds). Oracle: torch autograd
    through scaled_dot_product_attention on the repeated heads, float64 (1e-12)."""
    torch = pytest.importorskip("torch")
    from tinyfbi.core import layers as L
    rng = np.random.default_rng(0)
    B, H, Hkv, T, D = 2, 4, 2, 5, 8
    G = H // Hkv
    q, k, v = rng.standard_normal((B, H, T, D)), rng.standard_normal((B, Hkv, T, D)), rng.standard_normal((B, Hkv, T, D))
    dout = rng.standard_normal((B, H, T, D))
    # the answer: attention with the heads repeated, then each group's gradients summed
    _, cache = L.attention_forward(q, np.repeat(k, G, axis=1), np.repeat(v, G, axis=1))
    dq, dk_rep, dv_rep = L.attention_backward(dout, cache)
    dk, dv = dk_rep.reshape(B, Hkv, G, T, D).sum(2), dv_rep.reshape(B, Hkv, G, T, D).sum(2)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk.repeat_interleave(G, 1), tv.repeat_interleave(G, 1),
                                                           is_causal=True)
    out.backward(torch.from_numpy(dout))
    for ours, ref in ((dq, tq.grad), (dk, tk.grad), (dv, tv.grad)):
        np.testing.assert_allclose(ours, ref.numpy(), atol=1e-12)


def test_03_distillation_gradient_at_a_temperature():
    """03: with q = softmax(z / tau) and p = softmax(t / tau), L = -(1/N) sum p log q gives
    dL/dz = (q - p) / (tau N): the chain rule adds 1/tau to Step 1's (q - p)/N.
    Oracle: torch autograd of the same loss, float64 (1e-14)."""
    torch = pytest.importorskip("torch")
    from tinyfbi.core import layers as L
    rng = np.random.default_rng(0)
    tau, N, V = 2.0, 6, 11
    z, t = rng.standard_normal((N, V)), 3 * rng.standard_normal((N, V))
    answer = (L.softmax(z / tau) - L.softmax(t / tau)) / (tau * N)
    tz = torch.tensor(z, requires_grad=True)
    loss = -(torch.softmax(torch.from_numpy(t) / tau, -1) * torch.log_softmax(tz / tau, -1)).sum() / N
    loss.backward()
    np.testing.assert_allclose(answer, tz.grad.numpy(), atol=1e-14)
