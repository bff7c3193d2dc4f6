"""Run folders: runs/<run>/ holds config.toml (the resolved settings) and one folder per stage
(pretrain/, finetune/) with metrics.jsonl, train.log and checkpoints/.

metrics.jsonl gets one JSON object per line, flushed as it is written, so other tools (and a
later acm-tui) can read it while training goes on.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import config
from .checkpoint import list_checkpoints
from .errors import AcmError

STAGES = ("pretrain", "finetune")


def new_run_name(cfg: config.Config) -> str:
    return f"{cfg.model.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_dir(cfg: config.Config, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise AcmError(f"invalid run name {name!r}: use letters, digits, '-' and '_'")
    return cfg.runs_dir / name


def stage_dir(run: Path, stage: str) -> Path:
    return run / stage


def checkpoints_dir(run: Path, stage: str) -> Path:
    return run / stage / "checkpoints"


def list_runs(cfg: config.Config) -> list[Path]:
    """Run folders, newest first."""
    if not cfg.runs_dir.exists():
        return []
    runs = [d for d in cfg.runs_dir.iterdir() if d.is_dir() and (d / "config.toml").exists()]
    return sorted(runs, key=lambda d: d.stat().st_mtime, reverse=True)


def latest_run_with(cfg: config.Config, stage: str) -> Path | None:
    for r in list_runs(cfg):
        if list_checkpoints(checkpoints_dir(r, stage)):
            return r
    return None


def model_identity(cfg: config.Config) -> dict:
    """What must match for a run folder to be continued with these settings."""
    return {"preset": cfg.model.preset, "vocab_size": cfg.tokenizer.vocab_size}


def prepare_run(cfg: config.Config, run: Path) -> None:
    """Create the run folder with its resolved settings, or check an existing one matches them."""
    saved = run / "config.toml"
    if saved.exists():
        try:
            old = config.load(saved)
        except AcmError as e:
            raise AcmError(f"run {run.name}: its config.toml is unreadable ({e})") from None
        if model_identity(old) != model_identity(cfg):
            raise AcmError(f"run {run.name} was made with preset {old.model.preset!r} (vocab "
                           f"{old.tokenizer.vocab_size}), not {cfg.model.preset!r} (vocab {cfg.tokenizer.vocab_size}): "
                           f"choose another --run")
    run.mkdir(parents=True, exist_ok=True)
    config.save(cfg, saved)


class MetricsLog:
    """Appends JSON lines to metrics.jsonl (flushed per line) and plain lines to train.log."""

    def __init__(self, folder: Path, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            folder.mkdir(parents=True, exist_ok=True)
            self._metrics = open(folder / "metrics.jsonl", "a", buffering=1, encoding="utf-8")
            self._log = open(folder / "train.log", "a", buffering=1, encoding="utf-8")

    def record(self, event: dict) -> None:
        if self.enabled:
            self._metrics.write(json.dumps(event) + "\n")

    def line(self, text: str) -> None:
        if self.enabled:
            self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def close(self) -> None:
        if self.enabled:
            self._metrics.close()
            self._log.close()


def read_metrics(run: Path, stage: str) -> list[dict]:
    """Every complete line of a stage's metrics.jsonl (a line being written is skipped)."""
    path = stage_dir(run, stage) / "metrics.jsonl"
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        pass
    return out
