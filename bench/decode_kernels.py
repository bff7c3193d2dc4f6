"""GPU kernels a decoded token launches: acm's decoder against mlx-lm's `generate_step` on the same
weights, counted by CUPTI (batch 1, greedy, random weights).

usage: python bench/decode_kernels.py [--preset tiny] [--dtype bfloat16] [--prompt-tokens 128]
Prints one JSON line per decoder.
Needs an NVIDIA GPU and PyTorch beside MLX (its profiler records every kernel the process launches).
Batch-1 decoding waits on the host's launches, so fewer kernels a token is what makes it faster;
kernels are counted over two runs of different lengths and the difference divided by the extra
tokens, which leaves the prompt's out.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import mlx.core as mx
import numpy as np
from generate import mlx_lm_model
from gpu_kernels import Tracer

from core.generate.decode import generate_tokens
from core.generate.sampling import SamplingParams
from core.model.gpt import DTYPES, GPT
from core.presets import get_preset


def main() -> None:
    tracer = Tracer("decode_kernels.py")
    from mlx_lm.generate import generate_step

    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--prompt-tokens", type=int, default=128)
    a = p.parse_args()
    mx.random.seed(0)
    dtype = DTYPES[a.dtype]
    model = GPT(get_preset(a.preset), a.dtype)
    model.set_dtype(dtype)
    mx.eval(model.parameters())
    theirs = mlx_lm_model(model, dtype)
    prompt = [int(i) for i in np.random.default_rng(0).integers(1, model.shape.vocab_size, a.prompt_tokens)]
    greedy = SamplingParams(temperature=0.0, max_tokens=10**6)

    def acm(n: int) -> None:
        tokens = generate_tokens(model, prompt, greedy)
        for _ in range(n):
            next(tokens)

    def mlx_lm(n: int) -> None:
        for _ in generate_step(mx.array(prompt), theirs, max_tokens=n):
            pass

    for name, decode in (("acm", acm), ("mlx_lm", mlx_lm)):
        decode(64)  # compiled and warm
        counts = []
        for n in (40, 140):
            with tracer.kernels() as traced:
                decode(n)
            counts.append(Counter(ev.name[:90] for ev in traced()))
        per_token = {k: (counts[1][k] - counts[0][k]) / 100 for k in counts[1] if counts[1][k] != counts[0][k]}
        start = time.perf_counter()
        decode(300)
        print(json.dumps({"bench": "decode_kernels", "decoder": name, "preset": a.preset, "dtype": a.dtype,
                          "kernels_per_token": round(sum(per_token.values()), 2),
                          "ms_per_token": round((time.perf_counter() - start) / 300 * 1e3, 3),
                          "by_kernel": dict(sorted(per_token.items(), key=lambda kv: -kv[1]))}), flush=True)


if __name__ == "__main__":
    main()
