"""`acm train pretrain|finetune`: the training stage on the engine thread, with a live progress line.

Ctrl-C once stops at the next step boundary and writes a checkpoint; twice exits at once (the
previous checkpoint stays loadable).
"""
from __future__ import annotations

import contextlib
import os
import queue
import shlex
import signal
import threading
from pathlib import Path

from rich.markup import escape

from core.cli.args import duration, positive_int, setting_int
from core.cli.output import err_console
from core.cli.progress import StepDisplay
from core.config import Config
from core.engine import Engine
from core.errors import INTERRUPTED, AcmError, interrupted
from core.escapes import visible
from core.paths import Paths
from core.runs import checkpoint
from core.train.detach import launch_detached
from core.train.lifeline import tie_rank_to_launcher
from core.train.ranks import describe as describe_ranks
from core.train.ranks import in_group
from core.train.ranks import train_on_ranks as launch_ranks
from core.train.snapshot import Launch
from core.train.target import NoRun, training_target
from core.train.trainer import Control, StageResult, check_inputs
from core.train.worker import FINISHED, print_event, relay, train_here


def pick_run(cfg: Config, stage: str, name: str | None, resume: bool):
    """The run named, else the one core.train.target's rule picks for `stage` (resumed as asked)."""
    try:
        return training_target(cfg, stage, name, resume).run  # --run '' is a name, refused as one
    except NoRun:
        raise AcmError(f"no run with {'pretrain' if stage == 'finetune' else stage} checkpoints in "
                       f"{cfg.locations.runs}: run `acm train pretrain` first, or name one with --run") from None


def stage_settings(args, cfg: Config):
    """The stage's settings with --steps and --time applied."""
    sc = getattr(cfg.train, args.stage)
    sc.steps = args.steps or sc.steps
    sc.time = args.time or sc.time
    return sc


def cmd_train(args, cfg: Config) -> int:
    if in_group():
        tie_rank_to_launcher()  # a rank never outlives its launcher
    stage_settings(args, cfg)
    ranks = args.ranks or cfg.train.ranks
    run = pick_run(cfg, args.stage, args.run, args.resume)
    if args.detach:
        pid = launch_detached(args.config, args.stage, run, args.resume, args.steps, args.max_steps,
                              args.time, ranks)
        print(f"{args.stage} of run {visible(run.name)} runs in the background (pid {pid}); "
              f"log: {visible(str(Paths.detached_log(run, args.stage)))}")
        print(f"watch it in acm-tui or with `acm runs`; stop it with `acm runs stop {visible(shlex.quote(run.name))}`")
        return 0
    if ranks > 1 and not in_group():
        return train_on_ranks(args, cfg, run, ranks)
    launch = Launch(args.stage, run.name, args.resume, args.steps, args.max_steps)
    result = train_here(cfg, launch, run, lambda events, stop: follow(events, args, run, stop),
                        engine=readied_engine(args, cfg, run))
    if result is None:
        return INTERRUPTED
    if not args.json and os.environ.get("MLX_RANK", "0") == "0":  # one line, from rank 0
        print(result_line(args.stage, result))
    return ended(args.stage, run, result.step, result.last_checkpoint, result.interrupted and result.stopped_early,
                 args)


def result_line(stage: str, result: StageResult) -> str:
    """The stage's outcome on standard output: where it ended, its best val loss and checkpoint (for
    a stage that had finished already, which its own line said, what going further takes)."""
    best = f", best val loss {result.best_val_loss:.4f}" if result.best_val_loss is not None else ""
    if result.already_done:
        return (f"{stage} of run {result.run.name}: its {result.step:,} steps are done{best}; checkpoint: "
                f"{result.last_checkpoint or 'none'}; to train further, give the total: "
                f"--resume --steps N, N above {result.step:,}")
    return (f"{stage} {'finished' if result.done else 'stopped'} at step {result.step} "
            f"in run {result.run.name}{best}; checkpoint: {result.last_checkpoint or 'none yet'}")


def readied_engine(args, cfg: Config, run) -> Engine | None:
    """The engine the command started before its imports, readying the stage (core/cli/early.py).
    While it readies, the stage's inputs are checked first: a refusal then ends the command at once
    rather than behind the readying."""
    early = args.early
    if early is None:
        return None
    if not early.readied.done():
        check_inputs(cfg, args.stage, run, args.resume)
    return early.take()


