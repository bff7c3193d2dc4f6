"""`acm runs samples RUN`: the scripts a stage generated at its validation checks (train.samples)."""
from __future__ import annotations

from core import runs
from core.cli.output import console_for, for_stream, print_json
from core.config import Config
from core.errors import AcmError
from core.escapes import visible
from core.runs.events import read_samples


def cmd_samples(args, cfg: Config) -> int:
    run = runs.existing_run(cfg, args.run)
    stage = args.stage or runs.active_stage(run)
    if stage is None:
        raise AcmError(f"run {run.name} has not started training")
    samples = read_samples(run, stage)
    if args.last and samples:
        samples = [s for s in samples if s.step == samples[-1].step]
    if args.json:
        print_json([s.to_json() for s in samples], indent=None)
        return 0
    if not samples:
        print(f"{stage} of run {visible(run.name)} recorded no samples (train.samples sets how many each validation "
              "check generates)")
        return 0
    console = console_for()
    for s in samples:
        console.print(f"── step {s.step}  {s.marks()}  ({runs.figure(s.seconds, '.2f')} s for the check)", markup=False,
                      highlight=False, style="bold")
        # the model's words as written (rich would drop a carriage return), escaped only on a terminal
        print(for_stream("".join(v for v in (s.prompt, s.text) if isinstance(v, str))), flush=True)
    return 0


def register(actions, add) -> None:
    """`samples` among `acm runs`' actions."""
    p = add(actions, "samples", cmd_samples, "the scripts RUN generated at its validation checks, with their "
                                             "verdicts (train.samples)")
    p.add_argument("run")
    p.add_argument("--stage", choices=list(runs.TRAINING_STAGES), help="default: the stage it is on")
    p.add_argument("--last", action="store_true", help="only the latest check's")
