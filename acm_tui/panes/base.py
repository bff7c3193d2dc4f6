"""The base of every stage pane: access to the app's settings and engine, and engine jobs."""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable

from textual.containers import VerticalScroll

from ..messages import EngineResult


class Pane(VerticalScroll):
    """A stage's pane. `TITLE` is its tab label; `run_on_engine` keeps MLX work off the UI thread."""

    TITLE = ""

    @property
    def cfg(self):
        return self.app.cfg

    def run_on_engine(self, job: str, fn: Callable[..., Any], *args: Any) -> Future:
        """Submit fn to the engine thread; an EngineResult(job) message arrives here when it ends."""
        fut = self.app.engine.submit(fn, *args)
        fut.add_done_callback(lambda f: self.post_message(EngineResult(job, f)))
        return fut
