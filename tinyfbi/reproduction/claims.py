"""The paper's claims as comparisons of arms, each judged by one rule from its seeds.

A side of a comparison is an arm ("fbi-ad"), a difference of two arms ("fbi-ad - fp": the cost of
binarization at that size, per seed), or "teacher" (one model, the same for every seed). Values are
validation losses in nats per token (perplexity = e^loss; a difference of 0.01 nats is about 1%
perplexity), or for c1 the natural log of a training statistic (the flip-flop ratio or the gradient
norm, each averaged over a run's last 20% of steps), so that a difference is a log ratio.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from .plan import ARMS_BY_NAME, INIT_FROM_FP
from .stats import paired_interval, t_quantile

ONE_PERCENT = math.log(1.01)       # "no worse": within 1% perplexity
TEN_PERCENT = math.log(1.10)       # "about as good": within 10% perplexity
FACTOR_TWO = math.log(2.0)         # "on similar scales" (c1): within a factor of 2, stricter than an order of magnitude
METRICS = {"val_loss": "validation loss (nats/token)",
           "log_flips": "log of the flip-flop ratio (fraction of signs that change per step, last 20% of steps)",
           "log_grad_norm": "log of the gradient norm before clipping (last 20% of steps)"}
LEVEL = 0.95

RULE = (f"Each claim compares the validation loss (nats/token; for c1 the log of a training statistic) of two "
        f"sides trained with the same seeds "
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
    margin: float = 0.0            # nats (or a log ratio), for no_worse and agree
    metric: str = "val_loss"       # a key of METRICS


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
          "the same shape (section 5), at the students' budget", "fbi-ad", "fbi-init-ad", "agree", TEN_PERCENT),
    Claim("c1-flips", "from scratch and from the trained full-precision start, the flip-flop ratios are on "
          "similar scales (section 5, Figure 6), at the 4x budget", "fbi-ad-long", "fbi-init-ad-long", "agree",
          FACTOR_TWO, "log_flips"),
    Claim("c1-grad", "from scratch and from the trained full-precision start, the gradient norms are on "
          "similar scales, at the 4x budget", "fbi-ad-long", "fbi-init-ad-long", "agree", FACTOR_TWO,
          "log_grad_norm"),
    Claim("c2", "the trained start's lead shrinks as the FBI training lengthens (budget -> 4x the budget)",
          "fbi-ad-long - fbi-init-ad-long", "fbi-ad - fbi-init-ad"),
    Claim("d", "binarization costs perplexity: full precision beats FBI at the same shape, budget and recipe "
          "(both distilled)", "fp-ad", "fbi-ad"),
    Claim("e-teacher", "the teacher is stronger than the largest student of (e), distilled, at its budget",
          "teacher", "mid-fp-ad"),
    Claim("e", "the gap between FBI and full precision (both distilled) narrows as the model grows (smallest "
          "size -> largest, 13x the non-embedding parameters, the same tokens per parameter)",
          "mid-fbi-ad - mid-fp-ad", "nano-fbi-ad - nano-fp-ad"),
)

CLAIM_KEYS = tuple(c.key for c in CLAIMS)
MAX_SEEDS = 100                    # "seeds needed" beyond this is reported as more than 100


def arms_for(keys) -> tuple[str, ...]:
    """The arms that the claims `keys` compare (with `fp` where an arm starts from it), in plan order."""
    unknown = [k for k in keys if k not in CLAIM_KEYS]
    if unknown:
        raise ValueError(f"unknown claim {unknown[0]!r}: choose among {', '.join(CLAIM_KEYS)}")
    names = {n for c in CLAIMS if c.key in keys for n in arms_of(c)}
    names |= {"fp" for n in names if ARMS_BY_NAME[n].fields.get("init") == INIT_FROM_FP}
    if any(c.key in keys and c.a == "teacher" and c.b == "fp" for c in CLAIMS):
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


def side(results, name, seeds, metric="val_loss") -> list[float]:
    """Per-seed values (METRICS[metric]) of one side of a comparison, in the order of `seeds`."""
    if name == "teacher":
        return [results["teacher"]["val_loss"]] * len(seeds)
    if " - " in name:
        plus, minus = name.split(" - ")
        return [p - m for p, m in zip(side(results, plus, seeds, metric), side(results, minus, seeds, metric))]
    runs = results["arms"][name]["seeds"]
    if metric == "val_loss":
        return [runs[str(s)]["val_loss"] for s in seeds]
    return [math.log(runs[str(s)][metric.removeprefix("log_") + "_tail"]) for s in seeds]


def arms_of(claim) -> list[str]:
    return [n for part in (claim.a, claim.b) for n in part.split(" - ") if n != "teacher"]


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
    spread and the seeds that spread would need to decide it. seeds: a tuple for every claim, or a function
    of the claim's key (a claim whose spread asks for more seeds has them)."""
    out = []
    for c in CLAIMS:
        if c.key not in keys:
            continue
        if not all(n in results["arms"] for n in arms_of(c)) or (c.a == "teacher" and "teacher" not in results):
            continue
        its = seeds(c.key) if callable(seeds) else seeds
        iv = paired_interval(side(results, c.a, its, c.metric), side(results, c.b, its, c.metric), LEVEL)
        verdict = judge(c.kind, c.margin, iv["low"], iv["high"])
        sd = iv["se"] * math.sqrt(iv["n"]) if iv["n"] > 1 else math.inf
        needed = seeds_needed(c.kind, c.margin, iv["mean"], sd) if iv["n"] > 1 else None
        out.append({"key": c.key, "claim": c.text, "a": c.a, "b": c.b, "kind": c.kind, "margin": c.margin,
                    "metric": c.metric, **iv, "sd": sd, "seeds_needed": needed, "verdict": verdict})
    return out


def why_inconclusive(v) -> str:
    """Why the seeds could not decide an inconclusive claim, and how many would at the spread measured."""
    dist = distance_to_boundary(v["kind"], v["margin"], v["mean"])
    half = (v["high"] - v["low"]) / 2
    head = (f"  inconclusive because the interval's half-width {half:.4f} exceeds the distance {dist:.4f} of the "
            f"mean from the verdict's boundary (sd of the per-seed differences {v['sd']:.4f})")
    if v["seeds_needed"] is None:
        return (head + f"; at this spread even {MAX_SEEDS} seeds would not decide it: the difference is within the "
                "seeds' noise at this budget, and only a larger budget (less noise per seed) could resolve it")
    return head + f"; at this spread and mean, {v['seeds_needed']} seeds would decide it"


def describe(v) -> str:
    """One line: the verdict, the claim, the comparison and its interval."""
    margin = f" within {v['margin']:.3f}" if v["kind"] != "beats" else ""
    metric = v.get("metric", "val_loss")
    unit = "nats" if metric == "val_loss" else f"({METRICS[metric]}, a log ratio)"
    return (f"- **{v['verdict']}** ({v['key']}): {v['claim']}. [{v['a']}] {WORDS[v['kind']]} [{v['b']}]{margin}: "
            f"d = {v['mean']:+.4f} {unit}, {LEVEL:.0%} interval [{v['low']:+.4f}, {v['high']:+.4f}] "
            f"over {v['n']} seeds (per seed {', '.join(f'{d:+.4f}' for d in v['diffs'])})")
