"""One writer per run: an exclusive OS lock (core/locks.py) on runs/<run>/writer.lock.

The kernel releases it when its process ends, however it ends (kill -9 included), so a stale lock
file never blocks anyone. The file names the holder (pid, host, stage), so a refused writer can say
who holds the run.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from core.errors import AcmError
from core.locks import Flock
from core.paths import Paths


class RunLock:
    def __init__(self, run: Path):
        self.run = run
        self.lock = Flock(Paths.writer_lock(run))

    def acquire(self, stage: str) -> RunLock:
        """Take the run for this process, or refuse with one line naming the holder."""
        if not self.lock.try_acquire():
            raise busy(self.run, holder(self.run))
        os.ftruncate(self.lock.fd, 0)
        os.write(self.lock.fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                           "stage": stage}).encode())
        return self

    def release(self) -> None:
        self.lock.release()


def holder(run: Path) -> dict | None:
    """Who holds the run now ({"pid", "host", "stage"}), or None when nobody does."""
    path = Paths.writer_lock(run)
    if not path.exists():
        return None
    probe = Flock(path)
    if probe.try_acquire(shared=True):
        probe.release()
        return None
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def busy(run: Path, who: dict | None) -> AcmError:
    """The one-line refusal of a second writer, naming the first."""
    name = "another process"
    if who:
        name = f"pid {who.get('pid', '?')} on {who.get('host', '?')}"
        name += f" ({who['stage']})" if who.get("stage") else ""
    return AcmError(f"run {run.name} is being written by {name}: wait for it, or stop it with "
                    f"`acm runs stop {run.name}`")
