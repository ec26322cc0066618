"""The reproduction's verdict rule on constructed results (each outcome, each kind of claim), its t
quantiles against published tables, and the structure of what a --fast run writes."""
import json
import math

import pytest

from tinyfbi.reproduce import main
from tinyfbi.reproduction.claims import CLAIMS, arms_for, evaluate_claims, judge, seeds_needed, why_inconclusive
from tinyfbi.reproduction.plan import ARM_NAMES, ARMS, ARMS_BY_NAME, FULL, SIZES, non_embedding_params, size_config
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


def constructed(losses, tails=None):
    """results.json's shape with given per-seed losses; every arm not named gets 3.0 on every seed, a flip-flop
    ratio of 0.002 and a gradient norm of 1.0 (tails: per arm {"flips_tail": [...], "grad_norm_tail": [...]})."""
    tails = tails or {}

    def run(name, s):
        t = tails.get(name, {})
        return {"val_loss": losses.get(name, [3.0] * 3)[s], "flips_tail": t.get("flips_tail", [0.002] * 3)[s],
                "grad_norm_tail": t.get("grad_norm_tail", [1.0] * 3)[s]}
    arms = {name: {"seeds": {str(s): run(name, s) for s in range(3)}} for name in ARM_NAMES}
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
    # e: the gap (fbi - fp) at the largest size against the gap at the smallest, seed by seed
    gaps = constructed({"nano-fp-ad": [2.9] * 3, "mid-fbi-ad": [2.75, 2.76, 2.74], "mid-fp-ad": [2.7] * 3})
    v = verdict(gaps, "e")
    assert v["diffs"] == pytest.approx([0.05 - 0.1, 0.06 - 0.1, 0.04 - 0.1]) and v["verdict"] == "supported"
    # c2: the trained start's lead (scratch - init) at 4x the budget against at the budget
    lead = constructed({"fbi-init-ad": [2.8] * 3, "fbi-ad-long": [2.62, 2.61, 2.63], "fbi-init-ad-long": [2.6] * 3})
    assert verdict(lead, "c2")["diffs"] == pytest.approx([0.02 - 0.2, 0.01 - 0.2, 0.03 - 0.2])
    assert verdict(lead, "c2")["verdict"] == "supported"
    # c1: log ratios of the tails, within a factor of 2 (0.693)
    close = {"fbi-ad-long": {"flips_tail": [0.0015, 0.0014, 0.0016]}, "fbi-init-ad-long": {"flips_tail": [0.002] * 3}}
    v = verdict(constructed({}, close), "c1-flips")
    assert v["diffs"] == pytest.approx([math.log(0.75), math.log(0.7), math.log(0.8)]) and v["verdict"] == "supported"
    far = {"fbi-init-ad-long": {"grad_norm_tail": [3.1, 3.3, 3.2]}}
    assert verdict(constructed({}, far), "c1-grad")["verdict"] == "contradicted"        # 3x apart
    assert verdict(constructed({"teacher": 3.5}), "teacher")["verdict"] == "contradicted"
    assert len(evaluate_claims(constructed({}), (0, 1, 2))) == len(CLAIMS)


def test_each_claim_trains_only_the_arms_it_compares():
    assert arms_for(["a1", "b1", "d"]) == ("fp-ad", "fbi-ad", "fbi-ce", "noscale-ad")
    assert arms_for(["c"]) == ("fp", "fbi-ad", "fbi-init-ad")             # the init arm starts from `fp`
    assert arms_for(["teacher"]) == ("fp",)
    assert arms_for([c.key for c in CLAIMS]) == ARM_NAMES                # every arm answers some claim
    with pytest.raises(ValueError, match="unknown claim"):
        arms_for(["z"])


def test_the_sizes_of_e_span_10x_in_non_embedding_parameters_at_micros_tokens_per_parameter():
    def by_hand(c, v=1024):        # LLaMA block: q, k, v, o (C x C each), gate/up/down (C x I), 2 RMSNorms; final norm
        return c.num_hidden_layers * (4 * c.hidden_size ** 2 + 3 * c.hidden_size * c.intermediate_size
                                      + 2 * c.hidden_size) + c.hidden_size
    fp = {s: non_embedding_params(s, 1024, binarized=False) for s in SIZES}
    assert fp == {s: by_hand(size_config(s, 1024, False)) for s in SIZES}
    assert fp["mid"] / fp["nano"] >= 10 and fp["nano"] < fp["micro"] < fp["mid"]
    tokens_per_step = FULL.batch_size * FULL.seq_len
    micro = FULL.steps * tokens_per_step / size_config("micro", 1024).num_params()
    assert micro >= 2.5
    for arm in ("nano-fbi-ad", "mid-fbi-ad", "nano-fp-ad", "mid-fp-ad"):
        params = size_config(ARMS_BY_NAME[arm].size, 1024).num_params()
        # the same tokens per parameter as micro, to within one step's rounding
        assert abs(FULL.arm_steps(ARMS_BY_NAME[arm]) * tokens_per_step / params - micro) <= tokens_per_step / params
    assert FULL.arm_steps(ARMS_BY_NAME["fbi-ad-long"]) >= 4 * FULL.steps


