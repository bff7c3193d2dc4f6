"""The base of every stage pane: the app's settings and engine, and long steps with progress.

A long step (a fetch, tokenizer training, prepare) runs in a worker thread, reports progress
through thread-safe messages into the pane's progress bar (with ETA), can be cancelled with `x`
(at once, even in work that sees no cancel: `core.progress.within_reach`), and ends in `step_done`
or in an error shown in the pane and as a notification.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.notifications import SeverityLevel
from textual.widgets import ProgressBar, Static
from textual.worker import Worker, WorkerState

from core.errors import one_line
from core.escapes import visible
from core.progress import Cancelled, CancelToken, within_reach

from ..messages import EngineResult, StageProgress

STEP_WORKER = "step"
CANCEL_BINDING = Binding("x", "cancel_step", "Cancel", tooltip="Cancel the running step; finished work stays")


class Pane(VerticalScroll):
    """A stage's pane. `TITLE` is its tab label."""

    TITLE = ""
    FOCUS = ""  # the widget that takes the focus when the pane is shown, so the arrows move in it, not the page

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.step_cancel: CancelToken | None = None

    @property
    def cfg(self):
        return self.app.cfg

    def on_focus(self) -> None:
        if self.FOCUS:  # the pane stays at its top: its keys' hint above the widget stays in view
            self.query_one(self.FOCUS).focus(scroll_visible=False)

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """Plain text unless asked: notices carry run names, paths and errors' own words, which must
        never be read as markup, nor their control characters reach the terminal."""
        super().notify(visible(message, lines=True), title=title, severity=severity, timeout=timeout, markup=markup)

    def disk_changed(self) -> None:
        """Something on disk this pane may show has changed (a stage ended or moved on, wherever it
        ran): read it again. Panes that show state from disk override this."""

    # ------------------------------------------------------------ engine jobs (MLX work)

    STAGES_ON_ENGINE = ("train", "stages")  # long engine jobs another job would wait behind silently

    def run_on_engine(self, job: str, fn: Callable[..., Any], *args: Any) -> Future:
        """Submit fn to the engine thread; an EngineResult(job) message arrives here when it ends. A job
        that waits behind another (a training stage in the app) is said to wait, not left silent."""
        self._say_it_waits(job)
        fut = self.app.engine.submit_named(job, fn, *args)
        fut.add_done_callback(lambda f: self.post_message(EngineResult(job, f)))
        return fut

    def _say_it_waits(self, job: str) -> None:
        """A job queued behind a training stage in the app is said to wait, not left silent."""
        if self.app.engine.running in self.STAGES_ON_ENGINE:
            self.notify(f"{job} waits for the stage under way in the app (the engine runs one MLX job at a time): "
                        "it starts when that stage ends, or stops (s in the Train pane, x in the Setup pane)",
                        title="Waiting", timeout=8)

    # ------------------------------------------------------------ long steps (worker threads)
    # Panes with long steps add CANCEL_BINDING to their BINDINGS and `yield from self.compose_step()`.

    def compose_step(self) -> ComposeResult:
        yield Static("", classes="step-status heading")
        bar = ProgressBar(classes="step-progress", show_eta=True)
        bar.display = False
        yield bar

    def settings_usable(self) -> bool:
        """False (with a notice) while acm.toml has an error: no stage acts on defaults the user
        never chose."""
        if self.app.config_error:
            self.notify(f"acm.toml has an error; fix it first: {self.app.config_error}", title="Not started",
                        severity="error", timeout=10)
            return False
        return True

    def start_step(self, name: str, fn: Callable[..., Any], *args: Any, on_engine: bool = False) -> bool:
        """Run fn(cfg, report, cancel, *args) in a worker (on the engine thread if it is MLX work,
        with the worker waiting for it); False if a step is already running or the settings are
        unusable."""
        if not self.settings_usable():
            return False
        if self.step_cancel is not None:
            self.notify("a step is already running: cancel it with x first", severity="warning")
            return False
        self.step_cancel = CancelToken()
        if on_engine:
            self._say_it_waits(name)
        self._status(f"{name}…")
        bar = self.query_one(".step-progress", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        self._run_step(name, fn, args, self.step_cancel, on_engine)
        return True

    @work(thread=True, exclusive=True, exit_on_error=False, name=STEP_WORKER)
    def _run_step(self, name: str, fn: Callable[..., Any], args: tuple, cancel: CancelToken,
                  on_engine: bool) -> tuple[str, Any]:
        report = lambda p: self.post_message(StageProgress(self.TITLE, p))  # noqa: E731 (thread-safe)
        if on_engine:
            return name, self.app.engine.call(fn, self.cfg, report, cancel, *args)
        # a cancel ends the step at once even where it cannot see one (the tokenizer's merges)
        return name, within_reach(lambda: fn(self.cfg, report, cancel, *args), cancel)

    def action_cancel_step(self) -> None:
        if self.step_cancel is None:
            self.notify("nothing is running")
            return
        self.step_cancel.cancel()
        self._status("cancelling…")

    def _status(self, text: str | Text) -> None:
        self.query_one(".step-status", Static).update(text)

    @on(StageProgress)
    def _show_progress(self, message: StageProgress) -> None:
        p = message.progress
        self.query_one(".step-progress", ProgressBar).update(total=p.total, progress=p.done)
        total = f"/{p.total:,}" if p.total else ""
        self._status(Text(f"{p.task}: {p.done:,}{total}  {p.note[-60:]}"))

    @on(Worker.StateChanged)
    def _step_finished(self, event: Worker.StateChanged) -> None:
        if event.worker.name != STEP_WORKER or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR,
                                                                   WorkerState.CANCELLED):
            return
        if event.state == WorkerState.CANCELLED:  # Textual's quit cancels its workers, not the work they wait on
            self.stop_work()
        self.step_cancel = None
        self.query_one(".step-progress").display = False
        if event.state == WorkerState.SUCCESS:
            self.step_done(*event.worker.result)
            return
        error = event.worker.error
        if isinstance(error, Cancelled) or event.state == WorkerState.CANCELLED:
            self._status(Text("cancelled; what was complete before is unchanged", style="yellow"))
        else:
            text = one_line(error)
            self._status(Text(f"failed: {text}", style="red"))
            self.notify(text, title=f"{self.TITLE}: step failed", severity="error", timeout=10)
        self.step_ended()

    def on_unmount(self) -> None:
        self.stop_work()

    def stop_work(self) -> None:
        """Quitting (or a hang-up) stops what runs in this pane: a fetch stops its clones, an
        evaluation its batches, so the app ends without waiting for them; what was complete before
        stays. Called as the app ends (its worker cancelled, the pane unmounted), whichever first."""
        if self.step_cancel is not None:
            self.step_cancel.cancel()

    def busy(self) -> bool:
        """Something runs in this pane (quitting would stop it)."""
        return self.step_cancel is not None

    def step_done(self, name: str, result: Any) -> None:
        """A step finished; panes show its result."""
        self.step_ended()

    def step_ended(self) -> None:
        """After any step, successful or not: panes refresh what they show."""
