"""`python -m tinyfbi.export --hf CKPT OUT`: a dequantized checkpoint that stock transformers loads.

Each binarized linear's W~ = wscale * sign(W) + wbias (FBI-LLM, arXiv 2407.07093, section 3.1) is
materialized as that linear's `.weight`, and wscale/wbias are dropped: what is left is a plain
full-precision LLaMA, so `transformers.LlamaForCausalLM.from_pretrained(OUT)` gives tinyfbi's logits
(and lm-eval's `--model hf`, vLLM, ... run it). CKPT is a tinyfbi checkpoint, a run folder, or an
HF LLaMA folder (a released FBI-LLM checkpoint; a full-precision one is copied as it is).

    python -m tinyfbi.export --hf runs/tiny-ad exports/tiny-ad
    python -m tinyfbi.export --hf FBI-LLM_7B exports/FBI-LLM_7B --dtype float16 --tokenizer llama2/tokenizer.model

OUT is written to a temporary folder beside it and renamed into place, so it is complete or absent;
an existing OUT is replaced only with --force. Weights above --shard-gb go into HF-style shards
(model-0000x-of-0000y.safetensors + index), written one at a time to bound memory.
A sentencepiece tokenizer is copied with a tokenizer_config.json for transformers' LlamaTokenizer
(transformers 5 converts tokenizer.model only with `protobuf` installed, and tokenizes text that
starts with a space differently from sentencepiece; tinyfbi reads the same file with sentencepiece).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import CLIParser, TinyFBIError

DTYPES = {"float32": np.float32, "float16": np.float16}
SHARD_GB = 5.0  # transformers' default max_shard_size


def build_parser():
    ap = CLIParser(prog="python -m tinyfbi.export", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    ap.add_argument("ckpt", metavar="CKPT", help="tinyfbi checkpoint, run folder, or HF LLaMA folder")
    ap.add_argument("out", metavar="OUT", help="folder to write")
    ap.add_argument("--hf", action="store_true", help="write a Hugging Face LLaMA folder (the one format)")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the written weights")
    ap.add_argument("--tokenizer", default=None,
                    help="tokenizer to ship (default: the checkpoint's own, if it has one)")
    ap.add_argument("--shard-gb", type=float, default=SHARD_GB, help="largest weights file, in GB")
    return ap


def dequantized_tensors(config, params, dtype=np.float32):
    """(name, array) of a full-precision LLaMA, one at a time: W~ for binarized linears, the rest as is."""
    from .layers import effective_weight
    binarized = set(config.binarized_weight_names())
    for name, value in params.items():
        if name.endswith((".wscale", ".wbias")):
            continue
        if name in binarized:
            prefix = name[:-len(".weight")]
            value = effective_weight(value.astype(np.float32), _f32(params.get(prefix + ".wscale")),
                                     _f32(params.get(prefix + ".wbias")), config.scaling)
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


def export_hf(ckpt, out, force=False, dtype="float32", tokenizer=None, shard_gb=SHARD_GB) -> dict:
    """Write the dequantized HF folder OUT; -> a summary dict (files, sizes, tokenizer)."""
    from safetensors.numpy import save_file

    from .checkpoint import atomic_write_json, config_to_json
    from .interop import load_hf_checkpoint
    from .run_state import resolve_checkpoint
    if dtype not in DTYPES:
        raise TinyFBIError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not shard_gb > 0:
        raise TinyFBIError(f"--shard-gb must be positive, got {shard_gb}")
    src, out = resolve_checkpoint(ckpt).resolve(), Path(out).resolve()
    if out == src or out in src.parents:
        raise TinyFBIError(f"OUT {out} would replace the checkpoint it is exported from")
    if out.exists() and not force:
        raise TinyFBIError(f"{out} exists: pass --force to replace it")
    config, params, obj = load_hf_checkpoint(src)
    tok = _load_tokenizer(tokenizer, src, config.vocab_size)

    np_dtype = np.dtype(DTYPES[dtype])
    shards = plan_shards(params, np_dtype.itemsize, int(shard_gb * 1e9))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, _dir_mode())  # mkdtemp makes 0700 folders; an export is an ordinary folder
        names = ["model.safetensors"] if len(shards) == 1 else [
            f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        tensors = dequantized_tensors(config, params, np_dtype)
        weight_map, total = {}, 0
        for file, shard in zip(names, shards):
            arrays = dict(next(tensors) for _ in shard)    # one shard in memory at a time
            save_file(arrays, str(tmp / file), metadata={"format": "pt"})  # "pt": transformers checks it
            os.chmod(tmp / file, _dir_mode() & 0o666)
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
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "files": names, "bytes": total, "binarized": config.binarized,
            "dequantized": len(config.binarized_weight_names()),
            "tokenizer": tok.kind if tok is not None else None}


def _load_tokenizer(path, src, vocab_size):
    from .tokenizers import load_tokenizer
    if path is not None:
        tok = load_tokenizer(path)
    else:
        try:
            tok = load_tokenizer(src)
        except TinyFBIError:
            return None  # a released checkpoint may come without one: the weights alone still load
    if tok.vocab_size > vocab_size:
        raise TinyFBIError(f"tokenizer has {tok.vocab_size} tokens but the model only {vocab_size}")
    return tok


def _llama_tokenizer_config(tok, config) -> dict:
    """What transformers' LlamaTokenizer needs beside tokenizer.model: the special tokens' pieces."""
    sp = tok.sp
    special = {f"{role}_token": sp.id_to_piece(i) for role, i in
               (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id())) if i >= 0}
    return {"tokenizer_class": "LlamaTokenizer", **special, "add_bos_token": sp.bos_id() >= 0,
            "add_eos_token": False, "model_max_length": config.max_position_embeddings,
            "clean_up_tokenization_spaces": False}


def _swap_in(tmp: Path, out: Path):
    """Rename tmp to out; an old out is moved aside first and deleted only once the new one is in."""
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old) if old.is_dir() else old.unlink()


def _dir_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if not args.hf:
            raise TinyFBIError("choose the output format: --hf (a Hugging Face LLaMA folder)")
        info = export_hf(args.ckpt, args.out, args.force, args.dtype, args.tokenizer, args.shard_gb)
        what = (f"{info['dequantized']} binarized linears dequantized" if info["binarized"]
                else "full-precision weights copied")
        tok = f"tokenizer: {info['tokenizer']}" if info["tokenizer"] else "no tokenizer (pass --tokenizer)"
        print(f"wrote {info['out']}: {len(info['files'])} weights file(s), {info['bytes'] / 1e6:.1f} MB "
              f"{args.dtype}, {what}; {tok}")
    except TinyFBIError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
