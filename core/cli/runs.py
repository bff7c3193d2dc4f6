"""`acm runs ...`: list runs and their states, steer a background stage, compare, delete or rename
runs."""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from core import runs
from core.cli import samples as cli_samples
from core.cli.output import console_for, natural_width, print_json
from core.config import Config
from core.errors import AcmError
from core.escapes import visible
from core.pipeline.tables import plain
from core.runs import compare
from core.runs.events import Metrics, event_from_json
from core.train.tracking import metrics_csv

RUN_COLUMNS = ("preset", "stage", "state", "step", "best val loss", "modified")


def cmd_list(args, cfg: Config) -> int:
    rows = [runs.summary(r) for r in runs.list_runs(cfg)]
    if args.json:
        print_json(rows)
        return 0
    console = console_for()
    table = Table(title="Runs", title_justify="left")
    table.add_column("run", no_wrap=True, min_width=max((len(plain(r["name"])) for r in rows), default=3))
    for name in RUN_COLUMNS:  # these give way (wrapping) before the run name would be cut
        table.add_column(name, overflow="fold")
    for r in rows:
        for i, cells in enumerate(stage_cells(r)):
            table.add_row(*map(plain, [r["name"] if i == 0 else "", r["preset"] if i == 0 else "", *cells, _when(r)]))
    if console.width >= natural_width(table):
        console.print(table)
    else:  # too narrow for the table: each run's name on a line of its own, its stages under it
        print_narrow(console, rows)
    return 0


def stage_cells(r: dict) -> list[list[str]]:
    """Per stage of a run summary: stage, state, step (of total), best val loss."""
    out = []
    for stage, st in r["stages"].items() or [("–", {})]:
        total = f"/{st['total']}" if st.get("total") else ""
        out.append([stage, st.get("state", ""), f"{st.get('step', '')}{total}{runs.resumes_from(st)}",
                    runs.best_val_cell(st)])
    return out


def _when(r: dict) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(r["modified"]))


def print_narrow(console: Console, rows: list[dict]) -> None:
    """The runs for a narrow terminal: a run's name is never cut (the terminal wraps it if it must)."""
    console.print("Runs", style="italic")
    for r in rows:
        console.print(Text(visible(r["name"]), style="bold") + plain(f" ({r['preset']}, {_when(r)})"), soft_wrap=True)
        grid = Table.grid(padding=(0, 2))
        for _ in range(4):
            grid.add_column(overflow="fold")
        for *cells, val in stage_cells(r):
            grid.add_row(*map(plain, [*cells, f"best val loss {val}" if val else ""]))
        console.print(Padding(grid, (0, 0, 0, 2)))


def cmd_command(args, cfg: Config) -> int:
    wait_while_starting(cfg.locations.run(args.run), args.runs_command)
    run = runs.existing_run(cfg, args.run)
    stage = args.stage or runs.active_stage(run)
    if stage is None:
        raise AcmError(f"run {run.name} has not started training")
    runs.send_command(run, stage, args.runs_command)
    print(f"{args.runs_command} sent to {stage} of run {visible(run.name)}")
    return 0


STARTING_WAIT_S = 120.0  # the longest a command waits for a stage's process to start (a first compile included)


def wait_while_starting(run: Path, command: str, clock=time.monotonic) -> None:
    """A command sent just after `train --detach`, while the stage's process still starts (its run
    may not have its settings yet), waits until that process runs it, ends, or STARTING_WAIT_S
    passes (then the command says the stage is starting, as it would have at once)."""
    def starting() -> bool:
        return run.is_dir() and any(runs.stage_state(run, stage) == "starting" for stage in runs.TRAINING_STAGES)
    if not starting():
        return
    print(f"run {visible(run.name)} is starting: {command} waits for it (Ctrl-C to leave it)", flush=True)
    deadline = clock() + STARTING_WAIT_S
    while starting() and clock() < deadline:
        time.sleep(0.2)


