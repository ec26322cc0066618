"""Bit layouts for the signs of a binarized weight matrix W (out, in), and their exact inverses.

FBI-LLM (arXiv 2407.07093, section 3.1) keeps sign(W) with one bit per weight: 1 = +1, 0 = -1,
decided by tinyfbi.core.binarize.positive_mask (zero counts as +1). The bits always run along the INPUT
dimension, the axis alpha and beta run along, so a row of bits is one output's dot product.

Three layouts, all padded with 0 bits past in_features (the kernels pad activations with zeros, so
the padding has no effect whatever its value):

canonical  uint64 (out, ceil(in/64)): bit j%64 of word j//64 is input column j. The interchange
           format (files, v1_reference); as little-endian bytes it is byte j//8, bit j%8.
blocked    uint8 (out, 32*ceil(in/256)): inputs in blocks of 256; byte 32*blk + k, bit b is input
           256*blk + 32*b + k. Shifting a 32-byte block right by b gives the +1 mask of 32
           consecutive inputs in its low bits, one per byte, so an int8 kernel reads activations
           contiguously (v5_maddubs_int8); the other batch-1 kernels permute activations to match.
lut3       uint32 (ceil(out/8), ceil(in/30), 8): rows in groups of 8, one row per 32-bit lane;
           bits 3g+t (g < 10, t < 3) of lane l in word w are row 8R+l, input 30*w + 3*g + t;
           bits 30 and 31 are 0. Each 3-bit field indexes an 8-entry table (v3_lut3_f32).
nib4       uint8 (ceil(out/32), 32*ceil(in/256), 32): rows in tiles of 32, inputs in groups of 4
           (one nibble, bit i = input 4g+i); byte [t, p, 16*l + k] holds group g = 2p + l, row
           32t + k in its low nibble and row 32t + 16 + k in its high nibble. Each nibble indexes a
           16-entry table, 16 rows per `vpshufb` lane (v9_lut4_int8). Same 1 bit per weight.

Round trip (run from the repo root): python -c "import kernels.bitpack as b; b._selfcheck()"
"""
from dataclasses import dataclass

import numpy as np

from tinyfbi.core.binarize import positive_mask

BLOCK = 256        # inputs per block in the blocked layout (32 bytes = one AVX2 register)
LUT_GROUP = 3      # inputs per table index in the lut3 layout (8-entry tables)
LUT_WORD = 30      # inputs per 32-bit lane in the lut3 layout (10 groups of 3)
LUT_ROWS = 8       # rows per lut3 group (8 lanes of a 256-bit register)
NIB_ROWS = 32      # rows per nib4 tile (2 nibbles x 16 bytes of a 128-bit lane)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _pad_mask(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Zero-pad a boolean (out, in) mask to (rows, cols)."""
    out = np.zeros((rows, cols), dtype=bool)
    out[: mask.shape[0], : mask.shape[1]] = mask
    return out


def sign_mask(w: np.ndarray) -> np.ndarray:
    """(out, in) bool, True where sign(W) is +1: the one binarize rule, nothing else."""
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight (out, in), got shape {w.shape}")
    return np.asarray(positive_mask(w), dtype=bool)


def mask_to_signs(mask: np.ndarray) -> np.ndarray:
    """bool (out, in) -> float32 (out, in) of +-1."""
    return np.where(mask, np.float32(1.0), np.float32(-1.0))


# ---- canonical: uint64 words along the input dimension ----

def pack_canonical_mask(mask: np.ndarray) -> np.ndarray:
    """bool (out, in) -> uint64 (out, ceil(in/64)), bit j%64 of word j//64 = column j."""
    out_f, in_f = mask.shape
    nw = _ceil_div(in_f, 64)
    m = _pad_mask(mask, out_f, 64 * nw)
    by = np.packbits(m, axis=1, bitorder="little")                        # (out, 8*nw) bytes
    return np.ascontiguousarray(by).view("<u8").astype(np.uint64)         # (out, nw)


def unpack_canonical_mask(words: np.ndarray, in_features: int) -> np.ndarray:
    """uint64 (out, nw) -> bool (out, in_features)."""
    by = np.ascontiguousarray(words.astype("<u8")).view(np.uint8)         # (out, 8*nw)
    return np.unpackbits(by, axis=1, bitorder="little")[:, :in_features].astype(bool)


def pack_canonical(w: np.ndarray) -> np.ndarray:
    """sign(W) (out, in) -> uint64 (out, ceil(in/64))."""
    return pack_canonical_mask(sign_mask(w))


def unpack_canonical(words: np.ndarray, in_features: int) -> np.ndarray:
    """uint64 (out, nw) -> float32 (out, in_features) of +-1, bit-exact inverse of pack_canonical."""
    return mask_to_signs(unpack_canonical_mask(words, in_features))


# ---- blocked: 256-input blocks, byte k bit b = input 32*b + k ----

