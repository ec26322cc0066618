"""Every op of the FBI transformer as a forward/backward pair, NumPy only (no autograd).

`f_forward(...) -> (out, cache)` and `f_backward(dout, cache) -> grads` sit side by side. Works in
float32 (training) and float64 (gradient checks): outputs keep the input dtype. Shapes: B batch,
T time, C model width, H heads, D head_dim, V vocab.
FBI-Linear follows FBI-LLM (arXiv 2407.07093, section 3.1) and the authors' released code.
"""
import math

import numpy as np

from .binarize import binarize

# ----------------------------------------------------------------------------- embedding


def embedding_forward(weight, tokens):
    # weight (V, C), tokens (B, T) int -> (B, T, C)
    return weight[tokens], (tokens, weight.shape)


def embedding_backward(dout, cache):
    tokens, shape = cache
    dweight = np.zeros(shape, dtype=dout.dtype)
    # rows hit by several tokens accumulate: add.at is unbuffered scatter-add
    np.add.at(dweight, tokens.reshape(-1), dout.reshape(-1, shape[1]))
    return dweight


# ----------------------------------------------------------------------------- RMSNorm


def rmsnorm_forward(x, weight, eps):
    # x (..., C), weight (C,): y = x / rms(x) * weight, rms over the last axis
    rstd = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = x * rstd
    return (xhat * weight).astype(x.dtype, copy=False), (xhat, rstd, weight)


def rmsnorm_backward(dout, cache):
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    dweight = (dout * xhat).reshape(-1, C).sum(axis=0)                 # (C,)
    dx = dout * weight                                                 # dxhat
    # d/dx of x*rstd: rstd * (dxhat - xhat * mean(dxhat * xhat)), in place in dxhat
    dx -= xhat * (np.sum(dx * xhat, axis=-1, keepdims=True) / C)
    dx *= rstd
    return dx.astype(dout.dtype, copy=False), dweight.astype(dout.dtype, copy=False)


# ----------------------------------------------------------------------------- RoPE


def rope_cos_sin(positions, head_dim, theta, dtype=np.float32):
    # positions (T,) -> cos, sin (T, D), HF LLaMA layout: frequencies repeated over both halves
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))  # (D/2,)
    angles = np.outer(np.asarray(positions, dtype=np.float64), inv_freq)                # (T, D/2)
    angles = np.concatenate([angles, angles], axis=-1)                                   # (T, D)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rotate_half(x):
    # (x1, x2) -> (-x2, x1) over the last axis (HF convention, halves not interleaved pairs)
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rotate_half_transpose(g):
    # the adjoint of rotate_half: (g1, g2) -> (g2, -g1)
    half = g.shape[-1] // 2
    return np.concatenate([g[..., half:], -g[..., :half]], axis=-1)


def rope_forward(x, cos, sin):
    # x (B, H, T, D), cos/sin (T, D): a rotation per position and frequency
    # = x * cos + rotate_half(x) * sin, written half by half so no rotated copy is made
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half] -= x[..., half:] * sin[:, :half]
    out[..., half:] += x[..., :half] * sin[:, half:]
    return out, (cos, sin)


def rope_backward(dout, cache):
    # = dout * cos + rotate_half_transpose(dout * sin), half by half
    cos, sin = cache
    half = dout.shape[-1] // 2
    dx = dout * cos
    dx[..., :half] += dout[..., half:] * sin[:, half:]
    dx[..., half:] -= dout[..., :half] * sin[:, :half]
    return dx


# ----------------------------------------------------------------------------- attention


def causal_bias(Tq, Tk, dtype):
    # (Tq, Tk): 0 where query i (absolute position Tk - Tq + i) may see key j, -inf after it
    return np.triu(np.full((Tq, Tk), -np.inf, dtype=dtype), k=Tk - Tq + 1)


def softmax(x, axis=-1):
    e = x - np.max(x, axis=axis, keepdims=True)
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def log_softmax(x, axis=-1):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    shifted -= np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return shifted


