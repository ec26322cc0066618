"""`python -m tinyfbi.bench.gpu`: the GPU check, no download needed (a few minutes on one GPU).

For the 130m and 1.3b students with a random LLaMA-2-7B-shaped bf16 teacher (the paper's pairing),
one distillation step as the torch backend takes it (bf16 autocast, float32 master weights and
AdamW, activation checkpointing, sequences of 2048), for each case of FBI-Linear (fused or not),
head and loss (fused over chunks of tokens, or whole logits) and torch.compile (on or off):
tokens/s, MFU (student forward+backward and teacher forward FLOPs over the device's bf16 dense
peak, and the student's own share), peak memory allocated and reserved (what the caching allocator's
rounding and fragmentation add) against the planner's peak by phases and its parts added (the
figures `--dry-run --fake-step` prints for the same shapes on fake tensors). The micro-batch
is the planner's for the device, fused head and 10% headroom (`--micro-batch` overrides). Writes
one JSON object per case (`--out`, default bench_gpu.json) and prints a table.

    python -m tinyfbi.bench.gpu                        # 130m and 1.3b: head loss x compile
    python -m tinyfbi.bench.gpu --device cpu --sizes tiny --teacher-size tiny --seq-len 64
"""
from __future__ import annotations

import argparse
from functools import partial

import torch

from ..cli import CLIParser, run_cli
from ..core.config import ModelConfig
from ..core.errors import TinyFBIError
from ..formats.atomic import atomic_write_json
from ..torch_backend.fused_loss import fused_distill_loss
from ..torch_backend.learner import distill_loss
from ..torch_backend.model import TorchModel
from ..torch_backend.planner import HEADROOM, GiB, count_params, flops_per_token, memory_per_gpu
from .machine import device_name, peak_bf16_flops
from .timing import call_times, median_ms

TIMED_STEPS, WARMUP_STEPS = 5, 2


def random_model(config: ModelConfig, device, dtype) -> TorchModel:
    """A model in place on the device, N(0, 0.02) weights: no host copy, no checkpoint."""
    with torch.device(device):
        model = TorchModel(config).to(dtype)
    if device.type == "cpu":
        model.init_weights(0)
    else:
        init_on_device(model)
    return model


@torch.no_grad()
def init_on_device(model):
    for name, p in model.named_parameters():
        if "norm" in name or name.endswith(".wscale"):
            p.fill_(1.0)
        else:
            p.normal_(0, 0.02)


