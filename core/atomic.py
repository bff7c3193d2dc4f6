"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target.

A reader (or a crash, or Ctrl-C mid-write) sees either the old file or the new one, never half.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import IO, BinaryIO

from core.errors import AcmError, write_failure


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside `path`; on clean exit it replaces `path`, on error it is removed. A
    symbolic link is written through: its target is replaced, the link stays."""
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _take_mode(tmp, path)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sweep_temporaries(folder: Path, *names: str) -> None:
    """The temp files `atomic_open` left beside `names` (glob patterns allowed) in `folder` when its
    process was killed (SIGKILL runs no cleanup). Only for a caller that alone writes those files now
    (it holds their lock): another writer's temp file in flight would go with them."""
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


_SYNC_FILE_RANGE_WRITE = 2


@cache
def _sync_file_range():
    """Linux's sync_file_range, or None (macOS: there fsync does not wait for the drive anyway)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


def start_writeback(fd: int, offset: int, n: int) -> None:
    """Start writing bytes already written to `fd` out to the disk, without waiting: a large file
    written piece by piece then overlaps its writes with the disk's, and its final fsync has little
    left to wait for (a best effort: where the system has no such call, nothing happens)."""
    fn = _sync_file_range()
    if fn is not None and n > 0:
        fn(fd, offset, n, _SYNC_FILE_RANGE_WRITE)


def _take_mode(tmp: str, path: Path) -> None:
    """The replaced file's mode and owner (a private 600 file stays private), else the usual
    permissions (mkstemp makes 600)."""
    try:
        st = path.stat()
    except OSError:
        os.chmod(tmp, 0o666 & ~_umask())
        return
    os.chmod(tmp, st.st_mode & 0o7777)
    if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
        with contextlib.suppress(OSError):  # only root may give a file away; others keep their own
            os.chown(tmp, st.st_uid, st.st_gid)


def replace_keeping_mode(built: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put a file built aside (written under its own name) in place of `path`, with the mode and
    owner of the file it replaces, as `atomic_open` gives its files."""
    _take_mode(str(built), Path(path))
    os.replace(built, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def writing(what: str, *partial: str | os.PathLike) -> Iterator[None]:
    """Writes of `what` (a checkpoint, shards, an export...): any failure removes `partial`, the
    files or folders they were building, and a full disk, a file size limit or another refusal of
    the system becomes one AcmError line, worded alike for every writer whichever library wrote."""
    try:
        yield
    except BaseException as e:
        for p in partial:
            remove(Path(p))
        why = write_failure(e) or (e.strerror if isinstance(e, OSError) and e.strerror else None)
        if why is None:
            raise
        raise AcmError(f"{why}: could not write {what}"
                       + (" (its partial files were removed)" if partial else "")) from None


def remove(path: Path) -> None:
    """A file or folder gone, whichever it was (a missing one is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


JSON_LIMIT = 64 << 20  # bytes: the JSON files acm writes (a state, a status, a manifest of shards) take kilobytes;
# a shards manifest of a huge corpus, a few megabytes


def check_regular(path: str | os.PathLike, limit: int | None = None) -> None:
    """OSError, as for a file that cannot be read, where `path` (a link followed) is no regular file
    or holds more than `limit` bytes: opening a FIFO waits for a writer that never comes, a device
    such as /dev/zero never ends, and a file of a size no real one of its kind reaches (the caller
    says which) would fill the memory. A stat only: some devices act as they are opened."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    if limit is not None and st.st_size > limit:
        raise _too_big(path, limit)


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket"}


def kind_of(path: str | os.PathLike) -> str:
    """What `path` is, in words, where it is neither a regular file nor a folder (a link followed):
    "a FIFO", "a device", "a socket"; "nothing" where nothing is there."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "nothing"
    return "a folder" if stat.S_ISDIR(mode) else _KINDS.get(stat.S_IFMT(mode), "something")


def _not_regular(path: str | os.PathLike, mode: int) -> OSError:
    """The error reading a folder gives, or one naming what else it is."""
    if stat.S_ISDIR(mode):
        return IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    return OSError(errno.EINVAL, f"{_KINDS.get(stat.S_IFMT(mode), 'something')}, not a regular file", str(path))


def _too_big(path: str | os.PathLike, limit: int) -> OSError:
    return OSError(errno.EFBIG, f"over {limit:,} bytes, more than acm writes there", str(path))


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened to read where `check_regular` passes it, checked again on what was opened: a
    FIFO put there meanwhile is opened without waiting (O_NONBLOCK), and refused."""
    check_regular(path)
    f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb")  # a regular file reads as without it
    mode = os.fstat(f.fileno()).st_mode
    if not stat.S_ISREG(mode):
        f.close()
        raise _not_regular(path, mode)
    return f


def check_appendable(path: str | os.PathLike) -> None:
    """OSError where something other than a regular file stands at `path` (nothing there passes):
    opening a FIFO to write waits for a reader that never comes, and a device swallows the lines. A
    launch asks before it writes anything, then appends with `open_appending`."""
    if os.path.exists(path):
        check_regular(path)


def open_appending(path: str | os.PathLike, text: bool = False) -> IO:
    """`path` opened to append to (made where missing), or OSError where it is no regular file
    (`check_appendable`; one put there meanwhile is opened without waiting, and refused)."""
    check_appendable(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(path, mode)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", encoding="utf-8") if text else os.fdopen(fd, "ab")


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of regular file `path` (`open_regular`), or OSError where it holds more than
    `limit`, a size no real file of its kind reaches (the caller's choice)."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _too_big(path, limit)
    return data


def read_json(path: str | os.PathLike, shape: dict[str, type | tuple[type, ...]] | None = None) -> dict | None:
    """The JSON object in `path`, or None when it is missing, unreadable, not a regular file, over
    JSON_LIMIT bytes, not JSON (nor UTF-8), nested past the parser's depth, not an object, or when a
    key `shape` names holds another type (a file acm writes atomically is either whole or absent,
    so None means "not there")."""
    try:
        value = json.loads(read_regular(path, JSON_LIMIT).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or not fits(value, shape or {}):
        return None
    return value


def fits(value: dict, shape: dict[str, type | tuple[type, ...]]) -> bool:
    """Each key of `shape` that `value` holds has one of its types (None stands for JSON null)."""
    def types(t):
        return tuple(type(None) if x is None else x for x in (t if isinstance(t, tuple) else (t,)))
    return all(k not in value or isinstance(value[k], types(t)) for k, t in shape.items())


def strict_json(value, **options) -> str:
    """VALUE as JSON every reader takes: a NaN or an infinity (a diverged loss) as null, where
    Python's `NaN` is no JSON; a path or another object as its text."""
    return json.dumps(finite(value), allow_nan=False, default=str, **options)


def finite(value):
    """VALUE with every float that is not finite replaced by None, in lists and dicts at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
