"""A run folder's resumable checkpoint, swapped in atomically as a whole directory.

    runs/NAME/checkpoint/   model.safetensors, config.json, tokenizer file,
                            optimizer.safetensors (AdamW moments), trainer.json (step, data
                            position, skipped batches, loss statistics)

A new checkpoint is written to `.checkpoint.tmp`, then the old one is renamed to
`.checkpoint.old`, the new one to `checkpoint`, and the old one deleted. A kill at any point
leaves either `checkpoint` or `.checkpoint.old` complete; `resolve_checkpoint` finds it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .checkpoint import CONFIG_FILE, atomic_write_json
from .errors import TinyFBIError

CHECKPOINT = "checkpoint"
TRAINER_FILE = "trainer.json"
OPTIMIZER_FILE = "optimizer.safetensors"


def resolve_checkpoint(path) -> Path:
    """A checkpoint folder from a run folder or a checkpoint folder itself."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    for name in (CHECKPOINT, ".checkpoint.old"):
        if (path / name / CONFIG_FILE).is_file():
            return path / name
    if not path.exists():
        raise TinyFBIError(f"{path} does not exist")
    raise TinyFBIError(f"{path} holds no checkpoint (no {CONFIG_FILE}, no {CHECKPOINT}/)")


def save_run_checkpoint(run_dir, model, tokenizer, optimizer, trainer_state: dict, extra_fbi=None):
    run_dir = Path(run_dir)
    tmp, old, final = run_dir / ".checkpoint.tmp", run_dir / ".checkpoint.old", run_dir / CHECKPOINT
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save(tmp, tokenizer=tokenizer, extra_fbi=extra_fbi)
    opt = optimizer.state_dict()
    save_file({**{"m." + k: v for k, v in opt["m"].items()}, **{"v." + k: v for k, v in opt["v"].items()}},
              str(tmp / OPTIMIZER_FILE))
    atomic_write_json(tmp / TRAINER_FILE, {**trainer_state, "optimizer_step": opt["step"]})
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def load_trainer_state(ckpt_dir) -> tuple[dict, dict]:
    """-> (trainer.json dict, optimizer state dict) of a checkpoint folder."""
    ckpt_dir = Path(ckpt_dir)
    try:
        state = json.loads((ckpt_dir / TRAINER_FILE).read_text())
        tensors = load_file(ckpt_dir / OPTIMIZER_FILE)
    except FileNotFoundError as e:
        raise TinyFBIError(f"{ckpt_dir} is not a resumable checkpoint (missing {Path(e.filename).name})") from None
    except (ValueError, SafetensorError, OSError) as e:
        raise TinyFBIError(f"{ckpt_dir} has a truncated or corrupted trainer state ({e})") from None
    opt = {"step": state["optimizer_step"],
           "m": {k[2:]: v for k, v in tensors.items() if k.startswith("m.")},
           "v": {k[2:]: v for k, v in tensors.items() if k.startswith("v.")}}
    return state, opt


def has_checkpoint(run_dir) -> bool:
    """A run folder holds a checkpoint (or the old one a killed swap left behind)."""
    return (Path(run_dir) / CHECKPOINT).is_dir() or (Path(run_dir) / ".checkpoint.old").is_dir()


def check_resumable(run_dir):
    """Refuse a truncated or corrupted checkpoint with one line, before any work is done."""
    from .checkpoint import load_checkpoint
    ckpt = resolve_checkpoint(run_dir)
    load_trainer_state(ckpt)
    load_checkpoint(ckpt)
