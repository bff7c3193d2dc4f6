"""Training curves to TensorBoard or Weights & Biases, on request only (`train.report_to`).

Each tracker is one more callback beside the recorder, fed the same events metrics.jsonl gets, on
rank 0 only. Each backend is an optional extra (`acm[tensorboard]`, `acm[wandb]`). W&B runs
offline (files under runs/<run>/wandb, `wandb sync` uploads them later) unless WANDB_MODE says
otherwise or an API key is set up: nothing leaves the machine unless asked.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from core.config import Config
from core.errors import AcmError
from core.runs.events import Eval, Event, Metrics, event_from_json

SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "epoch", "memory_peak")
EVAL_SCALARS = ("val_loss", "val_ppl")
BACKENDS = ("tensorboard", "wandb")


def scalars(event: Event) -> dict[str, float]:
    """The numbers an event contributes to the curves (none for logs, states, checkpoints)."""
    keys = SCALARS if isinstance(event, Metrics) else EVAL_SCALARS if isinstance(event, Eval) else ()
    values = {k: getattr(event, k) for k in keys}
    return {k: float(v) for k, v in values.items() if v is not None}


class TensorBoard:
    def __init__(self, run: Path, stage: str, cfg: Config):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise AcmError("train.report_to has tensorboard, which needs tensorboardX: "
                           "pip install 'acm[tensorboard]'") from None
        self.stage = stage
        self.folder = run / "tensorboard" / stage
        self.writer = SummaryWriter(str(self.folder))

    def __call__(self, event: Event) -> None:
        for k, v in scalars(event).items():
            self.writer.add_scalar(f"{self.stage}/{k}", v, event.step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, run: Path, stage: str, cfg: Config):
        try:
            import wandb
        except ImportError:
            raise AcmError("train.report_to has wandb, which needs it installed: pip install 'acm[wandb]'") from None
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.stage = stage
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "acm"), name=f"{run.name}-{stage}",
                              id=f"{run.name}-{stage}", resume="allow", dir=str(run), mode=mode,
                              config=cfg.to_dict())

    def __call__(self, event: Event) -> None:
        values = {f"{self.stage}/{k}": v for k, v in scalars(event).items()}
        if values:
            self.run.log(values, step=event.step)

    def close(self) -> None:
        self.run.finish()


def trackers(cfg: Config, run: Path, stage: str) -> list:
    """The trackers `train.report_to` asks for (none by default)."""
    kinds = {"tensorboard": TensorBoard, "wandb": WandB}
    return [kinds[name](run, stage, cfg) for name in dict.fromkeys(cfg.train.report_to)]


def metrics_csv(records: list[dict]) -> str:
    """A stage's metrics.jsonl as CSV: one row a step, validation columns on the steps that have them."""
    rows: dict[int, dict] = {}
    for e in map(event_from_json, records):
        if isinstance(e, (Metrics, Eval)):
            rows.setdefault(e.step, {"step": e.step}).update(scalars(e))
    columns = ["step", *SCALARS, *EVAL_SCALARS]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[s] for s in sorted(rows))
    return out.getvalue()
