"""Several NumPy runs that read the same batches, trained side by side in one process.

Runs with the same seed, batch size and sequence length draw the same batch at every data step
(training.setup.make_batches). A distilled student's step is mostly its teacher's forward at these
sizes, so runs that distill one teacher share it here: the teacher is loaded once, and each batch's
forward runs once (numpy_backend.TeacherProbs) and is handed to every run that asks for that batch.

Each run is exactly the run trained alone (`python -m tinyfbi.train`, training.run.run): the same
start, loop and finish (training.run.start / Loop.step / training.run.finish), its own folder, lock,
checkpoints, metrics and summary.json; only the order of the steps of different runs interleaves.
The teacher's probabilities are a pure function of the batch, and a student's step reads them
without writing them, so every run's losses and weights are the alone run's bit for bit
(tests/test_lockstep.py). A killed group resumes run by run from each run's own checkpoint.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import TinyFBIError
from ..training.numpy_backend import NumpyBackend, TeacherProbs
from ..training.run import finish, start
from ..training.run_lock import RunLock
from ..training.spec import RunSpec


class SharedTeacherBackend(NumpyBackend):
    """The NumPy backend with one teacher per checkpoint for all its runs, and one forward per batch."""

    def __init__(self, keep: int = 4):
        self.keep = keep                                   # batches whose probabilities are kept
        self.models, self.probs = {}, {}

    def load_teacher(self, path, config):
        key = str(Path(path).resolve())
        if key not in self.models:
            self.models[key] = super().load_teacher(path, config)
        return self.models[key]

    def learner(self, config, init_params, cfg, optim, run_dir, tokenizer, teacher, teacher_cache, extra_fbi):
        if teacher is not None:
            teacher = self.probs.setdefault(id(teacher), TeacherProbs(teacher, self.keep))
        return super().learner(config, init_params, cfg, optim, run_dir, tokenizer, teacher, teacher_cache, extra_fbi)

    def teacher_forwards(self) -> int:
        """Teacher forwards run so far for training batches (all teachers)."""
        return sum(p.forwards for p in self.probs.values())


def check_lockstep(specs) -> None:
    """Runs share batches only with one seed, batch size, sequence length and data; NumPy only."""
    if not specs:
        raise TinyFBIError("lockstep needs at least one run")
    keys = {(s.seed, s.batch_size, s.seq_len, s.data, s.tokenizer, s.vocab_size) for s in specs}
    if len(keys) != 1:
        raise TinyFBIError(f"runs in lockstep must share seed, batch, length and data; got {sorted(map(str, keys))}")
    if any(s.backend != "numpy" for s in specs):
        raise TinyFBIError("lockstep trains NumPy runs")
    names = [str(s.run_dir) for s in specs]
    if len(set(names)) != len(names):
        raise TinyFBIError("runs in lockstep need folders of their own")


def train_lockstep(specs: list[RunSpec], backend: SharedTeacherBackend | None = None, after=None) -> list[dict]:
    """Train every spec (each as training.run.run would, resumed where spec.resume says) with the batches
    in step: at each round the runs whose next batch is the earliest take their step, so one teacher
    forward serves them all. after(spec, summary), if given, runs for each finished run while its lock is
    still held (what a caller writes beside a run is there before another process may read the run).
    -> their summaries, in the order of `specs`."""
    check_lockstep(specs)
    backend = backend or SharedTeacherBackend()
    locks = []
    try:
        for spec in specs:
            locks.append(RunLock(spec.run_dir).acquire())
        jobs = [start(spec, backend) for spec in specs]
        try:
            while True:
                pending = [job for job in jobs if not job.loop.done]
                if not pending:
                    break
                first = min(job.loop.state.next_data_step() for job in pending)
                for job in pending:
                    if job.loop.state.next_data_step() == first:
                        job.loop.step()
        finally:
            for job in jobs:
                job.loop.close()
        summaries = [finish(job) for job in jobs]
        if after is not None:
            for spec, summary in zip(specs, summaries):
                after(spec, summary)
        return summaries
    finally:
        for lock in locks:
            lock.release()
