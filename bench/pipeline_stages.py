"""`acm pipeline run`'s stages, each from its heading to the next: the token shards, then the training
stages and the evaluation, with the engine readied beside the shards (`train.ready_in_pipeline`) or
not, side by side. A training stage's share around the step is 1 - its steps (`timings.json`) / its
heading-to-heading seconds, so it counts whatever the stage waited for on the engine.

usage: python bench/pipeline_stages.py -c PROJECT/acm.toml [--rounds 2] [--modes on,off]
PROJECT holds the corpora and a tokenizer (`acm tokenizer train` done). Each round runs each mode in
turn (the order reversed every other round, against drift), each a fresh `acm pipeline run` process on
a copy of the project without its shards or runs, and prints one JSON line per process: the mode,
each stage's seconds, the command's, the line the readying printed and when, and each training
stage's split and share around the step.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app_stages import around_step  # noqa: E402
from first_run import project_env, settings_file  # noqa: E402

HEADING = re.compile(r"── \d+/\d+ (.+)$")
NAMES = {"token shards": "prepare", "pretrain": "pretrain", "fine-tune": "finetune", "evaluate": "evaluate"}


def stage_seconds(marks: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Each stage's seconds, from its heading to the next one's (the last one's: to `end`)."""
    heads = [(t, NAMES.get(m.group(1), m.group(1))) for t, line in marks if (m := HEADING.search(line))]
    ends = [t for t, _ in heads[1:]] + [end]
    return {name: round(stop - t, 3) for (t, name), stop in zip(heads, ends)}


def one_pipeline(base: Path, mode: str) -> dict:
    """A fresh `acm pipeline run` on a copy of `base`'s corpora and tokenizer, its lines timed."""
    from core import config
    from core.paths import Paths
    from core.runs import list_runs
    from core.train import timings

    with tempfile.TemporaryDirectory(prefix="acm-pipeline-") as tmp:
        project = Path(tmp) / "proj"
        shutil.copytree(base.parent, project, ignore=shutil.ignore_patterns("tokens", "runs"))
        ready = "true" if mode == "on" else "false"
        path = settings_file(project / base.name, project / base.name, [f"train.ready_in_pipeline={ready}"])
        marks, started = [], time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "core.cli", "-c", str(path), "pipeline", "run"], cwd=project,
                                env=project_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            marks.append((time.perf_counter() - started, line.rstrip("\n")))
        if proc.wait():
            sys.exit(f"acm pipeline run failed: {' | '.join(line for _, line in marks[-5:])}")
        command_s = time.perf_counter() - started
        stages = stage_seconds(marks, command_s)
        run = list_runs(config.load(path))[0]
        out = {"mode": mode, "command_s": round(command_s, 3), "stages_s": stages,
               "readied": next(([round(t, 3), line] for t, line in marks if "readied" in line), None)}
        for stage in ("pretrain", "finetune"):
            split = timings.read(Paths.stage(run, stage))
            out[stage] = {"timings": split, "around_step": around_step(stages[stage], split) if split else None}
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", default="on,off", help="train.ready_in_pipeline in turn: on, off")
    a = p.parse_args()
    modes = a.modes.split(",")
    for n in range(1, a.rounds + 1):
        for mode in modes if n % 2 else modes[::-1]:
            print(json.dumps(one_pipeline(a.config.resolve(), mode) | {"round": n}), flush=True)


if __name__ == "__main__":
    main()
