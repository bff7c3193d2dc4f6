"""Progress on the command line: one live display at a time, stopped when its step ends.

Everything printed while a display is live goes through the display's own console, so it lands
above the bars; a second console would write under them, where the next redraw erases it. When
the output is not a terminal nothing is redrawn: a line when a task ends, and one now and then
while it runs, with its ETA.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

from core.cli.output import console_for
from core.escapes import visible
from core.progress import Progress, Reporter
from core.runs.events import Eval, Event, Log, Metrics, Sample, State
from core.train.budget import UNPLANNED

PLAIN_EVERY_S = 30.0  # without a terminal: a running task's line at most this often


def clock_text(seconds: float) -> str:
    minutes, s = divmod(int(max(seconds, 0)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"


def describe(event: Event) -> str | None:
    """A training event as one line (None: nothing to say)."""
    if isinstance(event, Metrics):
        mfu = f" mfu {event.mfu:.1%}" if event.mfu is not None else ""
        ranks = f" ({event.ranks} ranks)" if (event.ranks or 1) > 1 else ""
        planned = event.total < UNPLANNED  # a time budget's steps are known once the first are timed
        total = event.total if planned else "?"
        eta = f" eta {clock_text(event.eta_s)}" if planned and event.eta_s is not None else ""
        return (f"step {event.step}/{total} loss {event.loss:.4f} lr {event.lr:.2e} "
                f"{event.tokens_per_s:,.0f} tok/s{ranks}{mfu} epoch {event.epoch:.2f} "
                f"mem {event.memory_active / 2**30:.2f}/{event.memory_peak / 2**30:.2f} GiB{eta}")
    if isinstance(event, Eval):
        return f"step {event.step} val loss {event.val_loss:.4f} (ppl {event.val_ppl:.1f})"
    if isinstance(event, Log):
        return event.text
    if isinstance(event, Sample):
        return f"step {event.step} sample: {sample_preview(event.text)}  [{event.marks()}]"
    return None


def sample_preview(text: str, lines: int = 2, width: int = 100) -> str:
    """The first lines of a generated script on one line (⏎ between them, any other control character
    escaped), cut to `width`."""
    parts = [visible(line.strip()) for line in text.splitlines() if line.strip()]
    kept = " ⏎ ".join(parts[:lines]) or "(nothing)"
    return kept[:width] + ("…" if len(parts) > lines or len(kept) > width else "")


class EtaColumn(ProgressColumn):
    """The ETA a task carries (a trainer's, from its measured step time), else rich's estimate;
    nothing once the task is over or while its total is unknown."""

    def render(self, task: Task) -> Text:
        if task.finished or task.total is None:
            return Text("")
        eta = task.fields.get("eta_s")
        eta = task.time_remaining if eta is None else eta
        return Text(f"eta {'-:--:--' if eta is None else clock_text(eta)}", style="progress.remaining")


class StepDisplay:
    """One step's progress: a bar per task (a data step's "scanning", "validating"...; a training
    stage's steps with loss, tokens/s and ETA), and lines printed above them. A task's bar stops
    when the task says it is over, every bar when the step ends; what they show last stays."""

    def __init__(self, console: Console, label: str | None = None, clock: Callable[[], float] = time.monotonic,
                 plain_every_s: float = PLAIN_EVERY_S):
        self.console, self.label, self.clock, self.every = console, label, clock, plain_every_s
        self.live = console.is_terminal
        self.bars = RichProgress(SpinnerColumn(finished_text="[green]✓[/]"), TextColumn("{task.description:<14}"),
                                 BarColumn(), MofNCompleteColumn(), EtaColumn(), TimeElapsedColumn(),
                                 TextColumn("[dim]{task.fields[note]}"), console=console, get_time=clock,
                                 disable=not self.live)
        self.tasks: dict[str, TaskID] = {}
        self.training: TaskID | None = None  # the bar of a training stage's steps
        self.last: dict[str, Progress] = {}  # without a terminal: each task's last report,
        self.started: dict[str, float] = {}  # when it began
        self.printed: dict[str, float] = {}  # and when its last line was printed

    def __enter__(self) -> StepDisplay:
        self.bars.start()
        return self

    def __exit__(self, exc_type, *_) -> None:
        """The step is over: every bar stops where it is (a task of unknown total at its count)."""
        for name in list(self.tasks if self.live else self.last):
            if self.live:
                self._stop(self.tasks[name], ended=exc_type is None)
            elif exc_type is None and not self.last[name].finished:
                self._plain_line(self.last[name], final=True)
        self.bars.stop()

    def print(self, text: str) -> None:
        """A line above the bars (rich markup is not read: a line may hold any brackets)."""
        self.console.print(text, markup=False, highlight=False)

    # ------------------------------------------------------------ tasks of a step

    def report(self, p: Progress) -> None:
        """A task's progress (the Reporter a step is given)."""
        if not self.live:
            return self._plain(p)
        if p.task not in self.tasks:
            self.tasks[p.task] = self.bars.add_task(p.task, total=p.total, note="")
        task = self.tasks[p.task]
        self.bars.update(task, completed=p.done, total=p.total, note=escape(p.note[-40:]))  # a path, never markup
        if p.finished:
            self._stop(task, ended=True)

    def _stop(self, task_id: TaskID, ended: bool) -> None:
        """A task that ended shows full (its spinner a tick, even when its total was never known);
        a training stage's bar keeps its steps of total, stopped early or not."""
        task = next(t for t in self.bars.tasks if t.id == task_id)
        if ended and task_id != self.training and (task.total is None or task.completed < task.total):
            self.bars.update(task_id, total=task.completed)
        self.bars.stop_task(task_id)

    def _plain(self, p: Progress) -> None:
        now = self.clock()
        self.started.setdefault(p.task, now)
        self.last[p.task] = p
        if p.finished:
            self._plain_line(p, final=True)
        elif now - self.printed.setdefault(p.task, now) >= self.every:
            self._plain_line(p, final=False)

    def _plain_line(self, p: Progress, final: bool) -> None:
        now = self.clock()
        self.printed[p.task] = now
        elapsed = now - self.started.get(p.task, now)
        count = f"{p.done:,}/{p.total:,}" if p.total else f"{p.done:,}"
        if final:
            self.print(f"  {p.task}: {count} in {clock_text(elapsed)}")
            return
        eta = (p.total - p.done) * elapsed / p.done if p.total and p.done and elapsed > 0 else None
        when = f" eta {clock_text(eta)}" if eta is not None else ""
        self.print(f"  {p.task}: {count}{when}" + (f" ({p.note})" if p.note else ""))

    # ------------------------------------------------------------ a training stage

    def train_event(self, event: Event) -> None:
        """A training event: its line above the bar (a report, a val check, the plan), the bar moved."""
        if self.live and isinstance(event, (Metrics, State)) and event.step is not None:
            self._move_training_bar(event)
        line = describe(event)
        if line is not None:
            self.print(line)

    def _move_training_bar(self, event: Metrics | State) -> None:
        total = event.total
        total = total if total is not None and total < UNPLANNED else None  # a time budget's steps: once timed
        if self.training is None:
            name = self.label or event.stage or "training"
            self.training = self.tasks[name] = self.bars.add_task(name, total=total, note="", eta_s=None)
        fields = {}
        if isinstance(event, Metrics):
            fields = {"note": f"loss {event.loss:.3f}  {event.tokens_per_s:,.0f} tok/s", "eta_s": event.eta_s}
        self.bars.update(self.training, completed=event.step, total=total, **fields)


@contextlib.contextmanager
def progress_bars() -> Iterator[Reporter]:
    """A Reporter for one command's step, drawn on stderr and stopped when the step ends."""
    with StepDisplay(console_for(stderr=True)) as display:
        yield display.report
