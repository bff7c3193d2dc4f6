"""The charts' arithmetic: smoothing, x axes, sparklines."""
from __future__ import annotations

import math

import pytest

from acm_tui.charts import SMOOTHING, at_steps, axis_values, ema, next_smoothing, sparkline


def test_ema_is_debiased_so_it_starts_at_the_first_point():
    smoothed = ema([4.0, 2.0, 2.0], 0.5)
    assert smoothed[0] == 4.0
    assert smoothed[1] == pytest.approx((0.5 * 0.5 * 4 + 0.5 * 2) / (1 - 0.25))  # TensorBoard's formula
    assert smoothed[2] < smoothed[1]


def test_ema_of_nothing_or_without_smoothing_is_the_values():
    assert ema([], 0.9) == []
    assert ema([3.0, 1.0, 2.0], 0.0) == [3.0, 1.0, 2.0]
    assert ema([5.0] * 10, 0.95) == pytest.approx([5.0] * 10)  # a flat series stays flat


def test_ema_keeps_a_value_that_is_not_finite_out_of_the_average():
    smoothed = ema([1.0, math.nan, 1.0], 0.6)
    assert math.isnan(smoothed[1]) and smoothed[2] == pytest.approx(1.0)


def test_the_smoothing_key_cycles_and_wraps_from_any_value():
    seen, s = [], 0.0
    for _ in SMOOTHING:
        s = next_smoothing(s)
        seen.append(s)
    assert seen == [0.6, 0.8, 0.9, 0.95, 0.0]
    assert next_smoothing(0.7) == 0.8 and next_smoothing(0.99) == 0.0


ROWS = [(10, 1000, 100.0), (20, 2000, 130.0), (30, 3000, 190.0)]  # step, tokens seen, wall time


def test_axis_values_by_step_tokens_and_time_from_the_first_report():
    assert axis_values(ROWS, "step") == [10, 20, 30]
    assert axis_values(ROWS, "tokens") == [1000, 2000, 3000]
    assert axis_values(ROWS, "time") == [0.0, 30.0, 90.0]
    assert axis_values([], "time") == []


def test_validation_steps_land_between_reports_on_any_axis():
    steps, times = [10, 20, 30], axis_values(ROWS, "time")
    assert at_steps(steps, times, [20, 25, 30]) == [30.0, 60.0, 90.0]
    assert at_steps(steps, times, [5, 40]) == [0.0, 90.0]  # clamped at the ends


def test_sparkline_scales_between_the_least_and_most_of_the_last_values():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([100, 0, 7], 1) == "▁"  # only the last: one value, its own least
    assert sparkline([1.0, math.nan, 1.0], 10) == "▁▁" and sparkline([], 5) == ""


def test_a_chart_of_one_value_labels_it_short_and_keeps_its_title():
    """A stage's first report: plotext labelled the y axis `6.7834076881408700`, so wide that the chart
    lost its title at 80 columns."""
    import plotext as plt

    from acm_tui.charts import draw

    plt.plotsize(60, 12)
    draw(plt, "pretrain loss", [([10], [6.78340768814087], "train")])
    drawn = plt.build()
    plt.clear_figure()
    assert "6.783" in drawn and "6.78340" not in drawn and "pretrain loss" in drawn
