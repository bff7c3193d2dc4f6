"""Data-parallel training through the product's own command: tokens/s on 1..N ranks, and whether
2 ranks at a global batch B learn as one rank at B does.

usage: python bench/ranks.py --project DIR [--presets tiny,medium] [--ranks 1,2] [--buckets 1]
          [--batch tiny=16,medium=8] [--steps 60] [--loss-match 300] [--seq 1024]
DIR is a project with data/tokenizer and data/tokens (its acm.toml is read and not changed).
Each measurement runs `acm train pretrain --ranks N --json` in a fresh run of a copied settings
file and prints one JSON line: tokens/s in total (the median of the reports after the first two),
per-GPU batch, ms a step, MFU a GPU, peak memory, and the speed-up over 1 rank of the same preset.
--loss-match S trains `tiny` S steps three times on real shards: 1 rank at --batch, 2 ranks at half
of it each (the same global batch, the same initial weights and batches), and 1 rank from other
initial weights (the noise the 1-vs-2 gap is compared to); it prints each run's mean loss over the
last 20 steps, its validation loss at the end, and the gaps.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from core import config

LAST = 20


def settings(base: config.Config, preset: str, batch: int, ranks: int, buckets: int, steps: int, seq: int,
             seed: int = 0, log_every: int = 10) -> config.Config:
    cfg = config.from_dict(base.to_dict())
    cfg.model.preset = preset
    cfg.train.ranks, cfg.train.allreduce_buckets = ranks, buckets
    sc = cfg.train.pretrain
    sc.steps, sc.batch_size, sc.seq_len, sc.seed, sc.grad_accum = steps, batch, seq, seed, 1
    sc.warmup_steps, sc.log_every = min(sc.warmup_steps, steps // 3), log_every
    sc.eval_every = sc.save_every = steps
    sc.eval_batches, sc.keep_last, sc.time = 20, 1, ""
    return cfg


def train(project: Path, cfg: config.Config, name: str) -> list[dict]:
    """Run the stage through the CLI; its events."""
    path = project / f"bench-{name}.toml"
    config.save(cfg, path)
    run = cfg.runs_dir / name
    shutil.rmtree(run, ignore_errors=True)
    out = subprocess.run([sys.executable, "-m", "core.cli", "-c", str(path), "train", "pretrain", "--run", name,
                          "--json"], capture_output=True, text=True, cwd=project)
    path.unlink()
    shutil.rmtree(run, ignore_errors=True)
    if out.returncode:
        raise SystemExit(f"{name} failed: {out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def throughput(project, base, a, preset, ranks, buckets) -> dict:
    batch = a.batch[preset]
    cfg = settings(base, preset, batch, ranks, buckets, a.steps, a.seq)
    events = train(project, cfg, f"{preset}-{ranks}-{buckets}")
    reports = [e for e in events if e["type"] == "metrics"][2:]
    tok_s = statistics.median(e["tokens_per_s"] for e in reports)
    return {"preset": preset, "ranks": ranks, "allreduce_buckets": buckets, "per_gpu_batch": batch, "seq": a.seq,
            "tokens_per_s": round(tok_s), "step_ms": round(batch * a.seq * ranks / tok_s * 1000, 2),
            "mfu_per_gpu": round(statistics.median(e["mfu"] or 0 for e in reports), 4),
            "peak_gib": round(max(e["memory_peak"] for e in reports) / 2**30, 2)}


def loss_match(project, base, a) -> dict:
    batch, steps = a.batch["tiny"], a.loss_match
    runs = {"one": (1, batch, 0), "two": (2, batch // 2, 0), "one-seed1": (1, batch, 1)}
    out = {}
    for name, (ranks, per_rank, seed) in runs.items():
        events = train(project, settings(base, "tiny", per_rank, ranks, 1, steps, a.seq, seed, log_every=1), name)
        losses = [e["loss"] for e in events if e["type"] == "metrics"]
        val = [e["val_loss"] for e in events if e["type"] == "eval"]
        out[name] = {"ranks": ranks, "batch_per_rank": per_rank, "seed": seed,
                     "last_loss": round(statistics.mean(losses[-LAST:]), 4), "val_loss": round(val[-1], 4)}
    gap = {k: round(abs(out["one"][k] - out["two"][k]), 4) for k in ("last_loss", "val_loss")}
    noise = {k: round(abs(out["one"][k] - out["one-seed1"][k]), 4) for k in ("last_loss", "val_loss")}
    return {"loss_match": out, "steps": steps, "global_batch": batch, "gap_1_vs_2_ranks": gap, "gap_other_seed": noise}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--presets", default="tiny,medium")
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--buckets", default="1")
    p.add_argument("--batch", default="tiny=16,medium=8,micro=4,nano=2")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--loss-match", type=int, default=0)
    a = p.parse_args()
    a.batch = {k: int(v) for k, v in (kv.split("=") for kv in a.batch.split(","))}
    project = a.project.resolve()
    base = config.load(project / "acm.toml")
    for preset in filter(None, a.presets.split(",")):
        one = None
        for ranks in map(int, a.ranks.split(",")):
            for buckets in map(int, a.buckets.split(",") if ranks > 1 else ["1"]):
                r = throughput(project, base, a, preset, ranks, buckets)
                one = one or (r["tokens_per_s"] if ranks == 1 else None)
                r["speedup"] = round(r["tokens_per_s"] / one, 3) if one else None
                print(json.dumps(r), flush=True)
    if a.loss_match:
        print(json.dumps(loss_match(project, base, a)), flush=True)


if __name__ == "__main__":
    main()
