"""Which run a training stage trains in, and whether it resumes: one rule for the command line,
the pipeline and the Train pane, in this order:

    named      a run the user named (--run): that run, resumed when asked (--resume); a new one
               only under a name core.paths.check_run_name allows
    resume     resume asked: the newest run with a checkpoint of the stage; with no stage given
               (the Train pane's R), the newest run whose most recent stage has a checkpoint
    unfinished (the pipeline's choice) the newest run, the one the pipeline follows, resumes where the
               stage stopped or was interrupted short of its planned steps (an older run's never)
    new        otherwise: pretrain starts a new run, fine-tuning starts in the newest run with a
               pretrain checkpoint

Each front end words "there is no such run" its own way (NoRun carries the plain fact).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core import runs
from core.config import Config
from core.errors import AcmError
from core.paths import Paths
from core.runs import checkpoint


class NoRun(AcmError):
    """No run holds the checkpoints the stage starts from."""


@dataclass(frozen=True)
class Target:
    run: Path
    stage: str
    resume: bool


def training_target(cfg: Config, stage: str | None = None, run: str | None = None, resume: bool = False,
                    unfinished: bool = False) -> Target:
    """Where `stage` trains (the rule above); `stage` may be None only to resume."""
    if stage is None and (run is not None or not resume):
        raise ValueError("a stage is needed but to resume the newest run")
    if run is not None:
        return Target(runs.run_to_train(cfg, run), stage, resume)
    if resume:
        return _newest_checkpointed(cfg, stage)
    if unfinished:
        found = _unfinished(cfg, stage)
        if found is not None:
            return found
    return _new(cfg, stage)


def _newest_checkpointed(cfg: Config, stage: str | None) -> Target:
    if stage is not None:
        found = runs.latest_run_with(cfg, stage)
        if found is None:
            raise NoRun(f"no run with {stage} checkpoints in {cfg.locations.runs}")
        return Target(found, stage, True)
    for run in runs.list_runs(cfg):
        active = runs.active_stage(run)
        if active and checkpoint.latest(Paths.checkpoints(run, active)) is not None:
            return Target(run, active, True)
    raise NoRun(f"no run in {cfg.locations.runs} has a checkpoint to resume")


def _unfinished(cfg: Config, stage: str) -> Target | None:
    started = runs.newest_run(cfg)
    if started is None or runs.stage_state(started, stage) not in ("stopped", "interrupted"):
        return None
    last = checkpoint.latest(Paths.checkpoints(started, stage))
    if last is None:
        return None
    planned = last.state.get("planned_steps")  # what a resume trains to (`--steps 5000` stopped early)
    total = planned if runs.is_count(planned) else getattr(cfg.train, stage).steps
    return Target(started, stage, True) if last.step < total else None


def _new(cfg: Config, stage: str) -> Target:
    if stage == "pretrain":
        return Target(cfg.locations.run(runs.new_run_name(cfg)), stage, False)
    base = runs.latest_run_with(cfg, "pretrain")
    if base is None:
        raise NoRun(f"no run with pretrain checkpoints in {cfg.locations.runs}: pretrain first")
    return Target(base, stage, False)
