"""One job at a time on a thread of its own: a checkpoint written while the steps go on.

The caller starts a job, polls `done`, and `take`s its result (waiting for it), where the job's
exception is raised again, on the caller's thread. A second job waits until the first is taken,
so at most one write is in flight and a failure is never lost.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from core.errors import leave_signals_to_main


class Background:
    def __init__(self, name: str):
        self.name = name
        self.tag: Any = None  # what the caller needs to know of the job in flight
        self._thread: threading.Thread | None = None
        self._result: Any = None
        self._error: BaseException | None = None

    @property
    def pending(self) -> bool:
        """A job started and not yet taken."""
        return self._thread is not None

    @property
    def done(self) -> bool:
        """The job in flight has finished (take() will not wait)."""
        return self._thread is not None and not self._thread.is_alive()

    def start(self, job: Callable[[], Any], tag: Any = None) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: the previous job was not taken")
        self.tag, self._result, self._error = tag, None, None
        self._thread = threading.Thread(target=self._run, args=(job,), name=self.name)
        self._thread.start()

    def _run(self, job: Callable[[], Any]) -> None:
        leave_signals_to_main()
        try:
            self._result = job()
        except BaseException as e:  # raised again by take(), on the caller's thread
            self._error = e

    def take(self) -> Any:
        """The job's result once it is done (waiting for it); its exception, raised here."""
        if self._thread is not None:
            self._thread.join()
        self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self._result
