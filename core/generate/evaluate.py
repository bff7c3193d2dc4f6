"""`acm eval`: validation loss and perplexity on both corpora, and the quality of generated bash.

For each stage of a run that has a checkpoint (its best), so the pretrain-only model and the
fine-tuned one land in one table: val loss / perplexity on the language and code val splits, then
N scripts sampled from a set of prompts, checked with `bash -n` (parsed, never run): the share that
parses, mean length and distinct-2. Results go to runs/<run>/eval.json.
"""
from __future__ import annotations

import json
import math
import time

import mlx.core as mx

from core.atomic import write_text
from core.config import Config
from core.data.code import bash_syntax_ok
from core.errors import AcmError
from core.generate.decode import generate_text, load_model
from core.generate.sampling import SamplingParams
from core.paths import Paths
from core.progress import CancelToken, Reporter, Ticker, no_report
from core.tokenizer.shards import open_tokens
from core.train import checkpoint, runs
from core.train.batches import Batches

PROMPTS = ["#!/bin/bash\n", "#!/usr/bin/env bash\nset -euo pipefail\n", "# Install docker\n",
           "#!/bin/bash\n# Back up a directory to a dated archive\n", "#!/bin/sh\n# Start the service\n",
           "for f in *.log; do\n"]


def distinct_n(token_lists: list[list[int]], n: int = 2) -> float:
    grams = [tuple(t[i:i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0


def val_loss(lm, cfg: Config, kind: str, batches: int) -> dict:
    shards = open_tokens(cfg, kind, "val", lm.tokenizer)
    seq = min(cfg.train.pretrain.seq_len, lm.model.shape.n_ctx)
    b = Batches(shards, seq, cfg.train.pretrain.batch_size, seed=0, what=f"{kind} val shards")
    losses = [lm.model.loss(mx.array(x), mx.array(y)) for x, y in (b.val(i) for i in range(batches))]
    loss = float(mx.mean(mx.stack(losses)).item())
    return {"val_loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 2)}


def evaluate_run(cfg: Config, report: Reporter = no_report, cancel: CancelToken | None = None,
                 run: str | None = None, samples: int = 12, max_tokens: int = 200) -> dict:
    cancel = cancel or CancelToken()
    run_path = cfg.locations.run(run) if run else (runs.list_runs(cfg) or [None])[0]
    if run_path is None:
        raise AcmError(f"no runs in {cfg.locations.runs}: train a model first (acm train pretrain)")
    params = SamplingParams.from_config(cfg.generate, max_tokens=max_tokens)
    results = {"run": run_path.name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "samples": samples,
               "prompts": PROMPTS, "stages": {}}
    stages = [s for s in runs.STAGES if checkpoint.best(Paths.checkpoints(run_path, s)) is not None]
    if not stages:
        raise AcmError(f"run {run_path.name} has no checkpoint to evaluate")
    ticker = Ticker(report, "evaluating", len(stages) * (samples + 2), interval=0)
    for stage in stages:
        lm = load_model(cfg, run_path.name, stage)
        row = {"checkpoint": str(lm.checkpoint), "step": lm.step}
        for kind in ("language", "code"):
            cancel.check()
            row[kind] = val_loss(lm, cfg, kind, cfg.train.pretrain.eval_batches)
            ticker.advance(note=f"{stage}: {kind} val loss")
        outputs, ids, parsed = [], [], 0
        for i in range(samples):
            cancel.check()
            prompt = PROMPTS[i % len(PROMPTS)]
            text, _ = generate_text(lm, prompt, SamplingParams(**{**params.__dict__, "seed": params.seed + i}))
            script = prompt + text
            ok, _ = bash_syntax_ok(script, cfg.data.code.syntax_timeout_s)
            parsed += ok
            outputs.append({"prompt": prompt, "text": text, "parses": ok})
            ids.append(lm.tokenizer.encode(text))
            ticker.advance(note=f"{stage}: sample {i + 1}/{samples}")
        row["code_generation"] = {
            "parse_rate": round(parsed / samples, 4) if samples else 0.0,
            "mean_tokens": round(sum(map(len, ids)) / samples, 1) if samples else 0.0,
            "mean_lines": round(sum(o["text"].count("\n") for o in outputs) / samples, 1) if samples else 0.0,
            "distinct_2": distinct_n(ids, 2),
        }
        row["examples"] = outputs[:3]
        results["stages"][stage] = row
    write_text(Paths.eval_results(run_path), json.dumps(results, indent=1) + "\n")
    return results
