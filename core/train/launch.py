"""MLX's launcher (what `mlx.launch` runs), tied to the `acm` that starts it:
`python -m core.train.launch [--parent PID] [--grace SECONDS] LAUNCHER-ARGUMENTS`.

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
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from core import runs  # noqa: E402
from core.paths import Paths  # noqa: E402
from core.runs.checkpoint import being_written  # noqa: E402
from core.train.lifeline import LAUNCHER_PID, end_with  # noqa: E402
from core.train.ranks import RANK_DEATH_GRACE_S, RANK_ENDED_BADLY  # noqa: E402

CHECKPOINT_WAIT_S = 120.0  # how much longer a checkpoint still being written is waited for


def pass_polite_kill_to_ranks(argv: list[str]) -> None:
    """SIGTERM to the launcher becomes a stop in the run's control file, which its ranks obey at
    their next step, with a checkpoint; the launcher ends once they have. It is sent again until
    they can take it (they may still be starting). Left to its default, the launcher would die at
    once and take its ranks with it. `argv` ends with the ranks' settings snapshot,
    runs/<run>/<stage>/launch.toml, which names the run and the stage."""
    trained = run_and_stage(argv)
    if trained is None:
        return
    asked = threading.Event()

    def send_stop() -> None:
        asked.wait()
        runs.send_once_taken(*trained, "stop")

    threading.Thread(target=send_stop, name="acm-stop", daemon=True).start()
    early_stops.hand_to(asked.set)


def run_and_stage(argv: list[str]) -> tuple[Path, str] | None:
    """The run and stage the ranks train: their settings snapshot, runs/<run>/<stage>/launch.toml,
    ends the launcher's arguments."""
    snapshot = Path(argv[-1]) if argv else Path()
    return (snapshot.parent.parent, snapshot.parent.name) if snapshot.name == "launch.toml" else None


def end_the_group_once_a_rank_died(launch_module, grace: float, argv: list[str]) -> None:
    """Once MLX's launcher says a rank died or failed ("Node with rank N exited with code ..."), the
    ranks left can only wait for it, inside MLX's join or a collective, where no signal's handler runs:
    the launcher's SIGTERM to them, and the launcher with them, would wait for ever (a detached stage
    too, with no one to see it). Unless the launcher has ended `grace` seconds later (and no
    checkpoint is still being written: at most CHECKPOINT_WAIT_S more), it kills its process group,
    itself and the ranks; what they wrote is the last checkpoint."""
    died = threading.Event()
    warn = getattr(launch_module, "log_warning", None)  # how MLX's launcher (0.32) says a rank ended badly
    if warn is None:  # another MLX: its launcher alone, as before
        return

    def warned(*args, **kwargs):
        warn(*args, **kwargs)
        if any(RANK_ENDED_BADLY in str(a) for a in args):
            died.set()

    launch_module.log_warning = warned
    trained = run_and_stage(argv)
    checkpoints = Paths.checkpoints(*trained) if trained else None

    def watch() -> None:
        died.wait()
        time.sleep(grace)
        end = time.monotonic() + CHECKPOINT_WAIT_S
        while checkpoints is not None and being_written(checkpoints) and time.monotonic() < end:
            time.sleep(0.5)
        if os.getpgrp() == os.getpid():  # the group acm started it in: the launcher and its ranks
            os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="acm-rank-death", daemon=True).start()


def main(argv: list[str]) -> None:
    pass_polite_kill_to_ranks(argv)
    if argv[:1] == ["--parent"]:
        end_with(int(argv[1]))
        argv = argv[2:]
    grace = RANK_DEATH_GRACE_S
    if argv[:1] == ["--grace"]:
        grace, argv = float(argv[1]), argv[2:]
    os.environ[LAUNCHER_PID] = str(os.getpid())  # the ranks inherit it
    from mlx._distributed_utils import launch as launch_module

    end_the_group_once_a_rank_died(launch_module, grace, argv)
    sys.argv = ["mlx.launch", *argv]
    launch_module.main()


if __name__ == "__main__":
    main(sys.argv[1:])
