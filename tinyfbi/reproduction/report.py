"""The reproduction's table and plots, from results.json's dict alone (a rerun can redraw them)."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..training.loop import read_metrics
from ..training.report import save_png
from .claims import LEVEL, RULE, describe, why_inconclusive

FLIP_ARMS = ("fbi-ad", "fbi-init-ad", "fbi-ad-long", "fbi-init-ad-long")
TREND = {"fbi": ("nano-fbi-ad", "fbi-ad", "mid-fbi-ad"), "fp": ("nano-fp-ad", "fp-ad", "mid-fp-ad")}


def has_trend(results) -> bool:
    return all(n in results["arms"] for names in TREND.values() for n in names)


def seed_losses(arm) -> list[float]:
    return [r["val_loss"] for r in arm["seeds"].values()]


def spread(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def table(results) -> list[str]:
    """Markdown rows: per arm what it learns from, the mean perplexity, its spread over seeds and every seed's value."""
    rows = ["| arm | question | learns from | size | steps (tokens/param) | val ppl, mean +- sd | per seed | "
            "val loss, mean |", "|---|---|---|---|---|---|---|---|"]
    t = results["teacher"]
    rows.append(f"| teacher | full precision, larger, seed {t['seed']} | next-token labels | "
                f"{t['size']} ({t['params'] / 1e6:.2f}M) | {t['steps']} ({t['tokens_seen'] / t['params']:.2f}) | "
                f"{t['val_ppl']:.2f} | (one model) | {t['val_loss']:.4f} |")
    for name, arm in results["arms"].items():
        losses = seed_losses(arm)
        ppls = [math.exp(v) for v in losses]
        run = next(iter(arm["seeds"].values()))
        rows.append(f"| {name} | {arm['question']} | {arm['distillation']} | {arm['size']} ({arm['params'] / 1e6:.2f}M; "
                    f"{arm['non_embedding_params'] / 1e3:.0f}k non-embedding) | {run['steps']} "
                    f"({run['tokens_seen'] / arm['params']:.2f}) | {statistics.mean(ppls):.2f} +- {spread(ppls):.2f} | "
                    f"{', '.join(f'{p:.2f}' for p in ppls)} | {statistics.mean(losses):.4f} |")
    return rows


def tail_mean(metrics_path, key, fraction=0.2) -> float | None:
    """Mean of a logged statistic over the last `fraction` of a run's steps: "flips" (the flip-flop ratio of
    all binarized weights) or "grad_norm" (before clipping); None if the run logged none."""
    values = [r[key]["all"] if key == "flips" else r[key] for r in read_metrics(metrics_path) if key in r]
    if not values:
        return None
    tail = values[-max(1, int(len(values) * fraction)):]
    return sum(tail) / len(tail)


def teacher_note(timing) -> str:
    """The teacher's whole budget at its median step, when that differs from the measured wall time
    (a teacher resumed after a kill: the wall time counts only the last part)."""
    est = timing.get("teacher_at_median_step_s")
    if est is None or abs(est - timing["teacher_s"]) < 0.25 * timing["teacher_s"]:
        return ""
    return f" measured in this invocation; all its steps at its median step time: {est / 60:.1f} min"


