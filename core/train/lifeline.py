"""Training processes that end with the process that started them. An `acm` killed outright
(kill -9, the OOM killer) runs no handler, and its launcher and ranks would train on as orphans.

Linux has a parent-death signal (prctl PR_SET_PDEATHSIG); macOS has none. So each tied process
also watches its parent: once its parent pid is no longer the one it was started by (the kernel
handed it to init or a subreaper), it ends, and a launcher ends the ranks of its process group too.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

POLL_S = 0.2  # how long an orphan may outlive its parent
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LAUNCHER_PID = "ACM_LAUNCHER_PID"  # the environment's name for the launcher a rank is tied to


def parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Linux: the kernel sends `sig` to this process when the thread that started it ends. False
    where there is no such signal."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def end_with(parent: int, every: float = POLL_S) -> threading.Thread:
    """End this process once `parent` is no longer its parent; a process that leads its group (the
    launcher, started in a session of its own) takes the group's ranks with it."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(1)

    thread = threading.Thread(target=watch, name="acm-lifeline", daemon=True)
    thread.start()
    return thread


def tie_rank_to_launcher() -> None:
    """A rank ends with the launcher that started it (whatever ended the launcher)."""
    launcher = os.environ.get(LAUNCHER_PID, "")
    if launcher.isdigit():
        parent_death_signal()
        end_with(int(launcher))
