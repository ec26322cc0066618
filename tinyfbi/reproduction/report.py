"""The reproduction's table and plots, from results.json's dict alone (a rerun can redraw them)."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..training.loop import read_metrics
from ..training.report import save_png
from .claims import LEVEL, RULE, describe, why_inconclusive


def seed_losses(arm) -> list[float]:
    return [r["val_loss"] for r in arm["seeds"].values()]


def spread(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def table(results) -> list[str]:
    """Markdown rows: per arm what it learns from, the mean perplexity, its spread over seeds and every seed's value."""
    rows = ["| arm | question | learns from | size | val ppl, mean +- sd | per seed | val loss, mean |",
            "|---|---|---|---|---|---|---|"]
    t = results["teacher"]
    rows.append(f"| teacher | full precision, larger, {t['steps']} steps, seed {t['seed']} | next-token labels | "
                f"{t['size']} ({t['params'] / 1e6:.2f}M) | {t['val_ppl']:.2f} | (one model) | {t['val_loss']:.4f} |")
    for name, arm in results["arms"].items():
        losses = seed_losses(arm)
        ppls = [math.exp(v) for v in losses]
        rows.append(f"| {name} | {arm['question']} | {arm['distillation']} | {arm['size']} ({arm['params'] / 1e6:.2f}M) | "
                    f"{statistics.mean(ppls):.2f} +- {spread(ppls):.2f} | "
                    f"{', '.join(f'{p:.2f}' for p in ppls)} | {statistics.mean(losses):.4f} |")
    return rows


def flip_tail(run_dir, fraction=0.2) -> float | None:
    """Mean flip-flop ratio over the last `fraction` of a run's steps (None if it logged none)."""
    flips = [r["flips"]["all"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "flips" in r]
    if not flips:
        return None
    tail = flips[-max(1, int(len(flips) * fraction)):]
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
    flips = {name: [flip_tail(r["run"]) for r in results["arms"][name]["seeds"].values()]
             for name in ("fbi-ad", "fbi-init-ad") if name in results["arms"]}
    flip_lines = [f"- {name}: " + ", ".join("n/a" if f is None else f"{100 * f:.3f}%" for f in v)
                  for name, v in flips.items()]
    params = ", ".join(f"{size} {n / 1e6:.2f}M ({results['student_tokens'] / n:.2f} tokens per parameter)"
                       for size, n in results["student_params"].items())
    verdicts = []
    for v in results["claims"]:
        verdicts.append(describe(v))
        if v["verdict"] == "inconclusive":
            verdicts.append(why_inconclusive(v))
    return "\n".join([
        f"# tinyfbi reproduction ({'fast' if results['fast'] else 'full'})", "",
        f"`{command}` on {results['cpu']}, {results['date']}; wall time {timing['total_s'] / 60:.1f} min "
        f"(teacher {timing['teacher_s'] / 60:.1f} min{teacher_note(timing)}, students {timing['students_s'] / 60:.1f} "
        f"min; this invocation {timing['this_invocation_s'] / 60:.1f} min: finished runs are reused). Every run's "
        f"steps at its 10th-percentile step time, about the same work on an idle machine: "
        f"{timing['idle_estimate_s'] / 60:.1f} min.", "",
        f"Students: {plan['steps']} steps x {plan['batch_size']} x {plan['seq_len']} tokens = "
        f"{results['student_tokens']:,} tokens per arm ({params}), lr {plan['lr']}, seeds "
        f"{', '.join(map(str, plan['seeds']))} in every arm; teacher: {plan['teacher']}, {plan['teacher_steps']} steps "
        f"(seed {plan['teacher_seed']}). Data {results['data']}, tokenizer {results['tokenizer']}; validation: the same "
        f"{plan['eval_batches']} x {plan['batch_size']} x {plan['seq_len']} tokens for every model. Every distilled "
        f"arm learns the teacher's full softmax (T = 1), the teacher run forward at every step.", "",
        *table(results), "",
        "Flip-flop ratio (signs that change per step), mean over the last 20% of steps, per seed:",
        *flip_lines, "",
        "## Verdicts", "", RULE, "",
        *verdicts, "",
        f"![perplexity per arm](ppl{tail}.png) ![flip-flop ratio](flips{tail}.png)", ""])


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
        arms_s = {n: a[key] * plan.steps * len(plan.seeds) for n, a in longest["arms"].items()}
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
                        f"{b['tokens_per_param'][a['size']]:.2f} | {a['distillation']} | "
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
    for name, color in (("fbi-ad", "tab:blue"), ("fbi-init-ad", "tab:orange")):
        for k, run in enumerate(results["arms"].get(name, {}).get("seeds", {}).values()):
            rows = [r for r in read_metrics(Path(run["run"]) / "metrics.jsonl") if "flips" in r]
            ax.plot([r["step"] for r in rows], [100 * max(r["flips"]["all"], 1e-6) for r in rows], color=color,
                    lw=0.8, alpha=0.7, label=("from scratch" if name == "fbi-ad" else "from the fp model")
                    if k == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("flip-flop ratio (%)")
    ax.set_title("signs that change per step, every seed")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    save_png(fig, Path(out) / f"flips{tail}.png", dpi=110)
