"""`acm train`'s engine readied beside the command's own start (core/cli/early.py)."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core import config
from core.cli import commands
from core.cli.early import begin, trains_here
from core.engine import Engine
from core.paths import Paths
from core.runs import checkpoint
from core.runs.events import read_samples
from core.train.ready_step import READY_JOB, Readied
from tests.helpers import interrupt_once, losses, sigint_at_default


@pytest.mark.parametrize("argv, found", [
    (["train", "pretrain"], ("acm.toml", "pretrain")),
    (["-c", "x.toml", "train", "finetune", "--run", "r", "--resume", "--steps", "9"], ("x.toml", "finetune")),
    (["--config=y.toml", "train", "pretrain", "--json", "--max-steps", "3"], ("y.toml", "pretrain")),
    (["--conf", "z.toml", "train", "pretrain"], ("z.toml", "pretrain")),  # argparse's abbreviations
    (["train", "pretrain", "--detach"], None),  # trains in another process
    (["train", "pretrain", "--det"], None),
    (["train", "finetune", "--ranks", "2"], None),
    (["train", "finetune", "--ranks=1"], None),  # the real parse decides; nothing is readied meanwhile
    (["train", "pretrain", "-h"], None),
    (["train", "pretrain", "--he"], None),
    (["--version"], None),
    (["train"], None),
    (["train", "evaluate"], None),
    (["pipeline", "run"], None),
    (["-c"], None),
    ([], None),
])
def test_only_a_stage_trained_in_this_process_is_readied_before_the_imports(argv, found, monkeypatch):
    monkeypatch.delenv("ACM_CONFIG", raising=False)
    monkeypatch.delenv("MLX_RANK", raising=False)
    assert trains_here(argv) == (found and (Path(found[0]), found[1]))


def test_the_settings_file_is_the_one_the_command_reads(monkeypatch):
    monkeypatch.setenv("ACM_CONFIG", "env.toml")
    monkeypatch.delenv("MLX_RANK", raising=False)
    assert trains_here(["train", "pretrain"]) == (Path("env.toml"), "pretrain")
    assert trains_here(["-c", "given.toml", "train", "pretrain"]) == (Path("given.toml"), "pretrain")
    monkeypatch.setenv("MLX_RANK", "0")  # a rank the launcher started: its launcher readied nothing either
    assert trains_here(["train", "pretrain"]) is None


@pytest.fixture
def as_on_a_gpu(monkeypatch):
    """MLX's CPU taken for a GPU, whose libraries a first step would load: where readying runs."""
    import core.train.ready_step

    monkeypatch.setattr(core.train.ready_step, "on_a_gpu", lambda: True)


@pytest.mark.parametrize("samples", [0, 2])
def test_the_stage_trains_on_the_readied_engine_and_learns_as_without_it(prepared, capsys, as_on_a_gpu, samples):
    """The readying runs the stage's step (and, where the stage samples, a decode) on the engine the
    stage then trains on; the run's losses and samples are those of the same command with it off."""
    cfg = config.load(prepared / "acm.toml")
    cfg.train.samples = samples
    cfg.train.ready_in_command = True
    config.save(cfg, prepared / "on.toml")
    cfg.train.ready_in_command = False
    config.save(cfg, prepared / "off.toml")
    readied = {}
    for name in ("on", "off"):
        argv = ["-c", str(prepared / f"{name}.toml"), "train", "pretrain", "--run", name, "--max-steps", "6"]
        early = begin(argv)
        assert commands.main(argv, early) == 0
        assert early.taken and early.engine.stopped  # the stage took it, and its end shut it down
        readied[name] = early.readied.result()
    assert "pretrain stopped at step 6 in run on" in capsys.readouterr().out
    assert readied["on"].stages == ("pretrain",)
    assert readied["off"] == Readied((), 0.0, "train.ready_in_command is off")
    assert losses(cfg.runs_dir / "on") == losses(cfg.runs_dir / "off") and len(losses(cfg.runs_dir / "on")) == 6
    drawn = {name: [(e.step, e.prompt, e.text) for e in read_samples(cfg.runs_dir / name, "pretrain")]
             for name in readied}
    assert drawn["on"] == drawn["off"] and bool(drawn["on"]) == bool(samples)


@pytest.fixture
def steps_built(monkeypatch) -> list[str]:
    """The stages that built their own compiled steps (core/train/step.py's `build_steps`, as it is)."""
    import core.train.trainer

    built, build = [], core.train.trainer.build_steps
    monkeypatch.setattr(core.train.trainer, "build_steps", lambda model, *a: built.append(model) or build(model, *a))
    return built


