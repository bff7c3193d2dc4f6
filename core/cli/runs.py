"""`acm runs ...`: list runs and their states, steer a background stage, delete or rename a run."""
from __future__ import annotations

import json
import time

from rich.table import Table

from core.cli.output import console_for
from core.config import Config
from core.errors import AcmError
from core.paths import Paths
from core.train import runs
from core.train.tracking import metrics_csv


def _run(cfg: Config, name: str):
    path = cfg.locations.run(name)
    if not Paths.run_config(path).exists():
        raise AcmError(f"no run {name!r} in {cfg.locations.runs}; `acm runs` lists them")
    return path


def cmd_list(args, cfg: Config) -> int:
    rows = [runs.summary(r) for r in runs.list_runs(cfg)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table("run", "preset", "stage", "state", "step", "best val loss", "modified", title="Runs",
                  title_justify="left")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["modified"]))
        for stage, st in r["stages"].items() or [("–", {})]:
            total = f"/{st['total']}" if st.get("total") else ""
            val = f"{st['best_val_loss']:.4f}" if st.get("best_val_loss") is not None else ""
            table.add_row(r["name"], r["preset"], stage, st.get("state", ""), f"{st.get('step', '')}{total}", val,
                          when)
    console_for().print(table)
    return 0


def cmd_command(args, cfg: Config) -> int:
    run = _run(cfg, args.run)
    stage = args.stage or runs.active_stage(run)
    if stage is None:
        raise AcmError(f"run {run.name} has not started training")
    runs.send_command(run, stage, args.runs_command)
    print(f"{args.runs_command} sent to {stage} of run {run.name}")
    return 0


def cmd_delete(args, cfg: Config) -> int:
    run = _run(cfg, args.run)
    if not args.yes:
        raise AcmError(f"deleting run {run.name} removes its checkpoints: add --yes to confirm")
    runs.delete_run(run)
    print(f"deleted run {run.name}")
    return 0


def cmd_rename(args, cfg: Config) -> int:
    new = runs.rename_run(_run(cfg, args.run), args.new_name)
    print(f"renamed to {new.name}")
    return 0


def cmd_metrics(args, cfg: Config) -> int:
    run = _run(cfg, args.run)
    stage = args.stage or runs.active_stage(run)
    if stage is None:
        raise AcmError(f"run {run.name} has not started training")
    records = runs.read_metrics(run, stage)
    if args.csv:
        print(metrics_csv(records), end="")
    elif args.json:
        print(json.dumps([e for e in records if e.get("type") in ("metrics", "eval")]))
    else:
        last = next((e for e in reversed(records) if e.get("type") == "metrics"), None)
        print(f"{stage} of run {run.name}: {sum(e.get('type') == 'metrics' for e in records)} reports"
              + (f", last at step {last['step']} (loss {last['loss']:.4f})" if last else "")
              + "; --csv for a spreadsheet")
    return 0


def register(sub, add) -> None:
    parser = sub.add_parser("runs", help="list runs; pause, resume, stop or checkpoint a background stage")
    parser.set_defaults(func=cmd_list, json=False)
    parser.add_argument("--json", action="store_true", help="print JSON")
    actions = parser.add_subparsers(dest="runs_command", metavar="ACTION")
    add(actions, "list", cmd_list, "the runs, with each stage's state (running, paused, interrupted, done...)")
    for command, help in (("pause", "pause"), ("resume", "resume a paused"), ("stop", "stop (with a checkpoint)"),
                          ("save", "write a checkpoint of")):
        p = add(actions, command, cmd_command, f"{help} the training of RUN (it may run in another process)",
                json_flag=False)
        p.add_argument("run")
        p.add_argument("--stage", choices=list(runs.STAGES), help="default: the stage it is on")
    m = add(actions, "metrics", cmd_metrics, "RUN's training curves: --csv for a spreadsheet, --json")
    m.add_argument("run")
    m.add_argument("--stage", choices=list(runs.STAGES), help="default: the stage it is on")
    m.add_argument("--csv", action="store_true", help="one row a step: loss, lr, grad norm, tokens/s, ..., val loss")
    d = add(actions, "delete", cmd_delete, "delete RUN and its checkpoints", json_flag=False)
    d.add_argument("run")
    d.add_argument("--yes", action="store_true", help="confirm")
    r = add(actions, "rename", cmd_rename, "rename RUN", json_flag=False)
    r.add_argument("run")
    r.add_argument("new_name")
