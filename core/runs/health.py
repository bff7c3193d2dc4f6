"""Training health: what in a stage's reports deserves a warning before its curves make it plain.

`Health` is fed each `Metrics` report and answers the alerts it raises, each a line naming the
step: a loss that is not finite, a loss `spike` times its recent median, a gradient norm ten
times its recent median, tokens/s under half the stage's median. A condition alerts once, when it
starts, and again only after it has cleared, so a long bad stretch is one line, not one a report.
The trainer writes the alerts to the stage's log, where the CLI and the Train pane both read them.
"""
from __future__ import annotations

import math
import statistics
from collections import deque

from core.runs.events import Metrics

ALERT = "alert: "  # how an alert's line in train.log begins
WINDOW = 50  # reports the recent medians are taken over
GRAD_SPIKE = 10.0
SLOW_SHARE = 0.5
SLOW_AFTER = 10  # reports before tokens/s is judged: compilation and warmup are slow


class Health:
    def __init__(self, spike: float = 3.0, window: int = WINDOW):
        self.spike = spike
        self.losses: deque[float] = deque(maxlen=window)
        self.norms: deque[float] = deque(maxlen=window)
        self.speeds: list[float] = []  # the whole stage's
        self.active: set[str] = set()  # conditions alerted and not yet cleared

    def check(self, m: Metrics) -> list[str]:
        """The alerts this report raises (lines starting "alert: step N: ")."""
        found = {
            "loss": _above(m.loss, self.losses, self.spike, "loss"),
            "grad": _above(m.grad_norm, self.norms, GRAD_SPIKE, "gradient norm"),
            "speed": self._speed(m.tokens_per_s),
        }
        for values, value in ((self.losses, m.loss), (self.norms, m.grad_norm), (self.speeds, m.tokens_per_s)):
            if math.isfinite(value):
                values.append(value)
        alerts = [f"{ALERT}step {m.step}: {text}" for kind, text in found.items()
                  if text and kind not in self.active]
        self.active = {kind for kind, text in found.items() if text}
        return alerts

    def _speed(self, tokens_per_s: float) -> str:
        if len(self.speeds) < SLOW_AFTER:
            return ""
        median = statistics.median(self.speeds)
        if tokens_per_s < SLOW_SHARE * median:
            return f"{tokens_per_s:,.0f} tokens/s, under {SLOW_SHARE:g}x the stage's median ({median:,.0f})"
        return ""


def _above(value: float, recent, times: float, name: str) -> str:
    """Words for `value` not finite or above `times` its recent median; "" when neither."""
    if not math.isfinite(value):
        return f"{name} is {value}"
    if not recent:
        return ""
    median = statistics.median(recent)
    if value > times * median:
        return f"{name} {value:.4g}, over {times:g}x its recent median ({median:.4g})"
    return ""


def is_alert(line: str) -> bool:
    return line.startswith(ALERT)
