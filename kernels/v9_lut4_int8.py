"""v9: int8 batch-1 kernel by 16-entry table lookup with AVX2 `vpshufb`, exact in int16.

v5 spends 4 instructions per 32 weights (shift, and, vpmaddubsw, add): on Zen 3 that is about 8.5
cycles per 256 weights, the compute bound it runs at. T-MAC (arXiv 2407.00088) looks weights up
instead: for every 4 inputs (a group) a 16-entry table holds each signed sum
T_g[i] = sum_t (+q_4g+t if bit t of i else -q_4g+t), |T| <= 4 * 127 = 508, and `vpshufb` looks up
16 rows' nibbles in one 128-bit lane. T-MAC rounds its tables to int8; here each table is split
into its low and high bytes (two lookups), and `vpunpck{l,h}bw` of the two results is the exact
int16 value, so nothing is rounded beyond the activations' own int8 (act_int8).

The nib4 layout (kernels/bitpack.py) puts 32 rows x 2 groups in one 32-byte vector: the low
nibbles are rows 0-15, the high nibbles rows 16-31, lane 0 group 2p, lane 1 group 2p + 1. Per
vector (256 weights): and, shift, and, 4 vpshufb, 4 vpunpck, 4 int16 adds: 15 instructions where
v5 needs 34. int16 sums are widened to int32 every 64 vectors (64 * 508 < 2^15).
Tables are rebuilt per call from the token's q: 32 bytes per 4 inputs (32 KB for 4096 inputs, L1).

    y_o = scale * sum_g T_g[nibble(o, g)] + beta . x          (scale, q: act_int8)

    python -m kernels.bench --shape 11008x4096 --batch 1
"""
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.act_int8 import quantize_int8
from kernels.bitpack import NIB_ROWS, PackedSigns
from kernels.simd import I8, I16, I32, V8xI32, V16xI16, V32xI8, counted_loop, data_pointer, is_c_array, splat

WIDEN_EVERY = 64          # vectors per int16 run: each lane adds one |T| <= 508 per vector
PREFETCH_VECTORS = 128    # prefetch the bits 4 KB ahead (the next tile's, past a tile's end): the
                          # kernel is near its compute bound, so the hardware prefetcher alone fell
                          # behind DRAM (7B decode, 2 threads, Zen 3: body 49-54 -> 45-46 ms)
V8xI8, V8xI16 = ir.VectorType(I8, 8), ir.VectorType(I16, 8)
# sign of input t in entry i: +1 where bit t of i is set (rows of the 16-entry tables)
SIGNS = [[1 if (i >> t) & 1 else -1 for i in range(16)] for t in range(4)]


@intrinsic
def _tables(typingctx, q, tlo, thi):
    """int8 (8P,) q -> uint8 (P, 32) tlo, thi: for each 8 inputs, two groups' 16 entries, split in bytes."""
    if not (is_c_array(q, types.int8, 1) and is_c_array(tlo, types.uint8, 2) and is_c_array(thi, types.uint8, 2)):
        return None
    sig = types.void(q, tlo, thi)

    def codegen(context, builder, sig, args):
        qp, _ = data_pointer(context, builder, sig.args[0], args[0], V8xI8)
        lp, nitems = data_pointer(context, builder, sig.args[1], args[1], V32xI8)
        hp, _ = data_pointer(context, builder, sig.args[2], args[2], V32xI8)
        signs = [ir.Constant(V16xI16, row) for row in SIGNS]
        even = ir.Constant(ir.VectorType(I32, 32), list(range(0, 64, 2)))              # low bytes of both
        odd = ir.Constant(ir.VectorType(I32, 32), list(range(1, 64, 2)))               # high bytes
        with counted_loop(builder, builder.udiv(nitems, ir.Constant(nitems.type, 32))) as p:
            q16 = builder.sext(builder.load(builder.gep(qp, [p]), align=1), V8xI16)  # 2 groups of 4
            tables = []
            for lane in range(2):                                                  # T = sum_t S_t * q_t
                t = ir.Constant(V16xI16, None)
                for k, s in enumerate(signs):
                    qk = builder.shuffle_vector(q16, q16, ir.Constant(ir.VectorType(I32, 16), [4 * lane + k] * 16))
                    t = builder.add(t, builder.mul(qk, s))
                tables.append(builder.bitcast(t, V32xI8))
            builder.store(builder.shuffle_vector(*tables, even), builder.gep(lp, [p]), align=1)
            builder.store(builder.shuffle_vector(*tables, odd), builder.gep(hp, [p]), align=1)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True)
def lut4_tables(q, tlo, thi):
    # q (8P,) int8 -> tlo, thi (P, 32) uint8: byte 16*l + i of row p = low / high byte of T_{2p+l}[i]
    _tables(q, tlo, thi)


@numba.njit(cache=True)
def quantized_tables(alpha, beta, x, q, tlo, thi):
    # alpha, beta, x (in,) float32 -> q (8P,) int8 (act_int8) and its tables tlo, thi (P, 32);
    # returns (scale, beta . x)
    scale, _, bx = quantize_int8(alpha, beta, x, q)
    lut4_tables(q, tlo, thi)
    return scale, bx


def _unpack(builder, a, b, high):
    """vpunpck{l,h}bw per 128-bit lane: bytes of a and b interleaved -> 16 x i16 (a low, b high)."""
    half = 8 if high else 0
    idx = [j for lane in (0, 16) for i in range(8) for j in (lane + half + i, 32 + lane + half + i)]
    return builder.bitcast(builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, 32), idx)), V16xI16)


