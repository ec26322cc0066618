"""v13: batch-1 int8 on the blocked bits, 64 signs per mask register: a masked move, then `vpdpbusd`.

v10 turns bits into byte masks with a shift and an `and` per bit plane (8 shifts and 8 ands on 2
ports for 256 weights) before each `vpdpbusd`. AVX-512 can use the bits as they are: 64 bits of a row
loaded into a mask register (`kmovq`) select 64 activation bytes in one zero-masking move
(`vmovdqu8 zmm{k}{z}`), and `vpdpbusd` with a vector of ones sums them in groups of 4 into 16 int32
lanes. Per 64 weights: one mask load, one masked activation load (LLVM folds the load into the masked
move), one `vpdpbusd`: 8 vector instructions per 256 weights where v10 needs 12, and no shift (the
shifts and `vpdpbusd` share a port). A batch-1 product reads every bit once, so it is bound by memory;
the kernel prefetches the bits 2 KB ahead, which halved its time on signs mapped from a file (the
hardware prefetcher stops at 4 KB page boundaries), into every cache level (PREFETCH's LOCALITY).

The activations are read in the order of the bits: in the blocked layout (kernels/bitpack.py) bit i
of the 64-bit word m of block blk is input 256 blk + 32 (i % 8) + 8 m + i // 8, so q is written in
that order as it is quantized (act_int8.quantize_int8_bit_order: the same values as quantize_int8).
The LLVM IR is target-independent (`bitcast i64 to <64 x i1>`, `select`): LLVM emits the kmov and masked move on an
AVX-512 CPU; `vpdpbusd` is the VNNI intrinsic, or its generic-IR twin (v10's `dpbusd512_emulated`)
so the logic is tested on every CPU. Same integers as v5, v8 and v10, bit for bit.

Needs AVX512BW + AVX512_VNNI: kernels.stacked calls it only when kernels.simd.ISA == 'avx512'.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.int8_loops import call_matvec, rows_matvec
from kernels.simd import I8, I32, I64, counted_loop, data_pointer, hsum, is_c_array, splat
from kernels.v10_vnni512_int8 import dpbusd512, dpbusd512_emulated

V64xI1, V64xI8 = ir.VectorType(ir.IntType(1), 64), ir.VectorType(I8, 64)
V16xI32 = ir.VectorType(ir.IntType(32), 16)
WORDS = 4                  # 64-bit words per 256-weight block: one accumulator each
PREFETCH_BYTES = 2048      # software prefetch of the bits this far ahead: without it the kernel waited on
                           # memory (11008x4096 from a mapped file, 2 threads, AVX-512 Xeon: 0.54 ms without,
                           # 0.26 ms at 1-4 KB ahead, 0.31 ms at 8 KB; v10 without prefetch 0.47-0.55 ms)
LOCALITY = 3               # prefetcht0, not prefetchnta: the bits stay in the last-level cache, so with a large
                           # one part of the model is still there at the next token (the 480 MB L3 of the Xeon:
                           # 7B decode 18.0-18.6 against 14.8-15.5 tok/s, 1.3B 58 against 43; docs/runtime.md)


def _make_row(dpbusd):
    @intrinsic
    def plus_qsum_row(typingctx, wrow, q):
        """uint8 (32*nblk,) one row's blocked bits, int8 (256*nblk,) q in bit order -> int32 sum of q
        under the +1 bits."""
        if not (is_c_array(wrow, types.uint8, 1) and is_c_array(q, types.int8, 1)):
            return None
        sig = types.int32(wrow, q)

        def codegen(context, builder, sig, args):
            wp, nbytes = data_pointer(context, builder, sig.args[0], args[0], I64)
            qp, _ = data_pointer(context, builder, sig.args[1], args[1], V64xI8)
            nwords = builder.udiv(nbytes, ir.Constant(nbytes.type, 8))
            nblk = builder.udiv(nwords, ir.Constant(nbytes.type, WORDS))
            accs = [builder.alloca(V16xI32) for _ in range(WORDS)]
            for a in accs:
                builder.store(ir.Constant(V16xI32, None), a)
            ones, zeros = splat(V64xI8, 1), ir.Constant(V64xI8, None)
            prefetch = builder.module.declare_intrinsic(                   # (address, read, locality, data)
                "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [I8.as_pointer(), I32, I32, I32]))
            bytep = builder.bitcast(wp, I8.as_pointer())
            with counted_loop(builder, nblk) as blk:
                ahead = builder.gep(bytep, [builder.add(builder.mul(blk, ir.Constant(blk.type, 8 * WORDS)),
                                                        ir.Constant(blk.type, PREFETCH_BYTES))])
                builder.call(prefetch, [ahead] + [ir.Constant(I32, c) for c in (0, LOCALITY, 1)])   # past the end: harmless
                for m, a in enumerate(accs):       # 4 independent chains: vpdpbusd's latency is 4-5 cycles
                    k = builder.add(builder.mul(blk, ir.Constant(blk.type, WORDS)), ir.Constant(blk.type, m))
                    mask = builder.bitcast(builder.load(builder.gep(wp, [k]), align=1), V64xI1)
                    qv = builder.load(builder.gep(qp, [k]), align=1)
                    picked = builder.select(mask, qv, zeros)                  # q where the sign is +1
                    builder.store(dpbusd(builder, builder.load(a), ones, picked), a)
            total = builder.load(accs[0])
            for a in accs[1:]:
                total = builder.add(total, builder.load(a))
            return hsum(builder, total)

        return sig, codegen

    return plus_qsum_row


plus_qsum_row_kmask, plus_qsum_row_kmask_emulated = _make_row(dpbusd512), _make_row(dpbusd512_emulated)


_matvec = rows_matvec(plus_qsum_row_kmask, bit_order=True)
_matvec_emulated = rows_matvec(plus_qsum_row_kmask_emulated, bit_order=True)


def matvec_kmask_int8(packed, alpha, beta, x, emulated=False) -> np.ndarray:
    """x (in,) float32 -> y (out,) float32, int8 activations. Needs AVX-512 BW + VNNI unless emulated."""
    return call_matvec(_matvec_emulated if emulated else _matvec, packed, alpha, beta, x)
