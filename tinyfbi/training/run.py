"""One training run, both backends: run folder, data, teacher, student, loop, evaluation, report.

    python -m tinyfbi.train --backend numpy          # training.numpy_learner.NumpyBackend
    python -m tinyfbi.train --backend torch          # torch_backend.learner.TorchBackend

A backend supplies teachers, learners (training.loop.Learner), evaluation and sampling; this file
is the same for both, so a run can change backend at any checkpoint.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np

from ..core.errors import TinyFBIError
from ..core.model import Model
from ..formats.atomic import atomic_write_json
from ..formats.hf_folder import config_from_hf
from ..formats.run_checkpoint import has_checkpoint, load_trainer_state, resolve_checkpoint
from .loop import read_metrics, train
from .report import plot_losses
from .run_lock import RunLock
from .setup import (
    DEFAULT_STEPS,
    check_resumable,
    choose_run_folder,
    init_student,
    make_batches,
    model_config,
    optim_config,
    prepare_data,
    run_folder,
    train_config,
)
from .teacher_cache import build_teacher_cache, cache_folder, cache_identity, memo_val_loss


def run(args, backend) -> dict:
    """The whole `python -m tinyfbi.train` after its flags are checked; -> summary.json's dict."""
    backend.check_args(args)
    lock = backend.on_main(lambda: RunLock(run_folder(args)).acquire())   # before anything is read or written
    try:
        return run_locked(args, backend)
    finally:
        if lock is not None:
            lock.release()


def run_locked(args, backend) -> dict:
    steps, loss, run_dir = choose_run_folder(args)
    if args.resume:  # refuse a broken checkpoint now, before any teacher is trained
        backend.on_main(lambda: check_resumable(run_dir))
    teacher_dir = None if args.teacher in ("auto", "none") else resolve_checkpoint(args.teacher)
    corpus, tokenizer, train_tokens, val_tokens = backend.on_main_first(lambda: prepare_data(args, teacher_dir))
    data = (tokenizer, train_tokens, val_tokens)
    if teacher_dir is None and args.teacher == "auto" and not args.full_precision:
        teacher_dir = teacher_auto(args, backend, corpus, data)
    teacher = None if teacher_dir is None else backend.load_teacher(teacher_dir, check_teacher(teacher_dir, tokenizer))

    config = model_config(args, tokenizer.vocab_size, binarized=not args.full_precision)
    print(f"{'full-precision' if args.full_precision else 'FBI student'}: {args.size}, "
          f"{config.num_params() / 1e6:.2f}M parameters, loss {loss}, {steps} steps of "
          f"{args.batch_size}x{args.seq_len} tokens{backend.describe()} -> {run_dir}")
    extra = {"teacher": str(teacher_dir) if teacher_dir else None, "init": str(args.init), "loss": loss}
    init = None if args.resume else (lambda: init_student(args, config))
    identity = None if teacher is None else cache_identity(teacher_dir, corpus.source, tokenizer.key)
    cache = None
    if args.teacher_cache and teacher is not None and loss != "ce":
        cache = (cache_folder(args.out, identity, args.seq_len, args.teacher_cache), identity)
    result, learner, val_batches = train_model(args, backend, run_dir, config, init, data, steps, loss, teacher,
                                               "student" if config.binarized else "model", args.resume, extra,
                                               cache)

    tok_s = args.batch_size * args.seq_len / statistics.median(result["step_times"][2:] or result["step_times"]) \
        if result["step_times"] else None   # the first steps pay for allocation and warm-up
    summary = {"run": str(run_dir), "size": args.size, "binarized": config.binarized, "loss": loss,
               "scaling": config.scaling if config.binarized else None, "init": str(args.init),
               "steps": steps, "tokens_seen": steps * args.batch_size * args.seq_len,
               "params": config.num_params(), "tokenizer": tokenizer.key, "data": corpus.source,
               "val_loss": result["val_loss"], "val_ppl": result["val_ppl"], "rollbacks": result["rollbacks"],
               "backend": backend.name, "tok_s": tok_s}
    # the throughput report counts the teacher forward each step pays for (not a cached teacher)
    paid_teacher = teacher.config if teacher is not None and loss != "ce" and not args.teacher_cache else None
    summary.update(backend.report(learner, paid_teacher, tok_s))
    curves = {"student" if config.binarized else "full precision": read_metrics(run_dir / "metrics.jsonl")} \
        if backend.is_main else {}
    prompt = [int(t) for t in np.asarray(val_tokens[:8])]
    print(f"\nvalidation perplexity ({args.eval_batches} batches of {args.batch_size}x{args.seq_len}):")
    if teacher is not None:
        # computed once per teacher, data, windows and backend: a reproduction's students share it
        windows = {"batch_size": args.batch_size, "seq_len": args.seq_len, "eval_batches": args.eval_batches}
        t_loss = memo_val_loss(args.out, {**identity, **windows, "backend": backend.name},
                               lambda: backend.evaluate(teacher, val_batches()), backend.is_main)
        summary.update(teacher=str(teacher_dir), teacher_val_loss=t_loss, teacher_val_ppl=math.exp(t_loss))
        print(f"  teacher (full precision) {math.exp(t_loss):8.2f}")
        if backend.is_main and (Path(teacher_dir).parent / "metrics.jsonl").is_file():
            curves["teacher"] = read_metrics(Path(teacher_dir).parent / "metrics.jsonl")
    print(f"  {'student (FBI, 1-bit)' if config.binarized else 'model (full precision)'} {result['val_ppl']:8.2f}")
    print(f"\nprompt: {tokenizer.decode(prompt)!r}")
    if teacher is not None:
        summary["teacher_sample"] = backend.sample(teacher, tokenizer, prompt, args.sample_tokens, args.seed)
        print(f"teacher sample:\n{summary['teacher_sample']}\n")
    summary["sample"] = backend.sample(learner.model, tokenizer, prompt, args.sample_tokens, args.seed)
    print(f"{'student' if config.binarized else 'model'} sample:\n{summary['sample']}\n")
    if tok_s:
        print(f"speed: {tok_s:,.0f} tokens/s{backend.describe()}"
              + (f", MFU {summary['mfu']:.1%} (teacher forward counted)" if summary.get("mfu") else ""))
    if backend.is_main:
        kind = "FBI student" if config.binarized else "full precision"
        plot_losses(run_dir / "loss.png", curves, f"{args.size}: {kind} ({loss}, {backend.name}) on {corpus.name}")
        atomic_write_json(run_dir / "summary.json", summary)
    print(f"wrote {run_dir}/ (checkpoint/, metrics.jsonl, loss.png, summary.json)")
    return summary


