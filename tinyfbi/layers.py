"""Every op of the FBI transformer as a forward/backward pair, NumPy only (no autograd).

`f_forward(...) -> (out, cache)` and `f_backward(dout, cache) -> grads` sit side by side. Works in
float32 (training) and float64 (gradient checks): outputs keep the input dtype. Shapes: B batch,
T time, C model width, H heads, D head_dim, V vocab.
FBI-Linear follows FBI-LLM (arXiv 2407.07093, section 3.1) and the authors' released code.
"""
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
    dxhat = dout * weight
    # d/dx of x*rstd: rstd * (dxhat - xhat * mean(dxhat * xhat))
    dx = rstd * (dxhat - xhat * (np.sum(dxhat * xhat, axis=-1, keepdims=True) / C))
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
    return x * cos + rotate_half(x) * sin, (cos, sin)


def rope_backward(dout, cache):
    cos, sin = cache
    return dout * cos + rotate_half_transpose(dout * sin)


# ----------------------------------------------------------------------------- attention


def causal_bias(Tq, Tk, dtype):
    # (Tq, Tk): 0 where query i (absolute position Tk - Tq + i) may see key j, -inf after it
    return np.triu(np.full((Tq, Tk), -np.inf, dtype=dtype), k=Tk - Tq + 1)


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def attention_forward(q, k, v):
    # q (B, H, T, D); k, v (B, Hkv, Tk, D) with H a multiple of Hkv (grouped-query attention)
    B, H, T, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    group = H // Hkv
    qg = q.reshape(B, Hkv, group * T, D)                               # queries of a kv head together
    scores = (qg @ k.swapaxes(-1, -2)).reshape(B, Hkv, group, T, Tk)   # (B, Hkv, G, T, Tk)
    scores *= 1.0 / np.sqrt(D)
    scores += causal_bias(T, Tk, scores.dtype)
    probs = softmax(scores).astype(q.dtype, copy=False)
    out = probs.reshape(B, Hkv, group * T, Tk) @ v                     # (B, Hkv, G*T, D)
    return out.reshape(B, H, T, D), (q, k, v, probs)


def attention_backward(dout, cache):
    q, k, v, probs = cache
    B, H, T, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    group = H // Hkv
    p = probs.reshape(B, Hkv, group * T, Tk)
    do = dout.reshape(B, Hkv, group * T, D)
    dv = p.swapaxes(-1, -2) @ do                                       # (B, Hkv, Tk, D)
    dp = do @ v.swapaxes(-1, -2)                                       # (B, Hkv, G*T, Tk)
    # softmax backward: ds = p * (dp - sum(dp * p)); masked entries have p = 0 and stay 0
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))
    ds *= 1.0 / np.sqrt(D)
    dq = (ds @ k).reshape(B, H, T, D)
    dk = ds.swapaxes(-1, -2) @ q.reshape(B, Hkv, group * T, D)         # (B, Hkv, Tk, D)
    return dq, dk, dv


# ----------------------------------------------------------------------------- linear layers


def linear_forward(x, weight):
    # x (..., in), weight (out, in) -> (..., out); no bias, as in LLaMA
    return x @ weight.T, (x, weight)


