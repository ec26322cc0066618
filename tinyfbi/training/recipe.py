"""`--recipe paper`: what the authors trained each size with (github:LiqunMa/FBI-LLM, fully_qat.py and
sbatch_train.sh; arXiv 2407.07093, section 4.1), filled into the flags the user left unset.

    global batch   130M 1024, 1.3B 1152, 7B 1920 sequences of 2048 tokens (sbatch_train.sh: 1 node x 4
                   GPUs x 32 x accumulate 8; 4 x 4 x 18 x 4; 8 x 4 x 6 x 10); 13B: not released, 7B's
    AdamW          lr 3e-4 cosine to 3e-5, 2000 warmup steps rising from 0, weight decay 0.1 on every
                   parameter, betas (0.9, 0.95), clip 1.0 (core.optim's defaults)
    precision      bf16 autocast on GPUs with float32 master weights (the torch backend's default)
    data           Amber, 1.26T tokens (--tokens; the steps follow from it unless --steps is given)
    teacher        LLaMA-2-7B for every size: --teacher PATH to a Llama-2-7b-hf folder

The global batch is reached as world size x micro-batch x gradient accumulation; the micro-batch is
the largest the planner's memory estimate fits on the device (--micro-batch overrides).
"""
from __future__ import annotations

import math

from ..core.errors import TinyFBIError

PAPER_BATCH = {"130m": 1024, "1.3b": 1152, "7b": 1920, "13b": 1920}
PAPER_SEQ_LEN = 2048
PAPER_LR = 3e-4
PAPER_WARMUP = 2000
AMBER_TOKENS = 1.26e12


def recipe_defaults(size: str, backend: str, batch_size=None, seq_len=None, tokens=None) -> dict:
    """The paper's values for the flags of --recipe paper (training.spec.RunSpec.build lets explicit
    flags win); the steps follow from the token budget and the batch actually used."""
    if size not in PAPER_BATCH:
        raise TinyFBIError(f"--recipe paper is the authors' recipe for {', '.join(PAPER_BATCH)}; "
                           f"--size {size} has none")
    if backend != "torch":
        raise TinyFBIError("--recipe paper is for the scaled backend: add --backend torch")
    batch_size, seq_len, tokens = batch_size or PAPER_BATCH[size], seq_len or PAPER_SEQ_LEN, tokens or AMBER_TOKENS
    if tokens <= 0:
        raise TinyFBIError(f"--tokens must be positive, got {tokens}")
    return {"batch_size": batch_size, "seq_len": seq_len, "lr": PAPER_LR, "warmup": PAPER_WARMUP, "tokens": tokens,
            "steps": math.ceil(tokens / (batch_size * seq_len))}
