"""v11: v9 with 64-byte `vpshufb` (AVX512BW): four groups' 16-entry tables per instruction.

v9 looks up 16 rows' nibbles per 128-bit lane with AVX2 `vpshufb`: one 32-byte vector of the nib4
layout is 32 rows x 2 groups of 4 inputs, and each lookup needs its group's table in the same lane.
The nib4 layout (kernels/bitpack.py) stores a tile's vectors p, p + 1 next to each other, and v9's
tables (kernels/v9_lut4_int8.py: low and high bytes, group 2p + l in lane l of row p) likewise, so
64 consecutive bytes of either are 32 rows x 4 groups with each group's table in its own lane: the
512-bit `vpshufb` takes them as they are. No new layout, no new tables, the same integers as v9
(and v5) bit for bit. Per 64 bytes (512 weights): and, shift, and, 2 table loads, 4 `vpshufb`,
4 `vpunpck{l,h}bw`, 4 int16 adds: 17 instructions where v9 needs 30; int16 sums are widened to
int32 every 64 iterations (64 * 508 < 2^15), adding the four lanes' groups.

Whether that pays depends on the core: Intel runs 512-bit shuffles on one port (p5) and 256-bit
ones on two (p1, p5), so the shuffles take the same cycles either way there; Zen 4 splits zmm in
two halves and Zen 5 runs them natively. kernels.dispatch uses v11 only where it was measured
faster (see kernels/README.md).

`vpshufb` needs AVX512BW on zmm; nothing here compiles at import. `lut4_tile_512_emulated` runs the
same loop with the lookup written in generic IR (16 compares and selects per 64 bytes), so the
logic is tested on every CPU.

    y_o = scale * sum_g T_g[nibble(o, g)] + beta . x          (scale, q: act_int8; T: v9's tables)
"""
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.bitpack import NIB_ROWS, PackedSigns
from kernels.simd import I8, I16, I32, V8xI32, counted_loop, data_pointer, is_c_array, splat
from kernels.v9_lut4_int8 import PREFETCH_VECTORS, WIDEN_EVERY, quantized_tables

V64xI8, V32xI16, V16xI32 = ir.VectorType(I8, 64), ir.VectorType(I16, 32), ir.VectorType(I32, 16)
LANES = 4                                    # 128-bit lanes per zmm: groups 4i .. 4i + 3 of a tile


def pshufb512(builder, table, idx):
    """Per 128-bit lane, byte i = table[lane base + (idx[i] & 15)] (idx < 128): AVX512BW vpshufb."""
    fn = builder.module.declare_intrinsic(
        "llvm.x86.avx512.pshuf.b.512", fnty=ir.FunctionType(V64xI8, [V64xI8, V64xI8]))
    return builder.call(fn, [table, idx])


