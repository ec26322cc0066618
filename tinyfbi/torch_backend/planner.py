"""`--dry-run`: plan a torch run before spending GPUs on it. Parameters, bits, memory per GPU, FLOPs.

    python -m tinyfbi.train --backend torch --size 7b --dry-run --world-size 8 [--json]

The model is built on the meta device (shapes, no storage: a second for 13B). Bits count what a
packed FBI-LLM model stores (arXiv 2407.07093, section 4.1, "1.01 bits"): 1 bit per binarized
weight plus its fp16 alpha/beta, over the binarized layers; then over the whole model, with the
embeddings, lm_head and RMSNorms in fp16.

Memory per GPU is an estimate for training with AdamW on GPUs (bf16 autocast, float32 master
weights, gradients and moments), sharded over the world size under FSDP:
- weights 4 B, gradients 4 B, AdamW moments 8 B per parameter, divided by the world size under FSDP
  (host memory instead with --cpu-offload);
- FSDP buffers: the root unit (embeddings, lm_head) stays gathered in bf16 through the step; two
  decoder layers are gathered at a time (one computing, one prefetched) beside one layer's bf16
  gradient and its float32 copy for the reduce-scatter, or at the backward's end the root's float32
  gradient;
- the teacher's weights in bf16 (sharded like the student under FSDP, its root gathered after its
  forward, two of its layers gathered during it), and its forward's bf16 temporaries, most in a
  layer's MLP (3 C_t + 3 I_t values per token);
- activations per decoder layer per token, measured from the tensors autograd saves (CPU autocast,
  this model): with the fused FBI-Linear (the default) 32 C + 8 I bytes with float32 master weights
  (DDP), 28 C + 8 I with bf16 FSDP weights; with --fbi-linear unfused 34 C + 8 I, and each
  binarized linear also saves sign(W) and W~ until its backward (6 B per weight, 4 B under FSDP).
  Activation checkpointing keeps only each layer's input (C floats per token) plus one layer being
  recomputed;
- logits and loss, fused (the default, torch_backend.fused_loss): one chunk of LOSS_CHUNK tokens at
  a time, 16 V bytes per chunk token at its most (8 V with the label loss) or the head gradient's
  (V, C) product in bf16 and float32, plus what the loss holds throughout: dL/dh, dL/dW_head (4 V C),
  the head's bf16 copy and the teacher's final hidden state (2 C_t per token). Unfused (--head-loss
  unfused): about 14 V bytes per token of the micro-batch when distilling (10 V with the label loss).
"total" adds every part at its own peak. The parts do not all peak at once, and "phases_gib_per_gpu"
says when they do: what is held throughout (weights, gradients, moments, the teacher's shards and
root), plus the largest of the teacher's forward, the student's forward and backward (the loss beside
the checkpointed layer inputs, or the recomputed layer's backward), and AdamW's step (foreach, as on
GPUs: sqrt(v), 4 B per parameter). `--fake-step` (fake_step.py) runs the step under PyTorch's memory
tracker and prints its account beside these. Not counted: the CUDA context, the allocator's
fragmentation, torch.compile's workspace and NCCL buffers: a plan fits only if its total leaves
HEADROOM (10%) of the device free for them.
"""
from __future__ import annotations

import json
import math
import os

import torch

from ..core.config import PRESETS, ModelConfig
from ..core.errors import TinyFBIError
from ..formats.hf_folder import config_from_hf
from ..formats.run_checkpoint import resolve_checkpoint
from ..training.setup import model_config
from ..training.spec import PAPER_SIZES, RunSpec
from .distributed import use_fsdp
from .fake_step import CHECKED_PARTS, FLOPS_TOLERANCE, MEMORY_TOLERANCE, measure_step
from .fused_loss import LOSS_CHUNK
from .model import TorchModel

