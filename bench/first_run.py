"""A new user's first run, timed: a fresh project (no acm.toml, so the preset suits this machine),
every stage on the offline data through `acm pipeline run --time BUDGET`, then one generated
script. Prints one JSON line: the whole run's seconds, the preset, the vocabulary the model took,
each stage's state and the evaluation table's figures.

usage: python bench/first_run.py [--time 8m] [--keep DIR]
       python bench/first_run.py --gpu [--time 5m]     (refuses to run unless MLX trains on a GPU)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project_env() -> dict:
    """This checkout first on the path, before what the caller's PYTHONPATH holds (MLX's CUDA build)."""
    return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def acm(project: Path, *args: str, timeout: float = 3600) -> str:
    done = subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=project, env=project_env(),
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        sys.exit(f"acm {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def settings_file(base: Path, path: Path, settings: list[str]) -> Path:
    """`base` (an acm.toml) with KEY=VALUE `settings` applied one at a time, as `acm config set` would,
    saved as `path` beside it (so its paths resolve alike) with base's comments kept."""
    from core import config  # the callers have the checkout on their path; this script alone needs no MLX

    cfg = config.load(base)
    for kv in settings:
        key, value = kv.split("=", 1)
        cfg, _ = config.with_value(cfg, key, value, source=str(base))
    path.write_bytes(base.read_bytes())
    config.save_settings(cfg, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", help="the budget given to acm pipeline run (default: 8m, with --gpu 5m)")
    ap.add_argument("--gpu", action="store_true", help="the first run on a GPU machine: the device must be a GPU")
    ap.add_argument("--keep", type=Path, help="make the project here (default: a temporary folder)")
    a = ap.parse_args()
    a.time = a.time or ("5m" if a.gpu else "8m")
    project = a.keep or Path(tempfile.mkdtemp(prefix="acm-first-run-"))
    project.mkdir(parents=True, exist_ok=True)
    device = device_of(project)
    if a.gpu and not device.startswith("gpu"):
        sys.exit(f"--gpu: MLX has no GPU here ({device})")
    started = time.perf_counter()
    acm(project, "pipeline", "run", "--time", a.time)
    pipeline_s = time.perf_counter() - started
    sample = acm(project, "generate", "#!/bin/bash\n# Back up a directory\n", "--max-tokens", "60")
    total_s = time.perf_counter() - started
    status = json.loads(acm(project, "pipeline", "status", "--json"))
    evaluation = json.loads(next(project.glob("runs/*/eval.json")).read_text())
    config = acm(project, "config", "show")
    print(json.dumps({
        "budget": a.time, "pipeline_s": round(pipeline_s, 1), "with_one_generation_s": round(total_s, 1),
        "preset": next(line.split("=")[1].strip().strip('"') for line in config.splitlines()
                       if line.startswith("preset")),
        "device": device, "vocab": model_vocab(project),
        "stages": {s["name"]: s["state"] for s in status},
        "evaluation": {stage: row.get("code_generation") for stage, row in evaluation["stages"].items()},
        "generated_chars": len(sample), "cpus": os.cpu_count(), "project": str(project),
    }))


def device_of(project: Path) -> str:
    """MLX's device as acm names it ("gpu: NVIDIA H200", "cpu")."""
    return subprocess.run([sys.executable, "-c", "from core.hardware import device_label; print(device_label())"],
                          cwd=project, env=project_env(), capture_output=True, text=True, check=True).stdout.strip()


def model_vocab(project: Path) -> int:
    """The vocabulary the model trained with (the tokenizer's, recorded in the run's settings)."""
    for line in next(project.glob("runs/*/config.toml")).read_text().splitlines():
        if line.startswith("vocab_size"):
            return int(line.split("=")[1])
    return 0


if __name__ == "__main__":
    main()
