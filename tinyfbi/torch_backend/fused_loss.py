"""The student's lm_head and the distillation loss fused over chunks of tokens (FBI-LLM section 3.2).

The unfused path (learner.distill_loss) is the reference every result here is tested against:

    loss = distill_loss(kind, h_s @ w_s.T, y, softmax(h_t @ w_t.T), lam)    # (N, V) logits, all at once

ad = -sum_v p_t log p_s (soft cross-entropy against the teacher's softmax, temperature 1),
ce = -log p_s[y], mix = lam * ce + (1 - lam) * ad, each a mean over the N = B*T positions.

Why: unfused, one step holds several float32 (N, V) tensors at once: the teacher's logits and its
probabilities, the student's logits (bf16 under autocast, then their float32 copy), log-softmax, and
in the backward its gradient and the logits' gradient. At B x T = 8 x 2048 and V = 32000 each is
8 * 2048 * 32000 * 4 B = 2.1 GB. Fused, the same work runs on `chunk` tokens at a time, so only a
few (chunk, V) tensors live at once (chunk 1024: 131 MB each), plus the gradients the step keeps
anyway: dL/dh_s (N, C) and dL/dW_s (V, C). Measured on a CPU for a 130m head (C 768) at 8 x 2048,
loss 'ad' in float32 (`python -m tinyfbi.bench.loss_memory`): peak 10.49 GB unfused, 0.67 GB fused.

The design is Liger Kernel's fused linear cross-entropy (linkedin/Liger-Kernel, arXiv 2410.10989;
its fused_linear_jsd does the same with a teacher's head). Each chunk's gradient is formed in the
forward pass, while its logits are at hand:
    dlogits = (w_ce * (softmax_s - onehot(y)) + w_ad * (softmax_s * sum(p_t) - p_t)) / N
    dL/dh_s[chunk] = dlogits @ W_s (stored),   dL/dW_s += dlogits.T @ h_s[chunk]
and the backward only scales the two by the incoming gradient. Chosen over recomputing the logits
in the backward (Apple's Cut Cross-Entropy, arXiv 2411.09009, whose kernel never writes them to
memory at all): the teacher's head runs once per step, not twice, and the code is one loop.

Numerics follow the unfused path: the heads' matmuls run in the autocast dtype when autocast is on
(as nn.Linear's would: call this inside the same `autocast` the model's forward runs in), their
logits are widened to float32 for softmax and loss, and dlogits goes back to the matmul dtype for
the two gradient matmuls, as autograd does through `.float()` and the autocast linear. In bf16 two
roundings move: dlogits is rounded before the incoming gradient's scale (1 / grad_accum), not after,
and each chunk's dL/dW_s is rounded to bf16 before the float32 sum, not once at the end. Losses
agree to float32 rounding; bf16 gradients within a few bf16 steps (tests/test_fused_loss.py).

    h_s, h_t = model.hidden(x), teacher.hidden(x)                       # (B, T, C), (B, T, C_t)
    loss = fused_distill_loss("ad", h_s, model.lm_head.weight, y, h_t=h_t, w_t=teacher.lm_head.weight)
"""
from __future__ import annotations

import torch

KINDS = ("ad", "ce", "mix")
LOSS_CHUNK = 1024       # tokens per chunk: (1024, 32000) float32 is 131 MB, large enough for full-speed GEMMs


def matmul_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    """The dtype F.linear(a, b) would compute in here: the autocast dtype if autocast is on."""
    device = a.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(a.dtype, b.dtype)


