"""Linears that read the same input (q/k/v, gate/up), stacked row-wise: one batch-1 kernel call.

A decode step multiplies one normalized vector h by q, k and v (and another by gate and up). Each
FBI linear has its own per-column alpha (arXiv 2407.07093, eq. 3), so they cannot share one scaled
input; but they can share one kernel call: each segment s gets its own alpha_s * h (int8-quantized
for kind="int8", as lookup tables for "exact"), then one parallel loop runs over all rows of all
segments, each row reading its segment's activations. One thread-pool wake-up instead of three,
and the tail of one matrix overlaps the head of the next.

    y_s = sign(W_s) @ (alpha_s * h) + beta_s . h          for s = 0 .. n-1, y = [y_0 | y_1 | ...]

Each segment's rows are padded to a multiple of 32 (the nib4 tile, four lut3 row groups), so
segment s starts at `starts[s]` in y and the padding rows (zero bits) produce values nobody reads.
Kernels: int8 -> v9's 32-row lookup tiles where the nib4 layout is present (stack_linears(...,
nib4=True)), else v13's masked loads on the blocked bits (AVX-512 VNNI), else each segment through
kernels.dispatch (v5 / v4); exact -> v3's lookup row groups with AVX2 and the lut3 layout, else v2
per segment.

    python -m pytest tests/test_runtime_kernels.py -k stacked
"""
from dataclasses import dataclass

import numba
import numpy as np

from kernels.act_int8 import quantize_int8_bit_order
from kernels.bitpack import LUT_ROWS, NIB_ROWS, PackedSigns, nib4_from_blocked, pack_lut3_mask
from kernels.dispatch import kernel_name, matvec
from kernels.simd import HAS_AVX2, HAS_AVX512_VNNI, cache_stable
from kernels.v3_lut3_f32 import lut_rowgroup, scaled_tables
from kernels.v9_lut4_int8 import lut4_tile, quantized_tables
from kernels.v13_kmask_int8 import plus_qsum_row_kmask, plus_qsum_row_kmask_emulated