@pytest.mark.parametrize("optimizer, grad_accum", [("adamw", 1), ("muon", 2)])
def test_the_stage_trains_on_the_readied_model_its_state_reset_to_the_stage_s_start(
        prepared, as_on_a_gpu, steps_built, optimizer, grad_accum):
    """The readying's model, optimizer and compiled steps serve the stage: it builds none of its own,
    and learns as the same stage without the readying, step for step."""
    cfg = config.load(prepared / "acm.toml")
    cfg.train.pretrain.optimizer, cfg.train.pretrain.grad_accum = optimizer, grad_accum
    for name, on in (("on", True), ("off", False)):
        cfg.train.ready_in_command = on
        config.save(cfg, prepared / f"{name}.toml")
        argv = ["-c", str(prepared / f"{name}.toml"), "train", "pretrain", "--run", name, "--max-steps", "4"]
        assert commands.main(argv, begin(argv)) == 0
        assert len(steps_built) == (0 if on else 1)
    assert losses(cfg.runs_dir / "on") == losses(cfg.runs_dir / "off") and len(losses(cfg.runs_dir / "on")) == 4


def test_a_model_readied_for_other_settings_is_dropped_and_the_stage_builds_its_own(prepared, as_on_a_gpu,
                                                                                    steps_built):
    from core.train.ready_step import ready_stage
    from core.train.trainer import train_stage

    cfg = config.load(prepared / "acm.toml")
    cfg.train.ready_in_command = True
    config.save(cfg, prepared / "acm.toml")
    engine = Engine()
    try:
        assert engine.submit(ready_stage, prepared / "acm.toml", "pretrain", lambda: False).result(60).stages
        cfg.train.pretrain.weight_decay += 0.05  # a constant of the compiled update
        engine.submit(train_stage, cfg, "pretrain", cfg.runs_dir / "other", max_steps=3).result(120)
        assert len(steps_built) == 1
        engine.submit(train_stage, cfg, "pretrain", cfg.runs_dir / "plain", max_steps=3).result(120)
    finally:
        engine.shutdown()
    assert len(steps_built) == 2  # nothing was left for a second stage either
    assert losses(cfg.runs_dir / "other") == losses(cfg.runs_dir / "plain")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_stage_on_the_readied_model_holds_no_more_memory_than_one_built_afresh(prepared, as_on_a_gpu, dtype):
    """Once a first step has run (nothing in flight): what a step on the readied model leaves
    allocated is what the same step of a model built afresh leaves (its first weights, 4 bytes a
    parameter, are not held beside the optimizer's)."""
    import gc

    import mlx.core as mx

    from core.train.ready_step import ready_stage
    from core.train.trainer import Trainer

    cfg = config.load(prepared / "acm.toml")
    cfg.train.ready_in_command, cfg.model.compute_dtype = True, dtype
    config.save(cfg, prepared / "acm.toml")

    def after_a_step(name: str) -> tuple[int, int]:
        if name == "readied":
            assert ready_stage(prepared / "acm.toml", "pretrain", lambda: False).stages
        trainer = Trainer(cfg, "pretrain", cfg.runs_dir / name)
        trainer._setup()
        mx.eval(trainer._train_step(0), trainer.opt.state)
        trainer.drawn.close()
        gc.collect()
        return mx.get_active_memory(), trainer.model.num_params()

    engine = Engine()
    try:
        (readied, params), (afresh, _) = (engine.call(after_a_step, name) for name in ("readied", "afresh"))
    finally:
        engine.shutdown()
    assert abs(readied - afresh) < params  # a quarter of the first weights' 4 bytes a parameter


def test_the_readying_is_skipped_where_it_cannot_help_or_the_step_may_not_fit(prepared, monkeypatch):
    import core.train.ready_step
    from core.train.ready_step import ready_stage

    cfg = config.load(prepared / "acm.toml")
    cfg.train.ready_in_command = True
    config.save(cfg, prepared / "acm.toml")
    monkeypatch.setattr(core.train.ready_step, "on_a_gpu", lambda: False)
    assert ready_stage(prepared / "acm.toml", "pretrain", lambda: False).why.startswith("no GPU")
    monkeypatch.setattr(core.train.ready_step, "on_a_gpu", lambda: True)
    done = ready_stage(prepared / "acm.toml", "pretrain", lambda: False, limit=1)
    assert not done.stages and "more than 75% of the device's" in done.why
    assert ready_stage(prepared / "nowhere.toml", "pretrain", lambda: False).why.startswith("no settings file at")
    (prepared / "bad.toml").write_text("[train]\nready_in_command = 3\n")
    assert "ready_in_command" in ready_stage(prepared / "bad.toml", "pretrain", lambda: False).why


