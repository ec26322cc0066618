"""The shard writer `python -m tinyfbi.prepare` runs: a corpus of any size, read as a stream of documents,
-> token shards + manifest (read back by corpus.shards).

The main process reads the source (corpus.streams) and cuts it into pieces of about --shard-mb
of input (text cut at line ends, or a fixed number of rows); worker processes tokenize (or parse and check)
each piece and write its shard atomically, with a sidecar naming the input's sha256. Memory
stays bounded: at most 2 pieces per worker are in flight. A killed run, rerun with the same
flags, skips every piece whose shard and sidecar are complete. The manifest is written last.

    python -m tinyfbi.prepare corpus.txt --out data/corpus-sp --tokenizer sentencepiece --workers 2
    python -m tinyfbi.prepare amber/ --out data/amber --vocab-size 32000      # token_ids rows, as is
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import tempfile
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.errors import TinyFBIError
from ..formats.atomic import atomic_open, atomic_write_json
from .shards import FORMAT, MANIFEST, check_shards, read_manifest
from .streams import Source, Unit, json_row, open_source, unit_text
from .token_files import token_dtype
from .tokenizers import (
    TRAIN_MAX_CHARS,
    ByteTokenizer,
    IdsTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)

MB = 1 << 20
STATE = "prepare.json"            # the request (and tokenizer): written first, so a rerun can resume
SEGMENT = 1 << 16                 # characters per encode call, cut at a line end: sentencepiece's BPE ran
                                  # 2x faster on 64K than on 1M (0.76 vs 0.38 MB/s, same token count)
AMBER_HEAD = re.compile(rb'\{\s*"token_ids"\s*:\s*\[')      # a line that starts with its ids
OURS = re.compile(r"(manifest\.json|prepare\.json|tokenizer\.(model|tiktoken)|(train|val)-\d+\.(bin|json)|\..*\.tmp)")


@dataclass(frozen=True)
class Piece:
    split: str
    index: int
    units: list
    input_sha256: str

    @property
    def stem(self) -> str:
        return f"{self.split}-{self.index:05d}"

    @property
    def nbytes(self) -> int:
        return sum(len(u.data) for u in self.units)


@dataclass(frozen=True)
class Job:
    """What every worker needs to turn a piece into a shard."""
    folder: str
    layout: str
    row_len: int | None
    vocab_size: int
    dtype: str
    tokenizer: dict


def prepare(source: str, out, tokenizer: str | None = None, vocab_size: int | None = None, workers: int = 1,
            shard_mb: int = 64, val_every: int = 100, val_max_mb: int = 64, force: bool = False,
            log=print, progress: bool = True) -> dict:
    """-> the manifest of `out` (prepared now, resumed, or found complete)."""
    for name, v in (("workers", workers), ("shard_mb", shard_mb), ("val_every", val_every),
                    ("val_max_mb", val_max_mb)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise TinyFBIError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
    if val_every < 2:
        raise TinyFBIError(f"--val-every must be at least 2 (every N-th document is held out), got {val_every}")
    src = open_source(str(source), val_every, val_max_mb * MB)
    out = Path(out)
    request = {"format": FORMAT, "source": src.name, "layout": src.layout, "row_len": src.row_len,
               "tokenizer_flag": tokenizer, "vocab_size_flag": vocab_size, "shard_mb": shard_mb,
               "val_every": val_every, "val_max_mb": val_max_mb}
    state = claim_folder(out, request, force)
    if state is not None and (out / MANIFEST).is_file():
        log(f"{out} already holds this preparation (delete it, or pass --force, to redo it)")
        return json.loads((out / MANIFEST).read_text())
    out.mkdir(parents=True, exist_ok=True)
    if state is not None and state.get("tokenizer"):
        tok = load_tokenizer(state["tokenizer"], out)        # resuming: the tokenizer made the first time
        log(f"resuming the preparation in {out}")
    else:
        atomic_write_json(out / STATE, request)
        tok = choose_tokenizer(src, tokenizer, vocab_size)
        tok.save(out)
        atomic_write_json(out / STATE, {**request, "tokenizer": tok.spec})
    job = Job(str(out), src.layout, src.row_len, tok.vocab_size, token_dtype(tok.vocab_size).name, tok.spec)
    start = time.perf_counter()
    shards = write_shards(src, job, workers, shard_mb * MB, progress)
    if not shards["train"] or not shards["val"]:
        missing = "training" if not shards["train"] else "validation"
        raise TinyFBIError(f"{src.name} gave no {missing} tokens (every {val_every}-th document is held out, up to "
                           f"{val_max_mb} MB): use a bigger source or a smaller --val-every")
    manifest = {"format": FORMAT, "source": src.name, "layout": src.layout, "row_len": src.row_len,
                "tokenizer": tok.spec, "vocab_size": tok.vocab_size, "dtype": job.dtype,
                "val_every": val_every, "val_max_mb": val_max_mb, "shard_mb": shard_mb,
                "tokens": {split: sum(s["tokens"] for s in shards[split]) for split in shards}, **shards}
    atomic_write_json(out / MANIFEST, manifest)
    seconds = time.perf_counter() - start
    log(f"prepared {out}: {manifest['tokens']['train']:,} train / {manifest['tokens']['val']:,} val tokens in "
        f"{len(shards['train']) + len(shards['val'])} shards ({src.layout}, {tok.key}, {job.dtype}) in {seconds:.1f} s")
    return manifest


def claim_folder(out: Path, request: dict, force: bool) -> dict | None:
    """The saved state when `out` holds this very request (to resume or reuse); None for a fresh
    start. A preparation is replaced (or started over) only with --force; other files never."""
    if out.exists() and not out.is_dir():
        raise TinyFBIError(f"--out {out} is a file: give a folder")
    if not out.exists() or not any(out.iterdir()):
        return None
    if not ((out / STATE).is_file() or (out / MANIFEST).is_file()):
        raise TinyFBIError(f"--out {out} is not empty and holds no tinyfbi preparation: choose a new or empty folder")
    try:
        state = json.loads((out / STATE).read_text("utf-8"))
    except (OSError, ValueError):
        state = None
    if isinstance(state, dict) and {k: state.get(k) for k in request} == request and not force:
        return state
    if not force:
        what = "a preparation" if (out / MANIFEST).is_file() else "an unfinished preparation"
        source = state.get("source") if isinstance(state, dict) else "another source"
        raise TinyFBIError(f"--out {out} already holds {what} of {source} with other settings: pass --force to "
                           "replace it, or choose another --out")
    for path in out.iterdir():
        if path.is_file() and OURS.fullmatch(path.name):
            path.unlink()
    return None


def choose_tokenizer(src: Source, name: str | None, vocab_size: int | None) -> Tokenizer:
    """Text: --tokenizer (default sentencepiece, trained on the first 8M characters of the training
    documents). token_ids rows: no tokenizer (--vocab-size) or the one they were made with."""
    if src.layout == "token_ids":
        if name is None:
            if vocab_size is None:
                raise TinyFBIError("pre-tokenized token_ids rows need --vocab-size V (32000 for Amber's LLaMA-2 ids) "
                                   "or --tokenizer PATH/tokenizer.model")
            return IdsTokenizer(vocab_size)
        if name in ("sentencepiece", "tiktoken"):
            raise TinyFBIError(f"token_ids rows are already tokenized: --tokenizer must name the tokenizer they "
                               f"were made with (PATH/tokenizer.model or byte), not {name!r}")
        tok = build_tokenizer(name, "", vocab_size, ".")
        if vocab_size is not None and vocab_size != tok.vocab_size:
            raise TinyFBIError(f"--tokenizer {name} has {tok.vocab_size} ids; --vocab-size says {vocab_size}")
        return tok
    with tempfile.TemporaryDirectory() as work:   # build_tokenizer's cache of trained tokenizers: not kept
        needs_text = (name or "sentencepiece") in ("sentencepiece", "tiktoken") and not (
            name == "tiktoken" and vocab_size is None)
        sample = src.sample_text(TRAIN_MAX_CHARS) if needs_text else ""
        return build_tokenizer(name or "sentencepiece", sample, vocab_size, work)


# ---- pieces (main process) -----------------------------------------------------------------

def pieces(src: Source, job: Job, shard_bytes: int):
    """The source cut into pieces per split of about shard_bytes of input: text up to a line end, or a
    fixed number of rows (shard_bytes over the first row's size), so that memory is bounded by
    pieces in flight x shard_bytes whatever the layout."""
    rows_per_shard = None
    units, size, index = {"train": [], "val": []}, {"train": 0, "val": 0}, {"train": 0, "val": 0}

    def cut(split):
        h = hashlib.sha256()
        for u in units[split]:
            h.update(u.data)
        piece = Piece(split, index[split], units[split], h.hexdigest())
        units[split], size[split] = [], 0
        index[split] += 1
        return piece

    for unit in src.units():
        if job.row_len and rows_per_shard is None:
            rows_per_shard = max(1, shard_bytes // len(unit.data))   # the source's first row: deterministic
        units[unit.split].append(unit)
        size[unit.split] += len(unit.data)
        full = (len(units[unit.split]) >= rows_per_shard) if rows_per_shard else size[unit.split] >= shard_bytes
        if full:
            yield cut(unit.split)
    for split in ("train", "val"):
        if units[split]:
            yield cut(split)


def finished(folder: Path, piece: Piece, job: Job) -> dict | None:
    """The record of a piece a previous run completed (same input, shard of the right size)."""
    try:
        record = json.loads((folder / f"{piece.stem}.json").read_text())
    except (OSError, ValueError):
        return None
    if record.get("input_sha256") != piece.input_sha256:
        return None
    if record["tokens"] and not (folder / record["file"]).is_file():
        return None
    if record["tokens"] and (folder / record["file"]).stat().st_size != record["tokens"] * np.dtype(job.dtype).itemsize:
        return None
    return record


def write_shards(src: Source, job: Job, workers: int, shard_bytes: int, progress: bool) -> dict:
    """Every piece's shard, in order per split, from `workers` processes (1: this one)."""
    folder = Path(job.folder)
    done = {"train": {}, "val": {}}
    bar = tqdm(total=src.total_bytes, unit="B", unit_scale=True,
               unit_divisor=1024, desc="prepare", dynamic_ncols=True, mininterval=1.0, disable=not progress)
    tokens, start = 0, time.perf_counter()

    def record(piece_bytes, rec):
        nonlocal tokens
        done[rec["split"]][rec["index"]] = rec
        tokens += rec["tokens"]
        bar.update(piece_bytes)
        bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - start, 1e-9):,.0f}", refresh=False)

    if workers == 1:
        _init_worker(job)
        for piece in pieces(src, job, shard_bytes):
            record(piece.nbytes, finished(folder, piece, job) or _write_piece(piece))
    else:
        with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (job,)) as pool:
            pending = deque()
            for piece in pieces(src, job, shard_bytes):
                rec = finished(folder, piece, job)
                if rec is not None:
                    record(piece.nbytes, rec)
                    continue
                pending.append((piece.nbytes, pool.apply_async(_write_piece, (piece,))))
                while len(pending) >= 2 * workers:      # bounded memory: wait for the oldest piece
                    nbytes, result = pending.popleft()
                    record(nbytes, result.get())
            while pending:
                nbytes, result = pending.popleft()
                record(nbytes, result.get())
    bar.close()
    return {split: [{k: r[k] for k in ("file", "tokens", "sha256")} for _, r in sorted(done[split].items())
                    if r["tokens"]] for split in done}


