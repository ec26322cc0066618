"""One training run, both backends: run folder, data, teacher, student, loop, evaluation, report.

    python -m tinyfbi.train --backend numpy          # training.numpy_backend.NumpyBackend
    python -m tinyfbi.train --backend torch          # torch_backend.backend.TorchBackend

A backend (training.backend.Backend) supplies teachers, learners (training.loop.Learner),
evaluation and sampling; this file is the same for both, so a run can change backend at any
checkpoint. Everything here reads one frozen training.spec.RunSpec.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import TinyFBIError
from ..core.model import Model
from ..formats.atomic import atomic_write_json
from ..formats.hf_folder import config_from_hf
from ..formats.run_checkpoint import has_checkpoint, load_trainer_state, resolve_checkpoint
from .backend import Backend
from .loop import Loop, read_metrics
from .report import plot_losses
from .run_lock import RunLock
from .setup import decide_resume, init_student, load_data, make_batches, model_config, optim_config, train_config
from .spec import RunSpec
from .teacher_cache import build_teacher_cache, cache_folder, cache_identity, memo_val_loss


def run(spec: RunSpec, backend: Backend) -> dict:
    """The whole `python -m tinyfbi.train` for one spec; -> summary.json's dict."""
    lock = backend.on_main(lambda: RunLock(spec.run_dir).acquire())   # before anything is read or written
    try:
        return run_locked(spec, backend)
    finally:
        if lock is not None:
            lock.release()


def run_locked(spec: RunSpec, backend: Backend) -> dict:
    job = start(spec, backend)
    job.loop.run()
    return finish(job)


@dataclass
class Job:
    """A run between start() and finish(): its loop (stepped by run_locked, or by reproduction.lockstep beside
    others) and what its summary needs."""
    spec: RunSpec
    backend: Backend
    loop: Loop
    config: object
    corpus: object
    tokenizer: object
    val_tokens: object
    teacher: object
    teacher_dir: Path | None
    identity: dict | None
    distillation: str


def start(spec: RunSpec, backend: Backend) -> Job:
    """Everything of a run before its first step: resume decided, data, teacher, student, loop."""
    resume_from = backend.on_main_first(lambda: decide_resume(spec))   # before any teacher is trained
    run_dir, steps, loss = spec.run_dir, spec.steps, spec.loss
    teacher_dir = None if spec.teacher_path is None else resolve_checkpoint(spec.teacher_path)
    corpus, tokenizer, train_tokens, val_tokens = backend.on_main_first(lambda: load_data(spec, teacher_dir))
    data = (tokenizer, train_tokens, val_tokens)
    if teacher_dir is None and spec.teacher == "auto" and not spec.full_precision:
        teacher_dir = teacher_auto(spec, backend, corpus, data)
    teacher = None if teacher_dir is None else backend.load_teacher(teacher_dir, check_teacher(teacher_dir, tokenizer))

    config = model_config(spec, tokenizer.vocab_size, binarized=spec.binarized)
    distillation = describe_distillation(spec, teacher is not None)
    print(f"{'full-precision' if spec.full_precision else 'FBI student'}: {spec.size}, "
          f"{config.num_params() / 1e6:.2f}M parameters, loss {loss} ({distillation}), {steps} steps of "
          f"{spec.batch_size}x{spec.seq_len} tokens{backend.describe()} -> {run_dir}")
    extra = {"teacher": str(teacher_dir) if teacher_dir else None, "init": str(spec.init), "loss": loss}
    init = None if resume_from is not None else (lambda: init_student(spec, config))
    identity = None if teacher is None else cache_identity(teacher_dir, corpus.source, tokenizer.key)
    cache = None
    if spec.teacher_cache and teacher is not None and spec.distills:
        cache = (cache_folder(spec.out, identity, spec.seq_len, spec.teacher_cache), identity)
    loop = build_loop(spec, backend, run_dir, config, init, data, train_config(spec, config.binarized), teacher,
                      "student" if config.binarized else "model", resume_from, extra, cache)
    return Job(spec, backend, loop, config, corpus, tokenizer, val_tokens, teacher, teacher_dir, identity, distillation)


