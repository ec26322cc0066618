"""Writing SIMD from Numba: small llvmlite helpers shared by the kernels' intrinsics.

Numba's auto-vectorizer does not find the instructions a 1-bit kernel lives on (popcount, AVX2
maddubs, vpermps, sign-bit blends): scalar Numba forms ran 4-30x slower (v5's loop 30x, v6's
decode 4x, a scalar 8-input lookup table instead of v3 6x). So each fast kernel
writes its inner loop as LLVM IR in a `numba.extending.intrinsic`, which Numba inlines into the
njit caller and caches with it (cache=True). This file holds what those intrinsics share: the
host-feature check, typed data pointers into arrays, and horizontal sums of 256-bit vectors.
"""
import os

from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.config import CPU_FEATURES

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F32 = ir.FloatType()
V32xI8, V16xI16 = ir.VectorType(I8, 32), ir.VectorType(I16, 16)
V8xI32, V8xF32 = ir.VectorType(I32, 8), ir.VectorType(F32, 8)


ISA_ENV = "TINYFBI_ISA"       # "avx2" forces the AVX2 kernels on an AVX-512 CPU, "portable" the IR-only ones
AVX512_FEATURES = ("avx512f", "avx512bw", "avx512vl", "avx512vnni")   # what the VNNI kernels emit


def _target_features() -> set:
    """CPU features Numba compiles for: NUMBA_CPU_FEATURES where set (also '' for NUMBA_CPU_NAME=generic),
    else the host's, as Numba does (NUMBA_CPU_NAME alone changes the tuning, not the features)."""
    if CPU_FEATURES is not None:
        return {f[1:] for f in CPU_FEATURES.split(",") if f.startswith("+")}
    return {k for k, v in llvm_binding.get_host_cpu_features().items() if v}


def select_isa(features: set, forced: str = "") -> str:
    """'avx512' (VNNI vpdpbusd), 'avx2' (vpmaddubsw, vpermps) or 'portable' (target-independent IR).

    forced (the TINYFBI_ISA environment variable) may only step down, never claim what the CPU lacks."""
    order = ["portable", "avx2", "avx512"]
    best = "avx512" if all(f in features for f in AVX512_FEATURES) else "avx2" if "avx2" in features else "portable"
    if forced and forced not in order:
        raise ValueError(f"{ISA_ENV} must be one of {order}, got {forced!r}")
    return order[min(order.index(best), order.index(forced))] if forced else best


# Chosen once, at import, from the CPU this process runs on (not at install). The AVX2 kernels
# (v3, v5, v7) run when ISA is 'avx2' or 'avx512'; the VNNI ones (v8) only when it is 'avx512'; the
# portable kernels (v2, v4, v6) everywhere.
ISA = select_isa(_target_features(), os.environ.get(ISA_ENV, "").strip().lower())
HAS_AVX2 = ISA in ("avx2", "avx512")
HAS_AVX512_VNNI = ISA == "avx512"


def is_c_array(ty, dtype, ndim: int) -> bool:
    """Typing guard: ty is a C-contiguous Numba array of this dtype and ndim."""
    return isinstance(ty, types.Array) and ty.dtype == dtype and ty.ndim == ndim and ty.layout == "C"


def data_pointer(context, builder, arr_ty, arr, elem_ty):
    """(pointer to the array's first element, cast to elem_ty*, its number of items)."""
    a = context.make_array(arr_ty)(context, builder, arr)
    return builder.bitcast(a.data, elem_ty.as_pointer()), a.nitems


def hsum(builder, v):
    """Horizontal sum of an 8-lane vector (i32 or f32) by halving: 3 shuffle+add steps."""
    add = builder.fadd if isinstance(v.type.element, ir.FloatType) else builder.add
    n = v.type.count
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, n), list(range(n))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, n), list(range(n, 2 * n))))
        v = add(lo, hi)
    return builder.extract_element(v, ir.Constant(I32, 0))


def splat(vec_ty, value):
    """A constant vector with every lane = value."""
    return ir.Constant(vec_ty, [value] * vec_ty.count)


def counted_loop(builder, count):
    """`with counted_loop(builder, n) as i:` emits `for i in range(n)` in IR."""
    return _Loop(builder, count)


class _Loop:
    def __init__(self, builder, count):
        self._cm = cgutils.for_range(builder, count)

    def __enter__(self):
        return self._cm.__enter__().index

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def cache_stable(intrinsic_fn):
    """An intrinsic named by its module and qualified name, so that Numba can cache a closure over it.

    Numba keys the on-disk cache of a closure (the int8_loops and stacked factories) by its pickled
    closure variables. An intrinsic pickles with a uuid1 drawn afresh in every process, and with the
    llvmlite types its code uses, whose pickle changes once they are first printed (they cache their
    string) - which compiling does: the key looked up before the compile never equalled the one saved
    after it, so every process compiled the closure again (v7's prefill loop: seconds before the first
    prefill, tens of MB of LLVM memory). A fixed uuid and types printed up front keep the key the same."""
    if not any(k.endswith("__uuid") and v is not None for k, v in vars(intrinsic_fn).items()):
        intrinsic_fn._set_uuid(f"tinyfbi:{intrinsic_fn.__module__}.{intrinsic_fn.__qualname__}")
    for value in intrinsic_fn._defn.__globals__.values():
        if isinstance(value, ir.Type):
            str(value)
    return intrinsic_fn
