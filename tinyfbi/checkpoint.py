"""Checkpoint folders: `model.safetensors` + `config.json` (a transformers LlamaConfig plus `fbi`).

Writes are atomic (temp file + os.replace), so a crash never leaves half a checkpoint where a good
one was. Loading checks every field and tensor and names what is wrong in one line.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .config import ModelConfig
from .errors import TinyFBIError

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# ModelConfig fields that config.json must carry (LlamaConfig names)
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                   "intermediate_size", "max_position_embeddings", "rms_norm_eps")


def atomic_write_bytes(path, data: bytes):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def config_to_json(config: ModelConfig, tokenizer_spec=None, extra_fbi=None, bos_id=None, eos_id=None) -> dict:
    fbi = {"format_version": FORMAT_VERSION, "binarized": config.binarized, "scaling": config.scaling,
           "binarized_layers": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                "down_proj"] if config.binarized else [],
           "tokenizer": tokenizer_spec}
    fbi.update(extra_fbi or {})
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "max_position_embeddings": config.max_position_embeddings, "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta, "hidden_act": "silu", "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
        "bos_token_id": bos_id, "eos_token_id": eos_id, "fbi": fbi,
    }


def config_from_json(obj: dict, source="config.json", binarized_default=None) -> ModelConfig:
    missing = [f for f in REQUIRED_FIELDS if f not in obj]
    if missing:
        raise TinyFBIError(f"{source} is missing field {missing[0]!r}")
    fbi = obj.get("fbi") or {}
    binarized = fbi.get("binarized", binarized_default)
    if binarized is None:
        raise TinyFBIError(f"{source} has no 'fbi' block saying whether the model is binarized")
    rope_theta = obj.get("rope_theta", (obj.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    return ModelConfig(
        vocab_size=obj["vocab_size"], hidden_size=obj["hidden_size"],
        num_hidden_layers=obj["num_hidden_layers"], num_attention_heads=obj["num_attention_heads"],
        num_key_value_heads=obj.get("num_key_value_heads") or obj["num_attention_heads"],
        intermediate_size=obj["intermediate_size"],
        max_position_embeddings=obj["max_position_embeddings"], rms_norm_eps=float(obj["rms_norm_eps"]),
        rope_theta=float(rope_theta), binarized=bool(binarized), scaling=fbi.get("scaling", "column"))


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_checkpoint(directory, config: ModelConfig, params: dict, tokenizer=None, extra_fbi=None):
    """Write model.safetensors and config.json; `tokenizer` (optional) supplies spec and bos/eos ids."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in params.items()}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".model.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})  # "pt" so transformers accepts it
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600 files; a checkpoint is an ordinary file
        os.replace(tmp, directory / WEIGHTS_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    spec = tokenizer.spec if tokenizer is not None else None
    bos, eos = getattr(tokenizer, "bos_id", None), getattr(tokenizer, "eos_id", None)
    atomic_write_json(directory / CONFIG_FILE, config_to_json(config, spec, extra_fbi, bos, eos))


def read_config(directory) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise TinyFBIError(f"no {CONFIG_FILE} in {directory}: not a tinyfbi checkpoint folder")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TinyFBIError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise TinyFBIError(f"{path} must hold a JSON object")
    return obj


def load_checkpoint(directory):
    """-> (ModelConfig, params dict in canonical order, raw config.json dict)."""
    directory = Path(directory)
    obj = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():  # .bin or sharded weights (released FBI-LLM, HF LLaMA folders)
        from .interop import load_hf_checkpoint
        return load_hf_checkpoint(directory)
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise TinyFBIError(f"{weights} is truncated or corrupted ({e})") from None
    has_scales = any(k.endswith(".wscale") for k in tensors)
    config = config_from_json(obj, str(directory / CONFIG_FILE), binarized_default=has_scales)
    expected = config.param_shapes()
    for name, shape in expected.items():
        if name not in tensors:
            raise TinyFBIError(f"{weights} lacks tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise TinyFBIError(f"{weights}: {name} has shape {tuple(tensors[name].shape)}, "
                               f"config says {shape}")
    extra = [k for k in tensors if k not in expected and not k.endswith("rotary_emb.inv_freq")]
    if extra:
        raise TinyFBIError(f"{weights} has tensors the config does not describe, e.g. {extra[0]!r}")
    return config, {name: tensors[name] for name in expected}, obj
