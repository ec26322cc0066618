"""Hugging Face LLaMA folders out: a checkpoint dequantized so that stock transformers loads it.

Each binarized linear's W~ = wscale * sign(W) + wbias (FBI-LLM, arXiv 2407.07093, section 3.1) is
materialized as that linear's `.weight`, and wscale/wbias are dropped: what is left is a plain
full-precision LLaMA. The folder is built beside OUT and swapped in whole (formats.atomic), so it
is complete or absent. Weights above shard_gb go into HF-style shards, written one at a time.
A sentencepiece tokenizer is copied with a tokenizer_config.json for transformers' LlamaTokenizer.

    python -m tinyfbi.export --hf runs/tiny-ad exports/tiny-ad
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ..core.errors import TinyFBIError
from ..core.layers import effective_weight
from .atomic import atomic_path, atomic_write_json, replace_folder, temp_folder
from .checkpoint import load_checkpoint
from .config_json import config_to_json
from .run_checkpoint import resolve_checkpoint

DTYPES = {"float32": np.float32, "float16": np.float16}
SHARD_GB = 5.0  # transformers' default max_shard_size


def dequantized_tensors(config, params, dtype=np.float32):
    """(name, array) of a full-precision LLaMA, one at a time: W~ for binarized linears, the rest as is."""
    binarized = set(config.binarized_weight_names())
    for name, value in params.items():
        if name.endswith((".wscale", ".wbias")):
            continue
        if name in binarized:
            prefix = name[:-len(".weight")]
            value = effective_weight(value.astype(np.float32), _f32(params.get(prefix + ".wscale")),
                                     _f32(params.get(prefix + ".wbias")), config.scaling,
                                     config.sign_of_zero)
        yield name, np.ascontiguousarray(value, dtype=dtype)


def _f32(a):
    return None if a is None else a.astype(np.float32)


def plan_shards(params, itemsize: int, shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped into files of at most shard_bytes (a larger tensor gets a file of its own)."""
    shards, size = [[]], 0
    for name in params:
        if name.endswith((".wscale", ".wbias")):
            continue
        nbytes = int(np.prod(params[name].shape)) * itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def export_hf(ckpt, out, force=False, dtype="float32", tok=None, shard_gb=SHARD_GB) -> dict:
    """Write the dequantized HF folder OUT with the tokenizer `tok` (if any); -> a summary dict."""
    if dtype not in DTYPES:
        raise TinyFBIError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not shard_gb > 0:
        raise TinyFBIError(f"--shard-gb must be positive, got {shard_gb}")
    src, out = resolve_checkpoint(ckpt).resolve(), Path(out).resolve()
    if out == src or out in src.parents:
        raise TinyFBIError(f"OUT {out} would replace the checkpoint it is exported from")
    if out.exists() and not force:
        raise TinyFBIError(f"{out} exists: pass --force to replace it")
    config, params, obj = load_checkpoint(src)
    if tok is not None and tok.vocab_size > config.vocab_size:
        raise TinyFBIError(f"tokenizer has {tok.vocab_size} tokens but the model only {config.vocab_size}")

    np_dtype = np.dtype(DTYPES[dtype])
    shards = plan_shards(params, np_dtype.itemsize, int(shard_gb * 1e9))
    tmp = temp_folder(out)
    try:
        names = ["model.safetensors"] if len(shards) == 1 else [
            f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        tensors = dequantized_tensors(config, params, np_dtype)
        weight_map, total = {}, 0
        for file, shard in zip(names, shards):
            arrays = dict(next(tensors) for _ in shard)    # one shard in memory at a time
            with atomic_path(tmp / file) as path:
                save_file(arrays, path, metadata={"format": "pt"})  # "pt": transformers checks it
            weight_map.update({name: file for name in arrays})
            total += sum(a.nbytes for a in arrays.values())
            del arrays
        if len(shards) > 1:
            atomic_write_json(tmp / "model.safetensors.index.json",
                              {"metadata": {"total_size": total}, "weight_map": weight_map})
        bos = tok.bos_id if tok is not None else obj.get("bos_token_id")
        eos = tok.eos_id if tok is not None else obj.get("eos_token_id")
        hf = config_to_json(config.replace(binarized=False), tok.spec if tok is not None else None,
                            {"dequantized_from": {"scaling": config.scaling} if config.binarized else None},
                            bos, eos)
        hf["torch_dtype"] = dtype
        atomic_write_json(tmp / "config.json", hf)
        if tok is not None:
            tok.save(tmp)
            if tok.kind == "sentencepiece":
                atomic_write_json(tmp / "tokenizer_config.json", _llama_tokenizer_config(tok, config))
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "files": names, "bytes": total, "binarized": config.binarized,
            "dequantized": len(config.binarized_weight_names()),
            "tokenizer": tok.kind if tok is not None else None}


def _llama_tokenizer_config(tok, config) -> dict:
    """What transformers' LlamaTokenizer needs beside tokenizer.model: the special tokens' pieces."""
    sp = tok.sp
    special = {f"{role}_token": sp.id_to_piece(i) for role, i in
               (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id())) if i >= 0}
    return {"tokenizer_class": "LlamaTokenizer", **special, "add_bos_token": sp.bos_id() >= 0,
            "add_eos_token": False, "model_max_length": config.max_position_embeddings,
            "clean_up_tokenization_spaces": False}
