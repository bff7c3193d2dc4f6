"""Training by wall-clock budget: the step count is fitted to the time given, from the speed of the
stage's first steps, so that warmup and the cosine decay both complete inside the budget.

The same measurement tells a stage without a budget how long its configured steps will take here,
before the long part starts.
"""
from __future__ import annotations

from dataclasses import dataclass

EVAL_COST = 0.35  # one validation batch (forward only) against one training step (forward and backward)
HOURS = 3600.0
UNPLANNED = 2**31 - 1  # the step count of a budget stage until its first steps are timed


@dataclass
class Plan:
    total: int  # steps of the stage
    warmup: int


class Calibration:
    """Times the steps after the first (whose time is mostly compilation) until the measurement
    is long enough to trust: at least 3 steps and 2% of the budget (or half a second)."""

    def __init__(self, budget_s: float | None, started: float, eval_every: int, eval_batches: int):
        self.budget_s, self.started = budget_s, started
        self.eval_share = EVAL_COST * eval_batches / eval_every
        self.first: tuple[int, float] | None = None

    def observe(self, step: int, now: float) -> float | None:
        """Seconds per step (validation included) once measured, else None."""
        if self.first is None:
            self.first = (step, now)
            return None
        steps, seconds = step - self.first[0], now - self.first[1]
        enough = max(0.02 * self.budget_s, 0.5) if self.budget_s else 0.5
        if steps < 3 or seconds < enough:
            return None
        return seconds / steps * (1 + self.eval_share)

    def plan(self, step: int, now: float, step_s: float, warmup: int) -> Plan:
        """The step count that ends the stage when the budget runs out (never fewer than one more)."""
        left = self.budget_s - (now - self.started)
        total = step + max(1, int(left / step_s))
        return Plan(total, min(warmup, max(1, total // 10)))


def describe_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"