def linear_backward(dout, cache):
    x, weight = cache
    dx = dout @ weight
    dweight = dout.reshape(-1, dout.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # (out, in)
    return dx, dweight


def effective_weight(weight, wscale, wbias, scaling="column"):
    """W~ = wscale * sign(W) + wbias: the weight an FBI-Linear actually multiplies by.

    `column` (FBI): wscale/wbias (1, in) broadcast over rows. `row`: (out, 1). `none`: sign(W)
    alone. `ternary`: BitNet b1.58 absmean, round(W / mean|W|) clipped to {-1, 0, 1} times mean|W|.
    The last two take wscale = wbias = None.
    """
    if scaling == "ternary":
        gamma = np.mean(np.abs(weight)) + 1e-8
        return (np.clip(np.rint(weight / gamma), -1, 1) * gamma).astype(weight.dtype)
    if scaling == "none":
        return binarize(weight)
    return wscale * binarize(weight) + wbias


def fbi_linear_forward(x, weight, wscale, wbias, scaling="column"):
    # x (..., in), weight (out, in) latent, wscale/wbias (1, in) -> (..., out)
    w_tilde = effective_weight(weight, wscale, wbias, scaling)         # (out, in)
    return x @ w_tilde.T, (x, weight, wscale, scaling, w_tilde)


def fbi_linear_backward(dout, cache, clip_ste=False):
    x, weight, wscale, scaling, w_tilde = cache
    dx = dout @ w_tilde
    dw_tilde = dout.reshape(-1, dout.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # (out, in)
    # straight-through estimator: d sign(W)/dW := 1 (identity, the paper's choice); scaled by alpha
    # for `column`/`row` because W~ = alpha * sign(W) + beta
    if scaling in ("column", "row"):
        dweight = dw_tilde * wscale
        reduce_axis = 0 if scaling == "column" else 1                  # alpha runs along columns / rows
        dwscale = np.sum(dw_tilde * binarize(weight), axis=reduce_axis, keepdims=True)
        dwbias = np.sum(dw_tilde, axis=reduce_axis, keepdims=True)
    else:  # `none` / `ternary` have no learnable scales
        dweight, dwscale, dwbias = dw_tilde, None, None
    if clip_ste:
        # ablation: hard-tanh STE passes no gradient where |W| > 1
        dweight = dweight * (np.abs(weight) <= 1)
    return dx, dweight, dwscale, dwbias


def init_scales(weight, scaling="column"):
    """FBI init: beta_j = mean_i W_ij, alpha_j = mean_i |W_ij - beta_j| (per input column j)."""
    if scaling == "row":
        wbias = weight.mean(axis=1, keepdims=True)
        return np.abs(weight - wbias).mean(axis=1, keepdims=True), wbias
    wbias = weight.mean(axis=0, keepdims=True)                         # (1, in)
    return np.abs(weight - wbias).mean(axis=0, keepdims=True), wbias


# ----------------------------------------------------------------------------- SwiGLU


def swiglu_forward(gate, up):
    # silu(gate) * up, elementwise, (..., I)
    sig = 1.0 / (1.0 + np.exp(-gate))
    silu = gate * sig
    return silu * up, (gate, up, sig, silu)


def swiglu_backward(dout, cache):
    gate, up, sig, silu = cache
    dup = dout * silu
    # d silu/dg = sig * (1 + g * (1 - sig))
    dgate = dout * up * sig * (1.0 + gate * (1.0 - sig))
    return dgate, dup


# ----------------------------------------------------------------------------- losses


def cross_entropy_forward(logits, targets):
    # logits (B, T, V), targets (B, T) int -> mean negative log-likelihood
    logp = log_softmax(logits)
    n = targets.size
    nll = -np.take_along_axis(logp.reshape(n, -1), targets.reshape(n, 1), axis=1)
    return float(nll.mean()), (logp, targets)


def cross_entropy_backward(cache, scale=1.0):
    logp, targets = cache
    V = logp.shape[-1]
    dlogits = np.exp(logp).reshape(-1, V)
    dlogits[np.arange(dlogits.shape[0]), targets.reshape(-1)] -= 1.0
    dlogits *= scale / dlogits.shape[0]
    return dlogits.reshape(logp.shape)


def distill_forward(logits, teacher_probs):
    """Autoregressive distillation (FBI-LLM eq. 5): soft CE of the student against the teacher.

    logits (B, T, V) student; teacher_probs (B, T, V) the teacher's softmax at temperature 1.
    loss = -mean over positions of sum_v p_teacher * log p_student.
    """
    logp = log_softmax(logits)
    n = logits.shape[0] * logits.shape[1]
    return float(-np.sum(teacher_probs * logp) / n), (logp, teacher_probs)


def distill_backward(cache, scale=1.0):
    logp, teacher_probs = cache
    n = logp.shape[0] * logp.shape[1]
    # d/dz of -sum p log softmax(z) = softmax(z) * sum(p) - p (sum(p) = 1 unless p is truncated top-K)
    mass = np.sum(teacher_probs, axis=-1, keepdims=True)
    return (np.exp(logp) * mass - teacher_probs) * (scale / n)


def mixed_forward(logits, targets, teacher_probs, lam):
    """lambda * label CE + (1 - lambda) * distillation (the 0.5/0.5 variant of the authors' code)."""
    ce, ce_cache = cross_entropy_forward(logits, targets)
    ad, ad_cache = distill_forward(logits, teacher_probs)
    return lam * ce + (1.0 - lam) * ad, (ce_cache, ad_cache, lam)


def mixed_backward(cache):
    ce_cache, ad_cache, lam = cache
    return cross_entropy_backward(ce_cache, lam) + distill_backward(ad_cache, 1.0 - lam)