@dataclass
class StackedSigns:
    """n linears with the same in_features, rows stacked; segment s occupies rows starts[s] ..."""
    in_features: int
    out_features: tuple            # (n,) rows of each linear
    starts: np.ndarray             # (n,) int64 first row of each segment (multiples of 32)
    bits: np.ndarray | None        # (R, 32*nblk) uint8 blocked bits, R = sum of padded rows; None: nib4 only
    alpha: np.ndarray              # (n, in) float32, one row per linear
    beta: np.ndarray               # (n, in) float32
    lut: np.ndarray | None = None  # (R/8, ceil(in/30), 8) uint32 lut3 row groups, for exact batch 1
    nib4: np.ndarray | None = None # (R/32, 32*nblk, 32) uint8 nib4 tiles, for int8 batch 1

    @property
    def rows(self) -> int:
        return self.bits.shape[0] if self.bits is not None else self.nib4.shape[0] * NIB_ROWS

    @property
    def nbytes(self) -> int:
        return self.alpha.nbytes + self.beta.nbytes + sum(0 if a is None else a.nbytes
                                                          for a in (self.bits, self.lut, self.nib4))

    def segment(self, s: int) -> PackedSigns:
        """Linear s as PackedSigns over views of the stacked bits and / or tiles (no copy)."""
        r0, n = int(self.starts[s]), self.out_features[s]
        bits = None if self.bits is None else self.bits[r0: r0 + n]
        nib4 = None if self.nib4 is None else self.nib4[r0 // NIB_ROWS: r0 // NIB_ROWS + -(-n // NIB_ROWS)]
        return PackedSigns(n, self.in_features, bits, None, nib4)

    @property
    def ends(self) -> np.ndarray:
        """(n,) int64 row past each segment's padding: the kernels' segment lookup."""
        return self._ends

    def __post_init__(self):
        self._ends = np.append(self.starts[1:], self.rows).astype(np.int64)
        self.tile_ends = self._ends // NIB_ROWS                       # (n,) the same in nib4 tiles
        self.group_ends = self._ends // LUT_ROWS                      # (n,) the same in lut3 row groups


def back_to_back(parts: list) -> np.ndarray | None:
    """One read-only view over C-contiguous uint8 arrays of one trailing shape that lie back to back in
    memory (a packed file's q/k/v signs, mapped or read), joined along axis 0: the stacked bits with no
    copy. Else None."""
    first = parts[0]
    address = first.__array_interface__["data"][0]
    for p in parts:
        if p.dtype != np.uint8 or p.shape[1:] != first.shape[1:] or not p.flags.c_contiguous \
                or p.__array_interface__["data"][0] != address:
            return None
        address += p.nbytes
    rows = sum(p.shape[0] for p in parts)
    return np.lib.stride_tricks.as_strided(first, (rows,) + first.shape[1:], first.strides, writeable=False)


def _joined(parts: list, starts: list, rows: int) -> np.ndarray:
    """parts (rows_s, ...) uint8 placed at starts[s] of one (rows, ...) array: a view where they lie back
    to back and fill it, else a zero-padded copy."""
    if sum(p.shape[0] for p in parts) == rows:
        view = back_to_back(parts)
        if view is not None:
            return view
    out = np.zeros((rows,) + parts[0].shape[1:], np.uint8)
    for p, r0 in zip(parts, starts):
        out[r0: r0 + p.shape[0]] = p
    return out


def stack_linears(linears, lut: bool, nib4: bool = False, bits: bool = True) -> StackedSigns:
    """[(PackedSigns, alpha (in,), beta (in,)), ...] sharing in_features -> StackedSigns, with the
    lut3 layout (exact batch 1) and / or the nib4 layout (int8 batch 1). bits=False keeps no blocked
    copy: the nib4 tiles (given, or built) are then the one copy of the signs."""
    in_f = linears[0][0].in_features
    if any(p.in_features != in_f for p, _, _ in linears):
        raise ValueError("stacked linears must share in_features (they read the same input)")
    padded = [-(-p.out_features // NIB_ROWS) * NIB_ROWS for p, _, _ in linears]
    starts = np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int64)
    given_nib4 = all(p.nib4 is not None for p, _, _ in linears)
    stacked_bits = None
    if bits or not given_nib4:                       # nib4 tiles are built from the blocked bits
        if any(p.bits is None for p, _, _ in linears):
            raise ValueError("the blocked bits are asked for, and a linear holds only its nib4 tiles")
        stacked_bits = _joined([p.bits for p, _, _ in linears], starts, sum(padded))
    tiles = None
    if nib4 or not bits:
        tiles = _joined([p.nib4 for p, _, _ in linears], starts // NIB_ROWS, sum(padded) // NIB_ROWS) \
            if given_nib4 else nib4_from_blocked(stacked_bits)
    masks = np.zeros((sum(padded), in_f), bool) if lut else None
    for (p, _, _), r0 in zip(linears, starts):
        if lut:
            masks[r0: r0 + p.out_features] = p.mask()
    alpha = np.stack([np.asarray(a, np.float32).reshape(in_f) for _, a, _ in linears])
    beta = np.stack([np.asarray(b, np.float32).reshape(in_f) for _, _, b in linears])
    return StackedSigns(in_f, tuple(p.out_features for p, _, _ in linears), starts,
                        stacked_bits if bits else None, alpha, beta, pack_lut3_mask(masks) if lut else None, tiles)


@numba.njit(cache=True, parallel=True)
def _int8_lut4(nib, tile_ends, alpha, beta, x, y):
    # nib (tiles, P, 32) nib4; tile_ends (n,) in tiles; alpha, beta (n, in); x (in,) -> y (tiles*32,)
    n, pairs = alpha.shape[0], nib.shape[1]
    q = np.empty((n, 8 * pairs), np.int8)
    scale, bx = np.empty(n, np.float32), np.empty(n, np.float32)
    tlo, thi = np.empty((n, pairs, 32), np.uint8), np.empty((n, pairs, 32), np.uint8)
    if n == 1:                                     # o, down: no parallel region for one segment
        scale[0], bx[0] = quantized_tables(alpha[0], beta[0], x, q[0], tlo[0], thi[0])
    else:
        for s in numba.prange(n):                  # both threads for q/k/v and gate/up
            scale[s], bx[s] = quantized_tables(alpha[s], beta[s], x, q[s], tlo[s], thi[s])
    for t in numba.prange(nib.shape[0]):
        s = 0
        while t >= tile_ends[s]:
            s += 1
        sums = np.empty(NIB_ROWS, np.int32)
        lut4_tile(nib[t], tlo[s], thi[s], sums)
        for r in range(NIB_ROWS):
            y[t * NIB_ROWS + r] = scale[s] * np.float32(sums[r]) + bx[s]


@numba.njit(cache=True, parallel=True)
def _exact_lut3(lut, group_ends, alpha, beta, x, y8):
    # lut (G, nw, 8) uint32; group_ends (n,) in row groups; alpha, beta (n, in); x (in,) -> y8 (G, 8)
    n, nw = alpha.shape[0], lut.shape[1]
    tables = np.empty((n, 10 * nw, 8), np.float32)
    bx = np.zeros(n, np.float32)
    if n == 1:
        bx[0] = scaled_tables(alpha[0], beta[0], x, tables[0])
    else:
        for s in numba.prange(n):
            bx[s] = scaled_tables(alpha[s], beta[s], x, tables[s])
    for g in numba.prange(lut.shape[0]):
        s = 0
        while g >= group_ends[s]:
            s += 1
        lut_rowgroup(lut[g], tables[s], y8[g])
        for lane in range(LUT_ROWS):
            y8[g, lane] += bx[s]


def stacked_rows(row):
    """row(bits (32*nblk,), q (256*nblk,) in bit order) -> int32, v13's row intrinsic or its twin -> njit
    (bits, ends, alpha, beta, x, y): every segment's int8 activations, then one parallel loop over all rows."""
    row = cache_stable(row)

    @numba.njit(cache=True, parallel=True)
    def _stacked(bits, ends, alpha, beta, x, y):
        # bits (R, 32*nblk) uint8; ends (n,) rows; alpha, beta (n, in); x (in,) -> y (R,)
        n = alpha.shape[0]
        qb = np.empty((n, 8 * bits.shape[1]), np.int8)                  # (n, 256*nblk) in the bits' order
        scale, qsum, bx = np.empty(n, np.float32), np.empty(n, np.int64), np.empty(n, np.float32)
        if n == 1:                                   # o, down: no parallel region for one segment
            scale[0], qsum[0], bx[0] = quantize_int8_bit_order(alpha[0], beta[0], x, qb[0])
        else:
            for s in numba.prange(n):
                scale[s], qsum[s], bx[s] = quantize_int8_bit_order(alpha[s], beta[s], x, qb[s])
        for o in numba.prange(bits.shape[0]):
            s = 0
            while o >= ends[s]:
                s += 1
            y[o] = scale[s] * np.float32(2 * np.int64(row(bits[o], qb[s])) - qsum[s]) + bx[s]

    return _stacked


# compiled on first call: the VNNI row never on a CPU without it; the twin tests the loop anywhere
_int8_kmask, _int8_kmask_emulated = stacked_rows(plus_qsum_row_kmask), stacked_rows(plus_qsum_row_kmask_emulated)


def stacked_kernel_name(st: StackedSigns, kind: str) -> str:
    """Which kernel stacked_matvec runs for this kind on this CPU (a dispatch name: once per segment)."""
    if kind == "int8" and HAS_AVX2 and st.nib4 is not None:    # the nib4 copy exists to be used: fastest decode
        return "v9_lut4_int8"
    if kind == "int8" and HAS_AVX512_VNNI:                      # one copy of the signs, the blocked bits
        return "v13_kmask_int8"
    if kind == "exact" and HAS_AVX2 and st.lut is not None:
        return "v3_lut3_f32"
    return kernel_name(st.segment(0), 1, kind)


def stacked_matvec(st: StackedSigns, x: np.ndarray, kind: str = "exact") -> np.ndarray:
    """x (in,) float32 -> y (R,) float32; linear s's outputs are y[starts[s] : starts[s] + out_features[s]]."""
    x = np.ascontiguousarray(x, np.float32)
    name = stacked_kernel_name(st, kind)
    y = np.empty(st.rows, np.float32)
    if name == "v13_kmask_int8":
        _int8_kmask(st.bits, st.ends, st.alpha, st.beta, x, y)
    elif name == "v9_lut4_int8":
        _int8_lut4(st.nib4, st.tile_ends, st.alpha, st.beta, x, y)
    elif name == "v3_lut3_f32":
        _exact_lut3(st.lut, st.group_ends, st.alpha, st.beta, x, y.reshape(-1, LUT_ROWS))
    else:                                  # one dispatched call per segment
        for s in range(len(st.out_features)):
            r0 = int(st.starts[s])
            y[r0: r0 + st.out_features[s]] = matvec(st.segment(s), st.alpha[s], st.beta[s], x, kind)
    return y
