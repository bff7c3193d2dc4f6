from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core import cli, config, runs
from core.engine import Engine
from core.errors import AcmError
from core.paths import Paths
from core.runs import checkpoint, read_metrics
from core.train.schedule import lr_at
from core.train.trainer import Control, Trainer, TrainingError, train_stage
from tests.helpers import (
    ROOT,
    SteppingClock,
    catches_sigterm,
    edit_state,
    losses,
    ports_taken,
    proc_stat,
    sigint_at_default,
)


def load(project: Path) -> config.Config:
    return config.load(project / "acm.toml")


def test_schedule_warmup_then_cosine():
    assert lr_at(0, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 100, 0.1) == pytest.approx(1.0)
    middle = 10 + 89 / 2  # halfway through the decay
    assert lr_at(middle, 1.0, 10, 100, 0.1) == pytest.approx(0.55)
    decay = [lr_at(s, 1.0, 10, 100, 0.1) for s in range(10, 100)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert lr_at(99, 1.0, 10, 100, 0.1) == pytest.approx(0.1)  # the last step is at the floor
    assert lr_at(100, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(500, 1.0, 10, 100, 0.1) == pytest.approx(0.1)


def test_pretrain_loss_falls_and_writes_the_run(prepared, lone_group_asks):
    cfg = load(prepared)
    run = cfg.runs_dir / "r"
    before = set(threading.enumerate())
    result = train_stage(cfg, "pretrain", run)
    assert lone_group_asks == [{"backend": "ring"}]  # alone: a group of one, MLX's backends not tried in turn
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("acm-batches")]  # ended with it
    ls = losses(run)
    assert len(ls) == 40 and sum(ls[-5:]) / 5 < sum(ls[:5]) / 5 - 0.5
    evals = [e for e in read_metrics(run, "pretrain") if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [10, 20, 30, 40] and evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert (run / "config.toml").exists() and (run / "pretrain" / "train.log").exists()
    kept = [c.step for c in checkpoint.list_checkpoints(Paths.checkpoints(run, "pretrain"))]
    best = checkpoint.best(Paths.checkpoints(run, "pretrain"))
    assert set(kept) == {30, 40} | {best.step}  # last 2 and the best
    assert result.step == 40 and result.best_val_loss == min(e["val_loss"] for e in evals)
    m = read_metrics(run, "pretrain")[0]
    assert {"lr", "tokens_per_s", "memory_active", "memory_peak", "memory_limit", "epoch", "eta_s", "mfu"} <= set(m)


def test_resume_continues_exactly(prepared):
    cfg = load(prepared)
    train_stage(cfg, "pretrain", cfg.runs_dir / "straight", max_steps=16)
    train_stage(cfg, "pretrain", cfg.runs_dir / "halves", max_steps=8)
    train_stage(cfg, "pretrain", cfg.runs_dir / "halves", resume=True, max_steps=8)
    straight, halves = losses(cfg.runs_dir / "straight"), losses(cfg.runs_dir / "halves")
    assert len(straight) == len(halves) == 16
    assert halves == pytest.approx(straight, rel=1e-5, abs=1e-6)


def test_pause_stop_and_save_now_keep_state(prepared):
    cfg = load(prepared)
    cfg.train.pretrain.steps = 400
    run = cfg.runs_dir / "p"
    control, states, steps = Control(), [], []
    paused = threading.Event()

    def emit(e):
        if e.type == "metrics":
            steps.append(e.step)
            if e.step == 3:
                control.pause()
        if e.type == "state":
            states.append(e.state)
            if e.state == "paused":
                paused.set()

    engine = Engine()
    fut = engine.submit(train_stage, cfg, "pretrain", run, emit, control)
    assert paused.wait(60)
    at_pause = steps[-1]
    time.sleep(0.3)
    assert steps[-1] == at_pause == 4  # the step queued before the pause finishes; then nothing runs
    control.save_now()
    control.resume()
    while steps[-1] < 6:
        time.sleep(0.01)
    control.stop()
    result = fut.result(60)
    engine.shutdown()
    assert result.stopped_early and states[-1] == "stopped"
    cks = [c.step for c in checkpoint.list_checkpoints(Paths.checkpoints(run, "pretrain"))]
    assert cks[0] == 5 and cks[-1] == result.step  # save-now after resuming, and at stop
    again = train_stage(cfg, "pretrain", run, resume=True, max_steps=2)
    assert again.step == result.step + 2


def test_kill_9_leaves_a_loadable_checkpoint(prepared):
    cfg = load(prepared)
    cfg.train.pretrain.steps, cfg.train.pretrain.save_every, cfg.train.pretrain.keep_last = 100000, 1, 3
    config.save(cfg, prepared / "acm.toml")
    folder = Paths.checkpoints(cfg.runs_dir / "k", "pretrain")
    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "-c", str(prepared / "acm.toml"), "train",
                             "pretrain", "--run", "k", "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(checkpoint.list_checkpoints(folder)) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.013)  # land somewhere inside the save cycle
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    latest = checkpoint.latest(folder)
    params, opt = checkpoint.load_weights(latest), checkpoint.load_optimizer(latest)
    assert params and opt
    result = train_stage(load(prepared), "pretrain", cfg.runs_dir / "k", resume=True, max_steps=1)
    assert result.step == latest.step + 1


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux's /proc), as a service manager's group of a unit holds them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        if fields := proc_stat(stat.parent.name):
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _signal_once_training(proc: subprocess.Popen, lines: queue.SimpleQueue, said: list[str], sig: int,
                          times: int, everyone: bool, wait_for: str) -> None:
    """Read the command's lines until one matches `wait_for`, then send `sig` `times` times, to the
    command alone or (`everyone`) to it and every process below it, as a service manager does."""
    while (line := lines.get(timeout=120)) and not re.search(wait_for, line):
        said.append(line)
    assert line, "".join(said)
    for _ in range(times):
        for pid in [proc.pid, *(_descendants(proc.pid) if everyone else [])]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.01)


STEP_LINE = r"step +\d+.*loss"  # the loop reports a step: a signal then lands in training, not in the setup


def _signalled_while_training(project: Path, command: list[str], sig: int, times: int,
                              everyone: bool = False, batch_size: int | None = None) -> tuple[int, str]:
    """`acm COMMAND` on a pretrain of 100,000 steps (of `batch_size` rows), sent `sig` `times` times
    once it reports a step (`_signal_once_training`): its exit status and all it said."""
    cfg = load(project)
    cfg.train.pretrain.steps = 100000
    cfg.train.pretrain.batch_size = batch_size or cfg.train.pretrain.batch_size
    config.save(cfg, project / "acm.toml")
    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "-c", str(project / "acm.toml"), *command],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=sigint_at_default)
    said: list[str] = []
    try:
        lines: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=lambda: [*map(lines.put, proc.stdout), lines.put("")], daemon=True).start()
        _signal_once_training(proc, lines, said, sig, times, everyone, STEP_LINE)
        status = proc.wait(timeout=120)
        while line := lines.get(timeout=10):
            said.append(line)
    finally:
        proc.kill()
    return status, "".join(said)


@pytest.mark.parametrize("command, sig, status, times, everyone", [
    (["train", "pretrain", "--run", "c"], signal.SIGINT, 130, 1, False),
    (["train", "pretrain", "--run", "c"], signal.SIGTERM, 143, 2, False),
    (["train", "pretrain", "--run", "c", "--ranks", "2"], signal.SIGTERM, 143, 1, False),
    pytest.param(["train", "pretrain", "--run", "c", "--ranks", "2"], signal.SIGTERM, 143, 1, True,
                 marks=pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="no /proc")),
    (["pipeline", "run"], signal.SIGTERM, 143, 1, False),
    (["train", "pretrain", "--run", "c"], signal.SIGHUP, 129, 1, False),  # the pipeline takes it as SIGTERM
])
def test_ctrl_c_or_a_polite_kill_stops_with_a_checkpoint_and_says_how_to_go_on(prepared, command, sig, status,
                                                                              times, everyone):
    """Ctrl-C (130), SIGTERM (143: `kill`, `timeout`, a service manager, which signals every
    process of the unit, ranks too) and a hang-up (129: the SSH connection dropped) stop a stage at
    its next step with a checkpoint, on one rank or two and in the pipeline, and say what continues
    it. A second SIGTERM does not cut that short."""
    ended, said = _signalled_while_training(prepared, command, sig, times, everyone)
    out = " ".join(said.split())  # the console wraps long lines
    assert ended == status, out[-800:]
    run = runs.list_runs(load(prepared))[0]
    last = checkpoint.latest(Paths.checkpoints(run, "pretrain"))
    status_now = runs.read_status(run, "pretrain")
    assert last is not None and status_now["step"] == last.step and status_now["state"] == "stopped", out
    if command[0] == "pipeline":
        assert f"goes on from its checkpoint {last.path.name}; `acm pipeline run` continues" in out
    else:
        assert "stopping at the next step and saving a checkpoint" in out
        assert (f"interrupted: checkpoint of step {last.step} saved; `acm train pretrain --run {run.name} --resume` "
                "continues") in out


def _read_until(proc: subprocess.Popen, terminal: int, said: bytes, pattern: bytes) -> bytes:
    """What the command wrote to its terminal, read until the part after `said` matches `pattern`."""
    import select

    seen, deadline = len(said), time.monotonic() + 120
    while not re.search(pattern, said[seen:]):
        assert time.monotonic() < deadline and proc.poll() is None, said[-2000:]
        if select.select([terminal], [], [], 1)[0]:
            said += os.read(terminal, 65536)
    return said


