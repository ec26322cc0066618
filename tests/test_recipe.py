"""--recipe paper: the authors' batch, schedule and token budget, and the planner's micro-batch.

The oracle is the authors' own numbers, written out here from their sbatch_train.sh (nodes x GPUs
per node x per-device batch x accumulation) and fully_qat.py (lr 3e-4 cosine to 3e-5, 2000 warmup
steps from 0), not tinyfbi's recipe table.
"""
import json
import math

import pytest

from tinyfbi.core.optim import lr_at
from tinyfbi.train import build_parser, main, spec_from_flags
from tinyfbi.training.setup import optim_config

AUTHORS_BATCH = {"130m": 1 * 4 * 32 * 8, "1.3b": 4 * 4 * 18 * 4, "7b": 8 * 4 * 6 * 10}


def dry_run(capsys, *flags):
    main(["--backend", "torch", "--recipe", "paper", "--teacher", "none", "--loss", "ce", "--dry-run", "--json",
          *map(str, flags)])
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("size", sorted(AUTHORS_BATCH))
@pytest.mark.parametrize("world", [1, 8, 64])
def test_paper_recipe_plans_the_authors_batch_at_any_world_size(capsys, size, world):
    p = dry_run(capsys, "--size", size, "--world-size", world)
    assert p["batch_size"] == AUTHORS_BATCH[size] and p["seq_len"] == 2048
    assert p["world_size"] * p["micro_batch_per_gpu"] * p["grad_accum"] == AUTHORS_BATCH[size]
    assert p["tokens_per_step"] == AUTHORS_BATCH[size] * 2048
    assert p["budget"]["steps"] == math.ceil(1.26e12 / (AUTHORS_BATCH[size] * 2048))
    if size == "7b" and world == 1:   # 7B's weights and AdamW state alone are 100 GiB: no micro-batch fits
        assert not p["fits_device"] and p["micro_batch_per_gpu"] == 1
        return
    assert p["fits_device"] and p["memory_gib_per_gpu"]["total"] <= 0.9 * 80     # 10% of the GPU left free
    # the largest micro-batch that fits: the next one up (if the rank's rows allow one) does not
    per_rank = AUTHORS_BATCH[size] // world
    bigger = [m for m in range(p["micro_batch_per_gpu"] + 1, per_rank + 1) if per_rank % m == 0]
    if bigger:
        q = dry_run(capsys, "--size", size, "--world-size", world, "--micro-batch", bigger[0])
        assert q["memory_gib_per_gpu"]["total"] > 0.9 * 80


@pytest.mark.parametrize("head_loss", ["fused", "unfused"])
@pytest.mark.parametrize("gpu_gib", [24, 80, 141])
def test_no_plan_that_fits_uses_more_than_90_percent_of_the_device(capsys, head_loss, gpu_gib):
    for size in ("130m", "1.3b", "7b"):
        for world in (1, 8, 64):
            p = dry_run(capsys, "--size", size, "--world-size", world, "--gpu-gib", gpu_gib, "--head-loss", head_loss)
            used = p["memory_gib_per_gpu"]["total"] / gpu_gib
            assert p["fits_device"] == (used <= 0.9), (size, world, used)


def test_the_fused_head_loss_frees_the_logits_for_larger_micro_batches(capsys):
    fused = dry_run(capsys, "--size", "130m", "--world-size", 8)
    unfused = dry_run(capsys, "--size", "130m", "--world-size", 8, "--head-loss", "unfused")
    assert fused["memory_gib_per_gpu"]["logits_and_loss"] < unfused["memory_gib_per_gpu"]["logits_and_loss"] / 4
    assert fused["micro_batch_per_gpu"] > unfused["micro_batch_per_gpu"]


def test_paper_schedule_warms_up_from_zero_then_cosine_to_a_tenth():
    spec = spec_from_flags(build_parser().parse_args(["--backend", "torch", "--size", "130m", "--recipe", "paper"]))
    cfg = optim_config(spec)
    assert lr_at(0, cfg) == 0.0 and lr_at(1000, cfg) == pytest.approx(1.5e-4) and lr_at(2000, cfg) == pytest.approx(3e-4)
    assert lr_at(spec.steps, cfg) == pytest.approx(3e-5)
    assert (cfg.weight_decay, cfg.beta1, cfg.beta2, cfg.grad_clip) == (0.1, 0.9, 0.95, 1.0)
    plain = optim_config(spec_from_flags(build_parser().parse_args(["--warmup", "10", "--steps", "100"])))
    assert lr_at(0, plain) == pytest.approx(2e-3 / 10)           # tinyfbi's own schedule is unchanged


def test_explicit_flags_win_and_misuse_is_one_line(capsys):
    p = dry_run(capsys, "--size", "1.3b", "--batch-size", 64, "--steps", 10, "--world-size", 2, "--grad-accum", 4)
    assert (p["batch_size"], p["budget"]["steps"], p["grad_accum"], p["micro_batch_per_gpu"]) == (64, 10, 4, 8)
    for flags, message in [(["--size", "tiny", "--recipe", "paper"], "--size tiny has none"),
                           (["--size", "130m", "--recipe", "paper"], "add --backend torch"),
                           (["--tokens", "1e9"], "--tokens plans a token budget for --recipe paper"),
                           (["--backend", "torch", "--size", "130m", "--recipe", "paper", "--dry-run",
                             "--micro-batch", "3"], "does not divide"),
                           (["--backend", "torch", "--size", "7b", "--recipe", "paper", "--teacher", "none",
                             "--loss", "ce", "--gpu-gib", "8", "--data", "nowhere"], "even one sequence per GPU")]:
        with pytest.raises(SystemExit) as e:
            main(flags)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and message in err, (flags, err)
