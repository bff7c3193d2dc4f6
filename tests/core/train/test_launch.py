"""Which run a stage trains in (one rule for every front end), and the processes acm starts to
train: core.train.worker reading one snapshot, never the command line."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import mlx.core as mx
import pytest

from core import config, runs
from core.errors import AcmError
from core.paths import Paths
from core.runs import checkpoint
from core.train import snapshot
from core.train.detach import launch_detached
from core.train.ranks import launcher_argv, train_on_ranks
from core.train.snapshot import Launch
from core.train.target import NoRun, Target, training_target
from tests.helpers import eventually, process_gone


def make_run(cfg: config.Config, name: str, age_s: float, **checkpoints: int) -> Path:
    """A run folder `age_s` seconds old with one checkpoint at the given step of each stage named."""
    run = cfg.locations.run(name)
    runs.prepare_run(cfg, run)
    for stage, step in checkpoints.items():
        checkpoint.save(Paths.checkpoints(run, stage), step, {"w": mx.zeros(1)}, {}, {})
    stamp = time.time() - age_s
    os.utime(Paths.run_config(run), (stamp, stamp))  # when its stage started: what "newest" goes by
    return run


@pytest.fixture
def cfg(project) -> config.Config:
    return config.load(project / "acm.toml")


def test_pretrain_starts_a_new_run_and_finetune_the_newest_pretrained_one(cfg):
    new = training_target(cfg, "pretrain")
    assert new.run.parent == cfg.locations.runs and new.run.name.startswith("nano-") and not new.run.exists()
    assert (new.stage, new.resume) == ("pretrain", False)
    with pytest.raises(NoRun):
        training_target(cfg, "finetune")
    make_run(cfg, "older", 60, pretrain=5)
    newer = make_run(cfg, "newer", 10, pretrain=5)
    make_run(cfg, "empty", 0)
    assert training_target(cfg, "finetune") == Target(newer, "finetune", False)


def test_a_named_run_is_taken_as_named_and_resumed_as_asked(cfg):
    assert training_target(cfg, "finetune", "mine") == Target(cfg.locations.run("mine"), "finetune", False)
    assert training_target(cfg, "pretrain", "mine", resume=True).resume is True


def test_resume_takes_the_newest_run_with_the_stages_checkpoints(cfg):
    with pytest.raises(NoRun):
        training_target(cfg, "pretrain", resume=True)
    pretrained = make_run(cfg, "a", 60, pretrain=5)
    make_run(cfg, "b", 30, finetune=3, pretrain=5)
    assert training_target(cfg, "pretrain", resume=True).run.name == "b"
    os.utime(Paths.run_config(pretrained))  # a stage started there again: now the newest
    assert training_target(cfg, "pretrain", resume=True) == Target(pretrained, "pretrain", True)
    assert training_target(cfg, "finetune", resume=True).run.name == "b"


def test_evaluating_or_exporting_an_older_run_leaves_the_newest_the_newest(cfg):
    older = make_run(cfg, "older", 60, pretrain=5)
    newer = make_run(cfg, "newer", 10, pretrain=5, finetune=3)
    (older / "eval.json").write_text("{}")  # what `acm eval --run older` writes: the folder changes
    (older / "exports").mkdir()
    assert runs.list_runs(cfg) == [newer, older]
    assert training_target(cfg, "finetune").run == newer


def test_resume_without_a_stage_takes_the_newest_runs_latest_stage_with_a_checkpoint(cfg):
    with pytest.raises(NoRun, match="no run .* has a checkpoint to resume"):
        training_target(cfg, resume=True)
    make_run(cfg, "old", 90, pretrain=5)
    both = make_run(cfg, "both", 60, pretrain=5, finetune=2)
    assert training_target(cfg, resume=True) == Target(both, "finetune", True)
    begun = make_run(cfg, "begun", 0, pretrain=5)
    runs.write_status(begun, "finetune", "failed")  # fine-tuning began, no checkpoint of it yet
    assert training_target(cfg, resume=True) == Target(both, "finetune", True)


def test_the_pipeline_continues_a_stage_left_short_of_its_plan(cfg):
    plan = cfg.train.pretrain.steps
    short = make_run(cfg, "short", 10, pretrain=plan - 1)
    runs.write_status(short, "pretrain", "stopped", step=plan - 1)
    assert training_target(cfg, "pretrain", unfinished=True) == Target(short, "pretrain", True)
    assert training_target(cfg, "pretrain").run != short  # only the pipeline continues it unasked
    runs.write_status(short, "pretrain", "failed")
    assert training_target(cfg, "pretrain", unfinished=True).resume is False
    done = make_run(cfg, "done", 0, pretrain=plan)
    runs.write_status(done, "pretrain", "stopped", step=plan)
    target = training_target(cfg, "pretrain", unfinished=True)
    assert target.resume is False and target.run not in (short, done)
    assert training_target(cfg, "finetune", unfinished=True) == Target(done, "finetune", False)


def test_the_pipeline_resumes_only_the_newest_runs_stage(cfg):
    """The run the pipeline shows is the run it trains: an older run's stage left short stays as it is."""
    plan = cfg.train.finetune.steps
    old = make_run(cfg, "old", 60, pretrain=5, finetune=plan - 1)
    runs.write_status(old, "finetune", "stopped", step=plan - 1)
    assert training_target(cfg, "finetune", unfinished=True) == Target(old, "finetune", True)
    new = make_run(cfg, "new", 0, pretrain=5)
    assert training_target(cfg, "finetune", unfinished=True) == Target(new, "finetune", False)
    runs.write_status(old, "pretrain", "stopped", step=4)  # short of its plan, but not the newest run's
    runs.write_status(new, "pretrain", "failed")
    os.utime(Paths.run_config(new))
    target = training_target(cfg, "pretrain", unfinished=True)
    assert target.resume is False and target.run not in (old, new)