def markdown(results, command, tail="") -> str:
    plan, timing = results["plan"], results["timing"]
    tracked = [name for name in FLIP_ARMS if name in results["arms"]]
    flip_lines = [f"- {name}: " + ", ".join("n/a" if r.get("flips_tail") is None else f"{100 * r['flips_tail']:.3f}%"
                                            for r in results["arms"][name]["seeds"].values()) for name in tracked]
    grad_lines = [f"- {name}: " + ", ".join("n/a" if r.get("grad_norm_tail") is None else f"{r['grad_norm_tail']:.3f}"
                                            for r in results["arms"][name]["seeds"].values()) for name in tracked]
    verdicts = []
    for v in results["claims"]:
        verdicts.append(describe(v))
        if v["verdict"] == "inconclusive":
            verdicts.append(why_inconclusive(v))
    return "\n".join([
        f"# tinyfbi reproduction ({'fast' if results['fast'] else 'full'})", "",
        f"`{command}` on {results['cpu']}, {results['date']}; the runs' wall times summed {timing['total_s'] / 60:.1f} "
        f"min (teacher {timing['teacher_s'] / 60:.1f} min{teacher_note(timing)}, students {timing['students_s'] / 60:.1f} "
        f"min; invocations side by side overlap them); this invocation {timing['this_invocation_s'] / 60:.1f} min from "
        f"its start (finished runs are reused). Every run's "
        f"steps at its 10th-percentile step time, about the same work on an idle machine: "
        f"{timing['idle_estimate_s'] / 60:.1f} min.", "",
        f"Students: {plan['steps']} steps x {plan['batch_size']} x {plan['seq_len']} tokens = "
        f"{results['student_tokens']:,} tokens at the students' size, the other sizes at the same tokens per "
        f"parameter, the `-long` arms {plan['long_factor']}x; lr {plan['lr']}; seeds "
        f"{', '.join(map(str, plan['seeds']))}, more where a claim's spread asks ("
        f"{', '.join(f'{k}: {n}' for k, n in plan['claim_seeds'])}); teacher: {plan['teacher']}, {plan['teacher_steps']} steps "
        f"(seed {plan['teacher_seed']}). Data {results['data']}, tokenizer {results['tokenizer']}; validation: the same "
        f"{plan['eval_batches']} x {plan['batch_size']} x {plan['seq_len']} tokens for every model. Every distilled "
        f"arm learns the teacher's full softmax (T = 1), the teacher run forward at every step.", "",
        *table(results), "",
        "Flip-flop ratio (signs that change per step), mean over the last 20% of steps, per seed:",
        *flip_lines, "",
        "Gradient norm before clipping, mean over the last 20% of steps, per seed:",
        *grad_lines, "",
        "## Verdicts", "", RULE, "",
        *verdicts, "",
        f"![perplexity per arm](ppl{tail}.png) ![flip-flop ratio](flips{tail}.png)"
        + (f" ![size trend](trend{tail}.png)" if has_trend(results) else ""), ""])


