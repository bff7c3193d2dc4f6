"""MLX's launcher (what `mlx.launch` runs), tied to the `acm` that starts it:
`python -m core.train.launch [--parent PID] LAUNCHER-ARGUMENTS`.

With --parent, the launcher and its ranks end once that process is gone (core.train.lifeline);
without (a detached stage), they outlive it. Either way each rank ends with the launcher, whose
pid it finds in its environment. A polite kill (SIGTERM) of the launcher is passed on to its ranks,
which stop at their next step with a checkpoint; the launcher ends once they have.
"""
from __future__ import annotations

import os
import signal
import sys

from core.train.lifeline import LAUNCHER_PID, end_with


def pass_polite_kill_to_ranks() -> None:
    """SIGTERM to the launcher goes to its process group (its ranks: acm starts it in a session of
    its own), once; left to its default the launcher would die at once and its ranks with it, before
    their checkpoint. A service manager that signals every process of the unit sends the ranks
    theirs as well: the same stop."""
    def forward(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's signal reaches the launcher too
        os.killpg(os.getpgrp(), signal.SIGTERM)

    if os.getpgrp() == os.getpid():
        signal.signal(signal.SIGTERM, forward)


def main(argv: list[str]) -> None:
    pass_polite_kill_to_ranks()
    if argv[:1] == ["--parent"]:
        end_with(int(argv[1]))
        argv = argv[2:]
    os.environ[LAUNCHER_PID] = str(os.getpid())  # the ranks inherit it
    from mlx._distributed_utils.launch import main as launch

    sys.argv = ["mlx.launch", *argv]
    launch()


if __name__ == "__main__":
    main(sys.argv[1:])
