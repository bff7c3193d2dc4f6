"""OS file locks (`flock`) that die with their process, kill -9 included: a stale lock file never
blocks anyone.

Training holds the *inputs* lock shared for as long as it runs; a rebuild of the tokenizer or the
token shards takes it exclusively, so it is refused while any training stage reads them.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from core.errors import AcmError

# A lock let go can stay held a moment by a child process another thread started meanwhile: a fork
# copies every descriptor, the lock's too, until the child starts its program (samples' `bash -n`,
# `git`, `nvidia-smi`). A stage taking a lock just let go (the pipeline's code shards after its
# language shards, a fine-tune after its pretrain) waits this long for such a child before it refuses.
FORK_GRACE_S = 0.5
GRACE_PAUSE_S = 0.005


class Flock:
    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def try_acquire(self, shared: bool = False, make_folder: bool = True, grace: float = FORK_GRACE_S) -> bool:
        """Take the lock, waiting at most `grace` seconds (FORK_GRACE_S; 0 for a probe, which must
        not wait); False when another process holds it the other way. Without `make_folder` a
        folder that is gone stays gone (FileNotFoundError)."""
        if make_folder:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        end = time.monotonic() + grace
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= end:
                    os.close(fd)
                    return False
                time.sleep(GRACE_PAUSE_S)
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None

    def __enter__(self) -> Flock:
        return self

    def __exit__(self, *exc) -> None:  # released however the block ends
        self.release()


@contextlib.contextmanager
def reading_inputs(lock_path: Path) -> Iterator[None]:
    """Held by a training stage: the tokenizer and token shards it reads are not rebuilt meanwhile."""
    lock = Flock(lock_path)
    if not lock.try_acquire(shared=True):
        raise AcmError("the tokenizer or the token shards are being rebuilt: wait for that to finish")
    with lock:
        yield


def rebuilding_inputs(lock_path: Path, what: str) -> contextlib.AbstractContextManager:
    """Held while the tokenizer or the token shards are rebuilt; refused while training reads them."""
    return held_alone(lock_path, f"{what} can't be rebuilt now: a training stage (`acm runs` shows it) or another "
                                 "rebuild is using them (a cancelled tokenizer training's merges, until they end); "
                                 "stop it first, or wait")


@contextlib.contextmanager
def held_alone(lock_path: Path, refusal: str) -> Iterator[None]:
    """The lock, exclusive, for the block; `refusal` (one line) where another process holds it."""
    lock = Flock(lock_path)
    if not lock.try_acquire():
        raise AcmError(refusal)
    with lock:
        yield


@contextlib.contextmanager
def folder_held(folder: Path, waits: int = 200, pause=None) -> Iterator[bool]:
    """The folder's own lock, exclusive, waited for (`waits` tries `pause`s apart, 10 s by default):
    a read-modify-write of a file in it (acm.toml) that another acm may be making at the same moment.
    Locking the folder, not the file, holds across the file's replacement by rename and leaves no lock
    file behind. Yields False, holding nothing, where the folder cannot be opened or locked at all (a
    missing folder: the write then fails with its own line; a file system without locks on folders,
    as NFS emulates them: saves there are not serialised); raises AcmError when the lock stays taken."""
    pause = pause or (lambda: time.sleep(0.05))
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield False
        return
    try:
        yield _locked(fd, folder, waits, pause)
    finally:
        os.close(fd)


def _locked(fd: int, folder: Path, waits: int, pause) -> bool:
    for _ in range(waits):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pause()
        except OSError:  # ENOLCK, EBADF: no lock to be had here
            return False
    raise AcmError(f"{folder}: another acm kept its settings locked; nothing was saved, try again")
