"""v5: int8 batch-1 kernel with AVX2 maddubs, the route of llama.cpp's TQ2_0, on +-1 weights.

Same maths as v4 (sum_{j in P} q_j, then dot = 2 * that - sum q), but no bit planes: the blocked
layout (kernels/bitpack.py) makes `(block >> b) & 1` the 0/1 mask of 32 consecutive inputs, one per
byte, and `vpmaddubsw(mask, q)` multiplies those 32 unsigned bytes by 32 int8 activations and adds
neighbours into 16 int16 lanes. Eight planes add up in int16 (8 * 2 * 127 fits), `vpmaddwd` with
ones widens to int32 once per 256 weights. Per 256 weights: 1 load of bits, 8 x (shift, and,
maddubs, add), no decode to +-1 bytes, no multiply by -1. Error: see act_int8.

    python -m kernels.bench --shape 11008x4096 --batch 1
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.bitpack import PackedSigns
from kernels.int8_loops import rows_matvec
from kernels.simd import V8xI32, V16xI16, V32xI8, counted_loop, data_pointer, hsum, is_c_array, splat


@intrinsic
def plus_qsum_row(typingctx, wrow, q):
    """uint8 (32*nblk,) blocked bits of one row, int8 (256*nblk,) q -> int32 sum of q under +1 bits."""
    if not (is_c_array(wrow, types.uint8, 1) and is_c_array(q, types.int8, 1)):
        return None
    sig = types.int32(wrow, q)

    def codegen(context, builder, sig, args):
        wp, nbytes = data_pointer(context, builder, sig.args[0], args[0], V32xI8)
        qp, _ = data_pointer(context, builder, sig.args[1], args[1], V32xI8)
        nblk = builder.udiv(nbytes, ir.Constant(nbytes.type, 32))
        module = builder.module
        maddubs = module.declare_intrinsic(
            "llvm.x86.avx2.pmadd.ub.sw", fnty=ir.FunctionType(V16xI16, [V32xI8, V32xI8]))
        maddwd = module.declare_intrinsic(
            "llvm.x86.avx2.pmadd.wd", fnty=ir.FunctionType(V8xI32, [V16xI16, V16xI16]))
        acc = builder.alloca(V8xI32)
        builder.store(ir.Constant(V8xI32, None), acc)
        with counted_loop(builder, nblk) as blk:
            block = builder.load(builder.gep(wp, [blk]), align=1)        # 32 bytes = 256 signs
            base = builder.mul(blk, ir.Constant(blk.type, 8))            # q rows of 32 per block
            sum16 = ir.Constant(V16xI16, None)
            for b in range(8):
                mask = builder.and_(builder.lshr(block, splat(V32xI8, b)), splat(V32xI8, 1))
                qv = builder.load(builder.gep(qp, [builder.add(base, ir.Constant(blk.type, b))]), align=1)
                sum16 = builder.add(sum16, builder.call(maddubs, [mask, qv]))
            wide = builder.call(maddwd, [sum16, splat(V16xI16, 1)])
            builder.store(builder.add(builder.load(acc), wide), acc)
        return hsum(builder, builder.load(acc))

    return sig, codegen


_matvec = rows_matvec(plus_qsum_row)


def matvec_maddubs_int8(packed: PackedSigns, alpha, beta, x) -> np.ndarray:
    """x (in,) float32 -> y (out,) float32 with int8-rounded alpha * x. Needs AVX2."""
    y = np.empty(packed.out_features, np.float32)
    _matvec(packed.bits, alpha, beta, x, y)
    return y