# ---------------------------------------------------------------- the snapshot a worker reads

def test_a_snapshot_holds_the_settings_in_memory_and_the_launch(cfg, project):
    cfg.train.pretrain.steps, cfg.train.pretrain.time = 123, "5m"  # changed in memory, not saved
    run = cfg.locations.run("snap")
    for launch in (Launch("pretrain", "snap"), Launch("pretrain", "snap", True, steps=200, max_steps=4)):
        path = snapshot.write(cfg, launch, run)
        assert path == run / "pretrain" / "launch.toml"
        back, read = snapshot.read(path)
        assert read == launch
        assert back.to_dict() | {"paths": {}} == cfg.to_dict() | {"paths": {}}
        assert back.locations == cfg.locations and back.paths == cfg.paths  # found, and written, as the starter's
    assert config.load(project / "acm.toml").train.pretrain.steps != 123


def test_a_damaged_snapshot_is_one_line(cfg):
    path = snapshot.write(cfg, Launch("pretrain", "x"), cfg.locations.run("x"))
    text = path.read_text()
    path.write_text(text.replace('stage = "pretrain"', 'stage = 3'))
    with pytest.raises(AcmError, match="launch snapshot .* is damaged"):
        snapshot.read(path)
    path.write_text(text.replace("[launch]", "[launched]"))
    with pytest.raises(AcmError, match="is damaged"):
        snapshot.read(path)


# ---------------------------------------------------------------- what acm starts

def test_the_launcher_starts_the_worker(project):
    command = snapshot.command(Path("runs/r/pretrain/launch.toml"))
    if not mx.cuda.is_available() or mx.device_count(mx.gpu) >= 2:
        argv = launcher_argv(2, command)
        assert argv[argv.index("--") + 1:] == [sys.executable, "-m", "core.train.worker", "runs/r/pretrain/launch.toml"]
        assert "core.cli" not in argv


@pytest.mark.skipif(mx.cuda.is_available(), reason="two ranks of the ring backend on this host")
def test_ranks_run_the_worker_whose_refusal_is_the_callers(cfg):
    run, argv = cfg.locations.run("w"), []
    with pytest.raises(AcmError, match="^unknown stage 'lecture'"):
        train_on_ranks(cfg, "lecture", run, False, None, None, 2, started=lambda proc: argv.extend(proc.args))
    assert argv[argv.index("--") + 1:] == [sys.executable, "-m", "core.train.worker",
                                           str(snapshot.location(run, "lecture"))]
    assert not run.exists()  # refused: the snapshot and the log taken back


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads the process's argv from Linux's /proc")
def test_a_detached_stage_runs_the_worker_on_its_snapshot_alone(prepared):
    run = prepared / "runs" / "bg"
    pid = launch_detached(prepared / "acm.toml", "pretrain", run, steps=7, max_steps=3)
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        (prepared / "acm.toml").unlink()  # the worker never reads it
        assert argv[1:4] == ["-m", "core.train.worker", str(snapshot.location(run, "pretrain"))]
        deadline = time.monotonic() + 120
        while runs.stage_state(run, "pretrain") not in ("stopped", "failed"):
            assert time.monotonic() < deadline, Paths.detached_log(run, "pretrain").read_text()
            time.sleep(0.1)
        # its last lines are written as it ends, after its state (another thread prints them)
        assert eventually(lambda: process_gone(pid)), "the stage said it stopped, and its process did not end"
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    status = runs.read_status(run, "pretrain")
    assert (status["state"], status["step"], status["total"]) == ("stopped", 3, 7)
    lines = Paths.detached_log(run, "pretrain").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert {"metrics", "state", "checkpoint"} <= {e["type"] for e in events}
    assert snapshot.read(snapshot.location(run, "pretrain"))[1] == Launch("pretrain", "bg", False, 7, 3)
    # its folders as acm.toml wrote them, as a run trained in the foreground records them (they compare alike)
    assert config.read_table(Paths.run_config(run))["paths"] == {"data": "data", "runs": "runs"}
