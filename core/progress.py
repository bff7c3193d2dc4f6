"""Progress and cancellation for long steps, shared by every stage.

A stage reports `Progress` events through a plain callback (the CLI draws a rich progress bar,
the TUI posts a message) and checks a `CancelToken` between units of work.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from core.errors import AcmError
from core.escapes import visible, without_surrogates

T = TypeVar("T")
WAIT_S = 0.1  # how often a caller waiting on a step looks up: a cancel or a Ctrl-C is taken within this


class Cancelled(AcmError):
    """The user stopped the step; whatever was complete before it is kept."""


@dataclass
class Progress:
    task: str  # what is being done, e.g. "cloning", "validating"
    done: int
    total: int | None = None  # None: unknown
    note: str = ""  # the current item, e.g. a repository name
    started: float = field(default_factory=time.monotonic)
    finished: bool = False  # the task's last report: a display stops its clock (its total may never have been known)

    @property
    def eta_s(self) -> float | None:
        if not self.total or self.done <= 0:
            return None
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        return (self.total - self.done) / rate


Reporter = Callable[[Progress], None]


def no_report(_: Progress) -> None:
    pass


class CancelToken:
    def __init__(self):
        self._event = threading.Event()
        self._out_of_reach = threading.Event()

    @contextlib.contextmanager
    def out_of_reach(self) -> Iterator[None]:
        """Work that sees no cancel until it returns (a library's native loop) and writes nothing of
        the project meanwhile, checking the cancel as soon as it returns: a caller who cancelled may
        walk away from it (end the process) rather than wait."""
        self._out_of_reach.set()
        try:
            yield
        finally:
            self._out_of_reach.clear()

    @property
    def may_walk_away(self) -> bool:
        return self._out_of_reach.is_set()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled; nothing half-written was kept")


class Ticker:
    """Counts units of one task and reports at most every `interval` seconds (and at the end). It
    reports the task at its start too, so that a display times the task from there, not from its
    first unit done (a one-chunk task would read "done in 0:00:00")."""

    def __init__(self, report: Reporter, task: str, total: int | None = None, interval: float = 0.1):
        self.report, self.interval = report, interval
        self.state = Progress(task, 0, total)
        self._last = time.monotonic()
        self._report()

    def advance(self, n: int = 1, note: str = "") -> None:
        self.state.done += n
        if note:
            self.state.note = note
        now = time.monotonic()
        if now - self._last >= self.interval or (n and self.state.done == self.state.total):
            self._last = now
            self._report()

    def say(self, note: str) -> None:
        """What the task is doing now, reported at once (the part of it that has begun)."""
        self.state.note = note
        self._last = time.monotonic()
        self._report()

    def finish(self) -> None:
        """The last report, saying the task is over (a task of unknown total cannot be told otherwise)."""
        self.state.finished = True
        self._report()

    def _report(self) -> None:
        """The state as reported: its note (a file's name, a repository's path: data, not acm's words)
        with control characters and bytes that are not UTF-8 escaped, so that no display stumbles on it."""
        self.report(Progress(**self.state.__dict__ | {"note": visible(without_surrogates(self.state.note))}))


def within_reach(step: Callable[[], T], cancel: CancelToken) -> T:
    """step() on a daemon thread of its own, waited for in short slices, so that neither a cancel nor a
    Ctrl-C waits on work that sees neither (a library's native loop, `CancelToken.out_of_reach`: the
    tokenizer's merges, minutes on a large corpus). A cancel while the step is out of reach raises
    Cancelled at once; a Ctrl-C cancels the step and is raised once the step ends or is out of reach.
    A step left so runs on unwaited for, writes nothing (it checks the cancel as it returns) and ends
    with the process at the latest."""
    outcome: dict = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["result"] = step()
        except BaseException as e:  # noqa: BLE001 (the caller's to raise)
            outcome["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="acm-step", daemon=True).start()
    try:
        while not done.wait(WAIT_S):
            if cancel.cancelled and cancel.may_walk_away:
                raise Cancelled("cancelled; nothing half-written was kept")
    except KeyboardInterrupt:
        cancel.cancel()
        while not done.wait(WAIT_S) and not cancel.may_walk_away:
            pass
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
