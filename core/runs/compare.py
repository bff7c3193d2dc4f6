"""Runs side by side: the settings that differ between them, and their loss curves on one x axis,
by step or by tokens seen (which lines up runs whose batches differ in size).

Read as leniently as the run list: a missing or damaged config.toml reads as no settings (each
key shows as missing), and metrics.jsonl lines that are not reports are skipped.
"""
from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import config
from core.errors import ConfigError
from core.paths import Paths
from core.runs import TRAINING_STAGES, read_metrics

MISSING = "–"  # a setting a run's config.toml does not hold
AXES = ("step", "tokens")


# ---------------------------------------------------------------- settings


def flat_settings(run: Path) -> dict[str, Any]:
    """A run's recorded settings under acm.toml's dotted keys ({} when config.toml is missing or
    unreadable)."""
    try:
        return flatten(config.read_table(Paths.run_config(run)))
    except ConfigError:
        return {}


def flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def shown(value: Any) -> str:
    """A setting as acm.toml writes it (true, 3e-4, a list as JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def settings_diff(runs: list[Path]) -> list[tuple[str, ...]]:
    """(key, the value in each run) for every setting whose value is not the same in all `runs`,
    by key; a run without the key shows MISSING."""
    settings = [flat_settings(r) for r in runs]
    rows = []
    for key in sorted(set().union(*settings)):
        values = tuple(shown(s[key]) if key in s else MISSING for s in settings)
        if len(set(values)) > 1:
            rows.append((key, *values))
    return rows


# ---------------------------------------------------------------- curves


@dataclass
class Curve:
    """One stage's train loss (one point a report) and val loss (one a check) on an x axis (whole
    steps or tokens)."""
    stage: str
    xs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    val_xs: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)

    def last_x(self) -> float:
        return max(self.xs[-1:] + self.val_xs[-1:], default=0)

    def shifted(self, offset: float) -> Curve:
        return Curve(self.stage, [x + offset for x in self.xs], self.losses,
                     [x + offset for x in self.val_xs], self.val_losses)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _records(run: Path, stage: str, by: str) -> tuple[dict[int, dict], dict[int, float]]:
    """The stage's reports and val checks by step (a step reported twice, as after a resume, keeps
    its newest record); a report without what `by` needs is left out."""
    reports, checks = {}, {}
    for r in read_metrics(run, stage):
        if not isinstance(r, dict) or not _count(r.get("step")):
            continue
        if r.get("type") == "metrics" and _finite(r.get("loss")) and (by == "step" or _count(r.get("tokens_seen"))):
            reports[r["step"]] = r
        elif r.get("type") == "eval" and _finite(r.get("val_loss")):
            checks[r["step"]] = float(r["val_loss"])
    return reports, checks


def nearest(steps: list[int], step: int) -> int:
    """The index of the step in sorted, non-empty `steps` nearest to `step` (the earlier on a tie)."""
    i = bisect.bisect_left(steps, step)
    if i == len(steps) or (i > 0 and step - steps[i - 1] <= steps[i] - step):
        return i - 1
    return i


def stage_curve(run: Path, stage: str, by: str = "step") -> Curve:
    """A stage's curves by "step" or by "tokens" (tokens seen; a val check takes the tokens of the
    report at the nearest step, and is left out when the stage has no report)."""
    if by not in AXES:
        raise ValueError(f"unknown axis {by!r}")
    reports, checks = _records(run, stage, by)
    steps = sorted(reports)
    key = "step" if by == "step" else "tokens_seen"
    curve = Curve(stage, [reports[s][key] for s in steps], [float(reports[s]["loss"]) for s in steps])
    for step in sorted(checks):
        if by == "step":
            curve.val_xs.append(step)
        elif steps:
            curve.val_xs.append(curve.xs[nearest(steps, step)])
        else:
            continue
        curve.val_losses.append(checks[step])
    return curve


def run_curves(run: Path, stages: tuple[str, ...] = TRAINING_STAGES, by: str = "step") -> list[Curve]:
    """The curves of a run's stages that have any, each stage placed after the one before it (a
    fine-tune's steps and tokens count from zero again), so they never lie on top of each other."""
    out, offset = [], 0
    for stage in stages:
        curve = stage_curve(run, stage, by)
        if curve.xs or curve.val_xs:
            out.append(curve.shifted(offset))
            offset = out[-1].last_x()
    return out


# ---------------------------------------------------------------- loss at aligned points


def stage_summary(curve: Curve) -> dict:
    """What `acm runs compare` shows of one stage of one run."""
    return {"last_x": curve.xs[-1] if curve.xs else None, "last_train_loss": curve.losses[-1] if curve.xs else None,
            "best_val_loss": min(curve.val_losses, default=None)}


def shared_val(curves: list[Curve]) -> list[tuple[float, list[float]]]:
    """(x, each run's val loss there) at every x where all the runs made a val check."""
    by_x = [dict(zip(c.val_xs, c.val_losses)) for c in curves]
    common = set(by_x[0]).intersection(*by_x[1:]) if by_x else set()
    return [(x, [checks[x] for checks in by_x]) for x in sorted(common)]
