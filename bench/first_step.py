"""Where a stage's first step goes: what the step costs before it runs at its steady rate.

Builds the product's model and step on a preset (as `acm train` does), then times each part of the
first steps apart: building the model and optimizer, tracing the compiled step (the first call
builds the graph), running it the first time (MLX compiles or loads its kernels and records the
device's graphs), the next few steps, the steady step (median of `--steady` steps), and the first
and second validation loss (its own compiled graph). Then steps queued one ahead, as the trainer
queues them: the wall a step, the wall of queuing one (waits inside MLX included) and the queuing
thread's CPU time, which show whether the device or the CPU sets the pace. With --host-calls (an
NVIDIA GPU and PyTorch beside MLX) the first run is traced: its GPU kernels' time and the host's CUDA
runtime and driver calls by name (graph instantiation, module loads, allocations), so what is left of
its wall is the libraries' own host work (plans, heuristics). Prints one JSON line.

usage: python bench/first_step.py [--preset tiny] [--dtype bfloat16] [--batch 8] [--seq 1024] [--steady 30]
                                  [--queued 60] [--optimizer adamw|muon]
                                  [--mlx-layer-norm] [--host-calls]
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections import defaultdict

import mlx.core as mx
from gpu_kernels import Tracer
from step_setup import fixed_batch, shape_arguments
from train_step import use_mlx_layer_norm

from core.hardware import device_label
from core.model.gpt import GPT
from core.presets import get_preset
from core.train.optimizer import FlatAdamW
from core.train.step import build_steps


def timed(fn) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    p = shape_arguments(__doc__)
    p.add_argument("--steady", type=int, default=30)
    p.add_argument("--queued", type=int, default=60, help="steps queued one ahead, as the trainer runs them")
    p.add_argument("--optimizer", choices=("adamw", "muon"), default="adamw",
                   help="muon: the blocks' matrices by Muon (0.02), as the recipe trains")
    p.add_argument("--mlx-layer-norm", action="store_true", help="MLX's layer norm instead of acm's CUDA kernels")
    p.add_argument("--host-calls", action="store_true", help="trace the first run's kernels and CUDA calls")
    a = p.parse_args()
    tracer = Tracer("first_step.py --host-calls") if a.host_calls else None
    if a.mlx_layer_norm:
        use_mlx_layer_norm()
    shape = get_preset(a.preset)

    def build():
        model = GPT(shape, a.dtype)
        opt = FlatAdamW(model.parameters(), 3e-4, 0.1, model.compute_dtype,
                        muon_lr=0.02 if a.optimizer == "muon" else None)
        model.update(opt.parameters())
        mx.eval(opt.state)
        return model, opt

    (model, opt), build_s = timed(build)
    (step, _, _, eval_loss), steps_s = timed(lambda: build_steps(model, opt, grad_clip=1.0))
    x, y = fixed_batch(shape, a.batch, a.seq)
    mx.eval(x, y)
    out, trace_s = timed(lambda: step(x, y))
    with tracer.host_calls() if tracer else contextlib.nullcontext() as split:
        _, first_run_s = timed(lambda: mx.eval(out, opt.state))
    calls = host_call_summary(*split()) if tracer else {}
    next_s = [timed(lambda: mx.eval(step(x, y), opt.state))[1] for _ in range(4)]
    steady = [timed(lambda: mx.eval(step(x, y), opt.state))[1] for _ in range(a.steady)]
    _, val_first_s = timed(lambda: eval_loss(x, y).item())
    _, val_second_s = timed(lambda: eval_loss(x, y).item())
    step_s = statistics.median(steady)
    queued = queued_steps(step, opt, x, y, a.queued)
    print(json.dumps({
        "bench": "first_step", "device": device_label(), "preset": a.preset, "dtype": a.dtype,
        "batch": a.batch, "seq": a.seq, "optimizer": a.optimizer,
        "muon_matrices": sum(r.count for r in opt.muon_runs), "mlx_layer_norm": a.mlx_layer_norm,
        "cuda_graphs": os.environ.get("MLX_USE_CUDA_GRAPHS", "default"),
        "build_model_and_optimizer_s": round(build_s, 3),
        "build_steps_s": round(steps_s, 4), "first_call_trace_s": round(trace_s, 3),
        "first_run_s": round(first_run_s, 3), "next_steps_s": [round(s, 4) for s in next_s],
        "steady_step_s": round(step_s, 5),
        "first_step_beyond_steady_s": round(trace_s + first_run_s - step_s, 3),
        "validation_first_s": round(val_first_s, 3), "validation_second_s": round(val_second_s, 4),
        **queued, **calls,
    }), flush=True)


def host_call_summary(kernels: list, host: list, top: int = 20) -> dict:
    """The traced first run's GPU kernels (count, ms) and its host calls' ms by name, the longest first."""
    by_name: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for ev in host:
        by_name[ev.name][0] += ev.cpu_time_total / 1e3
        by_name[ev.name][1] += 1
    longest = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "first_run_kernels": len(kernels),
        "first_run_kernel_ms": round(sum(ev.device_time_total for ev in kernels) / 1e3, 2),
        "first_run_host_calls_ms": {name[:80]: [round(ms, 2), n] for name, (ms, n) in longest},
    }


def queued_steps(step, opt, x, y, n: int) -> dict:
    """`n` steps each queued while the one before runs (the trainer's loop, less its batch copies and
    learning rate): medians of the wall a step, of the wall of queuing one, and of the queuing
    thread's CPU time for it; nothing for `n` = 0."""
    if not n:
        return {}
    walls, queue, cpu = [], [], []
    current = step(x, y)
    mx.async_eval(*current, opt.state)
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.thread_time()
        ahead = step(x, y)
        mx.async_eval(*ahead, opt.state)
        queue.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        current[0].item()
        walls.append(time.perf_counter() - t0)
        current = ahead
    mx.eval(current)
    med = statistics.median
    return {"queued_step_s": round(med(walls), 5), "queue_s": round(med(queue), 5), "queue_cpu_s": round(med(cpu), 5)}


if __name__ == "__main__":
    main()
