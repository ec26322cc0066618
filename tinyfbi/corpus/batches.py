"""Batches: fixed sequences of a split's tokens, visited once per epoch in a seeded order.

The one batch path for every corpus, from Shakespeare's token file to Amber's shards:
    TokenSplit   a split's token ids: shards (memmaps), each one row, or rows of row_len ids (Amber: 2049)
    Sequences    the split cut into sequences of seq_len + 1 tokens: each row gives the windows at
                 offsets 0, T, 2T, ... (x = first T, y = last T; neighbours share one token)
    BatchSampler global batch k = sequences at stream positions k*B .. k*B + B - 1 of the epoch order
                 (corpus.order): a function of (seed, k) alone, whatever the number of ranks, so
                 resume and spike rollback are exact; each rank reads only its own rows.
"""
from __future__ import annotations

import numpy as np

from ..core.errors import TinyFBIError
from .order import stream_order


def _check_positive(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise TinyFBIError(f"{name} must be a positive integer, got {v!r}")


class TokenSplit:
    """A split's token ids as one stream over shards (1-D arrays, usually read-only memmaps); each
    shard is one row (row_len None: a text stream), or rows of row_len ids (pre-tokenized rows)."""

    def __init__(self, shards, row_len: int | None = None, name: str = "corpus"):
        self.shards, self.row_len, self.name = list(shards), row_len, name
        self.sizes = np.array([len(s) for s in self.shards], dtype=np.int64)   # (num_shards,)

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def __getitem__(self, s: slice) -> np.ndarray:
        """Tokens [start, stop) of the stream (a prompt, a small read), across shards."""
        start, stop, step = s.indices(len(self))
        if step != 1:
            raise TypeError("TokenSplit supports contiguous slices only")
        parts, offset = [], 0
        for shard, size in zip(self.shards, self.sizes):
            lo, hi = max(start - offset, 0), min(stop - offset, int(size))
            if lo < hi:
                parts.append(np.asarray(shard[lo:hi]))
            offset += int(size)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def as_split(tokens, name: str = "corpus") -> TokenSplit:
    return tokens if isinstance(tokens, TokenSplit) else TokenSplit([tokens], None, name)


class Sequences:
    """Sequence j of a split: seq_len + 1 consecutive tokens inside one row of one shard."""

    def __init__(self, split: TokenSplit, seq_len: int):
        _check_positive(seq_len=seq_len)
        T, self.split, self.seq_len = int(seq_len), split, int(seq_len)
        if split.row_len is not None and split.row_len < T + 1:
            raise TinyFBIError(f"{split.name}: rows of {split.row_len} ids are shorter than --seq-len {T} + 1; "
                               f"use --seq-len {split.row_len - 1} or less")
        row_len = split.sizes if split.row_len is None else np.full_like(split.sizes, split.row_len)
        rows = np.ones_like(split.sizes) if split.row_len is None else split.sizes // split.row_len
        self.row_len = row_len                                         # (num_shards,)
        self.per_row = np.maximum(row_len - 1, 0) // T                 # windows per row, (num_shards,)
        counts = rows * self.per_row
        self.first = np.concatenate([[0], np.cumsum(counts)])          # first sequence of each shard
        self.num = int(self.first[-1])
        if self.num == 0:
            raise TinyFBIError(f"{split.name} shorter than one sequence: {len(split)} tokens < {T + 1} "
                               f"(seq_len {T} + 1); use more text or a smaller --seq-len")

    def __len__(self) -> int:
        return self.num

    def read(self, ids) -> np.ndarray:
        """Sequences `ids` (n,) -> tokens (n, T + 1) int64, read from the shards that hold them."""
        ids = np.asarray(ids, dtype=np.int64)
        shard = np.searchsorted(self.first, ids, side="right") - 1                  # (n,)
        local = ids - self.first[shard]
        row, k = np.divmod(local, self.per_row[shard])
        starts = row * self.row_len[shard] + k * self.seq_len                       # (n,)
        out = np.empty((len(ids), self.seq_len + 1), dtype=np.int64)
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            data = self.split.shards[s]
            for i in sel:            # one contiguous read per sequence: only its pages are touched
                out[i] = data[starts[i]:starts[i] + self.seq_len + 1]
        return out


class BatchSampler:
    """Global batch k: the sequences at positions k*B .. k*B + B - 1 of the endless epoch order.

    rows: the rows of the global batch this process reads (a rank's slice under torchrun); the
    batch keeps its global shape (B, T) so a learner slices its rows as always, and the rows of
    other ranks stay zero, never read (np.zeros pages are not touched)."""

    def __init__(self, tokens, batch_size: int, seq_len: int, seed: int, name: str = "corpus",
                 rows: slice = slice(None)):
        _check_positive(batch_size=batch_size, seq_len=seq_len)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TinyFBIError(f"seed must be a non-negative integer, got {seed!r}")
        self.sequences = Sequences(as_split(tokens, name), seq_len)
        self.seed, self.batch_size, self.seq_len, self.rows = int(seed), int(batch_size), int(seq_len), rows
        self._last = None                    # (step, its sequence ids)

    def windows(self, step: int) -> np.ndarray:
        """The sequence ids of global batch `step`, (B,): a teacher top-K cache is indexed by them.
        The last step's are kept: the loop asks for them beside batch(step)."""
        if self._last is None or self._last[0] != step:
            positions = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
            self._last = (step, stream_order(positions, len(self.sequences), self.seed))
        return self._last[1]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        ids = self.windows(step)
        x = np.zeros((self.batch_size, self.seq_len), dtype=np.int64)                # (B, T)
        y = np.zeros((self.batch_size, self.seq_len), dtype=np.int64)                # (B, T)
        window = self.sequences.read(ids[self.rows])                                # (b, T + 1)
        x[self.rows], y[self.rows] = window[:, :-1], window[:, 1:]
        return x, y


def iter_eval_batches(tokens, batch_size: int, seq_len: int, max_batches: int | None = None,
                      name: str = "validation split"):
    """Sequences 0, 1, 2, ... in order, in batches of up to B (the last may be smaller). On one
    stream, sequence i starts at i*T: each of the first (N-1)//T*T targets is scored exactly once."""
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    if max_batches is not None:
        _check_positive(max_batches=max_batches)
    sequences = Sequences(as_split(tokens, name), seq_len)
    return _eval_batches(sequences, int(batch_size), max_batches)


def _eval_batches(sequences: Sequences, batch_size: int, max_batches: int | None):
    for b, first in enumerate(range(0, len(sequences), batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        window = sequences.read(np.arange(first, min(first + batch_size, len(sequences))))  # (b, T + 1)
        yield np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])
