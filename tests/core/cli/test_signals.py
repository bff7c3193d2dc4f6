"""A polite kill (SIGTERM, a hang-up) once the `acm` program's command is done: the process ends
with the command's status, not the kill's (a finished export exited 143 in 38 of 40 such kills,
which a script read as a failure; its retry then found the folder taken)."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.helpers import ROOT

DONE_THEN_KILLED = """
import os, signal, sys, time
from core.errors import command_done, ending_with_the_command, polite_kill_as_ctrl_c
ending_with_the_command()
with polite_kill_as_ctrl_c():
    status = command_done(int(sys.argv[1]))
    if sys.argv[2] == "inside":  # as the command's last words are written
        os.kill(os.getpid(), int(sys.argv[3]))
if sys.argv[2] == "after":  # as the process leaves (its libraries' teardown, threads joined)
    os.kill(os.getpid(), int(sys.argv[3]))
time.sleep(30)  # a teardown that would take this long ends at the kill
sys.exit(99)
"""


@pytest.mark.parametrize("when", ["inside", "after"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("status", [0, 2])
def test_a_polite_kill_once_the_command_is_done_ends_the_process_with_the_command_s_status(when, sig, status):
    ended = subprocess.run([sys.executable, "-c", DONE_THEN_KILLED, str(status), when, str(int(sig))], cwd=ROOT,
                           timeout=60, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    assert ended.returncode == status


def test_the_program_ends_with_its_command_s_status_once_the_exit_handlers_ran():
    """As the interpreter exits, the process ends with the command's status once the other exit
    handlers ran (acm's, registered first, runs last), before the libraries' teardown: here a later
    `sys.exit(5)` stands for whatever that teardown would end with."""
    script = "\n".join([
        "import atexit, sys",
        "from core.errors import command_done, ending_with_the_command, polite_kill_as_ctrl_c",
        "ending_with_the_command()",
        "atexit.register(print, 'the other exit handlers ran')",
        "with polite_kill_as_ctrl_c():",
        "    command_done(0)",
        "sys.exit(5)",
    ])
    ended = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ended.returncode == 0 and ended.stdout == "the other exit handlers ran\n"
