"""Which kernel runs a product: the stable API the packed runtime calls (compiles every kernel).

    from kernels.bitpack import pack_signs, unpack_signs
    from kernels.dispatch import matvec, kernel_name

    packed = pack_signs(W, lut=True)           # PackedSigns: sign(W) as bits, 1 bit (+1 with lut)
    y = matvec(packed, alpha, beta, x)          # x (in,) -> (out,), or (B, in) -> (B, out)
    y = matvec(packed, alpha, beta, x, kind="int8")
    signs = unpack_signs(packed)                # float32 (out, in) of +-1, bit-exact

`kind="exact"` agrees with float32 maths to float32 rounding; `kind="int8"` rounds alpha * x to
int8 per token (error bound in act_int8.py) and is about twice as fast. The kernel is
chosen by batch size, by the layouts `packed` carries and by kernels.simd.ISA, the instruction set
found at run time ('avx512' with VNNI -> v10 for int8 batches and v13 for batch 1 unless the nib4
tiles are present, 'avx2' -> v3/v5/v7, v9 for int8 batch 1 wherever packed.nib4 is present,
'portable' -> v2/v4/v6; TINYFBI_ISA=avx2 or =portable steps down). Signs held as nib4 tiles alone
(packed.bits None) are read by v9 and v7 as they are (v7 rewrites one 32-row tile at a time into
blocked bits in the core's cache), and rewritten to blocked bits for each call of the other kernels
(kernels/nib4_blocked.py). `int8_decode_layout()` says which layout int8 decode reads fastest on
this CPU;
`kernel_name` says which. Threads: whatever numba.set_num_threads
and the BLAS library are set to.
"""
import numpy as np

from kernels.bitpack import PackedSigns, product_out
from kernels.nib4_blocked import blocked_from_nib4
from kernels.simd import HAS_AVX2, HAS_AVX512_VNNI
from kernels.v2_masked_f32 import matvec_masked_f32
from kernels.v3_lut3_f32 import matvec_lut3_f32
from kernels.v4_popcount_int8 import matvec_popcount_int8
from kernels.v5_maddubs_int8 import matvec_maddubs_int8
from kernels.v6_tiles_blas import matmul_tiles_blas
from kernels.v7_maddubs_gemm_int8 import matmul_maddubs_int8
from kernels.v8_vnni_int8 import matmul_vnni_int8, matvec_vnni_int8
from kernels.v9_lut4_int8 import matvec_lut4_int8
from kernels.v10_vnni512_int8 import matmul_vnni512_int8, matvec_vnni512_int8
from kernels.v13_kmask_int8 import matvec_kmask_int8

BATCH_MIN = 32       # exact: from this many tokens on, BLAS over decoded tiles beats a v3 loop
BATCH_MIN_INT8 = 4   # int8: from this many tokens on, v7 (4 tokens per pass over the bits) wins
_BATCH1 = {
    "v2_masked_f32": matvec_masked_f32, "v3_lut3_f32": matvec_lut3_f32,
    "v4_popcount_int8": matvec_popcount_int8, "v5_maddubs_int8": matvec_maddubs_int8,
    "v8_vnni_int8": matvec_vnni_int8, "v9_lut4_int8": matvec_lut4_int8, "v10_vnni512_int8": matvec_vnni512_int8,
    "v13_kmask_int8": matvec_kmask_int8,
}
_BATCH = {"v6_tiles_blas": matmul_tiles_blas, "v7_maddubs_gemm_int8": matmul_maddubs_int8,
          "v8_vnni_gemm_int8": matmul_vnni_int8, "v10_vnni512_gemm_int8": matmul_vnni512_int8}


LAYOUTS = ("blocked", "nib4")
READS_NIB4 = ("v9_lut4_int8", "v7_maddubs_gemm_int8")   # v7 rewrites one tile at a time in a core's cache


