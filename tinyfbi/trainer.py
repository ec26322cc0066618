"""The NumPy training loop: autoregressive distillation of an FBI student (or plain LM training).

One step (FBI-LLM, arXiv 2407.07093, section 3.2): the teacher's softmax at every position is the
target of the student's cross-entropy (`ad`); `ce` uses the next-token labels; `mix` is
lambda * ce + (1 - lambda) * ad. Then clipping and AdamW. Around it: evaluation, metrics.jsonl,
atomic checkpoints with optimizer state and data position, resume, and rollback on loss spikes
(the paper's remedy for binary training: reload the last good checkpoint and skip the batch).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import layers as L
from .binarize import positive_mask
from .optim import AdamW, OptimConfig, lr_at
from .run_state import load_trainer_state, save_run_checkpoint

LOSSES = ("ad", "ce", "mix")


@dataclass
class TrainConfig:
    steps: int = 400             # optimizer steps
    batch_size: int = 16
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


class TeacherTopK:
    """Sparse distillation targets: the teacher's top-K probabilities per position, from disk."""

    def __init__(self, idx, prob, vocab_size):
        self.idx, self.prob, self.vocab_size = idx, prob, vocab_size  # (N_windows, T, K) each

    def probs(self, windows):
        idx, prob = self.idx[windows], self.prob[windows].astype(np.float32)        # (B, T, K)
        K, V = idx.shape[-1], self.vocab_size
        # the mass outside the top K is spread evenly over the other V - K tokens: without it the
        # student learns to give every token outside the teacher's top K zero probability
        tail = np.clip(1.0 - prob.sum(-1, keepdims=True), 0.0, 1.0) / max(V - K, 1)  # (B, T, 1)
        dense = np.broadcast_to(tail, idx.shape[:2] + (V,)).copy()                    # (B, T, V)
        np.put_along_axis(dense, idx.astype(np.int64), prob, axis=-1)
        return dense


def teacher_probs(teacher, x):
    return L.softmax(teacher.forward(x)).astype(np.float32, copy=False)


def evaluate(model, batches) -> float:
    """Mean next-token cross-entropy (nats) over the given (x, y) batches."""
    total, count = 0.0, 0
    for x, y in batches:
        loss, _ = L.cross_entropy_forward(model.forward(x), y)
        total += loss * y.size
        count += y.size
    model._caches = None
    return total / max(count, 1)


def flip_fractions(before: dict, model) -> dict:
    """Per binarized layer and overall: fraction of latent weights whose sign changed this step."""
    out, flipped, total = {}, 0, 0
    for name, was_positive in before.items():
        changed = int(np.count_nonzero(was_positive != positive_mask(model.params[name])))
        out[name.removesuffix(".weight")] = changed / was_positive.size
        flipped, total = flipped + changed, total + was_positive.size
    out["all"] = flipped / max(total, 1)
    return out


class LoopBookkeeping:
    """What both backends' loops share: skipped batches, spike test, metrics truncation on resume.

    Needs self.sampler, self.cfg, self.step, self.data_step, self.skipped, self.loss_ema, self.rollbacks,
    self.metrics_path.
    """

    def state(self) -> dict:
        return {"step": self.step, "data_step": self.data_step, "skipped": self.skipped,
                "loss_ema": self.loss_ema, "rollbacks": self.rollbacks, "seed": self.cfg.seed,
                "loss": self.cfg.loss, "batch_size": self.cfg.batch_size, "seq_len": self.cfg.seq_len}

    def next_batch(self):
        while self.data_step in self.skipped:
            self.data_step += 1
        x, y = self.sampler.batch(self.data_step)                     # the global batch (B, T)
        return x, y, self.data_step

    def is_spike(self, loss) -> bool:
        if not math.isfinite(loss):
            return True
        return (self.step >= self.cfg.spike_warmup and self.loss_ema is not None
                and loss > self.cfg.spike_factor * self.loss_ema)

    def _truncate_metrics(self, step):
        # a resumed run rewrites the steps after its checkpoint: drop them from the log
        if not self.metrics_path.exists():
            return
        keep = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in keep))


