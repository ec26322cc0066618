"""The epoch order: a seeded permutation of [0, N) per epoch, computed one index at a time.

FBI-LLM's authors read each Amber chunk once, shuffled (arXiv 2407.07093 section 4.1; their
main_utils.load_jsonl_examples). Here every sequence of the whole split is visited exactly once
per epoch, in a new order each epoch, without storing a permutation: position i of epoch e is
`permute(i, N, key(seed, e))`, a keyed Feistel network on the next power of 4 above N, walked
back into [0, N) (cycle walking, Black & Rogaway 2002). Amber's 615M sequences cost no memory.

    >>> epoch_order(np.arange(10), 10, seed=0, epoch=0)     # a permutation of 0..9
"""
from __future__ import annotations

import numpy as np

ROUNDS = 6                       # Feistel rounds: 4 make a pseudo-random permutation; 6 mix small domains better
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective 64-bit hash (uint64 arithmetic wraps)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def round_keys(seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng((seed, epoch)).integers(0, 2**63, size=ROUNDS, dtype=np.uint64)


def permute(i: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """A bijection of [0, n) chosen by keys, at the positions i (any shape)."""
    bits = max(2, int(n - 1).bit_length())
    half = np.uint64((bits + 1) // 2)                       # domain 2^(2*half) < 4n
    mask = (np.uint64(1) << half) - np.uint64(1)
    x = np.asarray(i, dtype=np.uint64).copy()
    todo = np.ones(x.shape, dtype=bool)
    while todo.any():               # cycle walking: a value outside [0, n) is permuted again
        v = x[todo]
        left, right = v >> half, v & mask
        for k in keys:               # one Feistel round: (L, R) -> (R, L ^ F(R))
            left, right = right, left ^ (_mix(right ^ k) & mask)
        x[todo] = (left << half) | right
        todo = x >= np.uint64(n)
    return x.astype(np.int64)


def epoch_order(positions: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """Which of the n sequences sits at each position (in [0, n)) of this epoch."""
    return permute(positions, n, round_keys(seed, epoch))


def stream_order(positions: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The sequence at each position of the endless stream epoch 0, epoch 1, ... (positions >= 0)."""
    positions = np.asarray(positions, dtype=np.int64)
    epochs, within = np.divmod(positions, n)
    out = np.empty_like(positions)
    for e in np.unique(epochs):     # a batch spans at most a few epochs
        sel = epochs == e
        out[sel] = epoch_order(within[sel], n, seed, int(e))
    return out
