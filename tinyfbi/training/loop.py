"""The one training loop, for both backends: steps, evaluation, checkpoints, spike rollback, metrics.

One step (FBI-LLM, arXiv 2407.07093, section 3.2): the student's loss against the teacher's softmax
at every position (`ad`), the next-token labels (`ce`) or lambda * ce + (1 - lambda) * ad (`mix`),
then clipping and AdamW. A loss that is NaN, or above `spike_factor` times its running mean,
reloads the last checkpoint and skips that batch (the paper's remedy for binary training spikes).

What differs between NumPy and torch is a `Learner` (training.backend; training.numpy_backend, torch_backend.learner):
its step, its save/restore of tensors. Everything here is plain Python shared by both.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..core.errors import TinyFBIError
from ..core.optim import OptimConfig, lr_at
from ..formats.atomic import atomic_write_bytes
from ..formats.run_checkpoint import resolve_checkpoint
from .backend import Learner

EMA = 0.95                       # running mean of the loss that spikes are judged against


@dataclass
class TrainConfig:
    steps: int = 400             # optimizer steps
    batch_size: int = 16         # sequences per optimizer step (the global batch)
    seq_len: int = 128
    loss: str = "ad"             # ad | ce | mix
    mix_lambda: float = 0.5      # weight of the label loss in `mix`
    eval_every: int = 100
    eval_batches: int = 16       # validation batches per evaluation (deterministic windows)
    save_every: int = 100
    spike_factor: float = 3.0    # a loss above this multiple of the running mean rolls back
    spike_warmup: int = 50       # steps before spikes are judged (the loss falls fast at first)
    track_flips: bool = False    # fraction of binarized latent weights whose sign changed, per step
    seed: int = 0


@dataclass
class LoopState:
    """The loop's counters, saved as trainer.json beside every checkpoint."""
    step: int = 0                                  # optimizer steps done
    data_step: int = 0                             # batches drawn, skipped ones included
    skipped: list[int] = field(default_factory=list)
    loss_ema: float | None = None
    rollbacks: int = 0

    def next_data_step(self) -> int:
        while self.data_step in self.skipped:
            self.data_step += 1
        return self.data_step

    def is_spike(self, loss: float, cfg: TrainConfig) -> bool:
        if not math.isfinite(loss):
            return True
        return self.step >= cfg.spike_warmup and self.loss_ema is not None and loss > cfg.spike_factor * self.loss_ema

    def advance(self, data_step: int, loss: float):
        self.step, self.data_step = self.step + 1, data_step + 1
        self.loss_ema = loss if self.loss_ema is None else EMA * self.loss_ema + (1 - EMA) * loss

    def to_json(self, cfg: TrainConfig) -> dict:
        return {**asdict(self), "seed": cfg.seed, "loss": cfg.loss, "batch_size": cfg.batch_size,
                "seq_len": cfg.seq_len}

    @classmethod
    def from_json(cls, saved: dict) -> "LoopState":
        return cls(saved["step"], saved["data_step"], list(saved["skipped"]), saved["loss_ema"],
                   saved.get("rollbacks", 0))

    @staticmethod
    def check_compatible(saved: dict, cfg: TrainConfig):
        """A checkpoint continues only the run it came from: same seed, batch, length and loss
        (training.setup.decide_resume asks this before any work is done)."""
        for key in ("seed", "batch_size", "seq_len", "loss"):
            if saved.get(key) != getattr(cfg, key):
                raise TinyFBIError(f"cannot resume: the checkpoint was trained with --{key.replace('_', '-')} "
                                   f"{saved.get(key)}, this run asks for {getattr(cfg, key)}")


class MetricsLog:
    """metrics.jsonl: one JSON row per optimizer step, written by the main process only."""

    def __init__(self, path, enabled=True):
        self.path, self.enabled = Path(path), enabled

    def append(self, row: dict):
        if self.enabled:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            except OSError as e:
                raise TinyFBIError(f"could not append step {row['step']} to {self.path} ({e.strerror or e}); "
                                   "the last checkpoint is intact: fix it, then rerun with --resume") from None

    def truncate(self, step: int):
        """Keep the rows up to `step` (a resumed or rolled-back run redoes the rest). Atomic: a kill
        leaves the old log or the new one, never a mix."""
        if self.enabled:
            rows = read_metrics(self.path) if self.path.exists() else []
            atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step).encode())


