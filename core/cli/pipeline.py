"""`acm pipeline`: every stage's state (as the TUI's Setup pane shows it), and running what remains."""
from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

from rich.console import Console
from rich.table import Table
from rich.text import Text

from core import runs
from core.atomic import read_json
from core.cli.args import duration
from core.cli.generate import print_eval_table
from core.cli.output import console_for, print_json
from core.cli.progress import StepDisplay
from core.config import Config, parse_duration
from core.engine import Engine
from core.errors import AcmError, OutputGone, interrupted, one_line, written_unless_lost
from core.escapes import visible
from core.paths import Paths
from core.pipeline.overview import StageStatus, pipeline_status, run_remaining
from core.pipeline.tables import STATE_STYLES, plain
from core.progress import Cancelled, CancelToken, Progress
from core.runs import checkpoint
from core.train.ready import submit_readying
from core.train.ready_step import READY_JOB
from core.train.trainer import Control


def cmd_status(args, cfg: Config) -> int:
    statuses = pipeline_status(cfg)
    if args.json:
        print_json([s.__dict__ for s in statuses])
        return 0
    table = Table("stage", "state", "details", title="Pipeline", title_justify="left")
    for s in statuses:
        table.add_row(s.label, Text(s.state, style=STATE_STYLES.get(s.state, "")), plain(s.detail))
    console_for().print(table)
    return 0


class PipelineScreen:
    """`acm pipeline run` on the command line as one program: each stage under its heading, in a
    display of its own that is stopped (its bars left as final lines) before the next heading."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic,
                 on_gone: Callable[[], None] = lambda: None):
        self.console, self.clock, self.on_gone = console, clock, on_gone
        self.current: StepDisplay | None = None
        self.running: str | None = None  # the stage under way, or the last one begun
        self.gone: BaseException | None = None  # how the output's reader went, once it has
        self.ended = False  # the command is ending (its last line said, or about to be): nothing more

    @contextlib.contextmanager
    def stage(self, status: StageStatus, number: int, count: int) -> Iterator[None]:
        self.running = status.name
        self.console.print(Text(f"── {number}/{count} {status.label}", style="bold"))
        with StepDisplay(self.console, clock=self.clock) as self.current:
            try:
                yield
            finally:
                self.current = None

    def readied(self, fut: Future) -> None:
        """Say what the engine's readying beside the shards did (from the engine's thread): the
        steps it readied, or why it failed (the stage that meets the same will stop on it)."""
        if fut.cancelled() or self.ended:
            return
        error = fut.exception()
        line = f"the training step could not be readied: {one_line(error)}" if error else fut.result().describe()
        if error or fut.result().stages:
            self._shown(lambda text: self.console.print(Text(text, style="dim")), line)

    def report(self, p: Progress) -> None:
        if self.current is not None:
            self._shown(self.current.report, p)

    def train_event(self, event: dict) -> None:
        if self.current is not None:
            self._shown(self.current.train_event, event)

    def _shown(self, show: Callable, item) -> None:
        """Show what a stage reports (on the engine's thread); once the output's reader has gone
        (`| head`, Rich's console saying so with SystemExit(1); a terminal that hung up), nothing
        more, and `on_gone` stops the stage at its next step, with a checkpoint."""
        if self.gone is not None:
            return
        self.gone = written_unless_lost(show, item)
        if self.gone is not None:
            self.on_gone()


def cmd_run(args, cfg: Config) -> int:
    live = runs.live_stage(cfg)
    if live is not None:  # its run would read as unfinished, and a second run would train beside it
        run, stage = live
        raise AcmError(f"{stage} of run {run.name} is training in another process: let it end, or stop it first "
                       f"(`acm runs stop {shlex.quote(run.name)}`)")
    engine, control, cancel = Engine(), Control(), CancelToken()
    screen = PipelineScreen(console_for(stderr=True), on_gone=lambda: (control.stop(), cancel.cancel()))
    time_s = parse_duration(args.time, "--time") if args.time else None
    quit_now = False  # a second Ctrl-C: the engine is not waited for

    def ready(stage_cfg: Config) -> None:
        # the training stage comes next on this engine: it trains on the readied model (the process ends after)
        submit_readying(engine, stage_cfg, shards_due=True, keep=True).add_done_callback(screen.readied)

    try:
        done = run_remaining(cfg, screen.report, cancel, engine.call, screen.train_event, control, time_s,
                             screen.stage, ready)
    except Cancelled:
        if screen.gone is None:
            raise
    except KeyboardInterrupt:
        screen.ended = True
        control.stop()
        cancel.cancel()
        quit_now = True
        # the stage under way ends at its next step (a training stage saves a checkpoint); a second
        # Ctrl-C meanwhile exits at once; a readying is not waited for (acm's main ends the process)
        engine.shutdown(abandon=READY_JOB)
        return interrupted(screen.console.print, kept_after_stop(cfg, screen.running), "acm pipeline run")
    except BaseException:  # anything else that ends the command here (a terminal gone under a write of this
        control.stop()  # thread's): the stage under way stops at its next step, with a checkpoint, before
        cancel.cancel()  # the engine is waited for below, never trained on to its end by no one
        raise
    finally:  # the engine's thread lets go of MLX before the process exits
        screen.ended = True
        engine.shutdown(wait=not quit_now, abandon=READY_JOB)
        if quit_now:  # a second Ctrl-C: the stage still stopping is left to end with the process
            engine.abandon()
    if screen.gone is not None:  # the stage under way stopped with its checkpoint (the engine waited
        raise OutputGone() from screen.gone  # for above): end as the pipe says
    print(f"ran: {', '.join(done) or 'nothing (every stage is done)'}")
    results = read_json(Paths.eval_results(runs.list_runs(cfg)[0])) if "evaluate" in done else None
    if results:
        print_eval_table(results)
    return 0


def kept_after_stop(cfg: Config, stage: str | None) -> str:
    """What a Ctrl-C kept: the finished stages, and the checkpoint a training stage it stopped goes
    on from (in the newest run, the one the pipeline trains)."""
    run = runs.newest_run(cfg)
    if stage not in runs.TRAINING_STAGES or run is None:
        return "finished stages are kept"
    last = checkpoint.latest(Paths.checkpoints(run, stage))
    if last is None:
        return f"finished stages are kept; {stage} of run {visible(run.name)} has no checkpoint yet"
    return (f"finished stages are kept; {stage} of run {visible(run.name)} goes on from its checkpoint "
            f"{last.path.name}")


def register(sub, add) -> None:
    pipe = sub.add_parser("pipeline", help="every stage's state; run what remains")
    pipe.set_defaults(func=cmd_status, json=False)
    pipe.add_argument("--json", action="store_true", help="print JSON")
    actions = pipe.add_subparsers(dest="pipeline_command", metavar="ACTION")
    add(actions, "status", cmd_status, "each stage: not started, done (with key figures), stale, running, ...")
    run = add(actions, "run", cmd_run, "run every stage that is not done, in order (an unfinished training resumes)",
              json_flag=False)
    run.add_argument("--time", type=duration, metavar="DURATION",
                     help="wall-clock budget (90s, 10m, 1h30m) shared by the training stages, evaluation keeping "
                          "its share")
