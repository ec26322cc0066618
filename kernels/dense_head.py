"""The output head (lm_head, full precision in FBI-LLM) stored as fp16 or int8 rows, times float32.

FBI-LLM binarizes only the block linears; lm_head (vocab x hidden) stays dense and at decode time is
the biggest single read of a step (a 7B model's is 262 MB in fp16, as large as 10 of its layers'
sign bits). NumPy has no fast fp16 product (it would widen the whole matrix first), so this file
streams the rows in their stored type and widens in registers:

- fp16: `fpext <8 x half>` (vcvtph2ps with F16C) then a multiply-add into 4 float32 accumulators;
  half the bytes of float32, and y is the float32 sum of the fp16 weights' exact values.
- int8 per row: W_r ~ s_r * q_r with s_r = max|W_r| / 127, q_r = round(W_r / s_r) (symmetric), a
  quarter of float32's bytes; `sitofp <8 x i8>` then the same multiply-add; y_r = s_r * (q_r . x).
  Each weight is off by at most s_r / 2 (tested), so |y_r - W_r . x| <= s_r / 2 * sum |x|.

For many tokens at once (a prompt's logits) the head is a GEMM, which BLAS does well: row tiles
are widened to float32 (about 8 MB each) and multiplied by NumPy, the same values as the kernels.
Rows are padded with zeros to a multiple of 32 columns (4 vectors of 8) and x likewise; the files
keep (V, C) and a padded copy is made only when C is not already a multiple of 32.

    python -m tinyfbi.generate --random-init 7b --packed --bench --head int8
"""
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.simd import I8, V8xF32, counted_loop, data_pointer, hsum, is_c_array

COL_ALIGN = 32                               # columns per unrolled step: 4 vectors of 8
BLAS_MIN_TOKENS = 8                          # from this many tokens on, widen row tiles and use BLAS
TILE_BYTES = 8 << 20                         # float32 bytes per widened row tile
HEAD_KINDS = ("f16", "int8", "f32")
V8xF16, V8xI8 = ir.VectorType(ir.HalfType(), 8), ir.VectorType(I8, 8)


def _row_dot(elem_dtype, vec_ty, widen):
    """An intrinsic: (row of elem_dtype (n,), x float32 (n,)) -> float32 dot, n a multiple of 32."""

    @intrinsic
    def row_dot(typingctx, wrow, x):
        if not (is_c_array(wrow, elem_dtype, 1) and is_c_array(x, types.float32, 1)):
            return None
        sig = types.float32(wrow, x)

        def codegen(context, builder, sig, args):
            wp, n = data_pointer(context, builder, sig.args[0], args[0], vec_ty)
            xp, _ = data_pointer(context, builder, sig.args[1], args[1], V8xF32)
            fmuladd = builder.module.declare_intrinsic(
                "llvm.fmuladd.v8f32", fnty=ir.FunctionType(V8xF32, [V8xF32] * 3))
            accs = [builder.alloca(V8xF32) for _ in range(4)]
            for a in accs:
                builder.store(ir.Constant(V8xF32, None), a)
            with counted_loop(builder, builder.udiv(n, ir.Constant(n.type, COL_ALIGN))) as i:
                base = builder.mul(i, ir.Constant(i.type, 4))
                for u, a in enumerate(accs):                           # 4 independent chains hide FMA latency
                    k = builder.add(base, ir.Constant(i.type, u))
                    w = widen(builder, builder.load(builder.gep(wp, [k]), align=1))
                    xv = builder.load(builder.gep(xp, [k]), align=4)
                    builder.store(builder.call(fmuladd, [w, xv, builder.load(a)]), a)
            v = [builder.load(a) for a in accs]
            return hsum(builder, builder.fadd(builder.fadd(v[0], v[1]), builder.fadd(v[2], v[3])))

        return sig, codegen

    return row_dot


# fp16 bits arrive as uint16 (Numba has no float16): reinterpret the loaded vector, then widen
dot_f16 = _row_dot(types.uint16, V8xF16, lambda b, v: b.fpext(v, V8xF32))
dot_i8 = _row_dot(types.int8, V8xI8, lambda b, v: b.sitofp(v, V8xF32))


@numba.njit(cache=True, parallel=True)
def _head_f16(w, x, y):
    # w (V, C_pad) uint16 fp16 bits; x (T, C_pad) float32 -> y (T, V); a row stays in L1 over the tokens
    for r in numba.prange(w.shape[0]):
        for t in range(x.shape[0]):
            y[t, r] = dot_f16(w[r], x[t])