def measure(size, teacher, args, device, fused, head_fused, compiled) -> dict:
    config = ModelConfig.from_name(size, vocab_size=teacher.config.vocab_size,
                                   max_position_embeddings=max(args.seq_len, 16))
    counts = count_params(config)
    micro = args.micro_batch or pick_micro_batch(config, counts, teacher.config, args.seq_len, device, head_fused)
    student = random_model(config, device, torch.float32).use_fused_linear(fused).train()
    student.checkpoint_layers = True
    forward = torch.compile(student) if compiled else student
    opt = torch.optim.AdamW(student.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x = torch.randint(0, config.vocab_size, (micro, args.seq_len), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    step = partial(distill_step, teacher, student, forward, opt, x, autocast, device, losses, head_fused)
    tok_s = 1e3 * micro * args.seq_len / median_ms(call_times(step, TIMED_STEPS, warmup=WARMUP_STEPS))
    flops = flops_per_token(config, teacher.config, args.seq_len)
    planned = memory_per_gpu(config, counts, teacher.config, 1, False, False, micro, args.seq_len, True, True,
                             fused, head_fused)
    peak = peak_bf16_flops(device)
    measured = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    # what the caching allocator took from the device: the measured peak plus its rounding and fragmentation
    reserved = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None
    del student, forward, opt, step
    return {"size": size, "fbi_linear": "fused" if fused else "unfused", "head_loss": "fused" if head_fused
            else "unfused", "compile": compiled, "device": device_name(device),
            "micro_batch": micro, "seq_len": args.seq_len, "tok_s": tok_s, "loss": float(losses[-1]),
            "mfu": tok_s * flops["total"] / peak if peak else None,
            "mfu_student": tok_s * flops["student"] / peak if peak else None, "flops_per_token": flops["total"],
            "peak_memory_gib": measured / GiB if measured is not None else None,
            "peak_reserved_gib": reserved / GiB if reserved is not None else None,
            "planned_memory_gib": planned["gpu"]["total"] / GiB, "planned_peak_gib": planned["phases"]["peak"] / GiB}


def distill_step(teacher, student, forward, opt, x, autocast, device, losses, head_fused, _call=None):
    """One step as the torch backend's learner takes it: the teacher's and the student's forward,
    soft cross-entropy against the teacher's softmax (fused over chunks of tokens, or whole logits),
    backward, clipping, AdamW; its loss appended to losses (_call: call_times's index). `forward` is
    the student, or its torch.compile'd wrapper."""
    if head_fused:
        with torch.no_grad(), autocast:
            h_t = teacher(x, head=False)                                          # (b, T, C_t)
        with autocast:
            loss = fused_distill_loss("ad", forward(x, head=False), student.lm_head.weight, h_t=h_t,
                                      w_t=teacher.lm_head.weight)
    else:
        with torch.no_grad(), autocast:
            probs = torch.softmax(teacher(x).float(), dim=-1)                     # (b, T, V)
        with autocast:
            logits = forward(x)                                                   # (b, T, V)
        loss = distill_loss("ad", logits, None, probs)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    losses.append(loss.detach())


def pick_micro_batch(config, counts, teacher_config, seq_len, device, head_fused) -> int:
    """The largest power of two whose planned memory leaves the planner's headroom of the device free."""
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 8 * GiB
    micro = 1
    while micro < 256 and memory_per_gpu(config, counts, teacher_config, 1, False, False, 2 * micro, seq_len, True,
                                         True, True, head_fused)["gpu"]["total"] <= (1 - HEADROOM) * total:
        micro *= 2
    return micro


def build_parser():
    ap = CLIParser("python -m tinyfbi.bench.gpu", __doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="130m,1.3b", help="comma-separated student presets")
    ap.add_argument("--teacher-size", default="7b", help="preset of the random full-precision bf16 teacher")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=None, help="sequences per step (default: the planner's)")
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a smoke test at small sizes)")
    ap.add_argument("--out", default="bench_gpu.json", help="JSON file to write")
    ap.add_argument("--fbi-linear", choices=["both", "fused", "unfused"], default="fused",
                    help="FBI-Linear as one autograd function (fused) or the plain graph")
    ap.add_argument("--head-loss", choices=["both", "fused", "unfused"], default="both",
                    help="the heads and the loss over chunks of tokens (fused) or whole logits")
    ap.add_argument("--compile", choices=["both", "on", "off"], default="both",
                    help="torch.compile the student's forward and backward")
    return ap


def bench(args: argparse.Namespace):
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TinyFBIError("no CUDA GPU is visible: the GPU check needs one (--device cpu runs a smoke test)")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    teacher_config = ModelConfig.from_name(args.teacher_size, binarized=False,
                                           max_position_embeddings=max(args.seq_len, 16))
    teacher = random_model(teacher_config, device, torch.bfloat16).eval().requires_grad_(False)
    rows = []
    choice = {"both": (True, False), "fused": (True,), "unfused": (False,), "on": (True,), "off": (False,)}
    cases = [(f, h, c) for f in choice[args.fbi_linear] for h in choice[args.head_loss] for c in choice[args.compile]]
    for size in sizes:
        for fused, head_fused, compiled in cases:
            rows.append(measure(size, teacher, args, device, fused, head_fused, compiled))
            r = rows[-1]
            print(f"{size:>5} linear {r['fbi_linear']:>7}, head+loss {r['head_loss']:>7}, compile "
                  f"{'on ' if compiled else 'off'}: micro-batch {r['micro_batch']} x {r['seq_len']}, "
                  f"{r['tok_s']:,.0f} tokens/s"
                  + (f", MFU {r['mfu']:.1%} (student alone {r['mfu_student']:.1%})" if r["mfu"] else "")
                  + (f", peak {r['peak_memory_gib']:.1f} GiB allocated, {r['peak_reserved_gib']:.1f} reserved"
                     if r["peak_memory_gib"] is not None else "")
                  + f" (planned peak {r['planned_peak_gib']:.1f} GiB, parts added {r['planned_memory_gib']:.1f})",
                  flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    atomic_write_json(args.out, {"teacher": args.teacher_size, "results": rows})
    print(f"wrote {args.out}")
    return rows


def main(argv=None):
    return run_cli(bench, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
