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

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from .config import PRESETS, ModelConfig
from .errors import CLIParser, TinyFBIError

PAPER_SIZES = ("130m", "1.3b", "7b", "13b")
DEFAULT_STEPS = 400


def build_parser() -> argparse.ArgumentParser:
    ap = CLIParser(
        prog="python -m tinyfbi.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    ap.add_argument("--backend", choices=["numpy", "torch"], default="numpy",
                    help="numpy: the from-scratch core on the CPU; torch: the scaled backend (GPUs, torchrun)")
    ap.add_argument("--size", choices=list(PRESETS), default="tiny", help="model preset")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"student optimizer steps (default {DEFAULT_STEPS} for numpy)")
    ap.add_argument("--teacher-steps", type=int, default=None,
                    help="steps for a teacher trained here by --teacher auto (default: --steps)")
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per step")
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
    ap.add_argument("--scaling", choices=["column", "none", "row", "ternary"], default="column",
                    help="binarized weights: FBI's per-column alpha/beta, none, per-row, or BitNet b1.58 ternary")
    ap.add_argument("--full-precision", action="store_true",
                    help="train a full-precision model (a teacher) instead of the FBI student")
    ap.add_argument("--data", default=None,
                    help="shakespeare (default), a UTF-8 .txt file or folder, or hf:NAME[:CONFIG]")
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
    ap.add_argument("--sample-tokens", type=int, default=60, help="tokens to sample from each model at the end")
    # torch backend only (see tinyfbi/torch_train.py)
    ap.add_argument("--dry-run", action="store_true", help="torch: plan parameters and memory, train nothing")
    ap.add_argument("--world-size", type=int, default=None, help="torch --dry-run: GPUs to plan for")
    ap.add_argument("--json", action="store_true", help="torch --dry-run: one JSON object")
    ap.add_argument("--grad-accum", type=int, default=1, metavar="N",
                    help="torch: each rank's rows of the batch in N micro-batches (the batch stays --batch-size)")
    ap.add_argument("--fsdp", choices=["auto", "on", "off"], default="auto",
                    help="torch: shard with FSDP2 per decoder layer (auto: under torchrun, for 1B+ parameters); "
                         "else DDP")
    ap.add_argument("--cpu-offload", action="store_true",
                    help="torch: FSDP with weights, gradients and AdamW state in host memory")
    ap.add_argument("--activation-checkpointing", choices=["auto", "on", "off"], default="auto",
                    help="torch: recompute each decoder layer in the backward (auto: on for 130m+ on a GPU)")
    return ap