def test_an_abandoned_job_cancels_those_queued_behind_it_and_no_other_job_is_abandoned():
    import threading
    from concurrent.futures import wait

    engine, release = Engine(), threading.Event()
    held = engine.submit_named(READY_JOB, release.wait, 30)
    behind = engine.submit(lambda: "trained")
    while engine.running != READY_JOB:
        release.wait(0.01)
    assert not engine.abandon("another job") and engine.abandon(READY_JOB) and engine.abandoned
    release.set()
    assert held.result(30) is True and wait([behind], 30).done and behind.cancelled()
    engine.shutdown()  # the engine comes to the stop behind them: it is not left running


HELD = """
import sys, threading, time
import core.cli.train
import core.train.ready_step

following, relay = threading.Event(), core.cli.train.relay

def relay_following(*args):  # the command follows its stage: a Ctrl-C from now on is the stage's
    following.set()
    return relay(*args)

def held(cfg, sc, shape, tokenizer, waited_for, stage, kept):  # a readying that takes minutes, as MLX compiling
    print("readying", file=sys.stderr, flush=True)        # its kernels on a fresh NVIDIA machine
    while not (waited_for() and following.is_set()):
        time.sleep(0.01)
    print("held, the stage queued behind and followed", file=sys.stderr, flush=True)
    threading.Event().wait()

core.cli.train.relay = relay_following

core.train.ready_step.run_step = held
core.train.ready_step.on_a_gpu = lambda: True  # as on a GPU, where readying runs
from core.cli import main
sys.exit(main(sys.argv[1:]))
"""
# ... and a Ctrl-C that lands as the command line is parsed, once the readying has begun
CTRL_C_IN_PARSE = HELD.replace("from core.cli import main", """import core.cli.commands
begun, held_before = threading.Event(), held

def held(*args, **kwargs):
    begun.set()
    held_before(*args, **kwargs)

def parser():
    begun.wait(60)
    raise KeyboardInterrupt

core.train.ready_step.run_step = held
core.cli.commands.build_parser = parser
from core.cli import main""")


def _held_acm(project: Path, *argv: str, script: str = HELD) -> subprocess.Popen:
    cfg = config.load(project / "acm.toml")
    cfg.train.ready_in_command = True
    config.save(cfg, project / "acm.toml")
    return subprocess.Popen([sys.executable, "-c", script, "-c", str(project / "acm.toml"), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_at_default)


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_while_the_stage_waits_for_the_readying_ends_at_once_with_nothing_to_keep(prepared, sig, status):
    ended, err = interrupt_once(_held_acm(prepared, "train", "pretrain", "--run", "r"), "held", sig, timeout=60)
    assert ended == status and err.endswith("interrupted: no checkpoint yet; `acm train pretrain --run r` continues"), \
        err[-800:]
    assert not checkpoint.list_checkpoints(Paths.checkpoints(prepared / "runs" / "r", "pretrain"))


@pytest.mark.parametrize("argv, says", [
    (["train", "pretrain", "--steps", "many"], "acm: error: acm train pretrain: argument --steps"),
    (["train", "finetune"], "acm: error: no run with pretrain checkpoints"),
    (["train", "finetune", "--run", "nope"], "acm: error: run 'nope' does not exist"),  # the stage's inputs
])
def test_a_command_that_trains_nothing_ends_without_waiting_for_its_readying(prepared, argv, says):
    proc = _held_acm(prepared, *argv)
    try:
        assert proc.wait(timeout=60) == 2
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert "readying" in err.splitlines() and any(line.startswith(says) for line in err.splitlines()), err[-800:]


def test_the_readying_starts_before_the_heavy_imports():
    """What the early engine needs is MLX, the model and the settings: the tokenizer, NumPy, the
    data modules and the trainer's loop load meanwhile; the settings are read without tomlkit, which
    only a save needs."""
    heavy = ["numpy", "pyarrow", "rich", "tomlkit", "core.tokenizer.bpe", "core.train.trainer", "core.runs"]
    code = f"import sys, core.cli.early; print([m for m in {heavy!r} if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_a_ctrl_c_before_the_command_s_own_handling_ends_past_the_readying(prepared):
    """A Ctrl-C while acm loads or parses its command line (before the command hears Ctrl-C itself)
    leaves the readying under way: the process ends at once with 130, not at the interpreter's exit
    with the engine's thread still inside MLX (which may abort it)."""
    proc = _held_acm(prepared, "train", "pretrain", script=CTRL_C_IN_PARSE)
    try:
        assert proc.wait(timeout=60) == 130, proc.stderr.read()[-800:]
    finally:
        proc.kill()
