"""Training health alerts, fed reports as the trainer makes them."""
from __future__ import annotations

import math

from core.runs.events import Metrics
from core.runs.health import Health, is_alert


def report(step: int, loss: float = 2.0, grad_norm: float = 1.0, tokens_per_s: float = 1000.0) -> Metrics:
    return Metrics(step=step, total=1000, loss=loss, lr=1e-3, grad_norm=grad_norm, tokens_per_s=tokens_per_s,
                   tokens_seen=step * 100, epoch=0.0, mfu=None, ranks=1, memory_active=0, memory_peak=0,
                   memory_cache=0, memory_limit=None, eta_s=0.0, time=float(step))


def fed(health: Health, reports: list[Metrics]) -> list[str]:
    return [alert for r in reports for alert in health.check(r)]


def test_steady_training_raises_nothing():
    assert fed(Health(), [report(s, loss=2.0 - s / 100) for s in range(1, 60)]) == []


def test_a_loss_that_is_not_finite_alerts_naming_the_step():
    alerts = fed(Health(), [report(1), report(2, loss=math.nan)])
    assert alerts == ["alert: step 2: loss is nan"] and is_alert(alerts[0])
    assert fed(Health(), [report(1, loss=math.inf)]) == ["alert: step 1: loss is inf"]


def test_a_loss_spike_over_the_setting_times_the_recent_median_alerts():
    health = Health(spike=3.0)
    assert fed(health, [report(s) for s in range(1, 10)] + [report(10, loss=5.9)]) == []
    alerts = health.check(report(11, loss=6.5))
    assert len(alerts) == 1 and alerts[0].startswith("alert: step 11: loss 6.5, over 3x its recent median (2)")


def test_a_gradient_explosion_alerts():
    alerts = fed(Health(), [report(s) for s in range(1, 5)] + [report(5, grad_norm=50.0)])
    assert alerts == ["alert: step 5: gradient norm 50, over 10x its recent median (1)"]


def test_slow_tokens_per_second_alert_only_after_the_first_reports():
    health = Health()
    assert fed(health, [report(1), report(2, tokens_per_s=10.0)]) == []  # warmup, compilation
    fed(health, [report(s) for s in range(3, 12)])
    alerts = health.check(report(12, tokens_per_s=400.0))
    assert len(alerts) == 1 and alerts[0].startswith("alert: step 12: 400 tokens/s, under 0.5x")


def test_a_condition_alerts_once_until_it_clears():
    health = Health()
    fed(health, [report(s) for s in range(1, 5)])
    assert len(health.check(report(5, loss=math.nan))) == 1
    assert health.check(report(6, loss=math.nan)) == []  # still bad: said already
    assert health.check(report(7)) == []  # cleared
    assert health.check(report(8, loss=math.nan)) == ["alert: step 8: loss is nan"]  # re-armed


def test_the_settings_carry_the_spike():
    from core import config

    cfg = config.from_dict({"train": {"alert_spike": 5.0}})
    assert cfg.train.alert_spike == 5.0 and Health(cfg.train.alert_spike).spike == 5.0