def step_seconds(run_dirs) -> dict:
    """Seconds per optimizer step over the runs' logged steps (after each run's first two): the median, as
    the machine was loaded, and the 10th percentile, the fastest steps, an estimate for an idle machine."""
    times = []
    for run in run_dirs:
        summary = json.loads((Path(run) / "summary.json").read_text())
        tokens = summary["tokens_seen"] / summary["steps"]
        run_times = [tokens / r["tok_s"] for r in read_metrics(Path(run) / "metrics.jsonl") if r.get("tok_s")]
        times += run_times[2:] if len(run_times) > 4 else run_times   # the first steps pay for warm-up
    times.sort()
    return {"step_s": statistics.median(times), "step_s_p10": times[len(times) // 10]}


def design_estimate(pilot, plan) -> dict:
    """The plan's time from the pilot's step times: the teacher's steps, and every measured arm's steps x the
    plan's seeds, at the median step (the machine as loaded) and at the 10th percentile (about idle);
    evaluation, sampling and checkpoints not counted."""
    longest = max(pilot["budgets"], key=lambda b: b["steps"])
    t = pilot["teacher"]
    out = {"steps": plan.steps, "seeds": len(plan.seeds)}
    for key in ("step_s", "step_s_p10"):
        arms_s = {n: a[key] * a["steps"] / longest["steps"] * plan.steps * len(plan.seeds)
                  for n, a in longest["arms"].items()}
        out[key] = {"teacher_s": t[key] * t["steps"], "arms_s": arms_s,
                    "total_s": t[key] * t["steps"] + sum(arms_s.values())}
    return out


def pilot_markdown(pilot) -> str:
    """The pilot's tables: every arm at every budget, then every claim's effect, spread and seeds needed."""
    n = len(pilot["seeds"])
    t = pilot["teacher"]
    rows = ["# tinyfbi reproduction pilot", "",
            f"`{pilot['command']}` on {pilot['cpu']}, {pilot['date']}; wall time {pilot['wall_s'] / 60:.1f} min "
            f"(this invocation; finished runs are reused). Seeds {', '.join(map(str, pilot['seeds']))}; teacher "
            f"{t['size']} ({t['params'] / 1e6:.2f}M), {t['steps']} steps, validation perplexity {t['val_ppl']:.2f}.", "",
            "| steps | arm | size | tokens per parameter | learns from | val loss per seed | mean ppl | s/step, median (p10) |",
            "|---|---|---|---|---|---|---|---|"]
    for b in pilot["budgets"]:
        for name, a in b["arms"].items():
            rows.append(f"| {b['steps']} | {name} | {a['size']} ({a['params'] / 1e6:.2f}M) | "
                        f"{b['tokens_per_param'][name]:.2f} | {a['distillation']} | "
                        f"{', '.join(f'{v:.4f}' for v in a['val_loss'])} | "
                        f"{statistics.mean(math.exp(v) for v in a['val_loss']):.2f} | {a['step_s']:.3f} ({a['step_s_p10']:.3f}) |")
    rows += ["", f"Per claim: the effect d = A - B (mean over {n} seeds, nats), the standard deviation of the per-seed "
             f"differences, the {LEVEL:.0%} interval's half-width with {n} seeds, and the seeds whose half-width "
             "would fall below the distance of the effect from the verdict's boundary (0, or the margin) at this "
             "spread.", "",
             "| claim | steps | effect d (nats) | sd of d | half-width, " + f"{n} seeds | verdict, {n} seeds | seeds needed |",
             "|---|---|---|---|---|---|---|"]
    keys = [v["key"] for v in pilot["budgets"][0]["claims"]]
    for key in keys:
        for b in pilot["budgets"]:
            v = next(c for c in b["claims"] if c["key"] == key)
            margin = f" (margin {v['margin']:.4f})" if v["kind"] != "beats" else ""
            need = ">100" if v["seeds_needed"] is None else str(v["seeds_needed"])
            rows.append(f"| {key}{margin} | {b['steps']} | {v['mean']:+.4f} | {v['sd']:.4f} | "
                        f"{(v['high'] - v['low']) / 2:.4f} | {v['verdict']} | {need} |")
    e = pilot["estimate"]
    rows.append("")
    for key, how in (("step_s", "median step, the machine as loaded during the pilot"),
                     ("step_s_p10", "10th-percentile step, about an idle machine")):
        rows.append(f"The plan at {e['steps']} steps x {e['seeds']} seeds at the {how}: teacher "
                    f"{e[key]['teacher_s'] / 60:.1f} min, " + ", ".join(f"{n} {v / 60:.1f}" for n, v in e[key]["arms_s"].items())
                    + f" min; total {e[key]['total_s'] / 60:.1f} min for the teacher and the arms measured.")
    return "\n".join(rows + [""])


def plots(out, results, tail=""):
    """ppl{tail}.png and flips{tail}.png, each a Figure of its own (not pyplot's: a notebook's backend is
    left alone), written atomically (matplotlib imported on use)."""
    from matplotlib.figure import Figure

    names = list(results["arms"])
    fig = Figure(figsize=(9, 4.2))
    ax = fig.subplots()
    for i, name in enumerate(names):
        ppls = [math.exp(v) for v in seed_losses(results["arms"][name])]
        color = "tab:gray" if "fp" in name.split("-") else "tab:blue"
        ax.bar(i, statistics.mean(ppls), color=color, alpha=0.6)
        ax.plot([i] * len(ppls), ppls, "k.", ms=5)
    ax.axhline(results["teacher"]["val_ppl"], color="tab:green", ls="--", label="teacher")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("validation perplexity")
    ax.set_title("mean over seeds (bars) and each seed (dots); same tokens per arm")
    ax.legend()
    fig.tight_layout()
    save_png(fig, Path(out) / f"ppl{tail}.png", dpi=110)

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for name, color in (("fbi-ad", "tab:blue"), ("fbi-init-ad", "tab:orange"), ("fbi-ad-long", "tab:cyan"),
                        ("fbi-init-ad-long", "tab:red")):
        for k, run in enumerate(results["arms"].get(name, {}).get("seeds", {}).values()):
            rows = [r for r in read_metrics(Path(run["run"]) / "metrics.jsonl") if "flips" in r]
            start = "from scratch" if "init" not in name else "from the fp model"
            ax.plot([r["step"] for r in rows], [100 * max(r["flips"]["all"], 1e-6) for r in rows], color=color,
                    lw=0.8, alpha=0.7, label=f"{start}, {run['steps']} steps" if k == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("flip-flop ratio (%)")
    ax.set_title("signs that change per step, every seed")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    save_png(fig, Path(out) / f"flips{tail}.png", dpi=110)
    if has_trend(results):
        trend_plot(Path(out) / f"trend{tail}.png", results)


def trend_plot(path, results, title="validation loss against size, the same tokens per parameter"):
    """Validation loss against non-embedding parameters (log x), FBI and full precision, both distilled: every
    seed (dots) and the mean over seeds (line)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for kind, color, label in (("fbi", "tab:blue", "FBI (1-bit), distilled"),
                               ("fp", "tab:gray", "full precision, distilled")):
        xs, means = [], []
        for name in TREND[kind]:
            arm = results["arms"][name]
            losses = seed_losses(arm)
            ax.plot([arm["non_embedding_params"]] * len(losses), losses, ".", color=color, ms=4, alpha=0.6)
            xs.append(arm["non_embedding_params"])
            means.append(statistics.mean(losses))
        ax.plot(xs, means, "-o", color=color, label=label)
    if "teacher" in results:
        ax.axhline(results["teacher"]["val_loss"], color="tab:green", ls="--", label="teacher")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path, dpi=110)
