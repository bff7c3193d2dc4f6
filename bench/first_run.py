"""A new user's first run, timed: a fresh project (no acm.toml, so the preset suits this machine),
every stage on the offline data through `acm pipeline run --time BUDGET`, then one generated
script. Prints one JSON line: the whole run's seconds, the preset, each stage's state and the
evaluation table's figures.

usage: python bench/first_run.py [--time 8m] [--keep DIR]
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


def acm(project: Path, *args: str, timeout: float = 3600) -> str:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode:
        sys.exit(f"acm {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", default="8m", help="the budget given to acm pipeline run")
    ap.add_argument("--keep", type=Path, help="make the project here (default: a temporary folder)")
    a = ap.parse_args()
    project = a.keep or Path(tempfile.mkdtemp(prefix="acm-first-run-"))
    project.mkdir(parents=True, exist_ok=True)
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
        "stages": {s["name"]: s["state"] for s in status},
        "evaluation": {stage: row.get("code_generation") for stage, row in evaluation["stages"].items()},
        "generated_chars": len(sample), "cpus": os.cpu_count(), "project": str(project),
    }))


if __name__ == "__main__":
    main()
