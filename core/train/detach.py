"""Training that outlives the terminal: a stage started as its own background process
(core.train.worker, or MLX's launcher of its ranks), reading one snapshot of the settings.

Over SSH a dropped connection kills the terminal and what runs in it. A detached stage runs in a
new session (no controlling terminal), logs to runs/<run>/<stage>/detached.log, and obeys the
commands `acm runs pause|resume|stop|save` leave in its control file (or SIGTERM: stop with a
checkpoint). A later acm-tui finds it through its status file and attaches to metrics.jsonl.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from core import config, runs
from core.paths import Paths
from core.runs.writer import busy, holder
from core.train import snapshot
from core.train.ranks import SOURCE, launcher_argv, launcher_env
from core.train.trainer import check_inputs


def launch_detached(config_path: Path, stage: str, run: Path, resume: bool = False, steps: int | None = None,
                    max_steps: int | None = None, time: str | None = None, ranks: int | None = None) -> int:
    """Train `stage` of `run` in the background with the settings of `config_path` (--steps and --time
    applied), on `ranks` ranks (default: train.ranks); returns its pid. What the stage needs is
    checked first: an error in a background process is seen by no one."""
    cfg = config.load(config_path)
    if steps:
        getattr(cfg.train, stage).steps = steps
    if time:
        getattr(cfg.train, stage).time = time
    check_inputs(cfg, stage, run, resume)
    ranks = ranks or cfg.train.ranks
    command = snapshot.command(snapshot.location(run, stage))
    argv = launcher_argv(ranks, command) if ranks > 1 else [sys.executable, *command]
    who = holder(run)
    if who is None and runs.stage_state(run, stage) == "starting":  # launched a moment ago, not yet locked
        who = runs.read_status(run, stage)
    if who is not None:
        raise busy(run, who)
    snapshot.write(cfg, snapshot.Launch(stage, run.name, resume, steps, max_steps), run)
    env = launcher_env(SOURCE)
    with open(Paths.detached_log(run, stage), "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(Path(config_path).resolve().parent), env=env)
    runs.write_status(run, stage, "starting", pid=proc.pid)
    return proc.pid
