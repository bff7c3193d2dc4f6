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
        self._torch, self._profile, self._activities = torch, profile, ProfilerActivity

    @contextlib.contextmanager
    def kernels(self) -> Iterator[Callable[[], list]]:
        """Profile the block; the yielded function lists its GPU kernels once the block has run
        (each with .name, .device_time_total and .time_range's .start and .end, in µs)."""
        with self._profiled(host=False) as split:
            yield lambda: split()[0]

    @contextlib.contextmanager
    def host_calls(self) -> Iterator[Callable[[], tuple[list, list]]]:
        """Profile the block with the host's CUDA runtime and driver calls too; the yielded function
        gives (GPU kernels, host calls: .name and .cpu_time_total in µs) once the block has run."""
        with self._profiled(host=True) as split:
            yield split

    @contextlib.contextmanager
    def _profiled(self, host: bool) -> Iterator[Callable[[], tuple[list, list]]]:
        gpu = self._torch.autograd.DeviceType.CUDA
        kinds = [self._activities.CUDA] + ([self._activities.CPU] if host else [])
        with self._profile(activities=kinds) as prof:
            def split():
                events = prof.events()
                return [e for e in events if e.device_type == gpu], [e for e in events if e.device_type != gpu]
            yield split


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


def idle_gaps(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float, int, int]]:
    """The GPU's idle stretches between kernels' (start, end): (start, end, the kernel whose end opens
    it, the kernel whose start closes it) each, in time order: the host still building or launching
    a graph (long stretches), or the few microseconds before a kernel that waits on another starts."""
    order = sorted(range(len(spans)), key=lambda i: spans[i][0])
    gaps, reach, last = [], None, -1
    for i in order:
        start, end = spans[i]
        if reach is not None and start > reach:
            gaps.append((reach, start, last, i))
        if reach is None or end > reach:
            reach, last = end, i
    return gaps