def ended(stage: str, run, step: int, last_checkpoint: Path | None, stopped_by_ctrl_c: bool, args=None) -> int:
    """The exit status of a stage that ended: 130 where Ctrl-C stopped it before its end, saying
    what it kept (a Ctrl-C before the first step saves nothing) and the command that goes on: with
    no checkpoint to keep its plan, the steps and time this one was given."""
    if not stopped_by_ctrl_c:
        return 0
    again = f"acm train {stage} --run {visible(shlex.quote(run.name))}"
    if last_checkpoint is None:
        for option, value in (("--steps", getattr(args, "steps", None)), ("--time", getattr(args, "time", None))):
            again += f" {option} {shlex.quote(str(value))}" if value else ""
        kept = "no checkpoint yet"
    else:
        again += " --resume"
        kept = (f"checkpoint of step {step} saved" if last_checkpoint.name == f"step-{step:07d}"
                else f"its last checkpoint is {last_checkpoint.name}")
    return interrupted(lambda line: err_console().print(line, markup=False), kept, again)


def follow(events: queue.SimpleQueue, args, run, stop) -> int | None:
    """Show a stage's events (a progress bar and lines, or JSON) until they end. Ctrl-C once calls
    `stop`; twice returns 130 at once."""
    label = f"{args.stage} {escape(visible(run.name))}"  # a progress bar reads markup
    with StepDisplay(err_console(), label=label) if not args.json else contextlib.nullcontext() as shown:
        show = print_event if args.json else shown.train_event
        return relay(events, show, stop, err_console().print)


def train_on_ranks(args, cfg: Config, run, ranks: int) -> int:
    """The stage on `ranks` ranks through MLX's launcher, rank 0's progress shown here."""
    check_inputs(cfg, args.stage, run, args.resume)
    err_console().print(f"{args.stage} of run {visible(run.name)} on {describe_ranks(ranks)}", markup=False)
    events: queue.SimpleQueue = queue.SimpleQueue()
    control, outcome = Control(), {}

    def launch() -> None:
        try:
            outcome["last"] = launch_ranks(cfg, args.stage, run, args.resume, events.put, control, ranks,
                                           args.max_steps, lambda proc: outcome.update(proc=proc), args.steps)
        except Exception as e:  # a rank's refusal, a missing folder: raised here, said in one line
            outcome["error"] = e
        finally:
            events.put(FINISHED)

    threading.Thread(target=launch, daemon=True).start()
    if follow(events, args, run, control.interrupt) is not None:
        with contextlib.suppress(KeyError, OSError):  # twice: every rank ends at once
            os.killpg(outcome["proc"].pid, signal.SIGKILL)
        return INTERRUPTED
    if "error" in outcome:
        raise outcome["error"]
    last = outcome["last"]
    if not args.json and "state" in last:
        ck = last["checkpoint"].path if "checkpoint" in last else "none"
        print(f"{args.stage} {last['state'].state} at step {last['state'].step} in run {visible(run.name)} on "
              f"{ranks} ranks; checkpoint: {visible(str(ck))}")
    stopped = "state" in last and last["state"].state == "stopped"
    kept = checkpoint.latest(Paths.checkpoints(run, args.stage))  # this call's, or the one it resumed
    return ended(args.stage, run, last["state"].step if "state" in last else 0, kept.path if kept else None,
                 control.interrupted and stopped, args)


def register(sub, add) -> None:
    train = sub.add_parser("train", help="pretrain on language, fine-tune on code").add_subparsers(
        dest="train_command", required=True, metavar="STAGE")
    for stage, help in (("pretrain", "train the model on the language shards"),
                        ("finetune", "fine-tune the best pretrain checkpoint on the code shards")):
        p = add(train, stage, cmd_train, help)
        p.set_defaults(stage=stage)
        p.add_argument("--run", help="run folder name under runs/ (default: a new one for pretrain, the "
                                     "latest with a pretrain checkpoint for finetune)")
        p.add_argument("--resume", action="store_true", help="continue the run's latest checkpoint of this stage")
        p.add_argument("--steps", type=setting_int(f"train.{stage}.steps"),
                       help=f"total steps (default: train.{stage}.steps); with --time, at most this many; with "
                       "--resume, the new total of a run that finished its plan (a resumed run keeps its plan)")
        p.add_argument("--time", type=duration, metavar="DURATION",
                       help=f"wall-clock budget (20s, 10m, 8h): the steps are fitted to it, warmup and decay "
                            f"included, at most --steps where given (default: train.{stage}.time)")
        p.add_argument("--max-steps", type=positive_int,
                       help="stop after this many steps in this call (resume later)")
        p.add_argument("--ranks", type=setting_int("train.ranks"), metavar="N",
                       help="train on N ranks of this host, one per NVIDIA GPU (NCCL; elsewhere the ring "
                            "backend) (default: train.ranks)")
        p.add_argument("--detach", action="store_true",
                       help="run in the background, surviving the terminal (watch with acm-tui or acm runs)")