# query rows per block: a block only scores the keys it can see. Small on purpose: each per-head
# GEMM (16 x Tk x D) stays under OpenBLAS's threading threshold (m*n*k <= 262144 at Tk = 256,
# D = 64), so it runs on the calling thread instead of waking and joining a worker per head;
# on a busy 2-core machine that wait made 64-row blocks 3-5x slower per training step.
ATTENTION_CHUNK = 16


def attention_forward(q, k, v):
    """Causal softmax(q k^T / sqrt(D)) v, block by block over the queries.

    q (B, H, T, D); k, v (B, Hkv, Tk, D), Tk >= T (the last T positions are the queries), H a
    multiple of Hkv (grouped-query attention: kv head j serves query heads j*G .. j*G+G-1).
    Query block [s, e) only needs keys [0, Tk - T + e): skipping the rest halves the work.
    """
    B, H, T, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    # a Python float scale: a np.float64 one would promote float32 q, scores and probs to float64
    G, offset, scale = H // Hkv, Tk - T, 1.0 / math.sqrt(D)
    qg = q.reshape(B, Hkv, G, T, D)                                    # queries grouped by kv head
    out = np.empty_like(qg)
    probs = []
    for s in range(0, T, ATTENTION_CHUNK):
        e, kend = min(T, s + ATTENTION_CHUNK), offset + min(T, s + ATTENTION_CHUNK)
        qc = qg[:, :, :, s:e].reshape(B, Hkv, G * (e - s), D) * scale   # (B, Hkv, G*c, D), prescaled
        scores = (qc @ k[:, :, :kend].swapaxes(-1, -2)).reshape(B, Hkv, G, e - s, kend)
        scores += causal_bias(e - s, kend, scores.dtype)
        p = softmax(scores).reshape(B, Hkv, G * (e - s), kend)          # (B, Hkv, G*c, kend)
        out[:, :, :, s:e] = (p @ v[:, :, :kend]).reshape(B, Hkv, G, e - s, D)
        probs.append(p)
    return out.reshape(B, H, T, D), (qg, k, v, probs)


def attention_backward(dout, cache):
    qg, k, v, probs = cache
    B, Hkv, G, T, D = qg.shape
    Tk = k.shape[2]
    offset, scale = Tk - T, 1.0 / math.sqrt(D)
    dog = dout.reshape(B, Hkv, G, T, D)
    dq, dk, dv = np.empty_like(qg), np.zeros_like(k), np.zeros_like(v)
    for i, s in enumerate(range(0, T, ATTENTION_CHUNK)):
        e, p = min(T, s + ATTENTION_CHUNK), probs[i]
        kend = offset + e
        do = dog[:, :, :, s:e].reshape(B, Hkv, G * (e - s), D)         # (B, Hkv, G*c, D)
        dv[:, :, :kend] += p.swapaxes(-1, -2) @ do                     # (B, Hkv, kend, D)
        dp = do @ v[:, :, :kend].swapaxes(-1, -2)                      # (B, Hkv, G*c, kend)
        # softmax backward: ds = p * (dp - sum(dp * p)); masked entries have p = 0 and stay 0
        dp -= np.sum(dp * p, axis=-1, keepdims=True)
        dp *= p
        dp *= scale
        dq[:, :, :, s:e] = (dp @ k[:, :, :kend]).reshape(B, Hkv, G, e - s, D)
        qc = qg[:, :, :, s:e].reshape(B, Hkv, G * (e - s), D)
        dk[:, :, :kend] += dp.swapaxes(-1, -2) @ qc
    return dq.reshape(B, Hkv * G, T, D), dk, dv


# ----------------------------------------------------------------------------- linear layers


def linear_forward(x, weight):
    # x (..., in), weight (out, in) -> (..., out); no bias, as in LLaMA. One 2-D GEMM over all tokens.
    out = x.reshape(-1, x.shape[-1]) @ weight.T
    return out.reshape(*x.shape[:-1], weight.shape[0]), (x, weight)


