"""A/B timing of the 512-bit kernels (v10, v11, v12, v13) beside the kernels they would replace, in one
process: each round calls every kernel (batch 1: --block times in a row), in alternating order, and
each kernel's figure is the median of its calls. A row starts only after 2 s in which other processes
used under 3% of the CPUs, and is timed again (up to --attempts times) when they used more while it
ran; the `others` column is that share for the attempt shown. Random signs; weights hot (the same
matrix every call) or, with --copies N, cold (cycled through N copies: 48 copies of 11008x4096 in
both layouts are 540 MB, past L2 and most of a 480 MB L3).

    python -m tinyfbi.bench.kernels_avx512                                 # 3 shapes x batch 1, 128, 512, 2 threads
    python -m tinyfbi.bench.kernels_avx512 --shape 4096x4096 --batch 1 --threads 1
    python -m tinyfbi.bench.kernels_avx512 --batch 1 --copies 48            # decode with the weights cold

Batch 1 (decode): v13 (dispatched on the blocked bits), v9 (dispatched with nib4), v11 (v9 in zmm),
v8 and v10 (vpdpbusd 256 / 512), v12 and v4 (popcount, zmm / LLVM's choice). Batch >= 4 (prefill):
v10 (dispatched), v8, v7.
Needs AVX-512 F/BW/VL + VNNI (kernels.simd.ISA == 'avx512').
"""
import os
import time

import numba
import numpy as np

from kernels import bitpack
from kernels.bitpack import PackedSigns
from kernels.simd import HAS_AVX512_VNNI, ISA
from kernels.v4_popcount_int8 import matvec_popcount_int8
from kernels.v7_maddubs_gemm_int8 import matmul_maddubs_int8
from kernels.v8_vnni_int8 import matmul_vnni_int8, matvec_vnni_int8
from kernels.v9_lut4_int8 import matvec_lut4_int8
from kernels.v10_vnni512_int8 import matmul_vnni512_int8, matvec_vnni512_int8
from kernels.v11_lut4_512_int8 import matvec_lut4_512_int8
from kernels.v12_vpopcnt_int8 import matvec_vpopcnt_int8
from kernels.v13_kmask_int8 import matvec_kmask_int8

from ..cli import CLIParser, run_cli
from ..core.errors import TinyFBIError


def _jiffies():
    """(all CPUs' jiffies, busy jiffies, this process's jiffies) from /proc."""
    f = open("/proc/stat").readline().split()[1:9]
    total = sum(map(int, f))
    me = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    return total, total - int(f[3]) - int(f[4]), int(me[11]) + int(me[12])


def others_share(j0, j1) -> float:
    """Share of all CPUs' time other processes used between two _jiffies() readings."""
    return max(0, (j1[1] - j0[1]) - (j1[2] - j0[2])) / max(1, j1[0] - j0[0])


def alternate(fns, calls: int, min_s: float, block: int = 1, copies: int = 1):
    """Median ms of each fn(copy), calling each `block` times in a row per round, kernels forward then
    backward. Weights hot (copies=1): the first call of each block is not counted, so every kernel is
    timed after itself, on its own layout in cache. Call by call, a kernel's time depended on its
    neighbour: on the AVX-512 Xeon v9 took 0.06 ms at 4096x4096 right after a nib4 kernel that does
    not prefetch, 0.15-0.18 ms after itself (its non-temporal prefetch keeps its bits out of L2 there).
    Cold (copies > 1): every call reads the next copy, every call counted."""
    for f in fns:
        f(0), f(0)
    times = [[] for _ in fns]
    end, rounds, c = time.perf_counter() + min_s, 0, 0
    while rounds < calls or time.perf_counter() < end:
        order = range(len(fns)) if rounds % 2 == 0 else range(len(fns) - 1, -1, -1)
        for j in order:
            for i in range(block):
                c += 1
                t0 = time.perf_counter()
                fns[j](c % copies)
                if copies > 1 or i > 0 or block == 1:
                    times[j].append(time.perf_counter() - t0)
        rounds += 1
    return [float(np.median(t)) * 1e3 for t in times], rounds


