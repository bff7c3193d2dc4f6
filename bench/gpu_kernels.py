"""What the kernel-tracing benchmarks share: PyTorch's profiler (CUPTI), which records every GPU kernel
the process launches, MLX's included."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence


class Tracer:
    """PyTorch's CUDA profiler, imported and started before any MLX work on the GPU; without
    PyTorch, one line saying what `script` needs."""

    def __init__(self, script: str):
        try:
            import torch
            from torch.profiler import ProfilerActivity, profile
        except ImportError:
            raise SystemExit(f"{script} needs PyTorch with CUDA beside MLX: its profiler records "
                             "the GPU's kernels") from None
        torch.cuda.init()
        self._torch, self._profile, self._cuda = torch, profile, ProfilerActivity.CUDA

    @contextlib.contextmanager
    def kernels(self) -> Iterator[Callable[[], list]]:
        """Profile the block; the yielded function lists its GPU kernels once the block has run
        (each with .name, .device_time_total and .time_range's .start and .end, in µs)."""
        gpu = self._torch.autograd.DeviceType.CUDA
        with self._profile(activities=[self._cuda]) as prof:
            yield lambda: [ev for ev in prof.events() if ev.device_type == gpu]


def timeline(spans: Sequence[tuple[float, float]]) -> tuple[float, list[float]]:
    """(the time at least one kernel runs, each kernel's time running alone) for kernels' (start, end).

    A GPU runs kernels side by side where nothing orders them (MLX's CUDA graphs do not), so the
    kernels' durations can add up to more than the step; what removing a kernel could save is
    nearer its time alone than its duration."""
    edges = sorted((t, kind, i) for i, (start, end) in enumerate(spans) for t, kind in ((start, 1), (end, -1)))
    active: set[int] = set()
    alone = [0.0] * len(spans)
    busy, last = 0.0, None
    for t, kind, i in edges:
        if last is not None and active:
            busy += t - last
            if len(active) == 1:
                alone[next(iter(active))] += t - last
        (active.add if kind == 1 else active.discard)(i)
        last = t
    return busy, alone
