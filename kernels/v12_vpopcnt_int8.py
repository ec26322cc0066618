"""v12: v4's bit-serial popcount in 512-bit vectors, for AVX512_VPOPCNTDQ `vpopcntq`.

Same sum as v4: with q the int8 activations (act_int8) and Q_b their bit planes packed like the
weights (blocked layout, kernels/bitpack.py), sum_{j in P} q_j = sum_b c_b * popcount(P & Q_b),
c_b = 2^b (b < 7), c_7 = -128, and dot = 2 * that - sum q. v4 leaves the vectorizing to LLVM
(8 passes over a row's words, one per plane, 256-bit on Intel tunings); here one pass loads 64 bytes
of a row's bits (512 weights) once and adds `ctpop(bits & Q_b)` for all 8 planes into 8 zmm
accumulators of 8 x i64: 1 load and 8 x (and, vpopcntq, add) per 512 weights. The planes are built
per call by an IR loop (8 loads of 32 activations, shift, and, shift, or per plane and block: a
vectorized 8 x 8 bit transpose) instead of v4's scalar loop. A row whose block count is odd ends
with one 256-bit step.

`llvm.ctpop` on <8 x i64> is target-independent IR: with VPOPCNTDQ LLVM emits `vpopcntq`, without it
LLVM expands it (a vpshufb nibble table on AVX2, scalar popcnt below), so this one kernel is its
own generic-IR twin and runs, and is tested, on every CPU; the tests read `vpopcntq` on zmm from
the assembly for a VPOPCNTDQ target. kernels.dispatch picks it only where it was measured faster
(kernels/README.md). Integers equal v5's bit for bit.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.act_int8 import quantize_int8
from kernels.bitpack import PackedSigns
from kernels.simd import I8, I32, I64, V32xI8, counted_loop, data_pointer, hsum, is_c_array, splat

V8xI64, V4xI64 = ir.VectorType(I64, 8), ir.VectorType(I64, 4)
PLANES = 8
WEIGHTS = [1, 2, 4, 8, 16, 32, 64, -128]     # c_b: two's complement value of bit b


@intrinsic
def _planes(typingctx, q, planes):
    """int8 (256*nblk,) q -> uint8 (8, 32*nblk) planes: byte 32 blk + k, bit c of plane b = bit b of
    q[256 blk + 32 c + k] (the blocked layout)."""
    if not (is_c_array(q, types.int8, 1) and is_c_array(planes, types.uint8, 2)):
        return None
    sig = types.void(q, planes)

    def codegen(context, builder, sig, args):
        qp, nitems = data_pointer(context, builder, sig.args[0], args[0], V32xI8)
        pp, _ = data_pointer(context, builder, sig.args[1], args[1], V32xI8)
        nblk = builder.udiv(nitems, ir.Constant(nitems.type, 256))
        one = splat(V32xI8, 1)
        with counted_loop(builder, nblk) as blk:
            base = builder.mul(blk, ir.Constant(blk.type, 8))
            vs = [builder.load(builder.gep(qp, [builder.add(base, ir.Constant(blk.type, c))]), align=1)
                  for c in range(8)]                                                  # inputs 32c .. 32c+31
            for b in range(PLANES):
                byte = ir.Constant(V32xI8, None)
                for c, v in enumerate(vs):
                    bit = builder.and_(builder.lshr(v, splat(V32xI8, b)) if b else v, one)
                    byte = builder.or_(byte, builder.shl(bit, splat(V32xI8, c)) if c else bit)
                plane_row = builder.mul(nblk, ir.Constant(nblk.type, b))             # plane b starts here
                builder.store(byte, builder.gep(pp, [builder.add(plane_row, blk)]), align=1)
        return context.get_dummy_value()

    return sig, codegen


def _weighted(builder, accs):
    """sum_b c_b * accs[b] lane by lane (shifts; c_7 = -128 subtracts)."""
    ty = accs[0].type
    total = ir.Constant(ty, None)
    for b, n in enumerate(accs):
        term = builder.shl(n, splat(ty, b)) if b else n
        total = builder.sub(total, term) if WEIGHTS[b] < 0 else builder.add(total, term)
    return total


def _plane_popcounts(builder, vec_ty, wbytes, pbytes, nbytes, off):
    """[ctpop(bits & Q_b) for b < 8] on one vec_ty of a row's bits at byte offset off."""
    ctpop = builder.module.declare_intrinsic(f"llvm.ctpop.v{vec_ty.count}i64", fnty=ir.FunctionType(vec_ty, [vec_ty]))
    w = builder.load(builder.bitcast(builder.gep(wbytes, [off]), vec_ty.as_pointer()), align=1)
    out = []
    for b in range(PLANES):
        poff = builder.add(builder.mul(nbytes, ir.Constant(off.type, b)), off)     # plane rows are nbytes apart
        plane = builder.load(builder.bitcast(builder.gep(pbytes, [poff]), vec_ty.as_pointer()), align=1)
        out.append(builder.call(ctpop, [builder.and_(w, plane)]))
    return out


