"""The row loops every int8 kernel shares, built around its row intrinsic (v5, v7, v8, v10 and twins).

Each int8 kernel differs only in how it sums the int8 activations under one row's +1 bits (a row
intrinsic: maddubs, vpdpbusd, or vpdpbusd in generic IR); the quantization, the parallel loop over
rows and the final y = scale * (2 * plus - sum q) + beta . x are the same, so they live here once.
The factories return Numba functions compiled on first call and cached per row intrinsic (Numba
keys the cache of a closure by what it closes over); a VNNI row is therefore never compiled on a
CPU without VNNI unless called.

    _matvec = rows_matvec(plus_qsum_row)          # x (in,) -> y (out,)
    _matmul = rows_matmul(plus_qsum_row_x4)       # x (B, in) -> y (B, out), 4 tokens per pass
"""
import numba
import numpy as np

from kernels.act_int8 import quantize_int8, quantize_int8_bit_order
from kernels.bitpack import NIB_ROWS, product_out
from kernels.nib4_blocked import prefetch_lines, tile_to_blocked
from kernels.simd import cache_stable

TOKENS = 4                 # tokens per register tile of the batch rows: 8 masks + 4 accumulators + scratch
CHUNK_BYTES = 256 << 10    # int8 activations per token chunk (half the L2)
ROW_BLOCK = 16             # rows whose bits stay in L1 while 4 tokens' q pass over them: a row read
                           # q from L2 for every 4 tokens before (v7 11008x4096x512: 190 -> 135 ms)
GROUP_BYTES = 128 << 10    # blocked bits per thread's group of nib4 tiles (a quarter of a Zen 3's L2)


def rows_matvec(row, bit_order: bool = False):
    """row(bits (32*nblk,) uint8, q (256*nblk,) int8) -> int32 -> njit (bits, alpha, beta, x, y); q is
    quantized in the inputs' order (act_int8.quantize_int8), or in the blocked bits' order where bit_order
    (quantize_int8_bit_order, v13). A flag, not the quantizer: a Numba function closed over pickles
    differently in every process, and the closure would miss the cache every time (simd.cache_stable)."""
    row = cache_stable(row)

    @numba.njit(cache=True, parallel=True)
    def _matvec(bits, alpha, beta, x, y):
        # bits (out, 32*nblk) uint8; alpha, beta, x (in,) float32 -> y (out,) float32
        q = np.empty(8 * bits.shape[1], np.int8)                        # (256*nblk,), zero-padded
        if bit_order:
            scale, qsum, bx = quantize_int8_bit_order(alpha, beta, x, q)
        else:
            scale, qsum, bx = quantize_int8(alpha, beta, x, q)
        for o in numba.prange(bits.shape[0]):
            y[o] = scale * np.float32(2 * np.int64(row(bits[o], q)) - qsum) + bx

    return _matvec


