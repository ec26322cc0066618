"""The kernels built by a factory around a row intrinsic (int8_loops.rows_matvec / rows_matmul,
stacked.stacked_rows) load from Numba's on-disk cache in a new process instead of compiling again.

Numba keys a closure's cache entry by its pickled closure variables; an intrinsic pickled with a
per-process uuid and with llvmlite types whose pickle changes once printed, and a Numba function
closed over pickles differently in every process (kernels.simd.cache_stable). Oracle: Numba's own
counters (dispatcher.stats.cache_hits / cache_misses) in a second process over the same cache folder.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from kernels.simd import HAS_AVX2

REPO = Path(__file__).resolve().parents[1]
CODE = """
import json, numpy as np
from kernels.bitpack import PackedSigns
from kernels import stacked, v5_maddubs_int8, v7_maddubs_gemm_int8
p = PackedSigns(64, 256, np.zeros((64, 32), np.uint8))
ones, zeros = np.ones(256, np.float32), np.zeros(256, np.float32)
fns = {"stacked_rows twin": stacked._int8_kmask_emulated}
if %(avx2)s:                                  # v5 and v7 emit AVX2 instructions
    v5_maddubs_int8.matvec_maddubs_int8(p, ones, zeros, ones)
    fns["rows_matvec v5"] = v5_maddubs_int8._matvec
    v7_maddubs_gemm_int8.matmul_maddubs_int8(p, ones, zeros, np.ones((5, 256), np.float32))
    fns["rows_matmul v7"] = v7_maddubs_gemm_int8._matmul
    tiles = PackedSigns(64, 256, None, nib4=np.zeros((2, 32, 32), np.uint8))
    v7_maddubs_gemm_int8.matmul_maddubs_int8(tiles, ones, zeros, np.ones((5, 256), np.float32))
    fns["rows_matmul_nib4 v7"] = v7_maddubs_gemm_int8._matmul_nib4
y = np.empty(64, np.float32)
stacked._int8_kmask_emulated(p.bits, np.array([64]), ones[None], zeros[None], ones, y)
print(json.dumps({k: [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())] for k, f in fns.items()}))
"""


def test_factory_kernels_load_from_the_cache_in_a_new_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", CODE % {"avx2": HAS_AVX2}], capture_output=True, text=True,
                             env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for name, (hits, misses) in runs[0].items():
        assert hits == 0 and misses >= 1, name                 # the first process compiles
    for name, (hits, misses) in runs[1].items():
        assert hits >= 1 and misses == 0, name                 # the second loads what the first saved
