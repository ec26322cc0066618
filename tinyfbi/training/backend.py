"""What a training run asks of a backend, in two Protocols: the `Backend` (process layout, teachers,
learners, evaluation, sampling, the throughput report) and the `Learner` it builds (one model and its
optimizer: what training.loop trains). training.run and training.loop use nothing else of them.

    NumPy: training.numpy_backend.NumpyBackend / NumpyLearner (one process, float32 on the CPU)
    torch: torch_backend.backend.TorchBackend / torch_backend.learner.TorchLearner (GPUs, torchrun)
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Protocol, TypeVar

import numpy as np

from ..core.config import ModelConfig
from ..core.optim import OptimConfig

T = TypeVar("T")
Batches = Iterable[tuple[np.ndarray, np.ndarray]]        # (x, y) token batches, each (B, T)


class Learner(Protocol):
    """One model and its optimizer. Gradients live inside the learner."""
    model: object               # what Backend.evaluate and Backend.sample take

    def forward_backward(self, x, y, windows) -> float: ...   # mean loss of the global batch
    def drop_gradients(self) -> None: ...                      # after a spike: no update
    def optimizer_step(self, lr: float) -> float: ...          # clip + AdamW; -> norm before clipping
    def sign_masks(self): ...                                  # +1 masks of the binarized weights
    def flip_fractions(self, before) -> dict: ...              # per layer and "all", given sign_masks()
    def save(self, trainer_state: dict) -> None: ...           # the run's checkpoint (formats.run_checkpoint)
    def restore(self, ckpt_dir) -> dict: ...                   # weights + AdamW; -> the trainer state


class Backend(Protocol):
    name: str                   # "numpy" | "torch": recorded in summary.json and the teacher's memo
    is_main: bool               # this process writes files and prints (rank 0; always True for NumPy)

    def describe(self) -> str: ...                             # " on 8 x H100 (FSDP)", for the log
    def on_main(self, fn: Callable[[], T]) -> T | None: ...    # fn() on the main process only
    def on_main_first(self, fn: Callable[[], T]) -> T: ...     # fn() on main, then on the others (caches)
    def sync(self) -> None: ...                                # wait for the device (step timing)
    def rows(self, n: int) -> slice: ...                       # this process's rows of a global batch of n

    def load_teacher(self, path: Path, config: ModelConfig): ...          # a frozen full-precision model
    def numpy_forward(self, model): ...                        # model behind x -> logits (a NumPy array)
    def learner(self, config: ModelConfig, init_params: Callable[[], dict] | None, cfg, optim: OptimConfig,
                run_dir: Path, tokenizer, teacher, teacher_cache, extra_fbi: dict | None) -> Learner: ...
    def evaluate(self, model, batches: Batches) -> float: ...  # mean next-token cross-entropy, nats
    def sample(self, model, tokenizer, prompt_ids: list[int], n_tokens: int, seed: int) -> str: ...
    def report(self, learner: Learner, teacher_config: ModelConfig | None, tok_s: float | None) -> dict: ...
