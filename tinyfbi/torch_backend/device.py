"""A torch device's name and the bf16 dense peak its MFU is reported against: one definition for the
torch backend's report and every benchmark (tinyfbi.bench.machine). torch is imported only to ask a
CUDA device its name, so CPU-only benchmarks can describe their machine without it."""
from __future__ import annotations

# bf16 dense peak of the GPUs MFU is reported against (FLOP/s); others report no MFU
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


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
