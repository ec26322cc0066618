"""The float work of one decode step between the 1-bit products: RMSNorm, RoPE + KV-cache append +
attention for the new tokens, SwiGLU. Each is one compiled call on vectors, so a step costs a few
calls per layer instead of dozens of NumPy temporaries.

One-line references they are tested against (tinyfbi.core.layers, the float model's own ops):
    rmsnorm:   x / sqrt(mean(x^2) + eps) * w
    attention: softmax(rope(q) . rope(K)^T / sqrt(D)) V over positions 0..pos, kv head h // (H/Hkv)
    swiglu:    silu(gate) * up

    python -m pytest tests/test_runtime_kernels.py -k decode
"""
import numba
import numpy as np


@numba.njit(cache=True)
def rmsnorm_into(x, w, eps, out):
    # x (C,), w (C,) float32 -> out (C,) = x / rms(x) * w (float64 mean, like NumPy's pairwise sum)
    ss = 0.0
    for j in range(x.shape[0]):
        ss += np.float64(x[j]) * x[j]
    rstd = np.float32(1.0 / np.sqrt(ss / x.shape[0] + eps))
    for j in range(x.shape[0]):
        out[j] = x[j] * rstd * w[j]


@numba.njit(cache=True)
def _rope_into(src, cos, sin, scale, dst):
    # src, cos, sin, dst (D,): HF rotate_half, halves not interleaved; dst = (src*cos + rot(src)*sin) * scale
    half = src.shape[0] // 2
    for d in range(half):
        a, b = src[d], src[d + half]
        dst[d] = (a * cos[d] - b * sin[d]) * scale
        dst[d + half] = (b * cos[d + half] + a * sin[d + half]) * scale


PARALLEL_MIN_POS = 512   # decode: from this context length on, heads run in parallel (below, a
                         # thread-pool wake-up costs more than the work; measured 0.14 ms for 16 heads x 160)
FAST = {"reassoc", "contract"}   # lets the D-long dot products and updates vectorize


@numba.njit(cache=True)
def _append_kv(k, v, cos, sin, kc, vc, start):
    # k, v (T, Hkv*D) new keys/values; cos, sin (T, D) -> kc, vc (Hkv, max_len, D) at start..start+T-1
    d_head = kc.shape[2]
    for t in range(k.shape[0]):
        for j in range(kc.shape[0]):
            _rope_into(k[t, j * d_head:(j + 1) * d_head], cos[t], sin[t], np.float32(1.0), kc[j, start + t])
            vc[j, start + t, :] = v[t, j * d_head:(j + 1) * d_head]


@numba.njit(cache=True, fastmath=FAST)
def _attend_head(q, h, cos, sin, kc, vc, start, out):
    # query head h of T tokens at positions start..start+T-1 -> out[:, h*D:(h+1)*D]; causal
    d_head = kc.shape[2]
    j = h // (q.shape[1] // d_head // kc.shape[0])                     # its kv head (grouped-query)
    scale = np.float32(1.0 / np.sqrt(d_head))
    qh = np.empty(d_head, np.float32)
    scores = np.empty(start + q.shape[0], np.float32)
    acc = np.empty(d_head, np.float32)
    for t in range(q.shape[0]):
        n = start + t + 1                                              # keys it may see
        _rope_into(q[t, h * d_head:(h + 1) * d_head], cos[t], sin[t], scale, qh)   # prescaled
        top = np.float32(-np.inf)
        for s in range(n):
            dot = np.float32(0.0)
            for d in range(d_head):
                dot += qh[d] * kc[j, s, d]
            scores[s] = dot
            top = max(top, dot)
        acc[:] = 0.0
        total = np.float32(0.0)
        for s in range(n):
            p = np.exp(scores[s] - top)
            total += p
            for d in range(d_head):
                acc[d] += p * vc[j, s, d]
        for d in range(d_head):
            out[t, h * d_head + d] = acc[d] / total


@numba.njit(cache=True)
def attend(q, k, v, cos, sin, kc, vc, start, out):
    """T new tokens at positions start..: rope q and k, append k and v to the cache, causal attention.

    q (T, H*D), k and v (T, Hkv*D) float32 projections; cos, sin (T, D) at those positions;
    kc, vc (Hkv, max_len, D) this layer's cache, written at start..start+T-1; out (T, H*D) float32.
    Heads one after another (decode at short context); attend_parallel runs them on the thread pool.
    """
    _append_kv(k, v, cos, sin, kc, vc, start)
    for h in range(q.shape[1] // kc.shape[2]):
        _attend_head(q, h, cos, sin, kc, vc, start, out)


@numba.njit(cache=True, parallel=True)
def attend_parallel(q, k, v, cos, sin, kc, vc, start, out):
    """attend with the query heads spread over the thread pool (prefill, long contexts)."""
    _append_kv(k, v, cos, sin, kc, vc, start)
    for h in numba.prange(q.shape[1] // kc.shape[2]):
        _attend_head(q, h, cos, sin, kc, vc, start, out)


@numba.njit(cache=True)
def swiglu_into(gate, up, out):
    # gate, up, out (I,) float32: out = silu(gate) * up
    for j in range(gate.shape[0]):
        out[j] = gate[j] / (np.float32(1.0) + np.exp(-gate[j])) * up[j]