def check_teacher(teacher_dir, tokenizer):
    """The teacher's ModelConfig (from its config and weight headers); its vocabulary must be the
    student's tokenizer's."""
    config = config_from_hf(teacher_dir)
    if config.vocab_size != tokenizer.vocab_size:
        raise TinyFBIError(f"teacher {teacher_dir} has vocabulary {config.vocab_size}, the student's tokenizer "
                           f"has {tokenizer.vocab_size}: they must match")
    if config.binarized:
        print(f"note: teacher {teacher_dir} is itself binarized")
    return config


def train_model(args, backend, run_dir, config, init, data, steps, loss, teacher=None, desc="student",
                resume=False, extra_fbi=None, cache=None):
    """Train one model into run_dir (the student, or a teacher of its own); init() gives its first
    weights on the main process (None when resuming); cache: (folder, identity) of the teacher's
    top-K cache (teacher_cache.cache_folder), built here if missing. -> (loop result, learner, val_batches)."""
    tokenizer, train_tokens, val_tokens = data
    sampler, val_batches = make_batches(args, backend, train_tokens, val_tokens)
    targets = None
    if cache is not None:
        # the main process runs the teacher over every sequence once; the others then load its files
        targets = backend.on_main_first(lambda: build_teacher_cache(
            backend.numpy_forward(teacher), sampler.sequences, args.teacher_cache, cache[0], identity=cache[1]))

    if backend.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    cfg, optim = train_config(args, steps, loss, config.binarized), optim_config(args, steps)
    learner = backend.learner(config, init, cfg, optim, run_dir, tokenizer, teacher, targets, extra_fbi)
    result = train(learner, backend.evaluate, backend.sync, cfg, optim, sampler, val_batches, run_dir, desc,
                   resolve_checkpoint(run_dir) if resume else None, backend.is_main)
    return result, learner, val_batches


def teacher_auto(args, backend, corpus, data) -> Path:
    """The cached full-precision teacher for this data, tokenizer and size: reused if trained,
    resumed if killed, else trained now with this backend. -> its checkpoint folder."""
    tokenizer = data[0]
    steps = args.teacher_steps or args.steps or DEFAULT_STEPS
    run_dir = (Path(args.out) / f"teacher-{args.size}-{corpus.name}-{tokenizer.key}-T{args.seq_len}-"
               f"{steps}steps-seed{args.seed}")
    # two runs that need the same teacher: one builds it, the other waits, then reuses it
    lock = backend.on_main(lambda: RunLock(run_dir, "teacher build").acquire(wait=True))
    try:
        return build_teacher(args, backend, run_dir, steps, data)
    finally:
        if lock is not None:
            lock.release()


def build_teacher(args, backend, run_dir, steps, data) -> Path:
    config = model_config(args, data[0].vocab_size, binarized=False)
    resume = has_checkpoint(run_dir)
    if resume:
        done = backend.on_main_first(lambda: load_trainer_state(resolve_checkpoint(run_dir))[0]["step"])
        if done >= steps:
            print(f"teacher: reusing {run_dir}")
            return resolve_checkpoint(run_dir)
        print(f"teacher: resuming {run_dir} at step {done}")
    else:
        print(f"teacher: training a full-precision {args.size} model for {steps} steps -> {run_dir}")
    init = None if resume else (lambda: Model(config, seed=args.seed).params)
    train_model(args, backend, run_dir, config, init, data, steps, "ce", desc="teacher", resume=resume)
    return resolve_checkpoint(run_dir)
