"""--fake-step: the planned training step run on fake tensors under PyTorch's memory tracker.

At a small shape (the `micro` preset, 4 x 64 tokens) so that each case takes seconds. The paper's
shapes run as the command (docs/scaling.md has their table beside the plan)."""
import json
import math
from functools import lru_cache

import pytest

from tinyfbi.core.config import ModelConfig
from tinyfbi.torch_backend.fake_step import measure_step
from tinyfbi.torch_backend.planner import plan, plan_models
from tinyfbi.train import main
from tinyfbi.training.spec import RunSpec

SMALL = dict(backend="torch", size="micro", dry_run=True, batch_size=4, seq_len=64, activation_checkpointing="on")
CASES = {"single": dict(world_size=1), "ddp": dict(world_size=2), "fsdp": dict(world_size=2, fsdp="on")}


@lru_cache(maxsize=None)   # each case runs once per session, for every test that reads it
def measured(case, fake=True):
    spec = RunSpec.build(**SMALL, **CASES[case])
    p = plan(spec)
    config, teacher, _ = plan_models(spec)
    return p, measure_step(spec, p, config, teacher, fake=fake)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fake_tensors_are_accounted_as_the_same_step_on_real_ones(case):
    """The oracle: the same step on real (uninitialized) CPU tensors, same tracker. Fake tensors must
    not change what the step allocates: every part, at the peak and at its own peak, to the byte."""
    p, fake = measured(case)
    assert p["parallel"] == case
    _, real = measured(case, fake=False)
    assert fake["at_peak"] == real["at_peak"] and fake["part_peaks"] == real["part_peaks"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_tracker_counts_weights_gradients_and_moments_of_every_parameter(case):
    """Exact bytes from the core's own parameter shapes (core.config, no torch): float32 weights,
    gradients and two AdamW moments of every parameter, the bf16 teacher; under FSDP on 2 ranks,
    rank 0's shard of each tensor, ceil(rows / 2) of its rows (a (1, in) alpha or beta stays whole
    there). AdamW's foreach step (CUDA's default) holds sqrt(v) for every parameter; the moments
    carry AdamW's step counters too (4 bytes per tensor)."""
    p, m = measured(case)
    split = 2 if case == "fsdp" else 1
    shapes = ModelConfig.from_name("micro", vocab_size=p["config"]["vocab_size"]).param_shapes().values()
    n = sum(-(-s[0] // split) * math.prod(s[1:]) for s in shapes)               # rank 0's elements
    parts = m["part_peaks"]
    assert parts["weights"] == 4 * n and parts["gradients"] == 4 * n
    assert parts["optimizer"] == 8 * n + 4 * len(shapes)
    assert parts["optimizer_step"] == 4 * n
    teacher = ModelConfig.from_name("micro", binarized=False).num_params()   # --teacher auto: the same size
    assert m["at_peak"]["teacher"] >= 2 * teacher // split
    assert m["at_peak"]["total"] == sum(v for k, v in m["at_peak"].items()
                                        if k not in ("total", "teacher_forward", "activations_and_loss"))


def test_flops_per_token_from_the_counter_match_the_mfu_formula():
    """FlopCounterMode (torch's formulas for every matmul and for attention) against the plan's
    6 N + 12 L C T (student) + 2 N + 4 L C T (teacher): within 5%, the issue's bound (the counter
    sees the same matmuls; what differs is the formula's rounding of attention to full T^2 blocks)."""
    p, m = measured("single")
    assert m["flops_per_token"] == pytest.approx(p["flops_per_token"]["total"], rel=0.05)


def test_accumulated_micro_batches_hold_the_gradients_beside_the_next_forward():
    """With accumulation (4 micro-batches of 2 rows) the second micro-batch's forward runs beside the
    first's gradients: the peak holds all of them, and the same step without accumulation (its one
    micro-batch, twice the rows) holds none at its peak (AdamW set them to None)."""
    spec = RunSpec.build(**{**SMALL, "batch_size": 8}, world_size=1, micro_batch=2)
    p = plan(spec)
    config, teacher, _ = plan_models(spec)
    m = measure_step(spec, p, config, teacher)
    assert p["grad_accum"] == 4 and m["micro_batches"] == 2
    assert m["at_peak"]["gradients"] == m["part_peaks"]["gradients"] > 0
    _, alone = measured("single")
    assert alone["at_peak"]["gradients"] == 0


def test_the_command_adds_the_measured_parts_to_the_plan(capsys):
    main(["--backend", "torch", "--size", "micro", "--dry-run", "--world-size", "2", "--fsdp", "on",
          "--batch-size", "4", "--seq-len", "64", "--activation-checkpointing", "on", "--fake-step", "--json"])
    p = json.loads(capsys.readouterr().out)
    assert "total" in p["measured_gib_per_gpu"] and set(p["measured_gib_per_gpu"]) <= set(p["memory_gib_per_gpu"])
    assert p["fake_step"]["tracker"] == "FSDPMemTracker" and p["fake_step"]["steps"] == 2
    ratio = p["fake_step"]["ratio_to_plan"]
    assert ratio["total"] == pytest.approx(p["measured_gib_per_gpu"]["total"] / p["phases_gib_per_gpu"]["peak"])


@pytest.mark.parametrize("flags,message", [
    (["--fake-step"], "--fake-step checks a plan"),
    (["--dry-run", "--fake-step", "--cpu-offload"], "does not model --cpu-offload"),
])
def test_bad_combinations_end_in_one_line(capsys, flags, message):
    with pytest.raises(SystemExit):
        main(["--backend", "torch", "--size", "micro", "--batch-size", "4", "--seq-len", "64", *flags])
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
