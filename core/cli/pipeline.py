"""`acm pipeline`: every stage's state (as the TUI's Setup pane shows it), and running what remains."""
from __future__ import annotations

import json

from rich.table import Table
from rich.text import Text

from core.cli.args import duration
from core.cli.output import console_for
from core.cli.progress import progress_bars
from core.cli.train import describe
from core.config import Config, parse_duration
from core.engine import Engine
from core.pipeline.overview import pipeline_status, run_remaining
from core.pipeline.tables import STATE_STYLES
from core.progress import CancelToken
from core.train.trainer import Control


def cmd_status(args, cfg: Config) -> int:
    statuses = pipeline_status(cfg)
    if args.json:
        print(json.dumps([s.__dict__ for s in statuses], indent=2))
        return 0
    table = Table("stage", "state", "details", title="Pipeline", title_justify="left")
    for s in statuses:
        table.add_row(s.label, Text(s.state, style=STATE_STYLES.get(s.state, "")), Text(s.detail))
    console_for().print(table)
    return 0


def cmd_run(args, cfg: Config) -> int:
    engine, control, cancel = Engine(), Control(), CancelToken()
    console = console_for(stderr=True)

    def train_event(event: dict) -> None:
        line = describe(event)
        if line:
            console.print(line)

    try:
        with progress_bars() as report:
            time_s = parse_duration(args.time, "--time") if args.time else None
            done = run_remaining(cfg, report, cancel, engine.call, train_event, control, time_s)
    except KeyboardInterrupt:
        control.stop()
        cancel.cancel()
        console.print("interrupted: finished stages are kept; `acm pipeline run` continues")
        return 130
    finally:
        engine.shutdown()
    print(f"ran: {', '.join(done) or 'nothing (every stage is done)'}")
    return 0


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
