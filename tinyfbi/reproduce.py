"""`python -m tinyfbi.reproduce`: the paper's claims at laptop scale, each judged over seeds.

First a full-precision teacher, 13x the students' size and trained for 4x a student's tokens (once,
reused by every arm and every rerun). Then every arm (reproduction.plan.ARMS) over the same seeds,
each arm on the same tokens with the same initial weights and batch order per seed, every distilled
arm learning the teacher's full softmax (T = 1), the teacher run forward each step. The arms of one
seed train in lockstep (reproduction.lockstep): one teacher forward per batch serves them all, and each
arm is bit for bit the arm trained alone.
  (a) FBI with autoregressive distillation vs next-token labels vs the 0.5/0.5 mix;
  (b) FBI's per-column alpha/beta vs none vs per-row vs BitNet b1.58 ternary;
  (c) from scratch vs from the trained full-precision model of the same shape, at the budget and at
      4x the budget: the validation loss, the flip-flop ratio and the gradient norm;
  (d) the full-precision model of the students' shape and budget;
  (e) FBI and full precision at three sizes (13x in non-embedding parameters, the same tokens per
      parameter): does the gap narrow as the model grows?
Each claim is supported, contradicted or inconclusive by the rule printed with the table
(reproduction.claims.RULE). Writes OUT/{results.md, results.json, ppl.png, flips.png, trend.png};
finished runs are reused (a killed one resumes), so a rerun only trains what is missing, and the
command can be run in parts (--claims, --seeds) or interrupted and started again.

    python -m tinyfbi.reproduce                         # every claim (docs/reproduction.md)
    python -m tinyfbi.reproduce --claims a1,b1,d        # only the arms of the central claims
    python -m tinyfbi.reproduce --pilot                 # effects and spreads at the pilot's budgets
    python -m tinyfbi.reproduce --only fbi-ad --seed 1  # rerun one arm and seed alone, print its value
    python -m tinyfbi.reproduce --fast                  # the same structure, a few steps: a few minutes
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
from .reproduction.budget import estimate, measure
from .reproduction.claims import CLAIM_KEYS, CLAIMS, RULE, arms_for, arms_of, evaluate_claims
from .reproduction.lockstep import train_lockstep
from .reproduction.plan import ARM_NAMES, ARMS_BY_NAME, FAST, FULL, INIT_FROM_FP, SIZES, non_embedding_params
from .reproduction.report import design_estimate, markdown, pilot_markdown, plots, step_seconds, tail_mean
from .training.run_lock import RunBusy, RunLock
from .training.spec import RunSpec


def build_parser():
    ap = CLIParser("python -m tinyfbi.reproduce", __doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="a few steps per arm: the structure in minutes (CI, a first look)")
    ap.add_argument("--claims", default=None, help=f"comma-separated claims to decide, training only their arms "
                    f"(default: all of {','.join(CLAIM_KEYS)})")
    ap.add_argument("--pilot", action="store_true", help="train the claims' arms at the plan's pilot budgets over "
                    "its pilot seeds; write OUT/pilot.json and pilot.md (effect, spread, seeds needed per claim)")
    ap.add_argument("--only", default=None, choices=ARM_NAMES, help="rerun this arm alone (with --seed) into a "
                    "fresh folder under OUT/reruns/ and print its value beside the published one")
    ap.add_argument("--seed", type=int, default=None, help="the seed of --only")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"optimizer steps per student arm (default {FULL.steps}, --fast {FAST.steps})")
    ap.add_argument("--teacher-steps", type=int, default=None,
                    help=f"the teacher's steps (default {FULL.teacher_steps}, --fast {FAST.teacher_steps})")
    ap.add_argument("--pilot-steps", default=None, help=f"comma-separated budgets of --pilot (default "
                    f"{','.join(map(str, FULL.pilot_steps))}, --fast {','.join(map(str, FAST.pilot_steps))})")
    ap.add_argument("--estimate", action="store_true", help="time each kind of step here and print what the plan "
                    "(and --claims) would take, every arm alone and in lockstep; trains nothing")
    ap.add_argument("--teacher-only", action="store_true", help="train (or resume) the teacher and stop: "
                    "build it ahead, e.g. overnight")
    ap.add_argument("--seeds", type=int, default=None, help=f"seeds per arm (default {len(FULL.seeds)}, more for the "
                    f"claims whose spread asks for them: {', '.join(f'{k} {n}' for k, n in FULL.claim_seeds)}; at "
                    f"least 2 for an interval)")
    ap.add_argument("--out", default=None, help="where runs, table and plots go (default runs/reproduce, "
                    "--fast: runs/reproduce-fast)")
    ap.add_argument("--data", default=None, help="corpus (default: Shakespeare)")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--tokenizer", default="sentencepiece", help="sentencepiece (trained here at the plan's "
                    "vocabulary), byte, tiktoken or PATH/tokenizer.model")
    return ap


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    args.command = shlex.join(["python", "-m", "tinyfbi.reproduce", *argv])
    return run_cli(reproduce, args)


def choose_plan(args):
    plan = FAST if args.fast else FULL
    changes = {}
    if args.seeds is not None:
        if args.seeds < 1:
            raise TinyFBIError(f"--seeds must be at least 1, got {args.seeds}")
        changes["seeds"] = tuple(range(args.seeds))
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.teacher_steps is not None:
        changes["teacher_steps"] = args.teacher_steps
    if args.pilot_steps is not None:
        try:
            changes["pilot_steps"] = tuple(int(s) for s in args.pilot_steps.split(","))
        except ValueError:
            raise TinyFBIError(f"--pilot-steps takes comma-separated integers, got {args.pilot_steps!r}") from None
    plan = dataclasses.replace(plan, **changes)
    if min(plan.steps, plan.teacher_steps, *plan.pilot_steps) <= 0:
        raise TinyFBIError(f"--steps, --teacher-steps and --pilot-steps must be positive, got {plan.steps}, "
                           f"{plan.teacher_steps} and {plan.pilot_steps}")
    if (args.only is None) != (args.seed is None):
        raise TinyFBIError("--only ARM and --seed S go together: they rerun one arm and seed")
    return plan


def chosen_claims(args) -> tuple[str, ...]:
    if args.claims is None:
        return CLAIM_KEYS
    keys = tuple(k.strip() for k in args.claims.split(",") if k.strip())
    try:
        arms_for(keys)
    except ValueError as e:
        raise TinyFBIError(f"--claims: {e}") from None
    return keys


def suffix(keys) -> str:
    """'' for every claim; '-a1-b1-d' for a subset, so a partial table never overwrites the full one."""
    return "" if tuple(keys) == CLAIM_KEYS else "-" + "-".join(keys)


def common_fields(args, plan, out, size, steps, seed, name) -> dict:
    """The RunSpec fields every run of the reproduction shares."""
    return {"size": size, "steps": steps, "batch_size": plan.batch_size, "seq_len": plan.seq_len, "seed": seed,
            "out": str(out), "name": name, "data_dir": args.data_dir, "tokenizer": args.tokenizer,
            "eval_batches": plan.eval_batches, "sample_tokens": plan.sample_tokens, "data": args.data,
            "vocab_size": plan.vocab_size if args.tokenizer == "sentencepiece" else None}


def save_every(steps, checkpoints) -> int:
    """Steps between checkpoints: `checkpoints` per run, or one at the end of a run too short for them."""
    return steps // checkpoints if steps >= 2 * checkpoints else steps


def busy(run_dir) -> bool:
    """Another process is training this run now (it holds the run's lock)."""
    try:
        RunLock(run_dir).acquire().release()
        return False
    except RunBusy:
        return True


def finished(run_dir) -> bool:
    return (Path(run_dir) / "summary.json").is_file() and (Path(run_dir) / "reproduce.json").is_file()


def run_once(fields: dict, wait=True) -> dict | None:
    """Train one run (RunSpec fields), or reuse it if finished (resume it if killed); -> its summary plus wall_s.
    A run another invocation is training is waited for, or with wait=False left to it (-> None)."""
    name = fields["name"]
    run_dir = Path(fields["out"]) / name
    if busy(run_dir):
        if not wait:
            print(f"== {name}: another invocation is training it; coming back to it later")
            return None
        RunLock(run_dir).acquire(wait=True).release()
    done = reused(fields)
    if done is not None:
        print(f"== {name}: reusing {run_dir}")
        return done
    return train_group([fields])[0]


def train_teacher(args, plan, out) -> dict:
    name = f"teacher-{plan.teacher}"
    t = run_once({**common_fields(args, plan, out, plan.teacher, plan.teacher_steps, plan.teacher_seed, name),
                  "full_precision": True, "teacher": "none", "lr": plan.teacher_lr, "warmup": plan.teacher_warmup,
                  "eval_every": max(plan.teacher_steps // 3, 1), "save_every": save_every(plan.teacher_steps, 12)})
    return {"run": t["run"], "checkpoint": str(resolve_checkpoint(t["run"])), "size": plan.teacher,
            "params": t["params"], "steps": t["steps"], "seed": plan.teacher_seed, "tokens_seen": t["tokens_seen"],
            "val_loss": t["val_loss"], "val_ppl": t["val_ppl"], "wall_s": t["wall_s"], "tok_s": t["tok_s"]}


def arm_fields(args, plan, folder, arm, seed, teacher, steps, name=None, fp_folder=None) -> dict:
    """One arm and seed's RunSpec fields when the students train `steps` (the arm's own steps follow from
    its size and budget: Plan.arm_steps); `fp_folder` holds the `fp` run that the init arms start from."""
    preset, shape = SIZES[arm.size]
    steps = plan.arm_steps(arm, steps)
    fields = {**common_fields(args, plan, folder, preset, steps, seed, name or f"{arm.name}-s{seed}"),
              "shape": shape, "lr": plan.lr, "eval_every": min(plan.eval_every, steps),
              "save_every": save_every(steps, 2), "track_flips": arm.track_flips, **arm.fields}
    if fields.get("init") == INIT_FROM_FP:
        fields["init"] = str(resolve_checkpoint(Path(fp_folder or folder) / f"fp-s{seed}"))
    if arm.distilled:
        fields.update(teacher=teacher["checkpoint"], teacher_cache=0)   # the full softmax, on the fly
    return fields


KEEP = ("run", "val_loss", "val_ppl", "tokens_seen", "rollbacks", "tok_s", "wall_s", "steps", "flips_tail",
        "grad_norm_tail")


def arm_seeds(plan, names, keys, seeds=None) -> dict:
    """The seeds each arm trains: those of the claims of `keys` that compare it (Plan.seeds_of; `seeds`
    for all when given, as the pilot does), and for `fp` those of the arms that start from it."""
    out = {}
    for c in CLAIMS:
        if c.key in keys:
            for n in arms_of(c) + (["fp"] if c.a == "teacher" and c.b == "fp" else []):
                out[n] = max(out.get(n, ()), seeds or plan.seeds_of(c.key), key=len)
    for n in list(out):
        if ARMS_BY_NAME[n].fields.get("init") == INIT_FROM_FP:
            out["fp"] = max(out.get("fp", ()), out[n], key=len)
    return {n: out[n] for n in names}


def reused(fields) -> dict | None:
    """A finished run's summary (checked against the plan), or None."""
    run_dir = Path(fields["out"]) / fields["name"]
    if not finished(run_dir):
        return None
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary["steps"] != fields["steps"] or summary["size"] != fields["size"]:
        raise TinyFBIError(f"{run_dir} was trained with another plan ({summary['size']}, {summary['steps']} steps, "
                           f"not {fields['size']}, {fields['steps']}): delete it or choose another --out")
    return {**summary, "wall_s": json.loads((run_dir / "reproduce.json").read_text())["wall_s"]}


def train_group(field_list) -> list[dict]:
    """Train runs of one seed in lockstep (reproduction.lockstep: one teacher forward per batch for all), each
    resumed if killed. Each run's reproduce.json records an equal share of the group's wall time."""
    resuming = [f["name"] for f in field_list if has_checkpoint(Path(f["out"]) / f["name"])]
    print(("\n== in lockstep: " if len(field_list) > 1 else "\n== ") + ", ".join(f["name"] for f in field_list)
          + (f" (resuming {', '.join(resuming)})" if resuming else ""))
    start = time.perf_counter()
    group = [f["name"] for f in field_list]
    walls = {}

    def record_wall(spec, summary):          # before the run's lock is released: `finished` needs this file
        wall = walls.setdefault("group", time.perf_counter() - start)
        atomic_write_json(spec.run_dir / "reproduce.json",
                          {"wall_s": wall / len(group), "group_wall_s": wall, "group": group})
    summaries = train_lockstep([RunSpec.build(**f, resume=has_checkpoint(Path(f["out"]) / f["name"]))
                                for f in field_list], after=record_wall)
    return [{**s, "wall_s": walls["group"] / len(group)} for s in summaries]


def record(s) -> dict:
    """What results.json keeps of one run: its summary's values and its last 20% of steps' statistics."""
    metrics = Path(s["run"]) / "metrics.jsonl"
    return {k: v for k, v in {**s, "flips_tail": tail_mean(metrics, "flips"),
                              "grad_norm_tail": tail_mean(metrics, "grad_norm")}.items() if k in KEEP}


def train_arms(args, plan, folder, names, seeds_by_arm, teacher, steps) -> dict:
    """Every named arm over its seeds (seeds_by_arm) with the students at `steps`, seed by seed (a run cut
    short still has whole seeds). A seed's arms train in lockstep: first `fp` (the init arms start from it),
    then all the others together. A run that another invocation on the same OUT is training is left to it and
    collected at the end, so two invocations share the work."""
    arms = {n: {"question": ARMS_BY_NAME[n].question, "size": ARMS_BY_NAME[n].size,
                "non_embedding_params": non_embedding_params(ARMS_BY_NAME[n].size, plan.vocab_size,
                                                             "full_precision" not in ARMS_BY_NAME[n].fields),
                "seeds": {}} for n in names}

    def fields_of(name, seed):
        return arm_fields(args, plan, folder, ARMS_BY_NAME[name], seed, teacher, steps)

    def keep(name, seed, s):
        arm = arms[name]
        arm.update(params=s["params"], distillation=s["distillation"], data=s["data"], tokenizer=s["tokenizer"])
        arm["seeds"][str(seed)] = record(s)

    all_seeds = sorted({s for v in seeds_by_arm.values() for s in v})
    later = []
    for seed in all_seeds:
        here = [n for n in names if seed in seeds_by_arm[n]]
        for phase in ([n for n in here if n == "fp"], [n for n in here if n != "fp"]):
            todo = []
            for name in phase:
                if ARMS_BY_NAME[name].fields.get("init") == INIT_FROM_FP and not finished(folder / f"fp-s{seed}"):
                    # its initial weights are another invocation's `fp` run, still training: its fields (the
                    # checkpoint to start from) are read only once that run has finished, in the loop below
                    print(f"== {name}-s{seed}: its `fp` start is still training elsewhere; later")
                    later.append((seed, name))
                    continue
                fields = fields_of(name, seed)
                done = reused(fields)
                if done is not None:
                    print(f"== {fields['name']}: reusing {folder / fields['name']}")
                    keep(name, seed, done)
                elif busy(folder / fields["name"]):
                    print(f"== {fields['name']}: another invocation is training it; later")
                    later.append((seed, name))
                else:
                    todo.append((name, fields))
            if todo:
                try:
                    trained = train_group([f for _, f in todo])
                except RunBusy:
                    # another invocation took one of these runs between the check above and the locks (both
                    # may reach a seed's group at once, each holding part of it, and both let go): leave the
                    # group to later, where each run is waited for, trained if still unfinished, collected.
                    # Checking who is busy now would race with that release; any other error stands
                    later += [(seed, name) for name, _ in todo]
                    continue
                for (name, _), s in zip(todo, trained):
                    keep(name, seed, s)
    for seed, name in later:                   # left to another invocation: wait for it, then collect
        if ARMS_BY_NAME[name].fields.get("init") == INIT_FROM_FP:
            RunLock(folder / f"fp-s{seed}").acquire(wait=True).release()   # its `fp` start has ended
            if not (folder / f"fp-s{seed}" / "summary.json").is_file():
                raise TinyFBIError(f"{folder / f'fp-s{seed}'} did not finish: rerun to train it, then {name}")
        fields = fields_of(name, seed)
        s = run_once(fields)
        keep(name, seed, s)
    for name, arm in arms.items():             # seeds in order, whatever order the runs finished in
        arm["seeds"] = {str(seed): arm["seeds"][str(seed)] for seed in seeds_by_arm[name]}
    budgets = {(a["size"], r["tokens_seen"] // r["steps"]) for a in arms.values() for r in a["seeds"].values()}
    if len({size for size, _ in budgets}) != len(budgets):
        raise TinyFBIError(f"arms of one size saw batches of different sizes: {sorted(budgets)}")
    return arms


def reproduce(args):
    plan = choose_plan(args)
    keys = chosen_claims(args)
    if args.estimate:
        return print_estimate(args, plan, keys)
    out = Path(args.out or ("runs/reproduce-fast" if args.fast else "runs/reproduce"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    teacher = train_teacher(args, plan, out)
    if args.teacher_only:
        print(f"teacher ready: {teacher['checkpoint']} (validation perplexity {teacher['val_ppl']:.1f})")
        return {"teacher": teacher}
    if args.only is not None:
        return rerun_one(args, plan, out, teacher)
    if args.pilot:
        return pilot(args, plan, out, teacher, keys, start)

    names = arms_for(keys)
    arms = train_arms(args, plan, out, names, arm_seeds(plan, names, keys), teacher, plan.steps)
    students_s = sum(r["wall_s"] for a in arms.values() for r in a["seeds"].values())
    first = next(iter(arms.values()))
    results = {
        "command": getattr(args, "command", "python -m tinyfbi.reproduce"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_name(),
        "fast": args.fast, "claims_asked": list(keys), "plan": dataclasses.asdict(plan),
        "student_tokens": plan.student_tokens(),
        "student_params": {a["size"]: a["params"] for a in arms.values()}, "data": first["data"],
        "tokenizer": first["tokenizer"], "teacher": teacher, "arms": arms,
        "timing": {"teacher_s": teacher["wall_s"], "students_s": students_s,
                   # the teacher's whole budget at its median step time: its wall_s covers only the last
                   # invocation's part when a killed teacher was resumed
                   "teacher_at_median_step_s": teacher["tokens_seen"] / teacher["tok_s"] if teacher["tok_s"] else None,
                   "total_s": teacher["wall_s"] + students_s, "this_invocation_s": time.perf_counter() - start,
                   # every run's steps at its 10th-percentile step time: about the same work on an idle machine
                   "idle_estimate_s": step_seconds([teacher["run"]])["step_s_p10"] * teacher["steps"] + sum(
                       step_seconds([r["run"]])["step_s_p10"] * r["steps"] for a in arms.values()
                       for r in a["seeds"].values())},
        "rule": RULE}
    results["claims"] = evaluate_claims(results, plan.seeds_of, keys)
    tail = suffix(keys)
    atomic_write_json(out / f"results{tail}.json", results)
    report = markdown(results, results["command"], tail)
    atomic_write_bytes(out / f"results{tail}.md", report.encode())
    plots(out, results, tail)
    print("\n" + report)
    print(f"wrote {out}/results{tail}.md, results{tail}.json, ppl{tail}.png, flips{tail}.png")
    return results


def print_estimate(args, plan, keys) -> dict:
    """--estimate: every kind of step timed here (reproduction.budget), then the plan's time for every claim
    and for the claims asked, alone and in lockstep."""
    times = measure(plan, ARM_NAMES, repeats=7)
    print(f"step times on {cpu_name()}, {plan.batch_size} x {plan.seq_len} tokens, the fastest of 7 (seconds): "
          f"teacher training {times['teacher_step_s']:.3f}, teacher forward {times['teacher_forward_s']:.3f}; "
          + ", ".join(f"{n} {t:.3f}" for n, t in times["arm_step_s"].items()) + "; validation pass "
          + ", ".join(f"{size} {t:.2f}" for size, t in times["eval_s"].items()))
    out = {"cpu": cpu_name(), "times": times, "plans": {}}
    for asked in dict.fromkeys([CLAIM_KEYS, keys]):
        names = arms_for(asked)
        e = estimate(plan, arm_seeds(plan, names, asked), times)
        out["plans"][",".join(asked)] = e
        print(f"{'every claim' if asked == CLAIM_KEYS else '--claims ' + ','.join(asked)}: teacher "
              f"{e['teacher_s'] / 60:.1f} min; students alone {e['students_alone_s'] / 60:.1f} min, in lockstep "
              f"{e['students_lockstep_s'] / 60:.1f} min; in all {e['alone_s'] / 60:.1f} min alone, "
              f"{e['lockstep_s'] / 60:.1f} min in lockstep")
    return out


def pilot(args, plan, out, teacher, keys, start):
    """The claims' arms at each pilot budget over the pilot seeds: per claim its effect (the mean paired
    difference), the spread of the per-seed differences and the seeds that would decide it. The runs at
    the plan's own budget live in OUT itself, so the full run reuses them as its first seeds."""
    budgets = []
    for steps in plan.pilot_steps:
        folder = out if steps == plan.steps else out / f"pilot-{steps}"
        names = arms_for(keys)
        arms = train_arms(args, plan, folder, names, arm_seeds(plan, names, keys, plan.pilot_seeds), teacher, steps)
        results = {"teacher": teacher, "arms": arms}
        budgets.append({"steps": steps, "tokens": steps * plan.batch_size * plan.seq_len,
                        "tokens_per_param": {n: next(iter(a["seeds"].values()))["tokens_seen"] / a["params"]
                                             for n, a in arms.items()},
                        "arms": {n: {"size": a["size"], "params": a["params"], "distillation": a["distillation"],
                                     "steps": next(iter(a["seeds"].values()))["steps"],
                                     "val_loss": [r["val_loss"] for r in a["seeds"].values()],
                                     **step_seconds([r["run"] for r in a["seeds"].values()])}
                                 for n, a in arms.items()},
                        "claims": evaluate_claims(results, plan.pilot_seeds, keys)})
    data = {"command": getattr(args, "command", "python -m tinyfbi.reproduce --pilot"),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_name(),
            "plan": dataclasses.asdict(plan), "claims_asked": list(keys), "seeds": list(plan.pilot_seeds),
            "teacher": {**teacher, **step_seconds([teacher["run"]])}, "budgets": budgets,
            "wall_s": time.perf_counter() - start}
    data["estimate"] = design_estimate(data, plan)
    tail = suffix(keys)
    atomic_write_json(out / f"pilot{tail}.json", data)
    report = pilot_markdown(data)
    atomic_write_bytes(out / f"pilot{tail}.md", report.encode())
    print("\n" + report)
    print(f"wrote {out}/pilot{tail}.md, pilot{tail}.json")
    return data


def rerun_one(args, plan, out, teacher) -> dict:
    """Train one arm and seed again into a fresh folder (the teacher, and for fbi-init-ad the `fp` run of
    that seed, taken from OUT) and compare its value with the published one in OUT/results*.json."""
    arm = ARMS_BY_NAME[args.only]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = out / "reruns" / f"{arm.name}-s{args.seed}-{stamp}"
    s = run_once(arm_fields(args, plan, folder, arm, args.seed, teacher, plan.steps, fp_folder=out))
    published = None
    for path in sorted(out.glob("results*.json")):
        runs = json.loads(path.read_text())["arms"].get(arm.name, {}).get("seeds", {})
        if str(args.seed) in runs:
            published = runs[str(args.seed)]["val_loss"]
            break
    line = f"{arm.name} seed {args.seed}: validation loss {s['val_loss']:.6f} nats (perplexity {s['val_ppl']:.3f})"
    if published is not None:
        line += f"; published {published:.6f}, difference {s['val_loss'] - published:+.2e} nats"
    print(line)
    return {"arm": arm.name, "seed": args.seed, "run": s["run"], "val_loss": s["val_loss"], "published": published}


if __name__ == "__main__":
    main()
