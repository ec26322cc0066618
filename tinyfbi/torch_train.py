"""`python -m tinyfbi.train --backend torch`: the same distillation run, in PyTorch, up to the paper's 13B.

Same flags, batches, init, loss, optimizer, schedule, metrics.jsonl, rollback and checkpoint folder
as the NumPy backend (tinyfbi.train.main_numpy, tinyfbi.trainer), so a run moves between backends
mid-way and, in float32 on a CPU, both backends trace the same loss curve. What torch adds is scale
(FBI-LLM, arXiv 2407.07093, section 4.1: bf16 mixed precision, FSDP, activation checkpointing):

- GPUs: bf16 autocast (float32 master weights, AdamW moments and gradient reduction);
- torchrun: every rank takes its rows of the same global batch; DDP for small models, FSDP2 per
  decoder layer for 1B+ (`--fsdp auto|on|off`, `--cpu-offload`), see tinyfbi.distributed;
- `--grad-accum N`: each rank's rows in N micro-batches (the global batch stays --batch-size);
- `--activation-checkpointing`: recompute each decoder layer in the backward;
- `--teacher PATH`: a tinyfbi checkpoint or a local Hugging Face LLaMA folder (Llama-2-7b-hf),
  read offline by tinyfbi.interop; the student takes the teacher's tokenizer;
- `--dry-run`: parameters, bits and memory per GPU without training (tinyfbi.plan).

    python -m tinyfbi.train --backend torch --size tiny --data corpus.txt --tokenizer byte
    torchrun --nproc-per-node=8 -m tinyfbi.train --backend torch --size 1.3b --teacher Llama-2-7b-hf \\
        --data hf:roneneldan/TinyStories --batch-size 64 --steps 20000
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .binarize import positive_mask
from .config import ModelConfig
from .distributed import Dist, get_full, local, put_full, replicate, setup, shard, teardown, use_fsdp
from .errors import TinyFBIError
from .optim import OptimConfig, lr_at
from .torch_model import TorchModel
from .train import (PAPER_SIZES, plan_run, init_student, model_config, optim_config, plot_losses,
                    prepare_data, teacher_auto)
from .trainer import LoopBookkeeping, TrainConfig, read_metrics

# bf16 dense peak of the GPUs MFU is reported against (FLOP/s); others report no MFU
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


def main_torch(args):
    if args.dry_run:
        from .plan import main_plan
        return main_plan(args)
    if args.cpu_offload and not torch.cuda.is_available():
        raise TinyFBIError("--cpu-offload moves FSDP's weights and AdamW state off the GPU: it needs CUDA")
    d = setup(force_group=args.fsdp == "on" or args.cpu_offload)
    try:
        with contextlib.ExitStack() as stack:
            if not d.is_main:  # one rank speaks: the others' prints (data, samples) would repeat it
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            return train_torch(args, d)
    finally:
        teardown(d)


# ---------------------------------------------------------------------------------------- setup


def check_torch_args(args, d: Dist):
    per_step = d.world_size * args.grad_accum
    if args.batch_size % per_step:
        raise TinyFBIError(f"--batch-size {args.batch_size} must be divisible by world size {d.world_size} "
                           f"x --grad-accum {args.grad_accum}: every rank takes equal micro-batches")
    if args.teacher == "auto" and args.size in PAPER_SIZES and not args.full_precision:
        raise TinyFBIError(f"--size {args.size} distills a full-precision teacher: give --teacher PATH "
                           "(e.g. a Llama-2-7b-hf folder, as the paper does), or --teacher none --loss ce")


def autocast(d: Dist):
    """bf16 autocast on GPUs (float32 master weights); plain float32 on a CPU, like NumPy."""
    if d.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def checkpointing_on(args, d: Dist) -> bool:
    if args.activation_checkpointing == "auto":
        return args.size in PAPER_SIZES and d.device.type == "cuda"
    return args.activation_checkpointing == "on"


def build_model(config: ModelConfig, d: Dist, read_params, sharded=False, cpu_offload=False,
                storage_dtype=torch.float32, compute_dtype=None, checkpoint_layers=False) -> TorchModel:
    """A TorchModel on this rank's device, filled from `read_params()` (called on rank 0 only: a dict
    name -> array; None leaves the memory unset for a checkpoint to fill). Built on the meta device,
    sharded if asked, then materialized: no rank ever holds a random copy of a 13B model."""
    with torch.device("meta"):
        model = TorchModel(config).to(storage_dtype)
    model.checkpoint_layers = checkpoint_layers
    if sharded:
        shard(model, d, cpu_offload, param_dtype=compute_dtype)
    model.to_empty(device="cpu" if cpu_offload else d.device)
    if read_params is None:
        return model
    params = d.on_main(read_params)
    for name, p in model.named_parameters():
        put_full(p, params[name] if d.is_main else None, d)
    return model


def load_teacher_torch(path, vocab_size, d: Dist, sharded: bool) -> TorchModel:
    """A tinyfbi checkpoint or an HF LLaMA folder as a frozen torch teacher: bf16 on GPUs, float32
    on a CPU; sharded like the student under FSDP. Its vocabulary must be the tokenizer's."""
    from .interop import config_from_hf, load_hf_checkpoint
    config = config_from_hf(path)  # config.json and the weights' headers: cheap on every rank
    if config.vocab_size != vocab_size:
        raise TinyFBIError(f"teacher {path} has vocabulary {config.vocab_size}, the student's tokenizer "
                           f"has {vocab_size}: they must match")
    if config.binarized:
        print(f"note: teacher {path} is itself binarized")
    dtype = torch.bfloat16 if d.device.type == "cuda" else torch.float32
    teacher = build_model(config, d, lambda: load_hf_checkpoint(path)[1], sharded=sharded, storage_dtype=dtype)
    return teacher.eval().requires_grad_(False)


