"""`acm train`'s engine readied beside the command's own start.

A training command spends its first second or so importing acm (MLX's CUDA build, NumPy, the
tokenizer, Rich, the data modules) and its stage then spends about as long on MLX's first run of
the step and of the decoding (bench/RESULTS.md). So before the rest of acm is imported, a command
that will train in this process starts its engine on `ready_stage` (core/train/ready_step.py,
light imports only): MLX's first run releases Python's lock, and the imports go on meanwhile. The
stage, queued behind it, waits only for the part under way. Only the command line is read here,
and only to decide whether to start: the real parse, with its errors, comes after.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from core import config
from core.engine import Engine, exit_past_abandoned_work
from core.train.ready_step import READY_JOB, ready_stage, submit_ready

TRAINED_HERE = ("pretrain", "finetune")


@dataclass
class EarlyEngine:
    """The engine a command started early, and its readying; `taken` once a stage trains on it."""
    engine: Engine
    readied: Future
    taken: bool = False

    def take(self) -> Engine:
        self.taken = True
        return self.engine

    def end(self, status: int) -> None:
        """The command is over: a readying still under way is not waited for (where no stage was
        queued behind it, or the command ended before the stage came to it), and the process ends
        past it (`exit_past_abandoned_work`) with `status`."""
        if self.taken:
            self.engine.abandon(READY_JOB)
        else:
            self.engine.shutdown(abandon=READY_JOB)
        exit_past_abandoned_work(status, [self.engine])


def trains_here(argv: list[str]) -> tuple[Path, str] | None:
    """The settings file and stage of `acm [-c FILE] train pretrain|finetune ...` where it would train
    in this process (not --detach, not on ranks, not a rank itself, not --help), else None. Read
    as argparse reads, abbreviated options included; anything unclear is None."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=True, exit_on_error=False)
    p.add_argument("-c", "--config", type=Path)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--version", action="store_true")
    p.add_argument("--detach", action="store_true")
    p.add_argument("--ranks")
    p.add_argument("command", nargs="?")
    p.add_argument("stage", nargs="?")
    try:
        args, _ = p.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return None
    if (args.command != "train" or args.stage not in TRAINED_HERE or args.help or args.version or args.detach
            or args.ranks is not None or "MLX_RANK" in os.environ):
        return None
    return config.named_file(args.config) or Path(config.CONFIG_NAME), args.stage


def begin(argv: list[str] | None) -> EarlyEngine | None:
    """The engine, readying the stage, where the command trains here; else None (nothing started)."""
    found = trains_here(sys.argv[1:] if argv is None else argv)
    if found is None:
        return None
    engine = Engine()
    return EarlyEngine(engine, submit_ready(engine, ready_stage, *found))