def int8_decode_layout(prefer: str = "auto") -> str:
    """The sign layout int8 decode reads fastest on this CPU, or `prefer` where it names one. 'blocked':
    v13's masked loads (AVX-512 VNNI); elsewhere v5 (AVX2) or v4. 'nib4': v9's tables, the fastest
    decode with AVX2 alone (docs/runtime.md has both measured). Either is the one copy of the signs:
    the batch kernels read nib4 tiles through a per-call rewrite (kernels/nib4_blocked.py)."""
    if prefer not in ("auto",) + LAYOUTS:
        raise ValueError(f"layout must be auto, blocked or nib4, got {prefer!r}")
    if prefer == "auto":
        return "blocked" if HAS_AVX512_VNNI or not HAS_AVX2 else "nib4"
    return prefer


def kernel_name(packed: PackedSigns, batch: int, kind: str = "exact") -> str:
    """The kernel matvec uses for this many tokens: 'v2_masked_f32', ..., 'v7_maddubs_gemm_int8'."""
    if kind not in ("exact", "int8"):
        raise ValueError(f"kind must be 'exact' or 'int8', got {kind!r}")
    if kind == "int8" and HAS_AVX2 and batch < BATCH_MIN_INT8 and packed.nib4 is not None:
        return "v9_lut4_int8"                                       # tables shared by 32 rows: fastest decode
    if kind == "int8" and HAS_AVX512_VNNI:     # batch: v10, 2 planes per vpdpbusd; batch 1: v13, masked loads
        return "v10_vnni512_gemm_int8" if batch >= BATCH_MIN_INT8 else "v13_kmask_int8"
    if kind == "int8" and HAS_AVX2:
        return "v7_maddubs_gemm_int8" if batch >= BATCH_MIN_INT8 else "v5_maddubs_int8"
    if batch >= BATCH_MIN:
        return "v6_tiles_blas"                                      # exact, also serves int8 without AVX2
    if kind == "int8":
        return "v4_popcount_int8"
    return "v3_lut3_f32" if HAS_AVX2 and packed.lut is not None else "v2_masked_f32"


def is_batch_kernel(name: str) -> bool:
    """True for the kernels that take all tokens in one call (v6, v7, v8 batch); False for the looped ones."""
    return name in _BATCH


def matvec(packed: PackedSigns, alpha, beta, x, kind: str = "exact", out=None) -> np.ndarray:
    """alpha, beta (1, in) or (in,); x (in,) -> y (out,) or x (B, in) -> y (B, out), float32. out: a
    C-contiguous float32 (B, out) buffer the batch kernels write into (a caller reusing one per shape
    spares the OS's fresh pages per call); the token-by-token kernels copy their rows into it."""
    n_in = packed.in_features
    alpha = np.ascontiguousarray(alpha, np.float32).reshape(-1)      # (in,), one per input column
    beta = np.ascontiguousarray(beta, np.float32).reshape(-1)        # (in,)
    x = np.ascontiguousarray(x, np.float32)
    if alpha.shape[0] != n_in or beta.shape[0] != n_in:
        raise ValueError(f"alpha and beta need {n_in} values (one per input), got {alpha.size} and {beta.size}")
    if x.ndim not in (1, 2) or x.shape[-1] != n_in:
        raise ValueError(f"x must be ({n_in},) or (B, {n_in}), got {x.shape}")
    x2 = x.reshape(-1, n_in)                                         # (B, in)
    name = kernel_name(packed, x2.shape[0], kind)
    if packed.bits is None and name not in READS_NIB4:               # nib4 alone: this call's blocked bits
        packed = PackedSigns(packed.out_features, n_in, blocked_from_nib4(packed.nib4, packed.out_features, scratch=True),
                             packed.lut)
    if name in _BATCH:
        y = _BATCH[name](packed, alpha, beta, x2, out=out)          # (B, out)
    else:
        fn = _BATCH1[name]
        y = product_out(out, x2.shape[0], packed.out_features)
        for i, row in enumerate(x2):
            y[i] = fn(packed, alpha, beta, row)
    return y[0] if x.ndim == 1 else y