def pack_blocked_mask(mask: np.ndarray) -> np.ndarray:
    """bool (out, in) -> uint8 (out, 32*ceil(in/256))."""
    out_f, in_f = mask.shape
    nblk = _ceil_div(in_f, BLOCK)
    m = _pad_mask(mask, out_f, BLOCK * nblk).reshape(out_f, nblk, 8, 32)  # (out, blk, b, k)
    m = m.transpose(0, 1, 3, 2)                                           # (out, blk, k, b)
    return np.packbits(m, axis=-1, bitorder="little").reshape(out_f, 32 * nblk)


def unpack_blocked_mask(bits: np.ndarray, in_features: int) -> np.ndarray:
    """uint8 (out, 32*nblk) -> bool (out, in_features)."""
    out_f, nbytes = bits.shape
    m = np.unpackbits(bits.reshape(out_f, nbytes // 32, 32, 1), axis=-1, bitorder="little")
    m = m.transpose(0, 1, 3, 2).reshape(out_f, 8 * nbytes)                # (out, blk*256 + 32*b + k)
    return m[:, :in_features].astype(bool)


# ---- lut3: 8 rows per group, one row per 32-bit lane, 10 fields of 3 bits per lane ----

def pack_lut3_mask(mask: np.ndarray) -> np.ndarray:
    """bool (out, in) -> uint32 (ceil(out/8), ceil(in/30), 8)."""
    out_f, in_f = mask.shape
    ng, nw = _ceil_div(out_f, LUT_ROWS), _ceil_div(in_f, LUT_WORD)
    m = _pad_mask(mask, LUT_ROWS * ng, LUT_WORD * nw).reshape(ng, LUT_ROWS, nw * LUT_WORD)
    shifts = np.arange(LUT_WORD, dtype=np.uint32)                         # field g, bit t -> 3g+t
    lanes = np.zeros((ng, LUT_ROWS, nw), dtype=np.uint32)
    for j in range(LUT_WORD):
        lanes |= m[:, :, j::LUT_WORD].astype(np.uint32) << shifts[j]
    return np.ascontiguousarray(lanes.transpose(0, 2, 1))                 # (ng, nw, 8)


def unpack_lut3_mask(lanes: np.ndarray, out_features: int, in_features: int) -> np.ndarray:
    """uint32 (ng, nw, 8) -> bool (out_features, in_features)."""
    ng, nw, _ = lanes.shape
    rows = lanes.transpose(0, 2, 1).reshape(ng * LUT_ROWS, nw)            # (rows, nw)
    j = np.arange(LUT_WORD, dtype=np.uint32)
    m = (rows[:, :, None] >> j) & 1                                       # (rows, nw, 30)
    return m.reshape(ng * LUT_ROWS, nw * LUT_WORD)[:out_features, :in_features].astype(bool)


# ---- nib4: 32-row tiles of 4-input nibbles, two groups per 32-byte vector ----

def nib4_from_blocked(bits: np.ndarray) -> np.ndarray:
    """blocked uint8 (out, 32*nblk) -> nib4 uint8 (ceil(out/32), 32*nblk, 32), straight from the bits.

    Blocked byte 32*blk + 4m + i, bit b is input 256*blk + 32*b + 4m + i: group g = 64*blk + 8*b + m,
    nibble bit i. Read 4 bytes as one little-endian uint32 w: (w >> b) & 0x01010101 keeps bit b of
    each byte at bits 0, 8, 16, 24, and multiplying by 0x01020408 moves them, without carries, to
    bits 24..27 (a 4 x 8 bit transpose in 4 operations)."""
    out_f, nbytes = bits.shape
    nblk, tiles = nbytes // 32, _ceil_div(out_f, NIB_ROWS)
    words = np.zeros((tiles * NIB_ROWS, nblk, 8), "<u4")                  # (rows, blk, m)
    words[:out_f] = np.ascontiguousarray(bits).view("<u4").reshape(out_f, nblk, 8)
    nib = np.empty((tiles * NIB_ROWS, nblk, 8, 8), np.uint8)              # (rows, blk, b, m)
    for b in range(8):
        nib[:, :, b] = (((words >> np.uint32(b)) & np.uint32(0x01010101)) * np.uint32(0x01020408)) >> np.uint32(24)
    n = nib.reshape(tiles, 2, 16, 32 * nblk, 2)                           # (t, half, k, p, l)
    packed = n[:, 0] | (n[:, 1] << 4)                                     # (t, k, p, l)
    return np.ascontiguousarray(packed.transpose(0, 2, 3, 1)).reshape(tiles, 32 * nblk, 32)


def unpack_nib4_mask(nib: np.ndarray, out_features: int, in_features: int) -> np.ndarray:
    """uint8 (tiles, P, 32) -> bool (out_features, in_features): the inverse, from the nib4 rules."""
    tiles, pairs, _ = nib.shape
    b = nib.reshape(tiles, pairs, 2, 16)                                  # (t, p, l, k)
    halves = np.stack([b & 15, b >> 4], axis=1)                           # (t, half, p, l, k)
    n = halves.transpose(0, 1, 4, 2, 3).reshape(tiles * NIB_ROWS, 2 * pairs)   # (row, group)
    m = (n[:, :, None] >> np.arange(4, dtype=np.uint8)) & 1               # (row, group, i)
    return m.reshape(tiles * NIB_ROWS, -1)[:out_features, :in_features].astype(bool)


@dataclass
class PackedSigns:
    """sign(W) of one binarized linear, kept packed: what the kernels and a packed runtime hold.

    bits: blocked layout, uint8 (out, 32*ceil(in/256)), read by every kernel except lut3 and v9; None
          where nib4 alone holds the signs (a .fbipack in the nib4 layout: v7 then rewrites groups of
          tiles into blocked bits in a core's cache, the other batch kernels get a linear's blocked bits
          rewritten per call, kernels/nib4_blocked.py).
    lut:  optional lut3 layout, uint32 (ceil(out/8), ceil(in/30), 8): one more bit per weight, for
          the fastest exact batch-1 kernel (v3_lut3_f32).
    nib4: optional nib4 layout, uint8 (ceil(out/32), 32*ceil(in/256), 32): for the fastest AVX2 int8
          batch-1 kernel (v9_lut4_int8); one more bit per weight beside bits, or the only copy.
    """
    out_features: int
    in_features: int
    bits: np.ndarray | None
    lut: np.ndarray | None = None
    nib4: np.ndarray | None = None

    def __post_init__(self):
        if self.bits is None and self.nib4 is None:
            raise ValueError("PackedSigns needs the blocked bits or the nib4 tiles")

    @property
    def nbytes(self) -> int:
        return sum(0 if a is None else a.nbytes for a in (self.bits, self.lut, self.nib4))

    def mask(self) -> np.ndarray:
        """bool (out, in), True where sign(W) = +1."""
        if self.bits is None:
            return unpack_nib4_mask(self.nib4, self.out_features, self.in_features)
        return unpack_blocked_mask(self.bits, self.in_features)

    def canonical(self) -> np.ndarray:
        """The canonical uint64 (out, ceil(in/64)) words of the same signs."""
        return pack_canonical_mask(self.mask())

    def with_lut(self) -> "PackedSigns":
        """The same signs with the lut3 layout added (built from the bits, not from W)."""
        if self.lut is not None:
            return self
        return PackedSigns(self.out_features, self.in_features, self.bits, pack_lut3_mask(self.mask()), self.nib4)

    def with_nib4(self) -> "PackedSigns":
        """The same signs with the nib4 layout added (built from the bits)."""
        if self.nib4 is not None:
            return self
        return PackedSigns(self.out_features, self.in_features, self.bits, self.lut, nib4_from_blocked(self.bits))


def product_out(out, n_tok: int, n_out: int) -> np.ndarray:
    """The (n_tok, n_out) float32 array a batch product writes: `out` where given (a caller's buffer reused
    across calls: a fresh multi-MB array per call may be fresh pages from the OS, each faulted in and
    zeroed again; docs/runtime.md measures what that cost a 7B's prefill), else a new one."""
    if out is None:
        return np.empty((n_tok, n_out), np.float32)
    if out.shape != (n_tok, n_out) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 {(n_tok, n_out)}, got {out.dtype} {out.shape}")
    return out


def pack_signs_mask(mask: np.ndarray, lut: bool = False) -> PackedSigns:
    """bool (out, in) +1-mask -> PackedSigns."""
    out_f, in_f = mask.shape
    return PackedSigns(out_f, in_f, pack_blocked_mask(mask), pack_lut3_mask(mask) if lut else None)


def pack_signs(w: np.ndarray, lut: bool = False) -> PackedSigns:
    """sign(W) (out, in) -> PackedSigns (blocked bits, plus the lut3 layout if lut=True)."""
    return pack_signs_mask(sign_mask(w), lut=lut)


def from_canonical(words: np.ndarray, in_features: int, lut: bool = False) -> PackedSigns:
    """PackedSigns from canonical uint64 words (out, ceil(in/64)), e.g. read from a file."""
    return pack_signs_mask(unpack_canonical_mask(words, in_features), lut=lut)


def unpack_signs(packed: PackedSigns) -> np.ndarray:
    """float32 (out, in) of +-1, the bit-exact inverse of pack_signs."""
    return mask_to_signs(packed.mask())


def _selfcheck() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((13, 301)).astype(np.float32)
    w[0, :7] = 0.0                                                        # zeros must pack as +1
    signs = np.where(w >= 0, 1.0, -1.0)
    assert np.array_equal(unpack_canonical(pack_canonical(w), 301), signs)
    packed = pack_signs(w, lut=True)
    assert np.array_equal(unpack_signs(packed), signs)
    assert np.array_equal(mask_to_signs(unpack_lut3_mask(packed.lut, 13, 301)), signs)
    assert np.array_equal(mask_to_signs(unpack_nib4_mask(packed.with_nib4().nib4, 13, 301)), signs)
    print("bitpack round trips: ok")
