"""The reproduction's table and plots, from results.json's dict alone (a rerun can redraw them)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..training.loop import read_metrics
from .claims import RULE, describe


def seed_losses(arm) -> list[float]:
    return [r["val_loss"] for r in arm["seeds"].values()]


def spread(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def table(results) -> list[str]:
    """Markdown rows: per arm the mean perplexity, its spread over seeds and every seed's value."""
    rows = ["| arm | question | size | val ppl, mean +- sd | per seed | val loss, mean |", "|---|---|---|---|---|---|"]
    t = results["teacher"]
    rows.append(f"| teacher | full precision, larger, {t['steps']} steps, seed {t['seed']} | {t['size']} "
                f"({t['params'] / 1e6:.1f}M) | {t['val_ppl']:.1f} | (one model) | {t['val_loss']:.4f} |")
    for name, arm in results["arms"].items():
        losses = seed_losses(arm)
        ppls = [math.exp(v) for v in losses]
        rows.append(f"| {name} | {arm['question']} | {arm['size']} ({arm['params'] / 1e6:.2f}M) | "
                    f"{statistics.mean(ppls):.1f} +- {spread(ppls):.1f} | "
                    f"{', '.join(f'{p:.1f}' for p in ppls)} | {statistics.mean(losses):.4f} |")
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


def markdown(results, command) -> str:
    plan, timing = results["plan"], results["timing"]
    flips = {name: [flip_tail(r["run"]) for r in results["arms"][name]["seeds"].values()]
             for name in ("fbi-ad", "fbi-init-ad") if name in results["arms"]}
    flip_lines = [f"- {name}: " + ", ".join("n/a" if f is None else f"{100 * f:.3f}%" for f in v)
                  for name, v in flips.items()]
    return "\n".join([
        f"# tinyfbi reproduction ({'fast' if results['fast'] else 'full'})", "",
        f"`{command}` on {results['cpu']}, {results['date']}; wall time {timing['total_s'] / 60:.1f} min "
        f"(teacher {timing['teacher_s'] / 60:.1f} min{teacher_note(timing)}, its top-K cache "
        f"{timing['cache_s'] / 60:.1f} min, students {timing['students_s'] / 60:.1f} min).", "",
        f"Students: {plan['steps']} steps x {plan['batch_size']} x {plan['seq_len']} tokens = "
        f"{results['student_tokens']:,} tokens per arm, seeds {', '.join(map(str, plan['seeds']))} in every arm; "
        f"teacher: {plan['teacher']}, {plan['teacher_steps']} steps (seed {plan['teacher_seed']}). "
        f"Data {results['data']}, tokenizer {results['tokenizer']}; validation: the same "
        f"{plan['eval_batches']} x {plan['batch_size']} x {plan['seq_len']} tokens for every model.", "",
        *table(results), "",
        "Flip-flop ratio (signs that change per step), mean over the last 20% of steps, per seed:",
        *flip_lines, "",
        "## Verdicts", "", RULE, "",
        *[describe(v) for v in results["claims"]], "",
        "![perplexity per arm](ppl.png) ![flip-flop ratio](flips.png)", ""])


def plots(out, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["arms"])
    fig, ax = plt.subplots(figsize=(9, 4.2))
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
    fig.savefig(Path(out) / "ppl.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
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
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(out) / "flips.png", dpi=110)
    plt.close(fig)
