"""The NumPy backend of the one training run: the hand-written forward/backward and AdamW.

    python -m tinyfbi.train --backend numpy

`NumpyBackend` is what training.run asks of a backend (training.backend.Backend: teachers, learners,
evaluation, samples); `NumpyLearner` is one model and its optimizer (training.backend.Learner).
"""
from __future__ import annotations

import numpy as np

from ..core import layers as L
from ..core.binarize import positive_mask
from ..core.errors import TinyFBIError
from ..core.model import Model
from ..core.optim import AdamW, OptimConfig
from ..formats.checkpoint import load_checkpoint, load_model
from ..formats.run_checkpoint import load_trainer_state, save_run_checkpoint
from ..runtime.inference import FloatRunner, generate
from .loop import TrainConfig


def loss_and_dlogits(kind, logits, y, probs, lam):
    """(loss, dL/dlogits) of ce (labels), ad (teacher probabilities) or mix: lam * ce + (1 - lam) * ad."""
    if kind == "ce":
        loss, cache = L.cross_entropy_forward(logits, y)
        return loss, L.cross_entropy_backward(cache)
    if kind == "ad":
        loss, cache = L.distill_forward(logits, probs)
        return loss, L.distill_backward(cache)
    loss, cache = L.mixed_forward(logits, y, probs, lam)
    return loss, L.mixed_backward(cache)


def evaluate(model, batches) -> float:
    """Mean next-token cross-entropy (nats) over the given (x, y) batches."""
    total, count = 0.0, 0
    for x, y in batches:
        loss, _ = L.cross_entropy_forward(model.forward(x), y)
        total += loss * y.size
        count += y.size
    model.drop_caches()
    return total / max(count, 1)


def flip_fractions(before: dict, params: dict) -> dict:
    """Per binarized layer and overall: fraction of latent weights whose sign changed this step.
    before: name -> +1 mask of that weight before the step; params: the weights after it."""
    out, flipped, total = {}, 0, 0
    for name, was_positive in before.items():
        changed = int(np.count_nonzero(was_positive != positive_mask(params[name])))
        out[name.removesuffix(".weight")] = changed / was_positive.size
        flipped, total = flipped + changed, total + was_positive.size
    out["all"] = flipped / max(total, 1)
    return out


class TeacherProbs:
    """The teacher's next-token distribution of a batch, softmax(teacher(x)) (B, T, V) float32, from its
    forward. Students trained in lockstep (reproduction.lockstep) share one: a batch's forward runs once however
    many students ask for it. The last `keep` batches' are kept, keyed by their tokens, so the same batch
    gets the same array (never written to: the losses only read it)."""

    def __init__(self, model: Model, keep: int = 1):
        self.model, self.keep, self.memo, self.forwards = model, keep, {}, 0

    def __call__(self, x) -> np.ndarray:
        key = (x.shape, x.dtype.str, x.tobytes())
        if key not in self.memo:
            self.memo[key] = L.softmax(self.model.forward(x)).astype(np.float32, copy=False)
            self.forwards += 1
            while len(self.memo) > self.keep:
                del self.memo[next(iter(self.memo))]              # the oldest batch
        return self.memo[key]


class NumpyLearner:
    def __init__(self, model: Model, cfg: TrainConfig, optim: OptimConfig, run_dir, tokenizer=None,
                 teacher=None, teacher_cache=None, extra_fbi=None):
        """teacher: a full-precision Model, or the TeacherProbs of one shared with other learners."""
        self.model, self.cfg, self.run_dir, self.tokenizer = model, cfg, run_dir, tokenizer
        self.teacher_probs = teacher if teacher is None or isinstance(teacher, TeacherProbs) else TeacherProbs(teacher)
        self.teacher_cache, self.extra_fbi = teacher_cache, extra_fbi
        self.opt = AdamW(model.params, optim)
        self.grads = None

    def targets(self, x, windows):
        """The teacher's next-token distribution (B, T, V): from the top-K cache or a forward."""
        if self.cfg.loss == "ce":
            return None
        if self.teacher_cache is not None:
            return self.teacher_cache.probs(windows)
        return self.teacher_probs(x)

    def forward_backward(self, x, y, windows) -> float:
        probs = self.targets(x, windows)
        loss, dlogits = loss_and_dlogits(self.cfg.loss, self.model.forward(x), y, probs, self.cfg.mix_lambda)
        if np.isfinite(loss):
            self.grads = self.model.backward(dlogits)
        return loss

    def drop_gradients(self):
        self.grads = None
        self.model.drop_caches()

    def optimizer_step(self, lr) -> float:
        info = self.opt.step(self.model.params, self.grads, lr)
        self.grads = None
        return info["grad_norm"]

    def sign_masks(self) -> dict:
        return {n: positive_mask(self.model.params[n]) for n in self.model.binarized_names}

    def flip_fractions(self, before) -> dict:
        return flip_fractions(before, self.model.params)

    def save(self, trainer_state):
        save_run_checkpoint(self.run_dir, self.model.config, self.model.params, self.opt.state_dict(),
                            trainer_state, self.tokenizer, self.extra_fbi)

    def restore(self, ckpt_dir) -> dict:
        state, opt = load_trainer_state(ckpt_dir)
        config, params, _ = load_checkpoint(ckpt_dir)
        if config.param_shapes() != self.model.config.param_shapes():
            raise TinyFBIError(f"cannot resume: {ckpt_dir} holds a model of another shape")
        for k in self.model.params:
            self.model.params[k][...] = params[k]
        self.opt.load_state_dict(opt)
        return state


class NumpyBackend:
    """Single process, float32 on the CPU: every hook of training.run is a plain call."""
    name = "numpy"
    is_main = True

    def describe(self) -> str:
        return ""

    def on_main(self, fn):
        return fn()

    on_main_first = on_main

    def sync(self):
        pass

    def rows(self, n: int) -> slice:
        return slice(None)   # one process reads the whole batch

    def load_teacher(self, path, config):
        return load_model(path, dtype=np.float32)

    def numpy_forward(self, model):
        return model

    def learner(self, config, init_params, cfg, optim, run_dir, tokenizer, teacher, teacher_cache, extra_fbi):
        model = Model(config, seed=cfg.seed, params=init_params() if init_params else None)
        return NumpyLearner(model, cfg, optim, run_dir, tokenizer, teacher, teacher_cache, extra_fbi)

    def evaluate(self, model, batches) -> float:
        return evaluate(model, batches)

    def sample(self, model, tokenizer, prompt_ids, n_tokens, seed) -> str:
        ids = generate(FloatRunner(model), prompt_ids, max_new_tokens=n_tokens, temperature=0.8, top_k=40, seed=seed)
        return tokenizer.decode(ids)

    def report(self, learner, teacher_config, tok_s) -> dict:
        return {}
