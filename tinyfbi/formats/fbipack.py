"""The packed 1-bit file (`.fbipack`, version 1): the container runtime.build_fbipack writes and
runtime.packed_runner reads. Binarized linears are stored as sign bits in the kernels' blocked layout
(kernels/bitpack.py) with fp16 alpha/beta; embeddings, norms and lm_head as dense arrays.

File layout, all little-endian:
    8 bytes   magic b"TFBIPACK"
    4 bytes   format version (uint32)
    8 bytes   header length H (uint64)
    H bytes   JSON header: config.json, tokenizer spec, file size, and a table
              name -> {kind, dtype, shape, offset, nbytes, [in_features]} of every tensor
    ...       tensor data, each at a 64-byte aligned offset (memory-mapped on load)
The header states the whole file's size, so a truncated file is refused before any tensor is read.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..core.errors import TinyFBIError
from .atomic import atomic_open

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
    with atomic_open(path) as f:
        f.write(PREFIX.pack(MAGIC, VERSION, len(header_bytes)))
        f.write(header_bytes)
        for name, (kind, array, *_) in tensors.items():
            f.seek(data_start + table[name]["offset"])
            f.write(np.ascontiguousarray(array).tobytes())
        f.truncate(header["file_size"])


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