def test_every_distilled_arm_learns_the_full_softmax():
    for arm in ARMS:
        assert "teacher_cache" not in arm.fields, arm.name              # the plan sets teacher_cache=0 for all


def test_seeds_needed_is_the_first_n_whose_half_width_is_below_the_distance_to_the_boundary():
    # beats: distance |mean| = 0.05; sd 0.03: n=4 gives 3.182 * 0.03 / 2 = 0.0477 < 0.05, n=3 gives 0.0745
    assert seeds_needed("beats", 0, -0.05, 0.03) == 4
    # no_worse within 0.01: mean -0.02 is 0.03 from the margin; sd 0.01: n=3 gives 4.303 * 0.01 / 1.732 = 0.0248
    assert seeds_needed("no_worse", 0.01, -0.02, 0.01) == 3
    # agree within 0.1: mean 0.09 is 0.01 from +0.1; sd 0.02 needs 2.0 * 0.02 / sqrt(n) < 0.01: n near 18
    n = seeds_needed("agree", 0.1, 0.09, 0.02)
    assert 17 <= n <= 19
    assert seeds_needed("beats", 0, 0.0, 0.05) is None                     # no effect: no number of seeds
    v = verdict(constructed({"fbi-ad": [2.8, 3.2, 3.05]}), "a1")
    assert v["verdict"] == "inconclusive" and "seeds" in why_inconclusive(v)


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
        # b3's spread asks for more seeds (the fast plan: 4), the other claims have 3
        assert list(arm["seeds"]) == (["0", "1", "2", "3"] if name in ("fbi-ad", "ternary-ad") else ["0", "1", "2"]), name
        steps = 12 if name.endswith("-long") else 3 if ARMS_BY_NAME[name].size == "micro" else None
        assert len({r["tokens_seen"] for r in arm["seeds"].values()}) == 1   # the same budget on every seed
        if steps:
            assert {r["tokens_seen"] for r in arm["seeds"].values()} == {steps * 8 * 64}, name
        assert arm["distillation"] == ("the teacher's full softmax (T = 1)" + (", mixed 0.5/0.5 with the labels"
                                       if name == "fbi-mix" else "") if name not in ("fp", "fbi-ce")
                                       else "next-token labels"), name
    # the same seed gives the same start: fbi-ad and fbi-mix differ in loss only, so their runs differ
    # but each seed's run is its own (four different final losses)
    assert len({r["val_loss"] for r in results["arms"]["fbi-ad"]["seeds"].values()}) == 4
    # every claim has a verdict, and it is the one the rule gives for the per-seed values in the file
    assert [v["key"] for v in results["claims"]] == [c.key for c in CLAIMS]
    for v in results["claims"]:
        assert v["verdict"] in ("supported", "contradicted", "inconclusive")
        claim = next(c for c in CLAIMS if c.key == v["key"])
        n = 4 if claim.key == "b3" else 3

        def values(side):
            if side == "teacher":
                return [results["teacher"]["val_loss"]] * n
            if " - " in side:
                p, m = side.split(" - ")
                return [x - y for x, y in zip(values(p), values(m))]
            runs = [results["arms"][side]["seeds"][str(s)] for s in range(n)]
            if claim.metric == "val_loss":
                return [r["val_loss"] for r in runs]
            return [math.log(r[claim.metric.removeprefix("log_") + "_tail"]) for r in runs]
        d = [x - y for x, y in zip(values(claim.a), values(claim.b))]
        mean = sum(d) / n
        half = {3: 4.303, 4: 3.182}[n] * math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) / math.sqrt(n)
        assert v["low"] == pytest.approx(mean - half, abs=1e-3 * max(half, 1e-9)) or half == 0
        assert v["verdict"] == judge(claim.kind, claim.margin, mean - half, mean + half)
    report = (out / "results.md").read_text()
    assert results["rule"] in report and "+-" in report     # the rule and the spread are shown
    assert report.count("- **") == len(CLAIMS)
    for plot in ("ppl.png", "flips.png", "trend.png"):
        assert (out / plot).stat().st_size > 1000
    flips = [json.loads(line) for line in (out / "fbi-init-ad-s0" / "metrics.jsonl").read_text().splitlines()]
    assert flips and all(0 <= r["flips"]["all"] <= 1 for r in flips)
    # a rerun trains nothing: every run is reused and the verdicts are the same
    again = main(["--fast", "--steps", 3, "--teacher-steps", 3, "--data", corpus, "--tokenizer", "byte",
                  "--out", out, "--data-dir", tmp_path / "data"])
    assert [v["verdict"] for v in again["claims"]] == [v["verdict"] for v in results["claims"]]
    # one arm and seed rerun alone, into a fresh folder, gives the published value, which was trained in
    # lockstep with its seed's other arms (the teacher's forward on the fly included: NumPy float32 on one
    # machine is deterministic, and lockstep changes only the order of different runs' steps)
    rerun = main(["--fast", "--steps", 3, "--teacher-steps", 3, "--data", corpus, "--tokenizer", "byte",
                  "--out", out, "--data-dir", tmp_path / "data", "--only", "fbi-ad", "--seed", 1])
    assert "reruns" in rerun["run"] and rerun["published"] == results["arms"]["fbi-ad"]["seeds"]["1"]["val_loss"]
    assert rerun["val_loss"] == rerun["published"]        # bit for bit: the published run trained in lockstep
    # the pilot: a1's arms at two budgets; the plan's own budget (3 steps) reuses the runs above
    pilot = main(["--fast", "--steps", 3, "--teacher-steps", 3, "--data", corpus, "--tokenizer", "byte",
                  "--out", out, "--data-dir", tmp_path / "data", "--pilot", "--claims", "a1", "--pilot-steps", "2,3"])
    assert [b["steps"] for b in pilot["budgets"]] == [2, 3] and (out / "pilot-2" / "fbi-ce-s2").is_dir()
    assert set(pilot["budgets"][1]["arms"]) == {"fbi-ad", "fbi-ce"}
    assert pilot["budgets"][1]["arms"]["fbi-ad"]["val_loss"] == [results["arms"]["fbi-ad"]["seeds"][str(s)]["val_loss"]
                                                                   for s in range(3)]
    a1 = pilot["budgets"][1]["claims"][0]
    assert a1["key"] == "a1" and a1["sd"] >= 0 and a1["mean"] == pytest.approx(verdict(results, "a1")["mean"])
    assert "| a1 | 2 |" in (out / "pilot-a1.md").read_text()


