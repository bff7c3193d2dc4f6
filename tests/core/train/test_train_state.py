"""A stage's TrainState: saved whole in a checkpoint's state.json and restored from it, and read
from the state of checkpoints written before it existed."""
from __future__ import annotations

import json
from dataclasses import replace

from core.config import StageConfig
from core.train.budget import UNPLANNED
from core.train.state import TrainState


def saved(state: TrainState) -> dict:
    return json.loads(json.dumps(state.to_checkpoint()))


def test_a_state_reads_back_whole_from_its_checkpoint():
    sc = StageConfig(steps=100, warmup_steps=10, batch_size=4)
    fresh = TrainState.start(sc, ranks=1)
    assert (fresh.step, fresh.total_steps, fresh.warmup_steps, fresh.global_batch) == (0, 100, 10, 4)
    moved = replace(fresh, step=30, total_steps=60, warmup_steps=5, tokens_seen=30 * 4 * sc.seq_len,
                    best_val_loss=3.25, checks_without_best=2, planned=True)
    assert fresh.restored(30, saved(moved)) == moved
    assert saved(moved) == {"tokens_seen": moved.tokens_seen, "best_val_loss": 3.25, "checks_without_best": 2,
                            "ranks": 1, "global_batch": 4, "planned_steps": 60, "planned_warmup": 5,
                            "planned_eval_batches": None}
    cut = replace(moved, eval_batches=3)  # a time budget's plan read 3 batches a validation check
    assert saved(cut)["planned_eval_batches"] == 3 and fresh.restored(30, saved(cut)) == cut
    assert fresh.restored(30, saved(cut), eval_batches=20) == cut
    for odd in (-2, 0, True, 2.5, 20, 10**9):  # nonsense, or no cut of acm.toml's 20: acm.toml's
        assert fresh.restored(30, saved(cut) | {"planned_eval_batches": odd}, eval_batches=20) == moved
    no_warmup = replace(moved, warmup_steps=0)  # a budget's plan without warmup keeps none
    assert fresh.restored(30, saved(no_warmup)) == no_warmup


def test_an_unplanned_budget_saves_no_plan_and_resumes_unplanned():
    fresh = TrainState.start(StageConfig(steps=100), ranks=2)
    budget = replace(fresh, total_steps=UNPLANNED, step=3)
    assert saved(budget)["planned_steps"] is None
    assert fresh.restored(3, saved(budget)) == replace(fresh, step=3)


def test_an_older_checkpoint_s_state_resumes():
    """Before checks_without_best was saved a resume counted from 0; a state without a plan keeps
    the settings' steps."""
    fresh = TrainState.start(StageConfig(steps=100, warmup_steps=10), ranks=1)
    old = {"stage": "pretrain", "tokens_seen": 512, "val_loss": 4.0, "best_val_loss": 3.5, "ranks": 1,
           "global_batch": 4, "planned_steps": 40, "planned_warmup": 4}
    assert fresh.restored(8, old) == replace(fresh, step=8, tokens_seen=512, best_val_loss=3.5, total_steps=40,
                                             warmup_steps=4, planned=True)
    assert fresh.restored(8, {"stage": "pretrain"}) == replace(fresh, step=8)
