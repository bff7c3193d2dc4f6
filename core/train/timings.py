"""Where a stage's wall time goes: setup, compilation, the steps, validation, live samples,
checkpoints and the rest, so the pipeline around the step can be measured and kept small.

The trainer marks a few points (`begin`, `loop`, `first_steps_done`, `loop_done`, `end`) and wraps
what stops the step loop in `aside(part)`; the steps' share is the loop's time less what was set
aside in it. The first steps (until the trainer has timed them) take longer than the rest: what
they took beyond the steady steps' rate (in a stage no longer than that, the rate the timing found)
is "compile" (MLX building and compiling the step's graph and kernels), the rest of their time
counts as steps. At the stage's end the split is one log line
and `timings.json` in the stage's folder.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from core.atomic import read_json, write_text

PARTS = ("setup", "compile", "steps", "validation", "samples", "checkpoints", "other")
ASIDE = ("validation", "samples", "checkpoints", "paused")  # what stops the loop; paused time counts as other
EACH = ("validation", "samples", "checkpoints")  # timings.json lists each of these one by one
FILE = "timings.json"


class Timings:
    """Seconds by part of one stage in one call, read from the trainer's clock."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.started = 0.0
        self.loop_at = self.first_at = self.loop_end = self.ended = None
        self.each: dict[str, list[float]] = {part: [] for part in ASIDE}  # every time a part stopped the loop, in order
        self.aside_at_first = self.aside_at_end = 0.0  # set aside before the first steps / the loop's end
        self.saves = 0
        self.first_steps = self.all_steps = 0  # steps done by first_steps_done / loop_done
        self.step_s = 0.0  # a step's seconds as the first steps timed it

    def begin(self, now: float) -> None:
        self.started = now

    def loop(self) -> None:
        """The first step is about to be queued: setup ends here."""
        self.loop_at = self.clock()

    def first_steps_done(self, steps: int, step_s: float = 0.0) -> None:
        """The first `steps` steps (compilation, warm-up) are timed, a step at `step_s` seconds once
        compiled: steady steps from here."""
        if self.first_at is None and self.loop_at is not None:
            self.first_at, self.first_steps, self.step_s = self.clock(), steps, step_s
            self.aside_at_first = self.set_aside()

    @contextlib.contextmanager
    def aside(self, part: str, saves: int = 0) -> Iterator[None]:
        """Time spent on `part` (validation, samples, checkpoints, paused) while the loop waits for it;
        `saves`: the checkpoints it counts."""
        t0 = self.clock()
        try:
            yield
        finally:
            self.each[part].append(self.clock() - t0)
            self.saves += saves

    def loop_done(self, steps: int) -> None:
        """The last of `steps` steps is done: what follows (the last write's wait, the stage's end) is
        not the loop's."""
        if self.loop_end is None:
            self.loop_end, self.aside_at_end = self.clock(), self.set_aside()
            self.all_steps = steps

    def set_aside(self) -> float:
        """All the time set aside so far: no step's (the budget's calibration leaves it out)."""
        return sum(sum(times) for times in self.each.values())

    def end(self) -> None:
        self.ended = self.clock()

    def seconds(self) -> dict[str, float]:
        """Each part's seconds; they add up to the wall time from `begin` to `end`."""
        ended = self.ended if self.ended is not None else self.clock()
        loop_at = self.loop_at if self.loop_at is not None else ended
        loop_end = self.loop_end if self.loop_end is not None else ended
        in_loop = self.aside_at_end if self.loop_end is not None else self.set_aside()
        compile_s, steps = 0.0, loop_end - loop_at - in_loop  # never timed: all of the loop is steps
        if self.first_at is not None:
            first = self.first_at - loop_at - self.aside_at_first
            steps = loop_end - self.first_at - (in_loop - self.aside_at_first)
            steady = self.all_steps - self.first_steps  # none: a stage as short as its timing
            rate = steps / steady if steady > 0 else self.step_s
            at_rate = min(first, self.first_steps * rate)
            compile_s, steps = first - at_rate, steps + at_rate
        parts = {"setup": loop_at - self.started, "compile": compile_s, "steps": steps,
                 **{part: sum(self.each[part]) for part in EACH}}
        parts["other"] = (ended - self.started) - sum(parts.values())
        return parts

    def record(self) -> dict:
        """What timings.json holds: the wall, each part, the saves the checkpoints' part covers, and each
        time validation, samples and checkpoints stopped the loop (the first check's compile shows there)."""
        parts = self.seconds()
        return {"wall_s": round(sum(parts.values()), 3), "parts_s": {k: round(v, 3) for k, v in parts.items()},
                "saves": self.saves,
                "each_s": {k: [round(v, 3) for v in self.each[k]] for k in EACH}}

    def line(self, stage: str) -> str:
        """e.g. "pretrain: 81 s: setup 9 s, compile 12 s, steps 20 s, validation 6 s, samples 1.2 s, ..."."""
        parts = self.seconds()
        return f"{stage}: {seconds(sum(parts.values()))}: " + ", ".join(f"{k} {seconds(v)}" for k, v in parts.items())

    def write(self, folder: Path) -> None:
        write_text(folder / FILE, json.dumps(self.record(), indent=1) + "\n")


def seconds(s: float) -> str:
    return f"{s:.0f} s" if abs(s) >= 10 else f"{s:.1f} s"


def read(folder: Path) -> dict | None:
    """A stage's timings.json, or None where it has none (yet)."""
    return read_json(folder / FILE)
