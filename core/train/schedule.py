"""The learning-rate schedule: linear warmup, then cosine decay to min_lr_ratio x peak.

A pure function of the step, so a resumed run continues on exactly the same curve.
"""
from __future__ import annotations

import math


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = max(total - warmup - 1, 1)  # the last step (total - 1) is at the floor
    progress = min(max(step - warmup, 0) / decay_steps, 1.0)
    floor = peak * min_ratio
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
