from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acm_tui.app import AcmApp
from core import cli, config, runs
from core.errors import AcmError
from core.paths import Paths
from core.runs import checkpoint
from core.train.detach import launch_detached
from tests.helpers import ROOT, catches_sigterm, text_of, wait_until


def wait_for(predicate, timeout=90.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def reap_background_runs(tmp_path):
    """Whatever a failing test left training in the background is ended with it."""
    yield
    for status in tmp_path.rglob("status.json"):
        try:
            os.kill(json.loads(status.read_text())["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


def long_config(project):
    cfg = config.load(project / "acm.toml")
    cfg.train.pretrain.steps = 100000
    config.save(cfg, project / "acm.toml")
    return cfg


def test_detached_stage_obeys_commands_and_signals(prepared, capsys):
    cfg = long_config(prepared)
    c = str(prepared / "acm.toml")
    assert cli.main(["-c", c, "train", "pretrain", "--run", "bg", "--detach"]) == 0
    assert "runs in the background" in capsys.readouterr().out
    run = cfg.runs_dir / "bg"
    wait_for(lambda: (runs.read_status(run, "pretrain") or {}).get("step", 0) >= 3)
    assert runs.stage_state(run, "pretrain") == "running"
    assert cli.main(["-c", c, "runs", "pause", "bg"]) == 0
    wait_for(lambda: runs.stage_state(run, "pretrain") == "paused")
    assert cli.main(["-c", c, "runs", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out.split("\n", 1)[1])}
    assert listed["bg"]["stages"]["pretrain"]["state"] == "paused"
    assert cli.main(["-c", c, "runs", "save", "bg"]) == 0
    assert cli.main(["-c", c, "runs", "resume", "bg"]) == 0
    wait_for(lambda: checkpoint.latest(Paths.checkpoints(run, "pretrain")) is not None)
    pid = runs.read_status(run, "pretrain")["pid"]
    os.kill(pid, signal.SIGTERM)  # a polite kill: stop with a checkpoint
    wait_for(lambda: runs.stage_state(run, "pretrain") == "stopped")
    last = checkpoint.latest(Paths.checkpoints(run, "pretrain"))
    assert last.step == runs.read_status(run, "pretrain")["step"]
    assert cli.main(["-c", c, "runs", "stop", "bg"]) == 2
    assert "is stopped: nothing to stop" in capsys.readouterr().err


def test_a_stop_sent_as_a_background_stage_starts_waits_until_it_can_take_it(prepared, capsys):
    """`acm runs stop` at once after `--detach`, while the stage's process still starts: the stop
    waits for it, and the stage ends stopped."""
    cfg = long_config(prepared)
    c = str(prepared / "acm.toml")
    assert cli.main(["-c", c, "train", "pretrain", "--run", "bg", "--detach"]) == 0
    assert runs.stage_state(cfg.runs_dir / "bg", "pretrain") == "starting"
    assert cli.main(["-c", c, "runs", "stop", "bg"]) == 0
    assert "stop sent to pretrain of run bg" in capsys.readouterr().out
    wait_for(lambda: runs.stage_state(cfg.runs_dir / "bg", "pretrain") == "stopped")


def test_a_ctrl_c_as_a_background_stage_is_launched_leaves_nothing_training(prepared, monkeypatch):
    """Ctrl-C landing as the launch writes the stage's status: the status is written whole, then
    the process it started is ended, and the stage reads as never started (no pid was said, so
    nothing may train unseen)."""
    import core.train.detach as detach

    cfg = long_config(prepared)
    run, started = cfg.runs_dir / "cut", []
    real = detach.runs.write_status

    def then_ctrl_c(run_, stage, state, **fields):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, as the status is written: taken once it is
        real(run_, stage, state, **fields)
        started.append(fields["pid"])
    monkeypatch.setattr(detach.runs, "write_status", then_ctrl_c)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as a command's main thread takes it
    try:
        with pytest.raises(KeyboardInterrupt):
            launch_detached(prepared / "acm.toml", "pretrain", run)
    finally:
        signal.signal(signal.SIGINT, before)
    with pytest.raises(ProcessLookupError):
        os.kill(started[0], 0)
    assert runs.stage_state(run, "pretrain") == "not started"


def test_a_launch_beside_another_launch_of_the_run_is_refused(prepared):
    from core.locks import Flock

    cfg = long_config(prepared)
    other = Flock(cfg.runs_dir / ".two.launch.lock")
    assert other.try_acquire()
    with other, pytest.raises(AcmError, match="run two is being launched by another acm: wait for it"):
        launch_detached(prepared / "acm.toml", "pretrain", cfg.runs_dir / "two")
    assert not (cfg.runs_dir / "two").exists()


def test_killed_process_reads_as_interrupted_and_runs_can_be_renamed_and_deleted(prepared, capsys):
    cfg = long_config(prepared)
    run = cfg.runs_dir / "k"
    pid = launch_detached(prepared / "acm.toml", "pretrain", run)
    wait_for(lambda: checkpoint.latest(Paths.checkpoints(run, "pretrain")) is not None
             or (runs.read_status(run, "pretrain") or {}).get("step", 0) >= 2)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert runs.stage_state(run, "pretrain") == "interrupted"
    c = str(prepared / "acm.toml")
    assert cli.main(["-c", c, "runs", "delete", "k"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert cli.main(["-c", c, "runs", "rename", "k", "k2"]) == 0
    assert (cfg.runs_dir / "k2").exists() and not run.exists()
    assert cli.main(["-c", c, "runs", "delete", "k2", "--yes"]) == 0
    assert not (cfg.runs_dir / "k2").exists()


async def test_a_new_tui_attaches_to_a_background_run(prepared):
    cfg = long_config(prepared)
    run = cfg.runs_dir / "bg"
    launch_detached(prepared / "acm.toml", "pretrain", run)
    wait_for(lambda: (runs.read_status(run, "pretrain") or {}).get("step", 0) >= 2)
    app = AcmApp(prepared / "acm.toml")
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("4")
        pane = app.query_one("#train-pane")
        assert pane.attached == run and pane.stage == "pretrain"
        seen = len(pane.history)
        await wait_until(pilot, lambda: len(pane.history) > seen + 2, timeout=60)  # live from metrics.jsonl
        await pilot.press("space")
        await wait_until(pilot, lambda: pane.state == "paused", timeout=30)
        await pilot.press("s")
        await wait_until(pilot, lambda: pane.state == "stopped", timeout=30)
    assert checkpoint.latest(Paths.checkpoints(run, "pretrain")) is not None


def test_a_second_writer_is_refused_and_a_killed_one_blocks_nobody(prepared, capsys):
    cfg = long_config(prepared)
    cfg.train.pretrain.save_every = 2
    config.save(cfg, prepared / "acm.toml")
    c = str(prepared / "acm.toml")
    run = cfg.runs_dir / "dup"
    assert cli.main(["-c", c, "train", "pretrain", "--run", "dup", "--detach"]) == 0
    assert cli.main(["-c", c, "train", "pretrain", "--run", "dup", "--detach"]) == 2  # launched a moment ago
    wait_for(lambda: (runs.read_status(run, "pretrain") or {}).get("step", 0) >= 2)
    pid = runs.read_status(run, "pretrain")["pid"]
    capsys.readouterr()
    for argv in (["--resume"], ["--resume", "--detach"]):
        assert cli.main(["-c", c, "train", "pretrain", "--run", "dup", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("acm: error: run dup is being written by pid ")
        assert f"pid {pid} " in err[0]
    assert runs.read_status(run, "pretrain")["pid"] == pid  # the refused writers touched nothing
    wait_for(lambda: checkpoint.latest(Paths.checkpoints(run, "pretrain")) is not None)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # our child: reaped, so it reads as dead
    assert runs.stage_state(run, "pretrain") == "interrupted"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    resumed = subprocess.run([sys.executable, "-m", "core.cli", "-c", c, "train", "pretrain", "--run", "dup",
                              "--resume", "--max-steps", "1", "--json"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr


def test_inputs_of_a_running_stage_are_never_rebuilt(prepared, capsys):
    cfg = long_config(prepared)
    c = str(prepared / "acm.toml")
    manifest = (cfg.data_dir / "tokens" / "language" / "manifest.json").read_text()
    tokenizer = (cfg.data_dir / "tokenizer" / "tokenizer.json").read_text()
    assert cli.main(["-c", c, "train", "pretrain", "--run", "busy", "--detach"]) == 0
    run = cfg.runs_dir / "busy"
    wait_for(lambda: (runs.read_status(run, "pretrain") or {}).get("step", 0) >= 2)
    capsys.readouterr()
    for argv in (["prepare", "--force"], ["tokenizer", "train"]):
        assert cli.main(["-c", c, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "can't be rebuilt now: a training stage" in err[0]
    assert (cfg.data_dir / "tokens" / "language" / "manifest.json").read_text() == manifest
    assert (cfg.data_dir / "tokenizer" / "tokenizer.json").read_text() == tokenizer
    assert cli.main(["-c", c, "runs", "stop", "busy"]) == 0
    wait_for(lambda: runs.stage_state(run, "pretrain") == "stopped")


def test_a_stage_that_cannot_start_leaves_no_run_behind(prepared, capsys):
    import shutil

    cfg = config.load(prepared / "acm.toml")
    shutil.rmtree(cfg.data_dir / "tokens")
    c = str(prepared / "acm.toml")
    for argv in (["--run", "never"], ["--run", "never", "--detach"]):
        assert cli.main(["-c", c, "train", "pretrain", *argv]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "run `acm prepare` first" in err[0]
        assert not (cfg.runs_dir / "never").exists()


async def test_the_train_pane_starts_ranks_in_the_background_and_shows_them(prepared):
    """With train.ranks = 2 the pane launches the stage on two ranks (ring backend here, NCCL on
    NVIDIA GPUs), attaches to rank 0's files, shows the total throughput over the ranks, and stops
    them all with space and s (each rank pauses and stops at the same step; rank 0 writes the
    checkpoint)."""
    cfg = long_config(prepared)
    cfg.train.ranks = 2
    cfg.train.pretrain.batch_size = 2
    config.save(cfg, prepared / "acm.toml")
    app = AcmApp(prepared / "acm.toml")
    async with app.run_test(size=(140, 50)) as pilot:
        await pilot.press("4", "p")
        pane = app.query_one("#train-pane")
        await wait_until(pilot, lambda: len(pane.history) >= 2, timeout=90)
        assert pane.control is None  # not this process: the ranks are
        status = lambda: " ".join(text_of(app, "#train-status").split())  # noqa: E731
        await wait_until(pilot, lambda: "tok/s in total over 2 ranks" in status())
        await pilot.press("space")  # every rank pauses at the same step, and goes on together
        await wait_until(pilot, lambda: pane.state == "paused", timeout=60)
        await pilot.press("space")
        await wait_until(pilot, lambda: pane.state == "running", timeout=60)
        await pilot.press("s")
        await wait_until(pilot, lambda: pane.state == "stopped", timeout=60)
    run = pane.attached
    last = checkpoint.latest(Paths.checkpoints(run, "pretrain"))
    assert last is not None and last.state["ranks"] == 2 and last.state["global_batch"] == 4
    assert "2 ranks of 2 sequences" in Paths.detached_log(run, "pretrain").read_text()


@pytest.mark.parametrize("when", [
    pytest.param("starting", marks=pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="no /proc")),
    "training"])
def test_a_polite_kill_of_a_background_stage_on_two_ranks_stops_it_with_a_checkpoint(prepared, capsys, when):
    """`kill -TERM PID`, the pid `--detach` printed (the ranks' launcher), as the README says: the
    ranks stop at their next step with a checkpoint (none before the first), then the launcher
    ends; sent while they are still starting, the stop waits until they can take it."""
    cfg = long_config(prepared)
    c = str(prepared / "acm.toml")
    assert cli.main(["-c", c, "train", "pretrain", "--run", "bg", "--ranks", "2", "--detach"]) == 0
    pid = int(capsys.readouterr().out.split("(pid ", 1)[1].split(")", 1)[0])
    run = cfg.runs_dir / "bg"
    try:
        if when == "training":
            wait_for(lambda: (runs.read_status(run, "pretrain") or {}).get("step", 0) >= 3)
        else:  # once the launcher's Python has set its handler (before that, the system's default kills it)
            wait_for(lambda: catches_sigterm(pid))
        os.kill(pid, signal.SIGTERM)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    status = runs.read_status(run, "pretrain")
    last = checkpoint.latest(Paths.checkpoints(run, "pretrain"))
    assert status["state"] == "stopped" and (last.step if last else 0) == status["step"]
