"""A child that ends with acm (core/tether.py): what it runs reads as if acm had run it itself."""
from __future__ import annotations

import os
import signal
import subprocess

from core import tether
from tests.helpers import eventually, process_gone


def test_the_commands_output_and_status_pass_through():
    """Its output, its errors and its status, a death by a signal included, are the caller's as if
    it had run the command itself (git's own reason is what a failed clone says)."""
    said = subprocess.run(tether.command(os.getpid(), ["sh", "-c", "echo out; echo fatal: no >&2; exit 3"]),
                          capture_output=True, text=True)
    assert (said.returncode, said.stdout, said.stderr) == (3, "out\n", "fatal: no\n")
    killed = subprocess.run(tether.command(os.getpid(), ["sh", "-c", "kill -TERM $$"]), capture_output=True)
    assert killed.returncode == -signal.SIGTERM
    missing = subprocess.run(tether.command(os.getpid(), ["no-such-command-here"]), capture_output=True, text=True)
    assert missing.returncode == 127 and missing.stderr.startswith("no-such-command-here: ")


def test_a_polite_kill_of_the_tether_alone_ends_its_command():
    """SIGTERM to the tether only (a `kill` of that pid): its command ends too, rather than running
    on with nobody left to end it."""
    proc = subprocess.Popen(tether.command(os.getpid(), ["sh", "-c", "echo $$; exec sleep 300"]),
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    command = int(proc.stdout.readline())
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        assert eventually(lambda: process_gone(command), 30), "the command outlived its tether"
    finally:
        proc.kill()
        if not process_gone(command):
            os.kill(command, signal.SIGKILL)
