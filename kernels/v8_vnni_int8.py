"""v8: int8 kernels with AVX-512 VNNI `vpdpbusd`: v5 (batch 1) and v7 (batch) with one instruction
where AVX2 needs three.

Same sum as v5: for a block of 256 weights, `(block >> b) & 1` is the 0/1 mask of inputs 32b..32b+31
(blocked layout, kernels/bitpack.py) and the row's +1-sum of int8 activations is
sum_b dot(mask_b, q[32b : 32b+32]). AVX2 does each plane with vpmaddubsw (u8 x s8 -> pairs in
int16), an int16 add and, per block, vpmaddwd to widen; `vpdpbusd acc, mask, q` (AVX512_VNNI with
AVX512VL, 256-bit form) multiplies 32 unsigned bytes by 32 signed bytes and adds each group of 4
straight into 8 int32 lanes. Masks are 0/1 and |q| <= 127, so nothing saturates and the integer
result equals v5's bit for bit; y = scale * (2 * sum - sum q) + beta . x (error: act_int8).

The instruction exists only on AVX-512 VNNI CPUs (Ice Lake+, Zen 4+): kernels.dispatch picks v8 only
when kernels.simd.ISA == 'avx512' (TINYFBI_ISA=avx2 forces v5/v7), and compiling it elsewhere would
fail in LLVM, so nothing here compiles at import. For testing anywhere, `dpbusd_emulated` builds the
same loop with vpdpbusd written in generic IR (widen, multiply, add groups of 4): the tests run that
twin against v1 on every machine, check that the real one assembles to `vpdpbusd` for an AVX-512
target, and run the real one against v1 where the CPU has it.

    TINYFBI_ISA=avx2 python -m kernels.bench --shape 11008x4096 --batch 1   # compare with v5
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.bitpack import PackedSigns
from kernels.int8_loops import TOKENS, call_matmul, call_matvec, rows_matmul, rows_matvec
from kernels.simd import I32, V8xI32, V32xI8, counted_loop, data_pointer, hsum, is_c_array, splat

V32xI32 = ir.VectorType(I32, 32)


def dpbusd_avx512(builder, acc, u8, s8):
    """acc (8 x i32) + sum over groups of 4 of u8 * s8 (32 x i8 each): the vpdpbusd instruction."""
    fn = builder.module.declare_intrinsic(
        "llvm.x86.avx512.vpdpbusd.256", fnty=ir.FunctionType(V8xI32, [V8xI32, V32xI8, V32xI8]))
    return builder.call(fn, [acc, u8, s8])


def dpbusd_emulated(builder, acc, u8, s8):
    """The same arithmetic in target-independent IR (for testing on CPUs without VNNI)."""
    prod = builder.mul(builder.zext(u8, V32xI32), builder.sext(s8, V32xI32))      # 32 x i32
    for k in range(4):                                                              # lane i += prod[4i + k]
        part = builder.shuffle_vector(prod, prod, ir.Constant(V8xI32, [4 * i + k for i in range(8)]))
        acc = builder.add(acc, part)
    return acc


def _row_sums(builder, dpbusd, wp, qp, nblk, q_bases):
    """IR: for each q row base (in 32-byte vectors), the int32 sum of q under this row's +1 bits."""
    accs = [builder.alloca(V8xI32) for _ in q_bases]
    for a in accs:
        builder.store(ir.Constant(V8xI32, None), a)
    with counted_loop(builder, nblk) as blk:
        block = builder.load(builder.gep(wp, [blk]), align=1)                       # 256 signs
        masks = [builder.and_(builder.lshr(block, splat(V32xI8, b)), splat(V32xI8, 1)) for b in range(8)]
        for a, q_base in zip(accs, q_bases):
            base = builder.add(q_base, builder.mul(blk, ir.Constant(blk.type, 8)))
            acc = builder.load(a)
            for b in range(8):
                qv = builder.load(builder.gep(qp, [builder.add(base, ir.Constant(blk.type, b))]), align=1)
                acc = dpbusd(builder, acc, masks[b], qv)
            builder.store(acc, a)
    return [hsum(builder, builder.load(a)) for a in accs]