def prepare_data_ranked(args, d: Dist, teacher_dir):
    """Rank 0 tokenizes (and trains a tokenizer) first; the others then find the cached files."""
    out = d.on_main(lambda: prepare_data(args, teacher_dir))
    return out if d.is_main else prepare_data(args, teacher_dir)


class NumpyTeacher:
    """The torch teacher behind the NumPy interface tinyfbi.teacher_cache expects (config, forward)."""

    def __init__(self, model, d):
        self.model, self.d, self.config, self._caches = model, d, model.config, None

    @torch.no_grad()
    def forward(self, x):
        with autocast(self.d):
            return self.model(torch.from_numpy(x).to(self.d.device)).float().cpu().numpy()


# ---------------------------------------------------------------------------------------- training


def distill_loss(kind, logits, y, probs, lam=0.5):
    """ce: next-token labels; ad: soft cross-entropy against the teacher's softmax (FBI-LLM eq. 5);
    mix: lam * ce + (1 - lam) * ad. Mean over positions, in float32."""
    flat = logits.float().flatten(0, 1)                                            # (b*T, V)
    if kind == "ce":
        return F.cross_entropy(flat, y.flatten())
    ad = F.cross_entropy(flat, probs.flatten(0, 1))
    return ad if kind == "ad" else lam * F.cross_entropy(flat, y.flatten()) + (1 - lam) * ad


