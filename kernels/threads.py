"""Threads for the Numba kernels, NumPy's OpenBLAS and (if given) torch: the one setter that
`python -m tinyfbi.generate --threads N` and every benchmark use.

    from kernels.threads import set_threads
    set_threads(2)
"""
import ctypes
import glob
import os

import numba
import numpy as np


def _openblas():
    """NumPy's bundled OpenBLAS (scipy-openblas wheels), for setting its thread count; None if not found."""
    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(libdir, "libscipy_openblas*.so*")):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            if hasattr(lib, name):
                return getattr(lib, name)
    return None


OPENBLAS_SET = _openblas()


def set_threads(n: int, torch=None) -> None:
    """n threads for the Numba kernels, NumPy's OpenBLAS and (if given) torch."""
    numba.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    if OPENBLAS_SET is not None:
        OPENBLAS_SET(n)
