"""A training command's whole wall, from the command to its exit: the part before the trainer
(Python's start, acm's imports, MLX's device, the settings read and the run picked), the trainer's
own split (`timings.json`: setup, compile, steps, validation, samples, checkpoints, other) and the
part after it (the last lines printed, Python's and MLX's exit). `timings.json` starts at the
trainer, so this is the figure a user waits for.

usage: python bench/command_wall.py --project DIR [--stage pretrain] [--rounds 1] [--max-steps N]
           [--run-from RUN] [--keep]
DIR holds acm.toml and data/ with token shards (`acm prepare` done); each round runs
`acm train STAGE --run wall-<round>` in a fresh process (a fine-tune needs --run-from naming a run
with a pretrain checkpoint, copied for each round) and prints one JSON line. The process is
`python bench/command_wall.py --child`, so Python's start includes this file's few imports.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from first_run import project_env


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--stage", default="pretrain", choices=["pretrain", "finetune"])
    p.add_argument("--rounds", type=int, default=1, help="fresh processes, one after the other")
    p.add_argument("--max-steps", type=int, help="stop each command after this many steps")
    p.add_argument("--run-from", help="a fine-tune: the run whose pretrain each round starts from")
    p.add_argument("--keep", action="store_true", help="keep the rounds' runs")
    return p.parse_args()


def main() -> None:
    a = parse_args()
    if a.stage == "finetune" and not a.run_from:
        sys.exit("--stage finetune needs --run-from: a run with a pretrain checkpoint")
    for n in range(1, a.rounds + 1):
        print(json.dumps(one_round(a, f"wall-{n}") | {"round": n}), flush=True)


def one_round(a: argparse.Namespace, name: str) -> dict:
    runs = a.project / "runs"
    run = runs / name
    shutil.rmtree(run, ignore_errors=True)
    if a.run_from:
        shutil.copytree(runs / a.run_from, run)
    args = ["train", a.stage, "--run", name] + (["--max-steps", str(a.max_steps)] if a.max_steps else [])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            marks_file = Path(tmp) / "marks.json"
            started = time.time()
            done = subprocess.run([sys.executable, __file__, "--child", str(marks_file), *args], cwd=a.project,
                                  env=project_env(), capture_output=True, text=True)
            ended = time.time()
            marks = json.loads(marks_file.read_text()) if marks_file.exists() else {}
        if done.returncode or "trainer_out" not in marks:
            sys.exit(f"acm {' '.join(args)} " + (f"failed: {done.stderr.strip()[-800:]}" if done.returncode
                                                  else "trained nothing: the trainer never ran"))
        timings = json.loads((run / a.stage / "timings.json").read_text())
    finally:
        if not a.keep:
            shutil.rmtree(run, ignore_errors=True)
    return split(marks, started, ended, timings) | {"stage": a.stage, "args": args}


def split(marks: dict, started: float, ended: float, timings: dict) -> dict:
    """The command's seconds by part; the four parts add up to command_s."""
    steps, command = timings["parts_s"]["steps"], ended - started
    return {
        "bench": "command_wall", "device": marks["device"], "command_s": round(command, 3),
        "before_trainer_s": {"python_start": round(marks["script"] - started, 3),
                             "imports": round(marks["imported"] - marks["script"], 3),
                             "to_trainer": round(marks["trainer_in"] - marks["imported"], 3)},
        "trainer_s": round(marks["trainer_out"] - marks["trainer_in"], 3),
        "after_trainer_s": round(ended - marks["trainer_out"], 3),
        "timings": timings,
        "around_step_share": round(1 - steps / command, 4),
        "around_step_share_in_trainer": round(1 - steps / timings["wall_s"], 4),
    }


def child(marks_file: Path, argv: list[str]) -> int:
    """`acm ARGV` in this process, the trainer's entry and return marked (wall-clock seconds, shared
    with the parent); the marks are written however the command ends."""
    marks = {"script": time.time()}
    from core.cli.main import main as acm
    from core.train.trainer import Trainer
    marks["imported"] = time.time()
    run = Trainer.run

    def marked_run(self):
        from core.hardware import device_label
        marks.setdefault("device", device_label())
        marks.setdefault("trainer_in", time.time())
        try:
            return run(self)
        finally:
            marks["trainer_out"] = time.time()

    Trainer.run = marked_run
    try:
        return acm(argv)
    finally:
        marks_file.write_text(json.dumps(marks))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(Path(sys.argv[2]), sys.argv[3:]))
    main()
