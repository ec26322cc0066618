"""A run folder belongs to one run: the lock, failed writes, and kills at any moment across ranks.

The lock is flock(2) (training.run_lock): the tests hold it from another process and kill that
process, so they see what the kernel does, not what tinyfbi says it does. Failed writes are made to
fail on purpose (an OSError(ENOSPC) where the bytes would go). The multi-rank rounds are
tests/kill_rounds.py's, on a short fixed schedule: the agent killed mid-run, one worker killed,
the agent killed while a checkpoint is being written; then the same command resumes to the end.
"""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import kill_rounds
import numpy as np
import pytest
from conftest import metrics

from tinyfbi import load_model
from tinyfbi.core.errors import TinyFBIError
from tinyfbi.formats import run_checkpoint
from tinyfbi.train import main
from tinyfbi.training import loop as loop_module
from tinyfbi.training.run_lock import RunLock

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--tokenizer", "byte", "--batch-size", "4", "--seq-len", "32", "--eval-batches", "1",
         "--sample-tokens", "2", "--loss", "ce", "--teacher", "none"]


def train(corpus, out, *extra, expect_exit=None):
    argv = ["--data", str(corpus), "--data-dir", str(out / "data"), "--out", str(out), *SMALL, *map(str, extra)]
    if expect_exit is None:
        return main(argv)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == expect_exit


def hold_lock(folder):
    """Another process holding the run folder's lock, as a running training would."""
    code = ("import sys, time; from tinyfbi.training.run_lock import RunLock; "
            f"RunLock({str(folder)!r}).acquire(); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_run_folder_is_refused_in_one_line_and_freed_when_its_holder_dies(corpus, tmp_path, capsys):
    holder = hold_lock(tmp_path / "tiny-ce")
    try:
        for extra in ([], ["--resume"]):   # a second start and an impatient --resume alike
            train(corpus, tmp_path, "--steps", 2, *extra, expect_exit=2)
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and "is in use by another run" in err
            assert f"pid {holder.pid} on {socket.gethostname()} since" in err
        assert not (tmp_path / "tiny-ce").exists()          # refused before anything was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    summary = train(corpus, tmp_path, "--steps", 2)          # the kernel dropped the dead holder's lock
    assert summary["steps"] == 2


def test_a_teacher_being_built_is_waited_for(tmp_path):
    holder = hold_lock(tmp_path / "teacher")
    got, said = threading.Event(), []
    lock = RunLock(tmp_path / "teacher", "teacher build")
    waiter = threading.Thread(target=lambda: (lock.acquire(wait=True, on_wait=said.append), got.set()))
    waiter.start()
    time.sleep(0.5)
    assert not got.is_set() and said and f"pid {holder.pid}" in said[0]
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert got.wait(10)
    lock.release()


def test_a_failed_checkpoint_write_keeps_the_last_one(corpus, tmp_path, monkeypatch, capsys):
    real, saves = run_checkpoint.save_file, []

    def full_disk(tensors, path, metadata=None):
        saves.append(path)
        if len(saves) == 7:   # weights + moments of the step-0, -2 and -4 checkpoints; step 6's weights fail
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(run_checkpoint, "save_file", full_disk)
    train(corpus, tmp_path, "--steps", 8, "--save-every", 2, expect_exit=2)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "could not write the step-6 checkpoint" in err and "No space left on device" in err
    assert "is intact" in err
    run_dir = tmp_path / "tiny-ce"
    assert json.loads((run_dir / "checkpoint" / "trainer.json").read_text())["step"] == 4
    assert not (run_dir / ".checkpoint.tmp").exists()
    load_model(run_dir)                                      # loadable
    monkeypatch.undo()
    summary = train(corpus, tmp_path, "--steps", 8, "--save-every", 2, "--resume")
    assert summary["steps"] == 8 and [r["step"] for r in metrics(run_dir / "metrics.jsonl")] == list(range(1, 9))


def test_a_failed_metrics_write_ends_in_one_line(corpus, tmp_path, monkeypatch, capsys):
    opened = []

    def failing_open(path, mode="r", *args, **kwargs):
        opened.append(path)
        if len(opened) == 3:
            raise OSError(errno.EROFS, "Read-only file system")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(loop_module, "open", failing_open, raising=False)
    train(corpus, tmp_path, "--steps", 6, "--save-every", 2, expect_exit=2)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: could not append step 3") and "Read-only file system" in err
    load_model(tmp_path / "tiny-ce")


def test_read_metrics_skips_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert loop_module.read_metrics(path) == [{"step": 1, "loss": 2.0}]
    path.write_text('{"step": 1, "lo\n{"step": 2, "loss": 2.0}\n')
    with pytest.raises(TinyFBIError, match="line 1 is not JSON"):
        loop_module.read_metrics(path)


@pytest.mark.usefixtures("one_torch_thread")
def test_kills_at_any_moment_across_ranks_resume_to_the_uninterrupted_run(corpus, tmp_path):
    whole = tmp_path / "whole"
    whole.mkdir()
    chaos = tmp_path / "chaos"
    chaos.mkdir()
    uninterrupted = subprocess.Popen(kill_rounds.command(corpus, whole, resume=False), cwd=whole,
                                     env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rounds = []
    for target, at_step in (("agent", 5), ("worker", 11), ("checkpoint", 16)):
        r = kill_rounds.kill_round(corpus, chaos, target, at_step, resume=bool(rounds))
        assert r["killed"], r
        assert not r["orphans"], f"workers outlived the agent: {r}"
        assert r["orphans_lived_s"] < kill_rounds.ORPHAN_DEADLINE, r
        # a step or two may finish in the 0.1 s before the watchdog looks (unwatched: 32 more, measured)
        assert r["steps_after_kill"] <= 2, f"ranks went on training after the kill: {r}"
        rounds.append(r)
    done = kill_rounds.finish(corpus, chaos)
    assert done.returncode == 0, done.stderr[-3000:]
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()[-3000:]
    a, b = metrics(whole / "chaos" / "metrics.jsonl"), metrics(chaos / "chaos" / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, kill_rounds.STEPS + 1))   # every step once, in order
    # the same state and batches after every resume: the same float32 sums, to rounding
    assert max(abs(x["loss"] - y["loss"]) / x["loss"] for x, y in zip(a, b)) < 1e-6
    assert abs(a[-1]["val_loss"] - b[-1]["val_loss"]) / a[-1]["val_loss"] < 1e-6
    assert np.isfinite(b[-1]["val_loss"])


def test_a_reader_gets_the_newer_checkpoint_when_its_own_is_swapped_out(tmp_path, monkeypatch):
    from tinyfbi import Model, ModelConfig
    from tinyfbi.formats import checkpoint
    from tinyfbi.formats.run_checkpoint import save_run_checkpoint

    config = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=16)
    old, new = Model(config, seed=1), Model(config, seed=2)

    def save(model, step):
        moments = {"step": step, "m": dict(model.params), "v": dict(model.params)}
        save_run_checkpoint(tmp_path, config, model.params, moments, {"step": step})

    save(old, 1)
    (tmp_path / "checkpoint").rename(tmp_path / ".checkpoint.old")   # a swap killed half-way
    real, calls = checkpoint.load_hf_state_dict, []

    def read_while_a_run_saves(folder):
        calls.append(folder)
        if len(calls) == 1:          # the run saves its next checkpoint as the reader starts
            save(new, 2)
        return real(folder)

    monkeypatch.setattr(checkpoint, "load_hf_state_dict", read_while_a_run_saves)
    _, params, _ = checkpoint.load_checkpoint(tmp_path)
    assert [f.name for f in calls] == [".checkpoint.old", "checkpoint"]
    for name, value in new.params.items():
        np.testing.assert_array_equal(params[name], value)


