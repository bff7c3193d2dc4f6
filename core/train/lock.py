"""One writer per run: an exclusive OS lock on runs/<run>/writer.lock.

The lock is `flock` on an open file, so the kernel releases it when its process ends, however it
ends (kill -9 included): a stale lock file never blocks anyone. The file names the holder (pid,
host, stage) so a refused writer can say who holds the run.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from core.errors import AcmError
from core.paths import Paths


class RunLock:
    def __init__(self, run: Path):
        self.run = run
        self.path = Paths.writer_lock(run)
        self._fd: int | None = None

    def acquire(self, stage: str) -> RunLock:
        """Take the run for this process, or refuse with one line naming the holder."""
        created = not self.run.exists()
        self.run.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise busy(self.run, holder(self.run)) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "stage": stage}).encode())
        self._fd, self._created = fd, created
        return self

    def release(self) -> None:
        """Let go; a run folder this lock created and nothing else filled is removed again."""
        if self._fd is None:
            return
        if self._created and not Paths.run_config(self.run).exists():
            self.path.unlink(missing_ok=True)
            _remove_empty(self.run)
        os.close(self._fd)
        self._fd = None


def holder(run: Path) -> dict | None:
    """Who holds the run now ({"pid", "host", "stage"}), or None when nobody does."""
    path = Paths.writer_lock(run)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                return {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def busy(run: Path, who: dict | None) -> AcmError:
    """The one-line refusal of a second writer, naming the first."""
    name = "another process"
    if who:
        name = f"pid {who.get('pid', '?')} on {who.get('host', '?')}"
        name += f" ({who['stage']})" if who.get("stage") else ""
    return AcmError(f"run {run.name} is being written by {name}: wait for it, or stop it with "
                    f"`acm runs stop {run.name}`")


def _remove_empty(folder: Path) -> None:
    for sub in sorted(folder.rglob("*"), reverse=True):
        if sub.is_dir():
            try:
                sub.rmdir()
            except OSError:
                return
    try:
        folder.rmdir()
    except OSError:
        pass
