"""Decode tokens/s and time to first token: acm's generator against mlx-lm's on the same weights
(acm's export format loaded into mlx-lm's gpt2), in the same run: batch 1 (`generate_step`) and,
with --batch B, B prompts of different lengths decoded together (mlx-lm's `batch_generate` with
B rows at once, acm's `decode_batch`).

usage: python bench/generate.py --preset tiny --prompt-tokens 128 --new-tokens 256 [--dtype float32] [--batch 64]
                                [--indexed-positions]
Random weights, greedy, no early stop. Prints one JSON line; ratio = acm tok/s / mlx-lm tok/s.
--indexed-positions also times, in the same rounds, acm's decoder with its position embeddings
looked up by an index array (as before they were read as a slice of the table): acm_indexed_*.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from core.generate.batch import decode_batch
from core.generate.decode import generate_tokens
from core.generate.sampling import SamplingParams
from core.model.gpt import GPT
from core.presets import get_preset


def timed(tokens) -> tuple[float, float, int]:
    """(time to first token, decode tokens/s after the first, tokens) of a token generator."""
    start = time.perf_counter()
    first, n = None, 0
    for _ in tokens:
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return first - start, (n - 1) / (end - first) if n > 1 else 0.0, n


def mlx_lm_model(model: GPT, dtype):
    from mlx_lm.models.gpt2 import Model, ModelArgs

    s = model.shape
    args = ModelArgs(model_type="gpt2", n_ctx=s.n_ctx, n_embd=s.n_embd, n_head=s.n_head, n_layer=s.n_layer,
                     n_positions=s.n_ctx, layer_norm_epsilon=s.norm_eps, vocab_size=s.vocab_size)
    theirs = Model(args)
    theirs.load_weights([(f"model.{k}", v.astype(dtype)) for k, v in tree_flatten(model.parameters())])
    mx.eval(theirs.parameters())
    return theirs


@contextlib.contextmanager
def indexed_positions():
    """acm's decoder as it was before a lone stream's position embeddings became a slice of their table."""
    def positions(self, offset, T, pad, training):
        if pad is None and not training:
            return self.wpe.weight[mx.arange(offset, offset + T)], None
        return saved(self, offset, T, pad, training)

    saved, GPT._positions = GPT._positions, positions
    try:
        yield
    finally:
        GPT._positions = saved


class _NoEos:
    """What mlx-lm's batch_generate asks of a tokenizer, when no row may stop early."""

    eos_token_ids: list[int] = []

    def decode(self, ids) -> str:
        return ""


def batched(ours: GPT, theirs, prompts: list[list[int]], new_tokens: int) -> dict:
    """Total generated tokens/s of B rows decoded together, acm and mlx-lm, best of a few rounds."""
    from mlx_lm.generate import batch_generate

    params = SamplingParams(temperature=0, max_tokens=new_tokens, repetition_penalty=1.0)
    best = {"acm": 0.0, "mlx_lm": 0.0}
    for _ in range(3):
        t = time.perf_counter()
        out, _, _ = decode_batch(ours, prompts, params)
        best["acm"] = max(best["acm"], sum(map(len, out)) / (time.perf_counter() - t))
        t = time.perf_counter()
        r = batch_generate(theirs, _NoEos(), prompts, max_tokens=new_tokens, return_token_ids=True,
                           completion_batch_size=len(prompts), prefill_batch_size=len(prompts))
        best["mlx_lm"] = max(best["mlx_lm"], sum(map(len, r.token_ids)) / (time.perf_counter() - t))
    return {"batch": len(prompts), "acm_batch_tok_s": round(best["acm"], 1),
            "mlx_lm_batch_tok_s": round(best["mlx_lm"], 1), "batch_ratio": round(best["acm"] / best["mlx_lm"], 3)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch", type=int, default=0, help="also B prompts of different lengths decoded together")
    p.add_argument("--indexed-positions", action="store_true", help="also the decoder with positions looked up")
    a = p.parse_args()
    from mlx_lm.generate import generate_step

    shape = get_preset(a.preset)
    mx.random.seed(0)
    ours = GPT(shape, a.dtype)
    if a.dtype != "float32":  # serve the weights in the compute dtype, as mlx-lm does
        ours.set_dtype(getattr(mx, a.dtype))
    theirs = mlx_lm_model(ours, getattr(mx, a.dtype))
    prompt = np.random.default_rng(0).integers(4, shape.vocab_size, a.prompt_tokens).tolist()
    params = SamplingParams(temperature=0, max_tokens=a.new_tokens, repetition_penalty=1.0)
    best = {"acm": (1e9, 0.0), "mlx_lm": (1e9, 0.0)} | ({"acm_indexed": (1e9, 0.0)} if a.indexed_positions else {})
    for _ in range(a.repeat + 1):  # the first round warms all up
        runs = {
            "acm": timed(generate_tokens(ours, prompt, params)),
            "mlx_lm": timed(t for t, _ in generate_step(mx.array(prompt), theirs, max_tokens=a.new_tokens)),
        }
        if a.indexed_positions:
            with indexed_positions():
                runs["acm_indexed"] = timed(generate_tokens(ours, prompt, params))
        for k, (ttft, rate, _) in runs.items():
            best[k] = (min(best[k][0], ttft), max(best[k][1], rate))
    extra = {}
    if a.batch:
        rng = np.random.default_rng(1)
        prompts = [rng.integers(4, shape.vocab_size, int(n)).tolist()
                   for n in rng.integers(a.prompt_tokens // 2, a.prompt_tokens + 1, a.batch)]
        extra = batched(ours, theirs, prompts, a.new_tokens)
    print(json.dumps({
        "bench": "generate", "preset": a.preset, "dtype": a.dtype, "device": str(mx.default_device()),
        "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
        "acm_tok_s": round(best["acm"][1], 1), "acm_ttft_ms": round(best["acm"][0] * 1e3, 1),
        "mlx_lm_tok_s": round(best["mlx_lm"][1], 1), "mlx_lm_ttft_ms": round(best["mlx_lm"][0] * 1e3, 1),
        "ratio": round(best["acm"][1] / best["mlx_lm"][1], 3),
    } | extra | ({"acm_indexed_tok_s": round(best["acm_indexed"][1], 1),
                  "acm_indexed_ttft_ms": round(best["acm_indexed"][0] * 1e3, 1),
                  "indexed_ratio": round(best["acm_indexed"][1] / best["mlx_lm"][1], 3)}
                 if a.indexed_positions else {})))


if __name__ == "__main__":
    main()
