"""Sparse distillation: the teacher's top-K next-token probabilities, computed once, kept on disk.

Distillation's extra cost is a teacher forward every step. With `--teacher-cache K` the teacher
runs once over fixed windows of the training tokens (window i = tokens[i*T : i*T + T + 1]), its
K most likely tokens and their probabilities per position are stored (uint16/uint32 ids, float16
probabilities), and the student samples whole windows, reading its targets from the cache. The
tail mass (1 - sum of the top K) is spread evenly over the other tokens (trainer.TeacherTopK).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import layers as L
from .errors import TinyFBIError
from .trainer import TeacherTopK

CACHE_FORMAT = 1


class AlignedSampler:
    """Batches of whole fixed windows (the ones the teacher cache covers), drawn per step."""

    def __init__(self, tokens, batch_size, seq_len, seed):
        self.tokens, self.batch_size, self.seq_len, self.seed = tokens, batch_size, seq_len, seed
        self.num_windows = (len(tokens) - 1) // seq_len
        if self.num_windows < 1:
            raise TinyFBIError(f"corpus shorter than one sequence: {len(tokens)} tokens < {seq_len + 1}")

    def windows(self, step):
        return np.random.default_rng((self.seed, step)).integers(0, self.num_windows, self.batch_size)

    def batch(self, step):
        starts = self.windows(step) * self.seq_len
        window = np.asarray(self.tokens[starts[:, None] + np.arange(self.seq_len + 1)], dtype=np.int64)
        return np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])


def build_teacher_cache(teacher, tokens, seq_len, k, folder, batch_size=16, log=print) -> TeacherTopK:
    """Load the cache in `folder` if it matches, else compute it (atomically) and load it."""
    folder = Path(folder)
    meta = {"format": CACHE_FORMAT, "k": k, "seq_len": seq_len, "num_tokens": len(tokens),
            "vocab_size": teacher.config.vocab_size}
    meta_path = folder / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return _load(folder, teacher.config.vocab_size)
    V = teacher.config.vocab_size
    if not 0 < k <= V:
        raise TinyFBIError(f"--teacher-cache K must lie in 1..{V} (the vocabulary), got {k}")
    num_windows = (len(tokens) - 1) // seq_len
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    id_dtype = np.uint16 if V <= 65535 else np.uint32
    idx = np.lib.format.open_memmap(tmp / "idx.npy", "w+", id_dtype, (num_windows, seq_len, k))
    prob = np.lib.format.open_memmap(tmp / "prob.npy", "w+", np.float16, (num_windows, seq_len, k))
    log(f"teacher cache: top-{k} probabilities for {num_windows} windows of {seq_len} tokens -> {folder}")
    for s in tqdm(range(0, num_windows, batch_size), desc="teacher cache", unit="batch", mininterval=1.0):
        e = min(num_windows, s + batch_size)
        starts = np.arange(s, e) * seq_len
        x = np.asarray(tokens[starts[:, None] + np.arange(seq_len)], dtype=np.int64)   # (b, T)
        p = L.softmax(teacher.forward(x).astype(np.float32))                            # (b, T, V)
        top = np.argpartition(p, V - k, axis=-1)[..., V - k:]                          # (b, T, K)
        idx[s:e] = top
        prob[s:e] = np.take_along_axis(p, top, axis=-1)
    teacher._caches = None
    idx.flush()
    prob.flush()
    del idx, prob
    (tmp / "meta.json").write_text(json.dumps(meta))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return _load(folder, V)


def _load(folder, vocab_size) -> TeacherTopK:
    try:
        idx = np.load(folder / "idx.npy", mmap_mode="r")
        prob = np.load(folder / "prob.npy", mmap_mode="r")
    except (OSError, ValueError) as e:
        raise TinyFBIError(f"teacher cache {folder} is unreadable ({e}); delete it to rebuild") from None
    return TeacherTopK(idx, prob, vocab_size)
