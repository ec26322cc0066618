"""v10: v8 with the 512-bit form of AVX-512 VNNI `vpdpbusd`: two bit planes per instruction.

v8 runs one `vpdpbusd` (256-bit) per bit plane: 8 per block of 256 weights, each after a shift and
an and. The 512-bit form multiplies 64 unsigned bytes by 64 signed bytes, so here each instruction
takes two planes of the same block. The block's 32 bytes are loaded once into both halves of a zmm
register (`vbroadcasti64x4`), and one `vpsrlvw` shifts the low half's 16-bit lanes by 2k and the
high half's by 2k + 1; `& 1` per byte then gives the masks of planes 2k (bytes 0-31) and 2k + 1
(bytes 32-63), and the activations those planes multiply, q[256 blk + 64k : 256 blk + 64k + 64],
are contiguous in the blocked order (kernels/bitpack.py: plane b of a block is inputs 32b..32b+31).
A 16-bit shift moves the high byte's bits into the low byte's top, never into bit 0, so bit 0 of
each byte is its own bit b. Per block: 1 load, 4 x (vpsrlvw, and, vpdpbusd) = 13 instructions
where v8 needs 25; with 4 tokens per pass (the batch kernel) the 4 masks stay in registers and each
token adds 4 `vpdpbusd` per block (v8: 8), into 16 independent accumulators (4 per token). Same integers as v5 and v8, bit for bit (0/1 masks,
|q| <= 127: nothing saturates).

Needs AVX512F + AVX512BW (`vpsrlvw` on zmm) + AVX512_VNNI: kernels.dispatch calls it only when
kernels.simd.ISA == 'avx512', and nothing here compiles at import (LLVM cannot compile it for a CPU
without them). Intel tunings (Ice Lake to Sapphire Rapids) prefer 256-bit vectors, but that steers
only LLVM's auto-vectorizer: IR written in 512-bit vectors stays zmm (a function without clang's
"min-legal-vector-width" attribute may use all of them; checked in the assembly on a Sapphire
Rapids-class Xeon that LLVM calls rocketlake). `dpbusd512_emulated` builds the same
loop with vpdpbusd in generic IR (widen, multiply, add groups of 4), so the logic is tested on
every CPU.

    TINYFBI_ISA=avx2 python -m kernels.bench ...   # v5/v7 on the same machine
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.bitpack import PackedSigns
from kernels.int8_loops import TOKENS, call_matmul, call_matvec, rows_matmul, rows_matvec
from kernels.simd import I8, I16, I32, V32xI8, counted_loop, data_pointer, hsum, is_c_array, splat

V64xI8, V32xI16, V16xI32 = ir.VectorType(I8, 64), ir.VectorType(I16, 32), ir.VectorType(I32, 16)
V64xI32 = ir.VectorType(I32, 64)
PLANE_PAIRS = 4            # zmm per block: planes (0, 1), (2, 3), (4, 5), (6, 7)
# vpsrlvw counts: the low 16 words (bytes 0-31) shift by 2k, the high 16 (bytes 32-63) by 2k + 1
SHIFTS = [[2 * k] * 16 + [2 * k + 1] * 16 for k in range(PLANE_PAIRS)]


def dpbusd512(builder, acc, u8, s8):
    """acc (16 x i32) + sum over groups of 4 of u8 * s8 (64 x i8 each): the 512-bit vpdpbusd."""
    fn = builder.module.declare_intrinsic(
        "llvm.x86.avx512.vpdpbusd.512", fnty=ir.FunctionType(V16xI32, [V16xI32, V64xI8, V64xI8]))
    return builder.call(fn, [acc, u8, s8])


def dpbusd512_emulated(builder, acc, u8, s8):
    """The same arithmetic in target-independent IR (for testing on CPUs without VNNI)."""
    prod = builder.mul(builder.zext(u8, V64xI32), builder.sext(s8, V64xI32))      # 64 x i32
    for k in range(4):                                                              # lane i += prod[4i + k]
        part = builder.shuffle_vector(prod, prod, ir.Constant(V16xI32, [4 * i + k for i in range(16)]))
        acc = builder.add(acc, part)
    return acc


def _row_sums(builder, dpbusd, wp, qp, nblk, q_bases):
    """IR: for each q row base (in 64-byte vectors), the int32 sum of q under this row's +1 bits.
    One accumulator per plane pair and token: each vpdpbusd waits only on its own from the previous
    block (its latency is 4-5 cycles; a chain of 4 per block would take longer than the block's
    instructions do)."""
    accs = [[builder.alloca(V16xI32) for _ in range(PLANE_PAIRS)] for _ in q_bases]
    for a in (a for row in accs for a in row):
        builder.store(ir.Constant(V16xI32, None), a)
    both_halves = ir.Constant(V64xI32, list(range(32)) * 2)
    with counted_loop(builder, nblk) as blk:
        block = builder.load(builder.gep(wp, [blk]), align=1)                       # 256 signs
        words = builder.bitcast(builder.shuffle_vector(block, block, both_halves), V32xI16)
        masks = [builder.and_(builder.bitcast(builder.lshr(words, ir.Constant(V32xI16, s)), V64xI8),
                              splat(V64xI8, 1)) for s in SHIFTS]                    # planes 2k | 2k+1
        for row, q_base in zip(accs, q_bases):
            base = builder.add(q_base, builder.mul(blk, ir.Constant(blk.type, PLANE_PAIRS)))
            for k, a in enumerate(row):
                qv = builder.load(builder.gep(qp, [builder.add(base, ir.Constant(blk.type, k))]), align=1)
                builder.store(dpbusd(builder, builder.load(a), masks[k], qv), a)
    sums = []
    for row in accs:
        total = builder.load(row[0])
        for a in row[1:]:
            total = builder.add(total, builder.load(a))
        sums.append(hsum(builder, total))
    return sums


def _make_row(dpbusd):
    @intrinsic
    def plus_qsum_row(typingctx, wrow, q):
        """uint8 (32*nblk,) one row's blocked bits, int8 (256*nblk,) q -> int32 sum of q under +1 bits."""
        if not (is_c_array(wrow, types.uint8, 1) and is_c_array(q, types.int8, 1)):
            return None
        sig = types.int32(wrow, q)

        def codegen(context, builder, sig, args):
            wp, nbytes = data_pointer(context, builder, sig.args[0], args[0], V32xI8)
            qp, _ = data_pointer(context, builder, sig.args[1], args[1], V64xI8)
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
            qp, _ = data_pointer(context, builder, sig.args[1], args[1], V64xI8)
            nblk = builder.udiv(nbytes, ir.Constant(nbytes.type, 32))
            t0v = builder.sext(args[2], nblk.type) if args[2].type.width < 64 else args[2]
            row_vecs = builder.mul(nblk, ir.Constant(nblk.type, PLANE_PAIRS))        # 64-byte vectors per q row
            bases = [builder.mul(builder.add(t0v, ir.Constant(nblk.type, i)), row_vecs) for i in range(TOKENS)]
            sums = _row_sums(builder, dpbusd, wp, qp, nblk, bases)
            return context.make_tuple(builder, sig.return_type, sums)

        return sig, codegen

    return plus_qsum_row_x4


