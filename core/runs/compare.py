"""Runs side by side: the settings that differ between them, and their loss curves on one x axis,
by step or by tokens seen (which lines up runs whose batches differ in size).

A run whose config.toml cannot be read (not TOML, not a file, no permission, empty) is left out of
the settings compared, and one that reads but does not load as settings (a wrong type, an unknown
key) is compared as written; each says so in a note (SettingsDiff.notes). metrics.jsonl lines
that are not reports are skipped.
"""
from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import config
from core.errors import AcmError
from core.paths import Paths
from core.runs import TRAINING_STAGES, is_count, is_finite, read_metrics, val_checks

MISSING = "–"  # a setting a run's config.toml does not hold
AXES = ("step", "tokens")
LONG = 60  # a list longer than this, written as acm.toml writes it, shows in a table as its count and digest


# ---------------------------------------------------------------- settings


@dataclass
class RunSettings:
    """A run's recorded settings under acm.toml's dotted keys (None: config.toml could not be read)
    and what is wrong with its config.toml ("" when nothing)."""
    run: Path
    values: dict[str, Any] | None
    problem: str = ""

    def note(self) -> str:
        """One line saying what is wrong and what the comparison does about it ("" when nothing)."""
        if self.values is None:
            return f"run {self.run.name}: its settings could not be read ({self.problem}); they are not compared"
        if self.problem:
            return f"run {self.run.name}: its settings do not load ({self.problem}); they are compared as written"
        return ""


def read_settings(run: Path) -> RunSettings:
    """A run's settings as its config.toml holds them, checked as acm.toml would be."""
    path = Paths.run_config(run)
    try:
        table = config.read_table(path)
    except AcmError as e:
        return RunSettings(run, None, str(e))
    if not table:  # acm writes every setting: an empty file holds none, not the defaults
        return RunSettings(run, None, f"{path}: it is empty")
    try:
        config.from_dict(table, source=str(path), root=run, written=True)
    except AcmError as e:
        return RunSettings(run, flatten(table), str(e))
    return RunSettings(run, flatten(table))


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


def brief(value: Any) -> str:
    """A setting for a table cell: as `shown`, but a list longer than LONG characters (eval.tasks)
    as its count and the start of its digest, which two runs share exactly when their lists are the
    same, so one cell never holds a page of JSON (--json gives the whole value)."""
    text = shown(value)
    if not isinstance(value, list) or len(text) <= LONG:
        return text
    return f"{len(value)} item{'' if len(value) == 1 else 's'}, digest {hashlib.sha256(text.encode()).hexdigest()[:8]}"


@dataclass
class SettingsDiff:
    """The settings that differ between the runs whose config.toml could be read (`read`): (key,
    the value in each of them, None where one lacks the key: TOML has no null), by key."""
    runs: list[RunSettings]
    rows: list[tuple[str, list[Any]]]

    @property
    def read(self) -> list[RunSettings]:
        return [s for s in self.runs if s.values is not None]

    def notes(self) -> list[str]:
        return [s.note() for s in self.runs if s.note()]

    def cells(self) -> list[tuple[str, ...]]:
        """The rows as a table shows them (long lists in brief)."""
        return [(key, *(MISSING if v is None else brief(v) for v in values)) for key, values in self.rows]


def settings_diff(runs: list[Path]) -> SettingsDiff:
    """Every setting whose value is not the same in all the runs whose settings could be read."""
    diff = SettingsDiff([read_settings(r) for r in runs], [])
    settings = [s.values for s in diff.read]
    for key in sorted(set().union(*settings)):
        values = [s.get(key) for s in settings]
        if len({v if v is None else shown(v) for v in values}) > 1:
            diff.rows.append((key, values))
    return diff


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


def _records(run: Path, stage: str, by: str) -> tuple[dict[int, dict], dict[int, float]]:
    """The stage's reports and val checks by step (a step reported twice, as after a resume, keeps
    its newest record); a report without what `by` needs is left out."""
    records = read_metrics(run, stage)
    reports = {r["step"]: r for r in records
               if r.get("type") == "metrics" and is_count(r.get("step")) and is_finite(r.get("loss"))
               and (by == "step" or is_count(r.get("tokens_seen")))}
    return reports, val_checks(records)


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
    """The curves of a run's stages that have any, each stage placed after the one before it."""
    return placed([stage_curve(run, stage, by) for stage in stages])


def placed(curves: list[Curve]) -> list[Curve]:
    """A run's stage curves (in stage order) that have any point, each placed after the one before it
    (a fine-tune's steps and tokens count from zero again), so they never lie on top of each other."""
    out, offset = [], 0
    for curve in curves:
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


def stage_curves(runs: list[Path], stages: tuple[str, ...] = TRAINING_STAGES,
                 by: str = "step") -> dict[str, list[Curve]]:
    """Each stage's curve of every run (not placed one after another), for the stages where any of
    the runs has a point."""
    report = {stage: [stage_curve(run, stage, by) for run in runs] for stage in stages}
    return {stage: curves for stage, curves in report.items() if any(c.xs or c.val_xs for c in curves)}


def loss_cell(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def x_cell(value: float | None) -> str:
    return MISSING if value is None else f"{value:,.0f}"


def loss_rows(curves: list[Curve], by: str) -> list[tuple[str, ...]]:
    """One stage's losses as `acm runs compare` shows them, a value a run: the last report (and
    where it was), the best val check, and the val loss at every check all the runs made."""
    summaries = [stage_summary(c) for c in curves]
    rows = [("last train loss", *(loss_cell(s["last_train_loss"]) for s in summaries)),
            ("  at " + ("tokens seen" if by == "tokens" else "step"), *(x_cell(s["last_x"]) for s in summaries)),
            ("best val loss", *(loss_cell(s["best_val_loss"]) for s in summaries))]
    for x, losses in shared_val(curves):
        rows.append((f"val loss at {x_cell(x)} tokens" if by == "tokens" else f"val loss at step {x_cell(x)}",
                     *map(loss_cell, losses)))
    return rows