def linear_backward(dout, cache):
    x, weight = cache
    dout2 = dout.reshape(-1, dout.shape[-1])                           # (N, out)
    dx = (dout2 @ weight).reshape(x.shape)
    dweight = dout2.T @ x.reshape(-1, x.shape[-1])                     # (out, in)
    return dx, dweight


def effective_weight(weight, wscale, wbias, scaling="column", zero=1):
    """W~ = wscale * sign(W) + wbias: the weight an FBI-Linear actually multiplies by.

    `column` (FBI): wscale/wbias (1, in) broadcast over rows. `row`: (out, 1). `none`: sign(W)
    alone. `ternary`: BitNet b1.58 absmean, round(W / mean|W|) clipped to {-1, 0, 1} times mean|W|.
    The last two take wscale = wbias = None. `zero` is sign(0) (core.binarize).
    """
    if scaling == "ternary":
        gamma = np.mean(np.abs(weight)) + 1e-8
        return (np.clip(np.rint(weight / gamma), -1, 1) * gamma).astype(weight.dtype)
    if scaling == "none":
        return binarize(weight, zero)
    return wscale * binarize(weight, zero) + wbias


def effective_weight_backward(dw_tilde, weight, wscale, scaling="column", clip_ste=False, zero=1, signs=None):
    """dL/dW~ (out, in) -> (dW, dwscale, dwbias): the chain rule through W~ = alpha * sign(W) + beta.
    `signs`: binarize(weight, zero) if the forward kept it (saves recomputing it)."""
    if scaling in ("column", "row"):
        signs = binarize(weight, zero) if signs is None else signs
        # straight-through estimator: d sign(W)/dW := 1 (identity, the paper's choice), times alpha
        dweight = dw_tilde * wscale
        reduce_axis = 0 if scaling == "column" else 1                  # alpha runs along columns / rows
        dwscale = np.sum(dw_tilde * signs, axis=reduce_axis, keepdims=True)
        dwbias = np.sum(dw_tilde, axis=reduce_axis, keepdims=True)
    else:  # `none` / `ternary` have no learnable scales
        dweight, dwscale, dwbias = dw_tilde, None, None
    if clip_ste:
        # ablation: hard-tanh STE passes no gradient where |W| > 1
        dweight = dweight * (np.abs(weight) <= 1)
    return dweight, dwscale, dwbias


def fbi_linear_forward(x, weight, wscale, wbias, scaling="column"):
    # x (..., in), weight (out, in) latent, wscale/wbias (1, in) -> (..., out)
    w_tilde = effective_weight(weight, wscale, wbias, scaling)         # (out, in)
    out, lin_cache = linear_forward(x, w_tilde)
    return out, (lin_cache, weight, wscale, scaling)


def fbi_linear_backward(dout, cache, clip_ste=False):
    lin_cache, weight, wscale, scaling = cache
    dx, dw_tilde = linear_backward(dout, lin_cache)
    return (dx, *effective_weight_backward(dw_tilde, weight, wscale, scaling, clip_ste))


def init_scales(weight, scaling="column"):
    """FBI init: beta_j = mean_i W_ij, alpha_j = mean_i |W_ij - beta_j| (per input column j)."""
    if scaling == "row":
        wbias = weight.mean(axis=1, keepdims=True)
        return np.abs(weight - wbias).mean(axis=1, keepdims=True), wbias
    wbias = weight.mean(axis=0, keepdims=True)                         # (1, in)
    return np.abs(weight - wbias).mean(axis=0, keepdims=True), wbias


# ----------------------------------------------------------------------------- SwiGLU


def swiglu_forward(gate, up):
    # silu(gate) * up, elementwise, (..., I); in-place steps to spare large temporaries
    sig = np.negative(gate)
    np.exp(sig, out=sig)
    sig += 1.0
    np.reciprocal(sig, out=sig)                                        # sigmoid(gate)
    silu = gate * sig
    return silu * up, (gate, up, sig, silu)


