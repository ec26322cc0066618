"""v6: batch kernel for 64-512 tokens (prefill, training): decode tiles of rows, hand them to BLAS.

Y = (X * alpha) @ sign(W).T + (X @ beta.T) for X (B, in). With many tokens per weight the work is a
GEMM, and BLAS already runs GEMMs near the CPU's peak; what the bits save is weight memory. So the
weights stay packed, and each tile of R rows is decoded to +-1 float32 (16 MB, about half the L3)
just before its GEMM, (X * alpha) (B, in) @ tile.T (in, R) -> Y[:, rows] (B, R): the same BLAS call
NumPy makes for X @ W.T. BLAS repacks X for every tile, so tiles are large. The decode writes
float bit patterns directly, 0xBF800000 ^ (bit << 31) (= -1.0 or +1.0), 32 inputs at a time, in
IR: a scalar Numba loop over the same bits ran 4x slower. Decoding is single-threaded, a few ms for
a 7B-sized matrix, small beside the GEMM at 64+ tokens; BLAS uses its own threads (a Numba thread
pool spinning beside OpenBLAS's on 2 cores made both up to 40x slower). Exact: BLAS float32 sums
of the same terms as v1.

    python -m kernels.bench --shape 4096x4096 --batch 512
"""
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from kernels.bitpack import PackedSigns, product_out
from kernels.simd import I32, V32xI8, counted_loop, data_pointer, is_c_array, splat

V32xI32 = ir.VectorType(I32, 32)
TILE_BYTES = 16 << 20       # decoded tile: BLAS repacks x once per tile, so fewer, larger tiles


@intrinsic
def decode_row(typingctx, wrow, trow):
    """uint8 (32*nblk,) blocked bits of one row -> float32 (256*nblk,) of +-1 in input order."""
    if not (is_c_array(wrow, types.uint8, 1) and is_c_array(trow, types.float32, 1)):
        return None
    sig = types.void(wrow, trow)

    def codegen(context, builder, sig, args):
        wp, nbytes = data_pointer(context, builder, sig.args[0], args[0], V32xI8)
        tp, _ = data_pointer(context, builder, sig.args[1], args[1], V32xI32)
        nblk = builder.udiv(nbytes, ir.Constant(nbytes.type, 32))
        sign_bit, minus_one = splat(V32xI32, -(1 << 31)), splat(V32xI32, 0xBF800000 - (1 << 32))
        with counted_loop(builder, nblk) as blk:
            block = builder.zext(builder.load(builder.gep(wp, [blk]), align=1), V32xI32)
            for b in range(8):                                       # inputs 32b .. 32b+31
                top = builder.and_(builder.shl(block, splat(V32xI32, 31 - b)), sign_bit)
                dst = builder.add(builder.mul(blk, ir.Constant(blk.type, 8)), ir.Constant(blk.type, b))
                builder.store(builder.xor(top, minus_one), builder.gep(tp, [dst]), align=4)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True)
def decode_tile(bits, r0, tile):
    # bits (out, 32*nblk) uint8 -> tile (R, 256*nblk) float32 = sign(W)[r0:r0+R], zero-padded columns -> +-1
    for r in range(tile.shape[0]):
        decode_row(bits[r0 + r], tile[r])


def tile_rows(in_padded: int, out_features: int) -> int:
    """Rows per decoded tile: about TILE_BYTES of float32, a multiple of 8, at most out_features."""
    return max(8, min(out_features, TILE_BYTES // (4 * in_padded) // 8 * 8))


def matmul_tiles_blas(packed: PackedSigns, alpha, beta, x, out=None) -> np.ndarray:
    """x (B, in) float32 -> y (B, out) float32 = (x * alpha) @ sign(W).T + x @ beta.T (into `out` if given)."""
    x = np.asarray(x, np.float32)
    n_in, n_out = packed.in_features, packed.out_features
    in_pad = packed.bits.shape[1] * 8                                 # 256 * nblk
    xs = np.zeros((x.shape[0], in_pad), np.float32)                   # (B, in_pad), padding columns 0
    xs[:, :n_in] = x * np.asarray(alpha, np.float32).reshape(1, n_in)
    rows = tile_rows(in_pad, n_out)
    tile = np.empty((rows, in_pad), np.float32)                       # (R, in_pad)
    y = product_out(out, x.shape[0], n_out)                           # (B, out)
    for r0 in range(0, n_out, rows):
        r1 = min(n_out, r0 + rows)
        decode_tile(packed.bits, r0, tile[: r1 - r0])
        np.matmul(xs, tile[: r1 - r0].T, out=y[:, r0:r1])             # (B, in) @ (in, R), numpy's own call
    y += (x @ np.asarray(beta, np.float32).reshape(n_in))[:, None]    # + beta . x per token
    return y
