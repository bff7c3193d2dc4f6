"""What the pipeline around the training step costs: one stage trained in this process on a
project's prepared data, with the trainer's own split of its wall time (setup, compile, steps,
validation, samples, checkpoints, other; core/train/timings.py).

usage: python bench/stage_overhead.py --project DIR [--stage pretrain] [--preset tiny] [--dtype D] [--steps 1200]
           [--eval-every 250] [--eval-batches 20] [--save-every 500] [--keep-last 3] [--log-every 10]
           [--seq 1024] [--batch 8] [--run NAME] [--clean]
DIR holds acm.toml and data/ with token shards (`acm prepare` done); settings not given are its
acm.toml's. A fine-tune needs --run naming a run with a pretrain checkpoint. Prints one JSON line,
with the loop's blocked time per save (`checkpoint_blocked_ms_per_save`).
"""
from __future__ import annotations

import argparse
import importlib
import json
import shutil
import time
from pathlib import Path

SETTINGS = {"steps": "steps", "eval_every": "eval_every", "eval_batches": "eval_batches",
            "save_every": "save_every", "keep_last": "keep_last", "log_every": "log_every",
            "seq": "seq_len", "batch": "batch_size"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--stage", default="pretrain", choices=["pretrain", "finetune"])
    p.add_argument("--preset", help="the model preset (default: acm.toml's)")
    p.add_argument("--dtype", help="the compute dtype (default: acm.toml's; float32 on a CPU, where bfloat16 is slow)")
    p.add_argument("--run", help="the run to train into (default: a new one, overhead-<time>)")
    p.add_argument("--clean", action="store_true", help="remove the run afterwards (a new one only)")
    for flag in SETTINGS:
        p.add_argument(f"--{flag.replace('_', '-')}", type=int, dest=flag)
    return p.parse_args()


def main() -> None:
    a = parse_args()
    t0 = time.perf_counter()
    config = importlib.import_module("core.config")
    trainer = importlib.import_module("core.train.trainer")
    import_s = time.perf_counter() - t0
    from core.paths import Paths  # loaded by the trainer already
    from core.train.timings import read as read_timings
    cfg = config.load(a.project / "acm.toml")
    if a.preset:
        cfg.model.preset = a.preset
    if a.dtype:
        cfg.model.compute_dtype = a.dtype
    sc = getattr(cfg.train, a.stage)
    sc.time = ""  # the steps given, not a time budget
    for flag, name in SETTINGS.items():
        if getattr(a, flag) is not None:
            setattr(sc, name, getattr(a, flag))
    name = a.run or time.strftime("overhead-%Y%m%d-%H%M%S")
    run = cfg.runs_dir / name
    started = time.perf_counter()
    result = trainer.train_stage(cfg, a.stage, run)  # a fine-tune starts from the run's best pretrain
    in_process_s = time.perf_counter() - started
    timings = read_timings(Paths.stage(run, a.stage))
    parts, saves = timings["parts_s"], timings["saves"]
    steps = result.step
    print(json.dumps({
        "stage": a.stage, "preset": cfg.model.preset, "device": device(), "run": str(run),
        "settings": {name: getattr(sc, name) for name in SETTINGS.values()}, "import_s": round(import_s, 2),
        "train_stage_s": round(in_process_s, 2), **timings,
        "checkpoint_blocked_ms_per_save": round(parts["checkpoints"] / saves * 1e3, 1) if saves else None,
        "validation_ms_per_check": round(parts["validation"] / -(-steps // sc.eval_every) * 1e3, 1),
        "around_steps_share": round(1 - parts["steps"] / timings["wall_s"], 3),
    }), flush=True)
    if a.clean and not a.run:
        shutil.rmtree(run, ignore_errors=True)


def device() -> str:
    from core.hardware import device_label
    return device_label()


if __name__ == "__main__":
    main()