def pshufb512_emulated(builder, table, idx):
    """The same lookup in target-independent IR, for indices 0-15 (all this kernel makes): for each
    entry e, where idx == e take byte e of the index's own lane."""
    out = ir.Constant(V64xI8, None)
    for e in range(16):
        entry = builder.shuffle_vector(table, table, ir.Constant(ir.VectorType(I32, 64),
                                                                 [16 * (i // 16) + e for i in range(64)]))
        out = builder.select(builder.icmp_unsigned("==", idx, splat(V64xI8, e)), entry, out)
    return out


def _unpack(builder, a, b, high):
    """vpunpck{l,h}bw per 128-bit lane: bytes of a and b interleaved -> 32 x i16 (a low, b high)."""
    half = 8 if high else 0
    idx = [j for lane in range(0, 64, 16) for i in range(8) for j in (lane + half + i, 64 + lane + half + i)]
    return builder.bitcast(builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, 64), idx)), V32xI16)


def _widen(builder, acc16, acc32):
    """acc32 (8 x i32) + the four lanes of acc16 (32 x i16: the same 8 rows, four groups each)."""
    for lane in range(0, 32, 8):
        part = builder.shuffle_vector(acc16, acc16, ir.Constant(V8xI32, list(range(lane, lane + 8))))
        acc32 = builder.add(acc32, builder.sext(part, V8xI32))
    return acc32


def _make_tile(pshufb):
    @intrinsic
    def lut4_tile_512(typingctx, wtile, tlo, thi, out):
        """uint8 (P, 32) one tile's nib4 bytes (P even), uint8 (P, 32) tables -> int32 out (32,): row sums."""
        if not (is_c_array(wtile, types.uint8, 2) and is_c_array(tlo, types.uint8, 2)
                and is_c_array(thi, types.uint8, 2) and is_c_array(out, types.int32, 1)):
            return None
        sig = types.void(wtile, tlo, thi, out)

        def codegen(context, builder, sig, args):
            wp, nitems = data_pointer(context, builder, sig.args[0], args[0], V64xI8)
            lp, _ = data_pointer(context, builder, sig.args[1], args[1], V64xI8)
            hp, _ = data_pointer(context, builder, sig.args[2], args[2], V64xI8)
            op, _ = data_pointer(context, builder, sig.args[3], args[3], V8xI32)
            n = builder.udiv(nitems, ir.Constant(nitems.type, 64))            # zmm vectors: P / 2
            nib_mask = splat(V64xI8, 15)
            prefetch = builder.module.declare_intrinsic(
                "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [I8.as_pointer(), I32, I32, I32]))
            acc32 = [builder.alloca(V8xI32) for _ in range(4)]                   # rows 8k .. 8k+7
            for a in acc32:
                builder.store(ir.Constant(V8xI32, None), a)
            step = ir.Constant(n.type, WIDEN_EVERY)
            runs = builder.udiv(builder.add(n, ir.Constant(n.type, WIDEN_EVERY - 1)), step)
            with counted_loop(builder, runs) as run:
                start = builder.mul(run, step)
                left = builder.sub(n, start)
                count = builder.select(builder.icmp_unsigned("<", left, step), left, step)
                acc16 = [builder.alloca(V32xI16) for _ in range(4)]
                for a in acc16:
                    builder.store(ir.Constant(V32xI16, None), a)
                with counted_loop(builder, count) as i:
                    p = builder.add(start, i)
                    ahead = builder.gep(wp, [builder.add(p, ir.Constant(p.type, PREFETCH_VECTORS // 2))])
                    builder.call(prefetch, [builder.bitcast(ahead, I8.as_pointer())] + [ir.Constant(I32, c) for c in (0, 0, 1)])
                    v = builder.load(builder.gep(wp, [p]), align=1)
                    lo_idx = builder.and_(v, nib_mask)                                              # rows 0-15
                    hi_idx = builder.and_(builder.bitcast(
                        builder.lshr(builder.bitcast(v, V32xI16), splat(V32xI16, 4)), V64xI8), nib_mask)  # rows 16-31
                    tl = builder.load(builder.gep(lp, [p]), align=1)
                    th = builder.load(builder.gep(hp, [p]), align=1)
                    for k, idx in enumerate((lo_idx, hi_idx)):
                        lo = pshufb(builder, tl, idx)
                        hi = pshufb(builder, th, idx)
                        for h, high in enumerate((False, True)):
                            a = acc16[2 * k + h]
                            builder.store(builder.add(builder.load(a), _unpack(builder, lo, hi, high)), a)
                for a16, a32 in zip(acc16, acc32):
                    builder.store(_widen(builder, builder.load(a16), builder.load(a32)), a32)
            for k, a in enumerate(acc32):
                builder.store(builder.load(a), builder.gep(op, [ir.Constant(I32, k)]), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return lut4_tile_512


lut4_tile_512, lut4_tile_512_emulated = _make_tile(pshufb512), _make_tile(pshufb512_emulated)


def _make_matvec(tile):
    @numba.njit(cache=True, parallel=True)
    def _matvec(nib, alpha, beta, x, y):
        # nib (tiles, P, 32) uint8; alpha, beta, x (in,) float32 -> y (out,) float32
        q = np.empty(8 * nib.shape[1], np.int8)                            # (4 * 2P,), zero-padded
        tlo = np.empty((nib.shape[1], 32), np.uint8)
        thi = np.empty((nib.shape[1], 32), np.uint8)
        scale, bx = quantized_tables(alpha, beta, x, q, tlo, thi)
        n_out = y.shape[0]
        for t in numba.prange(nib.shape[0]):
            sums = np.empty(NIB_ROWS, np.int32)
            tile(nib[t], tlo, thi, sums)
            for r in range(min(NIB_ROWS, n_out - t * NIB_ROWS)):
                y[t * NIB_ROWS + r] = scale * np.float32(sums[r]) + bx

    return _matvec


_matvec, _matvec_emulated = _make_matvec(lut4_tile_512), _make_matvec(lut4_tile_512_emulated)


def matvec_lut4_512_int8(packed: PackedSigns, alpha, beta, x, emulated=False) -> np.ndarray:
    """x (in,) float32 -> y (out,) float32 with int8-rounded alpha * x. Needs packed.nib4 and, unless
    emulated, AVX512BW."""
    if packed.nib4 is None:
        raise ValueError("v11 needs the nib4 layout: PackedSigns.with_nib4()")
    y = np.empty(packed.out_features, np.float32)
    (_matvec_emulated if emulated else _matvec)(
        packed.nib4, np.ascontiguousarray(alpha, np.float32).reshape(-1),
        np.ascontiguousarray(beta, np.float32).reshape(-1), np.ascontiguousarray(x, np.float32), y)
    return y
