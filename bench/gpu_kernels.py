"""What the kernel-tracing benchmarks share: PyTorch's profiler (CUPTI), which records every GPU kernel
the process launches, MLX's included."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


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
        (each with .name and .device_time_total, in µs)."""
        gpu = self._torch.autograd.DeviceType.CUDA
        with self._profile(activities=[self._cuda]) as prof:
            yield lambda: [ev for ev in prof.events() if ev.device_type == gpu]