def finish(job: Job) -> dict:
    """A trained run's final evaluation, teacher comparison, samples, plot and summary.json; -> the summary."""
    spec, backend, config, corpus, tokenizer = job.spec, job.backend, job.config, job.corpus, job.tokenizer
    teacher, teacher_dir, identity, distillation = job.teacher, job.teacher_dir, job.identity, job.distillation
    run_dir, steps, loss, val_tokens = spec.run_dir, spec.steps, spec.loss, job.val_tokens
    result, learner, val_batches = job.loop.finish(), job.loop.learner, job.loop.val_batches

    tok_s = spec.batch_size * spec.seq_len / statistics.median(result["step_times"][2:] or result["step_times"]) \
        if result["step_times"] else None   # the first steps pay for allocation and warm-up
    summary = {"run": str(run_dir), "size": spec.size, "binarized": config.binarized, "loss": loss,
               "distillation": distillation,
               "scaling": config.scaling if config.binarized else None, "init": str(spec.init),
               "steps": steps, "tokens_seen": steps * spec.batch_size * spec.seq_len,
               "params": config.num_params(), "tokenizer": tokenizer.key, "data": corpus.source,
               "val_loss": result["val_loss"], "val_ppl": result["val_ppl"], "rollbacks": result["rollbacks"],
               "backend": backend.name, "tok_s": tok_s}
    # the throughput report counts the teacher forward each step pays for (not a cached teacher)
    paid_teacher = teacher.config if teacher is not None and spec.distills and not spec.teacher_cache else None
    summary.update(backend.report(learner, paid_teacher, tok_s))
    curves = {"student" if config.binarized else "full precision": read_metrics(run_dir / "metrics.jsonl")} \
        if backend.is_main else {}
    prompt = [int(t) for t in np.asarray(val_tokens[:8])]
    print(f"\nvalidation perplexity ({spec.eval_batches} batches of {spec.batch_size}x{spec.seq_len}):")
    if teacher is not None:
        # computed once per teacher, data, windows and backend: a reproduction's students share it
        windows = {"batch_size": spec.batch_size, "seq_len": spec.seq_len, "eval_batches": spec.eval_batches}
        t_loss = memo_val_loss(spec.out, {**identity, **windows, "backend": backend.name},
                               lambda: backend.evaluate(teacher, val_batches()), backend.is_main)
        summary.update(teacher=str(teacher_dir), teacher_val_loss=t_loss, teacher_val_ppl=math.exp(t_loss))
        print(f"  teacher (full precision) {math.exp(t_loss):8.2f}")
        if backend.is_main and (Path(teacher_dir).parent / "metrics.jsonl").is_file():
            curves["teacher"] = read_metrics(Path(teacher_dir).parent / "metrics.jsonl")
    print(f"  {'student (FBI, 1-bit)' if config.binarized else 'model (full precision)'} {result['val_ppl']:8.2f}")
    if spec.sample_tokens > 0:                                       # --sample-tokens 0: no samples
        print(f"\nprompt: {tokenizer.decode(prompt)!r}")
        if teacher is not None:
            summary["teacher_sample"] = backend.sample(teacher, tokenizer, prompt, spec.sample_tokens, spec.seed)
            print(f"teacher sample:\n{summary['teacher_sample']}\n")
        summary["sample"] = backend.sample(learner.model, tokenizer, prompt, spec.sample_tokens, spec.seed)
        print(f"{'student' if config.binarized else 'model'} sample:\n{summary['sample']}\n")
    if tok_s:
        print(f"speed: {tok_s:,.0f} tokens/s{backend.describe()}"
              + (f", MFU {summary['mfu']:.1%} (teacher forward counted)" if summary.get("mfu") else ""))
    if backend.is_main:
        kind = "FBI student" if config.binarized else "full precision"
        plot_losses(run_dir / "loss.png", curves, f"{spec.size}: {kind} ({loss}, {backend.name}) on {corpus.name}")
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


