"""How free the UI thread stays while the app trains: event-loop lag and redraws per second.

usage: python bench/ui_latency.py -c PROJECT/acm.toml [--seconds 5]     prints one JSON line
Needs token shards (acm prepare). Starts in-app pretraining from the Train pane, samples the
event loop's lag with 10 ms sleeps, counts chart redraws, then stops the run (a checkpoint is
written into a new run folder).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

from acm_tui.app import AcmApp


async def measure(config: str, seconds: float) -> dict:
    app = AcmApp(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4", "p")
        pane = app.query_one("#train-pane")
        while len(pane.history) < 1 and pane.state != "failed":
            await asyncio.sleep(0.1)
        lags, redraws, start = [], pane.redraws, time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append((time.perf_counter() - t - 0.01) * 1e3)
        elapsed = time.perf_counter() - start
        result = {
            "bench": "ui_latency", "state": pane.state, "samples": len(lags),
            "loop_lag_ms_max": round(max(lags), 1), "loop_lag_ms_p99": round(sorted(lags)[int(len(lags) * 0.99)], 1),
            "redraws_per_s": round((pane.redraws - redraws) / elapsed, 1),
            "tokens_per_s": round(pane.history[-1].tokens_per_s) if pane.history else None,
        }
        pane.action_stop()
        while pane.control is not None:
            await asyncio.sleep(0.1)
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-c", "--config", default="acm.toml")
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args()
    print(json.dumps(asyncio.run(measure(a.config, a.seconds))))


if __name__ == "__main__":
    main()
