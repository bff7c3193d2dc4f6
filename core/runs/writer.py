"""One writer per run: an exclusive OS lock (core/locks.py) on runs/<run>/writer.lock.

The kernel releases it when its process ends, however it ends (kill -9 included), so a stale lock
file never blocks anyone. The file names the holder (pid, host, stage), so a refused writer can say
who holds the run. An evaluation holds runs/<run>/use.lock shared while it reads the run and writes
its results into it; a rename or delete takes that lock alone, so neither lands under it.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from core.atomic import JSON_LIMIT, read_regular
from core.errors import AcmError, os_error_text
from core.locks import Flock
from core.paths import Paths


class RunLock:
    def __init__(self, run: Path):
        self.run = run
        self.lock = Flock(Paths.writer_lock(run))

    def acquire(self, stage: str, fresh: bool = True) -> RunLock:
        """Take the run for this process, or refuse with one line naming the holder. A run that was
        there (not `fresh`) and is renamed or deleted meanwhile is refused too, never made again."""
        try:
            taken = self.lock.try_acquire(make_folder=fresh)
            moved = taken and not os.path.samestat(os.stat(self.lock.path), os.fstat(self.lock.fd))
        except FileNotFoundError as e:  # gone before the lock was taken, or after
            if fresh and not self.run.parent.is_dir():  # never there: the runs folder could not be made
                raise AcmError(f"cannot make the runs folder {self.run.parent} (paths.runs): "
                               f"{os_error_text(e)}") from None
            taken, moved = self.lock.fd is not None, True
        if moved:
            self.release()
            raise AcmError(f"run {self.run.name} was renamed or deleted as its {stage} was to start: see `acm runs`")
        if not taken:
            raise busy(self.run, holder(self.run))
        os.ftruncate(self.lock.fd, 0)
        os.write(self.lock.fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                           "stage": stage}).encode())
        return self

    def release(self) -> None:
        self.lock.release()


def holder(run: Path) -> dict | None:
    """Who holds the run now ({"pid", "host", "stage"}), or None when nobody does; {} where that
    cannot be told (a lock file that cannot be opened or locked: a read-only folder, another user's)."""
    path = Paths.writer_lock(run)
    if not path.exists():
        return None
    probe = Flock(path)
    try:  # a probe (the app asks every few seconds): no waiting, and no folder made again
        free = probe.try_acquire(shared=True, make_folder=False, grace=0)
    except FileNotFoundError:  # the run went meanwhile
        return None
    except OSError:
        return {}
    if free:
        probe.release()
        return None
    try:
        return json.loads(read_regular(path, JSON_LIMIT) or "{}")  # a FIFO put there is not waited on
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


@contextlib.contextmanager
def in_use(run: Path, doing: str) -> Iterator[None]:
    """Hold `run` while it is `doing` (an evaluation: its checkpoints read, eval.json written into
    it). A rename or delete meanwhile would leave the results in a folder made again under the old
    name, so they refuse; one that came first leaves this refused instead."""
    path = Paths.use_lock(run)
    with Flock(path) as lock:  # released however this ends
        try:
            before, made = os.stat(run), not os.path.lexists(path)
            taken = lock.try_acquire(shared=True, make_folder=False)
            gone = taken and not os.path.samestat(os.stat(path), os.fstat(lock.fd))  # moved after the open
            if taken and not gone and made:  # the run's "modified" is its own (eval.json's), not the lock's
                with contextlib.suppress(OSError):  # another user's run: only its owner may set its times
                    os.utime(run, ns=(before.st_atime_ns, before.st_mtime_ns))
        except FileNotFoundError:  # moved before it
            taken, gone = True, True
        except OSError as e:
            raise AcmError(f"run {run.name} cannot be {doing}: {os_error_text(e)}") from None
        if not taken:
            raise AcmError(f"run {run.name} is being renamed or deleted: see `acm runs`")
        if gone:
            raise AcmError(f"run {run.name} was renamed or deleted as it was to be {doing}: see `acm runs`")
        yield


@contextlib.contextmanager
def evaluating_alone(run: Path) -> Iterator[None]:
    """One evaluation of `run` at a time, in any process: a second would write eval.json over the
    first's, whichever ended last winning; it is refused in one line."""
    lock = Flock(Paths.eval_lock(run))
    with lock:
        try:
            before = os.stat(run)
            taken = lock.try_acquire(make_folder=False, grace=0)
            with contextlib.suppress(OSError):  # the run's "modified" is its own, not the lock's
                os.utime(run, ns=(before.st_atime_ns, before.st_mtime_ns))
        except OSError as e:
            raise AcmError(f"run {run.name} cannot be evaluated: {os_error_text(e)}") from None
        if not taken:
            raise AcmError(f"run {run.name} is being evaluated already (another acm eval, or the app's e): "
                           "its eval.json is written when that ends")
        yield


@contextlib.contextmanager
def alone(run: Path, doing: str) -> Iterator[None]:
    """Hold `run` alone while it is `doing` (renamed, deleted): its writer's lock, refused in one
    line while a stage holds it (a resume that has not yet said it is running included), and its
    use lock, refused while an evaluation holds it (in_use)."""
    writer, lock = Flock(Paths.writer_lock(run)), Flock(Paths.use_lock(run))
    try:
        before = os.stat(run)
        # on the app's UI thread: no waiting (a retry will do)
        written = writer.try_acquire(make_folder=False, grace=0)
        taken = written and lock.try_acquire(make_folder=False, grace=0)
        os.utime(run, ns=(before.st_atime_ns, before.st_mtime_ns))  # the run's "modified" is its own, not the locks'
    except OSError:  # a folder that cannot hold the lock files: the rename or delete says why
        written = taken = None
    with writer, lock:
        if written is False:
            raise busy(run, holder(run))
        if taken is False:
            raise AcmError(f"run {run.name} is being evaluated: it can be {doing} once that ends")
        yield
