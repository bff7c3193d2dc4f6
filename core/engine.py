"""The engine: one thread that owns all MLX work.

MLX streams belong to the thread that created them (ml-explore/mlx#3727), so model building,
compiled steps, evaluation, checkpoints and generation all run here. Other threads (the TUI,
the CLI) submit callables and get a Future back; results and errors travel through it.
"""
from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from core.errors import leave_signals_to_main
from core.hardware import configure_mlx

_STOP = object()
POLL_S = 0.1  # how often a waiting caller looks up, so a Ctrl-C reaches it within this
_MADE: list[list] = []  # the engines made inside each `engines_made()` under way


@contextlib.contextmanager
def engines_made() -> Iterator[list[Engine]]:
    """The engines made inside (a command's own), to look at once it has ended."""
    made: list[Engine] = []
    _MADE.append(made)
    try:
        yield made
    finally:
        _MADE.remove(made)


def exit_past_abandoned_work(status: int, engines: Iterable[Engine]) -> None:
    """End the process now, its output flushed, where a shutdown left one of `engines` running a job
    nobody needs (`shutdown(abandon=...)`): waiting for it would be for nothing, and MLX torn down
    beneath it may abort the process. Elsewhere, return."""
    if any(engine.abandoned for engine in engines):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def wait_for(fut: Future) -> Any:
    """The future's result, waited for in short slices: Python runs a signal's handler only between
    bytecodes of the main thread, so a Ctrl-C delivered to another thread (the engine's) would
    otherwise wait until the job ends."""
    while True:
        try:
            return fut.result(POLL_S)
        except FutureTimeout:
            continue


class Engine:
    def __init__(self, name: str = "acm-engine"):
        configure_mlx()  # before the engine's first MLX work
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = threading.Event()
        self.running: str | None = None  # the name of the job under way (submit's `name`), if any
        self._abandoned = False  # a shutdown left the job under way: cancel what follows it
        self._turn = threading.Lock()  # a job's start and end against a shutdown's abandoning it
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        for made in _MADE:
            made.append(self)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Run fn(*args, **kwargs) on the engine thread, after the jobs already queued."""
        return self.submit_named("", fn, *args, **kwargs)

    def submit_named(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """submit, with the job's name shown in `running` while it runs."""
        if self._stopped.is_set():
            raise RuntimeError("the engine has been shut down")
        fut: Future = Future()
        self._jobs.put((fut, name, fn, args, kwargs))
        return fut

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run fn on the engine thread and wait for its result (re-raising its exception)."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result(timeout)

    def call_named(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """call, with the job's name shown in `running` while it runs."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        return self.submit_named(name, fn, *args).result()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def shutdown(self, wait: bool = True, abandon: str | None = None) -> None:
        """Finish the queued jobs, then stop taking new ones. A job named `abandon` under way is not
        waited for: work nobody needs, left to end with the process (`busy` stays true meanwhile),
        and the jobs queued behind it are cancelled, never started (their futures say so)."""
        if not self._stopped.is_set():
            self._jobs.put(_STOP)
            while wait and not self._stopped.wait(POLL_S):
                if abandon is not None and self.abandon(abandon):
                    return

    def abandon(self, name: str | None = None) -> bool:
        """Leave the job under way if it is `name` (None: whichever it is), and say whether it was:
        it runs on, unwaited for, and the jobs queued behind it are cancelled, never started (their
        futures say so when they come up; a caller may cancel its own at once)."""
        with self._turn:  # the job seen is the job abandoned: none starts in between
            if self.running is None or (name is not None and self.running != name):
                return False
            self._abandoned = True
            return True

    @property
    def queued(self) -> bool:
        """A job (or a shutdown) waits behind the one under way."""
        return not self._jobs.empty()

    @property
    def abandoned(self) -> bool:
        """A shutdown left the job under way, and it still runs."""
        return self._abandoned and self.running is not None

    @property
    def busy(self) -> bool:
        """A job is under way, or the engine has not yet reached a shutdown's stop."""
        return self.running is not None or (not self._stopped.is_set() and not self._jobs.empty())

    def _loop(self) -> None:
        leave_signals_to_main()
        while True:
            job = self._jobs.get()
            if job is _STOP:
                self._stopped.set()
                # Park instead of returning: when a thread that ran MLX exits, MLX's thread-local
                # destructors take the GIL, and if that races with interpreter exit the process
                # aborts ("terminate called without an active exception"). A parked daemon thread
                # simply ends with the process.
                threading.Event().wait()
            fut, name, fn, args, kwargs = job
            with self._turn:
                if self._abandoned:
                    fut.cancel()
                if not fut.set_running_or_notify_cancel():
                    continue
                self.running = name
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as e:  # delivered to whoever waits on the future
                fut.set_exception(e)
            finally:
                with self._turn:
                    self.running = None

