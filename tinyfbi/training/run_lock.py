"""One run per folder: an exclusive OS lock on `.NAME.lock` beside the run folder NAME, for the
whole life of a run (beside it, so that a run refused for bad input leaves no folder behind).

The lock is `flock(2)` on an open file: the kernel drops it when the holding process dies, however
it dies (SIGKILL, OOM, a lost node's processes ending), so a crash never leaves a stale lock to
clear by hand. The holder writes who it is (pid, host, since, command) into the lock file, so a
second run that would write the same folder refuses in one line naming it. Readers (generate,
evaluate, pack, export) take no lock: checkpoints are swapped in whole (formats.atomic).

On local filesystems this holds. On network filesystems flock may be emulated (NFS maps it to
byte-range locks, held by the server) or not shared between hosts at all (some Lustre/GPFS mounts
without flock support): there two hosts may both get the lock, or a dead client's lock may stay
until the server's lease expires.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from ..core.errors import TinyFBIError


class RunBusy(TinyFBIError):
    """Another process holds the run's lock (it is training that run now)."""


def lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


class RunLock:
    def __init__(self, folder, what="run"):
        self.folder, self.what, self.fd = Path(folder), what, None

    def acquire(self, wait=False, on_wait=print) -> "RunLock":
        """Take the lock, or refuse (TinyFBIError naming the holder); with wait, wait for it."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(self.folder), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(fd)
            if not wait:
                os.close(fd)
                raise RunBusy(f"{self.folder} is in use by another {self.what}: {holder}. Wait for it to end "
                                   "(or stop it), then rerun; one folder takes one run at a time") from None
            on_wait(f"{self.what}: waiting for {holder} to finish {self.folder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def describe_holder(fd) -> str:
    """'pid 123 on host since 2026-12-01T12:00:00+00:00' from the lock file (written by the holder)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (ValueError, KeyError, UnicodeDecodeError):
        return "a process that has not yet said who it is"
