"""Kill a 2-rank torchrun training run (gloo, CPU) at chosen or random moments and resume it each time.

Each round starts the same command (with --resume after the first), waits for a moment, then
SIGKILLs one target: the torchrun agent, one worker, or the agent while a checkpoint is being
written. After the agent's death the workers must be gone within seconds (the launcher watchdog,
tinyfbi.torch_backend.distributed.watch_launcher). The last round runs to the end; its metrics.jsonl
must hold every step once, in order, with the uninterrupted run's losses.

    python tests/kill_rounds.py --rounds 20 --seed 1     # random rounds, by hand or in a soak job
The test suite runs a short fixed schedule of the same (tests/test_run_safety.py).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tinyfbi.formats.run_checkpoint import has_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY = 36, 4
ORPHAN_DEADLINE = 3.0        # seconds the workers may outlive a killed agent (the watchdog polls every 0.1 s)


def command(corpus, out, resume):
    flags = ["--backend", "torch", "--data", corpus, "--data-dir", Path(out) / "data", "--out", out,
             "--name", "chaos", "--steps", STEPS, "--save-every", SAVE_EVERY, "--eval-every", STEPS,
             "--tokenizer", "byte", "--batch-size", 4, "--seq-len", 32, "--eval-batches", 1, "--sample-tokens", 2,
             "--loss", "ce", "--teacher", "none", "--lr", "1e-3"]
    return ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
             "-m", "tinyfbi.train", *map(str, flags)] + (["--resume"] if resume else []))


def launch(corpus, out, resume):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen(command(corpus, out, resume), cwd=out, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def workers(agent_pid) -> dict[int, int]:
    """{rank: pid} of the agent's worker processes."""
    found = {}
    for task in Path(f"/proc/{agent_pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in map(int, children):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            rank = next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)
            if rank is not None:
                found[rank] = pid
    return found


def alive(pid) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def steps_logged(run_dir) -> int:
    try:
        return sum(1 for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip())
    except OSError:
        return 0


def kill_round(corpus, out, target, at_step, resume, timeout=180.0) -> dict:
    """One round: start, wait until `at_step` steps are logged (or, for 'checkpoint', until a
    checkpoint is being written after that), SIGKILL the target. -> what happened."""
    run_dir = Path(out) / "chaos"
    proc = launch(corpus, out, resume)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        ready = steps_logged(run_dir) >= at_step
        if ready and (target != "checkpoint" or (run_dir / ".checkpoint.tmp").exists()):
            break
        time.sleep(0.005)
    if proc.poll() is not None:  # it ended first: nothing to kill this round
        return {"target": target, "killed": False, "returncode": proc.returncode, "stderr": proc.stderr.read()}
    ranks = workers(proc.pid)
    victim = ranks.get(1) if target == "worker" else proc.pid
    logged = steps_logged(run_dir)
    os.kill(victim, signal.SIGKILL)
    proc.wait(timeout=120)
    t0 = time.time()
    while any(alive(pid) for pid in ranks.values()) and time.time() - t0 < ORPHAN_DEADLINE + 20:
        time.sleep(0.05)
    return {"target": target, "killed": True, "step": logged, "workers": ranks,
            "orphans_lived_s": time.time() - t0, "orphans": [p for p in ranks.values() if alive(p)],
            "steps_after_kill": steps_logged(run_dir) - logged}


def finish(corpus, out, resume=True, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(command(corpus, out, resume), cwd=out, env=env, capture_output=True, text=True,
                          timeout=timeout)


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder for the runs (default: a new temporary one)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="kill-rounds-"))
    corpus = work / "corpus.txt"
    import pydoc_data.topics
    corpus.write_text("\n".join(pydoc_data.topics.topics.values()))
    whole = work / "whole"
    whole.mkdir(parents=True, exist_ok=True)
    done = finish(corpus, whole, resume=False)
    assert done.returncode == 0, done.stderr[-2000:]
    chaos = work / "chaos-runs"
    chaos.mkdir(exist_ok=True)
    for i in range(args.rounds):
        target = rng.choice(["agent", "worker", "checkpoint"])
        r = kill_round(corpus, chaos, target, rng.randint(1, STEPS - 2), has_checkpoint(chaos / "chaos"))
        print(f"round {i}: {r}", flush=True)
        assert not r.get("orphans"), f"workers outlived their agent: {r}"
    done = finish(corpus, chaos, resume=has_checkpoint(chaos / "chaos"))
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = metrics(whole / "chaos"), metrics(chaos / "chaos")
    assert [r["step"] for r in b] == list(range(1, STEPS + 1)), [r["step"] for r in b]
    worst = max(abs(x["loss"] - y["loss"]) / x["loss"] for x, y in zip(a, b))
    print(f"all {args.rounds} rounds resumed; every step logged once; max relative loss difference {worst:.2e}")
    assert worst < 1e-6


if __name__ == "__main__":
    main()
