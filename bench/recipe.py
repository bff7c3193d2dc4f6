"""What each training lever is worth to the bash a model writes: one pretrain shared by every
variant, then per variant a fine-tune and an evaluation of its best fine-tune checkpoint (plain
sampling, then syntax-checked sampling), in one process.

usage: python bench/recipe.py --project DIR [--only NAME,...] [--samples 128] [--max-tokens 512]

DIR is an acm project with its corpora, tokenizer and token shards ready (`acm data fetch ...`,
`acm tokenizer train`, `acm prepare`), whose acm.toml holds the reference settings. A variant
changes settings of that reference (VARIANTS below; `data` names another data folder, made the
same way with another bash corpus). Prints one JSON line per variant, as it finishes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from core import config
from core.generate.checked import checked_generate, sample_and_judge
from core.generate.decode import load_model
from core.generate.evaluate import score, val_loss
from core.generate.relevance import eval_prompts, expectations
from core.generate.sampling import SamplingParams
from core.paths import Paths
from core.runs import checkpoint
from core.train.trainer import train_stage

# name -> settings changed from the project's acm.toml ("pretrain.steps" picks the shared pretrain)
VARIANTS: dict[str, dict[str, str]] = {
    "short-finetune": {"train.finetune.steps": "150"},
    "reference": {},
    "no-repetition-penalty": {"generate.repetition_penalty": "1.0"},
    "lr-3e-4": {"train.finetune.learning_rate": "3e-4"},
    "document-starts": {"train.finetune.start_at_documents": "true"},
    "replay-25": {"train.finetune.replay": "0.25"},
    "more-epochs-early-stop": {"train.finetune.steps": "3000", "train.finetune.patience": "3"},
    "longer-pretrain": {"train.pretrain.steps": "4800"},
    "half-the-repos": {"paths.data": '"data-half"'},
    "combined": {"train.finetune.learning_rate": "3e-4", "train.finetune.start_at_documents": "true",
                 "train.finetune.steps": "3000", "train.finetune.patience": "3"},
    "recipe": {"train.finetune.start_at_documents": "true", "train.finetune.steps": "3000"},
    "recipe-lr-3e-4": {"train.finetune.start_at_documents": "true", "train.finetune.steps": "3000",
                       "train.finetune.learning_rate": "3e-4"},
    "combined-longer-pretrain": {"train.pretrain.steps": "4800", "train.finetune.learning_rate": "3e-4",
                                 "train.finetune.start_at_documents": "true", "train.finetune.steps": "3000",
                                 "train.finetune.patience": "3"},
}


def configure(base: config.Config, changes: dict[str, str]) -> config.Config:
    cfg = base
    for key, text in changes.items():
        cfg, _ = config.with_value(cfg, key, text)
    return cfg


def pretrained(cfg: config.Config) -> Path:
    """The shared pretrain run of this length, trained once (on the project's language shards)."""
    run = cfg.locations.run(f"pretrain-{cfg.train.pretrain.steps}")
    if checkpoint.best(Paths.checkpoints(run, "pretrain")) is None:
        started = time.perf_counter()
        train_stage(cfg, "pretrain", run)
        print(json.dumps({"pretrain": run.name, "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    return run


def variant(base: config.Config, name: str, samples: int, max_tokens: int) -> dict:
    cfg = configure(base, VARIANTS[name])
    source = pretrained(cfg)
    run = cfg.locations.run(f"recipe-{name}")
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(source, run, copy_function=lambda a, b: Path(b).hardlink_to(a))
    started = time.perf_counter()
    result = train_stage(cfg, "finetune", run)
    train_s = time.perf_counter() - started
    lm = load_model(cfg, run.name, "finetune")
    prompts, expected = eval_prompts(cfg.eval, samples), expectations(cfg.eval)
    params = SamplingParams.from_config(cfg.generate, max_tokens=max_tokens)
    timeout = cfg.data.code.syntax_timeout_s
    started = time.perf_counter()
    plain = score(sample_and_judge(lm, prompts, params, timeout), expected)
    checked = score(checked_generate(lm, prompts, params, cfg.generate.candidates, timeout), expected)
    return {"variant": name, "changes": VARIANTS[name], "finetune_steps": result.step,
            "finetune_s": round(train_s, 1), "best_step": lm.step, "code": val_loss(lm, cfg, "code", 20),
            "language": val_loss(lm, cfg, "language", 20), "plain": plain, "checked": checked,
            "eval_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", required=True)
    ap.add_argument("--only", default=",".join(VARIANTS))
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=512)
    a = ap.parse_args()
    base = config.load(Path(a.project) / config.CONFIG_NAME)
    for name in a.only.split(","):
        print(json.dumps(variant(base, name, a.samples, a.max_tokens)), flush=True)


if __name__ == "__main__":
    main()
