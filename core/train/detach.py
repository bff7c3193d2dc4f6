"""Training that outlives the terminal: a stage started as its own background process
(core.train.worker, or MLX's launcher of its ranks), reading one snapshot of the settings.

Over SSH a dropped connection kills the terminal and what runs in it. A detached stage runs in a
new session (no controlling terminal), logs to runs/<run>/<stage>/detached.log, and obeys the
commands `acm runs pause|resume|stop|save` leave in its control file (or SIGTERM: stop with a
checkpoint). A later acm-tui finds it through its status file and attaches to metrics.jsonl.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from core import config, runs
from core.atomic import check_appendable, open_appending
from core.errors import signals_deferred
from core.locks import held_alone
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
    lock = run.parent / f".{run.name}.launch.lock"  # beside the run: a failed launch leaves its folder no run
    with held_alone(lock, f"run {run.name} is being launched by another acm: wait for it"):
        who = holder(run)
        if who is None and runs.stage_state(run, stage) == "starting":  # launched a moment ago, not yet locked
            who = runs.read_status(run, stage)
        if who is not None:
            raise busy(run, who)
        return _launch(cfg, snapshot.Launch(stage, run.name, resume, steps, max_steps), run, argv,
                       Path(config_path).resolve().parent)


def _launch(cfg: config.Config, launch: snapshot.Launch, run: Path, argv: list[str], cwd: Path) -> int:
    """The background process started and its status written with Ctrl-C and SIGTERM deferred, so
    that one comes after both or neither; one that came meanwhile ends the process it started (a
    launch cut short leaves nothing training that no one was told of)."""
    proc = None
    try:
        with signals_deferred():
            log_path = Paths.detached_log(run, launch.stage)
            check_appendable(log_path)  # refused before anything is written
            snapshot.write(cfg, launch, run)
            with open_appending(log_path) as log:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=str(cwd), env=launcher_env(SOURCE))
            runs.write_status(run, launch.stage, "starting", pid=proc.pid)
        pid = proc.pid
    except BaseException:
        if proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            Paths.status(run, launch.stage).unlink(missing_ok=True)  # never started: as before the launch
        raise
    return pid