GiB = 1 << 30
GPU_GIB = 80                    # an H100/A100 80GB: the "fits" column
HEADROOM = 0.10                 # of the device left free: CUDA context, fragmentation, compile workspace
H100_BF16 = 989e12              # dense bf16 peak of an H100 SXM, FLOP/s
TARGET_MFU = 0.40


def count_params(config: ModelConfig) -> dict:
    """Parameter counts by kind, from the torch model built on the meta device."""
    with torch.device("meta"):
        model = TorchModel(config)
    binarized = set(config.binarized_weight_names())
    counts = {"total": 0, "binarized": 0, "scales": 0, "full_precision": 0, "layer": 0, "layer_linears": 0}
    for name, p in model.named_parameters():
        n = p.numel()
        counts["total"] += n
        kind = ("binarized" if name in binarized else "scales" if name.endswith((".wscale", ".wbias"))
                else "full_precision")
        counts[kind] += n
        if name.startswith("model.layers.0."):
            counts["layer"] += n
            if name.endswith("proj.weight"):
                counts["layer_linears"] += n
    counts["root"] = counts["total"] - config.num_hidden_layers * counts["layer"]   # embeddings, norm, head
    return counts


def bits_per_param(config: ModelConfig, counts: dict) -> dict:
    """Storage bits per weight of a packed model: over the binarized layers, and over everything."""
    if not config.binarized:
        return {"binarized_layers": None, "whole_model": 16.0}
    matrices = 7 * config.num_hidden_layers
    if config.scaling == "ternary":  # BitNet b1.58: log2(3) bits per weight, one fp16 scale per matrix
        bits = counts["binarized"] * math.log2(3) + 16 * matrices
    else:  # one bit per sign, fp16 alpha and beta (wscale, wbias)
        bits = counts["binarized"] + 16 * counts["scales"]
    whole = (bits + 16 * counts["full_precision"]) / (counts["binarized"] + counts["full_precision"])
    return {"binarized_layers": bits / counts["binarized"], "whole_model": whole}


def flops_per_token(config: ModelConfig, teacher: ModelConfig | None, seq_len: int) -> dict:
    """Model FLOPs per trained token (PaLM, appendix B): 6 N + 12 L C T for the student's forward and
    backward, 2 N + 4 L C T for the teacher's forward; N counts the matmul weights (block linears and
    lm_head). Activation recomputation is not counted (model FLOPs, not hardware FLOPs)."""
    def matmul_params(c):
        per_layer = sum(o * i for o, i in c.linear_shapes().values())
        return c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size

    def attention(c):
        return c.num_hidden_layers * c.hidden_size * seq_len

    student = 6 * matmul_params(config) + 12 * attention(config)
    t = 2 * matmul_params(teacher) + 4 * attention(teacher) if teacher is not None else 0
    return {"student": student, "teacher": t, "total": student + t}