class FusedHeadDistillLoss(torch.autograd.Function):
    """Mean loss over N tokens, chunk by chunk; gradients formed in the forward (Liger's design)."""

    @staticmethod
    def forward(ctx, h_s, w_s, y, h_t, w_t, probs, kind, lam, chunk, dtype_s, dtype_t):
        # h_s (N, C), w_s (V, C), y (N,) long, h_t (N, C_t) and w_t (V, C_t) or probs (N, V): no grad
        N = h_s.shape[0]
        w_ce = lam if kind == "mix" else float(kind == "ce")       # weight of the label loss
        w_ad = 1.0 - w_ce                                         # weight of the teacher loss
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ws = w_s.to(dtype_s)                                      # (V, C) as autocast casts it
        wt = w_t.to(dtype_t) if w_t is not None else None         # (V, C_t)
        grad_h = torch.empty_like(h_s) if need_h else None        # (N, C)
        grad_w = torch.zeros(w_s.shape, dtype=torch.float32, device=w_s.device) if need_w else None  # (V, C)
        ce_sum = torch.zeros((), dtype=torch.float32, device=h_s.device)
        ad_sum = torch.zeros((), dtype=torch.float32, device=h_s.device)
        with torch.autocast(h_s.device.type, enabled=False):     # every dtype below is chosen explicitly
            for s in range(0, N, chunk):
                e = min(s + chunk, N)
                hs = h_s[s:e].to(dtype_s)                                            # (n, C)
                logp = torch.log_softmax((hs @ ws.T).float(), dim=-1)                # (n, V) float32
                dz = logp.exp()                                                      # (n, V) softmax_s
                if w_ad:
                    if probs is not None:
                        pt = probs[s:e].float()                                      # (n, V)
                    else:
                        pt = torch.softmax((h_t[s:e].to(dtype_t) @ wt.T).float(), dim=-1)   # (n, V)
                    ad_sum -= (pt * logp).sum()
                    # d/dz of -sum p_t log_softmax(z) is softmax * sum(p_t) - p_t (sum(p_t) = 1 up to rounding);
                    # with the label term's softmax beside it: softmax * (w_ad sum(p_t) + w_ce) - w_ad p_t
                    dz.mul_(pt.sum(-1, keepdim=True) * w_ad + w_ce).sub_(pt, alpha=w_ad)
                    del pt
                if w_ce:
                    rows = torch.arange(e - s, device=y.device)
                    ce_sum -= logp[rows, y[s:e]].sum()
                    dz[rows, y[s:e]] -= w_ce                                         # softmax - onehot(y)
                del logp
                if need_h or need_w:
                    dz = dz.div_(N).to(dtype_s)                                      # (n, V) dL/dlogits
                    if need_h:
                        grad_h[s:e] = (dz @ ws).to(h_s.dtype)                        # (n, C)
                    if need_w:
                        grad_w += (dz.T @ hs).float()                                # (V, C)
                del dz
        ctx.grads = (grad_h, grad_w)        # intermediates, not inputs or outputs: kept on ctx, as torch's docs allow
        ctx.w_dtype = w_s.dtype
        return (w_ce * ce_sum + w_ad * ad_sum) / N                              # () float32 mean

    @staticmethod
    def backward(ctx, dloss):
        # handed over and scaled in place (dloss is 1 / grad_accum in the learner): no second (N, C) or
        # (V, C) copy, here or in AccumulateGrad; so the graph is good for one backward, said loudly
        if ctx.grads is None:
            raise RuntimeError("fused_distill_loss: the gradients were handed over already (one backward per graph)")
        (grad_h, grad_w), ctx.grads = ctx.grads, None
        dh = grad_h.mul_(dloss.to(grad_h.dtype)) if grad_h is not None else None
        dw = grad_w.mul_(dloss).to(ctx.w_dtype) if grad_w is not None else None
        return dh, dw, None, None, None, None, None, None, None, None, None


def fused_distill_loss(kind, h_s, w_s, y=None, h_t=None, w_t=None, probs=None, lam=0.5, chunk=LOSS_CHUNK):
    """distill_loss(kind, h_s @ w_s.T, y, softmax(h_t @ w_t.T), lam) without any (N, V) tensor.

    h_s (..., C): the student's final-norm output; w_s (V, C): its lm_head weight. The teacher is
    its final-norm output h_t (..., C_t) with its lm_head weight w_t (V, C_t), or its probabilities
    probs (..., V) when they are already at hand (the top-K cache); neither gets a gradient. y (...):
    next-token labels, needed by ce and mix. -> scalar float32 mean over the tokens."""
    if kind not in KINDS:
        raise ValueError(f"loss kind {kind!r}: expected one of {KINDS}")
    if kind != "ad" and y is None:
        raise ValueError(f"loss {kind!r} needs the labels y")
    if kind != "ce" and (probs is None) == (h_t is None or w_t is None):
        raise ValueError(f"loss {kind!r} needs the teacher: h_t and w_t, or probs")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 token, got {chunk}")
    if not torch.is_grad_enabled():  # no graph: skip the gradient matmuls
        h_s, w_s = h_s.detach(), w_s.detach()
    h_s = h_s.reshape(-1, h_s.shape[-1])                                             # (N, C)
    y = y.reshape(-1) if y is not None else None                                     # (N,)
    teacher = kind != "ce"
    h_t = h_t.reshape(-1, h_t.shape[-1]).detach() if teacher and h_t is not None else None   # (N, C_t)
    w_t = w_t.detach() if teacher and h_t is not None else None
    probs = probs.reshape(-1, probs.shape[-1]).detach() if teacher and probs is not None else None   # (N, V)
    dtype_t = matmul_dtype(h_t, w_t) if h_t is not None else None
    return FusedHeadDistillLoss.apply(h_s, w_s, y, h_t, w_t, probs, kind, float(lam), int(chunk),
                                      matmul_dtype(h_s, w_s), dtype_t)
