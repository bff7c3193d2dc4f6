"""Every GPU kernel of acm's compiled training step, timed by CUPTI, grouped by kind.

usage: python bench/trace_step.py --preset tiny --batch 16 --seq 1024 [--top 30] [--sync]   one JSON line
Needs an NVIDIA GPU and PyTorch in the same environment: PyTorch's profiler (CUPTI) records every
kernel the process launches, MLX's included, so this shows where the step's GPU time goes
(matrix multiplies, attention, fused elementwise kernels, reductions, copies) and how much of the
step's wall time the GPU sits idle waiting for launches. Kernels the step's CUDA graphs do not order
run side by side, so each name and kind also gets its time running alone (`alone_ms`), and the step
the time at least one kernel runs (`gpu_active_ms_per_step`) beside the kernels' summed durations
(`gpu_busy_ms_per_step`): removing a kernel saves nearer its time alone than its duration. The
steps are queued as the trainer queues them (--sync waits for each); the GPU's idle stretches between
kernels are summed by length, the longest listed with the kernels around them, and `host_ms_per_step`
is what Python and MLX spend on the host building and launching a step's graphs.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict

import mlx.core as mx
from gpu_kernels import Tracer, idle_gaps, timeline
from step_setup import compiled_step, fixed_batch

from core.model.gpt import GPT
from core.presets import get_preset

KINDS = [  # first match wins
    ("gemm", r"gemm|cutlass|sm90_xmma|cublas|nvjet|matmul"),
    ("attention", r"sdpa|flash|fmha|attn|cudnn"),
    ("layer_norm", r"layer_norm|layernorm"),
    ("reduce", r"reduce|row_reduce|col_reduce|all_reduce|logsumexp|softmax|cross_entropy"),
    ("copy", r"copy|gather|scatter|concat|transpose"),
    ("fused_elementwise", r"compiled|fused|jit"),
    ("elementwise", r"binary|unary|ternary|elementwise|arange|fill"),
]


def kind_of(name: str) -> str:
    low = name.lower()
    return next((k for k, pat in KINDS if re.search(pat, low)), "other")


def main() -> None:
    tracer = Tracer("trace_step.py")
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--gaps", type=int, default=15, help="how many of the longest idle stretches to list")
    p.add_argument("--sync", action="store_true", help="wait for each step before building the next")
    a = p.parse_args()
    shape = get_preset(a.preset)
    mx.random.seed(0)
    step, _, state = compiled_step(GPT(shape, "bfloat16"))
    x, y = fixed_batch(shape, a.batch, a.seq)
    for _ in range(3):
        mx.eval(step(x, y), state)
    with tracer.kernels() as traced:
        wall, host = run_steps(step, state, x, y, a.steps, a.sync)
    events = traced()
    active, alone = timeline([(ev.time_range.start, ev.time_range.end) for ev in events])
    per_name: dict[str, list] = defaultdict(lambda: [0.0, 0, 0.0])
    for ev, solo in zip(events, alone):
        d = per_name[ev.name]
        d[0] += ev.device_time_total / 1e3 / a.steps  # ms per step
        d[1] += 1
        d[2] += solo / 1e3 / a.steps
    per_kind: dict[str, list] = defaultdict(lambda: [0.0, 0.0])
    for name, (ms, _, solo) in per_name.items():
        kind = per_kind[kind_of(name)]
        kind[0] += ms
        kind[1] += solo
    busy = sum(ms for ms, _ in per_kind.values())
    top = sorted(per_name.items(), key=lambda kv: -kv[1][0])[: a.top]
    print(json.dumps({
        "preset": a.preset, "batch": a.batch, "seq": a.seq, "queued": not a.sync,
        "wall_ms_per_step": round(wall, 2), "host_ms_per_step": round(host, 2),
        "gpu_busy_ms_per_step": round(busy, 2), "gpu_active_ms_per_step": round(active / 1e3 / a.steps, 2),
        "kernels_per_step": sum(c for _, c, _ in per_name.values()) // a.steps,
        "by_kind_ms": {k: round(v[0], 2) for k, v in sorted(per_kind.items(), key=lambda kv: -kv[1][0])},
        "by_kind_alone_ms": {k: round(v[1], 2) for k, v in sorted(per_kind.items(), key=lambda kv: -kv[1][1])},
        "top_kernels": [{"name": n[:120], "ms": round(ms, 3), "alone_ms": round(solo, 3), "calls": c // a.steps,
                         "kind": kind_of(n)} for n, (ms, c, solo) in top],
        **idle_summary(events, a.steps, a.gaps),
    }), flush=True)


def run_steps(step, state, x, y, steps: int, sync: bool) -> tuple[float, float]:
    """(wall ms a step, host ms a step building and launching it), steps queued one ahead as the
    trainer queues them unless `sync`."""
    host, ahead = 0.0, None
    t = time.perf_counter()
    for i in range(steps):
        h = time.perf_counter()
        out = ahead or step(x, y)
        mx.async_eval(out, state)
        ahead = step(x, y) if i + 1 < steps and not sync else None
        if ahead:
            mx.async_eval(ahead, state)
        host += time.perf_counter() - h
        out[0].item()
    return (time.perf_counter() - t) / steps * 1e3, host / steps * 1e3


GAP_BUCKETS_US = (5, 20, 100, 1000)


def idle_summary(events: list, steps: int, top: int) -> dict:
    """The GPU's idle time between the traced window's kernels, a step: in all, by stretch length
    (under 5, 20, 100 and 1,000 µs, and longer), and the longest stretches with the kernels around them."""
    gaps = idle_gaps([(ev.time_range.start, ev.time_range.end) for ev in events])
    buckets = [0.0] * (len(GAP_BUCKETS_US) + 1)
    for start, end, _, _ in gaps:
        buckets[sum(end - start >= b for b in GAP_BUCKETS_US)] += (end - start) / 1e3 / steps
    names = [f"<{b}us" for b in GAP_BUCKETS_US] + [f">={GAP_BUCKETS_US[-1]}us"]
    longest = sorted(gaps, key=lambda g: g[0] - g[1])[:top]
    return {
        "idle_ms_per_step": round(sum(buckets), 2), "idle_gaps_per_step": len(gaps) // steps,
        "idle_ms_by_gap": dict(zip(names, (round(b, 3) for b in buckets))),
        "longest_gaps": [{"us": round(end - start, 1), "after": events[i].name[:70], "before": events[j].name[:70]}
                         for start, end, i, j in longest],
    }


if __name__ == "__main__":
    main()
