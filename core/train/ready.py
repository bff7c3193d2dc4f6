"""The engine made ready to train while it is idle: a stage's first step found compiled.

A process's first run of the training step pays for the GPU's libraries loading their kernels and
planning for the step's shapes (cuBLAS's heuristics, cuDNN's attention plans; Metal's pipelines on
a Mac), its first validation check compiles the loss alone, and its first live samples load the
decoding kernels: about 1-1.5 s of a 25-second stage on an H200, paid again by no later stage of
the same process. acm-tui's engine keeps all of that between stages, so at the app's start, while
the user reads the screen, it runs each distinct training step of the two stages once on a
throwaway model of their shapes (zeros for tokens), a validation loss and a live-samples decode,
then frees it all; nothing in the project is written. A stage started meanwhile waits behind it
for what it would have spent anyway. A pipeline (`acm pipeline run`, the Setup pane's `a`) readies
its engine in the same way while it makes the token shards, the work on the CPU before its first
training stage (`shards_due`: the shards are on their way).

Only where a stage could start (a tokenizer, the pretrain's token shards made with it, one rank)
and nothing trains, and only where the stage's memory, reckoned generously, fits well under the
device's: on Apple silicon a Metal allocation that fails ends the process, and no stage was asked
for yet.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future

import mlx.core as mx

from core import runs
from core.config import Config
from core.engine import Engine
from core.errors import AcmError
from core.hardware import memory_limit
from core.model import model_shape
from core.presets import ModelShape
from core.tokenizer.bpe import AcmTokenizer, load_tokenizer
from core.tokenizer.shards import read_manifest
from core.train.memory import MEMORY_SHARE, reckoned_bytes
from core.train.ready_step import Readied, run_step, submit_ready, unwise

STAGES = ("pretrain", "finetune")


def distinct_steps(cfg: Config) -> list[str]:
    """The stages whose steps differ in what a first run loads (their shapes, accumulation,
    optimizer, clipping or weight decay, a constant of the compiled update): the fine-tune only
    where it differs from the pretrain."""
    keys: dict[tuple, str] = {}
    for stage in STAGES:
        sc = getattr(cfg.train, stage)
        keys.setdefault((sc.batch_size, sc.seq_len, sc.grad_accum > 1, sc.optimizer, sc.grad_clip > 0,
                         sc.weight_decay), stage)
    return list(keys.values())


def why_not(cfg: Config, tok: AcmTokenizer | None, limit: int, shards_due: bool = False) -> str:
    """Why no stage could start now (or, with `shards_due`, once the shards being made are), or
    readying would be unwise; empty when it may go ahead."""
    if tok is None:
        return "no tokenizer yet"
    manifest = read_manifest(cfg, "language")
    if not shards_due and (manifest is None or manifest.get("tokenizer_sha256") != tok.sha256):
        return "the pretrain's token shards are not prepared"
    if runs.live_stage(cfg) is not None:
        return "a stage is training"
    return unwise(cfg, distinct_steps(cfg), model_shape(cfg, tok), limit)


def may_keep(cfg: Config, stages: list[str], shape: ModelShape, limit: int) -> bool:
    """Whether the first step's model may be kept while the others are readied: only where all of
    them are reckoned to fit together on a device of `limit` bytes (0: unknown)."""
    need = sum(reckoned_bytes(shape, getattr(cfg.train, s), cfg.model.compute_dtype) for s in stages)
    return len(stages) == 1 or bool(limit) and need <= MEMORY_SHARE * limit


def ready_engine(cfg: Config, limit: int | None = None, begun: Callable[[list[str]], object] | None = None,
                 clock: Callable[[], float] = time.perf_counter, shards_due: bool = False,
                 waited_for: Callable[[], bool] = lambda: False, keep: bool = False) -> Readied:
    """Run each distinct training step once, then a validation loss and a live-samples decode, on a
    throwaway model of the project's shapes (call on the engine thread); nothing in the project is
    written (on NVIDIA GPUs acm's kernels may be compiled into their cache). `begun`
    hears the stages once it is decided to go ahead (a skip is decided in milliseconds). Once
    `waited_for()` (a job queued behind it on the engine), it stops after the part under way: the
    parts done are what that job's stage would have spent first, the rest it pays itself. With
    `keep` (a stage comes next on this engine, as in a pipeline), the first step's model is left
    for that stage (core/train/step.py's `keep`) rather than thrown away."""
    start, limit = clock(), memory_limit() if limit is None else limit
    try:
        tok = load_tokenizer(cfg)
    except AcmError:
        tok = None
    try:
        why = why_not(cfg, tok, limit, shards_due)
    except AcmError as e:  # runs/ unreadable: the Runs pane says why
        why = str(e)
    if why:
        return Readied((), 0.0, why)
    if waited_for():
        return Readied((), 0.0, "a stage was waiting", cut=True)
    stages, shape, ran, whole = distinct_steps(cfg), model_shape(cfg, tok), 0, True
    keep = keep and may_keep(cfg, stages, shape, limit)
    if begun is not None:
        begun(stages)
    while whole and ran < len(stages):
        if ran and waited_for():
            whole = False
            break
        decode = (lambda: tok) if ran == 0 and cfg.train.samples else None  # one decode loads its kernels
        whole = run_step(cfg, getattr(cfg.train, stages[ran]), shape, decode, waited_for, stages[ran],
                         kept=keep and ran == 0)
        ran += 1
    mx.clear_cache()  # what the throwaway model took goes back to the system
    return Readied(tuple(stages[:ran]), clock() - start, cut=not whole)


def submit_readying(engine: Engine, cfg: Config, begun: Callable[[list[str]], object] | None = None,
                    shards_due: bool = False, keep: bool = False) -> Future:
    """`ready_engine` as the engine's job READY_JOB (a shutdown may abandon it), cut short once
    another job is queued behind it."""
    return submit_ready(engine, ready_engine, cfg, None, begun, shards_due=shards_due, keep=keep)
