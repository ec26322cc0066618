"""v4: bit-serial popcount kernel for batch 1 with per-token int8 activations, portable.

With q = round(alpha * x / scale) in int8 (kernels/act_int8.py) and Q_b its bit plane b (bit b of
each q_j as a two's-complement byte), q_j = sum_b c_b * bit_b(q_j), c_b = 2^b for b < 7, c_7 = -128.
For a row with +1 mask P: sum_{j in P} q_j = sum_b c_b * popcount(P & Q_b), and
dot(sign(W)_o, q) = 2 * sum_{j in P} q_j - sum_j q_j. Then y_o = scale * dot + beta . x.
The planes are packed exactly like the weights (blocked layout), so P & Q_b lines up bit for bit;
8 AND+popcount per 64 weights. Numba has no popcount, so `llvm.ctpop.i64` comes in through a
one-line intrinsic; LLVM vectorizes it (a nibble-table popcount on AVX2). Error: see act_int8.

    python -m kernels.bench --shape 11008x4096 --batch 1
"""
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from kernels.act_int8 import quantize_int8
from kernels.bitpack import BLOCK, PackedSigns
from kernels.simd import I64


@intrinsic
def popcount64(typingctx, v):
    """uint64 -> uint64 number of set bits (llvm.ctpop.i64)."""
    if v != types.uint64:
        return None

    def codegen(context, builder, sig, args):
        return builder.call(builder.module.declare_intrinsic("llvm.ctpop", [I64]), args)

    return types.uint64(types.uint64), codegen


@numba.njit(cache=True)
def pack_planes(q, planes):
    # q (256*nblk,) int8 -> planes (8, 32*nblk) uint8: plane b packed like the weights (blocked)
    nblk = q.shape[0] // BLOCK
    for blk in range(nblk):
        for k in range(32):
            for b in range(8):
                byte = 0
                for c in range(8):                                  # byte k, bit c = input 32c + k
                    byte |= ((np.uint8(q[BLOCK * blk + 32 * c + k]) >> b) & 1) << c
                planes[b, 32 * blk + k] = byte


@numba.njit(cache=True, parallel=True)
def _matvec(bits, alpha, beta, x, y):
    # bits (out, 32*nblk) uint8; alpha, beta, x (in,) float32 -> y (out,) float32
    nbytes = bits.shape[1]
    q = np.empty(8 * nbytes, np.int8)
    scale, qsum, bx = quantize_int8(alpha, beta, x, q)
    planes8 = np.empty((8, nbytes), np.uint8)
    pack_planes(q, planes8)
    planes = planes8.view(np.uint64)                                # (8, nbytes/8)
    words = bits.view(np.uint64)                                    # (out, nbytes/8)
    nw = words.shape[1]
    for o in numba.prange(bits.shape[0]):
        acc = np.int64(0)
        for b in range(8):
            n = np.uint64(0)
            for w in range(nw):
                n += popcount64(words[o, w] & planes[b, w])
            weight = np.int64(-128) if b == 7 else np.int64(1) << b  # two's-complement plane weight
            acc += weight * np.int64(n)
        y[o] = scale * np.float32(2 * acc - qsum) + bx


def matvec_popcount_int8(packed: PackedSigns, alpha, beta, x) -> np.ndarray:
    """x (in,) float32 -> y (out,) float32 with int8-rounded alpha * x (error bound: act_int8)."""
    y = np.empty(packed.out_features, np.float32)
    _matvec(packed.bits, alpha, beta, x, y)
    return y
