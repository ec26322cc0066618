"""From the command line to the pieces of a run: its folder, data, model and optimizer configs,
the student's initial weights. Shared by both backends; training.run puts the pieces together."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..core import layers as L
from ..core.config import PRESETS, ModelConfig
from ..core.errors import TinyFBIError
from ..core.model import Model
from ..core.optim import OptimConfig
from ..corpus.batches import BatchSampler, Sequences, iter_eval_batches
from ..corpus.shards import is_prepared, open_prepared
from ..corpus.sources import Corpus, corpus_dir, load_corpus
from ..corpus.token_files import tokenize_corpus
from ..corpus.tokenizers import IdsTokenizer, build_tokenizer, load_tokenizer
from ..formats.checkpoint import load_checkpoint, load_model
from ..formats.run_checkpoint import has_checkpoint, load_trainer_state, resolve_checkpoint
from .loop import TrainConfig

PAPER_SIZES = ("130m", "1.3b", "7b", "13b")
DEFAULT_STEPS = 400


def training_loss(args) -> str:
    """The loss this run trains with: --loss, except that a full-precision model learns from labels
    unless it is given a teacher PATH to distill (--teacher auto trains a teacher for students only)."""
    return "ce" if args.full_precision and args.teacher in ("auto", "none") else args.loss


def run_folder(args) -> Path:
    """runs/NAME: --name, else <size>-<loss> (<size>-fp, or <size>-fp-<loss> when distilled, for a
    full-precision model)."""
    loss = training_loss(args)
    default = (f"{args.size}-fp" + ("" if loss == "ce" else f"-{loss}")) if args.full_precision else f"{args.size}-{loss}"
    return Path(args.out) / (args.name or default)


def choose_run_folder(args):
    """(steps, loss, run folder) of this invocation; refuses to overwrite a run or resume nothing."""
    steps = args.steps or DEFAULT_STEPS
    loss = training_loss(args)
    run_dir = run_folder(args)
    if has_checkpoint(run_dir) and not args.resume:
        raise TinyFBIError(f"{run_dir} already holds a run: pass --resume to continue it, or --name for a new one")
    if args.resume and not has_checkpoint(run_dir):
        raise TinyFBIError(f"--resume: {run_dir} holds no checkpoint to resume")
    return steps, loss, run_dir


def check_resumable(run_dir):
    """Refuse a truncated or corrupted checkpoint with one line, before any work is done."""
    ckpt = resolve_checkpoint(run_dir)
    load_trainer_state(ckpt)
    load_checkpoint(ckpt)


def default_lr(size):
    return 3e-4 if size in PAPER_SIZES else 2e-3


def optim_config(args, steps) -> OptimConfig:
    lr = args.lr or default_lr(args.size)
    warmup = args.warmup if args.warmup is not None else min(2000, steps // 10)
    return OptimConfig(lr=lr, min_lr=lr / 10, warmup_steps=warmup, total_steps=steps,
                       warmup_from_zero=getattr(args, "recipe", "none") == "paper")


def train_config(args, steps, loss, binarized) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=args.batch_size, seq_len=args.seq_len, loss=loss,
                       eval_every=args.eval_every, eval_batches=args.eval_batches, save_every=args.save_every,
                       spike_factor=args.spike_factor, track_flips=args.track_flips and binarized, seed=args.seed)


def model_config(args, vocab_size, binarized) -> ModelConfig:
    preset = PRESETS[args.size]
    return ModelConfig.from_name(args.size, vocab_size=vocab_size, binarized=binarized,
                                 scaling=args.scaling if binarized else "column",
                                 max_position_embeddings=max(preset.max_position_embeddings, args.seq_len))


def prepare_data(args, teacher_dir=None):
    """(corpus, tokenizer, train tokens, validation tokens); the student takes its teacher's tokenizer.
    --data DIR holding a manifest.json: a prepared folder (python -m tinyfbi.prepare), its shards memmapped."""
    if args.data is not None and is_prepared(args.data):
        return prepared_data(args, teacher_dir)
    corpus = load_corpus(args.data, cache_dir=args.data_dir)
    if teacher_dir is not None:
        tokenizer = load_tokenizer(teacher_dir)
        if args.vocab_size is not None and args.vocab_size != tokenizer.vocab_size:
            raise TinyFBIError(f"the teacher's tokenizer has {tokenizer.vocab_size} tokens; "
                               f"--vocab-size {args.vocab_size} differs")
    else:
        tokenizer = build_tokenizer(args.tokenizer, corpus.train_text, args.vocab_size,
                                    corpus_dir(corpus, args.data_dir))
    train_tokens, val_tokens = tokenize_corpus(corpus, tokenizer, cache_dir=args.data_dir)
    for name, toks in (("training split", train_tokens), ("validation split", val_tokens)):
        if len(toks) < args.seq_len + 1:
            raise TinyFBIError(f"{name} of {corpus.source} is shorter than one sequence: "
                               f"{len(toks)} tokens < --seq-len {args.seq_len} + 1")
    print(f"data: {corpus!r}; tokenizer {tokenizer.key}: {len(train_tokens):,} train / "
          f"{len(val_tokens):,} val tokens")
    return corpus, tokenizer, train_tokens, val_tokens


def prepared_data(args, teacher_dir=None):
    """A prepared folder's splits (corpus.batches.TokenSplit) and tokenizer, checked against the
    teacher's tokenizer, --vocab-size, --tokenizer PATH and --seq-len before any work is done."""
    prepared = open_prepared(args.data)
    tokenizer, folder = prepared.tokenizer, prepared.folder
    if teacher_dir is not None:
        teacher_tok = load_tokenizer(teacher_dir)
        same = (teacher_tok.vocab_size == tokenizer.vocab_size if isinstance(tokenizer, IdsTokenizer)
                else teacher_tok.spec.get("fingerprint") == tokenizer.spec.get("fingerprint")
                and teacher_tok.kind == tokenizer.kind and teacher_tok.vocab_size == tokenizer.vocab_size)
        if not same:
            raise TinyFBIError(f"{folder} was prepared with tokenizer {tokenizer.key}, the teacher {teacher_dir} "
                               f"uses {teacher_tok.key}: prepare the data with the teacher's tokenizer")
        tokenizer = teacher_tok if isinstance(tokenizer, IdsTokenizer) else tokenizer  # samples print as text
    if args.vocab_size is not None and args.vocab_size != tokenizer.vocab_size:
        raise TinyFBIError(f"{folder} was prepared with a {tokenizer.vocab_size}-id vocabulary; "
                           f"--vocab-size {args.vocab_size} differs")
    if str(args.tokenizer).endswith(".model") and load_tokenizer(args.tokenizer).spec != tokenizer.spec:
        raise TinyFBIError(f"{folder} was prepared with tokenizer {tokenizer.key}, not {args.tokenizer}")
    for split in (prepared.train, prepared.val):
        Sequences(split, args.seq_len)            # rows shorter than seq_len + 1 are refused here
    name = f"prepared-{folder.resolve().name}-{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]}"
    corpus = Corpus(name, "", "", f"prepared:{folder.resolve()}")
    layout = f"rows of {prepared.train.row_len} ids" if prepared.train.row_len else "a token stream"
    print(f"data: {folder} ({layout}, {len(prepared.train.shards)} + {len(prepared.val.shards)} shards); "
          f"tokenizer {tokenizer.key}: {len(prepared.train):,} train / {len(prepared.val):,} val tokens")
    return corpus, tokenizer, prepared.train, prepared.val