def memory_per_gpu(config: ModelConfig, counts: dict, teacher: ModelConfig | None, world: int, sharded: bool,
                   cpu_offload: bool, micro_batch: int, seq_len: int, checkpointing: bool, distill: bool,
                   fused: bool = True, fused_head: bool = True) -> dict:
    """Bytes per GPU by item (see the module docstring), plus host bytes."""
    P, L, C, I = counts["total"], config.num_hidden_layers, config.hidden_size, config.intermediate_size
    split = world if sharded else 1
    state = {"weights": 4 * P / split, "gradients": 4 * P / split, "optimizer": 8 * P / split}
    host = {k: 0.0 for k in state}
    if cpu_offload:
        host, state = state, {k: 0.0 for k in state}
    buffers = 0.0
    if sharded:   # the root gathered in bf16 throughout; then two layers gathered with one layer's bf16
        # gradient and its float32 copy for the reduce-scatter, or at the backward's end the root's float32 one
        buffers = 2 * counts["root"] + max((2 * 2 + 2 + 4) * counts["layer"], 4 * counts["root"])
    teacher_bytes = teacher_layers = 0.0
    if teacher is not None:
        t = count_params(teacher)
        teacher_layers = 2 * 2 * t["layer"] if sharded else 0.0    # two of its layers gathered, in its forward
        teacher_bytes = 2 * t["total"] / split + (2 * t["root"] if sharded else 0) + teacher_layers
    tokens = micro_batch * seq_len
    per_token = (28 if sharded else 34) * C + 8 * I + 24
    if config.binarized and fused:   # FusedFBILinear keeps its input as it comes, and no weight copies
        per_token, saved_weights = (28 if sharded else 32) * C + 8 * I + 24, 0
    elif config.binarized:
        saved_weights = (4 if sharded else 6) * counts["layer_linears"]
    else:
        saved_weights = 0 if sharded else 2 * counts["layer_linears"]
    one_layer = tokens * per_token + saved_weights
    without = L * one_layer
    with_ckpt = L * tokens * C * (2 if sharded else 4) + one_layer
    # the teacher's no-grad forward keeps no activations; its most at once is in a layer's MLP: the
    # layer's input, the residual after attention and its norm (3 C_t), silu(gate), up and their
    # product (3 I_t), all bf16 (the attention's q, k, v and output are fewer, and freed by then)
    teacher_transient = 2 * tokens * (3 * teacher.hidden_size + 3 * teacher.intermediate_size) \
        if teacher is not None and distill else 0.0
    out = {**state, "fsdp_buffers": buffers, "teacher": teacher_bytes, "teacher_forward": teacher_transient,
           "activations": with_ckpt if checkpointing else without,
           "logits_and_loss": head_loss_bytes(config, teacher if distill else None, tokens, fused_head, sharded)}
    out["total"] = sum(out.values())
    # the parts do not all peak at once: the teacher's forward is over before the student's starts, and
    # AdamW's step (foreach, as on GPUs: sqrt(v) for every parameter, 4 B each) after the backward
    # nor do the loss's chunks and the layer recomputed in the backward: with checkpointing the loss
    # runs beside the layers' inputs alone, the backward's recomputed layer after the loss has freed
    # its chunks (only dL/dh goes on)
    held = out["weights"] + out["gradients"] + out["optimizer"] + out["teacher"] - teacher_layers
    inputs = with_ckpt - one_layer
    # beside the loss: the last layer's output, the final norm's saved input and its output (12 C bytes
    # per token, float32); in the backward, the recomputed last layer's down_proj at its most: the
    # residual's gradient, dy and dx, and with float32 master weights the float32 copies of x and dy the
    # weight gradient is formed from (6 I + 12 C bytes per token), with bf16 weights under FSDP
    # 2 I + 4 C, plus the linear's W~, signs, gradients and products in bf16 (7 x 2 C I); measured by
    # --fake-step (docs/scaling.md)
    backward_temps = (tokens * (2 * I + 4 * C) + 14 * C * I) if sharded else tokens * (6 * I + 12 * C)
    student = (max(inputs + 12 * C * tokens + out["logits_and_loss"],
                   with_ckpt + (2 if sharded else 4) * tokens * C + backward_temps)
               if checkpointing else out["activations"] + 12 * C * tokens + out["logits_and_loss"])
    phases = {"teacher_forward": teacher_layers + out["teacher_forward"], "forward_backward": out["fsdp_buffers"] + student,
              "optimizer_step": 0.0 if cpu_offload else 4 * P / split}
    phases = {"held": held, **phases, "peak": held + max(phases.values())}
    return {"gpu": out, "phases": phases, "activations_with_checkpointing": with_ckpt, "activations_without_checkpointing": without,
            "host_offload": sum(host.values()), "host_rank0_checkpoint": 16 * P}


