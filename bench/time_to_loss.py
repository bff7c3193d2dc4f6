"""Time to a validation loss: variants of one stage's settings trained one at a time, each in a fresh
`acm train` process on the same prepared data, and how long each takes to reach the first variant's
final validation loss (the baseline's).

usage: python bench/time_to_loss.py --project DIR [--stage pretrain] [--run-from RUN] [--rounds 1] [--first-round 1]
           [--set KEY=VALUE ...] --variant NAME [KEY=VALUE ...] --variant NAME [KEY=VALUE ...] ...
DIR holds acm.toml and data/ with token shards (`acm prepare` done). `--set` applies to every variant
(e.g. train.pretrain.eval_every=100 for a finer curve), a variant's own settings after it. A fine-tune
needs --run-from naming a run with a pretrain checkpoint, copied for each run. Rounds alternate the
variants. Prints one JSON line a run (its validation curve, steps, the stage's split from
timings.json, the command's wall), then one summary line a variant: for each round, the step where
its curve first reaches the final loss of that round's baseline run (linear between checks), that many
steps at its own pace as seconds (`reach_s`), and `reach_s` over that baseline run's seconds of steps
(`time_ratio`). The target is the baseline's final loss, not its best: a stage that overfits reaches
it early.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from first_run import acm, settings_file

from core.runs import read_metrics
from core.train.timings import read as read_timings


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--stage", default="pretrain", choices=["pretrain", "finetune"])
    p.add_argument("--run-from", help="a fine-tune: the run whose pretrain each run starts from")
    p.add_argument("--rounds", type=int, default=1, help="each variant this many times, the variants alternating")
    p.add_argument("--first-round", type=int, default=1, help="the first round's number (runs ttl-NAME-ROUND)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="settings of every variant")
    p.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE]",
                   help="a variant's name and its settings; the first is the baseline")
    a = p.parse_args()
    if (a.stage == "finetune") != bool(a.run_from):
        p.error("--run-from goes with --stage finetune, and a fine-tune needs it: a run with a pretrain checkpoint")
    for kv in a.set + [kv for v in a.variant for kv in v[1:]]:
        if "=" not in kv:
            p.error(f"a setting is KEY=VALUE, not {kv!r}")
    return a


def main() -> None:
    a = parse_args()
    results: dict[str, list[dict]] = {v[0]: [] for v in a.variant}
    for n in range(a.first_round, a.first_round + a.rounds):
        for name, *settings in a.variant:
            one = train(a, name, n, a.set + settings)
            results[name].append(one)
            print(json.dumps(one), flush=True)
    for line in summary(results):
        print(json.dumps(line), flush=True)


def train(a: argparse.Namespace, name: str, n: int, settings: list[str]) -> dict:
    """One run of a variant in a fresh process, from its own copy of acm.toml."""
    project, run = a.project, f"ttl-{name}-{n}"
    cfg = project / f"ttl-{name}.toml"
    settings_file(project / "acm.toml", cfg, settings)
    folder = project / "runs" / run
    shutil.rmtree(folder, ignore_errors=True)
    if a.run_from:  # its pretrain and settings only: a fine-tune it may hold would be refused to train again
        source = project / "runs" / a.run_from
        shutil.copytree(source / "pretrain", folder / "pretrain")
        shutil.copy2(source / "config.toml", folder / "config.toml")
    started = time.perf_counter()
    acm(project, "-c", cfg.name, "train", a.stage, "--run", run)
    command_s = time.perf_counter() - started
    records = read_metrics(folder, a.stage)
    curve = [[r["step"], r["val_loss"]] for r in records if r.get("type") == "eval"]
    steps = max(r["step"] for r in records if r.get("type") == "metrics")
    timings = read_timings(folder / a.stage)
    return {"bench": "time_to_loss", "variant": name, "round": n, "settings": settings, "steps": steps,
            "ms_per_step": round(1000 * timings["parts_s"]["steps"] / steps, 3), "command_s": round(command_s, 2),
            "final_val_loss": curve[-1][1] if curve else None, "val_curve": curve, "timings": timings}


def reach(curve: list[list[float]], target: float) -> float | None:
    """The first step where the validation curve is at or below `target`, linear between checks (a
    curve already there at its first check reaches it at that check: no earlier step was measured)."""
    before = None
    for step, loss in curve:
        if loss <= target:
            if before is None:
                return float(step)
            (s0, l0) = before
            return s0 + (step - s0) * (l0 - target) / (l0 - loss)
        before = (step, loss)
    return None


def summary(results: dict[str, list[dict]]) -> list[dict]:
    """Each variant's runs against the baseline's run of the same round: its final loss and seconds of steps."""
    base = next(iter(results.values()))
    targets = [r["final_val_loss"] for r in base]
    lines = []
    for name, runs in results.items():
        steps = [reach(r["val_curve"], t) for r, t in zip(runs, targets)]
        reach_s = [None if s is None else s * r["timings"]["parts_s"]["steps"] / r["steps"]
                   for s, r in zip(steps, runs)]
        lines.append({"bench": "time_to_loss", "summary": name, "target_val_loss": [round(t, 4) for t in targets],
                      "final_val_loss": [r["final_val_loss"] for r in runs],
                      "ms_per_step": [r["ms_per_step"] for r in runs], "reach_step": steps,
                      "reach_s": [None if s is None else round(s, 2) for s in reach_s],
                      "time_ratio": [None if s is None else round(s / b["timings"]["parts_s"]["steps"], 3)
                                     for s, b in zip(reach_s, base)],
                      "steps_s": [r["timings"]["parts_s"]["steps"] for r in runs],
                      "command_s": [r["command_s"] for r in runs]})
    return lines


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