@numba.njit(cache=True, parallel=True)
def _quantize_tokens(alpha, beta, x, row_bytes):
    # x (B, in) float32 -> q (B_pad, 8*row_bytes) int8 (zero rows past B), scale, qsum, bx (B_pad,)
    n_tok = x.shape[0]
    n_pad = -(-n_tok // TOKENS) * TOKENS
    q = np.zeros((n_pad, 8 * row_bytes), np.int8)
    scale, qsum, bx = np.zeros(n_pad, np.float32), np.zeros(n_pad, np.int64), np.zeros(n_pad, np.float32)
    for t in numba.prange(n_tok):
        scale[t], qsum[t], bx[t] = quantize_int8(alpha, beta, x[t], q[t])
    return q, scale, qsum, bx


def rows_matmul(row_x4):
    """row_x4(bits row, q (B_pad, 256*nblk), t0) -> 4 int32 sums (tokens t0..t0+3) -> njit (bits, alpha, beta, x, y)."""
    row_x4 = cache_stable(row_x4)

    @numba.njit(cache=True, parallel=True)
    def _matmul(bits, alpha, beta, x, y):
        # bits (out, 32*nblk) uint8; alpha, beta (in,); x (B, in) float32 -> y (B, out) float32
        n_tok, n_out = x.shape[0], bits.shape[0]
        q, scale, qsum, bx = _quantize_tokens(alpha, beta, x, bits.shape[1])
        chunk = max(TOKENS, CHUNK_BYTES // q.shape[1] // TOKENS * TOKENS)
        for c0 in range(0, q.shape[0], chunk):                         # a chunk of q stays in L2 over all rows
            c1 = min(q.shape[0], c0 + chunk)
            for rb in numba.prange(-(-n_out // ROW_BLOCK)):
                for t0 in range(c0, c1, TOKENS):                       # 4 tokens' q stay in L1 over the block
                    for o in range(rb * ROW_BLOCK, min(n_out, (rb + 1) * ROW_BLOCK)):
                        s = row_x4(bits[o], q, t0)
                        for i in range(TOKENS):                    # a constant trip count: s[i] unrolled
                            if t0 + i < n_tok:
                                y[t0 + i, o] = scale[t0 + i] * np.float32(2 * np.int64(s[i]) - qsum[t0 + i]) + bx[t0 + i]

    return _matmul


def rows_matmul_nib4(row_x4):
    """rows_matmul on nib4 tiles (uint8 (ceil(out/32), 32*nblk, 32)): njit (tiles, n_out, alpha, beta, x, y).

    Blocked like a GEMM for the caches: each thread takes a group of tiles whose blocked bits fill
    GROUP_BYTES, rewrites them (kernels/nib4_blocked.py) into a buffer of its own, which stays in L2,
    and runs every token over it, a CHUNK_BYTES chunk of q at a time (L2 too: 384 KB in all, within a
    Zen 3's 512 KB), 16 rows by 4 tokens as rows_matmul does. The signs are read from memory once per
    call, in the one layout the file holds; the next group's tiles are prefetched over this group's work
    (the hardware prefetcher alone left the kernel waiting on them at every group's start)."""
    row_x4 = cache_stable(row_x4)

    @numba.njit(cache=True, parallel=True)
    def _matmul(tiles, n_out, alpha, beta, x, y):
        n_tok, n_tiles, row_bytes = x.shape[0], tiles.shape[0], tiles.shape[1]
        q, scale, qsum, bx = _quantize_tokens(alpha, beta, x, row_bytes)
        group = max(1, GROUP_BYTES // (NIB_ROWS * row_bytes))          # tiles per group
        chunk = max(TOKENS, CHUNK_BYTES // q.shape[1] // TOKENS * TOKENS)
        steps = group * NIB_ROWS // ROW_BLOCK * (q.shape[0] // TOKENS)  # (row block, 4 tokens) steps per group
        per = -(-(group * NIB_ROWS * row_bytes // 64) // steps)        # the next group's lines per step
        for g in numba.prange(-(-n_tiles // group)):
            t_lo, t_hi = g * group, min(n_tiles, (g + 1) * group)
            r_lo, r_hi = t_lo * NIB_ROWS, min(n_out, t_hi * NIB_ROWS)
            bits = np.empty(((t_hi - t_lo) * NIB_ROWS, row_bytes), np.uint8)   # (rows, 32*nblk) blocked
            for t in range(t_lo, t_hi):
                tile_to_blocked(tiles[t], bits[(t - t_lo) * NIB_ROWS:(t - t_lo + 1) * NIB_ROWS])
            ahead = tiles[t_hi:min(n_tiles, t_hi + group)]
            step = 0
            for c0 in range(0, q.shape[0], chunk):                     # a chunk of q stays in L2 over the group
                for r0 in range(r_lo, r_hi, ROW_BLOCK):
                    for t0 in range(c0, min(q.shape[0], c0 + chunk), TOKENS):   # 4 tokens' q in L1 over 16 rows
                        prefetch_lines(ahead, step * per, per)
                        step += 1
                        for o in range(r0, min(r_hi, r0 + ROW_BLOCK)):
                            s = row_x4(bits[o - r_lo], q, t0)
                            for i in range(TOKENS):                # a constant trip count: s[i] unrolled
                                if t0 + i < n_tok:
                                    y[t0 + i, o] = scale[t0 + i] * np.float32(2 * np.int64(s[i]) - qsum[t0 + i]) + bx[t0 + i]

    return _matmul


def call_matvec(fn, packed, alpha, beta, x) -> np.ndarray:
    """A rows_matvec kernel on PackedSigns: x (in,) float32 -> y (out,) float32 (the wrappers' one body)."""
    y = np.empty(packed.out_features, np.float32)
    fn(packed.bits, np.ascontiguousarray(alpha, np.float32).reshape(-1),
       np.ascontiguousarray(beta, np.float32).reshape(-1), np.ascontiguousarray(x, np.float32), y)
    return y


def call_matmul(fn, packed, alpha, beta, x, out=None) -> np.ndarray:
    """A rows_matmul kernel on PackedSigns: x (B, in) float32 -> y (B, out) float32 (into `out` if given)."""
    x = np.ascontiguousarray(x, np.float32)
    y = product_out(out, x.shape[0], packed.out_features)
    fn(packed.bits, np.ascontiguousarray(alpha, np.float32).reshape(-1),
       np.ascontiguousarray(beta, np.float32).reshape(-1), x, y)
    return y