def cmd_delete(args, cfg: Config) -> int:
    run = runs.existing_run(cfg, args.run)
    if not args.yes:
        raise AcmError(f"deleting run {run.name} removes its checkpoints: add --yes to confirm")
    print(visible(runs.delete_run(run)))  # a run's name from disk: its control characters escaped
    return 0


def cmd_rename(args, cfg: Config) -> int:
    new = runs.rename_run(runs.existing_run(cfg, args.run), args.new_name)
    print(f"renamed to {visible(new.name)}")
    return 0


def cmd_metrics(args, cfg: Config) -> int:
    if args.csv and args.json:
        raise AcmError("--csv and --json: give one (a spreadsheet's rows, or JSON)")
    run = runs.existing_run(cfg, args.run)
    stage = args.stage or runs.active_stage(run)
    if stage is None:
        raise AcmError(f"run {run.name} has not started training")
    records = runs.read_metrics(run, stage)
    if args.csv:
        print(metrics_csv(records), end="")
    elif args.json:
        print_json(newest_per_step([e for e in records if e.get("type") in ("metrics", "eval")]), indent=None)
    else:
        reports = [e for e in map(event_from_json, records) if isinstance(e, Metrics)]  # as the curves read them
        last = reports[-1] if reports else None
        print(f"{stage} of run {visible(run.name)}: {len(reports)} reports"
              + (f", last at step {last.step} (loss {last.loss:.4f})" if last else "")
              + "; --csv for a spreadsheet")
    return 0


def newest_per_step(records: list[dict]) -> list[dict]:
    """A stage's records, each step's report and check once: a resume trains again the steps after
    its checkpoint, and appends their records anew, so the newest of a step is the one that counts
    (as the curves and --csv read them)."""
    kept: dict[tuple, dict] = {}
    for record in records:
        kept.pop(key := (record.get("type"), record.get("step")), None)
        kept[key] = record  # at the place of its newest
    return list(kept.values())


def cmd_compare(args, cfg: Config) -> int:
    if len(set(args.runs)) < 2 or len(set(args.runs)) < len(args.runs):
        raise AcmError("compare needs two runs or more, each named once; `acm runs` lists the runs")
    folders = [runs.existing_run(cfg, name) for name in args.runs]
    stages = (args.stage,) if args.stage else runs.TRAINING_STAGES
    diff = compare.settings_diff(folders)
    report = compare.stage_curves(folders, stages, args.by)
    refuse_nothing(diff, report)
    if args.json:
        print_json(compare_json(args.runs, args.by, diff, report))
    else:
        print_comparison(args.runs, args.by, diff, report)
    return 0


def refuse_nothing(diff: compare.SettingsDiff, report: dict) -> None:
    """Refuse a comparison with nothing in it: no losses, and fewer than two runs' settings read
    (notes alone, exit 0, would read as a comparison made)."""
    if len(diff.read) < 2 and not report:
        unread = "; ".join(f"run {s.run.name}'s settings could not be read ({s.problem})"
                           for s in diff.runs if s.values is None)
        raise AcmError(f"nothing to compare: no run has reported a loss, and {unread}")


def print_comparison(names: list[str], by: str, diff: compare.SettingsDiff, report: dict) -> None:
    """What is wrong with any run's settings, one line a run, then the settings that differ and
    each stage's losses."""
    console = console_for()
    for note in diff.notes():
        console.print(Text(note, style="yellow"))
    if diff.rows:
        console.print(settings_table(diff))
    elif len(diff.read) > 1:
        console.print(Text(same_settings(diff), style="italic"))
    for stage, curves in report.items():
        console.print()
        console.print(loss_table(stage, names, by, curves))


def same_settings(diff: compare.SettingsDiff) -> str:
    if len(diff.read) == len(diff.runs):
        return "The runs' settings are the same."
    *first, last = [s.run.name for s in diff.read]
    return f"The settings of {', '.join(first)} and {last} are the same."


