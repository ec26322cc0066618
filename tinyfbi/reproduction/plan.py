"""What `python -m tinyfbi.reproduce` trains: one teacher, then every arm over the same seeds.

Every student arm trains with the same seed giving the same initial weights (per size) and the same
batch order in every arm, so arms can be compared seed by seed, and the arms of one seed can train in
lockstep on one teacher forward per batch. Every distilled arm learns the teacher's full softmax
(T = 1) at every position, the teacher run forward on the fly each step, as in the paper. The
teacher is 13x the students' size, trained for 4x a student's tokens with a seed of its own (so all
student seeds share it), as LLaMA-2-7B is for FBI-LLM's 130M student. The scaling claim (e) trains
three sizes, each to the students' tokens per parameter; claim c at 4x the budget too. The design and
its costs: docs/reproduction.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from ..core.config import ModelConfig

INIT_FROM_FP = "INIT_FROM_FP"     # replaced by the `fp` arm's checkpoint of the same seed

# The sizes of the scaling claim (e): a preset and the shape that replaces its own. `nano` and `mid` lie
# below and above `micro` so the three span 13x in non-embedding parameters (27k, 107k, 360k at
# vocabulary 1024) at a cost that the teacher's forward, not the students, still dominates.
SIZES = {
    "nano": ("micro", (("hidden_size", 32), ("num_hidden_layers", 2), ("num_attention_heads", 2),
                       ("num_key_value_heads", 2), ("intermediate_size", 96))),
    "micro": ("micro", ()),
    "mid": ("mini", (("hidden_size", 96), ("num_hidden_layers", 3), ("num_attention_heads", 3),
                     ("num_key_value_heads", 3), ("intermediate_size", 288))),
}


def spec_fields(**fields) -> MappingProxyType:
    return MappingProxyType(fields)       # read-only: an Arm is a frozen description


@dataclass(frozen=True)
class Arm:
    name: str
    question: str
    fields: MappingProxyType = field(default_factory=spec_fields)   # RunSpec fields beyond the plan's
    size: str = "micro"            # a key of SIZES; trained to micro's tokens per parameter at the plan's budget
    long: bool = False             # trained for Plan.long_factor times the plan's steps (claim c2)
    distilled: bool = True         # learns from the teacher's full softmax (ad or mix)
    track_flips: bool = False


ARMS = (
    Arm("fp", "full precision, next-token labels: the teacher's premise, and (c)'s initial weights",
        spec_fields(full_precision=True, teacher="none"), distilled=False),
    Arm("fp-ad", "(d)(e) full precision, distillation: the students' recipe without binarization",
        spec_fields(full_precision=True)),
    Arm("fbi-ad", "(a)(b)(c)(e) FBI, distillation: the paper's recipe", track_flips=True),
    Arm("fbi-ce", "(a) FBI, next-token labels", spec_fields(loss="ce", teacher="none"), distilled=False),
    Arm("fbi-mix", "(a) FBI, 0.5 labels + 0.5 distillation", spec_fields(loss="mix")),
    Arm("noscale-ad", "(b) sign(W) alone, no alpha/beta", spec_fields(scaling="none")),
    Arm("rowscale-ad", "(b) alpha/beta per output row", spec_fields(scaling="row")),
    Arm("ternary-ad", "(b) BitNet b1.58 ternary (absmean), same recipe", spec_fields(scaling="ternary")),
    Arm("fbi-init-ad", "(c) FBI, initialized from the trained `fp` model of the same seed",
        spec_fields(init=INIT_FROM_FP), track_flips=True),
    Arm("fbi-ad-long", "(c1)(c2) `fbi-ad` trained 4x longer", long=True, track_flips=True),
    Arm("fbi-init-ad-long", "(c1)(c2) `fbi-init-ad` trained 4x longer", spec_fields(init=INIT_FROM_FP),
        long=True, track_flips=True),
    Arm("nano-fp-ad", "(e) full precision, distillation, at the smallest size", spec_fields(full_precision=True),
        size="nano"),
    Arm("nano-fbi-ad", "(e) FBI, distillation, at the smallest size", size="nano"),
    Arm("mid-fp-ad", "(e) full precision, distillation, at the largest size", spec_fields(full_precision=True),
        size="mid"),
    Arm("mid-fbi-ad", "(e) FBI, distillation, at the largest size", size="mid"),
)
ARM_NAMES = tuple(a.name for a in ARMS)
ARMS_BY_NAME = {a.name: a for a in ARMS}


def size_config(size, vocab_size, binarized=True) -> ModelConfig:
    preset, shape = SIZES[size]
    return ModelConfig.from_name(preset, vocab_size=vocab_size, binarized=binarized, **dict(shape))


def non_embedding_params(size, vocab_size, binarized=True) -> int:
    """Parameters outside the token embedding and the head (the x axis of the size trend)."""
    config = size_config(size, vocab_size, binarized)
    return config.num_params() - 2 * vocab_size * config.hidden_size


@dataclass(frozen=True)
class Plan:
    student: str = "micro"          # the students' size (a key of SIZES): 0.24M parameters at vocabulary 1024
    teacher: str = "tiny"           # full precision, 13x the student, 5.6x the largest size of (e) (3.15M)
    vocab_size: int = 1024          # sentencepiece BPE: a small head, so the blocks get the compute
    steps: int = 300                # optimizer steps per student arm: 614k tokens, 2.56 per student parameter
    long_factor: int = 4            # the longer budget of claim c2
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
    # claims whose measured spread asks for more seeds than `seeds`: their arms train seeds 0..n-1
    claim_seeds: tuple = field(default=(("b3", 18), ("e", 10)))
    pilot_steps: tuple = field(default=(100, 300))   # the pilot's budgets (its last is the design's)
    pilot_seeds: tuple = field(default=(0, 1, 2))

    def student_tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len

    def arm_steps(self, arm: Arm, steps: int | None = None) -> int:
        """An arm's optimizer steps when the students train `steps` (default the plan's): the students' size
        at `steps`, the longer arms at long_factor x, the other sizes at the students' tokens per parameter."""
        steps = self.steps if steps is None else steps
        if arm.long:
            return self.long_factor * steps
        ratio = size_config(arm.size, self.vocab_size).num_params() / size_config(self.student, self.vocab_size).num_params()
        return max(1, round(steps * ratio))

    def seeds_of(self, key) -> tuple:
        n = dict(self.claim_seeds).get(key)
        return self.seeds if n is None or n <= len(self.seeds) else tuple(range(n))


FULL = Plan()
# the CI test of the reproduction's structure: the same sizes, a few steps, a smaller batch
FAST = Plan(steps=30, teacher_steps=60, batch_size=8, seq_len=64, teacher_warmup=6, eval_every=15, eval_batches=8,
            sample_tokens=8, seeds=(0, 1, 2), claim_seeds=(("b3", 4),), pilot_steps=(10, 30))
