"""A stage's step run once on a throwaway model: the work of readying an engine (core/train/ready.py).

Its imports are the step's own (MLX, the model, the optimizer, the settings), so that `acm train`
can run it on its engine while the rest of acm is still being imported (`ready_stage`, started by
core/cli/early.py): MLX's first run of a step spends most of its time in the GPU's libraries, with
Python's lock released, and the imports go on meanwhile. The live samples' modules are imported
only once the step has run.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlx.core as mx

from core import config
from core.atomic import JSON_LIMIT, read_regular
from core.config import Config, StageConfig
from core.engine import Engine
from core.errors import AcmError
from core.hardware import memory_limit
from core.presets import ModelShape
from core.train.memory import MEMORY_SHARE, reckoned_bytes
from core.train.step import Built, build_steps, built_for, keep, new_model
from core.train.validation import pass_rows

if TYPE_CHECKING:
    from core.tokenizer.bpe import AcmTokenizer

READY_JOB = "ready"  # the readying's name on the engine: a quit does not wait for it


@dataclass(frozen=True)
class Readied:
    """What readying did: the stages whose steps ran (none: skipped, `why` says why), its seconds,
    and whether a job waiting behind it cut it short (what it left, that job's stage pays)."""
    stages: tuple[str, ...]
    seconds: float
    why: str = ""
    cut: bool = False

    def describe(self) -> str:
        if not self.stages:
            return f"the training step was not readied: {self.why}"
        rest = "; the rest left to the stage that came meanwhile" if self.cut else ""
        return f"{' and '.join(self.stages)} step readied in {self.seconds:.1f} s{rest}"


def unwise(cfg: Config, stages: list[str], shape: ModelShape, limit: int) -> str:
    """Why readying the steps of `stages` (a model of `shape`) on a device of `limit` bytes (0:
    unknown) would be unwise; empty where it is not. A step reckoned above MEMORY_SHARE of the
    device's memory is not readied: on Apple silicon a Metal allocation that fails ends the process."""
    if cfg.train.ranks > 1:
        return "stages train on several ranks, in processes of their own"
    if any(getattr(cfg.train, s).seq_len > shape.n_ctx for s in stages):
        return "a stage's seq_len exceeds the model's context"
    need = max(reckoned_bytes(shape, getattr(cfg.train, s), cfg.model.compute_dtype) for s in stages)
    if limit and need > MEMORY_SHARE * limit:
        return (f"a step may take {need / 2**30:.1f} GB, more than {MEMORY_SHARE:.0%} of the device's "
                f"{limit / 2**30:.1f} GB")
    return ""


def on_a_gpu() -> bool:
    """Whether MLX computes on a GPU, whose libraries a first step loads (on the CPU, readying a
    stage would only take the cores its steps are about to use)."""
    return mx.default_device().type == mx.DeviceType.gpu


def submit_ready(engine: Engine, ready: Callable[..., Readied], *args, **kwargs) -> Future:
    """`ready(*args, **kwargs, waited_for=...)` as the engine's job READY_JOB (a shutdown or a Ctrl-C
    may abandon it), told to stop after the part under way once another job is queued behind it."""
    return engine.submit_named(READY_JOB, ready, *args, waited_for=lambda: engine.queued, **kwargs)


def run_step(cfg: Config, sc: StageConfig, shape: ModelShape, tokenizer: Callable[[], AcmTokenizer] | None,
             waited_for: Callable[[], bool], stage: str = "pretrain", kept: bool = False) -> bool:
    """One step of a stage's settings on a throwaway model of `shape`, its validation loss, then,
    given `tokenizer`, a check's live samples; False where `waited_for()` stopped it after a part.
    With `kept`, the model, its optimizer and their compiled steps are left for the stage that
    follows on this thread (core/train/step.py's `keep`)."""
    model, opt = new_model(cfg, shape, sc)
    mx.eval(opt.state)
    model.update(opt.parameters())
    steps = build_steps(model, opt, sc.grad_clip)
    fused_step, grad_step, apply_step, eval_loss = steps
    x = mx.zeros((sc.batch_size, sc.seq_len), mx.int32)
    if sc.grad_accum == 1:
        mx.eval(fused_step(x, x), opt.state)
    else:  # as the trainer accumulates: float32 gradients, then the update
        loss, grads = grad_step(x, x)
        mx.eval(apply_step(loss, {k: g.astype(mx.float32) for k, g in grads.items()}), opt.state)
    if kept:
        keep(Built(built_for(cfg, shape, sc), model, opt, steps))
    if waited_for():
        return False
    rows = pass_rows(shape, sc, cfg.model.compute_dtype, memory_limit())  # as the stage's checks read them
    mx.eval(eval_loss(*[mx.zeros((rows, sc.seq_len), mx.int32)] * 2))
    if tokenizer is None:
        return True
    if waited_for():
        return False
    from core.train.samples import LiveSampler  # the decoding's modules, imported by now

    # as a check draws them; a stage's last check always samples, whatever train.sample_share says
    LiveSampler(cfg, stage, sc.seed).check(model, opt.compute_views(), tokenizer(), 0, 0.0, last_check=True)
    return True


def ready_stage(settings: Path, stage: str, waited_for: Callable[[], bool], limit: int | None = None,
                clock: Callable[[], float] = time.perf_counter) -> Readied:
    """`acm train STAGE`'s readying, on its engine while the command starts: the stage's step, its
    validation loss and a live-samples decode on a model of the stage's shape (the settings in
    `settings`, the project's tokenizer), stopped after the part under way once the stage is queued
    behind it (`waited_for()`). The model, its optimizer and their compiled steps are left for the
    stage, which resets their state to its own start where it was built the same (`built_for`).
    Skipped where `train.ready_in_command` is off, no settings file or tokenizer can be read (the
    command says why), MLX runs on the CPU, the stage trains on several ranks or its step may not
    fit."""
    start = clock()
    if not settings.is_file():  # named and missing (the command says so), or every default
        return Readied((), 0.0, f"no settings file at {settings}")
    try:
        cfg = config.load(settings)
    except AcmError as e:
        return Readied((), 0.0, str(e))
    shape, why = _shape_to_ready(cfg, stage, memory_limit() if limit is None else limit)
    if shape is None:
        return Readied((), 0.0, why)
    decode = (lambda: _project_tokenizer(cfg)) if cfg.train.samples else None  # no samples: no decoding to load
    # the stage comes next on this engine: it trains on the model, its state reset, and its compiled step
    whole = run_step(cfg, getattr(cfg.train, stage), shape, decode, waited_for, stage, kept=True)
    return Readied((stage,), clock() - start, cut=not whole)


def _shape_to_ready(cfg: Config, stage: str, limit: int) -> tuple[ModelShape | None, str]:
    """The model's shape `ready_stage` readies (the preset's layers over the project tokenizer's
    vocabulary, read without acm's tokenizer module, whose imports are heavy), else None and why."""
    if not cfg.train.ready_in_command:
        return None, "train.ready_in_command is off"
    if not on_a_gpu():
        return None, "no GPU: a first step on the CPU loads nothing it could find ready"
    from tokenizers import Tokenizer  # the library alone: a few milliseconds

    try:
        text = read_regular(cfg.locations.tokenizer_file, JSON_LIMIT).decode("utf-8")  # a FIFO is not waited on
        shape = cfg.model.shape().with_vocab(Tokenizer.from_str(text).get_vocab_size())
    except Exception:  # none yet, or damaged: the stage says so
        return None, "no readable tokenizer"
    why = unwise(cfg, [stage], shape, limit)
    return (None if why else shape), why


def _project_tokenizer(cfg: Config) -> AcmTokenizer:
    from core.tokenizer.bpe import load_tokenizer

    return load_tokenizer(cfg)
