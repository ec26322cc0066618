"""The one timing helper of every benchmark: seconds per call, and their median in ms.

    times = call_times(lambda i: fn(*arg_sets[i % len(arg_sets)]), 5, warmup=1, min_s=0.4, max_n=500)
    print(median_ms(times))

On a shared machine `LoadMeter` says how much of the CPUs other processes took meanwhile.
"""
from __future__ import annotations

import os
import time

import numpy as np


def call_times(call, n: int, warmup: int = 0, min_s: float = 0.0, max_n: int | None = None) -> list[float]:
    """Seconds of each timed call(i), i = 0, 1, ...: `warmup` untimed calls first (caches, thread pools,
    compilation), then n timed ones, and more while they took under min_s in all (at most max_n)."""
    for i in range(warmup):
        call(i)
    max_n = max(n, max_n or n)
    times, start = [], time.perf_counter()
    while len(times) < max_n and (len(times) < n or time.perf_counter() - start < min_s):
        t = time.perf_counter()
        call(len(times))
        times.append(time.perf_counter() - t)
    return times


def median_ms(times) -> float:
    return 1e3 * float(np.median(times))


class LoadMeter:
    """CPU share used by other processes since start, from /proc/stat minus this process's CPU time."""

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                v = [int(t) for t in f.readline().split()[1:]]
        except OSError:
            return None
        busy, total = sum(v) - v[3] - v[4], sum(v)                    # all but idle and iowait
        cpu = os.times()
        return busy, total, cpu.user + cpu.system, os.sysconf("SC_CLK_TCK")

    def other_share(self):
        now = self._read()
        if now is None or self.start is None:
            return None
        (b0, t0, c0, hz), (b1, t1, c1, _) = self.start, now
        return max(0.0, ((b1 - b0) - (c1 - c0) * hz) / max(t1 - t0, 1))