# ---- one piece -> one shard (worker processes) -----------------------------------------------

_WORKER: dict = {}


def _init_worker(job: Job):
    _WORKER["job"] = job
    _WORKER["tokenizer"] = load_tokenizer(job.tokenizer, job.folder) if job.layout == "text" else None


def _write_piece(piece: Piece) -> dict:
    job, tok = _WORKER["job"], _WORKER["tokenizer"]
    ids = encode_units(tok, piece.units) if job.layout == "text" else rows_of(piece.units, job)
    if len(ids) and int(ids.max()) >= job.vocab_size:      # a bug guard: the tokenizer's ids fit its vocabulary
        raise TinyFBIError(f"{tok!r} produced id {int(ids.max())} >= its vocab_size")
    data = ids.astype(job.dtype, copy=False)
    folder = Path(job.folder)
    rec = {"split": piece.split, "index": piece.index, "file": f"{piece.stem}.bin", "tokens": int(len(data)),
           "sha256": hashlib.sha256(data).hexdigest(), "input_sha256": piece.input_sha256}
    if len(data):
        with atomic_open(folder / rec["file"]) as f:
            f.write(memoryview(data))
    atomic_write_json(folder / f"{piece.stem}.json", rec)     # after the shard: the piece is complete
    return rec


def encode_units(tok: Tokenizer, units: list[Unit]) -> np.ndarray:
    """Token ids of the units' text, encoded in segments of about SEGMENT characters cut at line ends."""
    if isinstance(tok, ByteTokenizer):             # the ids are the UTF-8 bytes, copied once into uint16
        blobs = []
        for u in units:
            text = unit_text(u)                    # strict UTF-8: an error names the file and offset
            blobs.append(u.data if u.kind == "text" else text.encode())
        out, at = np.empty(sum(map(len, blobs)), dtype=np.uint16), 0
        for blob in blobs:
            out[at:at + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
            at += len(blob)
        return out
    text = "".join(unit_text(u) for u in units)
    parts, at = [], 0
    while at < len(text):
        cut = text.find("\n", at + SEGMENT)
        cut = len(text) if cut < 0 else cut + 1
        parts.append(np.asarray(tok.encode(text[at:cut]), dtype=np.int64))
        at = cut
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def rows_of(units: list[Unit], job: Job) -> np.ndarray:
    """Pre-tokenized rows, as they are: each of row_len ids in [0, vocab_size), else one line naming it."""
    out = np.empty((len(units), job.row_len), dtype=np.int64)          # (rows, row_len)
    for r, u in enumerate(units):
        ids = row_ids(u)
        if len(ids) != job.row_len:
            raise TinyFBIError(f"{u.origin} has {len(ids)} token_ids, the first row {job.row_len}: every row "
                               "must have the same length")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= job.vocab_size:
            raise TinyFBIError(f"{u.origin}: token id {low if low < 0 else high} is outside the vocabulary "
                               f"0..{job.vocab_size - 1}")
        out[r] = ids
    return out.reshape(-1)


def row_ids(unit: Unit) -> np.ndarray:
    """One row's ids. Amber's lines start with their ids ({"token_ids": [1, 2, ...], ...}): those are
    read by numpy's C parser (3x faster than json.loads, measured) and the rest of such a line is
    not parsed; any other line, or ids numpy cannot read whole, go through json."""
    if unit.kind == "ids":
        return np.frombuffer(unit.data, dtype=np.int64)
    head = AMBER_HEAD.match(unit.data)
    end = unit.data.find(b"]", head.end()) if head else -1
    if end >= 0:
        body = unit.data[head.end():end]
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)   # numpy's "could not be read to its end"
            try:
                ids = np.fromstring(body, dtype=np.int64, sep=",")
            except (ValueError, DeprecationWarning):             # a float, a string: json says what
                ids = None
        if ids is not None and len(ids) == body.count(b",") + 1:
            return ids
    value = json_row(unit.data, unit.origin, "token_ids")
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TinyFBIError(f"{unit.origin}: 'token_ids' is not a list of integers")
    try:
        return np.array(value, dtype=np.int64)
    except OverflowError:
        raise TinyFBIError(f"{unit.origin}: a token id does not fit in 64 bits") from None


def verify(folder) -> dict:
    """Every shard's size and sha256 against the manifest (-> the manifest)."""
    manifest = read_manifest(folder)
    check_shards(folder, manifest, checksums=True)
    return manifest
