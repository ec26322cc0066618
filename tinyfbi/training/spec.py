"""RunSpec: one training run, described once. Built from the command line (train.py), by
`tinyfbi.reproduce` and by the notebooks; everything below reads its fields and nothing changes them.

    spec = RunSpec.build(size="tiny", loss="ad", steps=400)      # defaults filled, then validated
    spec.run_dir, spec.lr, spec.warmup                            # derived once, here

`build` takes the flags as the user gave them (None: unset), fills the unset ones (the paper's recipe
first with --recipe paper, then tinyfbi's defaults) and returns a frozen spec whose every field is
resolved; `__post_init__` refuses a bad value with the one-line errors of the command line, whoever
built it. (The pattern of torchtitan's JobConfig and gpt-fast's ModelArgs.)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..core.config import PRESETS, SCALINGS
from ..core.errors import TinyFBIError
from .recipe import recipe_defaults

PAPER_SIZES = ("130m", "1.3b", "7b", "13b")   # LLaMA-2 vocabulary, 2048 tokens, the paper's lr by default
DEFAULT_STEPS = 400
LOSSES = ("ad", "ce", "mix")
SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")


@dataclass(frozen=True)
class RunSpec:
    # the model
    size: str = "tiny"                  # core.config.PRESETS
    shape: tuple = ()                   # ((ModelConfig field, int), ...) replacing the preset's (reproduce's sizes)
    full_precision: bool = False        # a full-precision model (a teacher) instead of the FBI student
    scaling: str = "column"             # FBI's per-column alpha/beta; none, row, ternary: the ablations
    init: str = "scratch"               # or a checkpoint PATH whose weights start the student
    # what it learns from
    loss: str = "ad"                    # the loss trained with (training_loss: ce for a teacher without a PATH)
    teacher: str = "auto"               # auto: trained here and cached in `out`; none; or a checkpoint PATH
    teacher_steps: int = DEFAULT_STEPS  # steps of a teacher trained by teacher=auto
    teacher_cache: int = 0              # K > 0: the teacher's top-K probabilities stored once (0: full softmax)
    data: str | None = None             # None: Shakespeare; a .txt file or folder, hf:NAME, a prepared folder
    data_dir: str = "data"              # cache of corpora, tokenizers and token files
    tokenizer: str = "sentencepiece"    # byte, sentencepiece, tiktoken, or PATH/tokenizer.model
    vocab_size: int | None = None       # of a tokenizer trained here (None: the tokenizer's default)
    # the schedule
    recipe: str = "none"                # paper: the authors' batch, length, schedule and budget filled in
    tokens: float | None = None         # --recipe paper's token budget (the steps follow from it)
    steps: int = DEFAULT_STEPS          # optimizer steps
    batch_size: int = 16                # sequences per optimizer step, the global batch
    seq_len: int = 128                  # tokens per sequence
    lr: float = 2e-3                    # peak learning rate, cosine to lr / 10
    warmup: int | None = None           # warmup steps (None: min(2000, steps / 10) of the model trained)
    seed: int = 0                       # the init and the batch order
    # the run folder and its bookkeeping
    out: str = "runs"                   # runs and cached teachers
    name: str = "tiny-ad"               # the run folder's name in `out`
    resume: bool = False                # continue out/name from its checkpoint
    eval_every: int = 100               # validate every N steps
    eval_batches: int = 16              # validation batches per evaluation
    save_every: int = 100               # checkpoint every N steps
    track_flips: bool = False           # log the fraction of binarized signs that flip each step
    spike_factor: float = 3.0           # roll back when the loss exceeds this multiple of its running mean
    sample_tokens: int = 60             # tokens sampled from each model at the end
    # the backend (the torch-only fields are ignored by numpy)
    backend: str = "numpy"              # numpy | torch
    dry_run: bool = False               # torch: plan memory and time, train nothing
    world_size: int | None = None       # torch --dry-run: GPUs to plan for (None: torchrun's)
    json: bool = False                  # torch --dry-run: print one JSON object
    fake_step: bool = False             # torch --dry-run: run the planned step on fake tensors, memory beside the plan
    grad_accum: int | None = None       # torch: micro-batches per rank per step (None: from the plan)
    micro_batch: int | None = None      # torch: sequences per GPU per forward
    gpu_gib: float | None = None        # torch: device memory to plan for (None: the device's)
    tok_s: float | None = None          # torch --dry-run: measured tokens/s for the time estimate
    fsdp: str = "auto"                  # auto | on | off
    cpu_offload: bool = False           # torch: FSDP state in host memory
    cpu_bf16: bool = False              # torch on a CPU: bf16 autocast as on GPUs
    fbi_linear: str = "fused"           # torch: fused | unfused FBI-Linear autograd
    head_loss: str = "fused"            # torch: lm_head + loss over chunks of tokens (fused) | whole logits
    compile: bool = False               # torch: torch.compile the student's forward and backward
    activation_checkpointing: str = "auto"   # torch: auto | on | off

    @classmethod
    def build(cls, **flags) -> "RunSpec":
        """A spec from flags as given (None or absent: unset): the recipe's values, then the defaults."""
        unknown = set(flags) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TinyFBIError(f"RunSpec has no field {sorted(unknown)[0]!r}")
        given = {k: v for k, v in flags.items() if v is not None}
        size, backend = given.get("size", cls.size), given.get("backend", cls.backend)
        if given.get("recipe", cls.recipe) == "paper":
            given = {**recipe_defaults(size, backend, given.get("batch_size"), given.get("seq_len"),
                                       given.get("tokens")), **given}
        elif "tokens" in given:
            raise TinyFBIError("--tokens plans a token budget for --recipe paper; without it, give --steps")
        given.setdefault("seq_len", 2048 if size in PAPER_SIZES else 128)
        given.setdefault("steps", DEFAULT_STEPS)
        given.setdefault("teacher_steps", given["steps"])
        given.setdefault("lr", 3e-4 if size in PAPER_SIZES else 2e-3)
        given["loss"] = training_loss(given.get("full_precision", False), given.get("teacher", cls.teacher),
                                      given.get("loss", cls.loss))
        given.setdefault("name", default_name(size, given.get("full_precision", False), given["loss"]))
        return cls(**given)

    def __post_init__(self):
        if self.size not in PRESETS:
            raise TinyFBIError(f"size {self.size!r} is not a preset: {', '.join(PRESETS)}")
        for key, value in self.shape:
            if key not in SHAPE_FIELDS or isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise TinyFBIError(f"shape: {key}={value!r} is not a positive {'/'.join(SHAPE_FIELDS)}")
        for field, choices in (("loss", LOSSES), ("scaling", SCALINGS), ("backend", ("numpy", "torch")),
                               ("recipe", ("none", "paper")), ("fsdp", ("auto", "on", "off")),
                               ("fbi_linear", ("fused", "unfused")), ("head_loss", ("fused", "unfused")),
                               ("activation_checkpointing", ("auto", "on", "off"))):
            if getattr(self, field) not in choices:
                raise TinyFBIError(f"--{flag(field)} must be one of {', '.join(choices)}, got {getattr(self, field)!r}")
        for field in ("steps", "teacher_steps", "batch_size", "seq_len", "eval_every", "eval_batches",
                      "save_every", "vocab_size", "world_size", "grad_accum", "micro_batch"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise TinyFBIError(f"--{flag(field)} must be positive, got {value}")
        if not 0 < self.lr < 1:
            raise TinyFBIError(f"--lr must lie in (0, 1), got {self.lr}")
        if self.warmup is not None and self.warmup < 0:
            raise TinyFBIError(f"--warmup must be >= 0, got {self.warmup}")
        if self.tokens is not None and self.tokens <= 0:
            raise TinyFBIError(f"--tokens must be positive, got {self.tokens}")
        if self.sample_tokens < 0:
            raise TinyFBIError(f"--sample-tokens must be >= 0, got {self.sample_tokens}")
        if self.teacher_cache < 0:
            raise TinyFBIError(f"--teacher-cache must be >= 0, got {self.teacher_cache}")
        if not self.spike_factor > 1:
            raise TinyFBIError(f"--spike-factor must be > 1, got {self.spike_factor}")
        if self.seed < 0:
            raise TinyFBIError(f"--seed must be >= 0, got {self.seed}")
        if self.distills and self.teacher == "none":
            raise TinyFBIError(f"--loss {self.loss} distills a teacher: give --teacher auto or PATH, or use --loss ce")
        if self.fake_step and not (self.dry_run and self.backend == "torch"):
            raise TinyFBIError("--fake-step checks a plan: give it with --backend torch --dry-run")
        if self.teacher_cache and not self.distills:
            raise TinyFBIError("--teacher-cache needs a distillation loss (--loss ad or mix)")

    def warmup_steps(self, steps: int) -> int:
        """Warmup of a model trained for `steps` (the student's, or a teacher's trained by teacher=auto)."""
        return self.warmup if self.warmup is not None else min(2000, steps // 10)

    @property
    def binarized(self) -> bool:
        return not self.full_precision

    @property
    def distills(self) -> bool:
        """Learns from a teacher's distribution (ad or mix), not from labels alone."""
        return self.loss != "ce"

    @property
    def teacher_path(self) -> str | None:
        """--teacher PATH, or None for auto and none."""
        return None if self.teacher in ("auto", "none") else self.teacher

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    @property
    def paper_size(self) -> bool:
        return self.size in PAPER_SIZES


def training_loss(full_precision: bool, teacher: str, loss: str) -> str:
    """The loss a run trains with: `loss`, except that a full-precision model learns from labels unless
    it is given a teacher PATH to distill (--teacher auto trains a teacher for students only)."""
    return "ce" if full_precision and teacher in ("auto", "none") else loss


def default_name(size: str, full_precision: bool, loss: str) -> str:
    """<size>-<loss> for a student; <size>-fp, or <size>-fp-<loss> when distilled, for a full-precision model."""
    if full_precision:
        return f"{size}-fp" + ("" if loss == "ce" else f"-{loss}")
    return f"{size}-{loss}"


def flag(field: str) -> str:
    return field.replace("_", "-")
