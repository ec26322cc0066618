"""Hugging Face LLaMA folders in: the released FBI-LLM checkpoints, LLaMA teachers, tinyfbi's own.

The released FBI-LLM checkpoints (arXiv 2407.07093, huggingface.co/LiqunMa) are HF LLaMA folders:
config.json is a plain LlamaConfig (no `fbi` block), the weights are FP32 latent weights plus
`wscale`/`wbias` of shape (1, in) per binarized linear, and files written by transformers 4.3x
also hold a `model.layers.{i}.self_attn.rotary_emb.inv_freq` buffer per layer (ignored: RoPE is
recomputed). The weights come as `model.safetensors`, sharded `model-0000x-of-0000y.safetensors`
+ index, `pytorch_model.bin` or sharded `pytorch_model-0000x-of-0000y.bin` + index. A plain LLaMA
folder (Llama-2-7b-hf, fp16) loads the same way as a full-precision teacher: a folder is binarized
exactly when it holds wscale tensors (or its `fbi` block says so, for tinyfbi's own checkpoints).

    from tinyfbi import load_model                      # formats.checkpoint loads every layout here
    model = load_model("FBI-LLM_130M")                 # tinyfbi.Model (NumPy)

Read whole (load_hf_state_dict: lazily memory-mapped safetensors) or streamed tensor by tensor
(iter_hf_tensors: what runtime.build_fbipack packs from, in the memory of one tensor).

The NumPy side imports no torch: only `.bin` files (PyTorch pickles) need it, imported on use.
"""
from __future__ import annotations

import ctypes
import json
import mmap
import re
import sys
from pathlib import Path

import numpy as np

from ..core.config import ModelConfig
from ..core.errors import TinyFBIError
from .config_json import CONFIG_FILE, config_from_json, read_config

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
SHARD = re.compile(r"^(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$")
IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")   # a cached RoPE table, not a parameter
MADV_DONTNEED = 4                                       # Linux's value; the page release is Linux-only
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

# safetensors dtype names -> NumPy; BF16 has no NumPy dtype and is widened to float32 on read
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


# ----------------------------------------------------------------------------- weight files


def weight_files(folder) -> list[Path]:
    """The files holding a folder's weights, in the order HF looks for them."""
    folder = Path(folder)
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (TORCH_BIN, TORCH_BIN_INDEX)):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            return _index_files(folder / index)
    shards = sorted(p for p in folder.glob("*") if SHARD.match(p.name))
    shards = [p for p in shards if p.suffix == ".safetensors"] or shards  # safetensors win, as in HF
    if shards:
        return shards
    raise TinyFBIError(f"no weights in {folder}: expected {SAFETENSORS}, {TORCH_BIN}, "
                       f"or shards with {SAFETENSORS_INDEX} / {TORCH_BIN_INDEX}")


