"""Perplexity the way FBI-LLM's Table 2 measures it (arXiv 2407.07093; the authors' eval.py, after GPTQ).

A test text is tokenized once with a BOS in front (if the tokenizer has one) and cut into
non-overlapping windows of seq_len (2048) tokens; each window predicts its tokens 2..L from those
before them, and ppl = exp(mean NLL over all predicted tokens). The tail shorter than a window is
dropped. A stride S < L slides the window instead: after the first window each token is predicted
once, with at least L - S tokens of context (HF's perplexity recipe; usually lower than the paper's).
"""
from __future__ import annotations

import math

import numpy as np

from ..core import layers as L
from ..core.errors import TinyFBIError
from ..formats.checkpoint import load_model
from ..runtime.inference import FloatRunner


def window_plan(num_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int]]:
    """(begin, skip) per window tokens[begin:begin+seq_len]; its predictions of positions
    begin+skip .. begin+seq_len-1 count. Non-overlapping (stride = seq_len): skip = 1, as GPTQ.
    Sliding: skip leaves out the targets an earlier window already predicted."""
    plan, prev_end = [], 0
    for begin in range(0, num_tokens - seq_len + 1, stride):
        plan.append((begin, max(1, prev_end - begin)))
        prev_end = begin + seq_len
    return plan


def perplexity(nll_fn, tokens: np.ndarray, seq_len: int, stride: int | None = None,
               max_windows: int | None = None, batch_size: int = 1) -> dict:
    """exp(mean NLL) over the plan's predicted tokens. nll_fn: x (B, L) int64 -> (B, L-1) NLL of
    x[:, 1:] given what comes before, float64."""
    stride = stride or seq_len
    plan = window_plan(len(tokens), seq_len, stride)[:max_windows]
    total, count = 0.0, 0
    for first in range(0, len(plan), batch_size):
        batch = plan[first:first + batch_size]
        x = np.stack([tokens[b:b + seq_len] for b, _ in batch])                 # (B, L)
        nll = nll_fn(x)                                                          # (B, L-1)
        for row, (_, skip) in zip(nll, batch):
            total += float(np.sum(row[skip - 1:], dtype=np.float64))
            count += seq_len - skip
    mean = total / count
    return {"ppl": math.exp(mean), "nll": mean, "tokens": count, "windows": len(plan),
            "seq_len": seq_len, "stride": stride}


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    # logits (B, T, V), targets (B, T) -> (B, T) float64: -log softmax(z)[target]
    logp = L.log_softmax(logits)                                                  # (B, T, V)
    return -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0].astype(np.float64)


def runner_nll_fn(runner):
    """NLL through a runner's KV-cache inference path (float, or the packed 1-bit runtime)."""

    def nll(x):
        logits = runner.forward(x, runner.new_cache(x.shape[0], x.shape[1]))  # (B, L, V)
        return token_nll(logits[:, :-1], x[:, 1:])
    return nll


def numpy_nll_fn(model):
    """NLL of the NumPy model (no activations kept for a backward)."""
    return runner_nll_fn(FloatRunner(model))


def torch_nll_fn(model, device):
    import torch
    import torch.nn.functional as F

    def nll(x):
        xt = torch.from_numpy(x).to(device)
        with torch.inference_mode():
            logits = model(xt)[:, :-1].float()                                   # (B, L-1, V)
            out = F.cross_entropy(logits.flatten(0, 1), xt[:, 1:].flatten(), reduction="none")
        return out.view(x.shape[0], -1).double().cpu().numpy()
    return nll


def load_nll_fn(ckpt, backend, device):
    if backend == "torch":
        import torch

        from ..torch_backend.backend import (
            load_torch_model,  # torch only when asked for
        )
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise TinyFBIError(f"--device {device!r} is not a torch device") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise TinyFBIError(f"--device {device}: no CUDA GPU is available")
        return torch_nll_fn(load_torch_model(ckpt, device=dev).eval(), dev)
    return numpy_nll_fn(load_model(ckpt, dtype=np.float32))
