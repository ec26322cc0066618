"""nib4 -> blocked: a file that stores only v9's nib4 layout still runs the batch kernels on its bits.

A .fbipack may hold its signs in the nib4 layout alone (the layout AVX2 int8 decode reads, v9): one
copy of the bits. The batch kernels (v7 / v10 int8 prefill, v6 exact) read the blocked layout, so a
prefill call rewrites the linear's tiles into a temporary blocked array (one linear's bits: 11 MB at
most for a 7B's gate/up, not a second copy of the model) and runs on it. The rewrite is a bit
transpose in 256-bit vectors, about 1% of the v7 product it feeds at 128 tokens (docs/runtime.md).

Blocked byte 32*blk + 4m + i, bit b is input 256*blk + 32*b + 4m + i: nibble group g = 64*blk + 8*b + m,
bit i, which nib4 keeps at pair p = g // 2 = 32*blk + 4*b + m // 2, lane l = m % 2 (bytes 16l .. 16l+15:
rows 0-15 in the low nibbles, 16-31 in the high). So for one blk and m' = m // 2, the 8 vectors
v_b = tile[32*blk + 4*b + m'] hold everything, and byte i of the blocked word (row, m) is
OR_b ((v_b >> i) & 1) << b (bit i < 4: rows 0-15; bits 4-7 are bits 0-3 of rows 16-31). In 16-bit
lanes, masking bit i of both bytes and shifting by b - i never crosses a byte: the bit lands at b.

    python -m pytest tests/test_nib4_file.py -k blocked
"""
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.bitpack import NIB_ROWS
from kernels.simd import I32, I64, V16xI16, V32xI8, counted_loop, data_pointer, is_c_array, splat

V32xI32, V16xI64 = ir.VectorType(I32, 32), ir.VectorType(I64, 16)


def _interleave(builder, a, b, width):
    """Elements of a and b alternated: a0 b0 a1 b1 ... (vectors of the same type, 2x as many out)."""
    n = a.type.count
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, 2 * n), [j for i in range(n) for j in (i, n + i)]))


def _transpose8(builder, vs):
    """8 vectors v_b (16 x i16 = 32 bytes) -> 8 vectors w_i as 32 bytes: bit b of byte j of w_i = bit i of
    byte j of v_b (an 8 x 8 bit transpose per byte lane: three masked swaps, 4-, 2- then 1-bit blocks)."""
    vs = list(vs)
    for shift, mask in ((4, 0x0F0F), (2, 0x3333), (1, 0x5555)):
        for b in range(8):
            if b & shift:
                continue
            lo, hi = vs[b], vs[b + shift]                     # swap lo's high bits with hi's low bits
            t = builder.and_(builder.xor(builder.lshr(lo, splat(V16xI16, shift)), hi), splat(V16xI16, mask))
            vs[b + shift] = builder.xor(hi, t)
            vs[b] = builder.xor(lo, builder.shl(t, splat(V16xI16, shift)))
    return [builder.bitcast(v, V32xI8) for v in vs]


@intrinsic
def _tile_to_blocked(typingctx, tile, out):
    """uint8 (P, 32) one tile's nib4 bytes -> uint8 (32, P) its 32 rows in the blocked layout (P = 32*nblk)."""
    if not (is_c_array(tile, types.uint8, 2) and is_c_array(out, types.uint8, 2)):
        return None
    sig = types.void(tile, out)

    def codegen(context, builder, sig, args):
        wp, nitems = data_pointer(context, builder, sig.args[0], args[0], V32xI8)
        op, _ = data_pointer(context, builder, sig.args[1], args[1], I64)
        n = builder.udiv(nitems, ir.Constant(nitems.type, 32))                 # vectors P = 32 * nblk
        row_words = builder.udiv(n, ir.Constant(n.type, 8))                    # i64 per out row: 4 * nblk
        with counted_loop(builder, builder.udiv(n, ir.Constant(n.type, 32))) as blk:
            for mp in range(4):                                                # m = 2 mp + l
                vs = [builder.bitcast(builder.load(builder.gep(wp, [builder.add(
                    builder.mul(blk, ir.Constant(n.type, 32)), ir.Constant(n.type, 4 * b + mp))]), align=1), V16xI16)
                      for b in range(8)]
                planes = _transpose8(builder, vs)                              # byte i of the words, lanes (l, k)
                for half in range(2):                                          # rows 16 half + k
                    p0, p1, p2, p3 = planes[4 * half: 4 * half + 4]
                    lo = builder.bitcast(_interleave(builder, p0, p1, 8), ir.VectorType(ir.IntType(16), 32))
                    hi = builder.bitcast(_interleave(builder, p2, p3, 8), ir.VectorType(ir.IntType(16), 32))
                    words = builder.bitcast(_interleave(builder, lo, hi, 16), V32xI32)   # word j = (l, k)
                    pairs = builder.bitcast(builder.shuffle_vector(words, words, ir.Constant(
                        V32xI32, [j for k in range(16) for j in (k, 16 + k)])), V16xI64)  # (m = 2mp, 2mp+1) per k
                    for k in range(16):
                        row = ir.Constant(n.type, 16 * half + k)
                        at = builder.add(builder.mul(row, row_words),
                                         builder.add(builder.mul(blk, ir.Constant(n.type, 4)), ir.Constant(n.type, mp)))
                        builder.store(builder.extract_element(pairs, ir.Constant(I32, k)), builder.gep(op, [at]), align=1)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, parallel=True)
def _blocked_from_nib4(nib, bits):
    # nib (tiles, P, 32) uint8 -> bits (rows, P) uint8, rows <= tiles*32 (the padding rows dropped)
    n_rows = bits.shape[0]
    for t in numba.prange(nib.shape[0]):
        if (t + 1) * NIB_ROWS <= n_rows:
            _tile_to_blocked(nib[t], bits[t * NIB_ROWS:(t + 1) * NIB_ROWS])
        else:                                                # the last, partial tile
            tmp = np.empty((NIB_ROWS, bits.shape[1]), np.uint8)
            _tile_to_blocked(nib[t], tmp)
            bits[t * NIB_ROWS:] = tmp[:n_rows - t * NIB_ROWS]


def blocked_from_nib4(nib: np.ndarray, out_features: int) -> np.ndarray:
    """nib4 uint8 (ceil(out/32), 32*nblk, 32) -> blocked uint8 (out, 32*nblk), the same signs bit for bit."""
    tiles, pairs, width = nib.shape
    if width != NIB_ROWS or pairs % 32 or not tiles * NIB_ROWS - NIB_ROWS < out_features <= tiles * NIB_ROWS:
        raise ValueError(f"not the nib4 tiles of {out_features} rows: shape {nib.shape}")
    bits = np.empty((out_features, pairs), np.uint8)
    _blocked_from_nib4(np.ascontiguousarray(nib), bits)
    return bits
