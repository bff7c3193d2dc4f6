"""Batched generation: B sequences decoded together, one forward pass a step.

Prompts of different lengths are padded on the left (their positions count from their first real
token, and padding is masked out), so every row's next token comes from the same step. Each row
stops on its own at <EOS> or a stop string; the batch ends when every row has stopped, at
max_tokens, at a full context, or when should_stop() says so. Rows draw independent samples from
one seeded generator. Text is decoded once a row ends (incrementally only to look for stop
strings). Runs on the engine thread, like every MLX call.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx

from core.generate.decode import IncrementalDecoder, LoadedModel, fit_prompt
from core.generate.sampling import PENALTY_WINDOW, SamplingParams, sample
from core.model.gpt import GPT
from core.tokenizer.bpe import BOS_ID, EOS_ID, PAD_ID


def ended(finish_reason: str | None) -> bool:
    """Ended by the model itself (<EOS>) or at a stop string asked for, not cut off: a script that
    stops where its user said is complete, never turned down as truncated."""
    return finish_reason in ("eos", "stop")


@dataclass
class Sample:
    prompt: str
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "eos", "stop", "length", "context", "cancelled"
    notice: str = ""  # the prompt was cut to fit the context (decode.fit_prompt says how)

    @property
    def complete(self) -> bool:
        return ended(self.finish_reason)


@dataclass
class BatchStats:
    generated: int  # tokens, all rows
    seconds: float
    tokens_per_s: float
    peak_memory: int


def decode_batch(model: GPT, ids: list[list[int]], params: SamplingParams, should_stop=lambda: False,
                 stop_row: Callable[[int, int], bool] | None = None) -> tuple[list[list[int]], list[str], BatchStats]:
    """New token ids for each row of prompt ids, why each row ended, and the batch's speed.
    `stop_row(row, token)` may end a row after a token (a stop string found by the caller)."""
    width = max(map(len, ids))
    pad = mx.array([width - len(row) for row in ids])
    padded = [[PAD_ID] * (width - len(row)) + row for row in ids]
    steps = min(params.max_tokens, model.shape.n_ctx - width)
    cache, key = model.make_cache(), mx.random.key(params.seed % 2**64)
    penalise = params.repetition_penalty != 1.0
    seen = mx.array(padded)[:, -PENALTY_WINDOW:]

    def step(inputs: mx.array) -> mx.array:
        nonlocal key, seen
        sub = None
        if params.temperature > 0:
            key, sub = mx.random.split(key)
        token = sample(model(inputs, cache, pad)[:, -1], params, seen if penalise else None, sub)
        if penalise:
            seen = mx.concatenate([seen[:, 1 - PENALTY_WINDOW:], token[:, None].astype(seen.dtype)], axis=1)
        return token

    start = time.perf_counter()
    out: list[list[int]] = [[] for _ in ids]
    finish: list[str | None] = [None] * len(ids)
    token = step(mx.array(padded))
    mx.async_eval(token)
    for n in range(steps):
        upcoming = step(token[:, None]) if n + 1 < steps else None  # queued before this one is read
        if upcoming is not None:
            mx.async_eval(upcoming)
        _take(token.tolist(), out, finish, stop_row)
        if all(finish) or should_stop():
            break
        token = upcoming
    open_reason = "cancelled" if should_stop() else ("context" if steps < params.max_tokens else "length")
    reasons = [r or open_reason for r in finish]
    seconds = time.perf_counter() - start
    generated = sum(map(len, out)) + reasons.count("eos")
    return out, reasons, BatchStats(generated, seconds, generated / seconds if seconds > 0 else 0.0,
                                    mx.get_peak_memory())


def _take(values: list[int], out: list[list[int]], finish: list[str | None], stop_row) -> None:
    """One step's tokens to the rows still open."""
    for i, value in enumerate(values):
        if finish[i] is not None:
            continue
        if value == EOS_ID:
            finish[i] = "eos"
            continue
        out[i].append(value)
        if stop_row is not None and stop_row(i, value):
            finish[i] = "stop"


def generate_batch(lm: LoadedModel, prompts: list[str], params: SamplingParams,
                   should_stop=lambda: False) -> tuple[list[Sample], BatchStats]:
    """One sample per prompt (repeat a prompt for several samples of it), decoded as one batch."""
    tok, n_ctx = lm.tokenizer, lm.model.shape.n_ctx
    fitted = [fit_prompt([BOS_ID] + tok.encode(p), n_ctx, params.max_tokens) for p in prompts]
    ids = [row for row, _ in fitted]
    stops = tuple(s for s in params.stop if s)
    decoders = [IncrementalDecoder(tok) for _ in prompts]

    def stop_row(i: int, token: int) -> bool:
        decoders[i].add(token)
        return any(s in decoders[i].emitted for s in stops)

    out, reasons, stats = decode_batch(lm.model, ids, params, should_stop, stop_row if stops else None)
    samples = []
    for prompt, tokens, reason, (_, notice) in zip(prompts, out, reasons, fitted):
        text = tok.decode(tokens)
        if reason == "stop":
            hit = min((text.index(s) for s in stops if s in text), default=len(text))
            text = text[:hit]
        samples.append(Sample(prompt, text, tokens, reason, notice))
    return samples, stats