def swiglu_backward(dout, cache, out=None):
    # out: an optional (..., 2I) buffer that receives [dgate | dup] (the stacked gate/up GEMM's input)
    gate, up, sig, silu = cache
    I = gate.shape[-1]
    out = np.empty((*gate.shape[:-1], 2 * I), dout.dtype) if out is None else out
    dgate, dup = out[..., :I], out[..., I:]
    np.multiply(dout, silu, out=dup)
    # d silu/dg = sig * (1 + g * (1 - sig)); dgate = dout * up * sig * that, in place
    np.multiply(dout, up, out=dgate)
    dgate *= sig
    dsilu = np.subtract(1.0, sig)
    dsilu *= gate
    dsilu += 1.0
    dgate *= dsilu
    return dgate, dup


# ----------------------------------------------------------------------------- losses


def _softmax_rows(logits):
    # logits (..., V) -> exp(z - max) (N, V), its row sums (N, 1), log-sum-exp (N, 1): one (N, V)
    # buffer in all; softmax = exps / total, the division left to the backward's scaling pass
    z = logits.reshape(-1, logits.shape[-1])
    m = np.max(z, axis=-1, keepdims=True)
    exps = np.subtract(z, m)
    np.exp(exps, out=exps)
    total = np.sum(exps, axis=-1, keepdims=True)
    return exps, total, m + np.log(total)


def cross_entropy_forward(logits, targets):
    # logits (B, T, V), targets (B, T) int -> mean negative log-likelihood
    exps, total, lse = _softmax_rows(logits)                          # (N, V), (N, 1), (N, 1)
    z = logits.reshape(exps.shape)
    nll = lse[:, 0] - z[np.arange(z.shape[0]), targets.reshape(-1)]   # log sum exp(z) - z_target
    return float(nll.mean()), (exps, total, targets, logits.shape)


def cross_entropy_backward(cache, scale=1.0):
    # (softmax(z) - onehot(target)) * scale / N; normalizes the cached exps in place (call once)
    exps, total, targets, shape = cache
    k = scale / exps.shape[0]
    exps *= k / total                                                  # softmax * scale / N, one pass
    exps[np.arange(exps.shape[0]), targets.reshape(-1)] -= k
    return exps.reshape(shape)


def distill_forward(logits, teacher_probs):
    """Autoregressive distillation (FBI-LLM section 3.2): soft CE of the student against the teacher.

    logits (B, T, V) student; teacher_probs (B, T, V) the teacher's softmax at temperature 1.
    loss = -mean over positions of sum_v p_teacher * log p_student
         = mean of sum_v p (logsumexp(z) - z_v), computed without a (B, T, V) log-prob array.
    """
    exps, total, lse = _softmax_rows(logits)
    p = teacher_probs.reshape(exps.shape)
    mass = np.sum(p, axis=-1, keepdims=True)                          # 1 unless p is a truncated top-K
    loss = np.sum(mass * lse) - np.einsum("nv,nv->", p, logits.reshape(exps.shape))
    return float(loss / exps.shape[0]), (exps, total, p, mass, logits.shape)


def distill_backward(cache, scale=1.0):
    # d/dz of -sum p log softmax(z) = softmax(z) * sum(p) - p; normalizes the cached exps in place
    exps, total, p, mass, shape = cache
    exps *= mass / total                                               # softmax * sum(p)
    exps -= p
    exps *= scale / exps.shape[0]
    return exps.reshape(shape)


def mixed_forward(logits, targets, teacher_probs, lam):
    """lambda * label CE + (1 - lambda) * distillation (the 0.5/0.5 variant of the authors' code)."""
    ce, ce_cache = cross_entropy_forward(logits, targets)
    ad, ad_cache = distill_forward(logits, teacher_probs)
    return lam * ce + (1.0 - lam) * ad, (ce_cache, ad_cache, lam)


def mixed_backward(cache):
    ce_cache, ad_cache, lam = cache
    dlogits = cross_entropy_backward(ce_cache, lam)
    dlogits += distill_backward(ad_cache, 1.0 - lam)
    return dlogits
