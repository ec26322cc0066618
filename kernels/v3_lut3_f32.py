"""v3: exact batch-1 kernel by table lookup (T-MAC style, arXiv 2407.00088), AVX2.

Split xs = alpha * x into groups of 3. For group g, an 8-entry float table holds every signed sum
T_g[i] = sum_t (+xs_3g+t if bit t of i else -xs_3g+t), i < 8: 3 weights' worth of sign(W) @ xs per
lookup. The lut3 layout (kernels/bitpack.py) puts 8 rows in the 8 lanes of a 256-bit register,
each lane holding 10 groups' 3-bit indices, so one `vpermps(T_g, lanes >> 3g)` looks up 8 rows at
once (vpermps reads only the low 3 bits of each index): a shift, a lookup and an add for 24 weights.
Tables cost 8 floats per 3 inputs and are rebuilt per call (microseconds). Exact: each output is
a float32 sum of the same signed terms as v1, in another order.

    python -m kernels.bench --shape 11008x4096 --batch 1
"""
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.bitpack import LUT_ROWS, LUT_WORD, PackedSigns
from kernels.simd import V8xF32, V8xI32, counted_loop, data_pointer, is_c_array, splat

FIELDS = LUT_WORD // 3     # 3-bit fields per 32-bit lane


@intrinsic
def lut_rowgroup(typingctx, lanes, tables, y8):
    """uint32 (nw, 8) lut3 words of 8 rows, float32 (10*nw, 8) tables -> writes float32 y8 (8,)."""
    if not (is_c_array(lanes, types.uint32, 2) and is_c_array(tables, types.float32, 2)
            and is_c_array(y8, types.float32, 1)):
        return None
    sig = types.void(lanes, tables, y8)

    def codegen(context, builder, sig, args):
        wp, nitems = data_pointer(context, builder, sig.args[0], args[0], V8xI32)
        tp, _ = data_pointer(context, builder, sig.args[1], args[1], V8xF32)
        yp, _ = data_pointer(context, builder, sig.args[2], args[2], V8xF32)
        nw = builder.udiv(nitems, ir.Constant(nitems.type, LUT_ROWS))
        permps = builder.module.declare_intrinsic(
            "llvm.x86.avx2.permps", fnty=ir.FunctionType(V8xF32, [V8xF32, V8xI32]))
        zero = ir.Constant(V8xF32, None)
        accs = [builder.alloca(V8xF32) for _ in range(2)]
        for a in accs:
            builder.store(zero, a)
        with counted_loop(builder, nw) as w:
            word = builder.load(builder.gep(wp, [w]), align=4)           # 8 rows x 10 fields
            base = builder.mul(w, ir.Constant(w.type, FIELDS))
            part = [builder.load(a) for a in accs]
            for g in range(FIELDS):
                idx = builder.lshr(word, splat(V8xI32, 3 * g)) if g else word
                table = builder.load(builder.gep(tp, [builder.add(base, ir.Constant(w.type, g))]), align=4)
                part[g % 2] = builder.fadd(part[g % 2], builder.call(permps, [table, idx]))
            for a, v in zip(accs, part):
                builder.store(v, a)
        builder.store(builder.fadd(builder.load(accs[0]), builder.load(accs[1])), yp, align=4)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True)
def scaled_tables(alpha, beta, x, tables):
    # alpha, beta, x (in,) float32 -> tables (10*nw, 8) of xs = alpha * x: tables[g, i] =
    # sum_t (+ if bit t of i else -) xs[3g+t]; returns beta . x
    n = x.shape[0]
    xs = np.empty(n, np.float32)
    bx = np.float32(0.0)
    for j in range(n):
        xs[j] = alpha[j] * x[j]
        bx += beta[j] * x[j]
    for g in range(tables.shape[0]):
        a = xs[3 * g] if 3 * g < n else np.float32(0.0)
        b = xs[3 * g + 1] if 3 * g + 1 < n else np.float32(0.0)
        c = xs[3 * g + 2] if 3 * g + 2 < n else np.float32(0.0)
        for i in range(8):
            tables[g, i] = ((a if i & 1 else -a) + (b if i & 2 else -b)) + (c if i & 4 else -c)
    return bx


@numba.njit(cache=True, parallel=True)
def _matvec(lut, alpha, beta, x, y8):
    # lut (ng, nw, 8) uint32; alpha, beta, x (in,) float32 -> y8 (ng, 8) float32
    tables = np.empty((FIELDS * lut.shape[1], 8), np.float32)
    bx = scaled_tables(alpha, beta, x, tables)
    for r in numba.prange(lut.shape[0]):
        lut_rowgroup(lut[r], tables, y8[r])
        for lane in range(LUT_ROWS):
            y8[r, lane] += bx


def matvec_lut3_f32(packed: PackedSigns, alpha, beta, x) -> np.ndarray:
    """x (in,) float32 -> y (out,) float32, exact to float32 rounding. Needs packed.lut and AVX2."""
    if packed.lut is None:
        raise ValueError("v3_lut3_f32 needs the lut3 layout: pack_signs(W, lut=True) or packed.with_lut()")
    y8 = np.empty((packed.lut.shape[0], LUT_ROWS), np.float32)
    _matvec(packed.lut, alpha, beta, x, y8)
    return y8.reshape(-1)[: packed.out_features]
