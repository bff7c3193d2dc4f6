"""What the training-step benchmarks share: acm's compiled step on a preset, and a fixed batch."""
from __future__ import annotations

import mlx.core as mx
import numpy as np

from core import model as model_module
from core.presets import ModelShape
from core.trainer import build_steps, make_optimizer


def compiled_step(model: model_module.GPT, grad_clip: float = 1.0):
    """The product's fused step (AdamW, clipping at `grad_clip` as acm.toml's default) and its state."""
    opt = make_optimizer(3e-4, 0.1)
    state = [model.state, opt.state]
    step, _, _, _ = build_steps(model, opt, state, grad_clip=grad_clip)
    return step, opt, state


def fixed_batch(shape: ModelShape, batch: int, seq: int) -> tuple[mx.array, mx.array]:
    """A random (seed 0) batch of inputs and next-token targets, the same for every run."""
    tokens = np.random.default_rng(0).integers(0, shape.vocab_size, (batch, seq + 1), dtype=np.int32)
    return mx.array(tokens[:, :-1]), mx.array(tokens[:, 1:])
