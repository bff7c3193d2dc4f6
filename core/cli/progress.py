"""Progress bars with ETA for the command line (rich, which Textual already brings)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

from core.cli.output import console_for
from core.progress import Progress, Reporter


@contextlib.contextmanager
def progress_bars() -> Iterator[Reporter]:
    """A Reporter that draws one bar per task (e.g. cloning, validating) on stderr."""

    bars = RichProgress(SpinnerColumn(), TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), TimeElapsedColumn(),
                        TextColumn("[dim]{task.fields[note]}", justify="left"),
                        console=console_for(stderr=True), transient=False)
    tasks: dict[str, int] = {}

    def report(p: Progress) -> None:
        if p.task not in tasks:
            tasks[p.task] = bars.add_task(p.task, total=p.total, note="")
        bars.update(tasks[p.task], completed=p.done, total=p.total, note=p.note[-40:])

    with bars:
        yield report
