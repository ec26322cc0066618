"""tinyfbi checkpoints, saved and loaded: the one place for both.

Saved as a folder of `model.safetensors` + `config.json` (formats.config_json: a transformers
LlamaConfig + `fbi`), written atomically (formats.atomic), so a crash never leaves half a checkpoint
where a good one was. Loaded from any folder, whatever its layout: a run folder (runs/NAME: its
`checkpoint/`, formats.run_checkpoint), a tinyfbi checkpoint folder, a released FBI-LLM checkpoint or
any Hugging Face LLaMA folder (formats.hf_folder: safetensors or `.bin`, single or sharded, FP32, FP16
or BF16). Every expected tensor must be there with its shape, and nothing else.

    from tinyfbi import load_model, save_model
    save_model(model, "runs/demo/ckpt")
    model = load_model("runs/tiny-ad")              # tinyfbi.Model (NumPy)
    config, params, raw = load_checkpoint("FBI-LLM_1.3B")
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ..core.config import ModelConfig
from ..core.errors import TinyFBIError
from ..core.model import Model
from .atomic import atomic_path, old_folder
from .config_json import read_config, save_config
from .hf_folder import config_from_hf, load_hf_state_dict, tensor_shapes
from .run_checkpoint import CHECKPOINT, resolve_checkpoint

WEIGHTS_FILE = "model.safetensors"
SWAP_RETRIES = 3   # a checkpoint swapped out under a reader, then again while it retries: give up


# ---- save ----

def save_model(model, directory, tokenizer=None, extra_fbi=None):
    """A tinyfbi.Model (or anything with .config and .params) as a checkpoint folder."""
    save_checkpoint(directory, model.config, model.params, tokenizer, extra_fbi)


def save_checkpoint(directory, config: ModelConfig, params: dict, tokenizer=None, extra_fbi=None):
    """Write model.safetensors and config.json, and the tokenizer's files (its spec and bos/eos ids
    go into config.json)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in params.items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})  # "pt" so transformers accepts it
    save_config(directory, config, tokenizer, extra_fbi)


# ---- load ----

def load_checkpoint(path):
    """-> (ModelConfig, params in canonical order, raw config.json dict)."""
    return with_checkpoint(path, read_folder)


def with_checkpoint(path, read):
    """read(folder) of the checkpoint folder `path` names. A run's checkpoint may be swapped for a
    newer one while it is read (a run saving as it trains): then the newer one is read."""
    folder = resolve_checkpoint(path)
    run_dir = folder.parent if folder.name in (CHECKPOINT, old_folder(CHECKPOINT).name) else None
    for _ in range(SWAP_RETRIES):
        try:
            return read(folder)
        except (FileNotFoundError, TinyFBIError):
            if run_dir is None or folder.exists():
                raise                     # a real problem, not a swap
            folder = resolve_checkpoint(run_dir)
    return read(folder)


def read_folder(folder):
    raw = read_config(folder)
    tensors = load_hf_state_dict(folder)
    config = config_from_hf(folder, {k: v.shape for k, v in tensors.items()})
    check_tensors(folder, config, {k: v.shape for k, v in tensors.items()})
    return config, {name: tensors[name] for name in config.param_shapes()}, raw


def read_layout(folder):
    """-> (ModelConfig, raw config.json dict) of a checkpoint folder, its tensors' names and shapes
    checked from the files' headers, no weight read: what streaming it (hf_folder.iter_hf_tensors) needs."""
    raw = read_config(folder)
    shapes = tensor_shapes(folder)
    config = config_from_hf(folder, shapes)
    check_tensors(folder, config, shapes)
    return config, raw


def check_tensors(folder, config: ModelConfig, shapes: dict):
    """Every tensor the config expects is there with its shape, and nothing else."""
    expected = config.param_shapes()
    for name, shape in expected.items():
        if name not in shapes:
            hint = " (a binarized model: is a wscale missing?)" if name.endswith((".wscale", ".wbias")) else ""
            raise TinyFBIError(f"{folder} lacks tensor {name!r}{hint}")
        if tuple(shapes[name]) != shape:
            raise TinyFBIError(f"{folder}: {name} has shape {tuple(shapes[name])}, config says {shape}")
    extra = [k for k in shapes if k not in expected]
    if extra:
        raise TinyFBIError(f"{folder} has tensors the config does not describe, e.g. {extra[0]!r}")


def load_model(path, dtype=None) -> Model:
    """A tinyfbi.Model (NumPy). dtype None keeps float32/float64 weights as stored and widens
    float16/bfloat16 ones (a LLaMA teacher) to float32, the NumPy core's working precision."""
    config, params, _ = load_checkpoint(path)
    stored = next(iter(params.values())).dtype
    dtype = np.dtype(dtype or (stored if stored in (np.float32, np.float64) else np.float32))
    params = {k: np.array(v, dtype=dtype) for k, v in params.items()}   # owned, writable, off the file
    return Model(config, dtype=dtype, params=params)
