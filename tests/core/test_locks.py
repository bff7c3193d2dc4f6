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
