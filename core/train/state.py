"""Where a training stage stands: one record the trainer moves on, a checkpoint saves and a resume
restores, so the stage's settings (`StageConfig`) stay as the user gave them.

A checkpoint's state.json keeps these under the keys every earlier version wrote (tokens_seen,
best_val_loss, ranks, global_batch, planned_steps, planned_warmup), with the count of validation
checks since the best and the batches a check where a time budget cut them beside them; a checkpoint
written before those existed resumes with the count at 0 and acm.toml's batches, as every resume did then.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from core.config import StageConfig
from core.train.budget import UNPLANNED


def cut_batches(batches, configured: int | None) -> int | None:
    """`batches` where it is a cut of the `configured` validation batches a check (a positive whole
    number below them; any positive one when `configured` is None), else None: the settings' own."""
    if type(batches) is not int or batches <= 0:
        return None
    return batches if configured is None or batches < configured else None


@dataclass
class TrainState:
    step: int  # optimizer steps done
    total_steps: int  # the plan: UNPLANNED while a time budget's first steps are untimed
    warmup_steps: int
    grad_accum: int  # micro-batches a step: with the ranks, what makes up the run's sequences a step
    ranks: int
    batch_size: int  # sequences a micro-batch on each rank
    tokens_seen: int = 0
    best_val_loss: float | None = None
    checks_without_best: int = 0  # validation checks since the best: early stopping's count
    planned: bool = False  # the plan is fixed: a checkpoint's, steps asked for by name, or a timed budget's
    eval_batches: int | None = None  # batches a validation check, where a time budget's plan cut them

    @classmethod
    def start(cls, sc: StageConfig, ranks: int) -> TrainState:
        """A stage's state before its first step, on its settings."""
        return cls(step=0, total_steps=sc.steps, warmup_steps=sc.warmup_steps, grad_accum=sc.grad_accum,
                   ranks=ranks, batch_size=sc.batch_size)

    @property
    def global_batch(self) -> int:
        """Sequences a step, over every rank and micro-batch."""
        return self.batch_size * self.ranks * self.grad_accum

    def to_checkpoint(self) -> dict:
        """The state as a checkpoint's state.json keeps it."""
        return {"tokens_seen": self.tokens_seen, "best_val_loss": self.best_val_loss,
                "checks_without_best": self.checks_without_best, "ranks": self.ranks,
                "global_batch": self.global_batch,
                "planned_steps": None if self.total_steps == UNPLANNED else self.total_steps,
                "planned_warmup": self.warmup_steps, "planned_eval_batches": self.eval_batches}

    def restored(self, step: int, saved: dict, eval_batches: int | None = None) -> TrainState:
        """This state moved to a checkpoint's (its state.json, `saved`): its step, counts and plan
        (one with planned_steps keeps its steps, warmup and validation batches, resuming never
        extends it; batches beyond the settings' `eval_batches` are not a cut). The ranks and batch
        stay this call's: the trainer makes up the checkpoint's sequences a step."""
        plan = {}
        if saved.get("planned_steps"):
            warmup = saved.get("planned_warmup")
            plan = {"total_steps": saved["planned_steps"], "planned": True,
                    "warmup_steps": self.warmup_steps if warmup is None else warmup,
                    "eval_batches": cut_batches(saved.get("planned_eval_batches"), eval_batches)}
        return replace(self, step=step, tokens_seen=saved.get("tokens_seen", 0),
                       best_val_loss=saved.get("best_val_loss"),
                       checks_without_best=saved.get("checks_without_best", 0), **plan)
