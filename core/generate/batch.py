"""Batched generation: B sequences decoded together, one forward pass a step.

Prompts of different lengths are padded on the left (their positions count from their first real
token, and padding is masked out), so every row's next token comes from the same step. Each row
stops on its own at <EOS> or a stop string; the batch ends when every row has stopped, at
max_tokens, at a full context, or when should_stop() says so. Rows draw independent samples from
one seeded generator. Runs on the engine thread, like every MLX call.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import mlx.core as mx

from core.generate.decode import IncrementalDecoder, LoadedModel, fit_prompt
from core.generate.sampling import SamplingParams, sample
from core.tokenizer.bpe import BOS_ID, EOS_ID, PAD_ID

PENALTY_WINDOW = 1024  # tokens of each row the repetition penalty looks back on


@dataclass
class Sample:
    prompt: str
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "eos", "stop", "length", "context", "cancelled"

    @property
    def complete(self) -> bool:
        """Ended by the model itself (<EOS>), not cut off."""
        return self.finish_reason == "eos"


@dataclass
class BatchStats:
    generated: int  # tokens, all rows
    seconds: float
    tokens_per_s: float
    peak_memory: int


class _Row:
    def __init__(self, lm: LoadedModel, prompt: str, stops: tuple[str, ...]):
        self.sample = Sample(prompt)
        self.decoder = IncrementalDecoder(lm.tokenizer)
        self.stops = stops
        self.done = False

    def add(self, token: int) -> None:
        if token == EOS_ID:
            self.finish("eos")
            return
        self.sample.tokens.append(token)
        self.sample.text += self.decoder.add(token)
        hit = next((s for s in self.stops if s in self.sample.text), None)
        if hit is not None:
            self.sample.text = self.sample.text[: self.sample.text.index(hit)]
            self.finish("stop")

    def finish(self, reason: str) -> None:
        self.sample.finish_reason, self.done = reason, True


def generate_batch(lm: LoadedModel, prompts: list[str], params: SamplingParams,
                   should_stop=lambda: False) -> tuple[list[Sample], BatchStats]:
    """One sample per prompt (repeat a prompt for several samples of it), decoded as one batch."""
    model, tok = lm.model, lm.tokenizer
    n_ctx = model.shape.n_ctx
    ids = [fit_prompt([BOS_ID] + tok.encode(p), n_ctx, params.max_tokens)[0] for p in prompts]
    width = max(map(len, ids))
    pad = mx.array([width - len(row) for row in ids])
    rows = [_Row(lm, p, tuple(s for s in params.stop if s)) for p in prompts]
    steps = min(params.max_tokens, n_ctx - width)
    cache, key = model.make_cache(), mx.random.key(params.seed % 2**64)
    penalise = params.repetition_penalty != 1.0
    seen = mx.array([[PAD_ID] * (width - len(row)) + row for row in ids])[:, -PENALTY_WINDOW:]

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
    first = step(mx.array([[PAD_ID] * (width - len(row)) + row for row in ids]))
    generated = _decode(rows, first, step, steps, should_stop)
    _finish_open_rows(rows, steps, params.max_tokens, should_stop())
    seconds = time.perf_counter() - start
    stats = BatchStats(generated, seconds, generated / seconds if seconds > 0 else 0.0, mx.get_peak_memory())
    return [r.sample for r in rows], stats


def _decode(rows: list[_Row], token: mx.array, step, steps: int, should_stop) -> int:
    """Hand each step's tokens to the rows still open, queueing the next step before reading this
    one, until every row is done, `steps` ran out or should_stop(). Returns the tokens taken."""
    mx.async_eval(token)
    generated = 0
    for n in range(steps):
        upcoming = step(token[:, None]) if n + 1 < steps else None
        if upcoming is not None:
            mx.async_eval(upcoming)
        for row, value in zip(rows, token.tolist()):
            if not row.done:
                row.add(value)
                generated += 1
        if all(r.done for r in rows) or should_stop():
            break
        token = upcoming
    return generated


def _finish_open_rows(rows: list[_Row], steps: int, max_tokens: int, cancelled: bool) -> None:
    """Why the rows still open stopped: cancelled, out of context room, or max_tokens."""
    reason = "cancelled" if cancelled else ("context" if steps < max_tokens else "length")
    for row in rows:
        if not row.done:
            row.finish(reason)