class Trainer(LoopBookkeeping):
    """Trains `model` on batches from `sampler`, distilling `teacher` (None for label loss)."""

    def __init__(self, model, cfg: TrainConfig, optim: OptimConfig, sampler, val_batches,
                 run_dir, tokenizer=None, teacher=None, teacher_cache=None, log=print, extra_fbi=None):
        if cfg.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}")
        self.model, self.cfg, self.sampler = model, cfg, sampler
        self.val_batches = val_batches            # a function returning a fresh iterator
        self.run_dir, self.tokenizer, self.teacher = Path(run_dir), tokenizer, teacher
        self.teacher_cache, self.log, self.extra_fbi = teacher_cache, log, extra_fbi
        self.opt = AdamW(model.params, optim)
        self.step = 0               # optimizer steps done
        self.data_step = 0          # batches drawn (skipped ones included)
        self.skipped: list[int] = []
        self.loss_ema = None
        self.rollbacks = 0
        self.metrics_path = self.run_dir / "metrics.jsonl"

    # ------------------------------------------------------------------ state

    def save(self):
        save_run_checkpoint(self.run_dir, self.model, self.tokenizer, self.opt, self.state(), self.extra_fbi)

    def restore(self, ckpt_dir):
        """Load params, optimizer and position from a checkpoint of this run."""
        from .checkpoint import load_checkpoint
        state, opt = load_trainer_state(ckpt_dir)
        for key in ("seed", "batch_size", "seq_len", "loss"):
            if state.get(key) != getattr(self.cfg, key):
                from .errors import TinyFBIError
                raise TinyFBIError(f"cannot resume: the checkpoint was trained with --{key.replace('_', '-')} "
                                   f"{state.get(key)}, this run asks for {getattr(self.cfg, key)}")
        _, params, _ = load_checkpoint(ckpt_dir)
        for k in self.model.params:
            self.model.params[k][...] = params[k]
        self.opt.load_state_dict(opt)
        self.step, self.data_step = state["step"], state["data_step"]
        self.skipped, self.loss_ema = list(state["skipped"]), state["loss_ema"]
        self.rollbacks = state.get("rollbacks", 0)
        self._truncate_metrics(self.step)

    def _write_metrics(self, row):
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------ one step

    def targets(self, x, data_step):
        if self.cfg.loss == "ce":
            return None
        if self.teacher_cache is not None:
            return self.teacher_cache.probs(self.sampler.windows(data_step))
        return teacher_probs(self.teacher, x)

    def loss_and_grad(self, x, y, probs):
        logits = self.model.forward(x)
        if self.cfg.loss == "ce":
            loss, cache = L.cross_entropy_forward(logits, y)
            dlogits = L.cross_entropy_backward(cache)
        elif self.cfg.loss == "ad":
            loss, cache = L.distill_forward(logits, probs)
            dlogits = L.distill_backward(cache)
        else:
            loss, cache = L.mixed_forward(logits, y, probs, self.cfg.mix_lambda)
            dlogits = L.mixed_backward(cache)
        return loss, dlogits

    def rollback(self, data_step, loss):
        from .run_state import resolve_checkpoint
        ckpt = resolve_checkpoint(self.run_dir)
        skipped = sorted(set(self.skipped) | {data_step})
        self.restore(ckpt)
        self.skipped = skipped
        self.rollbacks += 1
        self.log(f"loss spike at step {self.step + 1} (loss {loss:.4g}, running mean "
                 f"{self.loss_ema if self.loss_ema is not None else float('nan'):.4g}): rolled back to the "
                 f"checkpoint at step {self.step} and skipped batch {data_step}")

    def train_step(self):
        x, y, data_step = self.next_batch()
        probs = self.targets(x, data_step)
        before = ({n: positive_mask(self.model.params[n]) for n in self.model.binarized_names}
                  if self.cfg.track_flips else None)
        loss, dlogits = self.loss_and_grad(x, y, probs)
        if self.is_spike(loss):
            self.model._caches = None
            self.rollback(data_step, loss)
            return None
        grads = self.model.backward(dlogits)
        info = self.opt.step(self.model.params, grads, lr_at(self.step, self.opt.cfg))
        self.step += 1
        self.data_step = data_step + 1
        self.loss_ema = loss if self.loss_ema is None else 0.95 * self.loss_ema + 0.05 * loss
        row = {"step": self.step, "loss": loss, "lr": info["lr"], "grad_norm": info["grad_norm"]}
        if before is not None:
            row["flips"] = flip_fractions(before, self.model)
        return row

    # ------------------------------------------------------------------ the loop

    def run(self, desc="train", resume_from=None) -> dict:
        cfg = self.cfg
        if resume_from is not None:
            self.restore(resume_from)
            self.log(f"resumed {self.run_dir} at step {self.step}")
        else:
            self.metrics_path.write_text("")
            self.save()  # step 0: a rollback always has somewhere to go
        tokens_per_step = cfg.batch_size * cfg.seq_len
        bar = tqdm(total=cfg.steps, initial=self.step, desc=desc, unit="step", dynamic_ncols=True,
                   leave=True, mininterval=1.0)
        val_loss = None
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            row = self.train_step()
            if row is None:  # rolled back
                bar.n = self.step
                bar.refresh()
                continue
            row["tok_s"] = tokens_per_step / (time.perf_counter() - t0)
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                val_loss = evaluate(self.model, self.val_batches())
                row["val_loss"] = val_loss
            self._write_metrics(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tok_s']:.0f}", lr=f"{row['lr']:.2e}",
                            **({"val": f"{val_loss:.3f}"} if val_loss is not None else {}))
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self.save()
        bar.close()
        if val_loss is None:
            val_loss = evaluate(self.model, self.val_batches())
        return {"val_loss": val_loss, "val_ppl": math.exp(val_loss), "steps": self.step,
                "rollbacks": self.rollbacks}


def read_metrics(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
