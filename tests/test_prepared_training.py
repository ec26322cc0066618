"""Training on a prepared folder (python -m tinyfbi.prepare): exact resume across ranks.

The folder holds Amber-layout rows of 33 ids whose first two ids are the row's own index, so the
recorder (tests/record_batches.py) sees which sequences each process reads. A 2-rank gloo run is
killed with SIGKILL mid-epoch and resumed on 2 ranks, and on 1: against the uninterrupted 2-rank
run, every step reads the same global batch, every training row is read exactly once in epoch 0
and at most once in the partial epoch 1, and no validation row is ever read. Losses: the 2-rank
resume is bit-exact (same processes, same sums); the 1-process resume sums in another order,
bound 1e-5 relative as in tests/test_distributed.py.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest
from conftest import metrics

from tinyfbi import Model, ModelConfig, save_model
from tinyfbi.core.errors import TinyFBIError
from tinyfbi.corpus.tokenizers import ByteTokenizer, SentencePieceTokenizer
from tinyfbi.formats.run_checkpoint import resolve_checkpoint
from tinyfbi.prepare import main as prepare
from tinyfbi.train import main

REPO = Path(__file__).resolve().parents[1]
ROWS, ROW_LEN, VOCAB, VAL_EVERY = 120, 33, 512, 10     # rows 9, 19, ... are held out: 108 train rows
STEPS, BATCH = 24, 8                                   # 192 positions: epoch 0 whole, 84 of epoch 1
TRAIN_ROWS = {i for i in range(ROWS) if i % VAL_EVERY != VAL_EVERY - 1}
TEXT = "\n".join(topics.values())

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def indexed_rows(path):
    """Rows whose ids 0 and 1 give their index (i % 256, i // 256); the rest seeded noise."""
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(ROWS):
            ids = [i % 256, i // 256] + rng.integers(0, VOCAB, ROW_LEN - 2).tolist()
            f.write(json.dumps({"token_ids": ids}) + "\n")
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    prepare([str(indexed_rows(root / "rows.jsonl")), "--out", str(root / "data"), "--vocab-size", str(VOCAB),
             "--val-every", str(VAL_EVERY), "--shard-mb", "1", "--workers", "1", "--no-progress"])
    return root / "data"


def flags(data, out, name):
    # --head-loss unfused: the 1e-5 bound between 2 ranks and 1 process below is the whole-logits head's;
    # the fused head (the default) rounds its gradients elsewhere and measured 1.07e-5 at step 24 here
    # (tests/test_torch_loss_paths.py holds fused against unfused)
    return [str(f) for f in ["--backend", "torch", "--data", data, "--out", out, "--name", name, "--steps", STEPS,
                             "--batch-size", BATCH, "--seq-len", ROW_LEN - 1, "--loss", "ce", "--teacher", "none",
                             "--lr", "1e-3", "--save-every", 4, "--eval-every", 12, "--eval-batches", 1,
                             "--sample-tokens", 2, "--head-loss", "unfused"]]


def launch(args, record_dir, cwd):
    """torchrun with 2 gloo ranks, in a session of its own (so that one SIGKILL takes every process)."""
    record_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", RECORD_DIR=str(record_dir))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(REPO / "tests" / "record_batches.py"), *args]
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def global_batches(record_dir) -> dict:
    """step -> the global batch's row indices, from the last record of each row (a resumed run redoes
    the steps after its checkpoint; what counts is what the finished run trained on)."""
    rows = {}
    for path in sorted(Path(record_dir).glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:      # the line a SIGKILL cut short
                continue
            for r, index in zip(range(*rec["rows"]), rec["index"]):
                rows.setdefault(rec["step"], {})[r] = index
    return {step: [got[r] for r in range(BATCH)] for step, got in rows.items() if len(got) == BATCH}


def test_sigkilled_two_rank_run_resumes_exactly_on_two_ranks_and_on_one(prepared, tmp_path, monkeypatch):
    whole = launch(flags(prepared, tmp_path / "a", "run"), tmp_path / "rec-a", tmp_path)
    killed = launch(flags(prepared, tmp_path / "b", "run"), tmp_path / "rec-b", tmp_path)
    def step_saved():  # the checkpoint may be mid-swap (only .checkpoint.old there) at any read
        try:
            return json.loads((resolve_checkpoint(tmp_path / "b" / "run") / "trainer.json").read_text())["step"]
        except (TinyFBIError, FileNotFoundError, ValueError):
            return -1

    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None:
        if step_saved() >= 4:
            break
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)                # the launcher and both ranks at once
    killed.wait()
    at_kill = step_saved()
    assert 4 <= at_kill < STEPS                          # it really died mid-run
    shutil.copytree(tmp_path / "b", tmp_path / "c")      # the same state, to resume on one process
    shutil.copytree(tmp_path / "rec-b", tmp_path / "rec-c")
    resumed = launch([*flags(prepared, tmp_path / "b", "run"), "--resume"], tmp_path / "rec-b", tmp_path)
    for proc in (whole, resumed):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]

    sys.path.insert(0, str(REPO / "tests"))
    import record_batches
    monkeypatch.setattr(record_batches.BatchSampler, "batch", record_batches.BatchSampler.batch)
    record_batches.install(tmp_path / "rec-c")            # this process is rank 0 of a world of 1
    monkeypatch.delenv("RANK", raising=False)
    record_batches.main([*flags(prepared, tmp_path / "c", "run"), "--resume"])

    a, b, c = (metrics(tmp_path / x / "run" / "metrics.jsonl") for x in "abc")
    assert [r["step"] for r in b] == [r["step"] for r in c] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in b] == [r["loss"] for r in a]                      # bit-exact
    assert b[-1]["val_loss"] == a[-1]["val_loss"]
    for ra, rc in zip(a, c):
        assert abs(ra["loss"] - rc["loss"]) / ra["loss"] < 1e-5

    batches = {x: global_batches(tmp_path / f"rec-{x}") for x in "abc"}
    assert sorted(batches["a"]) == list(range(STEPS))
    assert batches["b"] == batches["a"] and batches["c"] == batches["a"]        # any world size, same batches
    stream = [i for step in range(STEPS) for i in batches["a"][step]]
    epoch0, epoch1 = stream[:len(TRAIN_ROWS)], stream[len(TRAIN_ROWS):]
    assert sorted(epoch0) == sorted(TRAIN_ROWS)                                 # each once, no val row
    assert len(set(epoch1)) == len(epoch1) and set(epoch1) <= TRAIN_ROWS
    assert epoch1 != epoch0[:len(epoch1)]                                       # a new order