def test_a_checkpoint_past_the_shard_size_is_written_in_shards_and_reads_back(tmp_path):
    """Weights and moments stream into shards (rank 0 of a 7B run holds one, not the model); the
    loaders read the shards as one checkpoint."""
    from tinyfbi import Model, ModelConfig
    from tinyfbi.formats.checkpoint import load_checkpoint
    from tinyfbi.formats.run_checkpoint import load_trainer_state, save_run_checkpoint

    config = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=16)
    model = Model(config, seed=1)
    rng = np.random.default_rng(2)
    m = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in model.params.items()}
    v = {k: rng.random(v.shape).astype(np.float32) for k, v in model.params.items()}
    save_run_checkpoint(tmp_path, config, model.params, {"step": 7, "m": m, "v": v}, {"step": 7},
                        shard_bytes=20_000)
    folder = tmp_path / "checkpoint"
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1 and (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("optimizer-*-of-*.safetensors"))) > 1
    _, params, _ = load_checkpoint(tmp_path)
    state, opt = load_trainer_state(folder)
    assert state["step"] == opt["step"] == 7
    for name, value in model.params.items():
        np.testing.assert_array_equal(params[name], value)
        np.testing.assert_array_equal(opt["m"][name], m[name])
        np.testing.assert_array_equal(opt["v"][name], v[name])


def test_a_held_lock_raises_run_busy_which_reproduce_leaves_to_its_holder(tmp_path):
    """RunBusy (a TinyFBIError: one line for the user) is what a held lock raises, so that reproduce can
    tell "another invocation is training it" (leave it, collect it later) from any other error."""
    from tinyfbi.reproduce import busy
    from tinyfbi.training.run_lock import RunBusy, RunLock
    holder = hold_lock(tmp_path / "fbi-ad-s0")
    try:
        with pytest.raises(RunBusy, match=f"pid {holder.pid}"):
            RunLock(tmp_path / "fbi-ad-s0").acquire()
        assert busy(tmp_path / "fbi-ad-s0") and not busy(tmp_path / "fbi-ce-s0")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not busy(tmp_path / "fbi-ad-s0")                  # freed when its holder died
