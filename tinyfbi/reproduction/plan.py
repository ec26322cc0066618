"""What `python -m tinyfbi.reproduce` trains: one teacher, then every arm over the same seeds.

Every student arm of a size trains the same shape on the same tokens: the same seed gives the
same initial weights and the same batch order in every arm, so arms can be compared seed by seed.
Every distilled arm learns the teacher's full softmax (T = 1) at every position, the teacher run
forward on the fly each step, as in the paper. The teacher is 13x the students' size, trained for
4x a student's tokens with a seed of its own (so all student seeds share it), as LLaMA-2-7B is for
FBI-LLM's 130M student. The sizes, vocabulary, budget and seeds were chosen from the pilot
(`python -m tinyfbi.reproduce --pilot`, docs/reproduction.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

INIT_FROM_FP = "INIT_FROM_FP"     # replaced by the `fp` arm's checkpoint of the same seed


def spec_fields(**fields) -> MappingProxyType:
    return MappingProxyType(fields)       # read-only: an Arm is a frozen description


@dataclass(frozen=True)
class Arm:
    name: str
    question: str
    fields: MappingProxyType = field(default_factory=spec_fields)   # RunSpec fields beyond the plan's
    large: bool = False            # the larger student size (the scaling claim)
    distilled: bool = True         # learns from the teacher's full softmax (ad or mix)
    track_flips: bool = False


ARMS = (
    Arm("fp", "full precision, next-token labels: the teacher's premise, and (c)'s initial weights",
        spec_fields(full_precision=True, teacher="none"), distilled=False),
    Arm("fp-ad", "(d) full precision, distillation: the students' recipe without binarization",
        spec_fields(full_precision=True)),
    Arm("fbi-ad", "(a)(b)(c) FBI, distillation: the paper's recipe", track_flips=True),
    Arm("fbi-ce", "(a) FBI, next-token labels", spec_fields(loss="ce", teacher="none"), distilled=False),
    Arm("fbi-mix", "(a) FBI, 0.5 labels + 0.5 distillation", spec_fields(loss="mix")),
    Arm("noscale-ad", "(b) sign(W) alone, no alpha/beta", spec_fields(scaling="none")),
    Arm("rowscale-ad", "(b) alpha/beta per output row", spec_fields(scaling="row")),
    Arm("ternary-ad", "(b) BitNet b1.58 ternary (absmean), same recipe", spec_fields(scaling="ternary")),
    Arm("fbi-init-ad", "(c) FBI, initialized from the trained `fp` model of the same seed",
        spec_fields(init=INIT_FROM_FP), track_flips=True),
    Arm("large-fp-ad", "(e) full precision, distillation, at the larger size", spec_fields(full_precision=True),
        large=True),
    Arm("large-fbi-ad", "(e) FBI, distillation, at the larger size", large=True),
)
ARM_NAMES = tuple(a.name for a in ARMS)
ARMS_BY_NAME = {a.name: a for a in ARMS}


@dataclass(frozen=True)
class Plan:
    student: str = "micro"          # the students' size (ModelConfig preset): 0.24M parameters at vocabulary 1024
    large: str = "mini"             # the second, larger student size of the scaling claim (e): 1.12M
    teacher: str = "tiny"           # full precision, 13x the student, 2.8x the larger size (3.15M)
    vocab_size: int = 1024          # sentencepiece BPE: a small head, so the blocks get the compute
    steps: int = 300                # optimizer steps per student arm: 614k tokens, 2.5 per student parameter
    teacher_steps: int = 1200       # 4x a student's tokens
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 2e-3                # every student arm, cosine to lr / 10 after steps / 10 of warmup
    teacher_lr: float = 2e-3
    teacher_warmup: int = 100
    teacher_seed: int = 1000        # not a student seed: every student seed shares the teacher
    eval_every: int = 150
    eval_batches: int = 32          # the same validation windows for every arm and the teacher
    sample_tokens: int = 30
    seeds: tuple = field(default=(0, 1, 2, 3, 4, 5))
    pilot_steps: tuple = field(default=(100, 300))   # the pilot's budgets (its last is the design's)
    pilot_seeds: tuple = field(default=(0, 1, 2))

    def student_tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len


FULL = Plan()
# the CI test of the reproduction's structure: the same sizes, a few steps, a smaller batch
FAST = Plan(steps=30, teacher_steps=60, batch_size=8, seq_len=64, teacher_warmup=6, eval_every=15, eval_batches=8,
            sample_tokens=8, seeds=(0, 1, 2), pilot_steps=(10, 30))