@numba.njit(cache=True, parallel=True)
def _head_int8(w, scale, x, y):
    # w (V, C_pad) int8, scale (V,) float32 per row; x (T, C_pad) float32 -> y (T, V)
    for r in numba.prange(w.shape[0]):
        for t in range(x.shape[0]):
            y[t, r] = scale[r] * dot_i8(w[r], x[t])


def quantize_rows_int8(w: np.ndarray, rows: int = 4096):
    """(V, C) float -> (int8 (V, C), float32 scale (V,)): symmetric, one scale per row; widened to
    float32 a block of rows at a time, so a memory-mapped fp16 head never exists whole in float32."""
    q = np.empty(w.shape, np.int8)
    scale = np.empty(w.shape[0], np.float32)
    for r0 in range(0, w.shape[0], rows):
        blk = np.asarray(w[r0:r0 + rows], np.float32)                   # (rows, C)
        s = np.abs(blk).max(axis=1) / np.float32(127.0)
        inv = np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0).astype(np.float32)
        q[r0:r0 + rows] = np.clip(np.rint(blk * inv[:, None]), -127, 127)
        scale[r0:r0 + rows] = s
    return q, scale


def _pad_cols(a: np.ndarray, dtype) -> np.ndarray:
    """(V, C) -> C-contiguous (V, C_pad) of dtype, zero columns past C; no copy when nothing changes."""
    c_pad = -(-a.shape[1] // COL_ALIGN) * COL_ALIGN
    if c_pad == a.shape[1] and a.dtype == dtype and a.flags.c_contiguous:
        return a
    out = np.zeros((a.shape[0], c_pad), dtype)
    out[:, : a.shape[1]] = a
    return out


class DenseHead:
    """lm_head (V, C) held as 'f16' (default), 'int8' (per-row scale) or 'f32' (NumPy BLAS)."""

    def __init__(self, weight: np.ndarray, kind: str = "f16"):
        if kind not in HEAD_KINDS:
            raise ValueError(f"head kind must be one of {HEAD_KINDS}, got {kind!r}")
        self.kind, self.vocab, self.hidden = kind, weight.shape[0], weight.shape[1]
        self.scale = None
        if kind == "f32":
            self.weight = np.ascontiguousarray(weight, np.float32)
        elif kind == "f16":                                          # a memory-mapped fp16 file stays mapped
            self.weight = _pad_cols(np.asarray(weight).astype(np.float16, copy=False), np.float16)
        else:
            q, self.scale = quantize_rows_int8(weight)
            self.weight = _pad_cols(q, np.int8)

    @staticmethod
    def storage_dtype(kind: str) -> np.dtype | None:
        """The stored type this head kind keeps as it is (float16 for 'f16', float32 for 'f32'); None for
        'int8', which always quantizes a copy."""
        return {"f16": np.dtype(np.float16), "f32": np.dtype(np.float32)}.get(kind)

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes + (0 if self.scale is None else self.scale.nbytes)

    def dequantized(self) -> np.ndarray:
        """float32 (V, C): the exact values this head multiplies by (for tests and error reports)."""
        w = self.weight[:, : self.hidden].astype(np.float32)
        return w * self.scale[:, None] if self.scale is not None else w

    def __call__(self, h: np.ndarray) -> np.ndarray:
        """h (T, C) float32 -> logits (T, V) float32."""
        h = np.asarray(h, np.float32)
        if self.kind == "f32":
            return h @ self.weight.T
        if h.shape[0] >= BLAS_MIN_TOKENS:
            return self._blas_tiles(h)
        x = np.zeros((h.shape[0], self.weight.shape[1]), np.float32)    # (T, C_pad)
        x[:, : self.hidden] = h
        y = np.empty((h.shape[0], self.vocab), np.float32)
        if self.kind == "f16":
            _head_f16(self.weight.view(np.uint16), x, y)
        else:
            _head_int8(self.weight, self.scale, x, y)
        return y

    def _blas_tiles(self, h: np.ndarray) -> np.ndarray:
        """h (T, C) -> (T, V): row tiles widened to float32, each one BLAS GEMM."""
        y = np.empty((h.shape[0], self.vocab), np.float32)
        rows = max(1, TILE_BYTES // (4 * self.hidden))
        for r0 in range(0, self.vocab, rows):
            r1 = min(self.vocab, r0 + rows)
            tile = self.weight[r0:r1, : self.hidden].astype(np.float32)              # (R, C)
            if self.scale is not None:
                tile *= self.scale[r0:r1, None]
            np.matmul(h, tile.T, out=y[:, r0:r1])
        return y
