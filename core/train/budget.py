"""Training by wall-clock budget: the step count is fitted to the time given, from the speed of the
stage's first steps, so that warmup and the cosine decay both complete inside the budget.

The same measurement tells a stage without a budget how long its configured steps will take here,
before the long part starts.
"""
from __future__ import annotations

from dataclasses import dataclass

EVAL_COST = 0.35  # one validation batch (forward only) against one training step (forward and backward)
VALIDATION_SHARE = 0.1  # of a time budget, at most, for its validation checks: fewer batches a check if need be
HOURS = 3600.0
UNPLANNED = 2**31 - 1  # the step count of a budget stage until its first steps are timed


@dataclass
class Plan:
    total: int  # steps of the stage
    warmup: int
    eval_batches: int  # batches a validation check


def checks(step: int, steps: int, every: int) -> int:
    """Validation checks from step `step` (just done, its check not yet run) through `steps` more:
    each multiple of `every` among them, and the last step's."""
    if steps <= 0:
        return 1 if step % every == 0 else 0
    end = step + steps
    return end // every - (step - 1) // every + (1 if end % every else 0)


class Calibration:
    """Times the steps after the first (whose time is mostly compilation) until the measurement
    is long enough to trust: at least 3 steps and 2% of the budget (or half a second) of steps.
    What the loop set aside meanwhile (a validation check, live samples, a checkpoint, a pause) is
    no step's: the first check also compiles its graph, seconds on a CPU whose kernel cache is cold,
    and counted as steps it made the plan several times too short.

    A validation batch is one micro-batch forward, EVAL_COST of one micro-batch's step: a step of
    `grad_accum` micro-batches costs that many. `eval_batches` 0 (no validation set) plans no checks."""

    def __init__(self, budget_s: float | None, started: float, eval_every: int, eval_batches: int,
                 grad_accum: int = 1):
        self.budget_s, self.started = budget_s, started
        self.eval_every, self.eval_batches = eval_every, eval_batches
        self.batch_cost = EVAL_COST / grad_accum  # of a step
        self.first: tuple[int, float, float] | None = None

    def observe(self, step: int, now: float, aside: float = 0.0) -> float | None:
        """Seconds a training step once measured, else None (`aside`: the seconds the loop has
        set aside so far, on the same clock)."""
        if self.first is None:
            self.first = (step, now, aside)
            return None
        steps, seconds = step - self.first[0], (now - self.first[1]) - (aside - self.first[2])
        enough = max(0.02 * self.budget_s, 0.5) if self.budget_s else 0.5
        if steps < 3 or seconds < enough:
            return None
        return seconds / steps

    def seconds(self, step: int, steps: int, step_s: float, eval_batches: int | None = None) -> float:
        """How long `steps` more steps from `step` take, their validation checks (the last step's
        among them, and `step`'s own where it is due) included."""
        batches = self.eval_batches if eval_batches is None else eval_batches
        return step_s * (steps + checks(step, steps, self.eval_every) * batches * self.batch_cost)

    def plan(self, step: int, now: float, step_s: float, warmup: int, cut: bool = True,
             most: int | None = None, last_s: float = 0.0) -> Plan:
        """The step count that ends the stage, its validation checks included, when the budget runs
        out (never fewer than one more, nor past `most`, the steps asked for by name, or UNPLANNED),
        and the batches a check may read to keep the checks within VALIDATION_SHARE of what is left
        (at least one): a short budget's one check at the end would otherwise outlast its steps.
        `cut` False keeps the batches (a resumed plan's); `last_s`: what the last check does beyond
        its validation (its live samples), set aside from the time left."""
        left = self.budget_s - (now - self.started) - last_s
        cap = max(0, min(UNPLANNED - 1, UNPLANNED if most is None else most) - step)
        steps = min(cap, max(1, int(left / step_s)))
        batches = self.eval_batches
        if batches and cut and steps:
            fits = VALIDATION_SHARE * left / (checks(step, steps, self.eval_every) * self.batch_cost * step_s)
            batches = max(1, min(batches, int(fits)))
        per_step = step_s * (1 + batches * self.batch_cost / self.eval_every)
        steps = min(cap, max(1, int((left - batches * self.batch_cost * step_s) / per_step)))
        while steps > 1 and self.seconds(step, steps, step_s, batches) > left:
            steps -= 1
        total = step + steps
        return Plan(total, min(warmup, max(1, total // 10)), batches)


def describe_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def per_step(step_s: float) -> str:
    """A step's time as the plan lines say it: "4,285 ms a step"."""
    return f"{step_s * 1000:,.0f} ms a step"
