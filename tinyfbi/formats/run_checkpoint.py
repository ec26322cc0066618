"""A run folder's resumable checkpoint, swapped in atomically as a whole folder.

    runs/NAME/checkpoint/   model.safetensors, config.json, tokenizer file,
                            optimizer.safetensors (AdamW moments m.<name>, v.<name>), trainer.json
                            (step, data position, skipped batches, loss statistics)

A new checkpoint is built in `.checkpoint.tmp`, then swapped in by formats.atomic.replace_folder:
a kill at any point leaves `checkpoint` or `.checkpoint.old` complete; `resolve_checkpoint` finds it.
Both backends write and read this one layout, so a run can change backend at any checkpoint.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ..core.errors import TinyFBIError
from .atomic import atomic_path, atomic_write_json, complete_folder, replace_folder, temp_folder
from .checkpoint import CONFIG_FILE, save_checkpoint

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


def save_run_checkpoint(run_dir, config, params: dict, optimizer_state: dict, trainer_state: dict,
                        tokenizer=None, extra_fbi=None) -> Path:
    """optimizer_state: {"step": int, "m": {name: array}, "v": {name: array}} (AdamW's moments).
    A write that fails (a full disk, a read-only folder) leaves the previous checkpoint as it was
    and ends in one line saying what failed."""
    final = Path(run_dir) / CHECKPOINT
    tmp = None
    try:
        tmp = temp_folder(final)
        save_checkpoint(tmp, config, params, tokenizer, extra_fbi)
        moments = {**{"m." + k: v for k, v in optimizer_state["m"].items()},
                   **{"v." + k: v for k, v in optimizer_state["v"].items()}}
        with atomic_path(tmp / OPTIMIZER_FILE) as path:
            save_file(moments, path)
        atomic_write_json(tmp / TRAINER_FILE, {**trainer_state, "optimizer_step": optimizer_state["step"]})
        return replace_folder(tmp, final)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = resolve_checkpoint(run_dir) if has_checkpoint(run_dir) else None
        raise TinyFBIError(f"could not write the step-{trainer_state['step']} checkpoint in {run_dir} "
                           f"({e.strerror or e}); " + (f"the last complete checkpoint, {kept}, is intact: "
                           "free space or fix permissions, then rerun with --resume" if kept else
                           "no checkpoint was written")) from None


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