def read_metrics(path) -> list[dict]:
    """The rows of a metrics.jsonl; a last line cut short by a kill mid-append is left out."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise TinyFBIError(f"{path} line {i + 1} is not JSON: the metrics log is corrupted") from None
    return rows


def rollback(learner, state, cfg, run_dir, metrics, data_step, loss, log) -> LoopState:
    """Back to the last checkpoint, with the batch that spiked skipped from now on."""
    learner.drop_gradients()
    skipped, rollbacks, ema = sorted(set(state.skipped) | {data_step}), state.rollbacks + 1, state.loss_ema
    state = LoopState.from_json(learner.restore(resolve_checkpoint(run_dir)))
    state.skipped, state.rollbacks = skipped, rollbacks
    metrics.truncate(state.step)
    log(f"loss spike at step {state.step + 1} (loss {loss:.4g}, running mean "
        f"{ema if ema is not None else float('nan'):.4g}): rolled back to the checkpoint at "
        f"step {state.step} and skipped batch {data_step}")
    return state


class Loop:
    """One model's training, one optimizer step at a time: `step()` until `done`, then `finish()`.
    train() runs it alone; reproduction.lockstep runs several side by side, each exactly as alone.
    evaluate(model, batches) -> loss, sync() waits for the device (timing)."""

    def __init__(self, learner: Learner, evaluate, sync, cfg: TrainConfig, optim: OptimConfig, sampler, val_batches,
                 run_dir, desc="train", resume_from=None, is_main=True, log=print):
        self.learner, self.evaluate, self.sync, self.cfg, self.optim = learner, evaluate, sync, cfg, optim
        self.sampler, self.val_batches, self.run_dir, self.log = sampler, val_batches, run_dir, log
        self.metrics = MetricsLog(Path(run_dir) / "metrics.jsonl", enabled=is_main)
        if resume_from is not None:
            self.state = LoopState.from_json(learner.restore(resume_from))
            self.metrics.truncate(self.state.step)
            log(f"resumed {run_dir} at step {self.state.step}")
        else:
            self.state = LoopState()
            self.metrics.truncate(0)
            learner.save(self.state.to_json(cfg))          # step 0: a rollback always has somewhere to go
        self.bar = tqdm(total=cfg.steps, initial=self.state.step, desc=desc, unit="step", dynamic_ncols=True,
                        mininterval=1.0, disable=not is_main)
        self.val_loss, self.step_times = None, []

    @property
    def done(self) -> bool:
        return self.state.step >= self.cfg.steps

    def step(self):
        """One optimizer step (or one rollback after a spike), its metrics row, evaluation and checkpoint."""
        learner, cfg, state = self.learner, self.cfg, self.state
        t0 = time.perf_counter()
        data_step = state.next_data_step()
        x, y = self.sampler.batch(data_step)                                    # the global batch (B, T)
        windows = self.sampler.windows(data_step)                                # (B,) sequence ids
        before = learner.sign_masks() if cfg.track_flips else None
        loss = learner.forward_backward(x, y, windows)
        if state.is_spike(loss, cfg):
            self.state = rollback(learner, state, cfg, self.run_dir, self.metrics, data_step, loss, self.log)
            self.bar.n = self.state.step
            self.bar.refresh()
            return
        lr = lr_at(state.step, self.optim)
        row = {"step": state.step + 1, "loss": loss, "lr": lr, "grad_norm": learner.optimizer_step(lr)}
        state.advance(data_step, loss)
        if before is not None:
            row["flips"] = learner.flip_fractions(before)
        self.sync()
        self.step_times.append(time.perf_counter() - t0)
        row["tok_s"] = cfg.batch_size * cfg.seq_len / self.step_times[-1]
        if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
            self.val_loss = row["val_loss"] = self.evaluate(learner.model, self.val_batches())
        self.metrics.append(row)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{row['tok_s']:.0f}", lr=f"{lr:.2e}",
                             **({"val": f"{self.val_loss:.3f}"} if self.val_loss is not None else {}))
        if state.step % cfg.save_every == 0 or state.step == cfg.steps:
            learner.save(state.to_json(cfg))

    def run(self):
        """Every remaining step (the bar closed on errors too: one clean error line)."""
        try:
            while not self.done:
                self.step()
        finally:
            self.close()

    def close(self):
        self.bar.close()

    def finish(self) -> dict:
        """-> {val_loss, val_ppl, steps, rollbacks, step_times}."""
        self.close()
        if self.val_loss is None:
            self.val_loss = self.evaluate(self.learner.model, self.val_batches())
        return {"val_loss": self.val_loss, "val_ppl": math.exp(self.val_loss), "steps": self.state.step,
                "rollbacks": self.state.rollbacks, "step_times": self.step_times}


def train(learner: Learner, evaluate, sync, cfg: TrainConfig, optim: OptimConfig, sampler, val_batches,
          run_dir, desc="train", resume_from=None, is_main=True, log=print) -> dict:
    """Train to cfg.steps; evaluate(model, batches) -> loss, sync() waits for the device (timing).
    -> {val_loss, val_ppl, steps, rollbacks, step_times}."""
    loop = Loop(learner, evaluate, sync, cfg, optim, sampler, val_batches, run_dir, desc, resume_from, is_main, log)
    loop.run()
    return loop.finish()
