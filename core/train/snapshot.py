"""What a training process started by acm trains (each rank, a detached stage), handed over as one
file: runs/<run>/<stage>/launch.toml, written atomically before the process starts.

It holds a [launch] table (stage, run, resume, steps, max_steps, and the folder the settings' paths
are read from) and the settings as written, the run's config.toml's shape: a run started in the
background records its folders as one trained in the foreground does (they compare alike). The process reads this file
alone, never acm.toml, so it trains with exactly what its starter had in memory (a pipeline's time
share, --steps and --time applied).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import tomli_w

from core import atomic, config
from core.errors import read_back
from core.paths import Paths

WORKER = "core.train.worker"  # the one module acm starts to train: never the command line
HEADER = "# what `python -m core.train.worker` trains: [launch], then the settings it trains with\n\n"


@dataclass(frozen=True)
class Launch:
    stage: str
    run: str  # the run's folder name under the settings' runs folder
    resume: bool = False
    steps: int | None = None  # steps asked for by name: a resumed run's new total, past a finished plan;
    # a new stage's most under a time budget
    max_steps: int | None = None  # stop after this many steps of this call
    root: str | None = field(default=None, compare=False)  # the folder the settings' relative paths are
    # read from (acm.toml's); an older snapshot has none, and its paths absolute


def location(run: Path, stage: str) -> Path:
    return Paths.launch_snapshot(run, stage)


def write(cfg: config.Config, launch: Launch, run: Path) -> Path:
    """Write the snapshot into `run`'s stage folder; its path."""
    path = location(run, launch.stage)
    config.validate(cfg, str(path))
    launch = replace(launch, root=str(cfg.root.resolve()))
    fields = {key: value for key, value in asdict(launch).items() if value is not None}  # TOML has no None
    atomic.write_text(path, HEADER + tomli_w.dumps({"launch": fields} | cfg.to_dict()))
    return path


def read(path: Path) -> tuple[config.Config, Launch]:
    """The settings and the launch a snapshot holds; a damaged one refused in one line."""
    table = config.read_table(path)
    with read_back(f"the launch snapshot {path}", "start the stage again"):
        launch = Launch(**table.pop("launch"))
        if not (isinstance(launch.stage, str) and isinstance(launch.run, str) and isinstance(launch.resume, bool)
                and isinstance(launch.root, str | None)):
            raise TypeError("stage, run, resume and root have the wrong types")
    root = Path(launch.root) if launch.root else Path(path).parent
    return config.from_dict(table, source=str(path), root=root, written=True), launch


def command(snapshot: Path) -> list[str]:
    """The arguments after the Python interpreter that train what `snapshot` holds."""
    return ["-m", WORKER, str(snapshot)]
