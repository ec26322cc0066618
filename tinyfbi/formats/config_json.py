"""config.json of a tinyfbi checkpoint: a transformers LlamaConfig plus an `fbi` block (format
version, binarized or not, scaling, tokenizer spec), to and from a ModelConfig.

Written beside the weights by formats.checkpoint and formats.run_checkpoint, read by every loader of a
checkpoint folder (formats.hf_folder) and by the packed runtime (a .fbipack's header holds it too).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..core.config import ModelConfig
from ..core.errors import TinyFBIError
from .atomic import atomic_write_json

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
# ModelConfig fields that config.json must carry (LlamaConfig names)
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                   "intermediate_size", "max_position_embeddings", "rms_norm_eps")


def config_to_json(config: ModelConfig, tokenizer_spec=None, extra_fbi=None, bos_id=None, eos_id=None) -> dict:
    fbi = {"format_version": FORMAT_VERSION, "binarized": config.binarized, "scaling": config.scaling,
           "binarized_layers": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                "down_proj"] if config.binarized else [],
           "tokenizer": tokenizer_spec}
    if config.binarized and config.sign_of_zero != 1:
        fbi["sign_of_zero"] = config.sign_of_zero
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
        rope_theta=float(rope_theta), binarized=bool(binarized), scaling=fbi.get("scaling", "column"),
        # a released FBI-LLM checkpoint (no fbi block) was trained with torch.sign: sign(0) = 0
        sign_of_zero=fbi.get("sign_of_zero", 0 if binarized and "fbi" not in obj else 1) if binarized else 1)


def save_config(directory, config: ModelConfig, tokenizer=None, extra_fbi=None):
    """config.json, and the tokenizer's files (its spec and bos/eos ids go into config.json)."""
    directory = Path(directory)
    if tokenizer is not None:
        tokenizer.save(directory)
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
