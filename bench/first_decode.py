"""What a fresh process's first decodes cost against later ones: a live-samples check's prompts
(train.samples, decoded as one batch at the generate defaults) from a run's checkpoint, first the
prompts alone (prefill and one token), then 64 tokens, again with another seed, greedy, with longer
prompts (new prompt lengths) twice, and one prompt alone twice. On NVIDIA GPUs a new attention shape
may cost a graph build (core/model/gpt.py's PLAIN_PREFILL); on Apple silicon the figures should
barely differ between first and later.

usage: python bench/first_decode.py --project DIR --run NAME [--stage pretrain] [--tokens 64]
DIR holds acm.toml and the run. Prints one JSON line of seconds.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--stage", default="pretrain")
    p.add_argument("--tokens", type=int, default=64)
    a = p.parse_args()
    start = time.perf_counter()
    from core import config
    from core.generate.batch import decode_batch
    from core.generate.decode import fit_prompt, generate_tokens, load_model
    from core.generate.sampling import SamplingParams
    from core.tokenizer.bpe import BOS_ID
    from core.train.samples import sample_prompts

    cfg = config.load(a.project / "acm.toml")
    lm = load_model(cfg, run=a.run, stage=a.stage)
    prompts, _ = sample_prompts(cfg)
    def fit(rows: list[list[int]]) -> list[list[int]]:
        return [fit_prompt(row, lm.model.shape.n_ctx, a.tokens)[0] for row in rows]

    ids = fit([[BOS_ID] + lm.tokenizer.encode(t) for t in prompts])
    longer = fit([row + row[1:] for row in ids])  # prompt lengths not seen before
    out = {"bench": "first_decode", "run": a.run, "prompt_tokens": [len(row) for row in ids],
           "load_s": round(time.perf_counter() - start, 3)}

    def params(n: int, seed: int = 0) -> SamplingParams:
        return SamplingParams.from_config(cfg.generate, max_tokens=n, seed=seed)

    steps = {
        "batch_prefill_first": lambda: decode_batch(lm.model, ids, params(1)),
        "batch_first": lambda: decode_batch(lm.model, ids, params(a.tokens)),
        "batch_second": lambda: decode_batch(lm.model, ids, params(a.tokens, 1)),
        "batch_greedy": lambda: decode_batch(lm.model, ids, SamplingParams(temperature=0, repetition_penalty=1.0,
                                                                           max_tokens=a.tokens)),
        "batch_longer_prompts": lambda: decode_batch(lm.model, longer, params(a.tokens, 2)),
        "batch_longer_again": lambda: decode_batch(lm.model, longer, params(a.tokens, 3)),
        "one_first": lambda: list(generate_tokens(lm.model, ids[0], params(a.tokens))),
        "one_second": lambda: list(generate_tokens(lm.model, ids[0], params(a.tokens, 1))),
    }
    for name, run in steps.items():
        t = time.perf_counter()
        run()
        out[f"{name}_s"] = round(time.perf_counter() - t, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
