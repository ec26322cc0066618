"""Scale-out on a CPU: `torchrun --nproc-per-node=2` with gloo, DDP and FSDP2, against one process.

Each rank takes half of the same global batch (the DDP run further in 2 micro-batches, --grad-accum
2), so the loss is the single-process loss; what differs is the order of float32 sums (gradients
averaged over ranks and micro-batches). Measured: within 1e-7 relative. That order can also move
one latent weight near zero to the other sign: once, a DDP run flipped one weight (of 2.6M)
differently at step 2, and its step-3 loss moved 3.5e-6 relative and its gradient norm 1e-4.
Bounds: loss 1e-5, gradient norm 1e-3, flip fraction 1e-4 absolute. The sharded run's checkpoint,
gathered on rank 0, is the ordinary format: it loads in NumPy (weights within 1e-5 of the
single-process run's) and resumes in both backends.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import metrics

from tinyfbi import load_model
from tinyfbi.train import main

REPO = Path(__file__).resolve().parents[1]
STEPS = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """The same 4-step run three ways: one process; 2 ranks with DDP, each rank's 4 rows in 2
    micro-batches (--grad-accum 2); 2 ranks with FSDP."""
    out = tmp_path_factory.mktemp("dist")
    flags = ["--backend", "torch", "--data", corpus, "--data-dir", out / "data", "--out", out, "--steps", STEPS,
             "--tokenizer", "byte", "--batch-size", 8, "--seq-len", 64, "--eval-every", 2, "--eval-batches", 1,
             "--sample-tokens", 2, "--loss", "ce", "--teacher", "none", "--lr", "1e-3", "--save-every", 2,
             "--track-flips"]
    flags = [str(f) for f in flags]
    main(flags + ["--name", "single"])
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    launched = {}
    for mode in ("off", "on"):  # both at once: most of a launch is four processes importing torch
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "tinyfbi.train", *flags, "--fsdp", mode, "--name", f"fsdp-{mode}",
               "--grad-accum", "2" if mode == "off" else "1"]
        launched[mode] = subprocess.Popen(cmd, env=env, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True)
    for mode, proc in launched.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        assert ("(FSDP)" if mode == "on" else "(DDP)") in stdout
    return out


@pytest.mark.parametrize("mode", ["off", "on"], ids=["ddp", "fsdp"])
def test_two_ranks_trace_the_single_process_run(runs, mode):
    single, multi = metrics(runs / "single" / "metrics.jsonl"), metrics(runs / f"fsdp-{mode}" / "metrics.jsonl")
    assert [r["step"] for r in multi] == list(range(1, STEPS + 1))
    for a, b in zip(single, multi):
        assert abs(a["loss"] - b["loss"]) / a["loss"] < 1e-5
        assert abs(a["grad_norm"] - b["grad_norm"]) / a["grad_norm"] < 1e-3
        assert abs(a["flips"]["all"] - b["flips"]["all"]) < 1e-4
        assert set(a["flips"]) == set(b["flips"])
    assert abs(single[-1]["val_loss"] - multi[-1]["val_loss"]) / single[-1]["val_loss"] < 1e-5


def test_sharded_checkpoint_loads_in_numpy_and_resumes_in_both_backends(runs, corpus):
    import shutil
    single, sharded = load_model(runs / "single"), load_model(runs / "fsdp-on")
    assert set(single.params) == set(sharded.params)
    for name, value in single.params.items():
        assert np.abs(value - sharded.params[name]).max() < 1e-5, name
    state = json.loads((runs / "fsdp-on" / "checkpoint" / "trainer.json").read_text())
    assert state["step"] == state["optimizer_step"] == STEPS
    for backend in ("numpy", "torch"):
        name = f"resumed-{backend}"
        shutil.copytree(runs / "fsdp-on", runs / name)
        main([str(f) for f in ["--backend", backend, "--resume", "--name", name, "--data", corpus, "--data-dir",
                               runs / "data", "--out", runs, "--steps", STEPS + 2, "--tokenizer", "byte",
                               "--batch-size", 8, "--seq-len", 64, "--eval-every", 2, "--eval-batches", 1,
                               "--sample-tokens", 2, "--loss", "ce", "--teacher", "none", "--lr", "1e-3"]])
    a, b = metrics(runs / "resumed-numpy" / "metrics.jsonl"), metrics(runs / "resumed-torch" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 3))
    assert abs(a[STEPS]["loss"] - b[STEPS]["loss"]) / a[STEPS]["loss"] < 1e-5