def head_loss_bytes(config: ModelConfig, teacher: ModelConfig | None, tokens: int, fused: bool,
                    sharded: bool = False) -> float:
    """Peak bytes of the heads and the loss for one micro-batch of `tokens` (see the module docstring)."""
    V, C = config.vocab_size, config.hidden_size
    if not fused:
        return tokens * V * (14 if teacher is not None else 10)
    n = min(tokens, LOSS_CHUNK)
    # a chunk at its most (fused_loss.py, under bf16 autocast): the student's log-softmax and softmax
    # beside the teacher's float32 logits and softmax, or beside its probabilities and their product
    # with the log-softmax (16 V bytes per token, all float32; 8 V with labels alone: the float32 logits
    # and log-softmax); or, when the chunk adds its head gradient, dlogits in bf16 (2 V) beside the
    # (V, C) product in bf16 and its float32 copy (6 V C)
    chunk = max(n * V * (16 if teacher is not None else 8), 2 * n * V + 6 * V * C)
    # held through the loss: dL/dh (h's dtype: float32, bf16 under FSDP), dL/dW_head in float32, the
    # head's bf16 copy (FSDP gathers it in bf16 already) and the teacher's final hidden state
    held = (2 if sharded else 4) * tokens * C + 4 * V * C + (0 if sharded else 2 * V * C)
    return chunk + held + (2 * tokens * teacher.hidden_size if teacher is not None else 0)


def teacher_for_plan(spec: RunSpec, vocab_size):
    """The teacher a run would load: --teacher PATH's config (read, not its weights); for --teacher
    auto the paper's LLaMA-2-7B shape at paper sizes, else the same-size model auto would train."""
    if spec.teacher == "none" or (spec.teacher == "auto" and spec.full_precision):
        return None, "none"
    if spec.teacher != "auto":
        return config_from_hf(resolve_checkpoint(spec.teacher)), str(spec.teacher)
    if spec.size in PAPER_SIZES:
        return ModelConfig.from_name("7b", binarized=False), "LLaMA-2-7B shape (the paper's teacher)"
    return ModelConfig.from_name(spec.size, vocab_size=vocab_size, binarized=False), f"full-precision {spec.size}"


def accumulation(spec: RunSpec, per_rank: int, gib_at, device_gib: float, strict: bool) -> int:
    """Micro-batches per rank per optimizer step: from --micro-batch or --grad-accum, else (for
    --recipe paper) the largest micro-batch dividing the rank's rows whose estimate fits; 1 otherwise."""
    if spec.micro_batch:
        if per_rank % spec.micro_batch:
            raise TinyFBIError(f"--micro-batch {spec.micro_batch} does not divide the {per_rank} rows each rank "
                               "takes of the batch")
        accum = per_rank // spec.micro_batch
        if spec.grad_accum and spec.grad_accum != accum:
            raise TinyFBIError(f"--grad-accum {spec.grad_accum} and --micro-batch {spec.micro_batch} disagree: "
                               f"{per_rank} rows per rank make {accum} micro-batches")
        return accum
    if spec.grad_accum:
        if per_rank % spec.grad_accum:
            raise TinyFBIError(f"--batch-size {spec.batch_size} must be divisible by world size x --grad-accum "
                               f"{spec.grad_accum}: every rank takes equal micro-batches")
        return spec.grad_accum
    if spec.recipe != "paper":
        return 1
    for micro in sorted((m for m in range(1, per_rank + 1) if per_rank % m == 0), reverse=True):
        if gib_at(micro) <= (1 - HEADROOM) * device_gib:
            return per_rank // micro
    if not strict:   # a dry run shows the plan that does not fit, and says so
        return per_rank
    raise TinyFBIError(f"even one sequence per GPU needs {gib_at(1):.1f} GiB by the planner's estimate, the "
                       f"device has {device_gib:.0f} ({HEADROOM:.0%} kept free): use more GPUs (FSDP shards weights and optimizer state), "
                       "--cpu-offload, or --activation-checkpointing on")


