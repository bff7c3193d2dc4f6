"""Typed training events: the JSON objects they write are the ones metrics.jsonl, status.json's
writer and a rank's --json output always had, and they read back whole, or as leniently as the
files of older versions and damaged lines need."""
from __future__ import annotations

import json

import pytest

from core.runs.events import Checkpoint, Eval, Log, Metrics, State, event_from_json
from core.train.ranks import parse_event
from tests.helpers import METRICS

WRITTEN = [  # each type as the trainer has always written it, keys in order
    METRICS,
    {"type": "eval", "stage": "pretrain", "step": 20, "val_loss": 5.5, "val_ppl": 244.69, "best_val_loss": 5.5},
    {"type": "checkpoint", "stage": "finetune", "step": 10, "path": "runs/x/finetune/checkpoints/step-0000010",
     "val_loss": None},
    {"type": "state", "stage": "pretrain", "state": "running", "step": 0, "total": 400, "run": "x"},
    {"type": "state", "stage": "pretrain", "state": "failed", "step": 3, "total": 400, "error": "disk full"},
    {"type": "log", "stage": "pretrain", "text": "resumed pretrain from step 10"},
]


@pytest.mark.parametrize("record", WRITTEN, ids=lambda r: r["type"] + "-" + str(r.get("state", "")))
def test_an_event_writes_the_keys_it_always_wrote_and_reads_back_whole(record):
    event = event_from_json(json.loads(json.dumps(record)))
    assert event.type == record["type"]
    assert json.dumps(event.to_json()) == json.dumps(record)  # the same keys in the same order
    assert event_from_json(event.to_json()) == event


def test_attributes_are_the_json_keys():
    event = event_from_json(METRICS)
    assert isinstance(event, Metrics)
    assert (event.step, event.loss, event.mfu, event.memory_limit) == (20, 5.25, None, 4096)


def test_an_older_or_damaged_record_reads_leniently():
    """A key an older version did not write reads as None, as does one holding a value of another
    type; one it wrote that is no longer known is left out; what is no event at all, or lacks what
    makes one of its type (a report's step and loss, a state's state, a log's text), reads as None."""
    old = {k: v for k, v in METRICS.items() if k not in ("ranks", "mfu", "memory_limit")} | {"dropped": 1}
    event = event_from_json(old)
    assert isinstance(event, Metrics) and event.ranks is None and event.loss == 5.25
    assert "dropped" not in event.to_json()
    for junk in (["not", "an", "object"], "text", 7, None, {"type": 7}, {"type": ["metrics"]}, {"type": "finished"},
                 {"step": 3}):
        assert event_from_json(junk) is None
    for lacking in ({"type": "eval"}, {"type": "eval", "step": 3, "val_loss": "low"}, {"type": "state", "state": ["a"]},
                    {"type": "log", "text": {"a": 1}}, {"type": "metrics", "step": 2.5, "loss": 1.0},
                    {"type": "checkpoint", "step": 3}):
        assert event_from_json(lacking) is None
    assert event_from_json({"type": "eval", "step": 3, "val_loss": 2}) == Eval(step=3, val_loss=2, val_ppl=None,
                                                                                best_val_loss=None)
    mistyped = event_from_json(METRICS | {"lr": "x", "grad_norm": True, "ranks": 1.5, "devices": {}, "stage": 5})
    assert (mistyped.lr, mistyped.grad_norm, mistyped.ranks, mistyped.devices, mistyped.stage) == (None,) * 5
    assert mistyped.loss == 5.25


def test_a_rank_line_reads_as_its_event_or_as_a_log_line():
    assert parse_event(json.dumps(WRITTEN[2]) + "\n") == Checkpoint.from_json(WRITTEN[2])
    assert parse_event("Traceback (most recent call last):\n") == Log(text="Traceback (most recent call last):")
    assert parse_event('{"no": "type"}\n') == Log(text='{"no": "type"}')


def test_a_state_read_from_status_keeps_who_wrote_it():
    state = State.from_json({"state": "running", "pid": 42, "host": "h", "time": 1.5, "step": 7, "total": 9})
    assert (state.pid, state.host, state.step) == (42, "h", 7)
    assert State(stage="pretrain", state="paused", step=7, total=9).to_json() == {
        "type": "state", "stage": "pretrain", "state": "paused", "step": 7, "total": 9}


def test_a_record_file_cut_inside_a_line_gets_its_newline_before_the_next_record(tmp_path):
    from core.paths import Paths
    from core.runs import parse_records
    from core.runs.events import Recorder

    run = tmp_path / "r"
    Paths.stage(run, "pretrain").mkdir(parents=True)
    Paths.metrics(run, "pretrain").write_text('{"type": "eval", "stage": "pretrain", "step": 5, "val_lo')  # cut
    recorder = Recorder(run, "pretrain", 10)
    recorder(Eval(stage="pretrain", step=10, val_loss=2.5, val_ppl=12.2, best_val_loss=2.5))
    recorder.close()
    lines = Paths.metrics(run, "pretrain").read_bytes().splitlines()
    assert [r["step"] for r in parse_records(lines)] == [10]  # the damaged line alone is skipped


def test_acm_runs_samples_reads_a_sample_edited_by_hand(with_model, capsys):
    from core import cli

    (with_model / "runs" / "m" / "finetune" / "samples.jsonl").write_text('{"type": "sample", "step": 10}\n')
    assert cli.main(["-c", str(with_model / "acm.toml"), "runs", "samples", "m"]) == 0
    assert "── step 10" in (out := capsys.readouterr().out) and "(– s for the check)" in out
