"""How fast a disk takes a checkpoint's bytes, written the ways a checkpoint could be: one thread in
64 MB pieces with each piece's writeback started at once (acm's way, core/runs/checkpoint.py), the
same without the early writeback, several threads writing their pieces at their offsets, and
O_DIRECT (Linux only). Each file is fsynced; the ways take turns, in reverse order the second round.
The floor under `bench/save_parts.py`'s checkpoint_write_s.

usage: python bench/disk_write.py --dir FOLDER [--gb 1.19] [--rounds 2]
FOLDER is on the disk the runs would use. Prints one JSON line of seconds per way.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import threading
import time
from pathlib import Path

import numpy as np

from core.atomic import start_writeback
from core.runs.host_copy import PIECE_BYTES as PIECE


def one_thread(path: Path, data: memoryview, writeback: bool = True) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for start in range(0, len(data), PIECE):
            n = os.write(fd, data[start:start + PIECE])
            if writeback:
                start_writeback(fd, start, n)
        os.fsync(fd)
    finally:
        os.close(fd)


def threads(path: Path, data: memoryview, count: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    starts = list(range(0, len(data), PIECE))

    def work(i: int) -> None:
        for start in starts[i::count]:
            n = os.pwrite(fd, data[start:start + PIECE], start)
            start_writeback(fd, start, n)

    try:
        workers = [threading.Thread(target=work, args=(i,)) for i in range(count)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        os.fsync(fd)
    finally:
        os.close(fd)


def direct(path: Path, data: memoryview) -> None:
    """O_DIRECT through one page-aligned buffer (the bytes past the last 4 KiB are left out)."""
    size = len(data) - len(data) % 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        with mmap.mmap(-1, PIECE) as buf:
            for start in range(0, size, PIECE):
                n = min(PIECE, size - start)
                buf[:n] = data[start:start + n]
                os.write(fd, memoryview(buf)[:n])
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--gb", type=float, default=1.19)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    data = memoryview(np.random.default_rng(0).integers(0, 256, int(a.gb * 1e9), dtype=np.uint8)).cast("B")
    ways = {"one_writeback": lambda f: one_thread(f, data), "one_plain": lambda f: one_thread(f, data, False),
            "threads4": lambda f: threads(f, data, 4), "threads8": lambda f: threads(f, data, 8)}
    if hasattr(os, "O_DIRECT"):
        ways["direct"] = lambda f: direct(f, data)
    a.dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, list[float]] = {}
    for r in range(a.rounds):
        for name, write in (list(ways.items()) if r % 2 == 0 else list(ways.items())[::-1]):
            path = a.dir / f"disk-write-{name}.bin"
            t = time.perf_counter()
            write(path)
            seconds.setdefault(name, []).append(round(time.perf_counter() - t, 3))
            path.unlink()
    print(json.dumps({"bench": "disk_write", "bytes": len(data), "seconds": seconds}))


if __name__ == "__main__":
    main()