def plan_models(spec: RunSpec):
    """The student's config, the teacher's (None without one) and where the teacher comes from."""
    teacher, teacher_name = teacher_for_plan(spec, spec.vocab_size or PRESETS[spec.size].vocab_size)
    vocab = teacher.vocab_size if teacher is not None else spec.vocab_size or PRESETS[spec.size].vocab_size
    return model_config(spec, vocab, binarized=not spec.full_precision), teacher, teacher_name


def plan(spec: RunSpec, world=None, device_gib=None, strict=False) -> dict:
    """The run's plan, with its gradient accumulation (from --micro-batch or --grad-accum, or for
    --recipe paper from the largest micro-batch whose estimate fits device_gib, default --gpu-gib or
    80). strict: refuse a plan that cannot fit (a real run) instead of showing it (a dry run)."""
    world = world or spec.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    if spec.batch_size % world:
        raise TinyFBIError(f"--batch-size {spec.batch_size} must be divisible by world size {world}: every rank "
                           "takes equal rows")
    config, teacher, teacher_name = plan_models(spec)
    counts = count_params(config)
    sharded = use_fsdp(spec.fsdp, counts["total"], world, spec.cpu_offload)
    checkpointing = (spec.size in PAPER_SIZES if spec.activation_checkpointing == "auto"
                     else spec.activation_checkpointing == "on")
    distill = teacher is not None and spec.distills
    device_gib = device_gib or spec.gpu_gib or GPU_GIB

    def memory_at(micro):
        return memory_per_gpu(config, counts, teacher, world, sharded, spec.cpu_offload, micro, spec.seq_len,
                              checkpointing, distill, spec.fbi_linear == "fused", spec.head_loss == "fused")

    grad_accum = accumulation(spec, spec.batch_size // world, lambda m: memory_at(m)["gpu"]["total"] / GiB,
                              device_gib, strict)
    micro = spec.batch_size // world // grad_accum
    memory = memory_at(micro)
    flops = flops_per_token(config, teacher if distill else None, spec.seq_len)
    return {
        "size": spec.size, "binarized": config.binarized, "scaling": config.scaling if config.binarized else None,
        "config": {k: getattr(config, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                   "num_attention_heads", "num_key_value_heads", "vocab_size")},
        "params": {k: counts[k] for k in ("total", "binarized", "scales", "full_precision")},
        "num_params_check": counts["total"] == config.num_params(),
        "bits_per_param": bits_per_param(config, counts),
        "world_size": world, "parallel": "fsdp" if sharded else "ddp" if world > 1 else "single",
        "cpu_offload": bool(spec.cpu_offload), "activation_checkpointing": checkpointing,
        "batch_size": spec.batch_size, "seq_len": spec.seq_len, "grad_accum": grad_accum,
        "head_loss": spec.head_loss,
        "micro_batch_per_gpu": micro, "tokens_per_step": spec.batch_size * spec.seq_len,
        "device_gib": device_gib, "headroom": HEADROOM, "usable_gib": (1 - HEADROOM) * device_gib,
        "fits_device": memory["gpu"]["total"] / GiB <= (1 - HEADROOM) * device_gib,
        "teacher": {"source": teacher_name, "params": teacher.num_params() if teacher is not None else 0,
                    "used_for_loss": distill},
        "memory_gib_per_gpu": {k: v / GiB for k, v in memory["gpu"].items()},
        "phases_gib_per_gpu": {k: v / GiB for k, v in memory["phases"].items()},
        "activations_gib": {"with_checkpointing": memory["activations_with_checkpointing"] / GiB,
                            "without_checkpointing": memory["activations_without_checkpointing"] / GiB},
        "fits_80gib": memory["gpu"]["total"] / GiB <= (1 - HEADROOM) * GPU_GIB,
        "host_gib": {"per_process_offload": memory["host_offload"] / GiB,
                     "rank0_to_write_a_checkpoint": memory["host_rank0_checkpoint"] / GiB},
        "flops_per_token": flops,
        "tok_s_per_h100_at_40pct_mfu": TARGET_MFU * H100_BF16 / flops["total"],
        "budget": budget(spec, world, TARGET_MFU * H100_BF16 / flops["total"]),
    }


