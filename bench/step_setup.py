"""What the training-step benchmarks share: acm's compiled step on a preset, and a fixed batch."""
from __future__ import annotations

import argparse
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

from core.hardware import configure_mlx
from core.model import gpt as model_module
from core.presets import ModelShape
from core.train.optimizer import FlatAdamW, reference_adamw
from core.train.step import build_steps

configure_mlx()  # the product's default CUDA graph size, as `acm` sets it (before any GPU work)


def compiled_step(model: model_module.GPT, grad_clip: float = 1.0, muon_lr: float | None = None):
    """The product's step (flat AdamW, clipping at `grad_clip` as acm.toml's default; Muon for the
    blocks' matrices at `muon_lr` where given), its optimizer and the state to evaluate after each call."""
    opt = FlatAdamW(model.parameters(), 3e-4, 0.1, model.compute_dtype, muon_lr=muon_lr)
    model.update(opt.parameters())  # the buffers hold the weights, as in the trainer
    step, _, _, _ = build_steps(model, opt, grad_clip=grad_clip)
    return step, opt, [opt.state]


def per_tensor_step(model: model_module.GPT, grad_clip: float = 1.0):
    """The step acm used before `FlatAdamW`: MLX's AdamW tensor by tensor on float32 weights cast per
    call, and the global norm as one (1, n) @ (n, 1) product per gradient. For comparison only."""
    opt = reference_adamw(3e-4, 0.1)
    state = [model.state, opt.state]
    loss_and_grad = nn.value_and_grad(model, lambda m, x, y: m.loss(x, y))

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        flats = [g.reshape(-1).astype(mx.float32) for _, g in tree_flatten(grads)]
        norm = mx.sqrt(sum((f[None] @ f[:, None]).reshape(()) for f in flats))
        if grad_clip > 0:
            scale = mx.minimum(1.0, grad_clip / (norm + 1e-6))
            grads = tree_map(lambda g: g * scale, grads)
        opt.update(model, grads)
        return loss, norm

    return step, opt, state


def fixed_batch(shape: ModelShape, batch: int, seq: int) -> tuple[mx.array, mx.array]:
    """A random (seed 0) batch of inputs and next-token targets, the same for every run."""
    tokens = np.random.default_rng(0).integers(0, shape.vocab_size, (batch, seq + 1), dtype=np.int32)
    return mx.array(tokens[:, :-1]), mx.array(tokens[:, 1:])


def shape_arguments(doc: str) -> argparse.ArgumentParser:
    """A bench's command line with the step's shape: --preset, --dtype, --batch and --seq (tiny, bf16, 8 x 1024)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    return p
