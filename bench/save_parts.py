"""Where a checkpoint's save goes, part by part: a preset's weights and optimizer state (AdamW, or
Muon with --muon) snapshotted on the device, handed to the CPU, written, fsynced; then whole saves
as the trainer's writer makes them (`checkpoint.write`: checkpoint_write_s), side by side with that
write without its two changes (before_s: the CPU reading MLX's managed memory itself, every byte left
to the final fsync; still in 64 MB pieces, where the code before wrote a buffer in one call) and with
each change alone (staged_only_s, writeback_only_s).

usage: python bench/save_parts.py --dir FOLDER [--preset tiny] [--dtype bfloat16] [--repeats 3] [--muon]
FOLDER is where the files go (on the disk the runs would use). Prints one JSON line per repeat.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import mlx.core as mx

from core.hardware import configure_mlx, device_info
from core.model.gpt import GPT
from core.presets import get_preset
from core.runs import checkpoint, host_copy
from core.train.optimizer import FlatAdamW


def arrays_of(snap: checkpoint.Snapshot) -> list[mx.array]:
    return [*snap.model.chunks, *snap.optimizer.chunks]


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return round(time.perf_counter() - t, 4)


def parts(opt: FlatAdamW, folder: Path) -> dict:
    """One save split: snapshot (queued), device copies done, host copies, write, fsync."""
    out = {}
    holder = {}
    out["snapshot_s"] = timed(lambda: holder.setdefault("s", checkpoint.snapshot(opt.parameters(),
                                                                                  opt.checkpoint_state())))
    snap = holder["s"]
    out["device_copies_s"] = timed(lambda: mx.eval(arrays_of(snap)))
    out["host_copies_s"] = timed(lambda: [memoryview(a) for a in arrays_of(snap) if a.nbytes])
    path = folder / "parts.bin"
    with open(path, "wb") as f:
        out["write_s"] = timed(lambda: [f.write(memoryview(a)) for a in arrays_of(snap) if a.nbytes])
        f.flush()
        out["fsync_s"] = timed(lambda: os.fsync(f.fileno()))
    path.unlink()
    out["gb"] = round(sum(a.nbytes for a in arrays_of(snap)) / 1e9, 3)
    return out


@contextlib.contextmanager
def write_path(staged: bool, writeback: bool):
    """`checkpoint.write` with the GPU's copy into pinned memory (`host_copy`) and the early
    writeback each on or off (both off: the CPU reads MLX's managed memory, the fsync writes all)."""
    saved = host_copy.USE_CUDA, checkpoint.WRITEBACK
    host_copy.USE_CUDA, checkpoint.WRITEBACK = staged, writeback
    try:
        yield
    finally:
        host_copy.USE_CUDA, checkpoint.WRITEBACK = saved


WRITE_PATHS = {"checkpoint_write_s": (True, True), "before_s": (False, False),
               "staged_only_s": (True, False), "writeback_only_s": (False, True)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--muon", action="store_true")
    a = p.parse_args()
    configure_mlx()
    model = GPT(get_preset(a.preset), a.dtype)
    opt = FlatAdamW(model.parameters(), 3e-4, 0.1, model.compute_dtype, muon_lr=0.02 if a.muon else None)
    mx.eval(opt.state)
    a.dir.mkdir(parents=True, exist_ok=True)
    for rep in range(a.repeats):
        row = {"bench": "save_parts", "device": device_info().get("device_name", str(mx.default_device())),
               "preset": a.preset, "muon": a.muon, "repeat": rep, **parts(opt, a.dir)}
        paths = list(WRITE_PATHS.items())
        for key, (staged, writeback) in paths[rep % len(paths):] + paths[:rep % len(paths)]:  # no path always first
            snap = checkpoint.snapshot(opt.parameters(), opt.checkpoint_state())
            with write_path(staged, writeback):
                row[key] = timed(checkpoint.write, a.dir / "ck", rep, snap, {"step": rep})
        print(json.dumps(row), flush=True)
    shutil.rmtree(a.dir / "ck", ignore_errors=True)


if __name__ == "__main__":
    main()
