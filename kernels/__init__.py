"""Numba bit-packed kernels for FBI-Linear: y = sign(W) @ (alpha * x) + beta . x (see README.md).

One idea per file, v1 the NumPy reference every other version is checked against:
    bitpack.py   bit layouts of sign(W) and their exact inverses (NumPy only, no Numba)
    dispatch.py  matvec(packed, alpha, beta, x, kind): picks a kernel by batch size and CPU
    v1..v12      the kernels (v8: AVX-512 VNNI, v9: 4-input tables; v10, v11, v12: v8, v9 and v4 in
                 512-bit vectors); act_int8.py the int8 activation rounding, int8_loops.py the
                 quantize-and-rows loops v5, v7, v8 and v10 share
    simd.py      LLVM helpers and the instruction set chosen at run time (ISA, TINYFBI_ISA=avx2)
    stacked.py   linears sharing an input (q/k/v, gate/up) in one batch-1 call, for decode
    dense_head.py  lm_head as fp16 or int8 rows times float32
    decode_ops.py  RMSNorm, RoPE + KV append + attention, SwiGLU for the packed decode step
    threads.py   set_threads: the kernels', NumPy's BLAS and torch's thread count
Their benchmark is `python -m tinyfbi.bench.kernels` (tinyfbi/bench/: every benchmark, one room).

Importing this package compiles nothing: a kernel compiles when its module is imported.
Dependency rule: kernels import only tinyfbi.core (the one binarize) and each other.
"""
