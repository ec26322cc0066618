"""nib4 -> blocked: a file that stores only v9's nib4 layout still runs the batch kernels on its bits.

A .fbipack may hold its signs in the nib4 layout alone (the layout AVX2 int8 decode reads, v9): one
copy of the bits. The batch kernels (v7 / v10 int8 prefill, v6 exact) read the blocked layout, so a
prefill call rewrites the linear's tiles into a temporary blocked array (one linear's bits: 11 MB at
most for a 7B's gate/up, not a second copy of the model) and runs on it. The rewrite is a bit
transpose in 256-bit vectors (an 8 x 8 bit transpose per byte lane, then unpacks and a 4 x 4 transpose of
64-bit words so that each row gets whole 32-byte stores): 0.95-1.66 ms of one core for an 11008 x 4096
linear, 1.4-2.9% of v7 at 128 tokens (AVX2 Zen 3, one thread, CPU time: docs/runtime.md).

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
from kernels.simd import I32, I64, V8xI32, V16xI16, V32xI8, counted_loop, data_pointer, is_c_array, splat

V4xI64 = ir.VectorType(I64, 4)


def _lanes(builder, a, b, pattern):
    """shufflevector of a and b with indices given per 128-bit lane (the AVX2 unpack instructions)."""
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, len(pattern)), pattern))


def _unpack(n: int, high: bool) -> list:
    """vpunpck{l,h}{bw,wd} on vectors of n elements (two 128-bit lanes): the halves of each lane interleaved."""
    half = n // 2
    return [j for lane in (0, half) for i in range(half // 2) for j in (lane + high * half // 2 + i, n + lane + high * half // 2 + i)]


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
def tile_to_blocked(typingctx, tile, out):
    """uint8 (P, 32) one tile's nib4 bytes -> uint8 (32, P) its 32 rows in the blocked layout (P = 32*nblk)."""
    if not (is_c_array(tile, types.uint8, 2) and is_c_array(out, types.uint8, 2)):
        return None
    sig = types.void(tile, out)

    def codegen(context, builder, sig, args):
        wp, nitems = data_pointer(context, builder, sig.args[0], args[0], V32xI8)
        op, _ = data_pointer(context, builder, sig.args[1], args[1], V4xI64)
        n = builder.udiv(nitems, ir.Constant(nitems.type, 32))                 # vectors P = 32 * nblk
        row_vecs = builder.udiv(n, ir.Constant(n.type, 32))                    # 32-byte blocks per row: nblk
        pair_words = ir.Constant(V8xI32, [0, 4, 1, 5, 2, 6, 3, 7])             # (l0, l1) of each k side by side
        with counted_loop(builder, row_vecs) as blk:
            quads = {}                                                         # (half, q) -> [mp] 4 rows x 2 words
            for mp in range(4):                                                # m = 2 mp + l
                vs = [builder.bitcast(builder.load(builder.gep(wp, [builder.add(
                    builder.mul(blk, ir.Constant(n.type, 32)), ir.Constant(n.type, 4 * b + mp))]), align=1), V16xI16)
                      for b in range(8)]
                planes = _transpose8(builder, vs)                              # byte i of the words, lanes (l, k)
                for half in range(2):                                          # rows 16 half + k
                    p0, p1, p2, p3 = planes[4 * half: 4 * half + 4]
                    ab = [builder.bitcast(_lanes(builder, p0, p1, _unpack(32, h)), V16xI16) for h in (False, True)]
                    cd = [builder.bitcast(_lanes(builder, p2, p3, _unpack(32, h)), V16xI16) for h in (False, True)]
                    for q in range(4):                                         # rows k = 4q .. 4q+3
                        words = builder.bitcast(_lanes(builder, ab[q // 2], cd[q // 2], _unpack(16, q % 2)), V8xI32)
                        rows = builder.shuffle_vector(words, words, pair_words)
                        quads.setdefault((half, q), []).append(builder.bitcast(rows, V4xI64))
            for (half, q), x in quads.items():                                 # 4 x 4 qwords transposed: row c
                lo01 = _lanes(builder, x[0], x[1], [0, 4, 2, 6])
                hi01 = _lanes(builder, x[0], x[1], [1, 5, 3, 7])
                lo23 = _lanes(builder, x[2], x[3], [0, 4, 2, 6])
                hi23 = _lanes(builder, x[2], x[3], [1, 5, 3, 7])
                rows = [_lanes(builder, lo01, lo23, [0, 1, 4, 5]), _lanes(builder, hi01, hi23, [0, 1, 4, 5]),
                        _lanes(builder, lo01, lo23, [2, 3, 6, 7]), _lanes(builder, hi01, hi23, [2, 3, 6, 7])]
                for c, row in enumerate(rows):
                    at = builder.add(builder.mul(ir.Constant(n.type, 16 * half + 4 * q + c), row_vecs), blk)
                    builder.store(row, builder.gep(op, [at]), align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_lines(typingctx, arr, first, count):
    """Prefetch (into L2: prefetcht1) `count` 64-byte lines of uint8 array `arr` from line `first` on,
    clipped to the array: a loop spreads the next tile's lines over the current tile's work."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and arr.layout == "C"
            and isinstance(first, types.Integer) and isinstance(count, types.Integer)):
        return None
    sig = types.void(arr, first, count)

    def codegen(context, builder, sig, args):
        ap, nbytes = data_pointer(context, builder, sig.args[0], args[0], ir.IntType(8))
        first_v, count_v = (builder.sext(a, nbytes.type) if a.type.width < 64 else a for a in args[1:])
        lines = builder.udiv(builder.add(nbytes, ir.Constant(nbytes.type, 63)), ir.Constant(nbytes.type, 64))
        end = builder.add(first_v, count_v)
        end = builder.select(builder.icmp_signed("<", end, lines), end, lines)
        n = builder.sub(end, first_v)
        n = builder.select(builder.icmp_signed(">", n, ir.Constant(n.type, 0)), n, ir.Constant(n.type, 0))
        prefetch = builder.module.declare_intrinsic(                    # (address, read, locality 2, data)
            "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), I32, I32, I32]))
        with counted_loop(builder, n) as i:
            at = builder.mul(builder.add(first_v, i), ir.Constant(nbytes.type, 64))
            builder.call(prefetch, [builder.gep(ap, [at])] + [ir.Constant(I32, c) for c in (0, 2, 1)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, parallel=True)
def _blocked_from_nib4(nib, bits):
    # nib (tiles, P, 32) uint8 -> bits (rows, P) uint8, rows <= tiles*32 (the padding rows dropped)
    n_rows = bits.shape[0]
    for t in numba.prange(nib.shape[0]):
        if (t + 1) * NIB_ROWS <= n_rows:
            tile_to_blocked(nib[t], bits[t * NIB_ROWS:(t + 1) * NIB_ROWS])
        else:                                                # the last, partial tile
            tmp = np.empty((NIB_ROWS, bits.shape[1]), np.uint8)
            tile_to_blocked(nib[t], tmp)
            bits[t * NIB_ROWS:] = tmp[:n_rows - t * NIB_ROWS]


def blocked_from_nib4(nib: np.ndarray, out_features: int, scratch: bool = False) -> np.ndarray:
    """nib4 uint8 (ceil(out/32), 32*nblk, 32) -> blocked uint8 (out, 32*nblk), the same signs bit for bit.
    scratch: written into one buffer kept for the next call (valid until then): a prefill rewrites a
    linear per call, and fresh pages for each cost the kernel a page fault and a zeroing per 4 KB."""
    tiles, pairs, width = nib.shape
    if width != NIB_ROWS or pairs % 32 or not tiles * NIB_ROWS - NIB_ROWS < out_features <= tiles * NIB_ROWS:
        raise ValueError(f"not the nib4 tiles of {out_features} rows: shape {nib.shape}")
    if not scratch:
        bits = np.empty((out_features, pairs), np.uint8)
    else:
        if _SCRATCH[0].size < out_features * pairs:
            _SCRATCH[0] = np.empty(out_features * pairs, np.uint8)
        bits = _SCRATCH[0][:out_features * pairs].reshape(out_features, pairs)
    _blocked_from_nib4(np.ascontiguousarray(nib), bits)
    return bits


_SCRATCH = [np.empty(0, np.uint8)]      # the largest linear's blocked bits rewritten so far (one at a time)
