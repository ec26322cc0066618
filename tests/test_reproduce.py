"""The reproduction's verdict rule on constructed results (each outcome, each kind of claim), its t
quantiles against published tables, and the structure of what a --fast run writes."""
import json
import math

import pytest

from tinyfbi.reproduce import main
from tinyfbi.reproduction.claims import CLAIMS, evaluate_claims, judge
from tinyfbi.reproduction.plan import ARM_NAMES
from tinyfbi.reproduction.stats import paired_interval, t_quantile

# two-sided 95% critical values of Student's t (any statistics table, e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 30: 2.042}


@pytest.mark.parametrize("df", sorted(T_975))
def test_t_quantile_matches_the_tables(df):
    assert t_quantile(0.975, df) == pytest.approx(T_975[df], abs=1e-3)   # the tables print 3 decimals


def test_t_quantile_of_one_degree_is_the_cauchy_quantile():
    for p in (0.6, 0.9, 0.99):   # t with 1 degree of freedom is Cauchy: quantile tan(pi (p - 1/2))
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-5)


def test_paired_interval_is_mean_plus_minus_t_times_standard_error():
    a, b = [3.0, 3.2, 3.1], [3.1, 3.25, 3.3]
    d = [-0.1, -0.05, -0.2]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    iv = paired_interval(a, b)
    assert iv["mean"] == pytest.approx(mean) and iv["se"] == pytest.approx(sd / math.sqrt(3))
    assert iv["high"] == pytest.approx(mean + 4.303 * sd / math.sqrt(3), abs=1e-3)
    assert paired_interval([1.0], [2.0])["high"] == math.inf     # one seed: no spread, no verdict


@pytest.mark.parametrize("kind, margin, low, high, verdict", [
    ("beats", 0, -0.3, -0.1, "supported"), ("beats", 0, 0.1, 0.3, "contradicted"), ("beats", 0, -0.1, 0.2, "inconclusive"),
    ("no_worse", 0.01, -0.2, 0.005, "supported"), ("no_worse", 0.01, 0.02, 0.05, "contradicted"),
    ("no_worse", 0.01, 0.0, 0.02, "inconclusive"),
    ("agree", 0.1, -0.05, 0.05, "supported"), ("agree", 0.1, 0.15, 0.3, "contradicted"),
    ("agree", 0.1, -0.3, -0.2, "contradicted"), ("agree", 0.1, 0.05, 0.15, "inconclusive"),
])
def test_judge(kind, margin, low, high, verdict):
    assert judge(kind, margin, low, high) == verdict


def constructed(losses):
    """results.json's shape with given per-seed losses; every arm not named gets 3.0 on every seed."""
    arms = {name: {"seeds": {str(s): {"val_loss": losses.get(name, [3.0] * 3)[s]} for s in range(3)}}
            for name in ARM_NAMES}
    return {"teacher": {"val_loss": losses.get("teacher", 2.0)}, "arms": arms}


def verdict(results, key):
    return {v["key"]: v for v in evaluate_claims(results, (0, 1, 2))}[key]


def test_each_claim_gets_each_outcome_from_constructed_seeds():
    clear_win, clear_loss, noise = [2.9, 2.95, 2.92], [3.1, 3.05, 3.08], [2.8, 3.2, 3.05]
    assert verdict(constructed({"fbi-ad": clear_win}), "a1")["verdict"] == "supported"
    assert verdict(constructed({"fbi-ad": clear_loss}), "a1")["verdict"] == "contradicted"
    assert verdict(constructed({"fbi-ad": noise}), "a1")["verdict"] == "inconclusive"
    # c: scratch and init within 10% perplexity (0.0953 nats)
    assert verdict(constructed({"fbi-init-ad": [3.01, 2.99, 3.02]}), "c")["verdict"] == "supported"
    assert verdict(constructed({"fbi-init-ad": [2.5, 2.52, 2.49]}), "c")["verdict"] == "contradicted"
    # e: the gap (fbi - fp) at the students' size against the gap at the smaller size, seed by seed
    gaps = constructed({"fp-ad": [2.9] * 3, "small-fbi-ad": [3.5, 3.6, 3.55], "small-fp-ad": [3.2] * 3})
    v = verdict(gaps, "e")
    assert v["diffs"] == pytest.approx([0.1 - 0.3, 0.1 - 0.4, 0.1 - 0.35]) and v["verdict"] == "supported"
    assert verdict(constructed({"teacher": 3.5}), "teacher")["verdict"] == "contradicted"
    assert len(evaluate_claims(constructed({}), (0, 1, 2))) == len(CLAIMS)


def test_fast_reproduction_writes_arms_seeds_spread_and_a_verdict_per_claim(tmp_path):
    import pydoc_data.topics
    corpus = tmp_path / "topics.txt"
    corpus.write_text("\n\n".join(pydoc_data.topics.topics.values())[:120_000])
    out = tmp_path / "rep"
    main(["--fast", "--steps", 3, "--teacher-steps", 3, "--data", corpus, "--tokenizer", "byte", "--out", out,
          "--data-dir", tmp_path / "data"])
    results = json.loads((out / "results.json").read_text())
    assert list(results["arms"]) == list(ARM_NAMES)
    for name, arm in results["arms"].items():
        assert list(arm["seeds"]) == ["0", "1", "2"], name
        assert {r["tokens_seen"] for r in arm["seeds"].values()} == {3 * 8 * 64}   # same budget in every arm
    # the same seed gives the same start: fbi-ad and fbi-mix differ in loss only, so their runs differ
    # but each seed's run is its own (three different final losses)
    assert len({r["val_loss"] for r in results["arms"]["fbi-ad"]["seeds"].values()}) == 3
    # every claim has a verdict, and it is the one the rule gives for the per-seed losses in the file
    assert [v["key"] for v in results["claims"]] == [c.key for c in CLAIMS]
    for v in results["claims"]:
        assert v["verdict"] in ("supported", "contradicted", "inconclusive")
        claim = next(c for c in CLAIMS if c.key == v["key"])

        def losses(side):
            if side == "teacher":
                return [results["teacher"]["val_loss"]] * 3
            if " - " in side:
                p, m = side.split(" - ")
                return [x - y for x, y in zip(losses(p), losses(m))]
            return [results["arms"][side]["seeds"][str(s)]["val_loss"] for s in range(3)]
        d = [x - y for x, y in zip(losses(claim.a), losses(claim.b))]
        mean = sum(d) / 3
        half = 4.303 * math.sqrt(sum((x - mean) ** 2 for x in d) / 2) / math.sqrt(3)
        assert v["low"] == pytest.approx(mean - half, abs=1e-3 * max(half, 1e-9)) or half == 0
        assert v["verdict"] == judge(claim.kind, claim.margin, mean - half, mean + half)
    report = (out / "results.md").read_text()
    assert results["rule"] in report and "+-" in report     # the rule and the spread are shown
    assert report.count("- **") == len(CLAIMS)
    for plot in ("ppl.png", "flips.png"):
        assert (out / plot).stat().st_size > 1000
    flips = [json.loads(line) for line in (out / "fbi-init-ad-s0" / "metrics.jsonl").read_text().splitlines()]
    assert flips and all(0 <= r["flips"]["all"] <= 1 for r in flips)
    # a rerun trains nothing: every run is reused and the verdicts are the same
    again = main(["--fast", "--steps", 3, "--teacher-steps", 3, "--data", corpus, "--tokenizer", "byte",
                  "--out", out, "--data-dir", tmp_path / "data"])
    assert [v["verdict"] for v in again["claims"]] == [v["verdict"] for v in results["claims"]]
