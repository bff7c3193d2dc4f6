"""What a process's first live-samples decode costs after its training steps have run, and which of
its parts: the prompts' prefill, the model's token-by-token decoding, the sampling.

Builds the product's model and compiled step on a preset (Muon, as the recipe trains), runs three
steps and a validation loss, as a stage has by its first check, then decodes two prompts (27 and 20
tokens, a live-samples check's shape) three or four times in one order of `--first`: `sampled` (the
generate defaults, then again, then greedy), `greedy` (greedy twice, then sampled twice) or
`prefill` (one token, then sampled twice). Run one fresh process for each order: what the first
decode pays beyond a later one is the process's first use of those kernels. Prints one JSON line
of seconds.

usage: python bench/first_decode_after_step.py [--preset tiny] [--dtype bfloat16] [--batch 8]
                                               [--seq 1024] [--tokens 64] [--first sampled|greedy|prefill]
"""
from __future__ import annotations

import json
import time

import mlx.core as mx
from step_setup import compiled_step, fixed_batch, shape_arguments

from core.generate.batch import decode_batch
from core.generate.sampling import SamplingParams
from core.hardware import device_label
from core.model.gpt import GPT
from core.presets import get_preset
from core.tokenizer.bpe import BOS_ID
from core.train.step import build_steps

PROMPTS = ([BOS_ID, *range(100, 126)], [BOS_ID, *range(200, 219)])  # 27 and 20 tokens


def main() -> None:
    p = shape_arguments(__doc__)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--first", choices=("sampled", "greedy", "prefill"), default="sampled")
    a = p.parse_args()
    shape = get_preset(a.preset)
    model = GPT(shape, a.dtype)
    step, opt, state = compiled_step(model, muon_lr=0.02)
    eval_loss = build_steps(model, opt, grad_clip=1.0)[3]
    x, y = fixed_batch(shape, a.batch, min(a.seq, shape.n_ctx))
    out = {"bench": "first_decode_after_step", "device": device_label(), "preset": a.preset, "dtype": a.dtype,
           "first": a.first, "tokens": a.tokens}
    t0 = time.perf_counter()
    for _ in range(3):
        mx.eval(step(x, y), state)
    out["three_steps_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    eval_loss(x, y).item()
    out["validation_first_s"] = round(time.perf_counter() - t0, 3)
    model.update(opt.compute_views())  # the weights a check decodes from
    sampled = SamplingParams(temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.1, max_tokens=a.tokens)
    greedy = SamplingParams(temperature=0, repetition_penalty=1.0, max_tokens=a.tokens)
    one = SamplingParams(temperature=0, repetition_penalty=1.0, max_tokens=1)
    order = {"sampled": [("sampled", sampled), ("sampled", sampled), ("greedy", greedy)],
             "greedy": [("greedy", greedy), ("greedy", greedy), ("sampled", sampled), ("sampled", sampled)],
             "prefill": [("one_token", one), ("sampled", sampled), ("sampled", sampled)]}[a.first]
    for n, (name, params) in enumerate(order, 1):
        t0 = time.perf_counter()
        decode_batch(model, list(map(list, PROMPTS)), params)
        out[f"decode_{n}_{name}_s"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
