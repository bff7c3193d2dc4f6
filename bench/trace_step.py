"""Every GPU kernel of acm's compiled training step, timed by CUPTI, grouped by kind.

usage: python bench/trace_step.py --preset tiny --batch 16 --seq 1024 [--top 30]   one JSON line
Needs an NVIDIA GPU and PyTorch in the same environment: PyTorch's profiler (CUPTI) records every
kernel the process launches, MLX's included, so this shows where the step's GPU time goes
(matrix multiplies, attention, fused elementwise kernels, reductions, copies) and how much of the
step's wall time the GPU sits idle waiting for launches.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict

import mlx.core as mx
from gpu_kernels import Tracer
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
    a = p.parse_args()
    shape = get_preset(a.preset)
    mx.random.seed(0)
    step, _, state = compiled_step(GPT(shape, "bfloat16"))
    x, y = fixed_batch(shape, a.batch, a.seq)
    for _ in range(3):
        mx.eval(step(x, y), state)
    with tracer.kernels() as traced:
        t = time.perf_counter()
        for _ in range(a.steps):
            mx.eval(step(x, y), state)
        wall = (time.perf_counter() - t) / a.steps * 1e3
    per_name: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for ev in traced():
        d = per_name[ev.name]
        d[0] += ev.device_time_total / 1e3 / a.steps  # ms per step
        d[1] += 1
    per_kind: dict[str, float] = defaultdict(float)
    for name, (ms, _) in per_name.items():
        per_kind[kind_of(name)] += ms
    busy = sum(per_kind.values())
    top = sorted(per_name.items(), key=lambda kv: -kv[1][0])[: a.top]
    print(json.dumps({
        "preset": a.preset, "batch": a.batch, "seq": a.seq, "wall_ms_per_step": round(wall, 2),
        "gpu_busy_ms_per_step": round(busy, 2), "kernels_per_step": sum(c for _, c in per_name.values()) // a.steps,
        "by_kind_ms": {k: round(v, 2) for k, v in sorted(per_kind.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": n[:120], "ms": round(ms, 3), "calls": c // a.steps, "kind": kind_of(n)}
                        for n, (ms, c) in top],
    }), flush=True)


if __name__ == "__main__":
    main()
