"""v2: exact batch-1 kernel for float activations, portable (no x86-specific instruction).

y_o = sum_j s_oj * xs_j + beta . x with xs = alpha * x, and sum_j s_oj xs_j = 2 * sum_{j: s_oj=+1} xs_j
- sum_j xs_j. The kernel only sums activations under the +1 bits: it loads 32 bytes of blocked bits
as eight 32-bit lanes, and for shift s = 0..31 the sign bit of (lanes << s) picks one activation
per lane (an IR `select` on the sign, a vblendvps on AVX2). Activations are permuted once per call
so that the 8 activations step s picks are contiguous. Float32 sums, 4 vector accumulators.

    python -m kernels.bench --shape 11008x4096 --batch 1
"""
from functools import lru_cache

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.bitpack import BLOCK, PackedSigns
from kernels.simd import V8xF32, V8xI32, counted_loop, data_pointer, hsum, is_c_array, splat


@lru_cache(maxsize=None)
def activation_order(nblk: int) -> np.ndarray:
    """int64 (256*nblk,): xp[i] = xs[order[i]]. Block blk, step s, lane l reads lane l's bit 31-s.

    Lane l of a block is bytes 4l..4l+3, so its bit p = 8r + b is byte 4l + r, bit b: input
    32*b + 4*l + r of the block (blocked layout, kernels/bitpack.py).
    """
    s = np.arange(32)[:, None]                                           # (32, 1) shift
    lane = np.arange(8)[None, :]                                         # (1, 8)
    p = 31 - s                                                           # bit under the sign
    within = 32 * (p & 7) + 4 * lane + (p >> 3)                          # (32, 8)
    return (np.arange(nblk)[:, None, None] * BLOCK + within[None]).reshape(-1)


@intrinsic
def plus_sum_row(typingctx, wrow, xp):
    """uint8 (32*nblk,) blocked bits of one row, float32 (256*nblk,) permuted xs -> sum of xs under +1 bits."""
    if not (is_c_array(wrow, types.uint8, 1) and is_c_array(xp, types.float32, 1)):
        return None
    sig = types.float32(wrow, xp)

    def codegen(context, builder, sig, args):
        wp, nbytes = data_pointer(context, builder, sig.args[0], args[0], V8xI32)
        xptr, _ = data_pointer(context, builder, sig.args[1], args[1], V8xF32)
        nblk = builder.udiv(nbytes, ir.Constant(nbytes.type, 32))
        zero = ir.Constant(V8xF32, None)
        accs = [builder.alloca(V8xF32) for _ in range(4)]                # 4 chains hide fadd latency
        for a in accs:
            builder.store(zero, a)
        with counted_loop(builder, nblk) as blk:
            lanes = builder.load(builder.gep(wp, [blk]), align=1)        # (8,) x 32 bits
            base = builder.mul(blk, ir.Constant(blk.type, 32))
            part = [builder.load(a) for a in accs]
            for s in range(32):
                top = builder.shl(lanes, splat(V8xI32, s))              # bit 31-s -> sign bit
                plus = builder.icmp_signed("<", top, ir.Constant(V8xI32, None))
                xv = builder.load(builder.gep(xptr, [builder.add(base, ir.Constant(blk.type, s))]), align=4)
                part[s % 4] = builder.fadd(part[s % 4], builder.select(plus, xv, zero))
            for a, v in zip(accs, part):
                builder.store(v, a)
        v = [builder.load(a) for a in accs]
        return hsum(builder, builder.fadd(builder.fadd(v[0], v[1]), builder.fadd(v[2], v[3])))

    return sig, codegen


@numba.njit(cache=True, parallel=True)
def _matvec(bits, order, alpha, beta, x, y):
    # bits (out, 32*nblk) uint8; order (256*nblk,); alpha, beta, x (in,) float32 -> y (out,)
    n_in = x.shape[0]
    xp = np.empty(order.shape[0], np.float32)                           # permuted, zero-padded alpha*x
    total = np.float32(0.0)
    bx = np.float32(0.0)
    for i in range(order.shape[0]):
        j = order[i]
        v = alpha[j] * x[j] if j < n_in else np.float32(0.0)
        xp[i] = v
        total += v
    for j in range(n_in):
        bx += beta[j] * x[j]
    for o in numba.prange(bits.shape[0]):
        y[o] = np.float32(2.0) * plus_sum_row(bits[o], xp) - total + bx


def matvec_masked_f32(packed: PackedSigns, alpha, beta, x) -> np.ndarray:
    """x (in,) float32 -> y (out,) float32 = sign(W) @ (alpha * x) + beta . x, exact to float32 rounding."""
    order = activation_order(packed.bits.shape[1] // 32)
    y = np.empty(packed.out_features, np.float32)
    _matvec(packed.bits, order, alpha, beta, x, y)
    return y
