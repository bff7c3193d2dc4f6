"""Where a checkpoint's save goes, part by part: a preset's weights and optimizer state (AdamW, or
Muon with --muon) snapshotted on the device, copied to host memory, written, fsynced; then whole
saves as the trainer's writer makes them (`checkpoint.write`), and with the two files written by two
threads at once.

usage: python bench/save_parts.py --dir FOLDER [--preset tiny] [--dtype bfloat16] [--repeats 3] [--muon]
FOLDER is where the files go (on the disk the runs would use). Prints one JSON line per repeat.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from pathlib import Path

import mlx.core as mx

from core.hardware import configure_mlx, device_info
from core.model.gpt import GPT
from core.presets import get_preset
from core.runs import checkpoint
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


def two_threads(folder: Path, step: int, snap: checkpoint.Snapshot, state: dict) -> None:
    """`checkpoint.write`'s files, model and optimizer each on a thread of its own."""
    tmp = folder / f"two-{step}"
    tmp.mkdir(parents=True)
    jobs = [threading.Thread(target=checkpoint.write_safetensors, args=(tmp / name, blob))
            for name, blob in (("model.safetensors", snap.model), ("optimizer.safetensors", snap.optimizer))]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join()
    with open(tmp / "state.json", "w") as f:
        json.dump(state, f)
    shutil.rmtree(tmp)


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
        snap = checkpoint.snapshot(opt.parameters(), opt.checkpoint_state())
        row["checkpoint_write_s"] = timed(checkpoint.write, a.dir / "ck", rep, snap, {"step": rep})
        snap = checkpoint.snapshot(opt.parameters(), opt.checkpoint_state())
        row["two_threads_s"] = timed(two_threads, a.dir, rep, snap, {"step": rep})
        print(json.dumps(row), flush=True)
    shutil.rmtree(a.dir / "ck", ignore_errors=True)


if __name__ == "__main__":
    main()