def check_args(args):
    if args.seq_len is None:
        args.seq_len = 2048 if args.size in PAPER_SIZES else 128
    for flag in ("steps", "teacher_steps", "batch_size", "seq_len", "eval_every", "eval_batches",
                 "save_every", "vocab_size", "world_size", "grad_accum"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise TinyFBIError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.lr is not None and not (0 < args.lr < 1):
        raise TinyFBIError(f"--lr must lie in (0, 1), got {args.lr}")
    if args.warmup is not None and args.warmup < 0:
        raise TinyFBIError(f"--warmup must be >= 0, got {args.warmup}")
    if args.teacher_cache < 0:
        raise TinyFBIError(f"--teacher-cache must be >= 0, got {args.teacher_cache}")
    if not args.spike_factor > 1:
        raise TinyFBIError(f"--spike-factor must be > 1, got {args.spike_factor}")
    if args.seed < 0:
        raise TinyFBIError(f"--seed must be >= 0, got {args.seed}")
    if args.loss in ("ad", "mix") and args.teacher == "none":
        raise TinyFBIError(f"--loss {args.loss} distills a teacher: give --teacher auto or PATH, or use --loss ce")
    if args.full_precision and args.loss != "ce" and args.teacher == "auto":
        args.loss = "ce"  # a teacher of its own is trained on labels
    if args.teacher_cache and args.loss == "ce":
        raise TinyFBIError("--teacher-cache needs a distillation loss (--loss ad or mix)")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        if args.backend == "torch":
            from .torch_train import main_torch
            return main_torch(args)
        return main_numpy(args)
    except TinyFBIError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is intact; rerun with --resume to continue", file=sys.stderr)
        sys.exit(130)


# ---------------------------------------------------------------------------------------- NumPy


def default_lr(size):
    return 3e-4 if size in PAPER_SIZES else 2e-3


def optim_config(args, steps):
    from .optim import OptimConfig
    lr = args.lr or default_lr(args.size)
    warmup = args.warmup if args.warmup is not None else min(2000, steps // 10)
    return OptimConfig(lr=lr, min_lr=lr / 10, warmup_steps=warmup, total_steps=steps)


def prepare_data(args, teacher_dir=None):
    from .data import corpus_dir, load_corpus, prepare_tokens
    from .tokenizers import build_tokenizer, load_tokenizer
    corpus = load_corpus(args.data, cache_dir=args.data_dir)
    if teacher_dir is not None:  # the student takes its teacher's tokenizer
        tokenizer = load_tokenizer(teacher_dir)
        if args.vocab_size is not None and args.vocab_size != tokenizer.vocab_size:
            raise TinyFBIError(f"the teacher's tokenizer has {tokenizer.vocab_size} tokens; "
                               f"--vocab-size {args.vocab_size} differs")
    else:
        tokenizer = build_tokenizer(args.tokenizer, corpus.train_text, args.vocab_size,
                                    corpus_dir(corpus, args.data_dir))
    train_tokens, val_tokens = prepare_tokens(corpus, tokenizer, cache_dir=args.data_dir)
    for name, toks in (("training split", train_tokens), ("validation split", val_tokens)):
        if len(toks) < args.seq_len + 1:
            raise TinyFBIError(f"{name} of {corpus.source} is shorter than one sequence: "
                               f"{len(toks)} tokens < --seq-len {args.seq_len} + 1")
    print(f"data: {corpus!r}; tokenizer {tokenizer.key}: {len(train_tokens):,} train / "
          f"{len(val_tokens):,} val tokens")
    return corpus, tokenizer, train_tokens, val_tokens


def model_config(args, vocab_size, binarized):
    preset = PRESETS[args.size]
    return ModelConfig.from_name(args.size, vocab_size=vocab_size, binarized=binarized,
                                 scaling=args.scaling if binarized else "column",
                                 max_position_embeddings=max(preset.max_position_embeddings, args.seq_len))


def load_teacher(path, tokenizer_vocab):
    from .model import Model
    teacher = Model.load(path)
    if teacher.config.binarized:
        print(f"note: teacher {path} is itself binarized")
    if teacher.config.vocab_size != tokenizer_vocab:
        raise TinyFBIError(f"teacher {path} has vocabulary {teacher.config.vocab_size}, the student's "
                           f"tokenizer has {tokenizer_vocab}: they must match")
    return teacher


def run_training(args, run_dir, model, tokenizer, train_tokens, val_tokens, steps, loss, teacher=None,
                 desc="student", resume=False, extra_fbi=None):
    from .data import BatchSampler, iter_eval_batches
    from .run_state import resolve_checkpoint
    from .teacher_cache import AlignedSampler, build_teacher_cache
    from .trainer import TrainConfig, Trainer
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, seq_len=args.seq_len, loss=loss,
                      eval_every=args.eval_every, eval_batches=args.eval_batches,
                      save_every=args.save_every, spike_factor=args.spike_factor,
                      track_flips=args.track_flips and model.config.binarized, seed=args.seed)
    cache = None
    if args.teacher_cache and teacher is not None and loss != "ce":
        sampler = AlignedSampler(train_tokens, args.batch_size, args.seq_len, args.seed)
        cache = build_teacher_cache(teacher, train_tokens, args.seq_len, args.teacher_cache,
                                    run_dir.parent / f"{run_dir.name}.teacher-top{args.teacher_cache}")
    else:
        sampler = BatchSampler(train_tokens, args.batch_size, args.seq_len, args.seed)

    def val_batches():
        return iter_eval_batches(val_tokens, args.batch_size, args.seq_len, args.eval_batches)

    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, cfg, optim_config(args, steps), sampler, val_batches, run_dir, tokenizer,
                      teacher, cache, extra_fbi=extra_fbi)
    result = trainer.run(desc, resume_from=resolve_checkpoint(run_dir) if resume else None)
    return result, val_batches


