"""How a command follows its stage's events (core.train.worker.relay): Ctrl-C once stops the stage,
whenever in the relay's loop it comes, and no event is lost to it."""
from __future__ import annotations

import os
import queue
import random
import signal
import threading

import pytest

from core.errors import INTERRUPTED
from core.train.worker import FINISHED, relay

STOPPING = "stopping at the next step and saving a checkpoint (Ctrl-C again to quit now)"


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
        stopped.wait()  # the stage ends once stopped
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


def test_a_second_ctrl_c_quits_at_once(ctrl_c):
    events, stops, said = queue.SimpleQueue(), [], []
    following, stopped = threading.Event(), threading.Event()
    events.put("the stage's first event")

    def user() -> None:
        following.wait()
        os.kill(os.getpid(), signal.SIGINT)
        stopped.wait()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=user, daemon=True).start()
    try:
        status = relay(events, lambda event: following.set(), lambda: (stops.append(1), stopped.set()), said.append,
                       poll_s=0.01)
    except KeyboardInterrupt:  # not pytest's: it would end the session
        pytest.fail("a Ctrl-C left the relay as KeyboardInterrupt")
    assert status == INTERRUPTED and len(stops) == 1
    assert said == [STOPPING, "interrupted: exiting now; the last checkpoint stays loadable"]