def make_batches(args, backend, train_tokens, val_tokens):
    """The one batch path of both backends: (sampler, val_batches). Global batch k is a function of
    (--seed, k); under torchrun each rank reads only its rows (backend.rows) of it."""
    sampler = BatchSampler(train_tokens, args.batch_size, args.seq_len, args.seed, "training split",
                           backend.rows(args.batch_size))

    def val_batches():
        return iter_eval_batches(val_tokens, args.batch_size, args.seq_len, args.eval_batches)
    return sampler, val_batches


def init_student(args, config) -> dict:
    """The student's initial parameters: from scratch (seeded), or --init's weights (FBI's alpha/beta
    recomputed from them when they come from a full-precision model)."""
    student = Model(config, seed=args.seed)
    if args.init == "scratch":
        return student.params
    source = load_model(args.init)
    if source.config.replace(binarized=config.binarized, scaling=config.scaling, sign_of_zero=config.sign_of_zero,
                             max_position_embeddings=config.max_position_embeddings) != config:
        raise TinyFBIError(f"--init {args.init} has a different shape from the student "
                           f"({source.config} vs {config})")
    zeros = sum(int(np.count_nonzero(source.params[n] == 0)) for n in source.binarized_names)
    if source.config.sign_of_zero == 0 and zeros:
        print(f"note: --init {args.init} holds {zeros:,} latent weights that are exactly 0 (sign 0 in the "
              "authors' model); the student's sign rule makes them +1")
    for name in student.params:
        if name in source.params and source.params[name].shape == student.params[name].shape:
            student.params[name][...] = source.params[name]
    if config.has_scales and not source.config.binarized:  # FBI init of scales from the new latents
        for name in student.binarized_names:
            prefix = name.removesuffix(".weight")
            wscale, wbias = L.init_scales(student.params[name], config.scaling)
            student.params[prefix + ".wscale"][...] = wscale
            student.params[prefix + ".wbias"][...] = wbias
    return student.params