def teacher_auto(args, tokenizer, train_tokens, val_tokens, corpus, train=None):
    """Reuse the cached full-precision teacher for this data/tokenizer/size, or train it now
    (with `train`, run_training's signature: the torch backend passes its own)."""
    from .model import Model
    from .run_state import load_trainer_state, resolve_checkpoint
    train = train or run_training
    steps = args.teacher_steps or args.steps or DEFAULT_STEPS
    run_dir = Path(args.out) / f"teacher-{args.size}-{corpus.name}-{tokenizer.key}-T{args.seq_len}-{steps}steps-seed{args.seed}"
    from .run_state import has_checkpoint
    if has_checkpoint(run_dir):
        ckpt = resolve_checkpoint(run_dir)
        state, _ = load_trainer_state(ckpt)
        if state["step"] >= steps:
            print(f"teacher: reusing {run_dir}")
            return Model.load(ckpt), ckpt
        print(f"teacher: resuming {run_dir} at step {state['step']}")
        model = Model(model_config(args, tokenizer.vocab_size, False), seed=args.seed)
        train(args, run_dir, model, tokenizer, train_tokens, val_tokens, steps, "ce",
              desc="teacher", resume=True)
        return model, resolve_checkpoint(run_dir)
    print(f"teacher: training a full-precision {args.size} model for {steps} steps -> {run_dir}")
    model = Model(model_config(args, tokenizer.vocab_size, False), seed=args.seed)
    train(args, run_dir, model, tokenizer, train_tokens, val_tokens, steps, "ce", desc="teacher")
    return model, resolve_checkpoint(run_dir)


def init_student(args, config):
    from . import layers as L
    from .model import Model
    student = Model(config, seed=args.seed)
    if args.init == "scratch":
        return student
    source = Model.load(args.init)
    if source.config.replace(binarized=config.binarized, scaling=config.scaling,
                             max_position_embeddings=config.max_position_embeddings) != config:
        raise TinyFBIError(f"--init {args.init} has a different shape from the student "
                           f"({source.config} vs {config})")
    for name in student.params:
        if name in source.params and source.params[name].shape == student.params[name].shape:
            student.params[name][...] = source.params[name]
    if config.has_scales and not source.config.binarized:  # FBI init of scales from the new latents
        for name in student.binarized_names:
            prefix = name.removesuffix(".weight")
            wscale, wbias = L.init_scales(student.params[name], config.scaling)
            student.params[prefix + ".wscale"][...] = wscale
            student.params[prefix + ".wbias"][...] = wbias
    return student


def sample_text(model, tokenizer, prompt_ids, n_tokens, seed):
    from .inference import FloatRunner, generate
    ids = generate(FloatRunner(model), prompt_ids, max_new_tokens=n_tokens, temperature=0.8, top_k=40, seed=seed)
    return tokenizer.decode(ids)


