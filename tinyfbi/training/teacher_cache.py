"""Sparse distillation: the teacher's top-K next-token probabilities, computed once, kept on disk.

Distillation's extra cost is a teacher forward every step. With `--teacher-cache K` the teacher
runs once over every training sequence (corpus.batches.Sequences: sequence i of a token stream is
tokens[i*T : i*T + T + 1]), its K most likely tokens and their probabilities per position are
stored (uint16/uint32 ids, float16 probabilities), and the student reads the targets of the
sequences in its batch (BatchSampler.windows) from the cache. The tail mass (1 - sum of the top
K) is spread evenly over the other tokens (TeacherTopK). One cache serves every run in --out that
distills the same teacher on the same data, tokenizer and sequence length (cache_folder).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core import layers as L
from ..core.errors import TinyFBIError
from ..formats.atomic import atomic_write_json, complete_folder, replace_folder, temp_folder

CACHE_FORMAT = 2          # 2: indexed by corpus.batches.Sequences


class TeacherTopK:
    """Sparse distillation targets: the teacher's top-K probabilities per position, from disk."""

    def __init__(self, idx, prob, vocab_size):
        self.idx, self.prob, self.vocab_size = idx, prob, vocab_size  # (N_windows, T, K) each

    def probs(self, windows):
        idx, prob = self.idx[windows], self.prob[windows].astype(np.float32)        # (B, T, K)
        K, V = idx.shape[-1], self.vocab_size
        # the mass outside the top K is spread evenly over the other V - K tokens: without it the
        # student learns to give every token outside the teacher's top K zero probability
        tail = np.clip(1.0 - prob.sum(-1, keepdims=True), 0.0, 1.0) / max(V - K, 1)  # (B, T, 1)
        dense = np.broadcast_to(tail, idx.shape[:2] + (V,)).copy()                    # (B, T, V)
        np.put_along_axis(dense, idx.astype(np.int64), prob, axis=-1)
        return dense


def cache_identity(teacher_dir, data_source, tokenizer_key) -> dict:
    """What a cache was computed from: the teacher checkpoint (its path and its weight files' sizes and
    mtimes: a teacher retrained in the same folder is a new teacher), the data and the tokenizer."""
    folder = Path(teacher_dir).resolve()
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".npz", ".npy"))
    return {"teacher": str(folder), "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files],
            "data": data_source, "tokenizer": tokenizer_key}


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:10]


def cache_folder(out, identity, seq_len, k) -> Path:
    """out/teacher-caches/<teacher run>-topK-T<len>-<hash of identity>: shared by every run in `out`
    that distills the same teacher with the same data, tokenizer and sequence length."""
    return Path(out) / "teacher-caches" / f"{Path(identity['teacher']).parent.name}-top{k}-T{seq_len}-{_digest(identity)}"


def memo_val_loss(out, key: dict, evaluate, is_main) -> float:
    """The teacher's validation loss under `key` (cache_identity plus the validation windows and the
    backend), computed once and kept in out/teacher-caches/val-<hash>.json for every later run.
    (Ranks read the file before any rank can write it: writing waits for evaluate(), which needs them all.)"""
    path = Path(out) / "teacher-caches" / f"val-{_digest(key)}.json"
    if path.is_file():
        return json.loads(path.read_text())["val_loss"]
    loss = evaluate()
    if is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {**key, "val_loss": loss})
    return loss


def build_teacher_cache(teacher, sequences, k, folder, batch_size=16, log=print, identity=None) -> TeacherTopK:
    """Load the cache in `folder` if it matches, else compute it (atomically) and load it. `identity`
    (cache_identity) is kept in meta.json, so a cache never serves another teacher or corpus."""
    folder = Path(folder)
    seq_len = sequences.seq_len
    meta = {"format": CACHE_FORMAT, "k": k, "seq_len": seq_len, "num_sequences": len(sequences),
            "num_tokens": len(sequences.split), "vocab_size": teacher.config.vocab_size, "identity": identity}
    found = complete_folder(folder)
    if found is not None and (found / "meta.json").is_file() and json.loads((found / "meta.json").read_text()) == meta:
        return _load(found, teacher.config.vocab_size)
    V = teacher.config.vocab_size
    if not 0 < k <= V:
        raise TinyFBIError(f"--teacher-cache K must lie in 1..{V} (the vocabulary), got {k}")
    num_windows = len(sequences)
    tmp = temp_folder(folder)
    id_dtype = np.uint16 if V <= 65535 else np.uint32
    idx = np.lib.format.open_memmap(tmp / "idx.npy", "w+", id_dtype, (num_windows, seq_len, k))
    prob = np.lib.format.open_memmap(tmp / "prob.npy", "w+", np.float16, (num_windows, seq_len, k))
    log(f"teacher cache: top-{k} probabilities for {num_windows} windows of {seq_len} tokens -> {folder}")
    start = time.perf_counter()
    for s in tqdm(range(0, num_windows, batch_size), desc="teacher cache", unit="batch", mininterval=1.0):
        e = min(num_windows, s + batch_size)
        x = sequences.read(np.arange(s, e))[:, :-1]                                     # (b, T)
        p = L.softmax(teacher.forward(x).astype(np.float32))                            # (b, T, V)
        top = np.argpartition(p, V - k, axis=-1)[..., V - k:]                          # (b, T, K)
        idx[s:e] = top
        prob[s:e] = np.take_along_axis(p, top, axis=-1)
    teacher.drop_caches()
    idx.flush()
    prob.flush()
    del idx, prob
    atomic_write_json(tmp / "meta.json", meta)
    atomic_write_json(tmp / "build.json", {"seconds": time.perf_counter() - start})   # what the cache cost
    return _load(replace_folder(tmp, folder), V)


def _load(folder, vocab_size) -> TeacherTopK:
    try:
        idx = np.load(folder / "idx.npy", mmap_mode="r")
        prob = np.load(folder / "prob.npy", mmap_mode="r")
    except (OSError, ValueError) as e:
        raise TinyFBIError(f"teacher cache {folder} is unreadable ({e}); delete it to rebuild") from None
    return TeacherTopK(idx, prob, vocab_size)