@torch.no_grad()
def evaluate_torch(model, batches, d: Dist) -> float:
    """Mean next-token cross-entropy (nats) over the global (x, y) batches, rows split over ranks."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        mine = np.array_split(np.arange(len(x)), d.world_size)[d.rank]
        rows = mine if len(mine) else np.arange(1)  # a rank without rows still joins FSDP's gathers
        with autocast(d):
            logits = model(torch.from_numpy(x[rows]).to(d.device))
        nll = F.cross_entropy(logits.float().flatten(0, 1), torch.from_numpy(y[rows]).to(d.device).flatten(),
                              reduction="sum")
        if len(mine):
            total, count = total + nll.item(), count + y[rows].size
    total, count = d.all_reduce_sum([total, count])
    model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def sample_torch(model, tokenizer, prompt_ids, n_tokens, seed, d: Dist) -> str:
    """Temperature 0.8, top-k 40 like train.sample_text (same sampler), without a KV cache."""
    from .inference import sample_next
    rng = np.random.default_rng(seed)
    ids, max_len = list(prompt_ids) or [0], model.config.max_position_embeddings
    was_training = model.training
    model.eval()
    for _ in range(n_tokens):
        with autocast(d):
            logits = model(torch.tensor([ids[-max_len:]], device=d.device))[0, -1]
        nxt = sample_next(logits.float().cpu().numpy(), rng, temperature=0.8, top_k=40)
        ids.append(int(d.broadcast_object(nxt)))
    model.train(was_training)
    return tokenizer.decode(ids)


class TorchTrainer(LoopBookkeeping):
    """tinyfbi.trainer.Trainer's loop for a TorchModel: same state, metrics, checkpoints, rollback."""

    def __init__(self, module: TorchModel, model, cfg: TrainConfig, optim: OptimConfig, sampler, val_batches,
                 run_dir, tokenizer, d: Dist, teacher=None, teacher_cache=None, grad_accum=1,
                 extra_fbi=None, log=print):
        self.module, self.model = module, model  # model: what the step calls (DDP around module, or module)
        self.cfg, self.optim_cfg, self.sampler, self.val_batches = cfg, optim, sampler, val_batches
        self.run_dir, self.tokenizer, self.d = Path(run_dir), tokenizer, d
        self.teacher, self.teacher_cache, self.grad_accum = teacher, teacher_cache, grad_accum
        self.extra_fbi, self.log = extra_fbi, log
        self.named = list(module.named_parameters())
        # AdamW on every parameter with weight decay 0.1, as the released recipe
        self.opt = torch.optim.AdamW([p for _, p in self.named], lr=optim.lr, betas=(optim.beta1, optim.beta2),
                                     eps=optim.eps, weight_decay=optim.weight_decay)
        binarized = set(module.config.binarized_weight_names())
        self.binarized = [(n, p) for n, p in self.named if n in binarized]
        self.step = 0               # optimizer steps done
        self.data_step = 0          # batches drawn (skipped ones included)
        self.skipped: list[int] = []
        self.loss_ema = None
        self.rollbacks = 0
        self.step_times: list[float] = []
        self.metrics_path = self.run_dir / "metrics.jsonl"

    # ------------------------------------------------------------------ state (the NumPy trainer's format)

    def save(self):
        """Gather every parameter and AdamW moment to rank 0, tensor by tensor, and write the one
        checkpoint format (optimizer.safetensors keys m.<name> / v.<name>, as NumPy's AdamW)."""
        from .model import Model
        from .run_state import save_run_checkpoint
        params, m, v = {}, {}, {}
        for name, p in self.named:
            params[name] = get_full(p, self.d)
            st = self.opt.state.get(p)
            m[name] = get_full(st["exp_avg"], self.d) if st else None
            v[name] = get_full(st["exp_avg_sq"], self.d) if st else None
        if self.d.is_main:
            m = {k: np.zeros_like(params[k]) if a is None else a for k, a in m.items()}
            v = {k: np.zeros_like(params[k]) if a is None else a for k, a in v.items()}
            opt = SimpleNamespace(state_dict=lambda: {"step": self.step, "m": m, "v": v})
            save_run_checkpoint(self.run_dir, Model(self.module.config, params=params), self.tokenizer, opt,
                                self.state(), self.extra_fbi)
        self.d.barrier()

    def restore(self, ckpt_dir=None):
        """Params, AdamW moments and data position from a checkpoint (this run's if None), read on
        rank 0 and scattered; a checkpoint written by either backend."""
        from .checkpoint import load_checkpoint
        from .run_state import load_trainer_state, resolve_checkpoint

        def read():
            ckpt = resolve_checkpoint(ckpt_dir or self.run_dir)
            state, opt = load_trainer_state(ckpt)
            for key in ("seed", "batch_size", "seq_len", "loss"):
                if state.get(key) != getattr(self.cfg, key):
                    raise TinyFBIError(f"cannot resume: the checkpoint was trained with --{key.replace('_', '-')} "
                                       f"{state.get(key)}, this run asks for {getattr(self.cfg, key)}")
            config, params, _ = load_checkpoint(ckpt)
            if config.param_shapes() != self.module.config.param_shapes():
                raise TinyFBIError(f"cannot resume: {ckpt} holds a model of another shape")
            missing = [n for n, _ in self.named if n not in opt["m"] or n not in opt["v"]]
            if missing:
                raise TinyFBIError(f"{ckpt}: optimizer state lacks {missing[0]!r}")
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
        self.step, self.data_step = state["step"], state["data_step"]
        self.skipped, self.loss_ema = list(state["skipped"]), state["loss_ema"]
        self.rollbacks = state.get("rollbacks", 0)
        if self.d.is_main:
            self._truncate_metrics(self.step)

    def _write_metrics(self, row):
        if self.d.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------ one step

    def targets(self, x, rows, data_step):
        """Teacher probabilities for these rows: from the top-K cache, or a teacher forward."""
        if self.cfg.loss == "ce":
            return None
        if self.teacher_cache is not None:
            probs = self.teacher_cache.probs(self.sampler.windows(data_step)[rows])
            return torch.from_numpy(probs).to(self.d.device)
        with torch.no_grad(), autocast(self.d):
            return torch.softmax(self.teacher(x).float(), dim=-1)                   # (b, T, V)

    def rollback(self, data_step, loss):
        skipped = sorted(set(self.skipped) | {data_step})
        self.restore()
        self.skipped = skipped
        self.rollbacks += 1
        self.log(f"loss spike at step {self.step + 1} (loss {loss:.4g}, running mean "
                 f"{self.loss_ema if self.loss_ema is not None else float('nan'):.4g}): rolled back to the "
                 f"checkpoint at step {self.step} and skipped batch {data_step}")

    def forward_backward(self, x, y, probs):
        """Loss of one micro-batch, its gradient accumulated (divided by the number of micro-batches)."""
        with autocast(self.d):
            logits = self.model(x)
        loss = distill_loss(self.cfg.loss, logits, y, probs, self.cfg.mix_lambda)
        (loss / self.grad_accum).backward()
        return loss.detach()

    def train_step(self):
        x, y, data_step = self.next_batch()
        rows = self.d.rows(len(x))                                    # this rank's rows of the batch
        xr = torch.from_numpy(x[rows]).to(self.d.device)
        yr = torch.from_numpy(y[rows]).to(self.d.device)
        before = ([positive_mask(local(p)).clone() for _, p in self.binarized] if self.cfg.track_flips else None)
        losses = []
        for i, micro in enumerate(np.array_split(np.arange(len(xr)), self.grad_accum)):
            mx, my = xr[micro], yr[micro]
            probs = self.targets(mx, np.arange(rows.start, rows.stop)[micro], data_step)
            last = i == self.grad_accum - 1
            sync = self.model.no_sync() if hasattr(self.model, "no_sync") and not last else contextlib.nullcontext()
            with sync:  # DDP all-reduces once, after the last micro-batch
                losses.append(self.forward_backward(mx, my, probs))
        loss = self.d.all_reduce_sum([torch.stack(losses).mean().item()])[0] / self.d.world_size
        if self.is_spike(loss):
            self.opt.zero_grad(set_to_none=True)
            self.rollback(data_step, loss)
            return None
        lr = lr_at(self.step, self.optim_cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        params = [p for _, p in self.named]
        clip = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.data_step = data_step + 1
        self.loss_ema = loss if self.loss_ema is None else 0.95 * self.loss_ema + 0.05 * loss
        row = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": float(norm)}
        if before is not None:
            row["flips"] = self.flip_fractions(before)
        return row

    def flip_fractions(self, before) -> dict:
        """Per binarized layer and overall: fraction of latent weights whose sign changed this step."""
        changed = [float((was != positive_mask(local(p))).sum()) for was, (_, p) in zip(before, self.binarized)]
        if any(p is not local(p) for _, p in self.binarized):  # sharded: each rank counted its shard
            changed = self.d.all_reduce_sum(changed)
        out = {name.removesuffix(".weight"): c / p.numel() for c, (name, p) in zip(changed, self.binarized)}
        out["all"] = sum(changed) / max(sum(p.numel() for _, p in self.binarized), 1)
        return out

    # ------------------------------------------------------------------ the loop

    def run(self, desc="train", resume_from=None) -> dict:
        cfg = self.cfg
        if resume_from is not None:
            self.restore(resume_from)
            self.log(f"resumed {self.run_dir} at step {self.step}")
        else:
            if self.d.is_main:
                self.metrics_path.write_text("")
            self.save()  # step 0: a rollback always has somewhere to go
        tokens_per_step = cfg.batch_size * cfg.seq_len
        bar = tqdm(total=cfg.steps, initial=self.step, desc=desc, unit="step", dynamic_ncols=True,
                   leave=True, mininterval=1.0, disable=not self.d.is_main)
        val_loss = None
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            row = self.train_step()
            if row is None:  # rolled back
                bar.n = self.step
                bar.refresh()
                continue
            if self.d.device.type == "cuda":
                torch.cuda.synchronize()
            self.step_times.append(time.perf_counter() - t0)
            row["tok_s"] = tokens_per_step / self.step_times[-1]
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                val_loss = evaluate_torch(self.module, self.val_batches(), self.d)
                row["val_loss"] = val_loss
            self._write_metrics(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tok_s']:.0f}", lr=f"{row['lr']:.2e}",
                            **({"val": f"{val_loss:.3f}"} if val_loss is not None else {}))
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self.save()
        bar.close()
        if val_loss is None:
            val_loss = evaluate_torch(self.module, self.val_batches(), self.d)
        return {"val_loss": val_loss, "val_ppl": math.exp(val_loss), "steps": self.step,
                "rollbacks": self.rollbacks}


def run_training_torch(args, run_dir, model, tokenizer, train_tokens, val_tokens, steps, loss, teacher=None,
                       desc="student", resume=False, extra_fbi=None, *, d: Dist, config=None):
    """train.run_training for torch: `model` is the NumPy Model whose weights start the run (read on
    rank 0 only; may be None elsewhere, then `config` names the shape); `teacher` a torch teacher.
    -> (result, val_batches, trainer)."""
    from .data import BatchSampler, iter_eval_batches
    from .teacher_cache import AlignedSampler, build_teacher_cache
    config = config or model.config
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, seq_len=args.seq_len, loss=loss,
                      eval_every=args.eval_every, eval_batches=args.eval_batches,
                      save_every=args.save_every, spike_factor=args.spike_factor,
                      track_flips=args.track_flips and config.binarized, seed=args.seed)
    cache = None
    if args.teacher_cache and teacher is not None and loss != "ce":
        sampler = AlignedSampler(train_tokens, args.batch_size, args.seq_len, args.seed)
        folder = Path(run_dir).parent / f"{Path(run_dir).name}.teacher-top{args.teacher_cache}"
        # rank 0 runs the (unsharded) teacher over every window once; the others then load its files
        build = partial(build_teacher_cache, NumpyTeacher(teacher, d), train_tokens, args.seq_len,
                        args.teacher_cache, folder)
        cache = d.on_main(build)
        cache = cache if d.is_main else build()
    else:
        sampler = BatchSampler(train_tokens, args.batch_size, args.seq_len, args.seed)

    def val_batches():
        return iter_eval_batches(val_tokens, args.batch_size, args.seq_len, args.eval_batches)

    sharded = use_fsdp(args.fsdp, config.num_params(), d.world_size, args.cpu_offload)
    cuda = d.device.type == "cuda"
    module = build_model(config, d, None if resume else lambda: model.params, sharded=sharded,
                         cpu_offload=args.cpu_offload, compute_dtype=torch.bfloat16 if cuda else None,
                         checkpoint_layers=checkpointing_on(args, d)).train()
    wrapped = replicate(module, d) if d.world_size > 1 and not sharded else module
    if d.is_main:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    d.barrier()
    trainer = TorchTrainer(module, wrapped, cfg, optim_config(args, steps), sampler, val_batches, run_dir,
                           tokenizer, d, teacher, cache, args.grad_accum, extra_fbi)
    result = trainer.run(desc, resume_from=run_dir if resume else None)
    return result, val_batches, trainer


