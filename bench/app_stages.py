"""What a user of acm-tui waits for, stage by stage: the Train pane's pretrain, then its fine-tune of
that run, in one app, each from its key to the pane's end, against the steps inside it (the stage's
`timings.json`). The app's process pays Python's start, the imports and MLX's device once, before
the first key; `bench/command_wall.py` is the same figure for `acm train`, a process a stage.

usage: python bench/app_stages.py -c PROJECT/acm.toml [--rounds 2] [--stages pretrain,finetune]
                                  [--ready off,wait,at-once]
PROJECT holds token shards (`acm prepare` done). Each round is a fresh app process (headless Textual
at 80x24) whose pretrain starts a new run; one JSON line a round: the app's start (imports to its
first frame) and, for each stage, its seconds from key to end, the trainer's split and the share of
those seconds around the step (1 - steps / key to end).

`--ready` names how each round's app treats `ui.ready_at_start`, the modes taking turns within a
round: `off` (no readying), `wait` (the first key once the engine has readied the step, as a user
who reads the screen first; `ready_s` is how long after the first frame it ended, 0 if before) or
`at-once` (the first key at the first frame: the stage waits behind the readying, timed from its
key; `readying_at_key` says whether it still ran).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from first_run import project_env  # noqa: E402

KEYS = {"pretrain": "p", "finetune": "f"}


def around_step(stage_s: float, timings: dict) -> float:
    """The share of a stage's wall (key to end) that was not its steps."""
    return round(1 - timings["parts_s"]["steps"] / stage_s, 4)


async def follow(pilot, pane, stage: str, clock) -> float:
    """Press the stage's key in the Train pane and wait for the stage it starts to end; its seconds.
    (A stage of a few steps may end while the key is still being handled.)"""
    start, before = clock(), (pane.attached, pane.stage)
    await pilot.press(KEYS[stage])
    if pane.stage != stage or (pane.attached, pane.stage) == before:
        said = [str(n.message) for n in pane.app._notifications]
        raise SystemExit(f"the Train pane started no {stage}: {said[-1:] or pane.state}")
    while pane.control is not None:
        await asyncio.sleep(0.01)
    if pane.state != "done":
        raise SystemExit(f"{stage} ended {pane.state}")
    return clock() - start


async def session(cfg_path: Path, stages: list[str], ready: str = "off", clock=time.perf_counter) -> dict:
    """One app: its start, then each stage in turn from the Train pane."""
    from core.paths import Paths
    from core.train import timings

    begun = clock()
    from acm_tui.app import AcmApp

    app = AcmApp(cfg_path)
    app.cfg.ui.ready_at_start = ready != "off"  # read as the app mounts
    out: dict = {"bench": "app_stages", "ready": ready}
    async with app.run_test(size=(80, 24)) as pilot:
        out["app_start_s"] = round(clock() - begun, 3)
        if ready == "wait":
            while app.readied is None:
                await asyncio.sleep(0.01)
            out["ready_s"] = max(0.0, round(clock() - begun - out["app_start_s"], 3))
            out["readied"] = app.readied.describe()
        await pilot.press("4")
        pane = app.query_one("#train-pane")
        out["key_after_frame_s"] = round(clock() - begun - out["app_start_s"], 3)
        out["readying_at_key"] = ready != "off" and app.readied is None  # the stage waits behind it
        for stage in stages:
            seconds = await follow(pilot, pane, stage, clock)
            split = timings.read(Paths.stage(pane.attached, stage))
            out[stage] = {"run": pane.run_name, "stage_s": round(seconds, 3), "timings": split,
                          "around_step_share": around_step(seconds, split),
                          "around_step_share_in_trainer": round(1 - split["parts_s"]["steps"] / split["wall_s"], 4)}
    from core.hardware import device_label
    return out | {"device": device_label()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", type=Path, default=Path("acm.toml"))
    p.add_argument("--rounds", type=int, default=2, help="fresh app processes, one after the other")
    p.add_argument("--stages", default="pretrain,finetune")
    p.add_argument("--ready", default="off", help="off, wait, at-once: comma-separated, in turn each round")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    stages = a.stages.split(",")
    modes = a.ready.split(",")
    if set(modes) - {"off", "wait", "at-once"}:
        p.error(f"--ready takes off, wait and at-once, not {a.ready!r}")
    if a.child:
        print(json.dumps(asyncio.run(session(a.config.resolve(), stages, modes[0]))))
        return
    for n in range(1, a.rounds + 1):
        for mode in modes:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--child", "-c", str(a.config.resolve()),
                                   "--stages", a.stages, "--ready", mode], cwd=a.config.resolve().parent,
                                  env=project_env(), capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"round {n} ({mode}) failed: {done.stderr.strip()[-800:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(row | {"round": n, "process_s": round(time.perf_counter() - started, 3)}), flush=True)


if __name__ == "__main__":
    main()
