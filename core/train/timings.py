"""Where a stage's wall time goes: setup, the first (compiling) steps, steady steps, validation,
live samples, checkpoints and the rest, so the pipeline around the step can be measured and kept small.

The trainer marks a few points (`begin`, `loop`, `first_steps_done`, `end`) and wraps what stops
the step loop in `aside(part)`; the steps' share is the loop's time less what was set aside in it.
At the stage's end the split is one log line and `timings.json` in the stage's folder.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from core.atomic import read_json, write_text

PARTS = ("setup", "first steps", "steps", "validation", "samples", "checkpoints", "other")
ASIDE = ("validation", "samples", "checkpoints", "paused")  # what stops the loop; paused time counts as other
FILE = "timings.json"


class Timings:
    """Seconds by part of one stage in one call, read from the trainer's clock."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.started = 0.0
        self.loop_at = self.first_at = self.loop_end = self.ended = None
        self.spent = dict.fromkeys(ASIDE, 0.0)
        self.aside_at_first = self.aside_at_end = 0.0  # set aside before the first steps / the loop's end
        self.saves = 0

    def begin(self, now: float) -> None:
        self.started = now

    def loop(self) -> None:
        """The first step is about to be queued: setup ends here."""
        self.loop_at = self.clock()

    def first_steps_done(self) -> None:
        """The first steps (compilation, warm-up) are timed: steady steps from here."""
        if self.first_at is None and self.loop_at is not None:
            self.first_at = self.clock()
            self.aside_at_first = sum(self.spent.values())

    @contextlib.contextmanager
    def aside(self, part: str, saves: int = 0) -> Iterator[None]:
        """Time spent on `part` (validation, samples, checkpoints, paused) while the loop waits for it;
        `saves`: the checkpoints it counts."""
        t0 = self.clock()
        try:
            yield
        finally:
            self.spent[part] += self.clock() - t0
            self.saves += saves

    def loop_done(self) -> None:
        """The last step is done: what follows (the last write's wait, the stage's end) is not the loop's."""
        if self.loop_end is None:
            self.loop_end, self.aside_at_end = self.clock(), sum(self.spent.values())

    def end(self) -> None:
        self.ended = self.clock()

    def seconds(self) -> dict[str, float]:
        """Each part's seconds; they add up to the wall time from `begin` to `end`."""
        ended = self.ended if self.ended is not None else self.clock()
        loop_at = self.loop_at if self.loop_at is not None else ended
        loop_end = self.loop_end if self.loop_end is not None else ended
        first_at = self.first_at if self.first_at is not None else loop_end
        in_loop = self.aside_at_end if self.loop_end is not None else sum(self.spent.values())
        first = first_at - loop_at - (self.aside_at_first if self.first_at is not None else in_loop)
        steps = loop_end - first_at - (in_loop - self.aside_at_first) if self.first_at is not None else 0.0
        parts = {"setup": loop_at - self.started, "first steps": first, "steps": steps,
                 **{part: self.spent[part] for part in ("validation", "samples", "checkpoints")}}
        parts["other"] = (ended - self.started) - sum(parts.values())
        return parts

    def record(self) -> dict:
        """What timings.json holds: the wall, each part, and the saves the checkpoints' part covers."""
        parts = self.seconds()
        return {"wall_s": round(sum(parts.values()), 3), "parts_s": {k: round(v, 3) for k, v in parts.items()},
                "saves": self.saves}

    def line(self, stage: str) -> str:
        """e.g. "pretrain: 81 s: setup 9 s, first steps 12 s, steps 20 s, validation 6 s, samples 1.2 s, ..."."""
        parts = self.seconds()
        return f"{stage}: {seconds(sum(parts.values()))}: " + ", ".join(f"{k} {seconds(v)}" for k, v in parts.items())

    def write(self, folder: Path) -> None:
        write_text(folder / FILE, json.dumps(self.record(), indent=1) + "\n")


def seconds(s: float) -> str:
    return f"{s:.0f} s" if abs(s) >= 10 else f"{s:.1f} s"


def read(folder: Path) -> dict | None:
    """A stage's timings.json, or None where it has none (yet)."""
    return read_json(folder / FILE)
