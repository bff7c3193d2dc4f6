"""The `acm` process's end (core.cli.entry): a command that trained in it ends past Python's teardown."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.paths import Paths
from core.runs import checkpoint, read_metrics

TEARDOWN_HOOK = """import atexit, os, pathlib
atexit.register(lambda: pathlib.Path(os.environ["ACM_TEST_TORN_DOWN"]).write_text("torn down"))
"""


def acm_process(project: Path, tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess, bool]:
    """`python -m core.cli -c PROJECT/acm.toml ARGV`, its output piped (block-buffered, as to a log
    file), with an atexit hook that marks Python's teardown; the process and whether it tore down."""
    hooks, mark = tmp_path / "hooks", tmp_path / "torn-down"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(TEARDOWN_HOOK)
    mark.unlink(missing_ok=True)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(hooks), *sys.path]), "ACM_TEST_TORN_DOWN": str(mark)}
    done = subprocess.run([sys.executable, "-m", "core.cli", "-c", str(project / "acm.toml"), *argv],
                          capture_output=True, text=True, env=env, timeout=300)
    return done, mark.exists()


def test_a_trained_stage_ends_past_the_teardown_with_its_output_and_files_whole(prepared, tmp_path):
    done, torn_down = acm_process(prepared, tmp_path, "train", "pretrain", "--run", "e", "--max-steps", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert not torn_down  # os._exit: Python's teardown did not run
    events = [json.loads(line) for line in done.stdout.splitlines()]  # every line printed reached the pipe
    assert events[-1]["type"] == "log" and events[-1]["text"].startswith("pretrain: ")
    assert {"type": "state", "stage": "pretrain", "state": "stopped", "step": 3, "total": 40} in events
    run = prepared / "runs" / "e"
    assert [m["step"] for m in read_metrics(run, "pretrain") if "loss" in m][-1] == 3
    latest = checkpoint.latest(Paths.checkpoints(run, "pretrain"))
    assert latest.step == 3 and checkpoint.load_weights(latest) and checkpoint.load_optimizer(latest)


@pytest.mark.parametrize("argv", [
    ["config", "show"],  # trains nothing
    ["train", "pretrain", "--run", "none", "--steps", "0"],  # refused by the real parse: argparse's exit
])
def test_other_commands_end_through_pythons_exit(prepared, tmp_path, argv):
    done, torn_down = acm_process(prepared, tmp_path, *argv)
    assert torn_down
    assert done.returncode == (0 if argv[0] == "config" else 2), done.stderr
