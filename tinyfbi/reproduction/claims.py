"""The paper's claims as comparisons of arms, each judged by one rule from its seeds.

A side of a comparison is an arm ("fbi-ad"), a difference of two arms ("fbi-ad - fp": the cost of
binarization at that size, per seed), or "teacher" (one model, the same for every seed). Values are
validation losses in nats per token (perplexity = e^loss; a difference of 0.01 nats is about 1%
perplexity).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from .plan import ARMS_BY_NAME, INIT_FROM_FP
from .stats import paired_interval, t_quantile

ONE_PERCENT = math.log(1.01)       # "no worse": within 1% perplexity
TEN_PERCENT = math.log(1.10)       # "about as good": within 10% perplexity
LEVEL = 0.95

RULE = (f"Each claim compares the validation loss (nats/token) of two sides trained with the same seeds "
        f"(same initial weights and batch order): d = A - B per seed, and its {LEVEL:.0%} interval is "
        f"mean(d) +- t(0.975, n-1) * sd(d) / sqrt(n). 'A beats B' is supported when the interval lies below "
        f"0, contradicted when it lies above 0. 'A is no worse than B (within m)' is supported below +m, "
        f"contradicted above +m. 'A and B agree (within m)' is supported inside (-m, +m), contradicted "
        f"entirely outside it. Anything else is inconclusive: the seeds cannot tell.")


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    a: str
    b: str
    kind: str = "beats"            # beats | no_worse | agree
    margin: float = 0.0            # nats, for no_worse and agree


CLAIMS = (
    Claim("teacher", "the teacher is stronger than a full-precision model of the students' size at their "
          "budget (the premise of distillation)", "teacher", "fp"),
    Claim("a1", "autoregressive distillation trains a better 1-bit student than next-token labels "
          "(section 3.2)", "fbi-ad", "fbi-ce"),
    Claim("a2", "pure distillation is no worse than the 0.5/0.5 mix with labels (the released recipe "
          "uses distillation alone)", "fbi-ad", "fbi-mix", "no_worse", ONE_PERCENT),
    Claim("b1", "FBI's learnable per-column alpha/beta beat sign(W) alone", "fbi-ad", "noscale-ad"),
    Claim("b2", "per-column alpha/beta are no worse than per-row", "fbi-ad", "rowscale-ad",
          "no_worse", ONE_PERCENT),
    Claim("b3", "1-bit FBI is no worse than BitNet b1.58 ternary at the same shape and budget "
          "(Table 2: FBI-LLM 1.3B beats BitNet b1.58 1.3B)", "fbi-ad", "ternary-ad", "no_worse", ONE_PERCENT),
    Claim("c", "training from scratch is about as good as starting from a trained full-precision model of "
          "the same shape (section 5)", "fbi-ad", "fbi-init-ad", "agree", TEN_PERCENT),
    Claim("d", "binarization costs perplexity: full precision beats FBI at the same shape, budget and recipe "
          "(both distilled)", "fp-ad", "fbi-ad"),
    Claim("e", "the gap between FBI and full precision (both distilled) narrows as the model grows (students' "
          "size -> the larger size, same tokens)", "large-fbi-ad - large-fp-ad", "fbi-ad - fp-ad"),
)

CLAIM_KEYS = tuple(c.key for c in CLAIMS)
MAX_SEEDS = 100                    # "seeds needed" beyond this is reported as more than 100


def arms_for(keys) -> tuple[str, ...]:
    """The arms that the claims `keys` compare (with `fp` where an arm starts from it), in plan order."""
    unknown = [k for k in keys if k not in CLAIM_KEYS]
    if unknown:
        raise ValueError(f"unknown claim {unknown[0]!r}: choose among {', '.join(CLAIM_KEYS)}")
    names = {n for c in CLAIMS if c.key in keys for part in (c.a, c.b) for n in part.split(" - ") if n != "teacher"}
    names |= {"fp" for n in names if ARMS_BY_NAME[n].fields.get("init") == INIT_FROM_FP}
    if any(c.key in keys and "teacher" in (c.a, c.b) for c in CLAIMS):
        names.add("fp")
    return tuple(n for n in ARMS_BY_NAME if n in names)


def distance_to_boundary(kind, margin, mean) -> float:
    """How far the mean difference lies from the nearest edge of its verdict: 0 for 'beats', the margin
    for 'no worse', -m and +m for 'agree'. An interval narrower than this (each side) decides the claim."""
    if kind == "beats":
        return abs(mean)
    if kind == "no_worse":
        return abs(mean - margin)
    return min(abs(mean - margin), abs(mean + margin))


@lru_cache(maxsize=None)
def t975(df) -> float:
    return t_quantile(0.5 + LEVEL / 2, df)


def seeds_needed(kind, margin, mean, sd) -> int | None:
    """The fewest seeds whose interval half-width t(0.975, n-1) * sd / sqrt(n) is below the distance of
    `mean` to its verdict's boundary, if the mean and the spread of the paired differences held; None
    beyond MAX_SEEDS."""
    dist = distance_to_boundary(kind, margin, mean)
    for n in range(2, MAX_SEEDS + 1):
        if t975(n - 1) * sd / math.sqrt(n) < dist:
            return n
    return None


WORDS = {"beats": "beats", "no_worse": "is no worse than", "agree": "agrees with"}


def side(results, name, seeds) -> list[float]:
    """Per-seed validation losses of one side of a comparison, in the order of `seeds`."""
    if name == "teacher":
        return [results["teacher"]["val_loss"]] * len(seeds)
    if " - " in name:
        plus, minus = name.split(" - ")
        return [p - m for p, m in zip(side(results, plus, seeds), side(results, minus, seeds))]
    runs = results["arms"][name]["seeds"]
    return [runs[str(s)]["val_loss"] for s in seeds]


def judge(kind, margin, low, high) -> str:
    """supported / contradicted / inconclusive from the interval of d = A - B (lower is better)."""
    if kind == "beats":
        return "supported" if high < 0 else "contradicted" if low > 0 else "inconclusive"
    if kind == "no_worse":
        return "supported" if high < margin else "contradicted" if low > margin else "inconclusive"
    if kind == "agree":
        return ("supported" if -margin < low and high < margin
                else "contradicted" if low > margin or high < -margin else "inconclusive")
    raise ValueError(f"unknown claim kind {kind!r}")


def evaluate_claims(results, seeds, keys=CLAIM_KEYS) -> list[dict]:
    """One verdict per claim of `keys` whose arms are in `results`; each with its per-seed differences, their
    spread and the seeds that spread would need to decide it."""
    out = []
    for c in CLAIMS:
        if c.key not in keys:
            continue
        names = [n for part in (c.a, c.b) for n in part.split(" - ") if n != "teacher"]
        if not all(n in results["arms"] for n in names) or (c.a == "teacher" and "teacher" not in results):
            continue
        iv = paired_interval(side(results, c.a, seeds), side(results, c.b, seeds), LEVEL)
        verdict = judge(c.kind, c.margin, iv["low"], iv["high"])
        sd = iv["se"] * math.sqrt(iv["n"]) if iv["n"] > 1 else math.inf
        needed = seeds_needed(c.kind, c.margin, iv["mean"], sd) if iv["n"] > 1 else None
        out.append({"key": c.key, "claim": c.text, "a": c.a, "b": c.b, "kind": c.kind, "margin": c.margin,
                    **iv, "sd": sd, "seeds_needed": needed, "verdict": verdict})
    return out


def why_inconclusive(v) -> str:
    """Why the seeds could not decide an inconclusive claim, and how many would at the spread measured."""
    dist = distance_to_boundary(v["kind"], v["margin"], v["mean"])
    half = (v["high"] - v["low"]) / 2
    head = (f"  inconclusive because the interval's half-width {half:.4f} nats exceeds the distance {dist:.4f} of the "
            f"mean from the verdict's boundary (sd of the per-seed differences {v['sd']:.4f})")
    if v["seeds_needed"] is None:
        return (head + f"; at this spread even {MAX_SEEDS} seeds would not decide it: the difference is within the "
                "seeds' noise at this budget, and only a larger budget (less noise per seed) could resolve it")
    return head + f"; at this spread and mean, {v['seeds_needed']} seeds would decide it"


def describe(v) -> str:
    """One line: the verdict, the claim, the comparison and its interval."""
    margin = f" within {v['margin']:.3f}" if v["kind"] != "beats" else ""
    return (f"- **{v['verdict']}** ({v['key']}): {v['claim']}. [{v['a']}] {WORDS[v['kind']]} [{v['b']}]{margin}: "
            f"d = {v['mean']:+.4f} nats, {LEVEL:.0%} interval [{v['low']:+.4f}, {v['high']:+.4f}] "
            f"over {v['n']} seeds (per seed {', '.join(f'{d:+.4f}' for d in v['diffs'])})")
