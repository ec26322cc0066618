"""Solutions to the exercises that close notebooks 04, 05 and 06, each checked against an oracle
that does not share the solution's arithmetic.

- 04: a ternary (BitNet b1.58) dot product from popcounts of two masks, against NumPy's integer dot;
- 05: bits per parameter at 13B, by hand from the published shape, against the planner; the 1.3B
  plan's teacher term on 64 GPUs, by hand, against the planner's dry run;
- 06: the flip-flop ratio one AdamW-sized step causes, lr / (sigma sqrt(2 pi)), against a Monte Carlo
  measured with the training loop's own flip_fractions.
"""
import math

import numpy as np
import pytest

from tinyfbi.core.binarize import positive_mask
from tinyfbi.training.numpy_backend import flip_fractions

# ---- 04 · the popcount identity for ternary weights ----

def bits_of(mask: np.ndarray) -> np.ndarray:
    """A bool vector of length n (a multiple of 64) as n/64 uint64 words, bit j % 64 of word j // 64."""
    return np.packbits(mask, bitorder="little").view(np.uint64)


def ternary_dot(w: np.ndarray, q: np.ndarray) -> int:
    """sum_j w_j q_j for w in {-1, 0, +1} and int8 q, from popcounts only:
    sum_j w_j q_j = sum_{j in P} q_j - sum_{j in N} q_j, and sum_{j in M} q_j = sum_b c_b popcount(M & Q_b)
    over the two's-complement bit planes Q_b of q (c_b = 2^b for b < 7, c_7 = -128)."""
    P, N = bits_of(w == 1), bits_of(w == -1)
    planes = [bits_of(((q.view(np.uint8) >> b) & 1).astype(bool)) for b in range(8)]
    c = [2 ** b for b in range(7)] + [-128]
    return sum(cb * (int(np.bitwise_count(P & Qb).sum()) - int(np.bitwise_count(N & Qb).sum()))
               for cb, Qb in zip(c, planes))


@pytest.mark.parametrize("seed", range(5))
def test_04_ternary_popcount(seed):
    rng = np.random.default_rng(seed)
    n = 64 * int(rng.integers(1, 9))
    w = rng.integers(-1, 2, n).astype(np.int8)                      # {-1, 0, +1}
    q = rng.integers(-128, 128, n).astype(np.int8)                  # -128 included: the c_7 plane
    assert ternary_dot(w, q) == int(w.astype(np.int64) @ q.astype(np.int64))    # exact: integers


# ---- 05 · bits at 13B, and the teacher on 64 GPUs ----

LAYERS, HIDDEN, INTER, VOCAB = 40, 5120, 13824, 32000              # LLaMA-2-13B's shape (FBI's 13b preset)


def bits_13b() -> tuple[float, float]:
    """(bits per binarized weight, bits per parameter of the whole packed model) by hand: 1 bit per sign,
    16 per alpha and per beta (one each per input column), 16 per other parameter; the whole-model figure
    is per parameter of the model without alpha and beta, as the planner counts it."""
    linears = [(HIDDEN, HIDDEN)] * 4 + [(INTER, HIDDEN)] * 2 + [(HIDDEN, INTER)]     # (out, in): q k v o gate up down
    weights = LAYERS * sum(o * i for o, i in linears)
    scales = LAYERS * sum(2 * i for _, i in linears)
    full = 2 * VOCAB * HIDDEN + (2 * LAYERS + 1) * HIDDEN               # embeddings, head, norms
    signs_bits = weights + 16 * scales
    return signs_bits / weights, (signs_bits + 16 * full) / (weights + full)


def test_05_bits_at_13b():
    torch = pytest.importorskip("torch")  # noqa: F841  (the planner builds the model on the meta device)
    from tinyfbi.core.config import ModelConfig
    from tinyfbi.torch_backend.planner import bits_per_param, count_params
    per_weight, whole = bits_13b()
    config = ModelConfig.from_name("13b")
    planner = bits_per_param(config, count_params(config))
    # the same integers summed in another order: only float64 rounding differs
    assert abs(per_weight - planner["binarized_layers"]) < 1e-12
    assert abs(whole - planner["whole_model"]) < 1e-12
    assert round(per_weight, 2) == 1.00                              # 13B rounds below the paper's 1.01


def test_05_teacher_term_at_64_gpus():
    pytest.importorskip("torch")
    from tinyfbi.torch_backend.planner import plan
    from tinyfbi.training.spec import RunSpec
    # LLaMA-2-7B, the teacher: 32 layers, hidden 4096, intermediate 11008
    layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096           # q k v o, gate up down, two norms
    root = 2 * 32000 * 4096 + 4096                                  # embeddings, head, final norm
    total = 32 * layer + root
    world = 64
    by_hand = 2 * total / world + 2 * root + 2 * 2 * layer          # bf16 shard + gathered root + two layers
    p = plan(RunSpec.build(backend="torch", size="1.3b", recipe="paper", dry_run=True, world_size=world))
    assert p["parallel"] == "fsdp"
    assert abs(by_hand / 2**30 - p["memory_gib_per_gpu"]["teacher"]) < 1e-9
    assert p["memory_gib_per_gpu"]["teacher"] > p["memory_gib_per_gpu"]["weights"]     # still larger


# ---- 06 · the flip-flop ratio of one step of size lr ----

def predicted_flip_ratio(lr: float, sigma: float) -> float:
    """Weights ~ N(0, sigma^2), each moved by lr in a random direction: a weight flips when it lies within
    lr of zero and moves towards it, probability lr * density(0) = lr / (sigma sqrt(2 pi)) for lr << sigma."""
    return lr / (sigma * math.sqrt(2 * math.pi))


@pytest.mark.parametrize("lr", [2e-4, 2e-3])
def test_06_flip_ratio_of_one_step(lr):
    rng = np.random.default_rng(0)
    sigma, n = 0.02, 2_000_000
    w = rng.normal(0.0, sigma, n)
    after = w + lr * rng.choice([-1.0, 1.0], n)                     # AdamW's early steps: about +-lr each
    measured = flip_fractions({"w": positive_mask(w)}, {"w": after})["all"]
    expected = predicted_flip_ratio(lr, sigma)
    # Monte Carlo: flips ~ Binomial(n, p), relative sd 1/sqrt(n p) <= 1.6% here; the curvature of the
    # density over [0, lr] costs (lr / sigma)^2 / 6 < 0.2%; 6% is over 3.5 sd
    assert abs(measured - expected) / expected < 0.06
