"""Seconds to load a run's checkpoint for generation, with the weights' range check and without it,
in turn (`core.generate.decode.check_range`), and the check alone: one JSON line.

usage: python bench/load_cost.py PROJECT/acm.toml [ROUNDS]
"""
from __future__ import annotations

import json
import sys
import time

import mlx.core as mx

from core import config
from core.generate import decode


def timed_load(cfg: config.Config) -> tuple[float, decode.LoadedModel]:
    mx.synchronize()
    start = time.perf_counter()
    lm = decode.load_model(cfg)
    mx.synchronize()
    return time.perf_counter() - start, lm


def main(argv: list[str]) -> None:
    cfg = config.load(argv[0])
    rounds = int(argv[1]) if len(argv) > 1 else 3
    real, out = decode.check_range, []
    try:
        for number in range(rounds):
            for checked in (True, False):
                decode.check_range = real if checked else (lambda *a, **k: None)
                seconds, lm = timed_load(cfg)
                out.append({"round": number, "checked": checked, "s": round(seconds, 4)})
    finally:
        decode.check_range = real
    start = time.perf_counter()
    largest = decode.largest_weight(lm.model.parameters())
    print(json.dumps({"bench": "load_cost", "rounds": out, "largest_weight_s": round(time.perf_counter() - start, 4),
                      "largest": largest, "preset": lm.model.shape.name, "device": str(mx.default_device())}))


if __name__ == "__main__":
    main(sys.argv[1:])