def budget(spec: RunSpec, world: int, tok_s_per_h100: float) -> dict:
    """Steps, tokens and wall-clock time of the run at --tok-s (measured), else at 40% MFU on H100s."""
    steps = spec.steps
    tokens = steps * spec.batch_size * spec.seq_len
    tok_s, source = ((spec.tok_s, "given") if spec.tok_s else
                     (tok_s_per_h100 * world, f"40% MFU on {world} H100(s), an assumption, not a measurement"))
    return {"steps": steps, "tokens": tokens, "token_budget": spec.tokens, "tok_s": tok_s,
            "tok_s_source": source, "hours": tokens / tok_s / 3600}


def format_plan(p: dict) -> str:
    c, n, b, m = p["config"], p["params"], p["bits_per_param"], p["memory_gib_per_gpu"]
    kind = "FBI student" if p["binarized"] else "full-precision model"
    lines = [
        f"{p['size']} {kind}: {c['num_hidden_layers']} layers, hidden {c['hidden_size']}, intermediate "
        f"{c['intermediate_size']}, {c['num_attention_heads']} heads, vocab {c['vocab_size']}",
        f"  parameters                      {n['total']:>15,}",
        f"    binarized latent weights      {n['binarized']:>15,}   (q k v o gate up down of every layer)",
        f"    wscale / wbias (alpha, beta)  {n['scales']:>15,}",
        f"    full precision                {n['full_precision']:>15,}   (embeddings, lm_head, RMSNorms)",
    ]
    if b["binarized_layers"] is not None:
        lines.append(f"  bits per parameter: {b['binarized_layers']:.4f} over the binarized layers "
                     f"(1-bit signs + fp16 alpha/beta), {b['whole_model']:.3f} over the whole model "
                     "(embeddings, lm_head, norms fp16)")
    lines += [
        f"  plan: {p['world_size']} GPU(s), {p['parallel'].upper()}{' + CPU offload' if p['cpu_offload'] else ''}, "
        f"batch {p['batch_size']} x {p['seq_len']} tokens = {p['micro_batch_per_gpu']} sequence(s) per GPU "
        f"per micro-batch, grad-accum {p['grad_accum']}, bf16 autocast, activation checkpointing "
        f"{'on' if p['activation_checkpointing'] else 'off'}",
        f"  teacher: {p['teacher']['source']}, {p['teacher']['params']:,} parameters in bf16"
        f"{'' if p['teacher']['used_for_loss'] or not p['teacher']['params'] else ' (evaluated only)'}",
        "  memory per GPU, estimate (GiB):",
        f"    weights (fp32 master)         {m['weights']:8.2f}",
        f"    gradients (fp32)              {m['gradients']:8.2f}",
        f"    AdamW moments (fp32 m, v)     {m['optimizer']:8.2f}",
        f"    FSDP gather/reduce buffers    {m['fsdp_buffers']:8.2f}",
        f"    teacher (bf16)                {m['teacher']:8.2f}",
        f"    teacher forward (temporaries) {m['teacher_forward']:8.2f}",
        f"    activations                   {m['activations']:8.2f}   (checkpointing on "
        f"{p['activations_gib']['with_checkpointing']:.2f}, off {p['activations_gib']['without_checkpointing']:.2f})",
        f"    logits and loss               {m['logits_and_loss']:8.2f}   ({p['head_loss']} head and loss)",
        f"    total                         {m['total']:8.2f}   "
        f"{'fits' if p['fits_device'] else 'does NOT fit'} a {p['device_gib']:g} GiB GPU with {p['headroom']:.0%} "
        f"of it left free ({p['usable_gib']:.1f} GiB usable; the rest for the CUDA context, fragmentation and "
        "compile workspace)",
        f"    at once, by phases            {p['phases_gib_per_gpu']['peak']:8.2f}   (held throughout "
        f"{p['phases_gib_per_gpu']['held']:.2f} + the largest of the teacher's forward "
        f"{p['phases_gib_per_gpu']['teacher_forward']:.2f}, the student's forward and backward "
        f"{p['phases_gib_per_gpu']['forward_backward']:.2f}, AdamW's step {p['phases_gib_per_gpu']['optimizer_step']:.2f})",
        f"  host memory: {p['host_gib']['rank0_to_write_a_checkpoint']:.0f} GiB on rank 0 to gather and write a "
        "checkpoint (fp32 weights + AdamW moments)"
        + (f"; {p['host_gib']['per_process_offload']:.1f} GiB per process for offloaded state"
           if p["cpu_offload"] else ""),
        f"  model FLOPs per token: {p['flops_per_token']['total'] / 1e9:.2f} GFLOP (student forward+backward "
        f"{p['flops_per_token']['student'] / 1e9:.2f}, teacher forward {p['flops_per_token']['teacher'] / 1e9:.2f}); "
        f"40% MFU on an H100 is {p['tok_s_per_h100_at_40pct_mfu']:,.0f} tokens/s per GPU",
        f"  budget: {p['budget']['steps']:,} optimizer steps x {p['tokens_per_step']:,} tokens = "
        f"{p['budget']['tokens']:.4g} tokens; at {p['budget']['tok_s']:,.0f} tokens/s ({p['budget']['tok_s_source']}) "
        f"that is {p['budget']['hours']:,.1f} hours ({p['budget']['hours'] / 24:,.1f} days)",
    ]
    return "\n".join(lines)


