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
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


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
def rmsnorm_rows_into(x, w, eps, out):
    # x (N, C), w (C,) float32 -> out (N, C): rmsnorm_into per row (prefill)
    for n in range(x.shape[0]):
        rmsnorm_into(x[n], w, eps, out[n])


@numba.njit(cache=True)
def _rope_into(src, cos, sin, scale, dst):
    # src, cos, sin (D,) float32, dst (D,) float32 or fp16 bits (a cache row): HF rotate_half, halves
    # not interleaved; dst = (src*cos + rot(src)*sin) * scale
    half = src.shape[0] // 2
    for d in range(half):
        a, b = src[d], src[d + half]
        dst[d] = _to_like((a * cos[d] - b * sin[d]) * scale, dst)
        dst[d + half] = _to_like((b * cos[d + half] + a * sin[d + half]) * scale, dst)


# decode: heads run on the thread pool from this much work on (heads x keys x head_dim); below it the
# pool's hand-off costs more than the second core saves. Measured at 2 threads (ms per layer, serial
# vs parallel): 8 heads x 32, 64 keys (16k) 0.012 vs 0.013; 160 keys (41k) 0.022 vs 0.018; 32 x 64
# and 32 x 128 heads win from 16 keys on (0.032 vs 0.025, 0.046 vs 0.033)
PARALLEL_MIN_WORK = 1 << 15
FAST = {"reassoc", "contract"}   # lets the D-long dot products, sums and updates vectorize


@intrinsic
def _f32_from_bits(typingctx, i):
    # integer -> the float32 whose bits are its low 32 (a truncate and a bitcast: loops still vectorize)
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)) if i.bitwidth > 32 else args[0], ir.FloatType())

    return types.float32(i), codegen


@intrinsic
def _widen(typingctx, x):
    # a cache element -> float32: uint16 holds fp16 bits (Numba has no float16; F16C vcvtph2ps), float32 as is
    if x == types.uint16:
        return types.float32(x), lambda c, b, sig, a: b.fpext(b.bitcast(a[0], ir.HalfType()), ir.FloatType())
    if x == types.float32:
        return types.float32(x), lambda c, b, sig, a: a[0]
    return None


@intrinsic
def _to_like(typingctx, x, arr):
    # float32 x -> arr's element type: fp16 bits (round to nearest even, as NumPy's astype) or float32
    if x != types.float32 or not isinstance(arr, types.Array):
        return None
    if arr.dtype == types.uint16:
        return types.uint16(x, arr), lambda c, b, sig, a: b.bitcast(b.fptrunc(a[0], ir.HalfType()), ir.IntType(16))
    if arr.dtype == types.float32:
        return types.float32(x, arr), lambda c, b, sig, a: a[0]
    return None


@numba.njit(cache=True, fastmath={"contract"})   # no reassoc: it would fold the split ln2 back together
def _expf(x):
    # float32 exp by range reduction (Cephes expf): x = k ln2 + r, |r| <= ln2/2, exp = 2^k p(r);
    # within 2 ulp of exp on [-87.3, 88.3] (tested); below it clamps to exp(-87.3) ~ 1.2e-38, above
    # to exp(88.3) (k <= 127 keeps 2^k finite); branch-free and call-free so that loops over it vectorize (8 lanes with AVX2)
    x = min(max(x, np.float32(-87.33654)), np.float32(88.3))
    k = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)   # ln2 in two parts: exact k*hi
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * (r * r) + r + np.float32(1.0)
    return p * _f32_from_bits((np.int32(k) + 127) << 23)   # times 2^k, k in [-126, 127]


@numba.njit(cache=True)
def _append_kv(k, v, cos, sin, kc, vc, start):
    # k, v (T, Hkv*D) new keys/values; cos, sin (T, D) -> kc, vc (Hkv, max_len, D) at start..start+T-1
    d_head = kc.shape[2]
    for t in range(k.shape[0]):
        for j in range(kc.shape[0]):
            _rope_into(k[t, j * d_head:(j + 1) * d_head], cos[t], sin[t], np.float32(1.0), kc[j, start + t])
            for d in range(d_head):
                vc[j, start + t, d] = _to_like(v[t, j * d_head + d], vc)


@numba.njit(cache=True, fastmath=FAST)
def _scores(qh, keys, n, scores):
    # qh (D,), keys (max_len, D) -> scores[:n] = keys[:n] @ qh; returns their max. One key after
    # another: the cache is read as one sequential stream (four keys per pass, four interleaved
    # streams, ran 1.5x slower from DRAM at D=128 though faster in cache)
    top = np.float32(-np.inf)
    for s in range(n):
        a = np.float32(0.0)
        for d in range(qh.shape[0]):
            a += qh[d] * _widen(keys[s, d])
        scores[s] = a
        top = max(top, a)
    return top


@numba.njit(cache=True, fastmath=FAST)
def _softmax_v(p, n, top, vals, acc):
    # p (>=n,) scores -> acc (D,) = sum_s exp(p[s] - top) vals[s], returns sum_s exp(p[s] - top):
    # the exact two-pass softmax (one max, then exp, 8 lanes at a time); values read one row after
    # another (sequential, as in _scores)
    total = np.float32(0.0)
    for s in range(n):
        e = _expf(p[s] - top)
        p[s] = e
        total += e
    acc[:] = 0.0
    for s in range(n):
        ps = p[s]
        for d in range(acc.shape[0]):
            acc[d] += ps * _widen(vals[s, d])
    return total


@numba.njit(cache=True, error_model="numpy")
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
        top = _scores(qh, kc[j], n, scores)
        total = _softmax_v(scores, n, top, vc[j], acc)
        for d in range(d_head):
            out[t, h * d_head + d] = acc[d] / total


@numba.njit(cache=True)
def attend(q, k, v, cos, sin, kc, vc, start, out):
    """T new tokens at positions start..: rope q and k, append k and v to the cache, causal attention.

    q (T, H*D), k and v (T, Hkv*D) float32 projections; cos, sin (T, D) at those positions;
    kc, vc (Hkv, max_len, D) this layer's cache, written at start..start+T-1; out (T, H*D) float32.
    Heads one after another (small work); attend_parallel runs them on the thread pool.
    """
    _append_kv(k, v, cos, sin, kc, vc, start)
    for h in range(q.shape[1] // kc.shape[2]):
        _attend_head(q, h, cos, sin, kc, vc, start, out)


@numba.njit(cache=True, parallel=True)
def attend_parallel(q, k, v, cos, sin, kc, vc, start, out):
    """attend with the query heads spread over the thread pool (prefill, long contexts, big models)."""
    _append_kv(k, v, cos, sin, kc, vc, start)
    for h in numba.prange(q.shape[1] // kc.shape[2]):
        _attend_head(q, h, cos, sin, kc, vc, start, out)


def attend_fn(heads: int, keys: int, d_head: int):
    """The decode attention for this much work: serial below PARALLEL_MIN_WORK = heads x keys x D."""
    return attend_parallel if heads * keys * d_head >= PARALLEL_MIN_WORK else attend


@numba.njit(cache=True, error_model="numpy")   # numpy: x / 0 -> inf, no check that stops vectorizing
def swiglu_into(gate, up, out):
    # gate, up, out (I,) float32: out = silu(gate) * up, exp by _expf (vectorizes; libm's expf does not)
    for j in range(gate.shape[0]):
        out[j] = gate[j] / (np.float32(1.0) + _expf(-gate[j])) * up[j]