def _training_on_a_terminal(project: Path, hang_up=signal.SIG_DFL, command: tuple[str, ...] = ("train", "pretrain",
                            "--run", "c"), controlling: bool = False) -> tuple[subprocess.Popen, int, bytes]:
    """`acm train pretrain --run c` (or `command`; 100,000 steps) writing to a pseudo-terminal, started
    with the hang-up's disposition `hang_up` (and the terminal as its session's, `controlling`, as
    over SSH: the kernel then sends the hang-up as the terminal goes), once it reports a step's loss:
    the process, the terminal's other end, what it wrote."""
    import fcntl
    import pty
    import termios

    cfg = load(project)
    cfg.train.pretrain.steps = 100000
    config.save(cfg, project / "acm.toml")
    terminal, its_end = pty.openpty()

    def child() -> None:
        sigint_at_default()
        signal.signal(signal.SIGHUP, hang_up)
        if controlling:  # the new session's controlling terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "-c", str(project / "acm.toml"), *command],
                            stdin=its_end, stdout=its_end, stderr=its_end, start_new_session=True, preexec_fn=child)
    os.close(its_end)
    return proc, terminal, _read_until(proc, terminal, b"", rb"step +(\d+).*loss|loss \d")


def _stopped_with_its_checkpoint(project: Path) -> bool:
    run = runs.list_runs(load(project))[0]
    last = checkpoint.latest(Paths.checkpoints(run, "pretrain"))
    return last is not None and runs.read_status(run, "pretrain")["step"] == last.step


@pytest.mark.parametrize("command, controlling", [(("train", "pretrain", "--run", "c"), False),
                                                  (("pipeline", "run"), True)])
def test_a_terminal_that_hangs_up_stops_training_with_a_checkpoint(prepared, command, controlling):
    """The SSH connection drops: the terminal hangs up and every write to it fails (EIO), which may
    come before the hang-up's signal. The stage stops at its next step with a checkpoint, as for a
    reader that went (`| head`), and the command ends quietly. `acm pipeline run` on its session's
    terminal: the kernel's hang-up stops the stage and the display's last write, as it closes, fails;
    the stage still stops (it trained on to its end, every later kill taken as the first's repeat)."""
    proc, terminal, _ = _training_on_a_terminal(prepared, command=command, controlling=controlling)
    try:
        os.close(terminal)
        assert proc.wait(timeout=120) == 1
    finally:
        proc.kill()
    assert _stopped_with_its_checkpoint(prepared)


def test_a_hang_up_that_is_ignored_stays_ignored(prepared):
    """`nohup acm train ...` ignores a hang-up: the stage trains on through it (it reports later
    steps); a terminal that goes then still stops it with a checkpoint."""
    proc, terminal, said = _training_on_a_terminal(prepared, hang_up=signal.SIG_IGN)
    try:
        proc.send_signal(signal.SIGHUP)
        said = _read_until(proc, terminal, said, rb"step +\d+.*loss(.|\n)*step +\d+.*loss")
        assert b"stopping" not in said, said[-2000:]
        os.close(terminal)
        assert proc.wait(timeout=120) == 1
    finally:
        proc.kill()
    assert _stopped_with_its_checkpoint(prepared)


@pytest.mark.parametrize("command, last_line", [
    (["train", "pretrain", "--run", "c"], "interrupted: exiting now; the last checkpoint stays loadable"),
    (["pipeline", "run"], "acm: interrupted"),
])
def test_ctrl_c_twice_quits_at_once_with_130(prepared, command, last_line):
    """A second Ctrl-C quits without waiting for the stage's checkpoint: the process ends with 130
    and its line, the stage left running to end with it (before, the interpreter's exit tore MLX
    down under the engine's thread: `terminate called without an active exception`, 2 runs in 3).
    Steps of 64 rows (32 times the tokens of the fixture's) leave the second Ctrl-C time to come before the
    first one's stop, at the next step, is done: with 2 rows the stop, step and checkpoint were
    done first when the test's own process was held up a moment, and the stage ended as for one."""
    ended, said = _signalled_while_training(prepared, command, signal.SIGINT, 2, batch_size=64)
    assert ended == 130 and said.split("\n")[-2].strip() == last_line, said[-600:]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="no /proc")
@pytest.mark.parametrize("everyone", [False, True])
def test_a_polite_kill_while_the_ranks_start_stops_them_once_they_can_take_it(prepared, everyone):
    """SIGTERM (or Ctrl-C) while the ranks are still starting, before their stage can take a command,
    is kept and sent once it can: they stop with a checkpoint instead of training on. Sent to every
    process (a service manager), the ranks keep it while they load, rather than dying of it."""
    cfg = load(prepared)
    cfg.train.pretrain.steps = 100000
    config.save(cfg, prepared / "acm.toml")
    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "-c", str(prepared / "acm.toml"), "train", "pretrain",
                             "--run", "c", "--ranks", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        # the launcher and its two ranks, at their handlers (the system's default before them) and
        # importing: nothing takes a stop yet
        while not (len(below := _descendants(proc.pid)) >= 3 and all(map(catches_sigterm, below))):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.02)
        for pid in [proc.pid, *(_descendants(proc.pid) if everyone else [])]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    status_now = runs.read_status(cfg.runs_dir / "c", "pretrain")
    last = checkpoint.latest(Paths.checkpoints(cfg.runs_dir / "c", "pretrain"))
    assert status_now is not None and status_now["state"] == "stopped", out  # at its next step, or before the first
    assert (last.step if last else 0) == status_now["step"], out


@pytest.mark.parametrize("command", [["train", "pretrain", "--run", "c"], ["train", "pretrain", "--run", "c", "--json"],
                                     ["pipeline", "run"]])
def test_a_reader_that_stops_early_stops_training_with_a_checkpoint(prepared, command):
    """`acm train ... 2>&1 | head`: once the reader has gone the stage stops at its next step with a
    checkpoint and the command ends quietly with status 1 (before: an abort, the run left "running")."""
    cfg = load(prepared)
    cfg.train.pretrain.steps = 100000
    config.save(cfg, prepared / "acm.toml")
    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "-c", str(prepared / "acm.toml"), *command],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # as `head` does: read until the first step, then go
            if "step" in line and ("loss" in line or '"metrics"' in line):
                break
        proc.stdout.close()
        assert proc.wait(timeout=120) == 1
    finally:
        proc.kill()
    run = runs.list_runs(cfg)[0]
    status, last = runs.read_status(run, "pretrain"), checkpoint.latest(Paths.checkpoints(run, "pretrain"))
    assert status["state"] == "stopped" and last is not None and last.step == status["step"]


def test_a_stage_sweeps_the_temp_files_a_killed_stage_of_its_run_left(prepared):
    cfg = load(prepared)
    run = cfg.runs_dir / "k"
    train_stage(cfg, "pretrain", run, max_steps=2)
    left = [run / ".config.toml.k1ll3d00.tmp", Paths.stage(run, "pretrain") / ".tokenizer.json.k1ll3d00.tmp",
            Paths.stage(run, "pretrain") / ".status.json.k1ll3d00.tmp"]
    for tmp in left:
        tmp.write_text("half")
    train_stage(cfg, "pretrain", run, resume=True, max_steps=1)
    assert not any(tmp.exists() for tmp in left)


def test_ctrl_c_says_what_it_kept_and_a_finished_stage_exits_0(tmp_path, capsys):
    """Ctrl-C before the first step saves nothing and says so; one after a resume that saved nothing
    new names the checkpoint a resume goes on from; a stage that reached its end exits 0."""
    from core.cli.train import ended

    run = tmp_path / "runs" / "c d"
    assert ended("pretrain", run, 0, None, True) == 130
    assert capsys.readouterr().err.endswith("interrupted: no checkpoint yet; `acm train pretrain --run 'c d'` "
                                            "continues\n")
    asked = argparse.Namespace(steps=30, time="5m")  # no checkpoint holds the plan: the command gives it again
    assert ended("pretrain", run, 0, None, True, asked) == 130
    assert capsys.readouterr().err.endswith("`acm train pretrain --run 'c d' --steps 30 --time 5m` continues\n")
    assert ended("finetune", run, 12, run / "finetune" / "checkpoints" / "step-0000010", True) == 130
    assert "interrupted: its last checkpoint is step-0000010; `acm train finetune --run 'c d' --resume`" in (
        capsys.readouterr().err)
    assert ended("pretrain", run, 40, run / "pretrain" / "checkpoints" / "step-0000040", False) == 0
    assert capsys.readouterr().err == ""


def test_interrupted_save_keeps_the_previous_checkpoint(prepared, monkeypatch):
    cfg = load(prepared)
    run = cfg.runs_dir / "i"
    train_stage(cfg, "pretrain", run, max_steps=10)
    real = checkpoint.write_safetensors

    def dies(path, blob):
        real(path, checkpoint.Blob(blob.header, blob.chunks[:1]))  # part of the file
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(checkpoint, "write_safetensors", dies)
    with pytest.raises(KeyboardInterrupt):
        train_stage(cfg, "pretrain", run, resume=True, max_steps=10)
    monkeypatch.setattr(checkpoint, "write_safetensors", real)
    folder = Paths.checkpoints(run, "pretrain")
    assert [c.step for c in checkpoint.list_checkpoints(folder)] == [10]
    assert not list(folder.glob(".tmp-step-*"))  # an interrupted save removes what it wrote
    (folder / ".tmp-step-0000015").mkdir()  # what a kill -9 mid-save leaves: swept by the next save
    assert train_stage(cfg, "pretrain", run, resume=True, max_steps=10).step == 20
    assert not list(folder.glob(".tmp-step-*"))


