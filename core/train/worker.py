"""The training process acm starts: `python -m core.train.worker SNAPSHOT`, once per rank under
MLX's launcher (core/train/ranks.py) or alone as a detached stage (core/train/detach.py).

It trains what the snapshot holds (core/train/snapshot.py; never acm.toml) and prints the stage's
events on stdout, one JSON object a line, the keys the recorder writes, for its starter to relay.
Why it could not train is its one `acm: error:` line on stderr, exit 2. A polite kill (SIGTERM)
stops with a checkpoint, SIGUSR1 writes one; a rank ends with its launcher.
"""
from __future__ import annotations

from core.train import early_stops

if __name__ == "__main__":  # a training process: a SIGTERM while the modules below load is kept
    early_stops.keep()

import contextlib  # noqa: E402  (after the handler above: MLX's import alone takes most of a second)
import json  # noqa: E402
import queue  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

from core.config import Config  # noqa: E402
from core.engine import Engine, engines_made, exit_past_abandoned_work  # noqa: E402
from core.errors import INTERRUPTED, READER_GONE, OutputGone, run_command  # noqa: E402
from core.hardware import configure_mlx  # noqa: E402
from core.runs.events import Event  # noqa: E402
from core.train import snapshot  # noqa: E402
from core.train.lifeline import tie_rank_to_launcher  # noqa: E402
from core.train.ranks import in_group  # noqa: E402
from core.train.ready_step import READY_JOB  # noqa: E402
from core.train.snapshot import Launch  # noqa: E402
from core.train.trainer import Control, StageResult, train_stage  # noqa: E402

FINISHED = object()  # the end of a stage's events (never printed)
Follow = Callable[[queue.SimpleQueue, Callable[[], None]], int | None]  # (events, stop) -> 130 or None


def relay(events: queue.SimpleQueue, show: Callable[[Event], None], stop: Callable[[], None],
          say: Callable[[str], None], poll_s: float = 0.2) -> int | None:
    """Hand a stage's events to `show` until FINISHED. Ctrl-C once (waiting or showing) calls
    `stop`; twice returns 130 at once. An output whose reader went calls `stop` too: the stage ends
    at its next step with a checkpoint, then the broken pipe is raised to end the command."""
    interrupts, gone = 0, None
    with interrupts_as_events(events):
        while (event := _next(events, poll_s)) is not FINISHED:
            if event is INTERRUPT:
                interrupts += 1
                if interrupts > 1:
                    if gone is None:
                        say("interrupted: exiting now; the last checkpoint stays loadable")
                    return INTERRUPTED
                if gone is None:
                    say("stopping at the next step and saving a checkpoint (Ctrl-C again to quit now)")
                stop()
            elif event is not None and gone is None:
                try:
                    show(event)
                except READER_GONE as e:  # the reader went (`| head`): stop with a checkpoint, then end so
                    gone = e
                    stop()
    if gone is not None:
        raise OutputGone() from gone
    return None


INTERRUPT = object()  # a Ctrl-C, in a stage's events while a command follows them (never printed)


@contextlib.contextmanager
def interrupts_as_events(events: queue.SimpleQueue) -> Iterator[None]:
    """While the main thread follows `events`, a Ctrl-C (or a polite kill acm takes as one) is an
    INTERRUPT among them, not a KeyboardInterrupt. Python raises that where the main thread next
    checks for signals: at a loop's jump back to its `try`, or just after the queue handed over an
    event; so a Ctrl-C while the thread waited for the interpreter's lock after a quiet poll left
    the relay, and the command quit without its checkpoint (a polite kill of a ranks run lost the
    run), and one as the last event came lost it. Whatever the signal's handler does besides
    (counting a polite kill) it still does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def as_event(signum, frame) -> None:
        try:
            before[signum](signum, frame)
        except KeyboardInterrupt:
            events.put(INTERRUPT)

    for signum, handler in before.items():
        if callable(handler):
            signal.signal(signum, as_event)
    try:
        yield
    finally:
        for signum, handler in before.items():
            if callable(handler):
                signal.signal(signum, handler)


def _next(events: queue.SimpleQueue, poll_s: float):
    """The next event, or None after `poll_s` without one."""
    try:
        return events.get(timeout=poll_s)
    except queue.Empty:
        return None


def train_here(cfg: Config, launch: Launch, run: Path, follow: Follow,
               control: Control | None = None, engine: Engine | None = None) -> StageResult | None:
    """Train `launch` in this process on the engine thread (`engine`'s, where the command readied
    one beside its start), its events handed to `follow` (which returns 130 to quit at once: then
    None; the stop it is given is Ctrl-C's, said in the result's `interrupted`); the stage's error
    re-raised here. A stop while the stage still waits for the readying ends it unstarted."""
    events: queue.SimpleQueue = queue.SimpleQueue()
    control = control or Control()
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, lambda *_: control.save_now())
    engine = engine or Engine()
    fut = engine.submit(train_stage, cfg, launch.stage, run, events.put, control, launch.resume, launch.max_steps,
                        named_steps=launch.steps)
    fut.add_done_callback(lambda f: events.put(FINISHED))

    def stop() -> None:
        control.interrupt()
        if engine.abandon(READY_JOB):  # nothing trained yet: nothing to keep, and no wait for the readying
            fut.cancel()

    if follow(events, stop) is not None:  # quit now: the stage is left running, to end with the process
        engine.abandon()
        return None
    engine.shutdown(abandon=READY_JOB)
    if fut.cancelled():
        return StageResult(launch.stage, run, 0, stopped_early=True, last_checkpoint=None, best_val_loss=None,
                           interrupted=True)
    return replace(fut.result(), interrupted=control.interrupted)


def print_event(event: Event) -> None:
    """An event as its JSON line (the wire format: the recorder's keys)."""
    print(json.dumps(event.to_json()), flush=True)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _train(path: Path) -> int:
    if in_group():
        tie_rank_to_launcher()  # a rank never outlives its launcher
    cfg, launch = snapshot.read(path)
    control = Control()
    early_stops.hand_to(control.stop)  # a polite kill stops with a checkpoint
    done = train_here(cfg, launch, cfg.locations.run(launch.run),
                      lambda events, stop: relay(events, print_event, stop, _say), control)
    return INTERRUPTED if done is None else 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m core.train.worker SNAPSHOT (acm starts it; see core/train/snapshot.py)",
              file=sys.stderr)
        return 2
    configure_mlx()
    with engines_made() as engines:
        status = run_command(lambda: _train(Path(argv[0])))
    exit_past_abandoned_work(status, engines)  # quit now: the stage left running ends with the process
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