def settings_table(diff: compare.SettingsDiff) -> Table:
    """The settings that differ, a column a run whose settings were read; a long list in brief."""
    table = Table(title="Settings that differ", title_justify="left")
    for name in ("setting", *(s.run.name for s in diff.read)):
        table.add_column(plain(name), overflow="fold")
    for row in diff.cells():  # the values as each run's config.toml has them
        table.add_row(*map(plain, row))
    return table


def loss_table(stage: str, names: list[str], by: str, curves: list[compare.Curve]) -> Table:
    """One stage's losses, a column a run: the last report, the best check, the checks all share."""
    table = Table(title=f"{stage}: loss by {by}", title_justify="left")
    for name in ("", *names):
        table.add_column(plain(name), overflow="fold")  # a run's name: its control characters escaped
    for row in compare.loss_rows(curves, by):
        table.add_row(*row)
    return table


def compare_json(names: list[str], by: str, diff: compare.SettingsDiff, report: dict) -> dict:
    read = [s.run.name for s in diff.read]
    settings = [{"key": key, "values": {n: (None if v is None else compare.shown(v)) for n, v in zip(read, values)}}
                for key, values in diff.rows]
    problems = {s.run.name: {"read": s.values is not None, "problem": s.problem} for s in diff.runs if s.problem}
    stages = {stage: {"runs": {n: compare.stage_summary(c) for n, c in zip(names, curves)},
                      "shared_val": [{"x": x, "val_loss": dict(zip(names, losses))}
                                     for x, losses in compare.shared_val(curves)]}
              for stage, curves in report.items()}
    return {"runs": names, "by": by, "settings": settings, "settings_problems": problems, "stages": stages}


def register(sub, add) -> None:
    parser = sub.add_parser("runs", help="list runs; pause, resume, stop or checkpoint a background stage")
    parser.set_defaults(func=cmd_list, json=False)
    parser.add_argument("--json", action="store_true", help="print JSON")
    actions = parser.add_subparsers(dest="runs_command", metavar="ACTION")
    add(actions, "list", cmd_list, "the runs, with each stage's state (running, paused, interrupted, done...)")
    for command, help in (("pause", "pause the training of RUN"), ("resume", "resume the paused training of RUN"),
                          ("stop", "stop the training of RUN, writing a checkpoint"),
                          ("save", "write a checkpoint of the training of RUN")):
        p = add(actions, command, cmd_command, f"{help} (it may run in another process)", json_flag=False)
        p.add_argument("run")
        p.add_argument("--stage", choices=list(runs.TRAINING_STAGES), help="default: the stage it is on")
    m = add(actions, "metrics", cmd_metrics, "RUN's training curves: --csv for a spreadsheet, --json")
    m.add_argument("run")
    m.add_argument("--stage", choices=list(runs.TRAINING_STAGES), help="default: the stage it is on")
    m.add_argument("--csv", action="store_true", help="one row a step: loss, lr, grad norm, tokens/s, ..., val loss")
    c = add(actions, "compare", cmd_compare, "two runs or more side by side: the settings that differ and "
            "the losses at aligned points (last and best of each stage, val loss where all made a check)")
    c.add_argument("runs", nargs="+", metavar="RUN")
    c.add_argument("--by", choices=compare.AXES, default="step", help="line the runs up by step or by tokens seen")
    c.add_argument("--stage", choices=list(runs.TRAINING_STAGES), help="default: both stages")
    cli_samples.register(actions, add)
    d = add(actions, "delete", cmd_delete, "delete RUN and its checkpoints", json_flag=False)
    d.add_argument("run")
    d.add_argument("--yes", action="store_true", help="confirm")
    r = add(actions, "rename", cmd_rename, "rename RUN", json_flag=False)
    r.add_argument("run")
    r.add_argument("new_name")
