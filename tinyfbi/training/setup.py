"""From a RunSpec to the pieces of a run: whether it resumes, its data, model and optimizer configs,
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
from .loop import LoopState, TrainConfig
from .spec import RunSpec


def decide_resume(spec: RunSpec) -> Path | None:
    """The one place a resume is decided: the checkpoint to continue from (None: a new run). Refuses,
    before any work is done, to overwrite a run, to resume nothing, and to resume a truncated or
    corrupted checkpoint or one trained with another seed, batch, length or loss."""
    run_dir = spec.run_dir
    if has_checkpoint(run_dir) and not spec.resume:
        raise TinyFBIError(f"{run_dir} already holds a run: pass --resume to continue it, or --name for a new one")
    if not spec.resume:
        return None
    if not has_checkpoint(run_dir):
        raise TinyFBIError(f"--resume: {run_dir} holds no checkpoint to resume")
    ckpt = resolve_checkpoint(run_dir)
    state, _ = load_trainer_state(ckpt)
    load_checkpoint(ckpt)
    LoopState.check_compatible(state, train_config(spec, spec.binarized))
    return ckpt


def optim_config(spec: RunSpec, steps: int | None = None) -> OptimConfig:
    """AdamW and the schedule of the spec's student, or of a teacher trained for `steps`."""
    steps = steps or spec.steps
    return OptimConfig(lr=spec.lr, min_lr=spec.lr / 10, warmup_steps=spec.warmup_steps(steps), total_steps=steps,
                       warmup_from_zero=spec.recipe == "paper")


def train_config(spec: RunSpec, binarized: bool, steps: int | None = None, loss: str | None = None) -> TrainConfig:
    """The loop's config: the spec's student, or (steps, loss given) a teacher trained on its data."""
    return TrainConfig(steps=steps or spec.steps, batch_size=spec.batch_size, seq_len=spec.seq_len,
                       loss=loss or spec.loss, eval_every=spec.eval_every, eval_batches=spec.eval_batches,
                       save_every=spec.save_every, spike_factor=spec.spike_factor,
                       track_flips=spec.track_flips and binarized, seed=spec.seed)


def model_config(spec: RunSpec, vocab_size, binarized) -> ModelConfig:
    preset = PRESETS[spec.size]
    return ModelConfig.from_name(spec.size, vocab_size=vocab_size, binarized=binarized,
                                 scaling=spec.scaling if binarized else "column",
                                 max_position_embeddings=max(preset.max_position_embeddings, spec.seq_len),
                                 **dict(spec.shape))


def load_data(spec: RunSpec, teacher_dir=None):
    """(corpus, tokenizer, train tokens, validation tokens); the student takes its teacher's tokenizer.
    --data DIR holding a manifest.json: a prepared folder (python -m tinyfbi.prepare), its shards memmapped."""
    if spec.data is not None and is_prepared(spec.data):
        return open_prepared_data(spec, teacher_dir)
    corpus = load_corpus(spec.data, cache_dir=spec.data_dir)
    if teacher_dir is not None:
        tokenizer = load_tokenizer(teacher_dir)
        if spec.vocab_size is not None and spec.vocab_size != tokenizer.vocab_size:
            raise TinyFBIError(f"the teacher's tokenizer has {tokenizer.vocab_size} tokens; "
                               f"--vocab-size {spec.vocab_size} differs")
    else:
        tokenizer = build_tokenizer(spec.tokenizer, corpus.train_text, spec.vocab_size,
                                    corpus_dir(corpus, spec.data_dir))
    train_tokens, val_tokens = tokenize_corpus(corpus, tokenizer, cache_dir=spec.data_dir)
    for name, toks in (("training split", train_tokens), ("validation split", val_tokens)):
        if len(toks) < spec.seq_len + 1:
            raise TinyFBIError(f"{name} of {corpus.source} is shorter than one sequence: "
                               f"{len(toks)} tokens < --seq-len {spec.seq_len} + 1")
    print(f"data: {corpus!r}; tokenizer {tokenizer.key}: {len(train_tokens):,} train / "
          f"{len(val_tokens):,} val tokens")
    return corpus, tokenizer, train_tokens, val_tokens


def open_prepared_data(spec: RunSpec, teacher_dir=None):
    """A prepared folder's splits (corpus.batches.TokenSplit) and tokenizer, checked against the
    teacher's tokenizer, --vocab-size, --tokenizer PATH and --seq-len before any work is done."""
    prepared = open_prepared(spec.data)
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
    if spec.vocab_size is not None and spec.vocab_size != tokenizer.vocab_size:
        raise TinyFBIError(f"{folder} was prepared with a {tokenizer.vocab_size}-id vocabulary; "
                           f"--vocab-size {spec.vocab_size} differs")
    if str(spec.tokenizer).endswith(".model") and load_tokenizer(spec.tokenizer).spec != tokenizer.spec:
        raise TinyFBIError(f"{folder} was prepared with tokenizer {tokenizer.key}, not {spec.tokenizer}")
    for split in (prepared.train, prepared.val):
        Sequences(split, spec.seq_len)            # rows shorter than seq_len + 1 are refused here
    name = f"prepared-{folder.resolve().name}-{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]}"
    corpus = Corpus(name, "", "", f"prepared:{folder.resolve()}")
    layout = f"rows of {prepared.train.row_len} ids" if prepared.train.row_len else "a token stream"
    print(f"data: {folder} ({layout}, {len(prepared.train.shards)} + {len(prepared.val.shards)} shards); "
          f"tokenizer {tokenizer.key}: {len(prepared.train):,} train / {len(prepared.val):,} val tokens")
    return corpus, tokenizer, prepared.train, prepared.val


def make_batches(spec: RunSpec, backend, train_tokens, val_tokens):
    """The one batch path of both backends: (sampler, val_batches). Global batch k is a function of
    (--seed, k); under torchrun each rank reads only its rows (backend.rows) of it."""
    sampler = BatchSampler(train_tokens, spec.batch_size, spec.seq_len, spec.seed, "training split",
                           backend.rows(spec.batch_size))

    def val_batches():
        return iter_eval_batches(val_tokens, spec.batch_size, spec.seq_len, spec.eval_batches)
    return sampler, val_batches


def init_student(spec: RunSpec, config) -> dict:
    """The student's initial parameters: from scratch (seeded), or --init's weights (FBI's alpha/beta
    recomputed from them when they come from a full-precision model)."""
    student = Model(config, seed=spec.seed)
    if spec.init == "scratch":
        return student.params
    source = load_model(spec.init)
    if source.config.replace(binarized=config.binarized, scaling=config.scaling, sign_of_zero=config.sign_of_zero,
                             max_position_embeddings=config.max_position_embeddings) != config:
        raise TinyFBIError(f"--init {spec.init} has a different shape from the student "
                           f"({source.config} vs {config})")
    zeros = sum(int(np.count_nonzero(source.params[n] == 0)) for n in source.binarized_names)
    if source.config.sign_of_zero == 0 and zeros:
        print(f"note: --init {spec.init} holds {zeros:,} latent weights that are exactly 0 (sign 0 in the "
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
