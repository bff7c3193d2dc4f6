"""The training step, compiled: a fresh model and its optimizer, and the step functions a stage runs.

Kept apart from the trainer's loop, with imports of its own few (MLX, the model, the optimizer), so
that a command can run a first step while the rest of acm is still being imported
(core/train/ready_step.py). Such a readying may leave its model, optimizer and compiled steps for the
stage that follows it on the same engine thread (`keep`, `take_kept`): that stage then resets their
state to its own start and skips tracing and compiling its step again.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial

import mlx.core as mx

from core.config import Config, StageConfig
from core.model.gpt import GPT
from core.presets import ModelShape
from core.train.optimizer import FlatAdamW


def new_model(cfg: Config, shape: ModelShape, sc: StageConfig) -> tuple[GPT, FlatAdamW]:
    """A freshly initialised model of `shape` in the settings' compute dtype, and the stage's
    optimizer over its weights (Muon's learning rate only where the stage trains with Muon)."""
    model = GPT(shape, cfg.model.compute_dtype, cfg.model.checkpoint_activations)
    opt = FlatAdamW(model.parameters(), sc.learning_rate, sc.weight_decay, model.compute_dtype,
                    muon_lr=sc.muon_learning_rate if sc.optimizer == "muon" else None)
    return model, opt


@dataclass
class Built:
    """A model, its optimizer and their compiled step functions (`build_steps`), with what they
    were built for (`built_for`)."""
    key: tuple
    model: GPT
    opt: FlatAdamW
    steps: tuple


_engine_thread = threading.local()  # a readied step waiting for the stage after it, on that engine's thread


def built_for(cfg: Config, shape: ModelShape, sc: StageConfig) -> tuple:
    """What a model, its optimizer and their compiled steps are made of: the shape, the compute
    dtype, the activations' checkpointing and the constants of the update (the data, the seed and
    the plan are not in them)."""
    return (shape, cfg.model.compute_dtype, cfg.model.checkpoint_activations, sc.optimizer, sc.learning_rate,
            sc.muon_learning_rate if sc.optimizer == "muon" else None, sc.weight_decay, sc.grad_clip)


def keep(built: Built) -> None:
    """Leave `built` for the next stage on this engine thread (a readying's throwaway model,
    whose step is compiled); it goes with the thread."""
    _engine_thread.kept = built


def take_kept(key: tuple) -> Built | None:
    """What a readying on this thread left (`keep`), where it was built for `key`; either way
    nothing is left behind."""
    kept, _engine_thread.kept = getattr(_engine_thread, "kept", None), None
    return kept if kept is not None and kept.key == key else None


def build_steps(model: GPT, opt: FlatAdamW, grad_clip: float, world: int = 1, buckets: int = 1):
    """The compiled step functions: (fused step, gradient-only step, apply step, eval loss).

    The optimizer's state (weights, moments, step, learning rate) is both input and output of the
    compiled graphs, so weights are never baked in as constants. The model reads views of the
    optimizer's compute-dtype weights, and its gradients come back as one flat array per buffer.
    With several ranks, gradients and losses are averaged across them inside the graph: one
    all-reduce per buffer, or per each of `buckets` pieces of it on a stream of their own, so the
    pieces finished first can travel while the rest is computed.
    """
    state = [opt.state]
    comm = mx.new_stream(mx.default_device()) if world > 1 and buckets > 1 else None

    def average(a: mx.array) -> mx.array:
        return mx.distributed.all_sum(a, stream=comm) / world

    def loss_of(params, x, y):
        model.update(params)
        return model.loss(x, y)

    loss_and_grad = mx.value_and_grad(loss_of)

    def gradients(x, y, reduce=None):
        loss, grads = loss_and_grad(opt.compute_views(), x, y)
        return loss, opt.pack_gradients(grads, model.compute_dtype, reduce, buckets)

    def finish(loss, grads, reduced=False):
        if world > 1:
            grads = grads if reduced else {k: average(g) for k, g in grads.items()}
            loss = mx.distributed.all_sum(loss) / world
        return loss, opt.clip_and_update(grads, grad_clip)

    @partial(mx.compile, inputs=state, outputs=state)
    def fused_step(x, y):
        return finish(*gradients(x, y, average if world > 1 else None), reduced=True)

    @partial(mx.compile, inputs=state)
    def eval_loss(x, y):
        loss = loss_of(opt.compute_views(), x, y)
        return mx.distributed.all_sum(loss) / world if world > 1 else loss

    return (fused_step, partial(mx.compile, inputs=state)(gradients),
            partial(mx.compile, inputs=state, outputs=state)(finish), eval_loss)
