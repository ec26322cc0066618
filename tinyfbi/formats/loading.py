"""The one place that loads a checkpoint folder, whatever its layout.

A path may be a run folder (runs/NAME: its `checkpoint/`), a tinyfbi checkpoint folder, a released
FBI-LLM checkpoint or any Hugging Face LLaMA folder (safetensors or `.bin`, single or sharded, FP32,
FP16 or BF16). Every expected tensor must be there with its shape, and nothing else.

    from tinyfbi import load_model
    model = load_model("runs/tiny-ad")              # tinyfbi.Model (NumPy)
    config, params, raw = load_checkpoint("FBI-LLM_1.3B")
"""
from __future__ import annotations

import numpy as np

from ..core.errors import TinyFBIError
from ..core.model import Model
from .atomic import old_folder
from .checkpoint import read_config
from .hf_folder import config_from_hf, load_hf_state_dict
from .run_checkpoint import CHECKPOINT, resolve_checkpoint

SWAP_RETRIES = 3   # a checkpoint swapped out under a reader, then again while it retries: give up


def load_checkpoint(path):
    """-> (ModelConfig, params in canonical order, raw config.json dict). A run's checkpoint may be
    swapped for a newer one while it is read (a run saving as it trains): then the newer one is read."""
    folder = resolve_checkpoint(path)
    run_dir = folder.parent if folder.name in (CHECKPOINT, old_folder(CHECKPOINT).name) else None
    for _ in range(SWAP_RETRIES):
        try:
            return read_folder(folder)
        except (FileNotFoundError, TinyFBIError):
            if run_dir is None or folder.exists():
                raise                     # a real problem, not a swap
            folder = resolve_checkpoint(run_dir)
    return read_folder(folder)


def read_folder(folder):
    raw = read_config(folder)
    tensors = load_hf_state_dict(folder)
    config = config_from_hf(folder, tensors)
    expected = config.param_shapes()
    for name, shape in expected.items():
        if name not in tensors:
            hint = " (a binarized model: is a wscale missing?)" if name.endswith((".wscale", ".wbias")) else ""
            raise TinyFBIError(f"{folder} lacks tensor {name!r}{hint}")
        if tuple(tensors[name].shape) != shape:
            raise TinyFBIError(f"{folder}: {name} has shape {tuple(tensors[name].shape)}, config says {shape}")
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise TinyFBIError(f"{folder} has tensors the config does not describe, e.g. {extra[0]!r}")
    return config, {name: tensors[name] for name in expected}, raw


def load_model(path, dtype=None) -> Model:
    """A tinyfbi.Model (NumPy). dtype None keeps float32/float64 weights as stored and widens
    float16/bfloat16 ones (a LLaMA teacher) to float32, the NumPy core's working precision."""
    config, params, _ = load_checkpoint(path)
    stored = next(iter(params.values())).dtype
    dtype = np.dtype(dtype or (stored if stored in (np.float32, np.float64) else np.float32))
    params = {k: np.array(v, dtype=dtype) for k, v in params.items()}   # owned, writable, off the file
    return Model(config, dtype=dtype, params=params)
