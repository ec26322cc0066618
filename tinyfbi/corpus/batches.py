"""Batches: (x, y) windows of a token file, y the next token of each x.

Every batch is a function of (seed, step) alone, so a run's data position is one counter: a
resumed or rolled-back run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import numpy as np

from ..core.errors import TinyFBIError


def _check_positive(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise TinyFBIError(f"{name} must be a positive integer, got {v!r}")


def _check_length(num_tokens: int, seq_len: int, name: str) -> None:
    if num_tokens < seq_len + 1:
        raise TinyFBIError(f"{name} shorter than one sequence: {num_tokens} tokens < {seq_len + 1} "
                           f"(seq_len {seq_len} + 1); use more text or a smaller --seq-len")


class BatchSampler:
    """Random windows of seq_len + 1 tokens; x is the first T, y the last T (next-token targets).

    Batch k is drawn from np.random.default_rng((seed, k)), a function of the seed and the step
    alone, so the state is one counter and a resumed (or rolled-back) run sees the same batches."""

    def __init__(self, tokens, batch_size: int, seq_len: int, seed: int, name: str = "corpus"):
        _check_positive(batch_size=batch_size, seq_len=seq_len)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TinyFBIError(f"seed must be a non-negative integer, got {seed!r}")
        _check_length(len(tokens), seq_len, name)
        self.tokens, self.seed = tokens, int(seed)
        self.batch_size, self.seq_len = int(batch_size), int(seq_len)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, step))
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)  # (B,)
        idx = starts[:, None] + np.arange(self.seq_len + 1)                                # (B, T+1)
        window = np.asarray(self.tokens[idx], dtype=np.int64)
        return np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])  # (B, T) each


def iter_eval_batches(tokens, batch_size: int, seq_len: int, max_batches: int | None = None,
                      name: str = "validation split"):
    """Consecutive non-overlapping windows (window i starts at i*T) in batches of up to B, in order;
    the last batch may be smaller. Each of the first (N-1)//T*T targets is scored exactly once;
    the < T tokens left at the end are not."""
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    if max_batches is not None:
        _check_positive(max_batches=max_batches)
    _check_length(len(tokens), seq_len, name)
    return _eval_windows(tokens, int(batch_size), int(seq_len), max_batches)


def _eval_windows(tokens, batch_size: int, seq_len: int, max_batches: int | None):
    starts = np.arange((len(tokens) - 1) // seq_len) * seq_len                 # (num_windows,)
    for b, first in enumerate(range(0, len(starts), batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        idx = starts[first:first + batch_size, None] + np.arange(seq_len + 1)   # (b, T+1)
        window = np.asarray(tokens[idx], dtype=np.int64)
        yield np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])


class AlignedSampler:
    """Batches of whole fixed windows (window i = tokens[i*T : i*T + T + 1]), drawn per step: the
    windows a teacher top-K cache covers (training.teacher_cache)."""

    def __init__(self, tokens, batch_size, seq_len, seed):
        _check_positive(batch_size=batch_size, seq_len=seq_len)
        _check_length(len(tokens), seq_len, "corpus")
        self.tokens, self.batch_size, self.seq_len, self.seed = tokens, batch_size, seq_len, seed
        self.num_windows = (len(tokens) - 1) // seq_len

    def windows(self, step):
        return np.random.default_rng((self.seed, step)).integers(0, self.num_windows, self.batch_size)

    def batch(self, step):
        starts = self.windows(step) * self.seq_len
        window = np.asarray(self.tokens[starts[:, None] + np.arange(self.seq_len + 1)], dtype=np.int64)
        return np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])
