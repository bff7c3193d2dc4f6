"""A training command's whole wall, from the command to its exit: the part before the trainer
(Python's start, acm's imports, MLX's device, the settings read and the run picked), the trainer's
own split (`timings.json`: setup, compile, steps, validation, samples, checkpoints, other) and the
part after it (the last lines printed, Python's and MLX's exit). `timings.json` starts at the
trainer, so this is the figure a user waits for.

usage: python bench/command_wall.py --project DIR [--stage pretrain] [--rounds 1] [--max-steps N]
           [--run-from RUN] [--keep] [--ready on off] [--exit normal fast] [--bytecode write|as-is]
DIR holds acm.toml and data/ with token shards (`acm prepare` done); each round runs
`acm train STAGE --run wall-<round>` in a fresh process (a fine-tune needs --run-from naming a run
with a pretrain checkpoint, copied for each round) and prints one JSON line. The process is
`python bench/command_wall.py --child`, so Python's start includes this file's few imports. With
--ready, each round runs one process for each value of `train.ready_in_command` given, in turn; with
--exit, for each way of ending too: `normal` (Python's teardown, as `acm` ends now) or `fast` (the
process ended by `os._exit` once the command has returned and its output is flushed, skipping the
teardown of Python's modules and MLX's buffers). Where the engine was readied, `readying_s` says when
it started and ended, from the command's start.

Every process is timed as an installed acm runs, with its modules' bytecode on disk: a Python that
writes none (PYTHONDONTWRITEBYTECODE, as on some lent machines) would compile acm's, MLX's and other
modules from source in every timed process (on a lent H100 machine, 210 modules in 0.5 s under
cProfile, of a command whose imports took 1.3-1.6 s). So the bytecode the command's imports lack is
written first (`--bytecode write`, the default); each row says how many files were written and how
many still lack it (`bytecode`). `--bytecode as-is` measures the machine as it is.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.abc
import importlib.machinery
import json
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from first_run import ROOT, project_env

# what `acm train` imports before and while it trains (its lazy imports aside: a setting's save)
COMMAND_MODULES = ("core.cli", "core.cli.early", "core.cli.commands", "core.train.trainer", "core.train.ready_step")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--stage", default="pretrain", choices=["pretrain", "finetune"])
    p.add_argument("--rounds", type=int, default=1, help="fresh processes, one after the other")
    p.add_argument("--max-steps", type=int, help="stop each command after this many steps")
    p.add_argument("--run-from", help="a fine-tune: the run whose pretrain each round starts from")
    p.add_argument("--keep", action="store_true", help="keep the rounds' runs")
    p.add_argument("--ready", nargs="+", choices=["on", "off"],
                   help="train.ready_in_command for each process of a round, in turn, written into the "
                        "project's acm.toml before each (default: acm.toml as it is)")
    p.add_argument("--exit", nargs="+", choices=["normal", "fast"], default=["normal"],
                   help="how each process ends, in turn within a round (default: normal)")
    p.add_argument("--bytecode", choices=["write", "as-is"], default="write",
                   help="write the bytecode the command's modules lack before timing (default), or not")
    return p.parse_args()


def main() -> None:
    a = parse_args()
    if a.stage == "finetune" and not a.run_from:
        sys.exit("--stage finetune needs --run-from: a run with a pretrain checkpoint")
    bytecode = write_bytecode() if a.bytecode == "write" else counted(lacking_bytecode()) | {"written": 0}
    for n in range(1, a.rounds + 1):
        for mode in a.ready or [None]:
            if mode is not None:
                set_ready(a.project / "acm.toml", mode == "on")
            for ending in a.exit:
                name = f"wall-{n}" + (f"-{mode}" if mode else "") + (f"-{ending}" if len(a.exit) > 1 else "")
                print(json.dumps(one_round(a, name, ending) | {"round": n, "ready_in_command": mode,
                                                               "exit": ending, "bytecode": bytecode}), flush=True)


def lacking_bytecode() -> list[str]:
    """The source files of the modules `acm train` imports whose bytecode is not on disk (found by a
    process of the command's environment)."""
    probe = ("import importlib, json, os, sys\n"
             f"for name in {COMMAND_MODULES!r}: importlib.import_module(name)\n"
             "print(json.dumps(sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, '__cached__', None)"
             " and str(m.__file__).endswith('.py') and not os.path.exists(m.__cached__)})))")
    done = subprocess.run([sys.executable, "-c", probe], env=project_env(), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"acm's modules do not import: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout)


def write_bytecode() -> dict:
    """Bytecode written for each file `lacking_bytecode` finds (where its folder may be written), as
    `pip install` writes it; what is still lacking after."""
    before = lacking_bytecode()
    for source in before:
        py_compile.compile(source, doraise=False, quiet=2)
    after = counted(lacking_bytecode())
    return after | {"written": len(before) - after["lacking"]}


def counted(files: list[str]) -> dict:
    """How many files lack bytecode, and how many of them are acm's own."""
    return {"lacking": len(files), "lacking_in_acm": sum(Path(f).resolve().is_relative_to(ROOT) for f in files)}


def set_ready(settings: Path, on: bool) -> None:
    from core import config

    cfg = config.load(settings)
    cfg.train.ready_in_command = on
    config.save(cfg, settings)


def one_round(a: argparse.Namespace, name: str, ending: str) -> dict:
    runs = a.project / "runs"
    run = runs / name
    shutil.rmtree(run, ignore_errors=True)
    if a.run_from:
        shutil.copytree(runs / a.run_from, run)
    args = ["train", a.stage, "--run", name] + (["--max-steps", str(a.max_steps)] if a.max_steps else [])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            marks_file = Path(tmp) / "marks.json"
            started = time.time()
            done = subprocess.run([sys.executable, __file__, "--child", str(marks_file), ending, *args], cwd=a.project,
                                  env=project_env(), capture_output=True, text=True)
            ended = time.time()
            marks = json.loads(marks_file.read_text()) if marks_file.exists() else {}
        if done.returncode or "trainer_out" not in marks:
            sys.exit(f"acm {' '.join(args)} " + (f"failed: {done.stderr.strip()[-800:]}" if done.returncode
                                                  else "trained nothing: the trainer never ran"))
        timings = json.loads((run / a.stage / "timings.json").read_text())
    finally:
        if not a.keep:
            shutil.rmtree(run, ignore_errors=True)
    return split(marks, started, ended, timings) | {"stage": a.stage, "args": args}


def split(marks: dict, started: float, ended: float, timings: dict) -> dict:
    """The command's seconds by part; the four parts add up to command_s."""
    steps, command = timings["parts_s"]["steps"], ended - started
    return {
        "bench": "command_wall", "device": marks["device"], "command_s": round(command, 3),
        "before_trainer_s": {"python_start": round(marks["script"] - started, 3),
                             "imports": round(marks["imported"] - marks["script"], 3),
                             "to_trainer": round(marks["trainer_in"] - marks["imported"], 3)},
        "trainer_s": round(marks["trainer_out"] - marks["trainer_in"], 3),
        "after_trainer_s": round(ended - marks["trainer_out"], 3),
        "timings": timings, "readied": marks.get("readied"),
        "readying_s": {k: round(marks[m] - started, 3) for k, m in (("start", "early_in"), ("end", "readied_at"))
                       if m in marks},
        "around_step_share": round(1 - steps / command, 4),
        "around_step_share_in_trainer": round(1 - steps / timings["wall_s"], 4),
    }


def child(marks_file: Path, ending: str, argv: list[str]) -> int:
    """`acm ARGV` in this process, as the `acm` command runs it (its engine readied before the
    imports where `train.ready_in_command` is on), the end of acm's imports and the trainer's entry
    and return marked as the modules load (wall-clock seconds, shared with the parent), with what
    the readying did; the marks are written however the command ends, but for a command that ends
    past a readying left running (`os._exit`: it trained nothing to time). `ending`: see --exit."""
    marks = {"script": time.time()}

    def marked(trainer_module) -> None:
        run = trainer_module.Trainer.run

        def marked_run(self):
            from core.hardware import device_label
            marks.setdefault("device", device_label())
            marks.setdefault("trainer_in", time.time())
            try:
                return run(self)
            finally:
                marks["trainer_out"] = time.time()

        trainer_module.Trainer.run = marked_run

    early = []  # the engine the command started before its imports, if any

    def kept(early_module) -> None:
        begin = early_module.begin
        def begun(argv):
            marks["early_in"] = time.time()
            found = begin(argv)
            early.append(found)
            if found is not None:
                found.readied.add_done_callback(lambda _: marks.setdefault("readied_at", time.time()))
            return found

        early_module.begin = begun

    sys.meta_path.insert(0, AfterImport({"core.train.trainer": marked, "core.cli.early": kept,
                                         "core.cli.commands": lambda _: marks.setdefault("imported", time.time())}))
    from core.cli import main as acm
    try:
        status = acm(argv)
    finally:
        if early and early[0] is not None and early[0].readied.done():  # what the readying did
            marks["readied"] = dataclasses.asdict(early[0].readied.result())
        marks_file.write_text(json.dumps(marks))
    if ending == "fast":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


class AfterImport(importlib.abc.MetaPathFinder):
    """Calls `then[name](module)` once module `name` has loaded, without importing it earlier."""

    def __init__(self, then: dict):
        self.then = then

    def find_spec(self, name, path, target=None):
        if name not in self.then:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load, after = spec.loader.exec_module, self.then.pop(name)

        def exec_module(module):
            load(module)
            after(module)

        spec.loader.exec_module = exec_module
        return spec


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(Path(sys.argv[2]), sys.argv[3], sys.argv[4:]))
    main()