@intrinsic
def popcount_row(typingctx, wrow, planes):
    """uint8 (32*nblk,) one row's blocked bits, uint8 (8, 32*nblk) planes -> int64 sum of q under +1 bits."""
    if not (is_c_array(wrow, types.uint8, 1) and is_c_array(planes, types.uint8, 2)):
        return None
    sig = types.int64(wrow, planes)

    def codegen(context, builder, sig, args):
        wbytes, nbytes = data_pointer(context, builder, sig.args[0], args[0], I8)
        pbytes, _ = data_pointer(context, builder, sig.args[1], args[1], I8)
        n64 = builder.udiv(nbytes, ir.Constant(nbytes.type, 64))                  # 512-weight steps
        accs = [builder.alloca(V8xI64) for _ in range(PLANES)]
        for a in accs:
            builder.store(ir.Constant(V8xI64, None), a)
        with counted_loop(builder, n64) as i:
            counts = _plane_popcounts(builder, V8xI64, wbytes, pbytes, nbytes, builder.mul(i, ir.Constant(i.type, 64)))
            for a, n in zip(accs, counts):
                builder.store(builder.add(builder.load(a), n), a)
        total = _weighted(builder, [builder.load(a) for a in accs])               # 8 x i64
        tail = builder.alloca(V4xI64)                                              # an odd last block
        builder.store(ir.Constant(V4xI64, None), tail)
        off = builder.mul(n64, ir.Constant(n64.type, 64))
        with builder.if_then(builder.icmp_unsigned("<", off, nbytes)):
            builder.store(_weighted(builder, _plane_popcounts(builder, V4xI64, wbytes, pbytes, nbytes, off)), tail)
        wide = builder.shuffle_vector(builder.load(tail), ir.Constant(V4xI64, None),
                                      ir.Constant(ir.VectorType(I32, 8), list(range(8))))
        return hsum(builder, builder.add(total, wide))

    return sig, codegen


@numba.njit(cache=True)
def pack_planes(q, planes):
    # q (256*nblk,) int8 -> planes (8, 32*nblk) uint8, blocked like the weights (v4's layout)
    _planes(q, planes)


@numba.njit(cache=True, parallel=True)
def _matvec(bits, alpha, beta, x, y):
    # bits (out, 32*nblk) uint8; alpha, beta, x (in,) float32 -> y (out,) float32
    q = np.empty(8 * bits.shape[1], np.int8)
    scale, qsum, bx = quantize_int8(alpha, beta, x, q)
    planes = np.empty((PLANES, bits.shape[1]), np.uint8)
    pack_planes(q, planes)
    for o in numba.prange(bits.shape[0]):
        y[o] = scale * np.float32(2 * popcount_row(bits[o], planes) - qsum) + bx


def matvec_vpopcnt_int8(packed: PackedSigns, alpha, beta, x) -> np.ndarray:
    """x (in,) float32 -> y (out,) float32 with int8-rounded alpha * x (error bound: act_int8). Any CPU;
    `vpopcntq` on zmm where it has AVX512_VPOPCNTDQ."""
    y = np.empty(packed.out_features, np.float32)
    _matvec(packed.bits, np.ascontiguousarray(alpha, np.float32).reshape(-1),
            np.ascontiguousarray(beta, np.float32).reshape(-1), np.ascontiguousarray(x, np.float32), y)
    return y
