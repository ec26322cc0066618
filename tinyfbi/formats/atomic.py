"""The one atomic write of tinyfbi: files and whole folders appear complete or not at all.

A file is written under a temporary name in its own folder, flushed to disk, then renamed over
its target (os.replace is atomic on POSIX filesystems), so a reader or a rerun after a kill never
sees half a checkpoint, shard or token file. A folder cannot be renamed over a non-empty folder,
so `replace_folder` first moves the old one aside to `.NAME.old`: a kill at any moment leaves
NAME or `.NAME.old` complete, and `complete_folder` finds whichever it is.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _file_mode() -> int:
    """What open() would give a new file under the current umask (mkstemp makes 0600 files)."""
    return 0o666 & ~_umask()


@contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` to write to (by any library); renamed onto `path` on
    success, removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_open(path, mode="wb"):
    """open(path, mode) for writing, seen by others only once the block completes."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write_bytes(path, data: bytes):
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def old_folder(final) -> Path:
    final = Path(final)
    return final.with_name(f".{final.name}.old")


def temp_folder(final) -> Path:
    """An empty `.NAME.tmp` beside `final` to build the new folder in (a killed build's leftovers
    are removed first). One writer per target: a run folder's lock guarantees it for checkpoints."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def replace_folder(tmp, final) -> Path:
    """Move the complete folder `tmp` to `final`, replacing what was there (a folder or a file)."""
    tmp, final, old = Path(tmp), Path(final), old_folder(final)
    if final.exists():
        _remove(old)
        final.rename(old)
    tmp.rename(final)
    _remove(old)
    return final


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def complete_folder(final) -> Path | None:
    """`final`, or the `.NAME.old` a kill during replace_folder left complete, or None."""
    for candidate in (Path(final), old_folder(final)):
        if candidate.is_dir():
            return candidate
    return None
