"""Runs trained in lockstep (reproduction.lockstep) against the same runs trained alone (training.run.run,
the `python -m tinyfbi.train` path): every logged loss and every final weight equal, bit for bit
(tolerance 0: the teacher's probabilities are a pure function of the batch, and the same NumPy
float32 operations run on the same arrays in the same order within each run). Also a group killed
mid-run and resumed, and a run rolled back after a spike while the others go on."""
import json

import numpy as np
import pytest
from conftest import metrics

from tinyfbi import load_model
from tinyfbi.core.errors import TinyFBIError
from tinyfbi.reproduction.lockstep import SharedTeacherBackend, train_lockstep
from tinyfbi.train import train
from tinyfbi.training import loop as loop_module
from tinyfbi.training.numpy_backend import NumpyLearner
from tinyfbi.training.run_lock import RunLock
from tinyfbi.training.spec import RunSpec

COMMON = dict(tokenizer="byte", batch_size=4, seq_len=32, eval_batches=1, eval_every=3, save_every=2,
              sample_tokens=2, seed=1)


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    s = train(RunSpec.build(**{**COMMON, "seed": 7}, data=str(corpus), data_dir=str(out / "data"), out=str(out), size="micro",
                            full_precision=True, teacher="none", steps=4, name="teacher"))
    return s["run"] + "/checkpoint", out / "data"


def arms(corpus, teacher, out, resume=False):
    """Four runs on one seed: two distilled at different budgets, the 0.5/0.5 mix (full precision), labels."""
    ckpt, data_dir = teacher
    base = dict(COMMON, data=str(corpus), data_dir=str(data_dir), out=str(out), size="micro", resume=resume)
    return [RunSpec.build(**base, name="fbi-ad", teacher=ckpt, steps=6, track_flips=True),
            RunSpec.build(**base, name="fp-mix", teacher=ckpt, loss="mix", full_precision=True, steps=4),
            RunSpec.build(**base, name="ternary-ad", teacher=ckpt, scaling="ternary", steps=5),
            RunSpec.build(**base, name="fbi-ce", teacher="none", loss="ce", steps=3)]


def assert_same_runs(a_out, b_out, names):
    for name in names:
        rows_a, rows_b = metrics(a_out / name / "metrics.jsonl"), metrics(b_out / name / "metrics.jsonl")
        assert [(r["step"], r["loss"], r["grad_norm"], r.get("val_loss"), r.get("flips")) for r in rows_a] == \
               [(r["step"], r["loss"], r["grad_norm"], r.get("val_loss"), r.get("flips")) for r in rows_b], name
        wa, wb = load_model(a_out / name / "checkpoint").params, load_model(b_out / name / "checkpoint").params
        assert wa.keys() == wb.keys()
        for k in wa:
            assert np.array_equal(wa[k], wb[k]), (name, k)
        sa = json.loads((a_out / name / "summary.json").read_text())
        sb = json.loads((b_out / name / "summary.json").read_text())
        assert sa["val_loss"] == sb["val_loss"] and sa["sample"] == sb["sample"], name


def test_lockstep_runs_equal_the_runs_trained_alone_and_share_one_teacher_forward_per_batch(corpus, teacher,
                                                                                           tmp_path):
    alone, together = tmp_path / "alone", tmp_path / "together"
    for spec in arms(corpus, teacher, alone):
        train(spec)
    backend = SharedTeacherBackend()
    locked = []

    def after(spec, summary):             # runs while the run's folder is still locked (another lock fails)
        try:
            RunLock(spec.run_dir).acquire().release()
            locked.append(False)
        except TinyFBIError:
            locked.append(summary["run"] == str(spec.run_dir))
    summaries = train_lockstep(arms(corpus, teacher, together), backend, after)
    assert [s["steps"] for s in summaries] == [6, 4, 5, 3] and locked == [True] * 4
    assert_same_runs(alone, together, ["fbi-ad", "fp-mix", "ternary-ad", "fbi-ce"])
    # three distilled runs, the longest 6 steps: 6 teacher forwards, not 6 + 4 + 5
    assert backend.teacher_forwards() == 6


def test_a_killed_lockstep_group_resumes_to_the_runs_trained_alone(corpus, teacher, tmp_path, monkeypatch):
    alone, together = tmp_path / "alone", tmp_path / "together"
    for spec in arms(corpus, teacher, alone):
        train(spec)
    calls = {"n": 0}
    real_step = loop_module.Loop.step

    def killed(self):                      # the process dies in its 9th step (after 2 rounds of 4 runs)
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        real_step(self)
    monkeypatch.setattr(loop_module.Loop, "step", killed)
    with pytest.raises(KeyboardInterrupt):
        train_lockstep(arms(corpus, teacher, together))
    monkeypatch.setattr(loop_module.Loop, "step", real_step)
    train_lockstep(arms(corpus, teacher, together, resume=True))
    assert_same_runs(alone, together, ["fbi-ad", "fp-mix", "ternary-ad", "fbi-ce"])


def test_a_spike_rolls_back_one_run_while_the_others_go_on(corpus, teacher, tmp_path, monkeypatch):
    real = NumpyLearner.forward_backward

    def spiking(self, x, y, windows):      # fbi-ad's batch 3 (0-based) is a NaN loss: it rolls back and skips it
        loss = real(self, x, y, windows)
        return float("nan") if self.run_dir.name == "fbi-ad" and spiking.step(self) == 3 else loss
    seen = {}

    def step_of(learner):
        seen[learner.run_dir] = seen.get(learner.run_dir, -1) + 1
        return seen[learner.run_dir]
    spiking.step = step_of
    alone, together = tmp_path / "alone", tmp_path / "together"
    monkeypatch.setattr(NumpyLearner, "forward_backward", spiking)
    for spec in arms(corpus, teacher, alone):
        train(spec)
    seen.clear()
    train_lockstep(arms(corpus, teacher, together))
    assert json.loads((together / "fbi-ad" / "summary.json").read_text())["rollbacks"] == 1
    assert_same_runs(alone, together, ["fbi-ad", "fp-mix", "ternary-ad", "fbi-ce"])
