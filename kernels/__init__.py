"""Numba bit-packed kernels for FBI-Linear: y = sign(W) @ (alpha * x) + beta . x (see README.md).

One idea per file, v1 the NumPy reference every other version is checked against:
    bitpack.py   bit layouts of sign(W) and their exact inverses (NumPy only, no Numba)
    dispatch.py  matvec(packed, alpha, beta, x, kind): picks a kernel by batch size and CPU
    v1..v7       the kernels; act_int8.py the int8 activation rounding; simd.py LLVM helpers
    bench.py     `python -m kernels.bench`: every kernel vs NumPy/torch float32

Importing this package compiles nothing: a kernel compiles when its module is imported.
Dependency rule: kernels import only tinyfbi.core (the one binarize) and each other.
"""