def _index_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise TinyFBIError(f"{index} is not a weights index ({type(e).__name__}: {e})") from None
    files = [index.parent / name for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise TinyFBIError(f"{index} names shard {missing[0]}, which is not in {index.parent}")
    return files


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file, memory-mapped copy-on-write (a 7B shard costs no RAM
    until read). Read here rather than by safetensors.numpy, which refuses BF16 (NumPy has no
    bfloat16): BF16 becomes float32 by appending 16 zero bits."""
    path = Path(path)
    header, start_of_data, size = _safetensors_header(path)
    data = (np.memmap(path, dtype=np.uint8, mode="c", offset=start_of_data) if size > start_of_data
            else np.zeros(0, np.uint8))
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        raw, kind = data[start:end], info["dtype"]
        if kind == "BF16":
            array = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.require(raw.view(_ST_DTYPES[kind]), requirements="A")  # torch wants aligned data
        out[name] = array.reshape(info["shape"])
    return out


def _safetensors_header(path: Path):
    """-> ({name: {dtype, shape, data_offsets}}, where the data starts, file size). The format:
    8-byte little-endian header size, the JSON header, then the raw bytes of every tensor."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= size - 8:
                raise ValueError(f"header size {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        for name, info in header.items():
            start, end = info["data_offsets"]
            if not 0 <= start <= end <= size - 8 - n:
                raise ValueError(f"tensor {name!r} lies past the end of the file")
            if info["dtype"] != "BF16" and info["dtype"] not in _ST_DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {info['dtype']}, which tinyfbi does not read")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise TinyFBIError(f"{path} is truncated or corrupted ({e})") from None
    return header, 8 + n, size


def read_torch_bin(path) -> dict[str, np.ndarray]:
    """A PyTorch state dict file (`torch.save`), read with weights_only=True: tensors only, no code."""
    import torch
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in _torch_load(path)[0].items()}


def _torch_load(path) -> tuple[dict, bool]:
    """-> ({name: torch.Tensor}, memory-mapped?): mapped when the file is in torch's zip format (since
    torch 1.6), else read whole."""
    path = Path(path)
    try:
        import torch
    except ImportError:
        raise TinyFBIError(f"{path} is a PyTorch pickle: reading it needs torch (pip install torch)") from None
    try:
        try:
            state, mapped = torch.load(path, map_location="cpu", weights_only=True, mmap=True), True
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            state, mapped = torch.load(path, map_location="cpu", weights_only=True), False  # legacy non-zip format
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "allocate memory" in first:
            raise TinyFBIError(f"not enough memory to read {path} ({first})") from None
        raise TinyFBIError(f"{path} is truncated, corrupted or not a state dict ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TinyFBIError(f"{path} is not a flat state dict of tensors (name -> tensor)")
    return state, mapped


def iter_hf_tensors(folder, on_file=None):
    """(name, array) for every tensor of an HF LLaMA folder, one at a time, file by file, in stored
    dtype (BF16 widened), holding one tensor in memory: safetensors read tensor by tensor, `.bin`
    memory-mapped with each tensor's pages given back after it (a legacy non-zip `.bin` is loaded
    whole, one shard at a time). What packs a 7B on a laptop. `on_file(path)` is called as each file
    is opened; the rotary_emb.inv_freq buffers are dropped."""
    seen = set()
    for path in weight_files(folder):
        if on_file is not None:
            on_file(path)
        shard = _safetensors_one_by_one(path) if path.suffix == ".safetensors" else _torch_one_by_one(path)
        for name, value in shard:
            if IGNORED.search(name):
                continue
            if name in seen:
                raise TinyFBIError(f"tensor {name!r} appears in two shards of {folder} (again in {path.name})")
            seen.add(name)
            yield name, value
            del value                 # a view of a mapped .bin shard: let it go before the next shard opens


def _safetensors_one_by_one(path):
    """(name, array) for each tensor of a .safetensors file, each read into memory on its own."""
    header, start_of_data, _ = _safetensors_header(path)
    with open(path, "rb") as f:
        for name, info in header.items():
            start, end = info["data_offsets"]
            f.seek(start_of_data + start)
            dtype = np.dtype(np.uint16 if info["dtype"] == "BF16" else _ST_DTYPES[info["dtype"]])
            raw = np.fromfile(f, dtype, (end - start) // dtype.itemsize)
            array = (raw.astype(np.uint32) << 16).view(np.float32) if info["dtype"] == "BF16" else raw
            yield name, array.reshape(info["shape"])


def _torch_one_by_one(path):
    """(name, array) for each tensor of a `.bin` file. A memory-mapped tensor's pages are given back
    once the next is asked for (else the whole shard ends up resident): the array stays valid."""
    import torch
    state, mapped = _torch_load(path)
    for name, tensor in state.items():
        yield name, (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        if mapped:
            _drop_pages(tensor.untyped_storage())


def _drop_pages(storage):
    """madvise(MADV_DONTNEED) over the whole pages of a file-backed, never written mapping (Linux): the
    process lets go of them, and a later read faults them in from the file again, unchanged. Never
    for anonymous memory (a legacy .bin read whole), whose pages would come back as zeros."""
    if _LIBC is None:
        return
    start = -(-storage.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (storage.data_ptr() + storage.nbytes()) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > start:
        _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)


def load_hf_state_dict(folder) -> dict[str, np.ndarray]:
    """All tensors of an HF LLaMA folder, by name, in their stored dtype (BF16 widened to float32),
    the rotary_emb.inv_freq buffers dropped."""
    tensors: dict[str, np.ndarray] = {}
    for path in weight_files(folder):
        shard = read_safetensors(path) if path.suffix == ".safetensors" else read_torch_bin(path)
        for name, value in shard.items():
            if IGNORED.search(name):
                continue
            if name in tensors:
                raise TinyFBIError(f"tensor {name!r} appears in two shards of {folder} (again in {path.name})")
            tensors[name] = value
    return tensors


# ----------------------------------------------------------------------------- config


def config_from_hf(folder, shapes=None) -> ModelConfig:
    """ModelConfig of a checkpoint folder (HF LLaMA or tinyfbi). Without an `fbi` block the model
    is binarized when its weights hold wscale tensors, whose shape tells column (1, in) from row (out, 1)
    scaling. Settings that change the maths but ModelConfig cannot express are refused. `shapes`
    (name -> shape) spares reading the files' headers again."""
    folder = Path(folder)
    obj = read_config(folder)
    source = str(folder / CONFIG_FILE)
    _check_llama(obj, source)
    shapes = tensor_shapes(folder) if shapes is None else shapes
    scales = {name: tuple(shape) for name, shape in shapes.items() if name.endswith(".wscale")}
    config = config_from_json(obj, source, binarized_default=bool(scales))
    if "fbi" not in obj and scales:
        shape = next(iter(scales.values()))
        if len(shape) != 2 or 1 not in shape:
            raise TinyFBIError(f"{folder}: wscale has shape {shape}; tinyfbi reads per-column (1, in) "
                               "or per-row (out, 1) scales")
        config = config.replace(scaling="column" if shape[0] == 1 else "row")
    return config


def _check_llama(obj: dict, source: str):
    C, H = obj.get("hidden_size"), obj.get("num_attention_heads")
    problems = [
        (obj.get("model_type", "llama") != "llama", f"model_type is {obj.get('model_type')!r}, not 'llama'"),
        (obj.get("hidden_act", "silu") != "silu", f"hidden_act is {obj.get('hidden_act')!r}, not 'silu'"),
        (bool(obj.get("rope_scaling")), "rope_scaling is set (tinyfbi has plain RoPE only)"),
        ((obj.get("rope_parameters") or {}).get("rope_type", "default") != "default",
         "rope_parameters.rope_type is not 'default' (tinyfbi has plain RoPE only)"),
        (bool(obj.get("attention_bias")) or bool(obj.get("mlp_bias")), "its linears have biases"),
        (bool(obj.get("tie_word_embeddings")), "tie_word_embeddings is true (LLaMA unties them)"),
        (obj.get("head_dim") not in (None, (C // H) if isinstance(C, int) and isinstance(H, int) and H else None),
         f"head_dim {obj.get('head_dim')} is not hidden_size / num_attention_heads"),
    ]
    for bad, why in problems:
        if bad:
            raise TinyFBIError(f"{source}: {why}")


def tensor_shapes(folder) -> dict[str, tuple]:
    """Names and shapes without reading the weights (safetensors headers; .bin files memory-mapped,
    or read whole in the legacy non-zip format), the rotary_emb.inv_freq buffers dropped."""
    shapes = {}
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            shapes.update({k: tuple(v["shape"]) for k, v in _safetensors_header(path)[0].items()})
        else:
            shapes.update({k: tuple(v.shape) for k, v in _torch_load(path)[0].items()})
    return {k: v for k, v in shapes.items() if not IGNORED.search(k)}
