"""AdamW with decoupled weight decay, linear warmup + cosine decay, global-norm clipping.

Defaults are FBI-LLM's released recipe (arXiv 2407.07093, section 4.1): lr 3e-4 cosine to 3e-5,
2000 warmup steps, weight decay 0.1 on every parameter, betas (0.9, 0.95), clip 1.0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class OptimConfig:
    lr: float = 3e-4            # peak learning rate
    min_lr: float = 3e-5        # cosine floor
    warmup_steps: int = 2000    # linear warmup from 0
    total_steps: int = 100_000  # cosine reaches min_lr here, then stays
    weight_decay: float = 0.1   # decoupled, applied to all parameters as in the released code
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0      # global L2 norm; 0 disables
    warmup_from_zero: bool = False  # the authors' schedule: lr * step / warmup (step 0 at lr 0)


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): warmup, then cosine to the floor."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + (0 if cfg.warmup_from_zero else 1)) / cfg.warmup_steps
    decay_steps = max(1, cfg.total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def global_norm(grads: dict) -> float:
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def clip_grads(grads: dict, max_norm: float) -> float:
    """Scale grads in place so their global norm is at most max_norm; returns the norm before."""
    norm = global_norm(grads)
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= scale
    return norm


class AdamW:
    def __init__(self, params: dict, cfg: OptimConfig | None = None):
        self.cfg = cfg or OptimConfig()
        self.step_count = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self._work = {}   # dtype -> (2, largest parameter size) workspace

    def step(self, params: dict, grads: dict, lr: float | None = None) -> dict:
        """One update in place. Clips grads (in place) first; returns {'lr', 'grad_norm'}."""
        cfg = self.cfg
        lr = lr_at(self.step_count, cfg) if lr is None else lr
        norm = clip_grads(grads, cfg.grad_clip)
        self.step_count += 1
        t = self.step_count
        bias1, bias2 = 1.0 - cfg.beta1 ** t, 1.0 - cfg.beta2 ** t
        for name, p in params.items():
            g, m, v = grads[name], self.m[name], self.v[name]
            a, b = self._scratch(p)                               # two workspaces shaped like p
            m *= cfg.beta1
            m += np.multiply(g, 1.0 - cfg.beta1, out=a)           # m = b1 m + (1 - b1) g
            np.multiply(g, g, out=a)
            a *= 1.0 - cfg.beta2
            v *= cfg.beta2
            v += a                                                # v = b2 v + (1 - b2) g^2
            np.divide(v, bias2, out=a)
            np.sqrt(a, out=a)
            a += cfg.eps                                          # sqrt(v_hat) + eps
            np.multiply(m, lr / bias1, out=b)
            b /= a
            p *= 1.0 - lr * cfg.weight_decay                      # decoupled decay (Loshchilov & Hutter)
            p -= b                                                # lr m_hat / (sqrt(v_hat) + eps)
        return {"lr": lr, "grad_norm": norm}

    def _scratch(self, p):
        """Two views shaped like p into buffers reused by every parameter (no temporaries per step)."""
        work = self._work.get(p.dtype)
        if work is None or work.shape[1] < p.size:
            work = self._work[p.dtype] = np.empty((2, max(q.size for q in self.m.values())), p.dtype)
        return work[0, :p.size].reshape(p.shape), work[1, :p.size].reshape(p.shape)

    def state_dict(self) -> dict:
        return {"step": self.step_count, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict):
        self.step_count = int(state["step"])
        self.m = {k: np.array(v) for k, v in state["m"].items()}
        self.v = {k: np.array(v) for k, v in state["v"].items()}
