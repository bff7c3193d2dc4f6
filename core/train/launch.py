"""MLX's launcher (what `mlx.launch` runs), tied to the `acm` that starts it:
`python -m core.train.launch [--parent PID] LAUNCHER-ARGUMENTS`.

With --parent, the launcher and its ranks end once that process is gone (core.train.lifeline);
without (a detached stage), they outlive it. Either way each rank ends with the launcher, whose
pid it finds in its environment. A polite kill (SIGTERM) of the launcher is passed on to its ranks
as a stop: they stop at their next step with a checkpoint, and the launcher ends once they have.
"""
from __future__ import annotations

from core.train import early_stops

if __name__ == "__main__":  # the launcher: a SIGTERM while the modules below load is kept
    early_stops.keep()

import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

from core import runs  # noqa: E402
from core.train.lifeline import LAUNCHER_PID, end_with  # noqa: E402


def pass_polite_kill_to_ranks(argv: list[str]) -> None:
    """SIGTERM to the launcher becomes a stop in the run's control file, which its ranks obey at
    their next step, with a checkpoint; the launcher ends once they have. It is sent again until
    they can take it (they may still be starting). Left to its default, the launcher would die at
    once and take its ranks with it. `argv` ends with the ranks' settings snapshot,
    runs/<run>/<stage>/launch.toml, which names the run and the stage."""
    snapshot = Path(argv[-1]) if argv else Path()
    if snapshot.name != "launch.toml":
        return
    asked = threading.Event()

    def send_stop() -> None:
        asked.wait()
        runs.send_once_taken(snapshot.parent.parent, snapshot.parent.name, "stop")

    threading.Thread(target=send_stop, name="acm-stop", daemon=True).start()
    early_stops.hand_to(asked.set)


def main(argv: list[str]) -> None:
    pass_polite_kill_to_ranks(argv)
    if argv[:1] == ["--parent"]:
        end_with(int(argv[1]))
        argv = argv[2:]
    os.environ[LAUNCHER_PID] = str(os.getpid())  # the ranks inherit it
    from mlx._distributed_utils.launch import main as launch

    sys.argv = ["mlx.launch", *argv]
    launch()


if __name__ == "__main__":
    main(sys.argv[1:])
