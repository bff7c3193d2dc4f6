"""MLX's launcher (what `mlx.launch` runs), tied to the `acm` that starts it:
`python -m core.train.launch [--parent PID] LAUNCHER-ARGUMENTS`.

With --parent, the launcher and its ranks end once that process is gone (core.train.lifeline);
without (a detached stage), they outlive it. Either way each rank ends with the launcher, whose
pid it finds in its environment.
"""
from __future__ import annotations

import os
import sys

from core.train.lifeline import LAUNCHER_PID, end_with


def main(argv: list[str]) -> None:
    if argv[:1] == ["--parent"]:
        end_with(int(argv[1]))
        argv = argv[2:]
    os.environ[LAUNCHER_PID] = str(os.getpid())  # the ranks inherit it
    from mlx._distributed_utils.launch import main as launch

    sys.argv = ["mlx.launch", *argv]
    launch()


if __name__ == "__main__":
    main(sys.argv[1:])
