"""A validation check's loss, its batches read several to a forward pass where the device has room.

A check reads `eval_batches` fixed batches (20 by default) of the step's shape. One at a time, each
forward pass is too small to fill a large GPU: on an H100 a check of 20 tiny batches took 0.106-0.115 s
read one at a time and 0.085-0.090 s four at a time, the same loss to six digits, for 0.27 GB more
(bench/RESULTS.md). So on an NVIDIA GPU a check reads up to GROUP_MOST batches a pass, as many as a
training step of that many batches, reckoned generously, would leave room for; elsewhere one at a
time (not measured on Apple silicon, where the step shares its memory with the system).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import mlx.core as mx

from core.config import StageConfig
from core.model import cuda_kernels
from core.presets import ModelShape
from core.train.memory import MEMORY_SHARE, reckoned_bytes

GROUP_MOST = 4


def on_nvidia() -> bool:
    return cuda_kernels.available()


def group_most(shape: ModelShape, sc: StageConfig, compute_dtype: str, limit: int, world: int = 1) -> int:
    """The most validation batches one forward pass may read on a device of `limit` bytes (0:
    unknown): on an NVIDIA GPU, up to GROUP_MOST, where a training step of that many batches would
    be reckoned within MEMORY_SHARE of the device's memory (a forward pass alone takes far less);
    elsewhere, and on several ranks (each must make the same passes, and their devices may differ),
    one."""
    if not (limit and world == 1 and on_nvidia()):
        return 1
    return next((g for g in range(GROUP_MOST, 1, -1)
                 if reckoned_bytes(shape, replace(sc, batch_size=g * sc.batch_size), compute_dtype)
                 <= MEMORY_SHARE * limit), 1)


def group_of(batches: int, most: int) -> int:
    """Batches a pass reads: the most, up to `most`, that divide `batches` evenly, so that every pass
    weighs alike in the mean and has one shape (compiled once)."""
    return max(g for g in range(1, most + 1) if batches % g == 0)


def pass_rows(shape: ModelShape, sc: StageConfig, compute_dtype: str, limit: int) -> int:
    """The rows of a validation pass of a stage with every batch a check reads (the readying's shape)."""
    return group_of(sc.eval_batches, group_most(shape, sc, compute_dtype, limit)) * sc.batch_size


def mean_loss(eval_loss: Callable[[mx.array, mx.array], mx.array],
              draw: Callable[[int], tuple], batches: int, most: int) -> mx.array:
    """The mean of `eval_loss` over validation batches 0..batches-1 (`draw(i)`: batch i's inputs and
    targets), read up to `most` to a pass; queued, not evaluated, but for the sums of each
    QUEUED_PASSES passes of a long check."""
    size = group_of(batches, most)
    losses, sums = [], []
    for first in range(0, batches, size):
        xs, ys = zip(*(draw(i) for i in range(first, first + size)))
        x, y = (mx.array(a[0]) if size == 1 else mx.concatenate([mx.array(b) for b in a]) for a in (xs, ys))
        losses.append(eval_loss(x, y))
        if len(losses) == QUEUED_PASSES and first + size < batches:
            sums.append(mx.sum(mx.stack(losses)))
            mx.eval(sums[-1])  # what these passes held is freed
            losses = []
    if not sums:
        return mx.mean(mx.stack(losses))
    return mx.sum(mx.stack([*sums, *losses])) / (batches // size)


QUEUED_PASSES = 64  # passes queued before their sum is evaluated: a check of thousands of batches in bounded memory
