"""Next-token sampling: temperature, top-k, top-p, min-p and a repetition penalty, in MLX.

Every filter works on log-probabilities of one row (V,) and masks what it drops with -inf, so
they compose in any order; temperature 0 means greedy.
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

MAX_N = 256  # candidates sampled together in one batch (generate.candidates has the same cap); `acm eval` samples more


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, g, **overrides) -> SamplingParams:
        base = dict(temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, min_p=g.min_p,
                    repetition_penalty=g.repetition_penalty, max_tokens=g.max_tokens, seed=g.seed)
        return cls(**(base | {k: v for k, v in overrides.items() if v is not None}))


NEG_INF = float("-inf")
# Tokens the repetition penalty looks back on: the prompt (with its <BOS>) and what was generated,
# the last PENALTY_WINDOW of them. A model card tells other clients the same window.
PENALTY_WINDOW = 1024


def apply_repetition_penalty(logits: mx.array, seen: mx.array | None, penalty: float) -> mx.array:
    """CTRL's penalty: logits of tokens already seen are divided by it (multiplied if negative).
    Rows of logits (..., V) and of seen (..., L) go together."""
    if penalty == 1.0 or seen is None or seen.size == 0:
        return logits
    picked = mx.take_along_axis(logits, seen, axis=-1)
    return mx.put_along_axis(logits, seen, mx.where(picked > 0, picked / penalty, picked * penalty), axis=-1)


def filter_top_k(logprobs: mx.array, k: int) -> mx.array:
    if k <= 0 or k >= logprobs.shape[-1]:
        return logprobs
    kth = mx.sort(logprobs, axis=-1)[..., -k][..., None]
    return mx.where(logprobs < kth, NEG_INF, logprobs)


def filter_top_p(logprobs: mx.array, p: float) -> mx.array:
    if p >= 1.0:
        return logprobs
    order = mx.argsort(-logprobs, axis=-1)
    sorted_lp = mx.take_along_axis(logprobs, order, axis=-1)
    cumulative = mx.cumsum(mx.exp(sorted_lp), axis=-1)
    # keep a token while the mass before it is below p (so the top token always stays)
    keep_sorted = (cumulative - mx.exp(sorted_lp)) < p
    keep = mx.put_along_axis(mx.zeros_like(keep_sorted), order, keep_sorted, axis=-1)
    return mx.where(keep, logprobs, NEG_INF)


def filter_min_p(logprobs: mx.array, min_p: float) -> mx.array:
    if min_p <= 0.0:
        return logprobs
    threshold = mx.max(logprobs, axis=-1, keepdims=True) + mx.log(mx.array(min_p))
    return mx.where(logprobs < threshold, NEG_INF, logprobs)


def sample(logits: mx.array, params: SamplingParams, seen: mx.array | None, key: mx.array | None) -> mx.array:
    """Token ids from logits (..., V): one per row (a 0-d array for one row; greedy when temperature is 0)."""
    if params.temperature <= 0 and (params.repetition_penalty == 1.0 or seen is None):
        return mx.argmax(logits, axis=-1)
    logits = apply_repetition_penalty(logits.astype(mx.float32), seen, params.repetition_penalty)
    if params.temperature <= 0:
        return mx.argmax(logits, axis=-1)
    logprobs = logits / params.temperature
    logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
    logprobs = filter_min_p(filter_top_p(filter_top_k(logprobs, params.top_k), params.top_p), params.min_p)
    return mx.random.categorical(logprobs, axis=-1, key=key)