def test_non_finite_loss_stops_with_a_clear_message(prepared):
    cfg = load(prepared)
    train_stage(cfg, "pretrain", cfg.runs_dir / "n", max_steps=4)
    cfg.train.pretrain.learning_rate, cfg.train.pretrain.warmup_steps, cfg.train.pretrain.grad_clip = 1e30, 0, 0.0
    with pytest.raises(TrainingError, match=r"the loss became (nan|inf) at step \d+; the last good checkpoint is "
                                            r"step-0000004"):
        train_stage(cfg, "pretrain", cfg.runs_dir / "n", resume=True)
    folder = Paths.checkpoints(cfg.runs_dir / "n", "pretrain")
    assert checkpoint.latest(folder).step == 4
    checkpoint.load_weights(checkpoint.latest(folder)), checkpoint.load_optimizer(checkpoint.latest(folder))


def test_a_validation_loss_that_is_not_finite_stops_the_stage_before_its_checkpoint(prepared):
    """The step's own loss was finite; its update was not: the check right after it says so, and no
    checkpoint records that loss."""
    cfg = load(prepared)
    train_stage(cfg, "pretrain", cfg.runs_dir / "v", max_steps=4)
    sc = cfg.train.pretrain
    sc.learning_rate, sc.warmup_steps, sc.grad_clip, sc.eval_every, sc.save_every = 1e30, 0, 0.0, 1, 1
    with pytest.raises(TrainingError, match=r"the validation loss became (nan|inf) at step 5; the last good "
                                            r"checkpoint is step-0000004"):
        train_stage(cfg, "pretrain", cfg.runs_dir / "v", resume=True)
    folder = Paths.checkpoints(cfg.runs_dir / "v", "pretrain")
    assert [c.step for c in checkpoint.list_checkpoints(folder)] == [4] and checkpoint.damaged(folder) == []
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000004"]  # nothing half-written beside it


def test_finetune_starts_from_best_pretrain(prepared):
    cfg = load(prepared)
    run = cfg.runs_dir / "f"
    with pytest.raises(AcmError, match=r"run 'f' does not exist in .*: a fine-tune goes on from a run's pretrain"):
        train_stage(cfg, "finetune", run)  # a name with no run behind it: said so, not "pretrain first"
    assert not run.exists()
    cfg.runs_dir.joinpath("f").mkdir(parents=True)
    config.save(cfg, run / "config.toml")  # a run whose pretrain is still to come
    with pytest.raises(AcmError, match="has no pretrain checkpoint to fine-tune"):
        train_stage(cfg, "finetune", run)
    train_stage(cfg, "pretrain", run, max_steps=20)
    result = train_stage(cfg, "finetune", run)
    assert result.step == 10
    log = (run / "finetune" / "train.log").read_text()
    assert "fine-tuning from pretrain step" in log
    assert len(losses(run, "finetune")) == 10


def test_bad_inputs_are_one_line(prepared):
    cfg = load(prepared)
    train_stage(cfg, "pretrain", cfg.runs_dir / "b", max_steps=10)
    with pytest.raises(AcmError, match="already has pretrain checkpoints .* resume it"):
        train_stage(cfg, "pretrain", cfg.runs_dir / "b")
    ck = checkpoint.latest(Paths.checkpoints(cfg.runs_dir / "b", "pretrain"))
    (ck.path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AcmError, match="is damaged"):
        train_stage(cfg, "pretrain", cfg.runs_dir / "b", resume=True)
    import shutil
    shutil.rmtree(cfg.data_dir / "tokens")
    with pytest.raises(AcmError, match="run `acm prepare` first"):
        train_stage(cfg, "pretrain", cfg.runs_dir / "b3")


def test_run_from_another_config_is_refused(prepared):
    cfg = load(prepared)
    run = cfg.runs_dir / "c"
    run.mkdir(parents=True)
    other = config.from_dict({"model": {"preset": "tiny"}, "tokenizer": {"vocab_size": 16000}})
    config.save(other, run / "config.toml")
    with pytest.raises(AcmError, match="run c was made with preset 'tiny'"):
        train_stage(cfg, "pretrain", run)
    assert config.load(run / "config.toml").model.preset == "tiny"  # nothing overwritten