def _make_row(dpbusd):
    @intrinsic
    def plus_qsum_row(typingctx, wrow, q):
        """uint8 (32*nblk,) one row's blocked bits, int8 (256*nblk,) q -> int32 sum of q under +1 bits."""
        if not (is_c_array(wrow, types.uint8, 1) and is_c_array(q, types.int8, 1)):
            return None
        sig = types.int32(wrow, q)

        def codegen(context, builder, sig, args):
            wp, nbytes = data_pointer(context, builder, sig.args[0], args[0], V32xI8)
            qp, _ = data_pointer(context, builder, sig.args[1], args[1], V32xI8)
            nblk = builder.udiv(nbytes, ir.Constant(nbytes.type, 32))
            return _row_sums(builder, dpbusd, wp, qp, nblk, [ir.Constant(nblk.type, 0)])[0]

        return sig, codegen

    return plus_qsum_row


def _make_row_x4(dpbusd):
    @intrinsic
    def plus_qsum_row_x4(typingctx, wrow, q, t0):
        """uint8 (32*nblk,) one row's bits, int8 (T, 256*nblk) q, token t0 -> 4 int32 sums (tokens t0..t0+3)."""
        if not (is_c_array(wrow, types.uint8, 1) and is_c_array(q, types.int8, 2) and isinstance(t0, types.Integer)):
            return None
        sig = types.UniTuple(types.int32, TOKENS)(wrow, q, t0)

        def codegen(context, builder, sig, args):
            wp, nbytes = data_pointer(context, builder, sig.args[0], args[0], V32xI8)
            qp, _ = data_pointer(context, builder, sig.args[1], args[1], V32xI8)
            nblk = builder.udiv(nbytes, ir.Constant(nbytes.type, 32))
            t0v = builder.sext(args[2], nblk.type) if args[2].type.width < 64 else args[2]
            row_vecs = builder.mul(nblk, ir.Constant(nblk.type, 8))                  # 32-byte vectors per q row
            bases = [builder.mul(builder.add(t0v, ir.Constant(nblk.type, i)), row_vecs) for i in range(TOKENS)]
            sums = _row_sums(builder, dpbusd, wp, qp, nblk, bases)
            return context.make_tuple(builder, sig.return_type, sums)

        return sig, codegen

    return plus_qsum_row_x4


plus_qsum_row_vnni, plus_qsum_row_x4_vnni = _make_row(dpbusd_avx512), _make_row_x4(dpbusd_avx512)
plus_qsum_row_emulated, plus_qsum_row_x4_emulated = _make_row(dpbusd_emulated), _make_row_x4(dpbusd_emulated)


_matvec, _matvec_emulated = rows_matvec(plus_qsum_row_vnni), rows_matvec(plus_qsum_row_emulated)
_matmul, _matmul_emulated = rows_matmul(plus_qsum_row_x4_vnni), rows_matmul(plus_qsum_row_x4_emulated)


def matvec_vnni_int8(packed: PackedSigns, alpha, beta, x, emulated=False) -> np.ndarray:
    """x (in,) float32 -> y (out,) float32, int8 activations. Needs AVX-512 VNNI unless emulated."""
    return call_matvec(_matvec_emulated if emulated else _matvec, packed, alpha, beta, x)


def matmul_vnni_int8(packed: PackedSigns, alpha, beta, x, emulated=False, out=None) -> np.ndarray:
    """x (B, in) float32 -> y (B, out) float32, per-token int8. Needs AVX-512 VNNI unless emulated."""
    return call_matmul(_matmul_emulated if emulated else _matmul, packed, alpha, beta, x, out)
