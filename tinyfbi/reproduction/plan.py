"""What `python -m tinyfbi.reproduce` trains: one teacher, then every arm over the same seeds.

Every student arm of a size trains the same shape on the same tokens: the same --seed gives the
same initial weights and the same batch order in every arm, so arms can be compared seed by seed.
The teacher is 4x larger, trained for 5x a student's budget with a seed of its own (so all
student seeds share it), as LLaMA-2-7B is for FBI-LLM's 130M student.
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
    small: bool = False            # the smaller student size (the scaling claim)
    distilled: bool = True         # learns from the teacher (ad or mix)
    track_flips: bool = False


ARMS = (
    Arm("fp", "full precision, next-token labels: the teacher's premise, and (c)'s initial weights",
        spec_fields(full_precision=True, teacher="none"), distilled=False),
    Arm("fp-ad", "(d) full precision, distillation: the students' recipe without binarization",
        spec_fields(full_precision=True)),
    Arm("fbi-ad", "(a)(b)(c) FBI, distillation: the paper's recipe", track_flips=True),
    Arm("fbi-ce", "(a) FBI, next-token labels", spec_fields(loss="ce", teacher="none"),
        distilled=False),
    Arm("fbi-mix", "(a) FBI, 0.5 labels + 0.5 distillation", spec_fields(loss="mix")),
    Arm("noscale-ad", "(b) sign(W) alone, no alpha/beta", spec_fields(scaling="none")),
    Arm("rowscale-ad", "(b) alpha/beta per output row", spec_fields(scaling="row")),
    Arm("ternary-ad", "(b) BitNet b1.58 ternary (absmean), same recipe", spec_fields(scaling="ternary")),
    Arm("fbi-init-ad", "(c) FBI, initialized from the trained `fp` model of the same seed",
        spec_fields(init=INIT_FROM_FP), track_flips=True),
    Arm("small-fp", "full precision, labels, at the smaller size (reference)", spec_fields(full_precision=True, teacher="none"), small=True, distilled=False),
    Arm("small-fp-ad", "(e) full precision, distillation, at the smaller size", spec_fields(full_precision=True),
        small=True),
    Arm("small-fbi-ad", "(e) FBI, distillation, at the smaller size", small=True),
)
ARM_NAMES = tuple(a.name for a in ARMS)


@dataclass(frozen=True)
class Plan:
    student: str = "tiny"           # the students' size (ModelConfig preset)
    small: str = "mini"             # the second, smaller student size of the scaling claim
    teacher: str = "20m"            # full precision, larger than any student
    steps: int = 120                # optimizer steps per student arm (30 arms in about 45 min on 2 cores)
    teacher_steps: int = 600        # 5x a student's tokens
    batch_size: int = 16
    seq_len: int = 128
    teacher_lr: float = 1e-3        # 20m at the tiny models' 2e-3 is needlessly close to unstable
    teacher_warmup: int = 50
    teacher_seed: int = 1000        # not a student seed: every student seed shares the teacher
    eval_every: int = 100
    eval_batches: int = 32          # the same validation windows for every arm and the teacher
    teacher_cache: int = 32         # top-K teacher probabilities cached once for every distilled arm
    sample_tokens: int = 30
    seeds: tuple = field(default=(0, 1, 2))

    def student_tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len


FULL = Plan()
# a first look, and the CI test of the reproduction's structure: every size one step down, and no
# cache (a few steps are cheaper with the teacher's forward on the fly than a pass over the corpus)
FAST = Plan(student="mini", small="micro", teacher="tiny", steps=30, teacher_steps=60, batch_size=8, seq_len=64,
            teacher_lr=2e-3, teacher_warmup=6, eval_every=15, eval_batches=8, teacher_cache=0, sample_tokens=8)
