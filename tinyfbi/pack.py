"""`python -m tinyfbi.pack CKPT_DIR OUT`: a checkpoint as a packed 1-bit file (`.fbipack`).

Binarized linears keep only sign(W) as bits (the kernels' blocked layout, kernels/bitpack.py) plus
fp16 alpha/beta per input column; embeddings, norms and lm_head are stored in fp16 (or fp32 with
--dtype float32). Works on our checkpoints and on released FBI-LLM checkpoints (same HF layout).

File layout (version 1), all little-endian:
    8 bytes   magic b"TFBIPACK"
    4 bytes   format version (uint32)
    8 bytes   header length H (uint64)
    H bytes   JSON header: config.json, tokenizer spec, file size, and a table
              name -> {kind, dtype, shape, offset, nbytes, [in_features]} of every tensor
    ...       tensor data, each at a 64-byte aligned offset (memory-mapped on load)
The header states the whole file's size, so a truncated file is refused before any tensor is read.

    python -m tinyfbi.pack runs/tiny-ad tiny.fbipack
"""
from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import numpy as np

from .errors import CLIParser, TinyFBIError

MAGIC = b"TFBIPACK"
VERSION = 1
ALIGN = 64
PREFIX = struct.Struct("<8sIQ")          # magic, version, header length


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def write_packed(path, config_json: dict, tensors: dict, tokenizer: dict | None = None):
    """tensors: name -> (kind, array[, in_features]); kind 'signs' (uint8 blocked bits) or 'dense'."""
    table, offset = {}, 0
    for name, (kind, array, *rest) in tensors.items():
        array = np.ascontiguousarray(array)
        entry = {"kind": kind, "dtype": array.dtype.str, "shape": list(array.shape), "offset": offset,
                 "nbytes": int(array.nbytes)}
        if rest:
            entry["in_features"] = int(rest[0])
        table[name] = entry
        offset = _align(offset + array.nbytes)
    header = {"config": config_json, "tokenizer": tokenizer, "tensors": table}
    # the header records the file size, which depends on the header's own length: iterate once
    for _ in range(2):
        header_bytes = json.dumps(header).encode()
        data_start = _align(PREFIX.size + len(header_bytes) + 32)
        header["file_size"] = data_start + offset
    header_bytes = json.dumps(header).encode().ljust(data_start - PREFIX.size)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(PREFIX.pack(MAGIC, VERSION, len(header_bytes)))
            f.write(header_bytes)
            for name, (kind, array, *_) in tensors.items():
                f.seek(data_start + table[name]["offset"])
                f.write(np.ascontiguousarray(array).tobytes())
            f.truncate(header["file_size"])
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_packed(path):
    """-> (header dict, {name: memory-mapped array}); refuses other versions and truncated files."""
    path = Path(path)
    if not path.is_file():
        raise TinyFBIError(f"{path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(PREFIX.size)
        if len(prefix) < PREFIX.size or prefix[:8] != MAGIC:
            raise TinyFBIError(f"{path} is not a tinyfbi packed file")
        _, version, header_len = PREFIX.unpack(prefix)
        if version != VERSION:
            raise TinyFBIError(f"{path} is packed format version {version}; this tinyfbi reads version "
                               f"{VERSION} (repack it with this version's `python -m tinyfbi.pack`)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TinyFBIError(f"{path} has a corrupted header (truncated file?)") from None
    if size != header.get("file_size"):
        raise TinyFBIError(f"{path} is truncated or padded: {size} bytes, the header says {header.get('file_size')}")
    data_start = PREFIX.size + header_len
    arrays = {}
    for name, t in header["tensors"].items():
        arrays[name] = np.memmap(path, dtype=np.dtype(t["dtype"]), mode="r", offset=data_start + t["offset"],
                                 shape=tuple(t["shape"])) if t["nbytes"] else np.zeros(t["shape"], t["dtype"])
    return header, arrays


def pack_checkpoint(ckpt, out, dense_dtype="float16") -> dict:
    """Pack a checkpoint folder; returns size statistics (bits per parameter etc.)."""
    from kernels.bitpack import pack_blocked_mask, sign_mask

    from .checkpoint import load_checkpoint, read_config
    from .run_state import resolve_checkpoint
    ckpt = resolve_checkpoint(ckpt)
    config, params, raw = load_checkpoint(ckpt)
    if not config.binarized or not config.has_scales:
        raise TinyFBIError(f"{ckpt} is not an FBI (column-scaled binarized) checkpoint: nothing to pack")
    binarized = set(config.binarized_weight_names())
    tensors, stats = {}, {"binarized_params": 0, "binarized_bytes": 0, "other_params": 0, "other_bytes": 0}
    for name, value in params.items():
        prefix = name.rsplit(".", 1)[0]
        if name in binarized:
            bits = pack_blocked_mask(sign_mask(value))                        # (out, 32*ceil(in/256))
            tensors[name] = ("signs", bits, value.shape[1])
            stats["binarized_params"] += value.size
            stats["binarized_bytes"] += bits.nbytes
        elif name.endswith((".wscale", ".wbias")) and prefix + ".weight" in binarized:
            tensors[name] = ("dense", value.astype(np.float16))               # alpha/beta: fp16, as the paper counts
            stats["binarized_bytes"] += value.size * 2
        else:
            tensors[name] = ("dense", value.astype(dense_dtype))
            stats["other_params"] += value.size
            stats["other_bytes"] += tensors[name][1].nbytes
    tok_spec = (raw.get("fbi") or {}).get("tokenizer")
    tokenizer = None
    if tok_spec and tok_spec.get("file"):
        tokenizer = {"spec": tok_spec, "file_hex": (ckpt / tok_spec["file"]).read_bytes().hex()}
    elif tok_spec:
        tokenizer = {"spec": tok_spec}
    write_packed(out, read_config(ckpt), tensors, tokenizer)
    total_params = stats["binarized_params"] + stats["other_params"]
    stats.update(
        bits_per_binarized_param=8 * stats["binarized_bytes"] / stats["binarized_params"],
        bits_per_param=8 * Path(out).stat().st_size / total_params,
        file_bytes=Path(out).stat().st_size,
        float32_bytes=4 * sum(v.size for v in params.values()))
    return stats


def build_parser():
    ap = CLIParser(prog="python -m tinyfbi.pack", description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt", help="checkpoint folder or run folder (ours or a released FBI-LLM checkpoint)")
    ap.add_argument("out", help="packed file to write (e.g. model.fbipack)")
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                    help="storage of embeddings, norms and lm_head")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if Path(args.out).exists() and not args.force:
            raise TinyFBIError(f"{args.out} exists; pass --force to replace it")
        s = pack_checkpoint(args.ckpt, args.out, args.dtype)
        print(f"wrote {args.out}: {s['file_bytes'] / 2**20:.2f} MiB ({s['float32_bytes'] / s['file_bytes']:.1f}x "
              f"smaller than float32)")
        print(f"  binarized linears: {s['binarized_params']:,} weights at {s['bits_per_binarized_param']:.3f} "
              f"bits each (signs + fp16 alpha/beta; the paper's 1.01)")
        print(f"  whole file: {s['bits_per_param']:.2f} bits per parameter (embeddings, norms, lm_head in {args.dtype})")
    except TinyFBIError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
