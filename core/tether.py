"""`python -I core/tether.py PARENT COMMAND...`: COMMAND run as this process's child, and both
ended once PARENT is gone, however it ended: `kill -9` of acm runs no handler of acm's.

acm starts its long children (git clones that take minutes) through it, in a process group of
their own that acm ends on a cancel. Linux's parent-death signal would have to be asked for by the
child between fork and exec, which is unsafe in a threaded process, and macOS has none; so this
process watches its parent, and once its parent pid is no longer PARENT it ends its group: COMMAND
and the helpers COMMAND started. The standard library only: it runs as a file, not as acm.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

POLL_S = 0.2  # how long COMMAND may outlive acm


def command(parent: int, argv: list[str]) -> list[str]:
    """The command line that runs `argv` tied to the process `parent`."""
    return [sys.executable, "-I", os.path.abspath(__file__), str(parent), *argv]


ENDING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # a kill of this process alone ends COMMAND too


def main(argv: list[str]) -> int:
    parent, rest = int(argv[0]), argv[1:]
    started: list[subprocess.Popen] = []
    for signum in ENDING:  # before COMMAND starts: no moment where a kill of this process leaves it running
        signal.signal(signum, lambda *_: _end(started))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ENDING)  # a thread of acm's that starts it has them blocked
    try:
        child = subprocess.Popen(rest)
    except OSError as e:
        print(f"{rest[0]}: {e.strerror or e}", file=sys.stderr)
        return 127
    started.append(child)
    while True:
        try:
            status = child.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:
                _end(started)
            continue
        if status < 0:  # COMMAND died of a signal: so does this process, as COMMAND's caller would see
            with contextlib.suppress(OSError, ValueError):
                signal.signal(-status, signal.SIG_DFL)
            os.kill(os.getpid(), -status)
        return status if status >= 0 else 128 - status


def _end(started: list[subprocess.Popen]) -> None:
    """The parent is gone, or this process was killed: the group ends (this process with it) where
    this process leads it, else the command started."""
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    for child in started:
        child.kill()
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