def plot_losses(path, curves, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rows in curves.items():
        steps = [r["step"] for r in rows]
        line, = ax.plot(steps, [r["loss"] for r in rows], lw=1, alpha=0.6, label=f"{label} train")
        val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        if val:
            ax.plot(*zip(*val), "o-", color=line.get_color(), label=f"{label} validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def plan_run(args):
    """(steps, loss, run folder) of this invocation; refuses to overwrite a run or resume nothing."""
    from .run_state import has_checkpoint
    steps = args.steps or DEFAULT_STEPS
    loss = "ce" if args.full_precision else args.loss
    name = args.name or (f"{args.size}-fp" if args.full_precision else f"{args.size}-{loss}")
    run_dir = Path(args.out) / name
    if has_checkpoint(run_dir) and not args.resume:
        raise TinyFBIError(f"{run_dir} already holds a run: pass --resume to continue it, or --name for a new one")
    if args.resume and not has_checkpoint(run_dir):
        raise TinyFBIError(f"--resume: {run_dir} holds no checkpoint to resume")
    return steps, loss, run_dir


def main_numpy(args):
    from .checkpoint import atomic_write_json
    from .trainer import evaluate, read_metrics
    steps, loss, run_dir = plan_run(args)
    if args.resume:  # refuse a broken checkpoint now, before any teacher is trained
        from .run_state import check_resumable
        check_resumable(run_dir)
    teacher_path = None if args.teacher in ("auto", "none") else args.teacher
    if teacher_path is not None:
        from .run_state import resolve_checkpoint
        teacher_path = resolve_checkpoint(teacher_path)
    corpus, tokenizer, train_tokens, val_tokens = prepare_data(args, teacher_path)

    teacher, teacher_dir = None, None
    if teacher_path is not None:
        teacher, teacher_dir = load_teacher(teacher_path, tokenizer.vocab_size), teacher_path
    elif args.teacher == "auto" and not args.full_precision:
        teacher, teacher_dir = teacher_auto(args, tokenizer, train_tokens, val_tokens, corpus)

    config = model_config(args, tokenizer.vocab_size, binarized=not args.full_precision)
    student = init_student(args, config)
    print(f"{'full-precision' if args.full_precision else 'FBI student'}: {args.size}, "
          f"{student.num_params() / 1e6:.2f}M parameters, loss {loss}, {steps} steps of "
          f"{args.batch_size}x{args.seq_len} tokens -> {run_dir}")
    extra = {"teacher": str(teacher_dir) if teacher_dir else None, "init": str(args.init), "loss": loss}
    result, val_batches = run_training(args, run_dir, student, tokenizer, train_tokens, val_tokens, steps,
                                       loss, teacher, resume=args.resume, extra_fbi=extra)

    summary = {"run": str(run_dir), "size": args.size, "binarized": config.binarized, "loss": loss,
               "scaling": config.scaling if config.binarized else None, "init": str(args.init),
               "steps": steps, "tokens_seen": steps * args.batch_size * args.seq_len,
               "params": student.num_params(), "tokenizer": tokenizer.key, "data": corpus.source,
               "val_loss": result["val_loss"], "val_ppl": result["val_ppl"], "rollbacks": result["rollbacks"]}
    curves = {"student" if config.binarized else "full precision": read_metrics(run_dir / "metrics.jsonl")}
    prompt = [int(t) for t in np.asarray(val_tokens[:8])]
    print(f"\nvalidation perplexity ({args.eval_batches} batches of {args.batch_size}x{args.seq_len}):")
    if teacher is not None:
        t_loss = evaluate(teacher, val_batches())
        summary.update(teacher=str(teacher_dir), teacher_val_loss=t_loss, teacher_val_ppl=math.exp(t_loss))
        print(f"  teacher (full precision) {math.exp(t_loss):8.2f}")
        if (Path(teacher_dir).parent / "metrics.jsonl").is_file():
            curves["teacher"] = read_metrics(Path(teacher_dir).parent / "metrics.jsonl")
    print(f"  {'student (FBI, 1-bit)' if config.binarized else 'model (full precision)'} "
          f"{result['val_ppl']:8.2f}")
    print(f"\nprompt: {tokenizer.decode(prompt)!r}")
    if teacher is not None:
        summary["teacher_sample"] = sample_text(teacher, tokenizer, prompt, args.sample_tokens, args.seed)
        print(f"teacher sample:\n{summary['teacher_sample']}\n")
    summary["sample"] = sample_text(student, tokenizer, prompt, args.sample_tokens, args.seed)
    print(f"{'student' if config.binarized else 'model'} sample:\n{summary['sample']}\n")
    plot_losses(run_dir / "loss.png", curves, f"{args.size}: {'FBI student' if config.binarized else 'full precision'}"
                f" ({loss}) on {corpus.name}")
    atomic_write_json(run_dir / "summary.json", summary)
    print(f"wrote {run_dir}/ (checkpoint/, metrics.jsonl, loss.png, summary.json)")
    return summary


if __name__ == "__main__":
    main()