def _widen(builder, acc16, acc32):
    """acc32 (8 x i32) + lane 0 + lane 1 of acc16 (16 x i16, the same 8 rows, even and odd groups)."""
    for lane in (0, 8):
        part = builder.shuffle_vector(acc16, acc16, ir.Constant(V8xI32, list(range(lane, lane + 8))))
        acc32 = builder.add(acc32, builder.sext(part, V8xI32))
    return acc32


@intrinsic
def lut4_tile(typingctx, wtile, tlo, thi, out):
    """uint8 (P, 32) one tile's nib4 bytes, uint8 (P, 32) tables -> writes int32 out (32,): row sums."""
    if not (is_c_array(wtile, types.uint8, 2) and is_c_array(tlo, types.uint8, 2)
            and is_c_array(thi, types.uint8, 2) and is_c_array(out, types.int32, 1)):
        return None
    sig = types.void(wtile, tlo, thi, out)

    def codegen(context, builder, sig, args):
        wp, nitems = data_pointer(context, builder, sig.args[0], args[0], V32xI8)
        lp, _ = data_pointer(context, builder, sig.args[1], args[1], V32xI8)
        hp, _ = data_pointer(context, builder, sig.args[2], args[2], V32xI8)
        op, _ = data_pointer(context, builder, sig.args[3], args[3], V8xI32)
        n = builder.udiv(nitems, ir.Constant(nitems.type, 32))                 # vectors P
        pshufb = builder.module.declare_intrinsic(
            "llvm.x86.avx2.pshuf.b", fnty=ir.FunctionType(V32xI8, [V32xI8, V32xI8]))
        nib_mask = splat(V32xI8, 15)
        prefetch = builder.module.declare_intrinsic(                   # (address, read, no locality, data)
            "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [I8.as_pointer(), I32, I32, I32]))
        acc32 = [builder.alloca(V8xI32) for _ in range(4)]                     # rows 8k .. 8k+7
        for a in acc32:
            builder.store(ir.Constant(V8xI32, None), a)
        step = ir.Constant(n.type, WIDEN_EVERY)
        runs = builder.udiv(builder.add(n, ir.Constant(n.type, WIDEN_EVERY - 1)), step)
        with counted_loop(builder, runs) as run:
            start = builder.mul(run, step)
            left = builder.sub(n, start)
            count = builder.select(builder.icmp_unsigned("<", left, step), left, step)
            acc16 = [builder.alloca(V16xI16) for _ in range(4)]
            for a in acc16:
                builder.store(ir.Constant(V16xI16, None), a)
            with counted_loop(builder, count) as i:
                p = builder.add(start, i)
                ahead = builder.gep(wp, [builder.add(p, ir.Constant(p.type, PREFETCH_VECTORS))])
                builder.call(prefetch, [builder.bitcast(ahead, I8.as_pointer())] + [ir.Constant(I32, c) for c in (0, 0, 1)])
                v = builder.load(builder.gep(wp, [p]), align=1)
                lo_idx = builder.and_(v, nib_mask)                                              # rows 0-15
                hi_idx = builder.and_(builder.bitcast(
                    builder.lshr(builder.bitcast(v, V16xI16), splat(V16xI16, 4)), V32xI8), nib_mask)  # rows 16-31
                tl = builder.load(builder.gep(lp, [p]), align=1)
                th = builder.load(builder.gep(hp, [p]), align=1)
                for k, idx in enumerate((lo_idx, hi_idx)):
                    lo = builder.call(pshufb, [tl, idx])
                    hi = builder.call(pshufb, [th, idx])
                    for h, high in enumerate((False, True)):
                        a = acc16[2 * k + h]
                        builder.store(builder.add(builder.load(a), _unpack(builder, lo, hi, high)), a)
            for a16, a32 in zip(acc16, acc32):
                builder.store(_widen(builder, builder.load(a16), builder.load(a32)), a32)
        for k, a in enumerate(acc32):
            builder.store(builder.load(a), builder.gep(op, [ir.Constant(I32, k)]), align=4)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, parallel=True)
def _matvec(nib, alpha, beta, x, y):
    # nib (tiles, P, 32) uint8; alpha, beta, x (in,) float32 -> y (out,) float32
    q = np.empty(8 * nib.shape[1], np.int8)                                # (4 * 2P,), zero-padded
    tlo = np.empty((nib.shape[1], 32), np.uint8)
    thi = np.empty((nib.shape[1], 32), np.uint8)
    scale, bx = quantized_tables(alpha, beta, x, q, tlo, thi)
    n_out = y.shape[0]
    for t in numba.prange(nib.shape[0]):
        sums = np.empty(NIB_ROWS, np.int32)
        lut4_tile(nib[t], tlo, thi, sums)
        for r in range(min(NIB_ROWS, n_out - t * NIB_ROWS)):
            y[t * NIB_ROWS + r] = scale * np.float32(sums[r]) + bx


def matvec_lut4_int8(packed: PackedSigns, alpha, beta, x) -> np.ndarray:
    """x (in,) float32 -> y (out,) float32 with int8-rounded alpha * x. Needs AVX2 and packed.nib4."""
    if packed.nib4 is None:
        raise ValueError("v9 needs the nib4 layout: PackedSigns.with_nib4()")
    y = np.empty(packed.out_features, np.float32)
    _matvec(packed.nib4, np.ascontiguousarray(alpha, np.float32).reshape(-1),
            np.ascontiguousarray(beta, np.float32).reshape(-1), np.ascontiguousarray(x, np.float32), y)
    return y
