"""The training pipeline end to end on a small real corpus (stdlib pydoc topics, byte tokenizer).

Bounds: a uniform byte model scores ln 256 = 5.55 nats; 40 steps of 8 x 64 bytes bring the
validation loss of teacher and student to ~3.07 (measured), so both must end below 3.5.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import metrics, poison_batch

from tinyfbi import Model, ModelConfig, save_model
from tinyfbi.train import main

REPO = Path(__file__).resolve().parents[1]
SMALL_RUN = ["--tokenizer", "byte", "--batch-size", "8", "--seq-len", "64", "--eval-every", "20",
             "--eval-batches", "4", "--sample-tokens", "8"]


def run(*argv, expect_exit=None):
    if expect_exit is None:
        return main([str(a) for a in argv])
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == expect_exit


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    summary = run("--data", corpus, "--data-dir", out / "data", "--out", out, "--steps", 40,
                  "--save-every", 20, *SMALL_RUN)
    return out, summary


def test_end_to_end_distillation_learns(trained):
    out, summary = trained
    assert summary["val_loss"] < 3.5 and summary["teacher_val_loss"] < 3.5
    assert summary["binarized"] and summary["loss"] == "ad" and summary["rollbacks"] == 0
    run_dir = out / "tiny-ad"
    for name in ("loss.png", "metrics.jsonl", "summary.json", "checkpoint/model.safetensors",
                 "checkpoint/config.json", "checkpoint/optimizer.safetensors", "checkpoint/trainer.json"):
        assert (run_dir / name).is_file(), name
    rows = metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert {"loss", "lr", "tok_s", "grad_norm"} <= set(rows[0]) and "val_loss" in rows[-1]
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    cfg = json.loads((run_dir / "checkpoint/config.json").read_text())
    assert cfg["fbi"]["tokenizer"]["kind"] == "byte" and cfg["fbi"]["loss"] == "ad"


def test_second_run_reuses_the_cached_teacher(trained, corpus, capsys):
    out, _ = trained
    run("--data", corpus, "--data-dir", out / "data", "--out", out, "--steps", 40, "--name", "again",
        "--loss", "mix", *SMALL_RUN)
    assert "teacher: reusing" in capsys.readouterr().out


def test_generate_cli_greedy_is_deterministic(trained, capsys):
    from tinyfbi.generate import main as generate_main
    out, _ = trained
    texts = []
    for _ in range(2):
        generate_main(["--ckpt", str(out / "tiny-ad"), "--prompt", "The ", "--greedy", "--max-new-tokens", "12"])
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("The ")


def test_teacher_cache_sparse_distillation(trained, corpus, tmp_path, capsys):
    # the cache covers every window of the training split once: a 60 kB slice keeps that quick
    out, _ = trained
    small = tmp_path / "small.txt"
    small.write_text(corpus.read_text()[:60_000])
    teacher = next(out.glob("teacher-*/checkpoint"))
    summary = run("--data", small, "--data-dir", tmp_path / "data", "--out", tmp_path, "--steps", 40,
                  "--name", "cached", "--teacher", teacher, "--teacher-cache", 32, *SMALL_RUN)
    # top-32 of a weak 40-step byte teacher holds ~85% of its mass; the student still learns
    # (measured ~3.3 nats; uniform is 5.55)
    assert summary["val_loss"] < 4.0
    (cache,) = (tmp_path / "teacher-caches").glob("teacher-*")
    idx = np.load(cache / "idx.npy", mmap_mode="r")
    assert idx.shape[1:] == (64, 32)
    assert capsys.readouterr().out.count("teacher cache: top-32") == 1
    (val_memo,) = (tmp_path / "teacher-caches").glob("val-*.json")
    memo_time = val_memo.stat().st_mtime_ns
    # a second run on the same teacher, data and sequence length reads the same cache and the teacher's
    # validation loss from the first, computes neither
    again = run("--data", small, "--data-dir", tmp_path / "data", "--out", tmp_path, "--steps", 2,
                "--name", "cached-again", "--teacher", teacher, "--teacher-cache", 32, *SMALL_RUN, "--sample-tokens", 0)
    printed = capsys.readouterr().out
    assert "teacher cache: top-32" not in printed
    assert "prompt:" not in printed and "sample" not in again            # --sample-tokens 0: no samples
    assert [p.name for p in (tmp_path / "teacher-caches").glob("teacher-*")] == [cache.name]
    assert again["teacher_val_loss"] == summary["teacher_val_loss"] and val_memo.stat().st_mtime_ns == memo_time


def test_nan_loss_rolls_back_and_skips_the_batch(corpus, tmp_path, monkeypatch, capsys):
    from tinyfbi.training.numpy_backend import NumpyLearner
    poison_batch(monkeypatch, NumpyLearner, data_step=7)
    summary = run("--data", corpus, "--data-dir", tmp_path / "data", "--out", tmp_path, "--steps", 12,
                  "--loss", "ce", "--teacher", "none", "--save-every", 5, *SMALL_RUN)
    assert summary["rollbacks"] == 1 and np.isfinite(summary["val_loss"])
    assert "rolled back to the checkpoint at step 5 and skipped batch 7" in capsys.readouterr().out
    rows = metrics(tmp_path / "tiny-ce" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    state = json.loads((tmp_path / "tiny-ce" / "checkpoint" / "trainer.json").read_text())
    assert state["skipped"] == [7] and state["data_step"] == 13


def cli(*argv, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "tinyfbi.train", *map(str, argv)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_after_sigkill_equals_uninterrupted_run(corpus, tmp_path):
    args = ["--data", corpus, "--data-dir", tmp_path / "data", "--steps", 30, "--save-every", 10,
            "--loss", "ce", "--teacher", "none", *SMALL_RUN]
    whole = cli(*args, "--out", tmp_path / "a", cwd=tmp_path)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    killed = cli(*args, "--out", tmp_path / "b", cwd=tmp_path)
    state = tmp_path / "b" / "tiny-ce" / "checkpoint" / "trainer.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a mid-run checkpoint (step 10 or 20) exists
        if state.is_file() and json.loads(state.read_text())["step"] >= 10:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL  # it really died mid-run
    assert json.loads(state.read_text())["step"] < 30
    resumed = cli(*args, "--out", tmp_path / "b", "--resume", cwd=tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = metrics(tmp_path / "a" / "tiny-ce" / "metrics.jsonl")
    b = metrics(tmp_path / "b" / "tiny-ce" / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 31))
    assert b[-1]["loss"] == a[-1]["loss"] and b[-1]["val_loss"] == a[-1]["val_loss"]  # bit-exact


# --------------------------------------------------------------------------- bad input


def expect_error(capsys, *argv, message):
    run(*argv, expect_exit=2)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert message in err, err


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"caf\xe9 au lait\n" * 10, "not UTF-8"),
    (b"too short", "shorter than one sequence"),
])
def test_bad_corpus(tmp_path, capsys, content, message):
    path = tmp_path / "c.txt"
    path.write_bytes(content)
    expect_error(capsys, "--data", path, "--data-dir", tmp_path, "--out", tmp_path, "--loss", "ce",
                 "--teacher", "none", *SMALL_RUN, message=message)
    assert not (tmp_path / "tiny-ce").exists()


def test_missing_corpus(tmp_path, capsys):
    expect_error(capsys, "--data", tmp_path / "nope.txt", "--out", tmp_path, message="nope.txt")


@pytest.mark.parametrize("flags,message", [
    (["--steps", "0"], "--steps must be positive"),
    (["--lr", "3"], "--lr must lie in"),
    (["--loss", "ad", "--teacher", "none"], "distills a teacher"),
    (["--teacher-cache", "-1"], "--teacher-cache must be >= 0"),
    (["--sample-tokens", "-1"], "--sample-tokens must be >= 0"),
])
def test_bad_flag_values(tmp_path, capsys, flags, message):
    expect_error(capsys, "--out", tmp_path, *flags, message=message)


def test_unknown_flag_is_one_line(capsys):
    run("--bogus", expect_exit=2)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--bogus" in err


def test_existing_run_is_not_overwritten_and_corrupt_checkpoint_refused(trained, corpus, capsys):
    out, _ = trained
    weights = out / "tiny-ad" / "checkpoint" / "model.safetensors"
    before = weights.read_bytes()
    expect_error(capsys, "--data", corpus, "--data-dir", out / "data", "--out", out, *SMALL_RUN,
                 message="already holds a run")
    assert weights.read_bytes() == before
    broken = out / "broken"
    (broken / "checkpoint").mkdir(parents=True)
    for f in (out / "tiny-ad" / "checkpoint").iterdir():
        (broken / "checkpoint" / f.name).write_bytes(f.read_bytes())
    (broken / "checkpoint" / "model.safetensors").write_bytes(before[:1000])
    expect_error(capsys, "--data", corpus, "--data-dir", out / "data", "--out", out, "--name", "broken",
                 "--steps", 40, "--resume", *SMALL_RUN, message="truncated or corrupted")


def test_teacher_with_another_vocabulary_is_refused(trained, corpus, tmp_path, capsys):
    save_model(Model(ModelConfig(vocab_size=300)), tmp_path / "t")
    (tmp_path / "t" / "config.json").write_text(
        (tmp_path / "t" / "config.json").read_text().replace('"tokenizer": null', '"tokenizer": {"kind": "byte"}'))
    expect_error(capsys, "--data", corpus, "--data-dir", tmp_path / "data", "--out", tmp_path,
                 "--teacher", tmp_path / "t", *SMALL_RUN, message="vocabulary 300")
