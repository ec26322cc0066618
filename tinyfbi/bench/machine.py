"""The machine a benchmark ran on, described once for every benchmark: the CPU's model and cores, a
torch device's name and the bf16 dense peak MFU is reported against. The instruction set the kernels
run is kernels.simd.ISA (a packed runner reports it in its `describe()`).

    python -c "from tinyfbi.bench.machine import describe; print(describe())"
"""
from __future__ import annotations

import os

# bf16 dense peak of the GPUs MFU is reported against (FLOP/s); others report no MFU
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


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


def device_name(device) -> str:
    """'cpu', or the name of the CUDA device (a torch.device)."""
    if device.type != "cuda":
        return "cpu"
    import torch  # only a CUDA device has a name to ask torch for
    return torch.cuda.get_device_name(device)


def peak_bf16_flops(device) -> float | None:
    """The device's bf16 dense peak in FLOP/s; None on a CPU or an unlisted GPU."""
    name = device_name(device)
    return next((f for key, f in PEAK_BF16.items() if key in name), None)
