"""The torch learner: one TorchModel and its AdamW, the interface training.loop trains.

Same batches, losses, optimizer, schedule and checkpoint layout as the NumPy learner, so a run moves
between backends at any checkpoint. What torch adds (FBI-LLM, arXiv 2407.07093, section 4.1):
bf16 autocast on GPUs with float32 master weights, every rank taking its rows of the global batch
(DDP or FSDP2, torch_backend.distributed), and `--grad-accum N` micro-batches per rank.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from ..core.binarize import positive_mask
from ..core.errors import TinyFBIError
from ..core.optim import OptimConfig
from ..formats.checkpoint import load_checkpoint
from ..formats.run_checkpoint import RunCheckpointWriter, load_trainer_state
from ..training.loop import TrainConfig
from .distributed import Dist, get_full, local, put_full
from .fused_loss import fused_distill_loss
from .model import TorchModel


def autocast(d: Dist):
    """bf16 autocast on GPUs (float32 master weights); plain float32 on a CPU, like NumPy, unless
    --cpu-bf16 rehearses the GPU's numerics there."""
    if d.device.type == "cuda" or d.cpu_bf16:
        return torch.autocast(d.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def distill_loss(kind, logits, y, probs, lam=0.5):
    """ce: next-token labels; ad: soft cross-entropy against the teacher's softmax (FBI-LLM section 3.2);
    mix: lam * ce + (1 - lam) * ad. Mean over positions, in float32."""
    flat = logits.float().flatten(0, 1)                                            # (b*T, V)
    if kind == "ce":
        return F.cross_entropy(flat, y.flatten())
    ad = F.cross_entropy(flat, probs.flatten(0, 1))
    return ad if kind == "ad" else lam * F.cross_entropy(flat, y.flatten()) + (1 - lam) * ad


class TorchLearner:
    def __init__(self, module: TorchModel, wrapped, cfg: TrainConfig, optim: OptimConfig, run_dir, tokenizer,
                 d: Dist, teacher=None, teacher_cache=None, grad_accum=1, extra_fbi=None, fused_head=True):
        self.model, self.wrapped = module, wrapped  # wrapped: what the step calls (DDP around module, or module)
        self.fused_head = fused_head                # the head and the loss over chunks of tokens (fused_loss.py)
        self.cfg, self.optim_cfg, self.run_dir, self.tokenizer, self.d = cfg, optim, run_dir, tokenizer, d
        self.teacher, self.teacher_cache, self.grad_accum, self.extra_fbi = teacher, teacher_cache, grad_accum, extra_fbi
        self.named = list(module.named_parameters())
        # AdamW on every parameter with weight decay 0.1, as the released recipe
        self.opt = torch.optim.AdamW([p for _, p in self.named], lr=optim.lr, betas=(optim.beta1, optim.beta2),
                                     eps=optim.eps, weight_decay=optim.weight_decay)
        binarized = set(module.config.binarized_weight_names())
        self.binarized = [(n, p) for n, p in self.named if n in binarized]

    def targets(self, x, rows, windows):
        """Teacher probabilities for these rows of the batch: from the top-K cache, or a forward."""
        if self.cfg.loss == "ce":
            return None
        if self.teacher_cache is not None:
            return torch.from_numpy(self.teacher_cache.probs(windows[rows])).to(self.d.device)
        with torch.no_grad(), autocast(self.d):
            return torch.softmax(self.teacher(x).float(), dim=-1)                   # (b, T, V)

    def loss(self, x, y, rows, windows):
        """This micro-batch's mean loss. Fused (the default): both models stop at their final norm and
        fused_distill_loss runs the heads and the loss over chunks of tokens, so no (b, T, V) logits of
        either model are held; unfused: logits, the teacher's softmax, then distill_loss."""
        kind, lam = self.cfg.loss, self.cfg.mix_lambda
        if not self.fused_head:
            probs = self.targets(x, rows, windows)
            with autocast(self.d):
                logits = self.wrapped(x)                                            # (b, T, V)
            return distill_loss(kind, logits, y, probs, lam)
        probs = h_t = w_t = None
        if kind != "ce" and self.teacher_cache is not None:
            probs = self.targets(x, rows, windows)                                  # (b, T, V) from the cache
        elif kind != "ce":
            with torch.no_grad(), autocast(self.d):
                h_t = self.teacher(x, head=False)                                   # (b, T, C_t)
            w_t = self.teacher.lm_head.weight                                       # (V, C_t)
        with autocast(self.d):
            h_s = self.wrapped(x, head=False)                                       # (b, T, C)
            return fused_distill_loss(kind, h_s, self.model.lm_head.weight, y, h_t=h_t, w_t=w_t, probs=probs,
                                      lam=lam)

    def forward_backward(self, x, y, windows) -> float:
        """This rank's rows in grad_accum micro-batches, gradients accumulated; -> the global mean loss."""
        rows = self.d.rows(len(x))
        xr = torch.from_numpy(x[rows]).to(self.d.device)
        yr = torch.from_numpy(y[rows]).to(self.d.device)
        losses = []
        for i, micro in enumerate(np.array_split(np.arange(len(xr)), self.grad_accum)):
            last = i == self.grad_accum - 1
            sync = self.wrapped.no_sync() if hasattr(self.wrapped, "no_sync") and not last else contextlib.nullcontext()
            with sync:  # DDP all-reduces once, after the last micro-batch
                loss = self.loss(xr[micro], yr[micro], np.arange(rows.start, rows.stop)[micro], windows)
                (loss / self.grad_accum).backward()
            losses.append(loss.detach())
        return self.d.all_reduce_sum([torch.stack(losses).mean().item()])[0] / self.d.world_size

    def drop_gradients(self):
        self.opt.zero_grad(set_to_none=True)

    def optimizer_step(self, lr) -> float:
        for group in self.opt.param_groups:
            group["lr"] = lr
        clip = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in self.named], clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(norm)

    def sign_masks(self) -> list:
        return [positive_mask(local(p)).clone() for _, p in self.binarized]

    def flip_fractions(self, before) -> dict:
        """Per binarized layer and overall: fraction of latent weights whose sign changed this step."""
        changed = [float((was != positive_mask(local(p))).sum()) for was, (_, p) in zip(before, self.binarized)]
        if any(p is not local(p) for _, p in self.binarized):  # sharded: each rank counted its shard
            changed = self.d.all_reduce_sum(changed)
        out = {name.removesuffix(".weight"): c / p.numel() for c, (name, p) in zip(changed, self.binarized)}
        out["all"] = sum(changed) / max(sum(p.numel() for _, p in self.binarized), 1)
        return out

    def save(self, trainer_state):
        """Gather every parameter and its AdamW moments to rank 0 one tensor at a time, and stream them
        into the one run checkpoint layout (formats.run_checkpoint): rank 0 holds a shard, not the model.
        A failed write is raised on every rank (on_main), so none waits in a collective for it."""
        writer = self.d.on_main(lambda: RunCheckpointWriter(self.run_dir, self.model.config, self.tokenizer,
                                                            self.extra_fbi))
        for name, p in self.named:
            st = self.opt.state.get(p)
            full = get_full(p, self.d)
            m = get_full(st["exp_avg"], self.d) if st else None
            v = get_full(st["exp_avg_sq"], self.d) if st else None
            if writer is not None:
                zeros = np.zeros_like(full) if st is None else None    # no step taken yet
                writer.add(name, full, zeros if m is None else m, zeros if v is None else v)
        self.d.on_main(lambda: writer.finish(trainer_state, trainer_state["step"]))

    def restore(self, ckpt_dir) -> dict:
        """Params, AdamW moments and the trainer state from a checkpoint written by either backend,
        read on rank 0 and scattered."""
        def read():
            state, opt = load_trainer_state(ckpt_dir)
            config, params, _ = load_checkpoint(ckpt_dir)
            if config.param_shapes() != self.model.config.param_shapes():
                raise TinyFBIError(f"cannot resume: {ckpt_dir} holds a model of another shape")
            missing = [n for n, _ in self.named if n not in opt["m"] or n not in opt["v"]]
            if missing:
                raise TinyFBIError(f"{ckpt_dir}: optimizer state lacks {missing[0]!r}")
            return state, opt, params

        state, opt, params = self.d.on_main(read) or (None, None, None)
        state, opt_step = self.d.broadcast_object((state, opt["step"] if opt else None))
        self.opt.state.clear()
        for name, p in self.named:
            put_full(p, params[name] if params else None, self.d)
            st = self.opt.state[p]
            st["step"] = torch.tensor(float(opt_step), dtype=torch.float32)
            st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            put_full(st["exp_avg"], opt["m"][name] if opt else None, self.d)
            put_full(st["exp_avg_sq"], opt["v"][name] if opt else None, self.d)
        return state
