"""What watching a stage costs: training tokens/s with the app following it against headless, and
the wall time of a stage with live samples against without.

usage: python bench/monitor_overhead.py -c PROJECT/acm.toml [--stage pretrain] [--steps 1200]
           [--repeats 2] [--variants headless,app,quiet] [--quiet-set train.samples=0]
prints one JSON line per run, then a summary line. Needs the stage's token shards (and a pretrain
checkpoint for finetune). Each run is a fresh process in a new run folder (bench-VARIANT-N), the
variants interleaved so drift on the machine falls on all of them alike:
- headless: `acm train STAGE` from the command line, as a background run or a script would;
- app: acm-tui's Train pane (headless Textual at 80x24) trains the stage on its engine thread while
  it follows and redraws it, as a user watching it would;
- quiet: headless with the --quiet-set settings (by default live samples off).
tokens/s: the median of a run's reports after its first fifth (the compile is left out); wall_s:
the process, start to exit.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from first_run import settings_file  # noqa: E402

from core import config  # noqa: E402
from core.paths import Paths  # noqa: E402
from core.runs import read_metrics  # noqa: E402
from core.runs.events import read_samples  # noqa: E402
from core.train import timings  # noqa: E402


def variant_config(base: Path, variant: str, stage: str, steps: int, sets: list[str]) -> Path:
    """The project's acm.toml with this variant's settings, beside it (so its paths resolve alike)."""
    return settings_file(base, base.with_name(f".bench-{variant}.toml"), [f"train.{stage}.steps={steps}", *sets])


async def train_in_app(cfg_path: Path, stage: str) -> str:
    """Start the stage from the Train pane and follow it to its end; the run's name."""
    from acm_tui.app import AcmApp

    app = AcmApp(cfg_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4", "p" if stage == "pretrain" else "f")
        pane = app.query_one("#train-pane")
        while pane.control is None and pane.state not in ("failed",):
            await asyncio.sleep(0.05)
        while pane.control is not None:
            await asyncio.sleep(0.05)
        return pane.run_name


def one_run(cfg_path: Path, variant: str, stage: str, run: str) -> str:
    if variant == "app":
        return asyncio.run(train_in_app(cfg_path, stage))
    subprocess.run([sys.executable, "-m", "core.cli", "-c", str(cfg_path), "train", stage, "--run", run],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return run


def measured(cfg_path: Path, run: str, stage: str) -> dict:
    """tokens/s and what the stage's files say of it."""
    folder = config.load(cfg_path).locations.run(run)
    reports = [r for r in read_metrics(folder, stage) if r.get("type") == "metrics"]
    steady = reports[len(reports) // 5:] or reports
    sampled = read_samples(folder, stage)
    return {"tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in steady)),
            "steps": reports[-1]["step"] if reports else 0, "samples": len(sampled),
            "sample_s": round(sum({s.step: s.seconds for s in sampled}.values()), 2),  # a check's, once
            "timings": timings.read(Paths.stage(folder, stage))}


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summary(rows: list[dict]) -> dict:
    by = {v: [r for r in rows if r["variant"] == v] for v in {r["variant"] for r in rows}}
    out = {"bench": "monitor_overhead_summary"}
    for variant, runs in by.items():
        out[variant] = {"tokens_per_s_median": round(median_of(runs, "tokens_per_s")),
                        "tokens_per_s": [r["tokens_per_s"] for r in runs], "wall_s": [r["wall_s"] for r in runs]}
    head, app, quiet = by.get("headless"), by.get("app"), by.get("quiet")
    if head and app:
        ratio = median_of(app, "tokens_per_s") / median_of(head, "tokens_per_s")
        out["app_over_headless_tokens_per_s"] = round(ratio, 4)
    if head and quiet:
        out["headless_over_quiet_wall"] = round(median_of(head, "wall_s") / median_of(quiet, "wall_s"), 4)
        out["sample_share_of_wall"] = [round(r["sample_s"] / r["wall_s"], 4) for r in head]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-c", "--config", type=Path, default=Path("acm.toml"))
    p.add_argument("--stage", default="pretrain", choices=["pretrain", "finetune"])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variants", default="headless,app,quiet")
    p.add_argument("--quiet-set", action="append", default=None, metavar="KEY=VALUE",
                   help="settings of the quiet variant (default: train.samples=0)")
    p.add_argument("--one", nargs=2, metavar=("VARIANT", "RUN"), help=argparse.SUPPRESS)
    a = p.parse_args()
    base = a.config.resolve()
    if a.one:
        print(one_run(base, a.one[0], a.stage, a.one[1]))
        return
    quiet = a.quiet_set or ["train.samples=0"]
    rows = []
    for n in range(1, a.repeats + 1):
        for variant in a.variants.split(","):
            cfg_path = variant_config(base, variant, a.stage, a.steps, quiet if variant == "quiet" else [])
            start = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "-c", str(cfg_path), "--stage", a.stage, "--one",
                                  variant, f"bench-{variant}-{n}-{int(time.time())}"],
                                 cwd=ROOT, check=True, capture_output=True, text=True)
            wall = time.perf_counter() - start
            run = out.stdout.strip().splitlines()[-1]
            row = {"bench": "monitor_overhead", "variant": variant, "repeat": n, "run": run, "stage": a.stage,
                   "wall_s": round(wall, 2), **measured(cfg_path, run, a.stage)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps(summary(rows)))


if __name__ == "__main__":
    main()