plus_qsum_row_vnni512, plus_qsum_row_x4_vnni512 = _make_row(dpbusd512), _make_row_x4(dpbusd512)
plus_qsum_row_emulated, plus_qsum_row_x4_emulated = _make_row(dpbusd512_emulated), _make_row_x4(dpbusd512_emulated)


_matvec, _matvec_emulated = rows_matvec(plus_qsum_row_vnni512), rows_matvec(plus_qsum_row_emulated)
_matmul, _matmul_emulated = rows_matmul(plus_qsum_row_x4_vnni512), rows_matmul(plus_qsum_row_x4_emulated)


def matvec_vnni512_int8(packed: PackedSigns, alpha, beta, x, emulated=False) -> np.ndarray:
    """x (in,) float32 -> y (out,) float32, int8 activations. Needs AVX-512 BW + VNNI unless emulated."""
    return call_matvec(_matvec_emulated if emulated else _matvec, packed, alpha, beta, x)


def matmul_vnni512_int8(packed: PackedSigns, alpha, beta, x, emulated=False, out=None) -> np.ndarray:
    """x (B, in) float32 -> y (B, out) float32, per-token int8. Needs AVX-512 BW + VNNI unless emulated."""
    return call_matmul(_matmul_emulated if emulated else _matmul, packed, alpha, beta, x, out)
