"""Peak memory of the head and distillation loss, forward and backward, on the CPU: the unfused path
(teacher probabilities, student logits, learner.distill_loss, all (N, V)) against the fused one
(torch_backend.fused_loss, a chunk of tokens at a time).

The region measured is what a step adds for the loss, given the final hidden states of both models
and their lm_head weights: the teacher's head and softmax, the student's head, the loss, and the
backward to dL/dh_s and dL/dW_s (both kept, in both paths). Peak = the most bytes torch's CPU
allocator held at once in that region, read from torch.profiler's memory events (profile_memory=True:
each allocation and free reports the running total, 'Total Allocated').

    python -m tinyfbi.bench.loss_memory                  # 130m head (C 768, V 32000), 8 x 2048 tokens: 12 GB RAM
    python -m tinyfbi.bench.loss_memory --kind mix --bf16

Measured (Intel Xeon Processor (KVM, AVX-512/AMX), 2 threads, torch 2.13 CPU, chunk 1024):
'ad' float32 10.49 GB unfused -> 0.67 GB fused (15.6x); 'mix' bf16 autocast 11.61 -> 0.77 GB (15.0x).
The process's peak RSS (10.9 and 11.9 GB) agrees with the unfused figures.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from ..cli import CLIParser, run_cli
from ..core.errors import TinyFBIError
from ..torch_backend.fused_loss import KINDS, fused_distill_loss
from ..torch_backend.learner import distill_loss
from .machine import cpu_name


def peak_allocated_bytes(fn):
    """-> (fn(), the most CPU bytes torch held at once while fn ran, above what it held before)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = [e["args"] for e in json.loads(path.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    if not events:
        return out, 0
    events.sort(key=lambda a: a["Ev Idx"])
    # the allocator's running total outlives a profile: count from its value before the first event
    before = events[0]["Total Allocated"] - events[0]["Bytes"]
    return out, max(a["Total Allocated"] for a in events) - before


def loss_peaks(kind="ad", tokens=8 * 2048, vocab=32000, hidden=768, teacher_hidden=768, chunk=1024,
               bf16=False, lam=0.5, seed=0) -> dict:
    """Peak bytes of the unfused and the fused loss on the same random inputs, and both losses."""
    gen = torch.Generator().manual_seed(seed)
    h_s = torch.randn(tokens, hidden, generator=gen).requires_grad_()                 # (N, C)
    w_s = (torch.randn(vocab, hidden, generator=gen) * hidden ** -0.5).requires_grad_()  # (V, C)
    h_t = torch.randn(tokens, teacher_hidden, generator=gen)                         # (N, C_t)
    w_t = torch.randn(vocab, teacher_hidden, generator=gen) * teacher_hidden ** -0.5  # (V, C_t)
    y = torch.randint(0, vocab, (tokens,), generator=gen)                            # (N,)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def unfused():  # as the learner's targets() and forward_backward()
        with torch.no_grad(), autocast():
            probs = torch.softmax(F.linear(h_t, w_t).float(), dim=-1)               # (N, V)
        with autocast():
            logits = F.linear(h_s, w_s)                                              # (N, V)
        loss = distill_loss(kind, logits[None], y[None], probs[None], lam)
        loss.backward()
        return loss.item()

    def fused():
        with autocast():
            loss = fused_distill_loss(kind, h_s, w_s, y, h_t=h_t, w_t=w_t, lam=lam, chunk=chunk)
        loss.backward()
        return loss.item()

    out = {}
    for name, fn in (("unfused", unfused), ("fused", fused)):
        h_s.grad = w_s.grad = None
        out[f"{name}_loss"], out[f"{name}_bytes"] = peak_allocated_bytes(fn)
    out["ratio"] = out["unfused_bytes"] / out["fused_bytes"]
    return out


def measure(args):
    GB = 1e9
    if min(args.tokens, args.vocab, args.hidden, args.teacher_hidden, args.chunk) < 1:
        raise TinyFBIError("--tokens, --vocab, --hidden, --teacher-hidden and --chunk must be at least 1")
    print(f"head and loss '{args.kind}', {args.tokens} tokens x V {args.vocab}, C {args.hidden} (teacher "
          f"{args.teacher_hidden}), chunk {args.chunk}, {'bf16 autocast' if args.bf16 else 'float32'}, "
          f"{cpu_name()}, {torch.get_num_threads()} threads")
    print(f"  one float32 (N, V) tensor is {args.tokens * args.vocab * 4 / GB:.2f} GB")
    r = loss_peaks(args.kind, args.tokens, args.vocab, args.hidden, args.teacher_hidden, args.chunk, args.bf16)
    print(f"  unfused peak {r['unfused_bytes'] / GB:7.2f} GB   loss {r['unfused_loss']:.6f}")
    print(f"  fused   peak {r['fused_bytes'] / GB:7.2f} GB   loss {r['fused_loss']:.6f}")
    print(f"  ratio {r['ratio']:.1f}x")
    return r


def main(argv=None):
    ap = CLIParser("python -m tinyfbi.bench.loss_memory", __doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=KINDS, default="ad", help="ad: the paper's loss")
    ap.add_argument("--tokens", type=int, default=8 * 2048, help="B x T: 8 sequences of 2048")
    ap.add_argument("--vocab", type=int, default=32000, help="the LLaMA-2 tokenizer's")
    ap.add_argument("--hidden", type=int, default=768, help="the 130m student's")
    ap.add_argument("--teacher-hidden", type=int, default=768, help="4096 for LLaMA-2-7B, the paper's teacher")
    ap.add_argument("--chunk", type=int, default=1024, help="tokens per chunk of the fused loss")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast, as on a GPU")
    run_cli(measure, ap.parse_args(argv))


if __name__ == "__main__":
    main()
