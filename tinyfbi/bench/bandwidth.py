"""What a batch-1 timing is measured against: the last-level cache, the DRAM read bandwidth and the load.

A matrix-vector product reads every weight once and does two flops per weight, so on a CPU it is
limited by how fast the weights arrive: from the L3 when they fit there and were just used (hot),
from DRAM when they do not (cold, as in a real model's decode, whose layers together are many times
the L3). This file measures the bandwidth such a product can reach, and builds enough copies of a
layer that cycling through them misses the L3. Notebook 04 and `python -m tinyfbi.bench.bandwidth` use it.

    python -m tinyfbi.bench.bandwidth          # L3 size, DRAM read GB/s on 1 thread, the load average
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import numba
import numpy as np

from .timing import call_times

FALLBACK_L3 = 32 << 20            # when the OS does not say (a 32 MB L3: a large one for a laptop)
COLD_FACTOR = 4                   # cold copies fill this many L3s, so a pass over them misses it


def l3_bytes(cpu_dir="/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """Size of the largest cache level the OS lists for cpu0 (Linux sysfs), in bytes; None if unknown."""
    best = None
    for index in sorted(Path(cpu_dir).glob("index*")):
        try:
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()                   # e.g. "32768K"
        except (OSError, ValueError):
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:].upper(), 1)
        value = int(size.rstrip("KMGkmg")) * unit
        if best is None or level > best[0]:
            best = (level, value)
    return None if best is None else best[1]


def cold_count(nbytes: int, l3: int | None = None) -> int:
    """How many copies of an nbytes layer fill COLD_FACTOR L3s (at least 2): cycling through them,
    each call finds its weights evicted by the others and reads them from DRAM."""
    return max(2, math.ceil(COLD_FACTOR * (l3 or l3_bytes() or FALLBACK_L3) / max(nbytes, 1)))


def cold_copies(weights, l3: int | None = None) -> list:
    """Independent copies of an array, or of a dataclass of arrays (kernels.bitpack.PackedSigns: every
    layout it carries), enough that cycling through them misses the L3 (cold_count of its bytes)."""
    if isinstance(weights, np.ndarray):
        return [weights.copy() for _ in range(cold_count(weights.nbytes, l3))]
    arrays = {f.name: getattr(weights, f.name) for f in dataclasses.fields(weights)
              if isinstance(getattr(weights, f.name), np.ndarray)}
    # one layout is read per call: count copies by the smallest, so each layout's cycle misses the L3
    n = cold_count(min(a.nbytes for a in arrays.values()), l3)
    return [dataclasses.replace(weights, **{k: a.copy() for k, a in arrays.items()}) for _ in range(n)]


@numba.njit(cache=True)
def _sum_words(words):
    """Sum of uint64 words, read as four streams (the four quarters) at once: vectorized adds and four
    prefetch streams keep one core waiting on DRAM, not on itself (one stream read about 20% slower)."""
    n = words.shape[0] // 4
    a = b = c = d = np.uint64(0)
    for i in range(n):
        a += words[i]
        b += words[n + i]
        c += words[2 * n + i]
        d += words[3 * n + i]
    for i in range(4 * n, words.shape[0]):
        a += words[i]
    return a + b + c + d


def read_probe(nbytes: int | None = None, chunk: int = 4 << 20):
    """(call, bytes per call): call(i) sums chunk i (mod the number of chunks) of a buffer of COLD_FACTOR
    L3s (at least 128 MiB), so no call finds its chunk in the cache. A call lasts about as long as one
    product of a 7B layer's 1-bit weights, so a busy machine interrupts it about as often. Timed beside
    other calls (alternated_ms), its bytes per second are the DRAM read bandwidth of one thread under
    the same load as theirs."""
    nbytes = nbytes or max(128 << 20, COLD_FACTOR * (l3_bytes() or FALLBACK_L3))
    words = np.ones(nbytes // 8, np.uint64)                              # written once: pages mapped
    chunks = words[: nbytes // chunk * (chunk // 8)].reshape(-1, chunk // 8)   # (n, chunk / 8)
    _sum_words(chunks[0])                                                # compile (or load from the cache)
    return (lambda i: _sum_words(chunks[i % len(chunks)])), chunks[0].nbytes


def read_bandwidth_gbs(n: int = 100) -> float:
    """DRAM read bandwidth of one thread, GB/s (1e9 bytes): the median of n probe calls."""
    call, nbytes = read_probe()
    return nbytes / float(np.median(call_times(call, n, warmup=1))) / 1e9


def alternated_ms(calls: dict, rounds: int, n: int = 20, min_s: float = 0.2) -> dict:
    """name -> {"wall": [median ms per round], "cpu": [...]}, each call(i) timed by two clocks: the wall
    clock, and this process's CPU time (its threads' running time, memory stalls included, but not the
    time another process held the core: on a shared machine, the one that still means something for a
    one-thread call). Within a round the calls take turns, at least n calls and min_s seconds each, so
    a burst of load falls on all of them alike; the spread over rounds shows how far it moved them.
    call(i) is given the call's index: cycling through cold copies with it misses the L3."""
    out = {name: {"wall": [], "cpu": []} for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            call(0)                                                      # warm: compiled, pages mapped
            wall, cpu, start = [], [], time.perf_counter()
            while len(wall) < n or time.perf_counter() - start < min_s:
                t, c = time.perf_counter(), time.process_time()
                call(len(wall) + 1)
                cpu.append(time.process_time() - c)
                wall.append(time.perf_counter() - t)
            out[name]["wall"].append(1e3 * float(np.median(wall)))
            out[name]["cpu"].append(1e3 * float(np.median(cpu)))
    return out


def load_average() -> tuple[float, float, float] | None:
    """The OS's 1, 5 and 15 minute load averages (runnable processes; compare with os.cpu_count())."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def main():
    load = load_average()
    l3 = l3_bytes()
    print(f"L3 {'unknown' if l3 is None else f'{l3 / 2**20:.0f} MiB'}, DRAM read {read_bandwidth_gbs():.1f} GB/s "
          f"(1 thread), load average {load and ' / '.join(f'{x:.2f}' for x in load)} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