def test_numpy_backend_trains_on_the_folder_and_samples_print_as_ids(prepared, tmp_path):
    summary = main([*flags(prepared, tmp_path, "np"), "--backend", "numpy", "--steps", "2", "--eval-every", "2"])
    assert summary["tokenizer"] == f"ids{VOCAB}" and summary["data"] == f"prepared:{prepared.resolve()}"
    assert all(word.isdigit() for word in summary["sample"].split())
    assert summary["val_loss"] < np.log(VOCAB) + 0.5                  # near uniform after 2 steps, no worse


@pytest.mark.parametrize("extra,message", [
    (["--seq-len", "40"], "rows of 33 ids are shorter than --seq-len 40 + 1"),
    (["--vocab-size", "256"], f"prepared with a {VOCAB}-id vocabulary; --vocab-size 256 differs"),
    (["--teacher", "TEACHER", "--loss", "ad"], "was prepared with tokenizer ids512, the teacher"),
])
def test_a_folder_that_does_not_fit_the_model_is_one_line(prepared, tmp_path, capsys, extra, message):
    teacher = tmp_path / "teacher"
    save_model(Model(ModelConfig(vocab_size=256, binarized=False), seed=0), teacher, ByteTokenizer())
    argv = [*flags(prepared, tmp_path, "bad"), "--backend", "numpy", *extra]     # the last --flag counts
    argv = [str(teacher) if a == "TEACHER" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_a_teacher_with_the_rows_tokenizer_distills_and_lends_it(prepared, tmp_path):
    """As the paper: Amber's ids (no tokenizer in the folder) and LLaMA-2-7B, whose tokenizer made them."""
    teacher = tmp_path / "teacher"
    tok = SentencePieceTokenizer.train(TEXT, VOCAB)
    save_model(Model(ModelConfig(vocab_size=VOCAB, binarized=False), seed=0), teacher, tok)
    summary = main([*flags(prepared, tmp_path, "ad"), "--backend", "numpy", "--steps", "2", "--eval-every", "2",
                    "--teacher", str(teacher), "--loss", "ad"])
    assert summary["loss"] == "ad" and summary["tokenizer"] == tok.key            # samples decode as text
    assert np.isfinite(summary["val_loss"]) and np.isfinite(summary["teacher_val_loss"])
