"""How a command follows its stage's events (core.train.worker.relay): Ctrl-C once stops the stage,
whenever in the relay's loop it comes, and no event is lost to it."""
from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import threading

import pytest

from core.errors import INTERRUPTED
from core.train.worker import FINISHED, relay

STOPPING = "stopping at the next step and saving a checkpoint (Ctrl-C again to quit now)"
QUITTING = "interrupted: exiting now; the last checkpoint stays loadable"
LONG = 30  # seconds a step of a test may wait for what it waits for, before it fails instead


@pytest.fixture
def ctrl_c():
    """SIGINT raising KeyboardInterrupt, as in a command; the handler before it restored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _busy(loops: int) -> None:
    """Hold the interpreter's lock in pure Python, as a thread drawing progress or reading the ranks'
    output does in bursts: the relay's main thread waits for it after each quiet poll."""
    for _ in range(loops):
        pass


def _one_stage(loops_before: int) -> tuple | None:
    """A stage whose Ctrl-C comes after `loops_before` loops of another thread holding the lock: the
    relay's status, its stops and its lines; None where a KeyboardInterrupt left the relay."""
    events, stops, said = queue.SimpleQueue(), [], []
    following, stopped = threading.Event(), threading.Event()
    events.put("the stage's first event")

    def stage() -> None:
        following.wait()  # the relay has shown the first event: it is in its loop
        _busy(loops_before)
        os.kill(os.getpid(), signal.SIGINT)
        _busy(200_000)
        stopped.wait(LONG)  # the stage ends once stopped (a lost Ctrl-C fails the test, not hangs it)
        events.put(FINISHED)

    worker = threading.Thread(target=stage)
    worker.start()
    try:
        return relay(events, lambda event: following.set(), lambda: (stops.append(1), stopped.set()), said.append,
                     poll_s=0.0005), len(stops), said
    except KeyboardInterrupt:
        stopped.set()
        return None
    finally:
        worker.join()


def test_ctrl_c_at_any_instant_of_the_relay_stops_the_stage_once(ctrl_c):
    """The Ctrl-C (or polite kill) comes while another thread holds the interpreter's lock and the
    relay's polls keep timing out: it is the stage's stop, and the stage's last event still ends the
    relay (a KeyboardInterrupt out of its loop quit the command without its checkpoint, and a ranks
    run without its status; one just after an event was taken lost the event)."""
    rng = random.Random(7)
    outcomes = [_one_stage(rng.randrange(50_000, 300_000)) for _ in range(25)]
    assert all(outcome == (None, 1, [STOPPING]) for outcome in outcomes), outcomes


def _relay_with_user(show, user, unblock=lambda: None) -> tuple:
    """Relay a stage of one event, shown by `show`, while `user(stopped, returned)` sends Ctrl-Cs
    from another thread (SIGINT raising KeyboardInterrupt until the relay returns); past LONG
    without the relay's return, `unblock()` and the stage ends (a test that fails, not one that
    hangs). The relay's status, its stops (each "in time", or "late" past LONG) and its lines."""
    events, stops, said = queue.SimpleQueue(), [], []
    stopped, returned, gave_up = threading.Event(), threading.Event(), threading.Event()
    events.put("the stage's first event")

    def run_user() -> None:
        user(stopped, returned)
        if not returned.wait(LONG):
            gave_up.set()
            unblock()
            events.put(FINISHED)

    def ctrl_c_while_relaying(signum, frame) -> None:  # one sent as the relay returned is dropped
        if not returned.is_set():
            raise KeyboardInterrupt

    before = signal.signal(signal.SIGINT, ctrl_c_while_relaying)
    thread = threading.Thread(target=run_user, daemon=True)
    thread.start()
    try:
        status = relay(events, show, lambda: (stops.append("in time" if not gave_up.is_set() else "late"),
                                              stopped.set()), said.append, poll_s=0.01)
    except KeyboardInterrupt:  # not pytest's: it would end the session
        pytest.fail("a Ctrl-C left the relay as KeyboardInterrupt")
    finally:
        returned.set()
        thread.join()
        signal.signal(signal.SIGINT, before)
    return status, stops, said


def test_a_second_ctrl_c_quits_at_once():
    following = threading.Event()

    def user(stopped: threading.Event, returned: threading.Event) -> None:
        following.wait(LONG)
        os.kill(os.getpid(), signal.SIGINT)
        stopped.wait(LONG)
        os.kill(os.getpid(), signal.SIGINT)

    assert _relay_with_user(lambda event: following.set(), user) == (INTERRUPTED, ["in time"], [STOPPING, QUITTING])


def test_ctrl_c_breaks_off_an_output_that_blocks():
    """The terminal is paused (Ctrl-S) or the reader of `--json` stopped reading: the relay is stuck
    writing an event. Ctrl-C still stops the stage, and another one still quits. (The user presses
    it until the command ends: one that comes just before the write starts blocking is taken only
    when the write ends, in Python as in C.)"""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 4096)
    os.set_blocking(write_end, True)
    writing = threading.Event()

    def show(event) -> None:  # as a print to a full pipe
        writing.set()
        os.write(write_end, b"an event's line\n" * 512)

    def user(stopped: threading.Event, returned: threading.Event) -> None:
        writing.wait(LONG)
        for _ in range(int(LONG / 0.2)):  # then the write is unblocked: the test fails, not hangs
            if returned.wait(0.2):
                return
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def drain() -> None:
        os.set_blocking(read_end, False)
        with contextlib.suppress(BlockingIOError):
            while os.read(read_end, 65536):
                pass

    try:
        assert _relay_with_user(show, user, drain) == (INTERRUPTED, ["in time"], [STOPPING, QUITTING])
    finally:
        os.close(read_end)
        os.close(write_end)
