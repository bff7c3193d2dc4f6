"""Decode tokens/s and time to first token: acm's generator against mlx-lm's `generate_step` on
the same weights (acm's export format loaded into mlx-lm's gpt2), in the same run.

usage: python bench/generate.py --preset tiny --prompt-tokens 128 --new-tokens 256 [--dtype float32]
Random weights, batch 1, greedy. Prints one JSON line; ratio = acm tok/s / mlx-lm tok/s.
"""
from __future__ import annotations

import argparse
import json
import time

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from core.generate.decode import generate_tokens
from core.generate.sampling import SamplingParams
from core.model.gpt import GPT
from core.model.presets import get_preset


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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeat", type=int, default=3)
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
    best = {"acm": (1e9, 0.0), "mlx_lm": (1e9, 0.0)}
    for _ in range(a.repeat + 1):  # the first round warms both up
        runs = {
            "acm": timed(t for t in generate_tokens(ours, prompt, params) if t != -1),
            "mlx_lm": timed(t for t, _ in generate_step(mx.array(prompt), theirs, max_tokens=a.new_tokens)),
        }
        for k, (ttft, rate, _) in runs.items():
            best[k] = (min(best[k][0], ttft), max(best[k][1], rate))
    print(json.dumps({
        "bench": "generate", "preset": a.preset, "dtype": a.dtype, "device": str(mx.default_device()),
        "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
        "acm_tok_s": round(best["acm"][1], 1), "acm_ttft_ms": round(best["acm"][0] * 1e3, 1),
        "mlx_lm_tok_s": round(best["mlx_lm"][1], 1), "mlx_lm_ttft_ms": round(best["mlx_lm"][0] * 1e3, 1),
        "ratio": round(best["acm"][1] / best["mlx_lm"][1], 3),
    }))


if __name__ == "__main__":
    main()
