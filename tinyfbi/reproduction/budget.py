"""What the plan costs on this machine, from step times measured here (`python -m tinyfbi.reproduce --estimate`).

Each kind of step the plan takes is timed on random tokens at the plan's batch and vocabulary, the
fastest of a few repetitions (an estimate for an idle machine): the teacher's training step, its
forward and softmax (what a distilled step pays for), every arm's own step (forward, loss, backward,
AdamW, and the sign masks of an arm that tracks flip-flops) and a validation pass per size. The plan's
time is then counted two ways: every arm alone (each distilled step pays the teacher's forward), and
in lockstep as `python -m tinyfbi.reproduce` trains (one teacher forward per batch of a seed's group).
Samples and checkpoints are not counted.
"""
from __future__ import annotations

import time

import numpy as np

from ..core import layers as L
from ..core.binarize import positive_mask
from ..core.config import ModelConfig
from ..core.model import Model
from ..core.optim import AdamW, OptimConfig
from ..training.numpy_backend import loss_and_dlogits
from .plan import ARMS_BY_NAME, size_config


def fastest(fn, repeats) -> float:
    """Seconds of fn(), the fastest of `repeats` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def arm_config(plan, arm) -> ModelConfig:
    config = size_config(arm.size, plan.vocab_size, binarized="full_precision" not in arm.fields)
    return config.replace(scaling=arm.fields.get("scaling", "column")) if config.binarized else config


def step_time(config, loss, probs, x, y, flips, repeats) -> float:
    """One optimizer step of a model of `config` on (x, y): forward, loss, backward, AdamW (and the sign masks
    before it when flips are tracked)."""
    model = Model(config, seed=0)
    opt = AdamW(model.params, OptimConfig(total_steps=10))

    def step():
        if flips:
            [positive_mask(model.params[n]) for n in model.binarized_names]
        _, dlogits = loss_and_dlogits(loss, model.forward(x), y, probs, 0.5)
        opt.step(model.params, model.backward(dlogits), 1e-4)
    return fastest(step, repeats)


def measure(plan, names, repeats=3) -> dict:
    """Seconds per step of the teacher (training, forward) and of every named arm, and per validation pass."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, plan.vocab_size, (plan.batch_size, plan.seq_len))            # (B, T)
    y = rng.integers(0, plan.vocab_size, (plan.batch_size, plan.seq_len))
    teacher_config = ModelConfig.from_name(plan.teacher, vocab_size=plan.vocab_size, binarized=False)
    teacher = Model(teacher_config, seed=0)
    probs = L.softmax(teacher.forward(x)).astype(np.float32)                         # (B, T, V)
    out = {"teacher_step_s": step_time(teacher_config, "ce", None, x, y, False, repeats),
           "teacher_forward_s": fastest(lambda: L.softmax(teacher.forward(x)), repeats), "arm_step_s": {},
           "eval_s": {}}
    teacher.drop_caches()
    for name in names:
        arm = ARMS_BY_NAME[name]
        loss = arm.fields.get("loss", "ce" if not arm.distilled else "ad")
        out["arm_step_s"][name] = step_time(arm_config(plan, arm), loss, probs if arm.distilled else None, x, y,
                                            arm.track_flips, repeats)
    for size in sorted({ARMS_BY_NAME[n].size for n in names}):
        model = Model(size_config(size, plan.vocab_size), seed=0)
        out["eval_s"][size] = plan.eval_batches * fastest(lambda: model.forward(x), repeats)
        model.drop_caches()
    return out


def estimate(plan, seeds_by_arm, times) -> dict:
    """The plan's seconds, alone and in lockstep, from measure()'s times: the teacher's training, then every
    seed's arms; `fp` first, alone, and every other arm of the seed in one lockstep group."""
    teacher_s = plan.teacher_steps * times["teacher_step_s"]
    alone = lockstep = 0.0
    for seed in sorted({s for v in seeds_by_arm.values() for s in v}):
        group = [n for n in seeds_by_arm if seed in seeds_by_arm[n]]
        distilled_steps = [plan.arm_steps(ARMS_BY_NAME[n]) for n in group if ARMS_BY_NAME[n].distilled]
        own = sum(plan.arm_steps(ARMS_BY_NAME[n]) * times["arm_step_s"][n]
                  + (plan.arm_steps(ARMS_BY_NAME[n]) // min(plan.eval_every, plan.arm_steps(ARMS_BY_NAME[n])) + 1)
                  * times["eval_s"][ARMS_BY_NAME[n].size] for n in group)
        alone += own + sum(distilled_steps) * times["teacher_forward_s"]
        lockstep += own + max(distilled_steps, default=0) * times["teacher_forward_s"]
    return {"teacher_s": teacher_s, "alone_s": teacher_s + alone, "lockstep_s": teacher_s + lockstep,
            "students_alone_s": alone, "students_lockstep_s": lockstep}