def train_torch(args, d: Dist):
    """main_numpy's flow: run folder, data, teacher, student, training, evaluation, samples, summary."""
    from .checkpoint import atomic_write_json
    from .run_state import check_resumable, resolve_checkpoint
    check_torch_args(args, d)
    steps, loss, run_dir = plan_run(args)
    if args.resume:  # refuse a broken checkpoint now, before any teacher is loaded or trained
        d.on_main(partial(check_resumable, run_dir))
    teacher_path = None if args.teacher in ("auto", "none") else resolve_checkpoint(args.teacher)
    corpus, tokenizer, train_tokens, val_tokens = prepare_data_ranked(args, d, teacher_path)

    config = model_config(args, tokenizer.vocab_size, binarized=not args.full_precision)
    sharded = use_fsdp(args.fsdp, config.num_params(), d.world_size, args.cpu_offload)
    teacher_dir = teacher_path
    if teacher_path is None and args.teacher == "auto" and not args.full_precision:
        # train (with this backend) or reuse the cached full-precision teacher, as the NumPy backend does
        _, teacher_dir = teacher_auto(args, tokenizer, train_tokens, val_tokens, corpus,
                                      train=partial(run_training_torch, d=d))
    # a teacher cache is built by rank 0 alone, so the teacher is then replicated, not sharded
    teacher = (None if teacher_dir is None else
               load_teacher_torch(teacher_dir, tokenizer.vocab_size, d, sharded and not args.teacher_cache))
    student = None if args.resume else d.on_main(lambda: init_student(args, config))
    print(f"{'full-precision' if args.full_precision else 'FBI student'}: {args.size}, "
          f"{config.num_params() / 1e6:.2f}M parameters, loss {loss}, {steps} steps of "
          f"{args.batch_size}x{args.seq_len} tokens on {d.world_size} x {d.device.type}"
          f"{' (FSDP)' if sharded else ' (DDP)' if d.world_size > 1 else ''} -> {run_dir}")
    extra = {"teacher": str(teacher_dir) if teacher_dir else None, "init": str(args.init), "loss": loss}
    result, val_batches, trainer = run_training_torch(
        args, run_dir, student, tokenizer, train_tokens, val_tokens, steps, loss, teacher,
        resume=args.resume, extra_fbi=extra, d=d, config=config)

    from .plan import flops_per_token
    # MFU counts the teacher forward each step pays for (not a cached teacher, not an evaluation-only one)
    teacher_config = teacher.config if teacher is not None and loss != "ce" and not args.teacher_cache else None
    tok_s = tokens_per_second(trainer.step_times, args.batch_size * args.seq_len)
    flops = flops_per_token(config, teacher_config, args.seq_len)
    summary = {"run": str(run_dir), "size": args.size, "binarized": config.binarized, "loss": loss,
               "scaling": config.scaling if config.binarized else None, "init": str(args.init),
               "steps": steps, "tokens_seen": steps * args.batch_size * args.seq_len,
               "params": config.num_params(), "tokenizer": tokenizer.key, "data": corpus.source,
               "val_loss": result["val_loss"], "val_ppl": result["val_ppl"], "rollbacks": result["rollbacks"],
               "backend": "torch", "device": device_name(d), "world_size": d.world_size, "fsdp": sharded,
               "tok_s": tok_s, "tok_s_per_device": tok_s and tok_s / d.world_size,
               "flops_per_token": flops["total"], "mfu": mfu(tok_s, d, flops["total"])}
    curves = {"student" if config.binarized else "full precision": read_metrics(run_dir / "metrics.jsonl")} \
        if d.is_main else {}
    prompt = [int(t) for t in np.asarray(val_tokens[:8])]
    print(f"\nvalidation perplexity ({args.eval_batches} batches of {args.batch_size}x{args.seq_len}):")
    if teacher is not None:
        t_loss = evaluate_torch(teacher, val_batches(), d)
        summary.update(teacher=str(teacher_dir), teacher_val_loss=t_loss, teacher_val_ppl=math.exp(t_loss))
        print(f"  teacher (full precision) {math.exp(t_loss):8.2f}")
        if d.is_main and (Path(teacher_dir).parent / "metrics.jsonl").is_file():
            curves["teacher"] = read_metrics(Path(teacher_dir).parent / "metrics.jsonl")
    print(f"  {'student (FBI, 1-bit)' if config.binarized else 'model (full precision)'} "
          f"{result['val_ppl']:8.2f}")
    print(f"\nprompt: {tokenizer.decode(prompt)!r}")
    if teacher is not None:
        summary["teacher_sample"] = sample_torch(teacher, tokenizer, prompt, args.sample_tokens, args.seed, d)
        print(f"teacher sample:\n{summary['teacher_sample']}\n")
    summary["sample"] = sample_torch(trainer.module, tokenizer, prompt, args.sample_tokens, args.seed, d)
    print(f"{'student' if config.binarized else 'model'} sample:\n{summary['sample']}\n")
    if tok_s:
        print(f"speed: {tok_s:,.0f} tokens/s on {d.world_size} x {summary['device']}"
              + (f", MFU {summary['mfu']:.1%} (teacher forward counted)" if summary["mfu"] else ""))
    if d.is_main:
        kind = "FBI student" if config.binarized else "full precision"
        plot_losses(run_dir / "loss.png", curves, f"{args.size}: {kind} ({loss}, torch) on {corpus.name}")
        atomic_write_json(run_dir / "summary.json", summary)
    print(f"wrote {run_dir}/ (checkpoint/, metrics.jsonl, loss.png, summary.json)")
    return summary


def tokens_per_second(step_times, tokens_per_step):
    """Median over the steps after the first two (allocator and autotuning warm-up)."""
    times = step_times[2:] or step_times
    return tokens_per_step / statistics.median(times) if times else None


def device_name(d: Dist) -> str:
    return torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "cpu"


def mfu(tok_s, d: Dist, flops_per_token):
    """Model FLOPs utilization per GPU against its bf16 dense peak (None on a CPU or an unknown GPU)."""
    if not tok_s or d.device.type != "cuda":
        return None
    name = device_name(d)
    peak = next((f for key, f in PEAK_FLOPS.items() if key in name), None)
    return tok_s / d.world_size * flops_per_token / peak if peak else None
