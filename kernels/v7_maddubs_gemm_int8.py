"""v7: int8 batch kernel (prefill) with AVX2 maddubs: v5's arithmetic, reused across 4 tokens.

Each token is quantized on its own (kernels/act_int8.py). For one row and 4 tokens at a time, a
block of 256 weights is loaded once and its 8 bit planes `(block >> b) & 1` stay in 8 registers;
each token then needs 8 `vpmaddubsw(mask_b, q_t)` with the activations as memory operands, 8 int16
adds and one `vpmaddwd` to int32: about 14 multiply-adds per instruction against 8 for a float32
FMA, and no weight decoding. Tokens go in chunks whose int8 rows fit the 512 KB L2, rows run in
parallel within a chunk. y[t, o] = scale_t * (2 * sum_{j: s_oj=+1} q_tj - sum_j q_tj) + beta . x_t.
Error: the per-token int8 bound of act_int8, token by token.

    python -m kernels.bench --shape 4096x4096 --batch 512
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.bitpack import PackedSigns, product_out
from kernels.int8_loops import TOKENS, rows_matmul, rows_matmul_nib4
from kernels.simd import V8xI32, V16xI16, V32xI8, counted_loop, data_pointer, hsum, is_c_array, splat


@intrinsic
def plus_qsum_row_x4(typingctx, wrow, q, t0):
    """uint8 (32*nblk,) one row's bits, int8 (T, 256*nblk) q, token t0 -> 4 int32 sums of q[t0+i] under +1 bits."""
    if not (is_c_array(wrow, types.uint8, 1) and is_c_array(q, types.int8, 2) and isinstance(t0, types.Integer)):
        return None
    sig = types.UniTuple(types.int32, TOKENS)(wrow, q, t0)

    def codegen(context, builder, sig, args):
        wp, nbytes = data_pointer(context, builder, sig.args[0], args[0], V32xI8)
        qp, _ = data_pointer(context, builder, sig.args[1], args[1], V32xI8)
        nblk = builder.udiv(nbytes, ir.Constant(nbytes.type, 32))
        t0v = builder.sext(args[2], nblk.type) if args[2].type.width < 64 else args[2]
        module = builder.module
        maddubs = module.declare_intrinsic(
            "llvm.x86.avx2.pmadd.ub.sw", fnty=ir.FunctionType(V16xI16, [V32xI8, V32xI8]))
        maddwd = module.declare_intrinsic(
            "llvm.x86.avx2.pmadd.wd", fnty=ir.FunctionType(V8xI32, [V16xI16, V16xI16]))
        accs = [builder.alloca(V8xI32) for _ in range(TOKENS)]
        for a in accs:
            builder.store(ir.Constant(V8xI32, None), a)
        row_vecs = builder.mul(nblk, ir.Constant(nblk.type, 8))          # 32-byte vectors per q row
        with counted_loop(builder, nblk) as blk:
            block = builder.load(builder.gep(wp, [blk]), align=1)        # 256 signs of this row
            masks = [builder.and_(builder.lshr(block, splat(V32xI8, b)), splat(V32xI8, 1)) for b in range(8)]
            for i in range(TOKENS):
                row = builder.mul(builder.add(t0v, ir.Constant(nblk.type, i)), row_vecs)
                base = builder.add(row, builder.mul(blk, ir.Constant(blk.type, 8)))
                sum16 = ir.Constant(V16xI16, None)
                for b in range(8):
                    qv = builder.load(builder.gep(qp, [builder.add(base, ir.Constant(blk.type, b))]), align=1)
                    sum16 = builder.add(sum16, builder.call(maddubs, [masks[b], qv]))
                wide = builder.call(maddwd, [sum16, splat(V16xI16, 1)])
                builder.store(builder.add(builder.load(accs[i]), wide), accs[i])
        sums = [hsum(builder, builder.load(a)) for a in accs]
        return context.make_tuple(builder, sig.return_type, sums)

    return sig, codegen


_matmul = rows_matmul(plus_qsum_row_x4)
_matmul_nib4 = rows_matmul_nib4(plus_qsum_row_x4)


def matmul_maddubs_int8(packed: PackedSigns, alpha, beta, x, out=None) -> np.ndarray:
    """x (B, in) float32 -> y (B, out) float32 (into `out` if given) with per-token int8 activations. Needs
    AVX2. Reads the blocked bits, or where packed holds nib4 tiles alone, the tiles (each rewritten in a
    core's cache)."""
    x = np.ascontiguousarray(x, np.float32)
    y = product_out(out, x.shape[0], packed.out_features)
    alpha = np.ascontiguousarray(alpha, np.float32).reshape(-1)
    beta = np.ascontiguousarray(beta, np.float32).reshape(-1)
    if packed.bits is None:
        _matmul_nib4(np.ascontiguousarray(packed.nib4), packed.out_features, alpha, beta, x, y)
    else:
        _matmul(packed.bits, alpha, beta, x, y)
    return y

