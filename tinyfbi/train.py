"""`python -m tinyfbi.train`: distill a fully binarized student from a full-precision teacher.

With no flags (NumPy backend, about 10 minutes on 2 CPU cores): fetch Shakespeare, train a 4096-token
BPE, train the full-precision `tiny` teacher (or reuse it from runs/), train the FBI student from
scratch by autoregressive distillation, then report both validation perplexities, a sample from
each, and write runs/<name>/ (checkpoint, metrics.jsonl, loss.png, summary.json).

    python -m tinyfbi.train --backend numpy
    python -m tinyfbi.train --loss ce --teacher none --name tiny-ce      # label loss, no teacher
    python -m tinyfbi.train --resume                                     # continue a killed run
"""
from __future__ import annotations

from .cli import CLIParser, run_cli
from .core.config import PRESETS, SCALINGS
from .training.numpy_backend import NumpyBackend
from .training.run import run
from .training.spec import DEFAULT_STEPS, RunSpec


def build_parser() -> CLIParser:
    ap = CLIParser("python -m tinyfbi.train", __doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["numpy", "torch"], default="numpy",
                    help="numpy: the from-scratch core on the CPU; torch: the scaled backend (GPUs, torchrun)")
    ap.add_argument("--size", choices=list(PRESETS), default="tiny", help="model preset")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"student optimizer steps (default {DEFAULT_STEPS} for numpy)")
    ap.add_argument("--teacher-steps", type=int, default=None,
                    help="steps for a teacher trained here by --teacher auto (default: --steps)")
    ap.add_argument("--recipe", choices=["none", "paper"], default="none",
                    help="paper: the authors' batch, sequence length, schedule and token budget for the chosen "
                         "size (130m, 1.3b, 7b, 13b; torch backend), filling the flags left unset")
    ap.add_argument("--tokens", type=float, default=None,
                    help="--recipe paper: token budget the steps follow from (default Amber's 1.26e12)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="sequences per optimizer step, the global batch (default 16; --recipe paper: the authors')")
    ap.add_argument("--seq-len", type=int, default=None,
                    help="tokens per sequence (default 128; the paper's 2048 for 130m+)")
    ap.add_argument("--lr", type=float, default=None,
                    help="peak learning rate (default 2e-3 for tiny/20m, the paper's 3e-4 for 130m+); "
                         "cosine to lr/10")
    ap.add_argument("--warmup", type=int, default=None, help="warmup steps (default min(2000, steps/10))")
    ap.add_argument("--loss", choices=["ad", "ce", "mix"], default="ad",
                    help="ad: distill the teacher's distribution; ce: next-token labels; mix: 0.5/0.5")
    ap.add_argument("--teacher", default="auto",
                    help="auto: train or reuse a full-precision teacher in --out; none; or a checkpoint PATH")
    ap.add_argument("--init", default="scratch",
                    help="scratch, or a checkpoint PATH whose weights initialize the student")
    ap.add_argument("--scaling", choices=SCALINGS, default="column",
                    help="binarized weights: FBI's per-column alpha/beta, none, per-row, or BitNet b1.58 ternary")
    ap.add_argument("--full-precision", action="store_true",
                    help="train a full-precision model (a teacher) instead of the FBI student")
    ap.add_argument("--data", default=None,
                    help="shakespeare (default), a UTF-8 .txt file or folder, hf:NAME[:CONFIG], or a folder made "
                         "by python -m tinyfbi.prepare (it holds manifest.json): its shards are memmapped, "
                         "each sequence read once per epoch, each rank reading only its rows")
    ap.add_argument("--data-dir", default="data", help="cache for corpora, tokenizers and token files")
    ap.add_argument("--tokenizer", default="sentencepiece",
                    help="byte, sentencepiece (BPE trained here), tiktoken, or PATH/tokenizer.model")
    ap.add_argument("--vocab-size", type=int, default=None, help="vocabulary of a tokenizer trained here")
    ap.add_argument("--out", default="runs", help="folder for runs and cached teachers")
    ap.add_argument("--name", default=None, help="run name (default: <size>-<loss>, or <size>-fp)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the init and the batch order")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out/--name from its checkpoint")
    ap.add_argument("--eval-every", type=int, default=100, help="validate every N steps")
    ap.add_argument("--eval-batches", type=int, default=16, help="validation batches per evaluation")
    ap.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    ap.add_argument("--teacher-cache", type=int, default=0, metavar="K",
                    help="store the teacher's top-K probabilities once and reuse them (0: on the fly)")
    ap.add_argument("--track-flips", action="store_true",
                    help="log the fraction of binarized weights whose sign flips each step")
    ap.add_argument("--spike-factor", type=float, default=3.0,
                    help="roll back when the loss exceeds this multiple of its running mean")
    ap.add_argument("--sample-tokens", type=int, default=60, help="tokens to sample from each model at the end (0: no samples)")
    # torch backend only (see tinyfbi/torch_backend/)
    ap.add_argument("--dry-run", action="store_true", help="torch: plan parameters and memory, train nothing")
    ap.add_argument("--world-size", type=int, default=None, help="torch --dry-run: GPUs to plan for")
    ap.add_argument("--json", action="store_true", help="torch --dry-run: one JSON object")
    ap.add_argument("--fake-step", action="store_true",
                    help="torch --dry-run: also run the planned training step on fake tensors (no memory, no GPU) "
                         "and print PyTorch's own account of its memory and FLOPs beside the plan's")
    ap.add_argument("--grad-accum", type=int, default=None, metavar="N",
                    help="torch: each rank's rows of the batch in N micro-batches (the batch stays --batch-size); "
                         "default 1, or what --micro-batch / --recipe paper's memory plan implies")
    ap.add_argument("--micro-batch", type=int, default=None, metavar="M",
                    help="torch: sequences per GPU per forward; sets --grad-accum = batch / (world size x M)")
    ap.add_argument("--gpu-gib", type=float, default=None,
                    help="torch --recipe paper: GPU memory to fit micro-batches in (default: the device's; "
                         "80 when planning without one)")
    ap.add_argument("--tok-s", type=float, default=None,
                    help="torch --dry-run: tokens/s of the whole run, for the wall-clock estimate "
                         "(default: 40%% MFU on H100s)")
    ap.add_argument("--fsdp", choices=["auto", "on", "off"], default="auto",
                    help="torch: shard with FSDP2 per decoder layer (auto: under torchrun, for 1B+ parameters); "
                         "else DDP")
    ap.add_argument("--cpu-offload", action="store_true",
                    help="torch: FSDP with weights, gradients and AdamW state in host memory")
    ap.add_argument("--cpu-bf16", action="store_true",
                    help="torch on a CPU: bf16 autocast as on GPUs (to rehearse their numerics; slower than float32)")
    ap.add_argument("--fbi-linear", choices=["fused", "unfused"], default="fused",
                    help="torch: FBI-Linear as one autograd function that forms W~ on the fly (keeps no copy of "
                         "sign(W) or W~ for the backward), or the plain autograd graph (for comparison)")
    ap.add_argument("--head-loss", choices=["fused", "unfused"], default="fused",
                    help="torch: the student's and teacher's lm_head, softmax and loss computed over chunks of tokens "
                         "with the gradient formed as it goes, so no batch x length x vocabulary logits are held "
                         "(fused), or whole logits then the loss (unfused, for comparison)")
    ap.add_argument("--compile", action="store_true",
                    help="torch: torch.compile the student's forward and backward (the first steps pay for "
                         "compilation)")
    ap.add_argument("--activation-checkpointing", choices=["auto", "on", "off"], default="auto",
                    help="torch: recompute each decoder layer in the backward (auto: on for 130m+ on a GPU)")
    return ap


def spec_from_flags(parsed) -> RunSpec:
    """The one place the parsed command line becomes a run: every flag is a RunSpec field."""
    return RunSpec.build(**vars(parsed))


def train(spec: RunSpec):
    """Train (or with the torch backend's dry run, plan) the run `spec` describes; -> its summary."""
    if spec.backend == "torch":
        from .torch_backend.backend import (
            run_torch,  # torch is heavy: imported only when asked for
        )
        return run_torch(spec)
    return run(spec, NumpyBackend())


def main(argv=None):
    return run_cli(lambda: train(spec_from_flags(build_parser().parse_args(argv))),
                   interrupted="interrupted: the last checkpoint is intact; rerun with --resume to continue")


if __name__ == "__main__":
    main()