def build_loop(spec: RunSpec, backend: Backend, run_dir, config, init, data, cfg, teacher=None, desc="student",
               resume_from=None, extra_fbi=None, cache=None) -> Loop:
    """The loop that trains one model into run_dir (the student, or a teacher of its own) with the loop's
    config `cfg`; init() gives its first weights on the main process (None when resuming from the checkpoint
    resume_from); cache: (folder, identity) of the teacher's top-K cache (teacher_cache.cache_folder),
    built here if missing."""
    tokenizer, train_tokens, val_tokens = data
    sampler, val_batches = make_batches(spec, backend, train_tokens, val_tokens)
    targets = None
    if cache is not None:
        # the main process runs the teacher over every sequence once; the others then load its files
        targets = backend.on_main_first(lambda: build_teacher_cache(
            backend.numpy_forward(teacher), sampler.sequences, spec.teacher_cache, cache[0], identity=cache[1]))

    if backend.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    optim = optim_config(spec, cfg.steps)
    learner = backend.learner(config, init, cfg, optim, run_dir, tokenizer, teacher, targets, extra_fbi)
    return Loop(learner, backend.evaluate, backend.sync, cfg, optim, sampler, val_batches, run_dir, desc,
                resume_from, backend.is_main)


def train_model(spec: RunSpec, backend: Backend, run_dir, config, init, data, cfg, teacher=None, desc="student",
                resume_from=None, extra_fbi=None, cache=None):
    """build_loop's model trained to the end. -> (loop result, learner, val_batches)."""
    loop = build_loop(spec, backend, run_dir, config, init, data, cfg, teacher, desc, resume_from, extra_fbi, cache)
    loop.run()
    return loop.finish(), loop.learner, loop.val_batches


def teacher_auto(spec: RunSpec, backend: Backend, corpus, data) -> Path:
    """The cached full-precision teacher for this data, tokenizer and size: reused if trained,
    resumed if killed, else trained now with this backend. -> its checkpoint folder."""
    tokenizer = data[0]
    steps = spec.teacher_steps
    run_dir = (Path(spec.out) / f"teacher-{spec.size}-{corpus.name}-{tokenizer.key}-T{spec.seq_len}-"
               f"{steps}steps-seed{spec.seed}")
    # two runs that need the same teacher: one builds it, the other waits, then reuses it
    lock = backend.on_main(lambda: RunLock(run_dir, "teacher build").acquire(wait=True))
    try:
        return build_teacher(spec, backend, run_dir, steps, data)
    finally:
        if lock is not None:
            lock.release()


def build_teacher(spec: RunSpec, backend: Backend, run_dir, steps, data) -> Path:
    config = model_config(spec, data[0].vocab_size, binarized=False)
    resume = has_checkpoint(run_dir)
    if resume:
        done = backend.on_main_first(lambda: load_trainer_state(resolve_checkpoint(run_dir))[0]["step"])
        if done >= steps:
            print(f"teacher: reusing {run_dir}")
            return resolve_checkpoint(run_dir)
        print(f"teacher: resuming {run_dir} at step {done}")
    else:
        print(f"teacher: training a full-precision {spec.size} model for {steps} steps -> {run_dir}")
    init = None if resume else (lambda: Model(config, seed=spec.seed).params)
    ckpt = resolve_checkpoint(run_dir) if resume else None
    train_model(spec, backend, run_dir, config, init, data, train_config(spec, False, steps, "ce"), desc="teacher",
                resume_from=ckpt)
    return resolve_checkpoint(run_dir)


def describe_distillation(spec: RunSpec, has_teacher: bool) -> str:
    """What the student learns from, in words, for the log and summary.json."""
    if not (spec.distills and has_teacher):
        return "next-token labels"
    target = (f"the teacher's top-{spec.teacher_cache} probabilities, the rest spread evenly" if spec.teacher_cache
              else "the teacher's full softmax (T = 1)")
    return target + (", mixed 0.5/0.5 with the labels" if spec.loss == "mix" else "")
