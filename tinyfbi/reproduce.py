"""`python -m tinyfbi.reproduce`: the paper's claims at laptop scale, each judged over seeds.

First a full-precision teacher, 4x the students' size and trained for 5x a student's tokens
(once, reused by every arm and every rerun), with its top-K next-token probabilities cached. Then
every arm (reproduction.plan.ARMS) over the same seeds, each arm of a size on the same
tokens with the same initial weights and batch order per seed:
  (a) FBI with autoregressive distillation vs next-token labels vs the 0.5/0.5 mix;
  (b) FBI's per-column alpha/beta vs none vs per-row vs BitNet b1.58 ternary;
  (c) from scratch vs from the trained full-precision model of the same shape (flip-flop curves);
  (d) the full-precision model of the students' shape and budget;
  (e) FBI and full precision at a second, smaller size: does the gap narrow as the model grows?
Each claim is supported, contradicted or inconclusive by the rule printed with the table
(reproduction.claims.RULE). Writes OUT/{results.md, results.json, ppl.png, flips.png}; finished runs
are reused (a killed one resumes), so a rerun only trains what is missing.

    python -m tinyfbi.reproduce          # tiny + mini students, 3 seeds; teacher ~25 min, its cache ~13, students ~45 (2 cores)
    python -m tinyfbi.reproduce --fast   # the same structure, one size down, a few steps: a few minutes
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

from .bench.machine import cpu_name
from .cli import CLIParser, run_cli
from .core.errors import TinyFBIError
from .formats.atomic import atomic_write_bytes, atomic_write_json
from .formats.run_checkpoint import has_checkpoint, resolve_checkpoint
from .reproduction.claims import RULE, evaluate_claims
from .reproduction.plan import ARMS, FAST, FULL, INIT_FROM_FP
from .reproduction.report import markdown, plots
from .train import train
from .training.spec import RunSpec
from .training.teacher_cache import cache_folder, cache_identity


def build_parser():
    ap = CLIParser("python -m tinyfbi.reproduce", __doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="a few steps per arm: the structure in minutes (CI, a first look)")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"optimizer steps per student arm (default {FULL.steps}, --fast {FAST.steps})")
    ap.add_argument("--teacher-steps", type=int, default=None,
                    help=f"the teacher's steps (default {FULL.teacher_steps}, --fast {FAST.teacher_steps})")
    ap.add_argument("--teacher-only", action="store_true", help="train (or resume) the teacher and stop: "
                    "build it ahead, e.g. overnight")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per arm, the same in every arm (at least 2 "
                    "for an interval; the verdicts need 3+)")
    ap.add_argument("--out", default=None, help="where runs, table and plots go (default runs/reproduce, "
                    "--fast: runs/reproduce-fast)")
    ap.add_argument("--data", default=None, help="corpus (default: Shakespeare)")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--tokenizer", default="sentencepiece")
    return ap


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    args.command = shlex.join(["python", "-m", "tinyfbi.reproduce", *argv])
    return run_cli(reproduce, args)


def choose_plan(args):
    plan = FAST if args.fast else FULL
    changes = {"seeds": tuple(range(args.seeds))}
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.teacher_steps is not None:
        changes["teacher_steps"] = args.teacher_steps
    plan = dataclasses.replace(plan, **changes)
    if plan.steps <= 0 or plan.teacher_steps <= 0:
        raise TinyFBIError(f"--steps and --teacher-steps must be positive, got {plan.steps} and {plan.teacher_steps}")
    if args.seeds < 1:
        raise TinyFBIError(f"--seeds must be at least 1, got {args.seeds}")
    return plan


def common_fields(args, plan, out, size, steps, seed, name) -> dict:
    """The RunSpec fields every run of the reproduction shares."""
    return {"size": size, "steps": steps, "batch_size": plan.batch_size, "seq_len": plan.seq_len, "seed": seed,
            "out": str(out), "name": name, "data_dir": args.data_dir, "tokenizer": args.tokenizer,
            "eval_batches": plan.eval_batches, "sample_tokens": plan.sample_tokens, "data": args.data}


def save_every(steps, checkpoints) -> int:
    """Steps between checkpoints: `checkpoints` per run, or one at the end of a run too short for them."""
    return steps // checkpoints if steps >= 2 * checkpoints else steps


def run_once(fields: dict) -> dict:
    """Train one run (RunSpec fields), or reuse it if finished (resume it if killed); -> its summary plus wall_s."""
    name, size, steps = fields["name"], fields["size"], fields["steps"]
    run_dir = Path(fields["out"]) / name
    summary_path, timing_path = run_dir / "summary.json", run_dir / "reproduce.json"
    if summary_path.is_file() and timing_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary["steps"] != steps or summary["size"] != size:
            raise TinyFBIError(f"{run_dir} was trained with another plan ({summary['size']}, {summary['steps']} steps, "
                               f"not {size}, {steps}): delete it or choose another --out")
        print(f"== {name}: reusing {run_dir}")
        return {**summary, "wall_s": json.loads(timing_path.read_text())["wall_s"]}
    resume = has_checkpoint(run_dir)
    print(f"\n== {name}{' (resuming)' if resume else ''}")
    start = time.perf_counter()
    summary = train(RunSpec.build(**fields, resume=resume))
    wall = time.perf_counter() - start
    atomic_write_json(timing_path, {"wall_s": wall})
    return {**summary, "wall_s": wall}


def train_teacher(args, plan, out) -> dict:
    name = f"teacher-{plan.teacher}"
    return run_once({**common_fields(args, plan, out, plan.teacher, plan.teacher_steps, plan.teacher_seed, name),
                     "full_precision": True, "teacher": "none", "lr": plan.teacher_lr, "warmup": plan.teacher_warmup,
                     "eval_every": max(plan.teacher_steps // 3, 1),
                     "save_every": save_every(plan.teacher_steps, 12)})


def train_arm(args, plan, out, arm, seed, teacher_ckpt) -> dict:
    size = plan.small if arm.small else plan.student
    name = f"{arm.name}-s{seed}"
    fields = {**common_fields(args, plan, out, size, plan.steps, seed, name), "eval_every": plan.eval_every,
              "save_every": save_every(plan.steps, 2), "track_flips": arm.track_flips, **arm.fields}
    if fields.get("init") == INIT_FROM_FP:
        fields["init"] = str(resolve_checkpoint(Path(out) / f"fp-s{seed}"))
    if arm.distilled:
        fields.update(teacher=str(teacher_ckpt), teacher_cache=plan.teacher_cache)
    return run_once(fields)


KEEP = ("run", "val_loss", "val_ppl", "tokens_seen", "rollbacks", "tok_s", "wall_s")


def reproduce(args):
    plan = choose_plan(args)
    out = Path(args.out or ("runs/reproduce-fast" if args.fast else "runs/reproduce"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    t = train_teacher(args, plan, out)
    teacher_ckpt = resolve_checkpoint(t["run"])
    teacher = {"run": t["run"], "size": plan.teacher, "params": t["params"], "steps": t["steps"],
               "seed": plan.teacher_seed, "tokens_seen": t["tokens_seen"], "val_loss": t["val_loss"],
               "val_ppl": t["val_ppl"], "wall_s": t["wall_s"], "tok_s": t["tok_s"]}
    if args.teacher_only:
        print(f"teacher ready: {teacher_ckpt} (validation perplexity {t['val_ppl']:.1f})")
        return {"teacher": teacher}

    arms = {a.name: {"question": a.question, "size": plan.small if a.small else plan.student, "seeds": {}}
            for a in ARMS}
    for seed in plan.seeds:            # seed by seed: a run cut short still has whole seeds to compare
        for arm in ARMS:
            s = train_arm(args, plan, out, arm, seed, teacher_ckpt)
            arms[arm.name]["params"] = s["params"]
            arms[arm.name]["seeds"][str(seed)] = {k: s[k] for k in KEEP}
            data, tokenizer = s["data"], s["tokenizer"]
    budgets = {(a["size"], r["tokens_seen"]) for a in arms.values() for r in a["seeds"].values()}
    if len({size for size, _ in budgets}) != len(budgets):
        raise TinyFBIError(f"arms of one size saw different numbers of tokens: {sorted(budgets)}")

    cache_s = 0.0
    if plan.teacher_cache:
        cache = cache_folder(out, cache_identity(teacher_ckpt, data, tokenizer), plan.seq_len, plan.teacher_cache)
        cache_s = json.loads((cache / "build.json").read_text())["seconds"]
    students_s = sum(r["wall_s"] for a in arms.values() for r in a["seeds"].values()) - cache_s
    results = {
        "command": getattr(args, "command", "python -m tinyfbi.reproduce"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_name(),
        "fast": args.fast, "plan": dataclasses.asdict(plan), "student_tokens": plan.student_tokens(),
        "student_params": {a["size"]: a["params"] for a in arms.values()}, "data": data, "tokenizer": tokenizer,
        "teacher": teacher, "arms": arms,
        "timing": {"teacher_s": teacher["wall_s"], "cache_s": cache_s, "students_s": students_s,
                   # the teacher's whole budget at its median step time: its wall_s covers only the last
                   # invocation's part when a killed teacher was resumed
                   "teacher_at_median_step_s": teacher["tokens_seen"] / teacher["tok_s"] if teacher["tok_s"] else None,
                   "total_s": teacher["wall_s"] + cache_s + students_s, "this_invocation_s": time.perf_counter() - start},
        "rule": RULE}
    results["claims"] = evaluate_claims(results, plan.seeds)
    atomic_write_json(out / "results.json", results)
    report = markdown(results, results["command"])
    atomic_write_bytes(out / "results.md", report.encode())
    plots(out, results)
    print("\n" + report)
    print(f"wrote {out}/results.md, results.json, ppl.png, flips.png")
    return results


if __name__ == "__main__":
    main()