def test_a_run_another_invocation_holds_is_left_to_it(tmp_path):
    from tinyfbi.reproduce import busy, run_once
    from tinyfbi.training.run_lock import RunLock
    held = RunLock(tmp_path / "fbi-ad-s0").acquire()           # as a second invocation training it would
    try:
        assert busy(tmp_path / "fbi-ad-s0") and not busy(tmp_path / "fbi-ad-s1")
        assert run_once({"name": "fbi-ad-s0", "size": "micro", "steps": 3, "out": str(tmp_path)}, wait=False) is None
    finally:
        held.release()
    assert not busy(tmp_path / "fbi-ad-s0")


def test_the_estimate_counts_one_teacher_forward_per_batch_in_lockstep_and_one_per_arm_alone():
    from tinyfbi.reproduce import arm_seeds
    from tinyfbi.reproduction.budget import estimate
    keys = ("a1", "c")                        # fp (labels), fbi-ad, fbi-ce (labels), fbi-init-ad: 300 steps, 6 seeds
    names = arms_for(keys)
    times = {"teacher_step_s": 0.0, "teacher_forward_s": 1.0, "arm_step_s": {n: 0.0 for n in names},
             "eval_s": {"micro": 0.0}}
    e = estimate(FULL, arm_seeds(FULL, names, keys), times)
    assert e["students_alone_s"] == 6 * 2 * 300          # fbi-ad and fbi-init-ad each pay the teacher's forward
    assert e["students_lockstep_s"] == 6 * 300           # one forward per batch serves both
    times = {**times, "teacher_forward_s": 0.0, "arm_step_s": {n: 1.0 for n in names}, "teacher_step_s": 2.0}
    e = estimate(FULL, arm_seeds(FULL, names, keys), times)
    assert e["students_alone_s"] == e["students_lockstep_s"] == 6 * 4 * 300 and e["teacher_s"] == 2.0 * 1200
