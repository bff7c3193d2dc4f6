"""The locks acm takes (a run's writer, the inputs a training stage reads, a fetch) are the system's
own (`flock`): released with their process, and taken again by the next stage even while a child
process another thread started still holds a copy a moment."""
from __future__ import annotations

import subprocess
import sys

import pytest

from core.errors import AcmError
from core.locks import Flock, reading_inputs, rebuilding_inputs
from core.runs.writer import RunLock

HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], "w")
fcntl.flock(f, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_lock_let_go_while_a_child_still_holds_a_copy_is_taken_once_the_child_has_gone(tmp_path):
    """A fork copies every descriptor, a lock's too, until the child starts its program: the pipeline's
    code shards after its language shards, or a fine-tune after its pretrain, were refused ("can't be
    rebuilt now", "being written by") when samples' `bash -n` had just been started."""
    run = tmp_path / "runs" / "r"
    lock = RunLock(run).acquire("pretrain")
    child = subprocess.Popen(["sleep", "0.2"], pass_fds=[lock.lock.fd])  # it holds the pretrain's lock a moment
    lock.release()
    RunLock(run).acquire("finetune").release()
    child.wait()
    shards = Flock(tmp_path / "inputs.lock")
    assert shards.try_acquire()  # the language shards, being rebuilt
    child = subprocess.Popen(["sleep", "0.2"], pass_fds=[shards.fd])
    shards.release()
    with rebuilding_inputs(tmp_path / "inputs.lock", "the code token shards"):
        pass
    child.wait()
    assert shards.try_acquire()
    child = subprocess.Popen(["sleep", "0.2"], pass_fds=[shards.fd])
    shards.release()
    with reading_inputs(tmp_path / "inputs.lock"):  # the training stage after them
        pass
    child.wait()


def test_a_lock_another_process_keeps_is_still_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "inputs.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(AcmError, match="can't be rebuilt now"):
            with rebuilding_inputs(tmp_path / "inputs.lock", "the tokenizer"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_run_being_written_is_neither_renamed_nor_deleted_before_it_says_it_trains(with_model, capsys):
    """A resume holds the run's writer lock a moment before its status says "running": a rename or
    a delete in that moment went through, and the stage trained into a run half deleted or renamed
    away. Both are refused while anyone holds the lock, naming the holder."""
    from core import cli

    run, c = with_model / "runs" / "m", str(with_model / "acm.toml")
    writer = RunLock(run).acquire("pretrain")
    try:
        assert cli.main(["-c", c, "runs", "rename", "m", "m2"]) == 2
        assert cli.main(["-c", c, "runs", "delete", "m", "--yes"]) == 2
    finally:
        writer.release()
    err = capsys.readouterr().err
    assert err.count("acm: error: run m is being written by pid ") == 2 and "(pretrain)" in err
    assert run.is_dir() and not (run.parent / "m2").exists()
    assert cli.main(["-c", c, "runs", "rename", "m", "m2"]) == 0  # once it is let go


@pytest.mark.parametrize("stage, resume", [("pretrain", True), ("finetune", False)])
def test_a_stage_whose_run_went_before_its_lock_is_refused_and_makes_no_run_again(with_model, monkeypatch, stage,
                                                                                 resume):
    """A resume or a fine-tune, which take a run that is there, whose run was renamed or deleted as
    they started, do not make the folder again to train in."""
    import shutil

    import core.train.trainer
    from core import config
    from core.train.trainer import train_stage

    run = with_model / "runs" / "m"
    cfg = config.load(with_model / "acm.toml")
    real = core.train.trainer.RunLock

    class GoneFirst(real):  # the run is deleted as the stage, which found it, takes its lock
        def acquire(self, *a, **k):
            shutil.rmtree(run)
            return super().acquire(*a, **k)

    monkeypatch.setattr(core.train.trainer, "RunLock", GoneFirst)
    with pytest.raises(AcmError, match=f"run m was renamed or deleted as its {stage} was to start"):
        train_stage(cfg, stage, run, resume=resume)
    assert not run.exists()


def test_a_live_pid_that_holds_no_writer_lock_is_no_stage_training(with_model, capsys):
    """A status.json saying "running" whose pid is some other live process (numbers come round again
    after a reboot) read as training: `acm runs stop` said "stop sent" and a delete was refused."""
    import json
    import os

    from core import cli, runs

    run, c = with_model / "runs" / "m", str(with_model / "acm.toml")
    (run / "pretrain" / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid(), "time": 0}))
    assert runs.stage_state(run, "pretrain") == "interrupted"
    writer = RunLock(run).acquire("pretrain")
    try:
        assert runs.stage_state(run, "pretrain") == "running"
    finally:
        writer.release()
    assert cli.main(["-c", c, "runs", "delete", "m", "--yes"]) == 0


@pytest.mark.parametrize("pid, state", [(2**22 + 1, "interrupted"), (None, "running")])
def test_a_writer_lock_that_cannot_be_probed_leaves_the_state_to_the_pid(with_model, capsys, pid, state):
    """A run whose writer lock cannot be opened (a read-only folder, another user's run; here a
    folder in its place) is listed, its stage read by its process alone: a dead one's is
    interrupted without a probe, a live one's running; `acm runs` failed on the probe's error."""
    import json
    import os

    from core import cli, runs

    run = with_model / "runs" / "m"
    (run / "writer.lock").unlink(missing_ok=True)
    (run / "writer.lock").mkdir()
    (run / "pretrain" / "status.json").write_text(json.dumps({"state": "running", "pid": pid or os.getpid(),
                                                              "time": 0}))
    assert runs.stage_state(run, "pretrain") == state
    assert cli.main(["-c", str(with_model / "acm.toml"), "runs"]) == 0
    assert state in capsys.readouterr().out