def main_plan(spec: RunSpec):
    p = plan(spec)
    if spec.fake_step:
        config, teacher, _ = plan_models(spec)
        p.update(check_plan(p, measure_step(spec, p, config, teacher)))
    print(json.dumps(p) if spec.json else format_plan(p) + (format_check(p) if spec.fake_step else ""))
    return p


def check_plan(p: dict, m: dict) -> dict:
    """The plan's fields for --fake-step: "measured_gib_per_gpu" (the parts of memory_gib_per_gpu the
    tracker tells apart, each at its own peak over the steady step, and the total at the tracker's
    peak) and "fake_step": the same against the plan (the total against the plan's peak, its phases'
    largest), what the tracker cannot split (activations, the loss, AdamW's step), the peak's
    composition, and FLOPs per token beside the formula's."""
    planned, phases = p["memory_gib_per_gpu"], p["phases_gib_per_gpu"]
    gib = {k: v / GiB for k, v in m["part_peaks"].items()}
    measured = {k: gib[k] for k in CHECKED_PARTS} | {"total": m["at_peak"]["total"] / GiB}
    against = {**{k: planned[k] for k in CHECKED_PARTS}, "total": phases["peak"],
               "activations_and_loss": phases["forward_backward"] - planned["fsdp_buffers"],
               "optimizer_step": phases["optimizer_step"]}
    values = {**measured, "activations_and_loss": gib["activations_and_loss"], "optimizer_step": gib["optimizer_step"]}
    ratios = {k: values[k] / against[k] if against[k] else None for k in against}
    flops = m["flops_per_token"] / p["flops_per_token"]["total"]
    return {"measured_gib_per_gpu": measured, "fake_step": {
        "tracker": "FSDPMemTracker" if p["parallel"] == "fsdp" else "MemTracker",
        "steps": m["steps"], "micro_batches": m["micro_batches"], "seconds": m["seconds"], "measured_gib": values, "plan_gib": against,
        "ratio_to_plan": ratios, "sum_of_parts_ratio": measured["total"] / planned["total"],
        "at_peak_gib": {k: v / GiB for k, v in m["at_peak"].items()},
        "within_tolerance": all(r is None or abs(r - 1) <= MEMORY_TOLERANCE for r in ratios.values()),
        "outside_tolerance": [k for k, r in ratios.items() if r is not None and abs(r - 1) > MEMORY_TOLERANCE],
        "tracker_bytes": {"part_peaks": m["part_peaks"], "at_peak": m["at_peak"]},
        "flops_per_token": m["flops_per_token"], "flops_ratio_to_formula": flops,
        "flops_within_tolerance": abs(flops - 1) <= FLOPS_TOLERANCE}}


