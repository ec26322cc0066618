"""Token files: a split's token ids in a flat binary file (uint16 or uint32), read as a memmap.

A JSON sidecar records the dtype, the count, the tokenizer spec and a hash of the text, so a file
is reused while they match and rebuilt (atomically) when not.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..core.errors import TinyFBIError
from ..formats.atomic import atomic_open, atomic_write_bytes
from .sources import Corpus, corpus_dir
from .tokenizers import Tokenizer

TOKEN_FORMAT = 1          # bump when the token file layout changes: old files are rebuilt


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tokenize_to_memmap(text: str, tokenizer: Tokenizer, path) -> np.memmap:
    """Token ids of text in a flat binary file (read-only memmap), reused while its JSON sidecar
    (dtype, count, tokenizer spec, sha256 of the text) still matches; rebuilt atomically if not."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".json")
    dtype = token_dtype(tokenizer.vocab_size)
    want = {"format": TOKEN_FORMAT, "dtype": dtype.name, "tokenizer": tokenizer.spec,
            "text_sha256": hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()}
    meta = _read_sidecar(sidecar)
    count = meta.get("count") if meta else None
    if (meta and {k: meta.get(k) for k in want} == want and isinstance(count, int) and count > 0
            and path.is_file() and path.stat().st_size == count * dtype.itemsize):
        return np.memmap(path, dtype=dtype, mode="r", shape=(count,))
    ids = tokenizer.encode_array(text)
    if ids.size == 0:
        raise TinyFBIError(f"nothing to tokenize for {path.name}: the text is empty")
    if int(ids.max()) >= tokenizer.vocab_size:  # a bug guard: ids must fit the model's vocabulary
        raise TinyFBIError(f"{tokenizer!r} produced id {int(ids.max())} >= its vocab_size")
    sidecar.unlink(missing_ok=True)           # a crash below leaves no sidecar, hence a rebuild
    with atomic_open(path) as f:
        ids.astype(dtype, copy=False).tofile(f)
    atomic_write_bytes(sidecar, json.dumps({**want, "count": int(ids.size)}, indent=1).encode())
    return np.memmap(path, dtype=dtype, mode="r", shape=(int(ids.size),))


def _read_sidecar(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def tokenize_corpus(corpus: Corpus, tokenizer: Tokenizer, cache_dir="data") -> tuple[np.memmap, np.memmap]:
    """(train, val) token memmaps in cache_dir/<corpus>/tokens/, named by split and tokenizer."""
    folder = corpus_dir(corpus, cache_dir) / "tokens"
    return (tokenize_to_memmap(corpus.train_text, tokenizer, folder / f"train.{tokenizer.key}.bin"),
            tokenize_to_memmap(corpus.val_text, tokenizer, folder / f"val.{tokenizer.key}.bin"))
