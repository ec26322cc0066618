"""A run folder's resumable checkpoint, swapped in atomically as a whole folder.

    runs/NAME/checkpoint/   model.safetensors, config.json, tokenizer file,
                            optimizer.safetensors (AdamW moments m.<name>, v.<name>), trainer.json
                            (step, data position, skipped batches, loss statistics); past 2 GiB the
                            weights and moments go into HF-style shards + .index.json

A new checkpoint is built in `.checkpoint.tmp`, then swapped in by formats.atomic.replace_folder:
a kill at any point leaves `checkpoint` or `.checkpoint.old` complete; `resolve_checkpoint` finds it.
Both backends write and read this one layout, so a run can change backend at any checkpoint.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import save_file

from ..core.errors import TinyFBIError
from .atomic import atomic_path, atomic_write_json, complete_folder, replace_folder, temp_folder
from .config_json import CONFIG_FILE, save_config
from .hf_folder import read_safetensors

CHECKPOINT = "checkpoint"
TRAINER_FILE = "trainer.json"
OPTIMIZER_FILE = "optimizer.safetensors"


def resolve_checkpoint(path) -> Path:
    """A checkpoint folder from a run folder or a checkpoint folder itself."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    found = complete_folder(path / CHECKPOINT)
    if found is not None and (found / CONFIG_FILE).is_file():
        return found
    if not path.exists():
        raise TinyFBIError(f"{path} does not exist")
    raise TinyFBIError(f"{path} holds no checkpoint (no {CONFIG_FILE}, no {CHECKPOINT}/)")


def has_checkpoint(run_dir) -> bool:
    """A run folder holds a checkpoint (or the old one a killed swap left behind)."""
    return complete_folder(Path(run_dir) / CHECKPOINT) is not None


SHARD_BYTES = 2 << 30   # a shard of weights or moments: what the writer holds in memory at most


class ShardedFile:
    """Tensors written as they come into `BASE.safetensors`, or into `BASE-0000i-of-0000N.safetensors`
    shards plus `BASE.safetensors.index.json` (Hugging Face's layout) once they pass shard_bytes."""

    def __init__(self, folder: Path, base: str, shard_bytes: int):
        self.folder, self.base, self.shard_bytes = folder, base, shard_bytes
        self.buffer, self.size, self.parts, self.weight_map = {}, 0, [], {}

    def add(self, name, value):
        value = np.ascontiguousarray(value)
        if self.buffer and self.size + value.nbytes > self.shard_bytes:
            self.flush()
        self.buffer[name], self.size = value, self.size + value.nbytes

    def flush(self):
        part = self.folder / f".{self.base}-{len(self.parts):05d}.part"
        with atomic_path(part) as path:
            save_file(self.buffer, path, metadata={"format": "pt"})   # "pt": transformers reads the weights
        self.weight_map.update({name: len(self.parts) for name in self.buffer})
        self.parts.append(part)
        self.buffer, self.size = {}, 0

    def close(self):
        if self.buffer or not self.parts:
            self.flush()
        if len(self.parts) == 1:
            self.parts[0].rename(self.folder / f"{self.base}.safetensors")
            return
        names = [f"{self.base}-{i + 1:05d}-of-{len(self.parts):05d}.safetensors" for i in range(len(self.parts))]
        for part, name in zip(self.parts, names):
            part.rename(self.folder / name)
        atomic_write_json(self.folder / f"{self.base}.safetensors.index.json",
                          {"metadata": {}, "weight_map": {k: names[i] for k, i in self.weight_map.items()}})


class RunCheckpointWriter:
    """A run checkpoint streamed to disk tensor by tensor (weights, AdamW moments m and v), so the
    writer holds one shard of each at most, never the model: rank 0 of a 7B run included. A write
    that fails (a full disk, a read-only folder) is remembered and raised by finish() as one line,
    the previous checkpoint intact; under torchrun the other ranks keep gathering in step meanwhile."""

    def __init__(self, run_dir, config, tokenizer=None, extra_fbi=None, shard_bytes=SHARD_BYTES):
        self.run_dir, self.config, self.tokenizer, self.extra_fbi = Path(run_dir), config, tokenizer, extra_fbi
        self.final, self.tmp, self.error = self.run_dir / CHECKPOINT, None, None
        try:
            self.tmp = temp_folder(self.final)
            self.files = [ShardedFile(self.tmp, "model", shard_bytes), ShardedFile(self.tmp, "optimizer", shard_bytes)]
        except OSError as e:
            self.error = e

    def add(self, name, value, m, v):
        if self.error is None:
            try:
                self.files[0].add(name, value)
                self.files[1].add("m." + name, m)
                self.files[1].add("v." + name, v)
            except OSError as e:
                self.error = e

    def finish(self, trainer_state: dict, optimizer_step: int) -> Path:
        try:
            if self.error is not None:
                raise self.error
            for f in self.files:
                f.close()
            save_config(self.tmp, self.config, self.tokenizer, self.extra_fbi)
            atomic_write_json(self.tmp / TRAINER_FILE, {**trainer_state, "optimizer_step": optimizer_step})
            return replace_folder(self.tmp, self.final)
        except OSError as e:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
            kept = resolve_checkpoint(self.run_dir) if has_checkpoint(self.run_dir) else None
            raise TinyFBIError(f"could not write the step-{trainer_state['step']} checkpoint in {self.run_dir} "
                               f"({e.strerror or e}); " + (f"the last complete checkpoint, {kept}, is intact: "
                               "free space or fix permissions, then rerun with --resume" if kept else
                               "no checkpoint was written")) from None


def save_run_checkpoint(run_dir, config, params: dict, optimizer_state: dict, trainer_state: dict,
                        tokenizer=None, extra_fbi=None, shard_bytes=SHARD_BYTES) -> Path:
    """optimizer_state: {"step": int, "m": {name: array}, "v": {name: array}} (AdamW's moments)."""
    writer = RunCheckpointWriter(run_dir, config, tokenizer, extra_fbi, shard_bytes)
    for name, value in params.items():
        writer.add(name, value, optimizer_state["m"][name], optimizer_state["v"][name])
    return writer.finish(trainer_state, optimizer_state["step"])


def read_moments(ckpt_dir: Path) -> dict:
    """Every AdamW moment of a checkpoint, memory-mapped (read when used), single file or shards."""
    index = ckpt_dir / (OPTIMIZER_FILE + ".index.json")
    if not index.is_file():
        return read_safetensors(ckpt_dir / OPTIMIZER_FILE)
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return {k: v for f in files for k, v in read_safetensors(ckpt_dir / f).items()}


def load_trainer_state(ckpt_dir) -> tuple[dict, dict]:
    """-> (trainer.json dict, optimizer state dict) of a checkpoint folder."""
    ckpt_dir = Path(ckpt_dir)
    try:
        state = json.loads((ckpt_dir / TRAINER_FILE).read_text())
        tensors = read_moments(ckpt_dir)
    except FileNotFoundError as e:
        raise TinyFBIError(f"{ckpt_dir} is not a resumable checkpoint (missing {Path(e.filename).name})") from None
    except (ValueError, SafetensorError, OSError) as e:
        raise TinyFBIError(f"{ckpt_dir} has a truncated or corrupted trainer state ({e})") from None
    opt = {"step": state["optimizer_step"],
           "m": {k[2:]: v for k, v in tensors.items() if k.startswith("m.")},
           "v": {k[2:]: v for k, v in tensors.items() if k.startswith("v.")}}
    return state, opt
