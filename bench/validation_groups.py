"""What a validation check costs with its batches read one at a time or grouped into larger forward
passes: the same tokens, the same mean loss (to rounding).

Builds the product's model and compiled step on a preset, takes a few steps, then times a check of
`--batches` batches of `--batch` x `--seq` tokens read 1, 2, 4 and 10 at a time (then 1 again):
the first check of each grouping (its graph compiled) and the median of five more, the loss, and the
peak memory from that grouping's start (the model, optimizer and all the batches included: only the
differences between groupings say what grouping costs). A grouping that does not divide `--batches`
is left out and named in `skipped`. Prints one JSON line.

usage: python bench/validation_groups.py [--preset tiny] [--dtype bfloat16] [--batch 8] [--seq 1024]
                                         [--batches 20]
"""
from __future__ import annotations

import json
import statistics
import time

import mlx.core as mx
from step_setup import compiled_step, fixed_batch, shape_arguments

from core.hardware import device_label
from core.model.gpt import GPT
from core.presets import get_preset
from core.train.step import build_steps

GROUPS = (1, 2, 4, 10, 1)


def check(eval_loss, x: mx.array, y: mx.array, width: int) -> float:
    """One validation check over all the rows of x, `width` rows a forward pass: the mean loss."""
    losses = [eval_loss(x[i:i + width], y[i:i + width]) for i in range(0, x.shape[0], width)]
    return float(mx.mean(mx.stack(losses)).item())


def main() -> None:
    p = shape_arguments(__doc__)
    p.add_argument("--batches", type=int, default=20)
    a = p.parse_args()
    shape = get_preset(a.preset)
    model = GPT(shape, a.dtype)
    step, opt, state = compiled_step(model)
    eval_loss = build_steps(model, opt, grad_clip=1.0)[3]
    rows = a.batch * a.batches
    x, y = fixed_batch(shape, rows, a.seq)
    mx.eval(x, y)
    for _ in range(5):
        mx.eval(step(x[:a.batch], y[:a.batch]), state)
    out = {"bench": "validation_groups", "device": device_label(), "preset": a.preset, "dtype": a.dtype,
           "batch": a.batch, "seq": a.seq, "batches": a.batches, "checks": [],
           "skipped": sorted({g for g in GROUPS if a.batches % g})}
    for group in GROUPS:
        if a.batches % group:
            continue
        width = a.batch * group
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        loss = check(eval_loss, x, y, width)
        first = time.perf_counter() - t0
        again = []
        for _ in range(5):
            t0 = time.perf_counter()
            check(eval_loss, x, y, width)
            again.append(time.perf_counter() - t0)
        out["checks"].append({"group": group, "first_s": round(first, 4),
                              "median_s": round(statistics.median(again), 4), "loss": round(loss, 5),
                              "peak_gb": round(mx.get_peak_memory() / 1e9, 2)})
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