def test_cli_train_and_finetune(prepared, capsys):
    c = str(prepared / "acm.toml")
    assert cli.main(["-c", c, "train", "pretrain", "--run", "x", "--max-steps", "10"]) == 0
    out = capsys.readouterr()
    assert "pretrain stopped at step 10 in run x" in out.out  # --max-steps ends this call, not the stage
    assert cli.main(["-c", c, "train", "finetune", "--json"]) == 0  # picks the latest run with pretrain
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["type"] == "log" and any(e["type"] == "metrics" for e in lines)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_ranks_match_one_process_and_a_resume_on_one_rank_continues_alike(prepared, capsys, optimizer):
    """Data-parallel training (`--ranks 2`: the ring backend, 2 processes on this host) equals one
    process on the combined batch, under either optimizer; resumed on one rank, the run keeps its
    global batch (2 micro-batches of 2), so its next loss is the one-process run's. The ranks meet on
    ports free at their start: MLX's launcher's own (32323 and up) may be another run's."""
    cfg = load(prepared)
    cfg.train.pretrain.optimizer = optimizer
    cfg.train.pretrain.batch_size = 2
    config.save(cfg, prepared / "ranks.toml")
    cfg.train.pretrain.batch_size = 4
    config.save(cfg, prepared / "one.toml")
    with ports_taken(32323, 32324):
        assert cli.main(["-c", str(prepared / "ranks.toml"), "train", "pretrain", "--run", "two", "--max-steps", "6",
                         "--ranks", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "pretrain stopped at step 6 in run two on 2 ranks" in out
    train_stage(config.load(prepared / "one.toml"), "pretrain", cfg.runs_dir / "one", max_steps=7)
    two, one = losses(cfg.runs_dir / "two"), losses(cfg.runs_dir / "one")
    assert len(two) == 6 and len(one) == 7
    assert two == pytest.approx(one[:6], rel=1e-4, abs=1e-5)
    reports = [e for e in read_metrics(cfg.runs_dir / "two", "pretrain") if e["type"] == "metrics"]
    assert {e["ranks"] for e in reports} == {2}
    assert config.load(cfg.runs_dir / "two" / "config.toml").train.pretrain.optimizer == optimizer  # as trained
    assert all([r["rank"] for r in e["devices"]] == [0, 1] and e["devices"][1]["memory_peak"] > 0 for e in reports)
    seen = []
    train_stage(config.load(prepared / "ranks.toml"), "pretrain", cfg.runs_dir / "two", seen.append, resume=True,
              max_steps=1)
    assert losses(cfg.runs_dir / "two")[6] == pytest.approx(one[6], rel=1e-4, abs=1e-5)
    assert any("1 rank(s) x 2 micro-batch(es) of 2 keep the run's 4 sequences a step" in e.text
               for e in seen if e.type == "log")


def test_a_global_batch_is_the_same_rows_however_it_is_spread(prepared):
    from core.tokenizer.shards import open_tokens
    from core.train.batches import Batches
    code = open_tokens(load(prepared), "code", "train")
    whole, _ = Batches(code, 16, 8, seed=2).train(3)
    two_ranks = np.concatenate([Batches(code, 16, 4, seed=2, rank=r, world=2).train(3)[0] for r in range(2)])
    accumulated = Batches(code, 16, 4, seed=2, micro_batches=2)
    micro = np.concatenate([accumulated.train(3, m)[0] for m in range(2)])
    four = Batches(code, 16, 2, seed=2, rank=1, world=2, micro_batches=2)  # chunk = micro x ranks + rank
    assert (two_ranks == whole).all() and (micro == whole).all()
    assert (four.train(3, 1)[0] == whole[6:8]).all() and (four.train(3, 0)[0] == whole[2:4]).all()


def test_a_batch_drawn_ahead_is_the_step_s_own_drawn_on_its_thread(prepared):
    from core.tokenizer.shards import open_tokens
    from core.train.batches import Batches, DrawnAhead
    batches = Batches(open_tokens(load(prepared), "code", "train"), 16, 4, seed=2)
    drawn_on = []

    def draw(step):
        drawn_on.append((step, threading.current_thread().name))
        if step < 0:
            raise AcmError("no such step")
        return batches.train(step)

    before = set(threading.enumerate())
    ahead = DrawnAhead(draw)
    ahead.draw(3)
    x, y = ahead.take(3)
    assert (x == batches.train(3)[0]).all() and (y == batches.train(3)[1]).all()
    assert x.flags.c_contiguous and y.flags.c_contiguous
    assert len(drawn_on) == 1 and drawn_on[0][0] == 3 and drawn_on[0][1].startswith("acm-batches")
    ahead.draw(4)
    x5, _ = ahead.take(5)  # another step than the one drawn ahead: drawn at once, here
    assert (x5 == batches.train(5)[0]).all() and (5, threading.current_thread().name) in drawn_on
    ahead.draw(-1)
    with pytest.raises(AcmError, match="no such step"):  # a draw's error comes out where the batch is taken
        ahead.take(-1)
    ahead.close()
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("acm-batches")]


def test_the_follower_replays_what_the_recorder_wrote(prepared):
    from core.runs.events import StageFollower

    cfg = load(prepared)
    run, seen = cfg.runs_dir / "f", []
    train_stage(cfg, "pretrain", run, seen.append, max_steps=10)
    assert [e.step for e in seen if e.type == "checkpoint"] == [10]
    follower = StageFollower(run, "pretrain")
    replay = follower.poll()
    recorded = [e for e in seen if e.type in ("metrics", "eval")]
    assert len(recorded) == 11 and [e for e in replay if e.type in ("metrics", "eval")] == recorded
    assert [e.state for e in replay if e.type == "state"] == ["stopped"]
    assert any(e.text.startswith("checkpoint step-0000010") for e in replay if e.type == "log")
    assert follower.poll() == []  # nothing new


def test_a_damaged_state_json_says_so_and_names_the_checkpoint_resumed(prepared, capsys):
    cfg = load(prepared)
    run = cfg.runs_dir / "d"
    train_stage(cfg, "pretrain", run, max_steps=20)
    folder = Paths.checkpoints(run, "pretrain")
    (folder / "step-0000020" / "state.json").write_text("{ half a")
    assert cli.main(["-c", str(prepared / "acm.toml"), "train", "pretrain", "--run", "d", "--resume",
                     "--max-steps", "1"]) == 0
    out = " ".join("".join(capsys.readouterr()).split())  # the console wraps long lines
    assert "checkpoint step-0000020 is damaged" in out and "resuming from step-0000010" in out
    assert checkpoint.latest(folder).step == 11


@pytest.mark.parametrize("key, value", [("step", -5), ("step", 30)])
def test_a_state_json_with_a_step_it_cannot_hold_is_damaged_and_passed_over(prepared, capsys, key, value):
    """A negative step or a step other than its folder's: the resume continues from the checkpoint
    before, as from one whose state.json is not JSON."""
    cfg = load(prepared)
    run = cfg.runs_dir / "d"
    train_stage(cfg, "pretrain", run, max_steps=20)
    edit_state(Paths.checkpoints(run, "pretrain") / "step-0000020", key, value)
    assert cli.main(["-c", str(prepared / "acm.toml"), "train", "pretrain", "--run", "d", "--resume",
                     "--max-steps", "1"]) == 0
    out = " ".join("".join(capsys.readouterr()).split())
    assert "checkpoint step-0000020 is damaged" in out and "resumed pretrain from step 10" in out
    assert checkpoint.latest(Paths.checkpoints(run, "pretrain")).step == 11


@pytest.mark.parametrize("key, value", [("config.model.preset", "huge"), ("config.train.pretrain", 5),
                                        ("config.train", [1])])
def test_a_checkpoint_whose_recorded_settings_no_longer_load_still_resumes(prepared, capsys, key, value):
    """A resume trains with acm.toml's settings: what a checkpoint recorded (here a preset no acm has,
    tables that are no tables; a check added to the settings later reads the same) never makes it
    unreadable."""
    cfg = load(prepared)
    run = cfg.runs_dir / "d"
    train_stage(cfg, "pretrain", run, max_steps=20)
    edit_state(Paths.checkpoints(run, "pretrain") / "step-0000020", key, value)
    assert cli.main(["-c", str(prepared / "acm.toml"), "train", "pretrain", "--run", "d", "--resume",
                     "--max-steps", "1"]) == 0
    out = " ".join("".join(capsys.readouterr()).split())
    assert "resumed pretrain from step 20" in out and "damaged" not in out
    assert checkpoint.latest(Paths.checkpoints(run, "pretrain")).step == 21


def test_a_run_trained_with_another_preset_than_acm_tomls_is_said_so_never_called_damaged(prepared, capsys):
    """acm.toml switched to another preset after a run's pretrain: its resume and its fine-tune called
    the good checkpoint damaged ("weights do not fit the model") and said to delete it."""
    cfg, c = load(prepared), str(prepared / "acm.toml")
    train_stage(cfg, "pretrain", cfg.runs_dir / "d", max_steps=10)
    assert cli.main(["-c", c, "config", "set", "model.preset", "micro"]) == 0
    capsys.readouterr()
    for argv in (["pretrain", "--resume"], ["finetune"]):
        assert cli.main(["-c", c, "train", *argv, "--run", "d", "--max-steps", "1"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert err == (f"acm: error: checkpoint {cfg.runs_dir / 'd' / 'pretrain' / 'checkpoints' / 'step-0000010'} "
                       f"was trained with preset nano, and the settings (acm.toml, or the file -c names) now "
                       f"select micro: set model.preset = \"nano\" to go on with this run, or start a new one"), err
    assert cli.main(["-c", c, "config", "set", "model.preset", "nano"]) == 0
    assert cli.main(["-c", c, "train", "pretrain", "--resume", "--run", "d", "--max-steps", "1"]) == 0
    assert checkpoint.latest(Paths.checkpoints(cfg.runs_dir / "d", "pretrain")).step == 11


def test_a_new_run_never_takes_over_a_folder_that_is_no_run(prepared, capsys):
    """`--run notes` on runs/notes holding a user's file trained there, and `acm runs delete notes`
    then deleted the file."""
    cfg, c = load(prepared), str(prepared / "acm.toml")
    (cfg.runs_dir / "notes").mkdir(parents=True)
    (cfg.runs_dir / "notes" / "thesis.txt").write_text("mine")
    for argv in (["train", "pretrain", "--run", "notes", "--max-steps", "1"],
                 ["train", "pretrain", "--run", "notes", "--detach"]):
        assert cli.main(["-c", c, *argv]) == 2
        assert " ".join(capsys.readouterr().err.split()) == (
            f"acm: error: run 'notes': {cfg.runs_dir / 'notes'} is a folder that is no run (no config.toml) and "
            f"holds 'thesis.txt': name another run, or move the folder aside (deleting the run would delete what "
            f"it holds)")
    assert sorted(p.name for p in (cfg.runs_dir / "notes").iterdir()) == ["thesis.txt"]
    (cfg.runs_dir / "empty").mkdir()  # a folder made for a run: taken
    assert cli.main(["-c", c, "train", "pretrain", "--run", "empty", "--max-steps", "1"]) == 0


def test_a_runs_settings_written_before_a_check_was_added_still_resume(prepared, capsys):
    """A run's config.toml is read as acm wrote it: settings a later acm refuses in acm.toml (folders
    that overlap, a check of more than 10000 batches) made the run "unreadable" and its resume fail."""
    import tomlkit

    cfg, c = load(prepared), str(prepared / "acm.toml")
    train_stage(cfg, "pretrain", cfg.runs_dir / "d", max_steps=10)
    saved = Paths.run_config(cfg.runs_dir / "d")
    table = tomlkit.parse(saved.read_text())
    table["paths"]["runs"] = table["paths"]["data"]
    table["train"]["finetune"]["eval_batches"] = 20_000
    saved.write_text(tomlkit.dumps(table))
    with pytest.raises(config.ConfigError):
        config.load(saved)  # as a user's settings: refused
    assert cli.main(["-c", c, "train", "pretrain", "--resume", "--run", "d", "--max-steps", "1"]) == 0
    assert checkpoint.latest(Paths.checkpoints(cfg.runs_dir / "d", "pretrain")).step == 11
    capsys.readouterr()
    assert cli.main(["-c", c, "runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["preset"] == "nano"


def test_a_resume_with_nothing_to_resume_is_refused_not_started_over(prepared, capsys):
    """A resume of a run named wrong, of a stage never trained, or of one whose checkpoints are all
    damaged (a wrong type in state.json too) is one line: it never starts the stage from step 0."""
    cfg, c = load(prepared), str(prepared / "acm.toml")
    run = cfg.runs_dir / "d"
    train_stage(cfg, "pretrain", run, max_steps=10)
    folder = Paths.checkpoints(run, "pretrain")
    resume = ["-c", c, "train", "pretrain", "--resume", "--max-steps", "1", "--run"]
    assert cli.main([*resume, "nosuch"]) == 2
    assert "run 'nosuch' does not exist" in capsys.readouterr().err and not (cfg.runs_dir / "nosuch").exists()
    assert cli.main(["-c", c, "train", "finetune", "--resume", "--run", "d"]) == 2
    assert "run d has no finetune checkpoint to resume: start the stage without --resume" in (
        " ".join(capsys.readouterr().err.split()))
    state = json.loads((folder / "step-0000010" / "state.json").read_text())
    (folder / "step-0000010" / "state.json").write_text(json.dumps(state | {"best_val_loss": "low"}))
    assert cli.main([*resume, "d"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "run d's pretrain has no readable checkpoint to resume: step-0000010 has a missing or damaged" in err
    assert not (folder / "step-0000001").exists() and not list(folder.glob("step-*1"))


def test_a_full_disk_names_the_path_cleans_up_and_marks_the_run_failed(prepared, monkeypatch, capsys):
    import errno

    from core import runs

    cfg = load(prepared)
    run = cfg.runs_dir / "full"
    train_stage(cfg, "pretrain", run, max_steps=10)
    real = checkpoint.write_safetensors

    def full(path, blob, **kw):
        real(path, checkpoint.Blob(blob.header, blob.chunks[:1]))  # part of the file
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(checkpoint, "write_safetensors", full)
    c = str(prepared / "acm.toml")
    assert cli.main(["-c", c, "train", "pretrain", "--run", "full", "--resume", "--max-steps", "10"]) == 2
    out = capsys.readouterr().err
    err = [line for line in out.splitlines() if line.startswith("acm: error:")]  # beside the progress lines
    folder = Paths.checkpoints(run, "pretrain")
    assert "Traceback" not in out
    assert len(err) == 1 and err[0].startswith("acm: error: disk full: could not write checkpoint step-0000020")
    assert str(folder) in err[0] and "step-0000010, is intact" in err[0]
    assert not list(folder.glob(".tmp-step-*"))
    status = runs.read_status(run, "pretrain")
    assert status["state"] == "failed" and "disk full" in status["error"]
    monkeypatch.setattr(checkpoint, "write_safetensors", real)
    assert train_stage(cfg, "pretrain", run, resume=True, max_steps=10).step == 20


def test_windows_at_documents_start_where_a_document_starts(prepared):
    from core.tokenizer.bpe import BOS_ID
    from core.tokenizer.shards import open_tokens
    from core.train.batches import Batches
    cfg = load(prepared)
    code = open_tokens(cfg, "code", "train")
    anywhere = Batches(code, 16, 8, seed=3)
    aligned = Batches(code, 16, 8, seed=3, at_documents=True)
    starts = [x[:, 0] for x, _ in (aligned.train(step) for step in range(20))]
    assert all((s == BOS_ID).all() for s in starts)  # documents are laid out as <BOS> ids <EOS>
    firsts = [x[:, 0] for x, _ in (anywhere.train(step) for step in range(20))]
    assert not all((s == BOS_ID).all() for s in firsts)


def test_replay_draws_its_share_of_rows_from_the_other_corpus(prepared):
    from core.tokenizer.shards import open_tokens
    from core.train.batches import Batches
    cfg = load(prepared)
    code, language = open_tokens(cfg, "code", "train"), open_tokens(cfg, "language", "train")
    plain = Batches(code, 16, 8, seed=1)
    mixed = Batches(code, 16, 8, seed=1, replay=language, replay_share=0.25)
    x_plain, _ = plain.train(5)
    x_mixed, _ = mixed.train(5)
    assert mixed.replayed == 2
    # the stage's own rows are still a pure function of (seed, step); the replayed ones are language
    x_own, _ = Batches(code, 16, 6, seed=1).train(5)
    assert (x_mixed[:6] == x_own).all()
    language_text = set(map(int, np.concatenate(language.arrays)))
    assert all(set(map(int, r)) <= language_text for r in x_mixed[6:])
    assert x_plain.shape == x_mixed.shape == (8, 16)


def test_the_stages_own_corpus_keeps_a_row_of_every_batch_whatever_the_shares(prepared):
    """Each share rounded alone: replay 0.45 and pairs 0.45 of 8 rows took 4 and 4, replay 0.9 of a
    batch of 1 took it whole, and the stage trained on none of its own corpus, silently."""
    from core.tokenizer.shards import open_tokens
    from core.train.batches import Batches
    cfg = load(prepared)
    code, language = open_tokens(cfg, "code", "train"), open_tokens(cfg, "language", "train")
    both = Batches(code, 16, 8, seed=1, replay=language, replay_share=0.45, pairs=code, pairs_share=0.45)
    assert (both.replayed, both.paired) == (4, 3)
    alone = Batches(code, 16, 1, seed=1, replay=language, replay_share=0.9)
    assert alone.replayed == 0 and (alone.train(3)[0] == Batches(code, 16, 1, seed=1).train(3)[0]).all()


def test_a_share_that_rounds_to_no_row_is_said_in_the_log(prepared):
    cfg = load(prepared)
    cfg.train.pretrain.batch_size, cfg.train.pretrain.replay = 1, 0.5
    seen = []
    train_stage(cfg, "pretrain", cfg.runs_dir / "r", seen.append, max_steps=1)
    said = [e.text for e in seen if e.type == "log" and "draws no row" in e.text]
    assert said == ["train.pretrain.replay = 0.5 draws no row of a 1-row batch (the stage's own corpus keeps one): "
                    "raise batch_size or grad_accum for it to count"]


def unlearning_finetune(prepared: Path) -> tuple[config.Config, Path]:
    """A run with a pretrain checkpoint and fine-tuning settings that learn nothing, checked every 2
    steps with a patience of 2."""
    cfg = load(prepared)
    run = cfg.runs_dir / "p"
    train_stage(cfg, "pretrain", run, max_steps=4)
    ft = cfg.train.finetune
    ft.steps, ft.eval_every, ft.save_every, ft.patience, ft.learning_rate, ft.warmup_steps = 40, 2, 100, 2, 0.0, 0
    return cfg, run


def test_patience_stops_early_and_keeps_the_best(prepared):
    cfg, run = unlearning_finetune(prepared)
    result = train_stage(cfg, "finetune", run)  # no learning: no check after the first brings a new best
    assert result.step == 6  # checks at 2 (the best), 4 and 6 (two without a new best)
    assert "early stop at step 6" in (run / "finetune" / "train.log").read_text()
    folder = Paths.checkpoints(run, "finetune")
    assert checkpoint.best(folder) is not None and checkpoint.best(folder).step in (2, 6)
    assert json.loads((run / "finetune" / "status.json").read_text())["state"] == "done"


def test_replay_and_document_starts_train_a_stage(prepared):
    cfg = load(prepared)
    run = cfg.runs_dir / "r"
    train_stage(cfg, "pretrain", run, max_steps=4)
    cfg.train.finetune.replay, cfg.train.finetune.start_at_documents = 0.5, True
    result = train_stage(cfg, "finetune", run, max_steps=4)
    assert result.step == 4 and len(losses(run, "finetune")) == 4


def test_muon_trains_a_stage_and_resumes_exactly(prepared):
    cfg = load(prepared)
    cfg.train.pretrain.optimizer, cfg.train.pretrain.muon_learning_rate = "muon", 0.02
    run = cfg.runs_dir / "m"
    train_stage(cfg, "pretrain", run, max_steps=20)
    ls = losses(run)
    assert sum(ls[-3:]) / 3 < sum(ls[:3]) / 3 - 0.5
    whole = cfg.runs_dir / "whole"
    train_stage(cfg, "pretrain", whole, max_steps=30)
    train_stage(cfg, "pretrain", run, resume=True, max_steps=10)  # momentum came back from the checkpoint
    assert losses(run)[-1] == pytest.approx(losses(whole)[-1], rel=1e-4)
    assert "resumes with" not in Paths.train_log(run, "pretrain").read_text()
    cfg.train.pretrain.optimizer = "adamw"  # acm.toml changed (or its defaults did) between the calls
    train_stage(cfg, "pretrain", run, resume=True, max_steps=1)  # said as it resumes
    assert "this pretrain trained with muon and resumes with adamw" in Paths.train_log(run, "pretrain").read_text()


def test_a_time_budget_fits_the_steps_and_ends_on_the_floor(prepared):
    cfg = load(prepared)
    sc = cfg.train.pretrain
    sc.time, sc.eval_every, sc.save_every, sc.log_every, sc.min_lr_ratio = "20s", 10, 1000, 1, 0.1
    clock = SteppingClock(0.4)  # a coarse tick: the budget holds few steps
    started_at = 10**9  # config.toml's time stamp as its stage starts (the steps not yet timed nor planned)

    def as_it_starts(event):
        if event.type == "state" and event.state == "running":
            os.utime(cfg.runs_dir / "budget" / "config.toml", (started_at, started_at))
    result = train_stage(cfg, "pretrain", cfg.runs_dir / "budget", as_it_starts, clock=clock)
    took = clock.now - 1000.0
    assert 20 / 1.5 <= took <= 20 * 1.5
    log = (cfg.runs_dir / "budget" / "pretrain" / "train.log").read_text()
    assert "time budget 20 s:" in log
    reports = [e for e in read_metrics(cfg.runs_dir / "budget", "pretrain") if e["type"] == "metrics"]
    assert reports[-1]["step"] == result.step == reports[-1]["total"] > 3
    assert reports[-1]["lr"] == pytest.approx(sc.learning_rate * sc.min_lr_ratio, rel=1e-3)
    status = json.loads((cfg.runs_dir / "budget" / "pretrain" / "status.json").read_text())
    assert status["state"] == "done" and status["total"] == result.step
    state = checkpoint.latest(Paths.checkpoints(cfg.runs_dir / "budget", "pretrain")).state
    assert state["planned_steps"] == result.step
    recorded = config.load(cfg.runs_dir / "budget" / "config.toml").train.pretrain  # what it ran, not acm.toml's
    assert (recorded.steps, recorded.warmup_steps, recorded.time) == (result.step, state["planned_warmup"], "20s")
    assert (cfg.runs_dir / "budget" / "config.toml").stat().st_mtime == started_at  # newest goes by when it started


def test_a_plan_config_toml_cannot_record_is_said_and_the_stage_trains_on(prepared):
    cfg = load(prepared)
    sc = cfg.train.pretrain
    sc.time, sc.eval_every, sc.save_every = "20s", 1000, 1000
    run = cfg.runs_dir / "damaged"

    def damage(event):  # by hand, while the steps are timed
        if event.type == "state" and event.state == "running":
            (run / "config.toml").write_text("not = [toml")
    result = train_stage(cfg, "pretrain", run, damage, clock=SteppingClock(0.4))
    assert result.done and result.step > 3
    assert "the run's config.toml could not record the planned steps" in (run / "pretrain" / "train.log").read_text()


def test_steps_asked_for_with_a_time_budget_are_at_most_that_many(prepared):
    """--steps N --time T on a new stage: at most N steps and at most T, the schedule fitted to
    whichever ends first (here the clock's 20 s hold more than 8 steps, and fewer than 1,000)."""
    cfg = load(prepared)
    sc = cfg.train.pretrain
    sc.time, sc.eval_every, sc.save_every, sc.log_every, sc.min_lr_ratio = "20s", 10, 1000, 1, 0.1
    more = cfg.runs_dir / "more"
    assert 8 < train_stage(cfg, "pretrain", more, clock=SteppingClock(0.4), named_steps=1000).step < 1000
    assert "(the most asked for)" not in (more / "pretrain" / "train.log").read_text()  # the budget ended first
    run = cfg.runs_dir / "fewer"
    assert train_stage(cfg, "pretrain", run, clock=SteppingClock(0.4), named_steps=8).step == 8
    reports = [e for e in read_metrics(run, "pretrain") if e["type"] == "metrics"]
    floor = pytest.approx(sc.learning_rate * sc.min_lr_ratio, rel=1e-3)
    assert reports[-1]["total"] == 8 and reports[-1]["lr"] == floor  # the schedule ends at step 8
    assert checkpoint.latest(Paths.checkpoints(run, "pretrain")).state["planned_steps"] == 8
    assert "time budget 20 s: 8 steps (the most asked for)" in (run / "pretrain" / "train.log").read_text()


def test_steps_asked_for_with_a_time_budget_are_no_plan_until_timed(prepared):
    """Stopped before its steps were timed, a stage given --steps N --time T saved no plan: resumed
    with the budget, it fits its steps to it."""
    cfg = load(prepared)
    sc = cfg.train.pretrain
    sc.time, sc.eval_every, sc.save_every, sc.log_every, sc.min_lr_ratio, sc.warmup_steps = "20s", 10, 1000, 1, 0.1, 20
    run = cfg.runs_dir / "early"
    assert train_stage(cfg, "pretrain", run, clock=SteppingClock(0.4), named_steps=1000, max_steps=2).step == 2
    assert checkpoint.latest(Paths.checkpoints(run, "pretrain")).state["planned_steps"] is None
    resumed = train_stage(cfg, "pretrain", run, resume=True, clock=SteppingClock(0.4))
    log = (run / "pretrain" / "train.log").read_text()
    assert "it planned" not in log and "time budget 20 s: " in log and 2 < resumed.step < 1000


def test_the_most_steps_asked_for_outlive_a_stop_before_the_timing(prepared):
    """Stopped before its timing, a stage given --steps N --time T kept N (planned_most): a resume
    with a budget stops at N at most; one without plans N, its schedule ending at the floor. N steps
    that end before they are timed get the warmup a plan would give."""
    cfg = load(prepared)
    sc = cfg.train.pretrain
    sc.eval_every, sc.save_every, sc.log_every, sc.min_lr_ratio, sc.warmup_steps = 10, 1000, 1, 0.1, 20
    capped = cfg.runs_dir / "capped"
    sc.time = "1h"  # 72 s of the clock to time the steps: the most asked for ends first
    train_stage(cfg, "pretrain", capped, clock=SteppingClock(0.4), named_steps=12, max_steps=2)
    assert checkpoint.latest(Paths.checkpoints(capped, "pretrain")).state["planned_most"] == 12
    assert train_stage(cfg, "pretrain", capped, resume=True, max_steps=30, clock=SteppingClock(0.4)).step == 12
    plain = cfg.runs_dir / "plain"
    train_stage(cfg, "pretrain", plain, clock=SteppingClock(0.4), named_steps=12, max_steps=2)
    sc.time = ""  # resumed without a budget, the most asked for is the plan
    assert train_stage(cfg, "pretrain", plain, resume=True, clock=SteppingClock(0.4)).step == 12
    last = [e for e in read_metrics(plain, "pretrain") if e["type"] == "metrics"][-1]
    assert last["total"] == 12 and last["lr"] == pytest.approx(sc.learning_rate * sc.min_lr_ratio, rel=1e-3)
    sc.time = "1h"  # 72 s of the clock to time the steps: the 10 steps end first
    short = cfg.runs_dir / "short"
    assert train_stage(cfg, "pretrain", short, clock=SteppingClock(0.4), named_steps=10).step == 10
    reports = [e for e in read_metrics(short, "pretrain") if e["type"] == "metrics"]
    assert reports[-1]["lr"] == pytest.approx(sc.learning_rate * sc.min_lr_ratio, rel=1e-3)
    assert reports[0]["lr"] == pytest.approx(sc.learning_rate, rel=1e-3)  # warmup 1 (10 // 10), not 20
    assert checkpoint.latest(Paths.checkpoints(short, "pretrain")).state["planned_steps"] == 10


def test_the_command_line_s_steps_and_time_together_end_at_the_steps(prepared, capsys):
    c = str(prepared / "acm.toml")
    assert cli.main(["-c", c, "train", "pretrain", "--run", "both", "--steps", "6", "--time", "2m"]) == 0
    assert "pretrain finished at step 6 in run both" in capsys.readouterr().out
    assert checkpoint.latest(Paths.checkpoints(prepared / "runs" / "both", "pretrain")).state["planned_steps"] == 6


def test_the_run_s_settings_keep_each_stage_s_as_it_trained(prepared):
    """A pipeline gives each stage its own time share; starting the fine-tune records its settings
    and keeps the pretrain's, rather than acm.toml's of the moment."""
    cfg = load(prepared)
    cfg.train.pretrain.time, cfg.train.pretrain.learning_rate = "20s", 2e-3
    run = cfg.runs_dir / "shares"
    train_stage(cfg, "pretrain", run, max_steps=2, clock=SteppingClock(0.4))
    cfg = load(prepared)  # acm.toml as it is: no budgets, its own learning rate
    cfg.train.finetune.time = "9s"
    train_stage(cfg, "finetune", run, max_steps=1, clock=SteppingClock(0.4))
    recorded = config.load(run / "config.toml").train
    assert (recorded.pretrain.time, recorded.pretrain.learning_rate) == ("20s", 2e-3)
    assert recorded.finetune.time == "9s"


def test_a_resumed_stage_s_recorded_steps_are_its_plan_not_acm_toml_s(prepared):
    """`acm runs compare` reads a run's config.toml: a resume wrote acm.toml's steps there (10,000)
    for a stage planned and trained to 6."""
    c, run = str(prepared / "acm.toml"), prepared / "runs" / "r"
    assert cli.main(["-c", c, "train", "pretrain", "--run", "r", "--steps", "6", "--max-steps", "2"]) == 0
    assert cli.main(["-c", c, "train", "pretrain", "--run", "r", "--resume"]) == 0
    assert checkpoint.latest(Paths.checkpoints(run, "pretrain")).step == 6
    assert load(prepared).train.pretrain.steps != 6 and config.load(run / "config.toml").train.pretrain.steps == 6
    assert cli.main(["-c", c, "train", "pretrain", "--run", "r", "--resume", "--steps", "8"]) == 0
    assert config.load(run / "config.toml").train.pretrain.steps == 8


def _a_finished_stage_resumed_says_so_once(c: str, planned: int, capsys) -> None:
    """`acm train --resume` of run "planned", whose plan is done and whose validation the budget cut."""
    assert cli.main(["-c", c, "config", "set", "train.pretrain.eval_batches", "40"]) == 0  # as the plan cut
    capsys.readouterr()
    assert cli.main(["-c", c, "train", "pretrain", "--run", "planned", "--resume"]) == 0
    said = capsys.readouterr()
    assert said.err.count(f"already finished its {planned:,} steps: nothing to resume") == 1
    assert "validation reads" not in said.err and "already finished" not in said.out  # said once, nothing else
    assert said.out.startswith(f"pretrain of run planned: its {planned:,} steps are done, best val loss ")
    assert said.out.rstrip().endswith(f"to train further, give the total: --resume --steps N, N above {planned:,}")


def test_a_resumed_stage_keeps_its_plan_and_extends_only_when_asked(prepared, capsys):
    cfg = load(prepared)
    sc = cfg.train.pretrain
    sc.time, sc.eval_every, sc.save_every, sc.log_every, sc.eval_batches = "20s", 10, 1000, 5, 40
    run = cfg.runs_dir / "planned"
    planned = train_stage(cfg, "pretrain", run, clock=SteppingClock(0.4)).step
    folder = Paths.checkpoints(run, "pretrain")
    assert sc.steps != planned and checkpoint.latest(folder).state["planned_steps"] == planned
    assert checkpoint.latest(folder).state["planned_eval_batches"] < 40  # validation cut to fit the budget too
    again = train_stage(load(prepared), "pretrain", run, resume=True)  # no budget now: steps would be 40
    assert again.already_done and again.step == planned and checkpoint.latest(folder).step == planned
    log = (run / "pretrain" / "train.log").read_text()
    assert "already finished its" in log and "resumed pretrain" not in log  # said once, as finished
    c = str(prepared / "acm.toml")
    _a_finished_stage_resumed_says_so_once(c, planned, capsys)
    files = [run / "config.toml", *(run / "pretrain").glob("*.json*"), run / "pretrain" / "train.log"]
    before = {f: f.read_bytes() for f in files}
    assert cli.main(["-c", c, "train", "pretrain", "--run", "planned", "--resume", "--steps", "2"]) == 2
    assert "--steps 2 is behind it" in capsys.readouterr().err
    assert {f: f.read_bytes() for f in files} == before  # a refused resume writes none of the run's files
    assert cli.main(["-c", c, "train", "pretrain", "--run", "planned", "--resume", "--steps", str(planned + 3)]) == 0
    assert checkpoint.latest(folder).step == planned + 3 == checkpoint.latest(folder).state["planned_steps"]
    assert f"resumed pretrain from step {planned}" in (run / "pretrain" / "train.log").read_text()  # said in setup


def test_a_step_s_time_reads_as_the_plan_lines_say_it():
    from core.train.budget import describe_seconds, per_step

    assert [per_step(0.0421), per_step(4.2853), per_step(61.0)] == ["42 ms a step", "4,285 ms a step",
                                                                      "61,000 ms a step"]
    assert [describe_seconds(42), describe_seconds(125), describe_seconds(7300)] == ["42 s", "2 min 05 s", "2 h 01 min"]


def test_the_budget_planner_fits_the_steps_left_after_timing_the_first():
    from core.train.budget import Calibration

    calibration = Calibration(100.0, started=0.0, eval_every=10, eval_batches=2)
    assert calibration.observe(1, 5.0) is None  # the first step (compilation) only starts the timing
    assert calibration.observe(3, 5.4) is None  # 2 steps: too few to trust
    assert calibration.observe(5, 6.0) is None  # 1 s: under 2% of the budget
    step_s = calibration.observe(6, 7.0)  # 5 steps in 2 s
    assert step_s == pytest.approx(0.4)
    # 93 s left: 216 steps (80 s) and 23 checks (at 10, 20, ..., 220 and the last, 222) of 2 batches
    # at 0.35 of a step each (12.9 s); one more step would pass 93 s
    assert calibration.seconds(6, 216, step_s) == pytest.approx(0.4 * (216 + 23 * 2 * 0.35))
    plan = calibration.plan(6, 7.0, step_s, warmup=200)
    assert (plan.total, plan.warmup, plan.eval_batches) == (222, 22, 2)
    assert calibration.seconds(6, 217, step_s) > 93.0 >= calibration.seconds(6, 216, step_s)
    assert calibration.plan(5, 99.99, step_s, warmup=2).total == 6  # never fewer than one more step
    capped = calibration.plan(6, 7.0, step_s, warmup=200, most=50)  # --steps 50: fewer than fit
    assert (capped.total, capped.warmup, capped.eval_batches) == (50, 5, 2)
    assert calibration.plan(7, 7.0, step_s, warmup=2, most=7).total == 7  # timed at the last step asked for
    kept = calibration.plan(6, 7.0, step_s, warmup=200, last_s=4.0).total  # the last check's samples: 4 s
    assert calibration.seconds(6, kept - 6, step_s) <= 89.0 < calibration.seconds(6, kept - 5, step_s)


def test_a_budget_sets_time_aside_for_the_last_check_s_samples(prepared):
    totals = {}
    for samples in (0, 2):
        cfg = load(prepared)
        cfg.train.samples, cfg.train.sample_tokens = samples, 4
        sc = cfg.train.pretrain
        sc.time, sc.eval_every, sc.save_every = "20s", 10, 1000
        totals[samples] = train_stage(cfg, "pretrain", cfg.runs_dir / f"s{samples}", clock=SteppingClock(0.4)).step
    assert totals[2] < totals[0]  # 1 s set aside before any check measured the samples' cost


def test_the_budget_planner_leaves_what_the_loop_set_aside_out_of_a_step_s_time():
    from core.train.budget import Calibration

    calibration = Calibration(100.0, started=0.0, eval_every=2, eval_batches=2)
    assert calibration.observe(1, 5.0, aside=0.3) is None
    assert calibration.observe(4, 36.0, aside=30.5) is None  # 3 steps in 0.8 s of steps: under 2% of the budget
    # 5 steps in 32.5 s, 30.2 s of them set aside (the first check, compiling): 2.3 s of steps
    assert calibration.observe(6, 37.5, aside=30.5) == pytest.approx(0.46)


class FirstCheckCompiles(Trainer):
    """Its first validation batch takes 30 s more on its clock (a SteppingClock): MLX compiling the
    check's graph, as on a CPU whose kernel cache is cold."""

    def _setup(self) -> None:
        super()._setup()
        loss, cold = self.eval_loss, [True]

        def first_compiles(x, y):
            if cold:
                self.clock.now += 30.0
                cold.clear()
            return loss(x, y)

        self.eval_loss = first_compiles


def test_a_fine_tune_s_budget_plan_leaves_the_first_check_s_compile_out_of_its_steps(prepared):
    cfg = load(prepared)
    run = cfg.runs_dir / "cold"
    train_stage(cfg, "pretrain", run, max_steps=1)
    sc = cfg.train.finetune
    sc.time, sc.eval_every, sc.save_every, sc.log_every = "60s", 2, 1000, 1  # a check among the timed steps
    FirstCheckCompiles(cfg, "finetune", run, max_steps=8, clock=SteppingClock(0.1)).run()
    log = (run / "finetune" / "train.log").read_text()
    steps, ms = re.search(r"finetune: time budget 1 min 00 s: ([\d,]+) steps at ([\d,]+) ms a step", log).groups()
    # steps of a few clock reads each, the 30 s already spent: counted as steps, the check made them 10 s each
    assert int(ms.replace(",", "")) < 1000 and int(steps.replace(",", "")) > 20


def test_a_short_budget_reads_fewer_validation_batches_rather_than_outlast_itself():
    """A 60 s budget of 5.86 s steps (micro on a slow CPU): the one check at the end, 20 batches at
    0.35 of a step, would take 41 s; the plan keeps its checks within a tenth of what is left."""
    from core.train.budget import Calibration, checks

    calibration = Calibration(60.0, started=0.0, eval_every=250, eval_batches=20)
    calibration.observe(1, 20.0)
    step_s = calibration.observe(4, 37.58)
    plan = calibration.plan(4, 37.58, step_s, warmup=100)
    assert (plan.total, plan.eval_batches) == (7, 1)
    assert calibration.seconds(4, 3, step_s, plan.eval_batches) <= 60.0 - 37.58
    assert calibration.seconds(4, 3, step_s) > 2 * (60.0 - 37.58)  # with acm.toml's 20 batches: over twice
    # checks: each multiple of eval_every from the step just done (its check not yet run), and the last step once
    assert [checks(1, 9, 5), checks(1, 11, 5), checks(3, 1, 5), checks(4, 1, 5), checks(5, 1, 5)] == [2, 3, 1, 1, 2]


def test_the_planner_counts_the_check_due_now_accumulation_and_no_validation_set():
    from core.train.budget import UNPLANNED, Calibration, checks

    # step 8 just done, its check (every 4) not yet run: 8, 12, 16 and the last, 18
    assert checks(8, 10, 4) == 4 and checks(9, 9, 4) == 3 and checks(8, 0, 4) == 1 and checks(9, 0, 4) == 0
    one, four = Calibration(60.0, 0.0, 4, 10), Calibration(60.0, 0.0, 4, 10, grad_accum=4)
    assert one.seconds(8, 10, 1.0) == pytest.approx(10 + 4 * 10 * 0.35)
    assert four.seconds(8, 10, 1.0) == pytest.approx(10 + 4 * 10 * 0.35 / 4)  # a batch is one micro-batch's
    blind = Calibration(60.0, 0.0, 4, 0)  # no validation set: no checks to fit
    plan = blind.plan(8, 10.0, 1.0, warmup=5)
    assert (plan.total, plan.eval_batches) == (58, 0) and blind.seconds(8, 50, 1.0) == 50
    assert Calibration(1e15, 0.0, 4, 10).plan(8, 10.0, 1e-3, warmup=5).total == UNPLANNED - 1


def test_a_budget_stage_reads_the_validation_batches_it_cut_and_a_resume_keeps_them(prepared, monkeypatch):
    from core.train.batches import Batches

    cfg = load(prepared)
    sc = cfg.train.pretrain
    sc.time, sc.eval_every, sc.save_every, sc.log_every, sc.eval_batches = "20s", 1000, 1000, 1, 500
    run, read = cfg.runs_dir / "cut", []
    val = Batches.val
    monkeypatch.setattr(Batches, "val", lambda self, i: read.append(i) or val(self, i))
    result = train_stage(cfg, "pretrain", run, clock=SteppingClock(0.4))
    state = checkpoint.latest(Paths.checkpoints(run, "pretrain")).state
    batches = state["planned_eval_batches"]
    assert 1 <= batches < 500 and state["planned_steps"] == result.step
    assert read == list(range(batches))  # the one check, at the end
    log = (run / "pretrain" / "train.log").read_text()
    assert f"; validation reads {batches} of its 500 batches a check to fit" in log
    read.clear()
    again = train_stage(cfg, "pretrain", run, resume=True, named_steps=result.step + 2, clock=SteppingClock(0.4))
    assert again.step == result.step + 2 and read == list(range(batches))
    assert f"validation reads {batches} of its 500 batches a check, as the time budget's plan cut them" in \
        (run / "pretrain" / "train.log").read_text()


def test_a_resumed_stage_with_a_time_budget_keeps_its_plan_and_stops_when_the_budget_ends(prepared):
    cfg = load(prepared)
    sc = cfg.train.pretrain
    sc.steps, sc.eval_every, sc.save_every, sc.log_every = 400, 1000, 1000, 1
    run = cfg.runs_dir / "again"
    assert train_stage(cfg, "pretrain", run, max_steps=5).step == 5
    sc.time = "20s"
    clock = SteppingClock(0.4)
    result = train_stage(cfg, "pretrain", run, resume=True, clock=clock)
    assert 5 < result.step < 400
    assert clock.now - 1000.0 <= 20 * 1.5
    log = (run / "pretrain" / "train.log").read_text()
    assert f"pretrain: time budget 20 s: stops at step {result.step:,} of the 400 it planned" in log
    assert f"pretrain stopped at step {result.step}" in log
    assert checkpoint.latest(Paths.checkpoints(run, "pretrain")).state["planned_steps"] == 400  # the plan kept


def test_a_stage_says_how_long_its_steps_take_and_warns_of_hours(prepared):
    cfg = load(prepared)
    cfg.train.pretrain.steps = 10**8  # hours at any speed
    train_stage(cfg, "pretrain", cfg.runs_dir / "long", max_steps=20, clock=SteppingClock(0.1))  # timed past 0.5 s
    log = (cfg.runs_dir / "long" / "pretrain" / "train.log").read_text()
    assert "more steps take about" in log and " h " in log
    assert re.search(r"ms a step\); this call stops at step 20 \(--max-steps\), in about \d+ s\n", log)
    assert "warning: that is hours; a time budget (--time 10m, train.pretrain.time)" in log


def test_bad_durations_are_one_line(prepared, capsys):
    cfg = load(prepared)
    with pytest.raises(config.ConfigError, match="is not a duration"):
        config.with_value(cfg, "train.pretrain.time", "ten minutes")
    assert config.with_value(cfg, "train.finetune.time", "1h30m")[0].train.finetune.time == "1h30m"
    with pytest.raises(SystemExit):
        cli.main(["-c", str(prepared / "acm.toml"), "train", "pretrain", "--time", "0s"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("acm: error:") and "positive duration" in err[0]


def test_a_pipeline_budget_is_shared_by_the_training_stages():
    from core.pipeline.overview import TIME_SHARES, with_time
    cfg = config.Config()
    budgeted = with_time(cfg, "finetune", 600 * TIME_SHARES["finetune"])
    assert budgeted.train.finetune.time == "150s" and cfg.train.finetune.time == ""
    assert budgeted.train.pretrain == cfg.train.pretrain


def test_piped_tables_keep_whole_names(prepared):
    cfg = load(prepared)
    name = "a-run-with-a-name-much-longer-than-eighty-columns-would-leave-room-for-in-a-table"
    train_stage(cfg, "pretrain", cfg.runs_dir / name, max_steps=1)
    env = os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    out = subprocess.run([sys.executable, "-m", "core.cli", "-c", str(prepared / "acm.toml"), "runs"],
                         capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    assert name in out
    row = next(line for line in out.splitlines() if name in line)
    assert "pretrain" in row and "1/" in row


def test_the_newest_report_is_read_from_the_end_of_the_metrics(prepared):
    from core.pipeline.overview import training_progress
    from core.runs import last_report
    from core.runs.events import event_from_json

    cfg = load(prepared)
    train_stage(cfg, "pretrain", cfg.runs_dir / "tail", max_steps=6)
    newest = last_report(cfg.runs_dir / "tail", "pretrain", tail_bytes=2000)
    assert newest is not None and newest["step"] == 6 and newest["eta_s"] is not None
    seen = []
    training_progress(seen.append)(event_from_json(newest))
    assert seen[0].task == "pretraining" and (seen[0].done, seen[0].total) == (6, cfg.train.pretrain.steps)


def test_resuming_weights_that_do_not_fit_the_model_is_one_line(with_model):
    import mlx.core as mx

    cfg = load(with_model)
    ck = checkpoint.latest(Paths.checkpoints(cfg.runs_dir / "m", "finetune"))
    weights = ck.path / "model.safetensors"
    mx.save_safetensors(str(weights), {k: mx.zeros((1,) * v.ndim) for k, v in mx.load(str(weights)).items()})
    with pytest.raises(AcmError, match=r"is damaged \(weights .* do not fit the model\)"):
        train_stage(cfg, "finetune", cfg.runs_dir / "m", resume=True, max_steps=1)


def test_a_resume_on_another_batch_keeps_the_run_s_sequences_in_its_state_not_its_settings(prepared):
    """Resumed with half the batch_size, the stage makes up the run's sequences a step with 2
    micro-batches (held in its TrainState, saved in the checkpoint) and continues as one run would;
    the settings it was given are left as they were."""
    cfg = load(prepared)
    train_stage(cfg, "pretrain", cfg.runs_dir / "straight", max_steps=8)
    train_stage(cfg, "pretrain", cfg.runs_dir / "halves", max_steps=4)
    half = load(prepared)
    half.train.pretrain.batch_size = cfg.train.pretrain.batch_size // 2
    settings = json.dumps(half.to_dict())
    seen = []
    train_stage(half, "pretrain", cfg.runs_dir / "halves", seen.append, resume=True, max_steps=4)
    assert json.dumps(half.to_dict()) == settings and half.train.pretrain.grad_accum == 1
    assert any("1 rank(s) x 2 micro-batch(es)" in e.text for e in seen if e.type == "log")
    assert losses(cfg.runs_dir / "halves") == pytest.approx(losses(cfg.runs_dir / "straight"), rel=1e-4, abs=1e-5)
    state = checkpoint.latest(Paths.checkpoints(cfg.runs_dir / "halves", "pretrain")).state
    assert state["global_batch"] == cfg.train.pretrain.batch_size and state["tokens_seen"] == 8 * state[
        "global_batch"] * cfg.train.pretrain.seq_len


def test_early_stopping_counts_its_checks_across_a_resume(prepared):
    cfg, run = unlearning_finetune(prepared)
    train_stage(cfg, "finetune", run, max_steps=4)  # checks at 2 (the best) and 4 (one without)
    assert checkpoint.latest(Paths.checkpoints(run, "finetune")).state["checks_without_best"] == 1
    assert train_stage(cfg, "finetune", run, resume=True).step == 6  # the second without a new best


class SlowingClock(SteppingClock):
    """A stepping clock whose tick grows a hundredfold after `reads` reads: a stage that slows down."""

    def __init__(self, tick: float, reads: int):
        super().__init__(tick)
        self.reads = reads

    def __call__(self) -> float:
        self.reads -= 1
        if self.reads == 0:
            self.tick *= 100
        return super().__call__()


def test_a_stage_that_slows_down_writes_one_alert_naming_the_step(prepared):
    cfg = load(prepared)
    run = cfg.runs_dir / "slow"
    train_stage(cfg, "pretrain", run, clock=SlowingClock(0.01, reads=60))
    alerts = [line for line in (run / "pretrain" / "train.log").read_text().splitlines() if " alert: step " in line]
    assert len(alerts) == 1 and "tokens/s, under 0.5x the stage's median" in alerts[0]


def test_a_command_left_for_a_process_that_died_is_not_obeyed_by_the_next(with_model):
    """`acm runs pause` sent to a background stage that died before it read it (kill -9, a reboot):
    the resume trains on instead of sitting paused with nothing said."""
    run = with_model / "runs" / "m"
    Paths.control(run, "pretrain").write_text(json.dumps({"command": "pause", "time": time.time() - 60}))
    cfg = config.load(with_model / "acm.toml")
    result = train_stage(cfg, "pretrain", run, None, None, True, 4)
    assert result.step == 24 and not Paths.control(run, "pretrain").exists()
    Paths.control(run, "pretrain").write_text(json.dumps({"command": "stop", "time": time.time() + 60}))
    assert runs.take_command(run, "pretrain", since=time.time()) == "stop"  # one sent since: obeyed


def test_optimizer_state_is_read_only_by_a_resume_and_a_missing_one_is_said(with_model, capsys, tmp_path):
    """Generating, evaluating and exporting read the weights alone, so a damaged optimizer file
    stops only a resume (one line); a deleted one lets a resume go on afresh, saying it is not exact."""
    c = str(with_model / "acm.toml")
    last = checkpoint.latest(Paths.checkpoints(load(with_model).runs_dir / "m", "finetune"))
    opt = last.path / checkpoint.OPTIMIZER
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])
    assert cli.main(["-c", c, "generate", "--run", "m", "--max-tokens", "4", "# list files"]) == 0
    assert cli.main(["-c", c, "export", "m", "--to", str(tmp_path / "e"), "--format", "mlx"]) == 0
    assert cli.main(["-c", c, "eval", "--run", "m", "--samples", "1", "--max-tokens", "4"]) == 0
    capsys.readouterr()
    resume = ["-c", c, "train", "finetune", "--run", "m", "--resume", "--steps", "12"]
    assert cli.main(resume) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"acm: error: checkpoint {last.path}: its optimizer.safetensors is "
                                                "damaged (optimizer.safetensors is ")
    assert err[0].endswith("delete that file to resume with a fresh optimizer, or the checkpoint to fall back to an "
                           "earlier one")
    opt.unlink()
    assert cli.main(resume) == 0
    out = " ".join("".join(capsys.readouterr()).split())
    assert (f"checkpoint {last.path.name} has no optimizer.safetensors: the optimizer starts afresh from its "
            "weights, so this resume is not exact") in out
    assert checkpoint.latest(last.path.parent).step == 12


def test_a_micro_batch_far_beyond_the_devices_memory_is_refused_before_anything_is_built(trained, capsys):
    """It ended acm through the OOM killer (a failed Metal allocation on a Mac); a huge grad_accum
    was an internal error drawing the batch's rows."""
    from core.train.memory import reckoned_bytes
    from core.train.trainer import check_step_fits

    path = str(trained / "acm.toml")
    assert cli.main(["-c", path, "config", "set", "train.pretrain.batch_size", "2147483647"]) == 0
    capsys.readouterr()
    assert cli.main(["-c", path, "train", "pretrain", "--run", "huge"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("acm: error: train.pretrain.batch_size = 2147483647 at seq_len 64: a step would take "
                          "about ") and err.endswith("lower batch_size (grad_accum adds micro-batches to a step "
                                                     "without more memory)\n") and err.count("\n") == 1
    assert not (trained / "runs" / "huge" / "pretrain" / "checkpoints").exists()
    cfg = config.load(path)
    need = reckoned_bytes(cfg.model.shape(), cfg.train.pretrain, cfg.model.compute_dtype)
    check_step_fits(cfg, "pretrain", need)  # a step reckoned at the device's memory is left to try
    check_step_fits(cfg, "pretrain", 0)  # so is one on a device of unknown memory
    with pytest.raises(AcmError, match="a step would take"):
        check_step_fits(cfg, "pretrain", need // 3)
    assert cli.main(["-c", path, "config", "set", "train.pretrain.grad_accum", "2147483647"]) == 2
    assert "train.pretrain.grad_accum = 2147483647 is out of range; allowed: 1 to 4096" in capsys.readouterr().err
