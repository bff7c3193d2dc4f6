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
import os  # noqa: E402
import queue  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

from core.atomic import open_appending, strict_json  # noqa: E402
from core.config import Config  # noqa: E402
from core.engine import Engine, engines_made, exit_past_abandoned_work  # noqa: E402
from core.errors import (  # noqa: E402
    INTERRUPTED,
    MAIN_THREAD_SIGNALS,
    AcmError,
    OutputGone,
    run_command,
    written_unless_lost,  # noqa: E402
)
from core.hardware import configure_mlx  # noqa: E402
from core.paths import Paths  # noqa: E402
from core.runs.events import Event  # noqa: E402
from core.train import snapshot  # noqa: E402
from core.train.lifeline import tie_rank_to_launcher  # noqa: E402
from core.train.ranks import REFUSAL, in_group  # noqa: E402
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
    relayed = _Relayed(show, stop, say)
    with relayed.counting_interrupts(events):
        while True:
            if (status := relayed.act_on_interrupts()) is not None:
                return status
            event = _next(events, poll_s)
            if event is FINISHED:
                break
            if event is not None and event is not WAKE:
                relayed.show_one(event)
    if relayed.gone is not None:
        raise OutputGone() from relayed.gone
    return None


WAKE = object()  # put among a stage's events by a Ctrl-C, so that a relay waiting for one looks (never shown)


class _Relayed:
    """A relay's Ctrl-Cs and its output.

    Python raises a signal's KeyboardInterrupt where the main thread next checks for signals: at a
    loop's jump back to its `try`, or just after the queue handed over an event. So a Ctrl-C that
    came while the thread waited for the interpreter's lock after a quiet poll left the relay's loop,
    and the command quit without its checkpoint (a polite kill of a ranks run lost the run), and one
    that came as the stage's last event was taken lost that event. Here the signal's handler only
    counts the Ctrl-C (whatever it does besides, counting a polite kill, it still does) and wakes the
    relay, which acts on it before its next event; only while an event is being shown does it raise,
    so that an output that blocks (a paused terminal, a reader that stopped) cannot hold it."""

    def __init__(self, show: Callable[[Event], None], stop: Callable[[], None], say: Callable[[str], None]):
        self.show, self.stop, self.say = show, stop, say
        self.received = 0  # Ctrl-Cs the handler counted (only it writes this)
        self.acted_on = 0  # ... and those the relay acted on (only the relay writes this)
        self.showing = False
        self.gone: BaseException | None = None

    def act_on_interrupts(self) -> int | None:
        """The first Ctrl-C stops the stage (then says so: an output that blocks holds no stop); the
        second returns 130."""
        while self.acted_on < self.received:
            self.acted_on += 1
            if self.acted_on > 1:
                self._output(self.say, "interrupted: exiting now; the last checkpoint stays loadable")
                return INTERRUPTED
            self.stop()
            self._output(self.say, "stopping at the next step and saving a checkpoint (Ctrl-C again to quit now)")
        return None

    def show_one(self, event: Event) -> None:
        self._output(self.show, event)

    def _output(self, write: Callable, what) -> None:
        """`write(what)`, where a Ctrl-C breaks off a write that blocks, and nothing more is written
        once the reader has gone."""
        if self.gone is not None:
            return
        try:
            try:
                self.showing = True
                gone = written_unless_lost(write, what)
            finally:
                self.showing = False
        except KeyboardInterrupt:  # counted already: acted on before the next event
            return
        if gone is not None:  # the reader went (`| head`, a hang-up): stop with a checkpoint, then end so
            self.gone = gone
            self.stop()

    @contextlib.contextmanager
    def counting_interrupts(self, events: queue.SimpleQueue) -> Iterator[None]:
        """Ctrl-C and the polite kills handled as the class says while the main thread relays
        (elsewhere, signals reach no relay's thread: nothing to change)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        before = {signum: signal.getsignal(signum) for signum in MAIN_THREAD_SIGNALS}

        def counted(signum, frame) -> None:
            try:
                before[signum](signum, frame)
            except KeyboardInterrupt:
                self.received += 1
                events.put(WAKE)
                if self.showing:
                    raise

        for signum, handler in before.items():
            if callable(handler):
                signal.signal(signum, counted)
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
    print(strict_json(event.to_json()), flush=True)  # a NaN gradient norm as null: JSON every reader takes


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _train(path: Path) -> int:
    if in_group():
        tie_rank_to_launcher()  # a rank never outlives its launcher
    cfg, launch = snapshot.read(path)
    control = Control()
    early_stops.hand_to(control.stop)  # a polite kill stops with a checkpoint
    run = cfg.locations.run(launch.run)
    try:
        done = train_here(cfg, launch, run, lambda events, stop: relay(events, print_event, stop, _say), control)
    except AcmError as e:
        if in_group():
            _into_the_ranks_log(run, launch.stage, str(e))
        raise
    return INTERRUPTED if done is None else 0


def _into_the_ranks_log(run: Path, stage: str, text: str) -> None:
    """A rank's one line, written to the stage's ranks.log by the rank itself: the launcher relays a
    rank's stderr there too, but a rank that dies ends the launcher, which may end before it has
    relayed the line (the command then said only that the rank exited)."""
    with contextlib.suppress(OSError), open_appending(Paths.ranks_log(run, stage), text=True) as log:
        log.write(f"{REFUSAL}{text}\n")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m core.train.worker SNAPSHOT (acm starts it; see core/train/snapshot.py)",
              file=sys.stderr)
        return 2
    configure_mlx()
    with engines_made() as engines:
        status = run_command(lambda: _train(Path(argv[0])))
    exit_past_abandoned_work(status, engines)  # quit now: the stage left running ends with the process
    if in_group() or os.environ.get("OMPI_COMM_WORLD_SIZE", "1") != "1":  # a rank, as join_group finds one:
        for stream in (sys.stdout, sys.stderr):  # its stage over and written, the interpreter's teardown of
            with contextlib.suppress(OSError, ValueError):  # MLX's group, whose threads may still run, can
                stream.flush()  # abort it ("terminate called without an active exception"), and its
        os._exit(status)  # launcher would be told of a rank that died
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
