"""Line charts (textual-plotext) as both chart panes draw them: an x axis labelled with whole
values even at 80x24 and a legend naming each series (a fine-tune is drawn after its pretrain, so
the two stages never lie on top of each other: core.runs.compare.run_curves places it).

Series are told apart by their marks as well as their colour, so a terminal without colour
(NO_COLOR) still reads: raw reports as dots, a smoothed curve as a fine line, validation checks as
crosses drawn last, on top.
"""
from __future__ import annotations

import bisect
import math
from typing import NamedTuple

from core.runs import is_finite, is_number


class Series(NamedTuple):
    xs: list[float]
    ys: list[float]
    label: str
    marker: str = "braille"  # plotext's marker: "braille" draws a fine line
    points: bool = False  # scattered points rather than a line


def draw(plt, title: str, series: list, log: bool = False, axis: str = "step") -> None:
    """Draw `series` (Series, or (xs, ys, label) tuples) with the x axis `axis` (AXES)."""
    plt.clear_data()
    plt.clear_figure()
    plt.title(title)
    drawn = [s for s in map(_plottable, map(lambda s: Series(*s), series)) if s.xs]
    if log:
        drawn = [s for s in map(_logged, drawn) if s.xs]
    for s in drawn:
        (plt.scatter if s.points else plt.plot)(s.xs, s.ys, label=s.label, marker=s.marker)
    if not drawn:
        return
    lo, hi = min(min(s.xs) for s in drawn), max(max(s.xs) for s in drawn)
    label, words = AXES[axis]
    ticks = sorted({int(lo), int((lo + hi) / 2), int(hi)})
    plt.xticks(ticks, [words(t) for t in ticks])
    plt.xlabel(label)
    _y_ticks(plt, [y for s in drawn for y in s.ys], log)


def _y_ticks(plt, ys: list[float], log: bool) -> None:
    """A log chart's ticks labelled with the values; one value alone (a stage's first report) labelled
    short, where plotext would write all its digits and push the title out."""
    if log:
        _log_ticks(plt, ys)
    elif min(ys) == max(ys):
        plt.yticks([ys[0]], [f"{ys[0]:.4g}"])


def _plottable(s: Series) -> Series:
    """`s` without the points plotext cannot place: a value that is not a finite number (an infinite
    validation loss, a record edited by hand)."""
    kept = [(x, y) for x, y in zip(s.xs, s.ys) if is_finite(x) and is_finite(y)]
    return s._replace(xs=[x for x, _ in kept], ys=[y for _, y in kept])


def _logged(s: Series) -> Series:
    """`s` with its positive finite values as their base-10 logarithms (the others left out).
    plotext's own log scale transforms its data in place at each build, so a chart built again
    without a new draw (a resize, a zoom) would take the logarithm twice."""
    kept = [(x, math.log10(y)) for x, y in zip(s.xs, s.ys) if y > 0]
    return s._replace(xs=[x for x, _ in kept], ys=[y for _, y in kept])


def _log_ticks(plt, logged: list[float]) -> None:
    """y ticks of a log chart labelled with the values, not their logarithms."""
    if not logged:
        return
    lo, hi = min(logged), max(logged)
    ticks = sorted({lo, (lo + hi) / 2, hi})
    plt.yticks(ticks, [f"{10 ** t:.3g}" for t in ticks])


STAGE_NAMES = {"pretrain": "pretrain", "finetune": "fine-tune"}


# ---------------------------------------------------------------- smoothing

SMOOTHING = (0.0, 0.6, 0.8, 0.9, 0.95)  # what the key cycles through


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average debiased for its start, so the first
    point is the first value rather than a pull toward zero. A value that is not finite is kept as
    it is and leaves the average alone."""
    out, last, n = [], 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        last, n = last * weight + (1 - weight) * v, n + 1
        out.append(last / (1 - weight**n))
    return out


def next_smoothing(current: float) -> float:
    """The next step of SMOOTHING after `current` (after the last: off)."""
    return next((s for s in SMOOTHING if s > current + 1e-9), SMOOTHING[0])


# ---------------------------------------------------------------- x axes


def _si(n: float) -> str:
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


AXES = {"step": ("step", lambda t: f"{t:,}"), "tokens": ("tokens seen", _si), "time": ("time (h:m:s)", _clock)}


def axis_values(rows: list[tuple[int, int, float]], axis: str) -> list[float]:
    """Each report's x on `axis`: rows are (step, tokens seen, wall time); time counts from the
    first report."""
    def number(v) -> float:
        return float(v) if is_number(v) else math.nan  # nan: left out of the chart (a record edited by hand)

    if axis == "step":
        return [number(step) for step, _, _ in rows]
    if axis == "tokens":
        return [number(tokens) for _, tokens, _ in rows]
    times = [number(t) for _, _, t in rows]
    start = next((t for t in times if math.isfinite(t)), 0.0)
    return [t - start for t in times]


def at_steps(steps: list[int], xs: list[float], wanted: list[int]) -> list[float]:
    """The x of each `wanted` step, read off the reports' (steps, xs) by straight lines between
    them (a validation check falls between reports or on one); clamped at the ends."""
    out = []
    for step in wanted:
        i = bisect.bisect_left(steps, step)
        if i == 0 or i == len(steps):
            out.append(xs[min(i, len(xs) - 1)] if xs else float(step))
            continue
        s0, s1 = steps[i - 1], steps[i]
        out.append(xs[i - 1] + (xs[i] - xs[i - 1]) * (step - s0) / (s1 - s0))
    return out


# ---------------------------------------------------------------- sparklines

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int) -> str:
    """The last `width` finite values as a one-line bar chart, scaled between their least and most."""
    shown = [v for v in values if is_finite(v)][-width:]
    if not shown:
        return ""
    lo, hi = min(shown), max(shown)
    span = hi - lo or 1.0
    return "".join(BARS[round((v - lo) / span * (len(BARS) - 1))] for v in shown)