def kernels_for(batch: int, ps, a, b, x):
    """name -> fn(copy index) for this batch: the decode (batch 1) or the prefill kernels."""
    if batch == 1:
        x1 = x[0]
        return {"v13": lambda c: matvec_kmask_int8(ps[c], a, b, x1), "v9": lambda c: matvec_lut4_int8(ps[c], a, b, x1), "v11": lambda c: matvec_lut4_512_int8(ps[c], a, b, x1),
                "v8": lambda c: matvec_vnni_int8(ps[c], a, b, x1), "v10": lambda c: matvec_vnni512_int8(ps[c], a, b, x1),
                "v12": lambda c: matvec_vpopcnt_int8(ps[c], a, b, x1), "v4": lambda c: matvec_popcount_int8(ps[c], a, b, x1)}
    return {"v8": lambda c: matmul_vnni_int8(ps[c], a, b, x), "v10": lambda c: matmul_vnni512_int8(ps[c], a, b, x),
            "v7": lambda c: matmul_maddubs_int8(ps[c], a, b, x)}


def main(argv=None):
    ap = CLIParser("python -m tinyfbi.bench.kernels_avx512", __doc__.split("\n")[0])
    ap.add_argument("--shape", action="append", help="OUTxIN (repeatable); default 4096x4096, 11008x4096, 4096x11008")
    ap.add_argument("--batch", action="append", type=int, help="tokens (repeatable); default 1, 128, 512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attempts", type=int, default=6)
    ap.add_argument("--block", type=int, default=8, help="calls of one kernel in a row per round (hot: first not counted)")
    ap.add_argument("--copies", type=int, default=1, help="cycle the weights through this many copies (> 1: cold)")
    args = ap.parse_args(argv)
    run_cli(bench, args)


def bench(args):
    if not HAS_AVX512_VNNI:
        raise TinyFBIError(f"needs AVX-512 F/BW/VL + VNNI; kernels.simd.ISA = {ISA!r}")
    numba.set_num_threads(args.threads)
    shapes = [tuple(map(int, s.split("x"))) for s in (args.shape or ["4096x4096", "11008x4096", "4096x11008"])]
    rng = np.random.default_rng(0)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} threads={args.threads} isa={ISA} numba={numba.__version__} "
          f"weights {'hot' if args.copies == 1 else f'cold ({args.copies} copies)'}, batch-1 blocks of {args.block}")
    for out_f, in_f in shapes:
        p = bitpack.pack_signs(rng.standard_normal((out_f, in_f)).astype(np.float32)).with_nib4()
        ps = [p] + [PackedSigns(out_f, in_f, p.bits.copy(), None, p.nib4.copy()) for _ in range(args.copies - 1)]
        a = rng.uniform(0.1, 2, in_f).astype(np.float32)
        b = (rng.standard_normal(in_f) * 0.1).astype(np.float32)
        for batch in args.batch or [1, 128, 512]:
            x = rng.standard_normal((batch, in_f)).astype(np.float32)
            ks = kernels_for(batch, ps, a, b, x)
            calls, min_s = (max(1, 400 // args.block), 2.0) if batch == 1 else (15 if batch <= 128 else 7, 3.0)
            best = None
            for _ in range(args.attempts):
                while True:                                   # start after 2 s with the CPUs idle
                    j = _jiffies()
                    time.sleep(2.0)
                    if others_share(j, _jiffies()) < 0.03:
                        break
                j0, load = _jiffies(), os.getloadavg()[0]
                med, rounds = alternate(list(ks.values()), calls, min_s, args.block if batch == 1 else 1, args.copies)
                other = others_share(j0, _jiffies())
                if best is None or other < best[2]:
                    best = (med, rounds, other, load, time.strftime("%H:%M:%S"))
                if other < 0.03:
                    break
            med, rounds, other, load, at = best
            cells = "  ".join(f"{k} {m:8.3f}" for k, m in zip(ks, med))
            print(f"{out_f:5d}x{in_f:<5d} B={batch:4d}  {cells}  ms  (rounds {rounds}, others {other:.2f}, "
                  f"load {load:.2f}, {at})", flush=True)


if __name__ == "__main__":
    main()