def format_check(p: dict) -> str:
    f, planned = p["fake_step"], p["memory_gib_per_gpu"]
    names = {"weights": "weights (fp32 master)", "gradients": "gradients (fp32)", "optimizer": "AdamW moments",
             "fsdp_buffers": "FSDP gather/reduce buffers", "teacher": "teacher (bf16, with its gathers)",
             "teacher_forward": "teacher forward (transient)",
             "activations_and_loss": "activations + logits and loss", "optimizer_step": "AdamW step (transient)",
             "total": "peak (plan: its phases' largest)"}
    lines = [f"\n  PyTorch's account of the same step (--fake-step: rank 0 of {p['world_size']}, fake tensors, "
             f"{f['tracker']}, {f['steps']} steps, the second reported, with {f['micro_batches']} of the plan's "
             f"{p['grad_accum']} micro-batch(es) (later ones repeat the second); {f['seconds']:.0f} s):",
             f"\n    {'GiB per GPU':<36}{'plan':>8}{'tracker':>10}   ratio"]
    for k, name in names.items():
        r = f["ratio_to_plan"][k]
        lines.append(f"\n    {name:<36}{f['plan_gib'][k]:8.2f}{f['measured_gib'][k]:10.2f}   "
                     + (f"{r:6.3f}" if r is not None else "     -"))
    peak = f["at_peak_gib"]
    outside = ", ".join(names[k] for k in f["outside_tolerance"])
    lines += [f"\n    {'all agree' if not outside else 'all but ' + outside + ' agree'} within {MEMORY_TOLERANCE:.0%}: "
              "each part at its own peak over the step, the total at the tracker's peak",
              f"\n    the plan's total above ({planned['total']:.2f}) adds every part at its own peak, as if the "
              f"teacher's forward, the student's backward and AdamW's step overlapped: the tracker's peak is "
              f"{f['sum_of_parts_ratio']:.3f} of it",
              *(["\n    under FSDP the tracker sees one of the teacher's layers gathered at a time where the plan "
                 "counts two: on a CPU the next layer's all-gather waits for this layer's compute; on CUDA it "
                 "runs beside it on its own stream (FSDP2's implicit prefetch)"] if p["parallel"] == "fsdp" else []),
              f"\n    at the tracker's peak: weights {peak['weights']:.2f}, gradients {peak['gradients']:.2f}, AdamW "
              f"{peak['optimizer']:.2f}, FSDP buffers {peak['fsdp_buffers']:.2f}, teacher {peak['teacher']:.2f}, "
              f"activations and temporaries {peak['transient']:.2f}",
              "\n    not counted (fake tensors on the cpu device): CUDA's 512-byte rounding, the allocator's "
              "fragmentation, the CUDA context, NCCL: the 10% headroom",
              f"\n  FLOPs per token (FlopCounterMode, one micro-batch, no recomputation): "
              f"{f['flops_per_token'] / 1e9:.3f} G against the formula's {p['flops_per_token']['total'] / 1e9:.3f} G, "
              f"ratio {f['flops_ratio_to_formula']:.4f} ({'within' if f['flops_within_tolerance'] else 'NOT within'} "
              f"{FLOPS_TOLERANCE:.0%})"]
    return "".join(lines)
