"""The machine a benchmark ran on, described once for every benchmark: the CPU's model and cores, a
torch device's name and the bf16 dense peak MFU is reported against. The instruction set the kernels
run is kernels.simd.ISA (a packed runner reports it in its `describe()`).

    python -c "from tinyfbi.bench.machine import describe; print(describe())"
"""
from __future__ import annotations

import os

from ..torch_backend.device import device_name, peak_bf16_flops  # noqa: F401  (re-exported: one machine description)


def cpu_name() -> str:
    """The CPU model /proc/cpuinfo names, for the header of every benchmark."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def describe() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count()}


def seconds_since_start() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere): load times include the imports."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])          # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
