"""A prepared folder: token shards and the manifest that describes them (made by corpus.shard_writer).

    DIR/manifest.json       written last, atomically: the folder is complete when it exists
    DIR/train-00000.bin     flat uint16 ids (uint32 above 65536), read as memmaps; .json beside each
    DIR/val-00000.bin       held-out documents (or rows), never training sequences
    DIR/tokenizer.model     the tokenizer's file, if it has one (the manifest holds its spec)

manifest.json: {"format", "source", "layout": "text" | "token_ids", "tokenizer": spec, "vocab_size",
"dtype", "row_len" (2049 for Amber rows, null for a text stream), "val_every", "train": [{"file",
"tokens", "sha256"}, ...], "val": [...]}.

    >>> prepared = open_prepared("data/amber")          # sizes checked; checksums up to 1 GB
    >>> BatchSampler(prepared.train, 1024, 2048, seed=0).batch(0)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..core.errors import TinyFBIError
from .batches import TokenSplit
from .tokenizers import Tokenizer, load_tokenizer

FORMAT = "tinyfbi-shards/1"
MANIFEST = "manifest.json"
VERIFY_MAX_BYTES = 1 << 30      # checksums are checked on open up to this size; above it, by --verify
SPLITS = ("train", "val")
OPEN_SHARDS = 256               # memmaps kept open per process (each holds a file descriptor)


@lru_cache(maxsize=OPEN_SHARDS)
def _memmap(path: str, dtype: str, count: int) -> np.memmap:
    return np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=(count,))


class ShardFile:
    """One shard, memmapped when first read: Amber at 64 MB a shard is ~40k files, more than a
    process may hold open, so at most OPEN_SHARDS stay mapped (least recently used closed first)."""

    def __init__(self, path: Path, dtype: str, count: int):
        self.path, self.dtype, self.count = str(path), dtype, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        return _memmap(self.path, self.dtype, self.count)[index]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(_memmap(self.path, self.dtype, self.count), dtype=dtype)


@dataclass(frozen=True)
class Prepared:
    folder: Path
    manifest: dict
    tokenizer: Tokenizer
    train: TokenSplit
    val: TokenSplit


def is_prepared(path) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def read_manifest(folder) -> dict:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise TinyFBIError(f"{path} is unreadable ({type(e).__name__}); prepare the folder again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TinyFBIError(f"{path} is not a tinyfbi preparation (format {FORMAT!r} expected)")
    return manifest


def file_sha256(path, chunk=1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_shards(folder, manifest: dict, checksums: bool) -> None:
    """Every shard present with the size its token count implies; its sha256 too when asked."""
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in SPLITS:
        for shard in manifest[split]:
            path = Path(folder) / shard["file"]
            want = shard["tokens"] * itemsize
            size = path.stat().st_size if path.is_file() else None
            if size != want:
                raise TinyFBIError(f"shard {path} is {'missing' if size is None else f'truncated: {size} bytes'}"
                                   f" (the manifest says {want}); prepare the folder again with --force")
            if checksums and file_sha256(path) != shard["sha256"]:
                raise TinyFBIError(f"shard {path} does not match its checksum in {MANIFEST}: it was changed "
                                   "or damaged; prepare the folder again with --force")


def open_prepared(folder, checksums: bool | None = None) -> Prepared:
    """The folder's splits as TokenSplits of memmapped shards, and its tokenizer. checksums None: checked
    when the shards total at most VERIFY_MAX_BYTES (sizes are always checked)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    dtype = np.dtype(manifest["dtype"])
    total = sum(s["tokens"] for split in SPLITS for s in manifest[split]) * dtype.itemsize
    check_shards(folder, manifest, total <= VERIFY_MAX_BYTES if checksums is None else checksums)
    tokenizer = load_tokenizer(manifest["tokenizer"], folder)
    if tokenizer.vocab_size != manifest["vocab_size"]:
        raise TinyFBIError(f"{folder}: the tokenizer has {tokenizer.vocab_size} ids, the manifest says "
                           f"{manifest['vocab_size']}")
    splits = {}
    for split in SPLITS:
        if not manifest[split]:
            raise TinyFBIError(f"{folder} holds no {'validation' if split == 'val' else 'training'} shards")
        shards = [ShardFile(folder / s["file"], dtype.name, s["tokens"]) for s in manifest[split]]
        splits[split] = TokenSplit(shards, manifest["row_len"],
                                   f"{'training' if split == 'train' else 'validation'} split of {folder}")
    return Prepared(folder, manifest, tokenizer, splits["train"], splits["val"])
