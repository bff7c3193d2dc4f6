"""The run list's best val loss: the lowest validation check's, which a checkpoint need not hold
(checks come every eval_every steps, checkpoints on their own schedule), on a real run `m`."""
from __future__ import annotations

import json
import re
from pathlib import Path

from core import cli, config
from core.paths import Paths
from core.pipeline.overview import pipeline_status
from core.runs import best_check, checkpoint, summary
from tests.helpers import check_between_checkpoints, fake_run


def checks(run: Path, stage: str) -> dict[int, float]:
    lines = Paths.metrics(run, stage).read_text().splitlines()
    return {r["step"]: r["val_loss"] for r in map(json.loads, lines) if r["type"] == "eval"}


def listed(capsys, project: Path, *flags) -> str:
    assert cli.main(["-c", str(project / "acm.toml"), "runs", *flags]) == 0
    return capsys.readouterr().out


def test_best_val_loss_is_the_lowest_check_and_the_best_checkpoint_is_named_where_it_differs(with_model, capsys):
    run = with_model / "runs" / "m"
    top = checkpoint.best(Paths.checkpoints(run, "pretrain"))
    assert top.val_loss == min(checks(run, "pretrain").values())  # as trained: each check had its checkpoint
    row = next(line for line in listed(capsys, with_model).splitlines() if "pretrain" in line)
    assert re.search(rf"│ {top.val_loss:.4f} +│", row)  # the value alone, as the list has always shown it

    lower = top.val_loss - 0.25
    check_between_checkpoints(run, "pretrain", 15, lower)
    assert not (Paths.checkpoints(run, "pretrain") / "step-0000015").exists()
    row = next(line for line in listed(capsys, with_model).splitlines() if "pretrain" in line)
    assert re.search(rf"│ {lower:.4f} \(checkpoint {top.val_loss:.4f}\) +│", row), row
    stage = summary(run)["stages"]["pretrain"]
    assert stage["best_val_loss"] == lower and stage["best_val_step"] == 15
    assert stage["best_checkpoint"] == {"step": top.step, "val_loss": top.val_loss}  # what generate would take
    shown = json.loads(listed(capsys, with_model, "--json"))[0]["stages"]["pretrain"]
    assert shown["best_val_loss"] == lower and shown["best_checkpoint"]["step"] == top.step
    detail = {s.name: s.detail for s in pipeline_status(config.load(with_model / "acm.toml"))}["pretrain"]
    assert f"best val loss {lower:.3f}" in detail  # the pipeline's stage list says the same
    finetune = summary(run)["stages"]["finetune"]  # untouched: its best check has its checkpoint
    assert finetune["best_val_loss"] == finetune["best_checkpoint"]["val_loss"]


def test_a_check_without_metrics_is_still_the_checkpoints_and_a_damaged_line_is_no_check(with_model):
    run = with_model / "runs" / "m"
    top = checkpoint.best(Paths.checkpoints(run, "pretrain"))
    Paths.metrics(run, "pretrain").write_text('{"type": "eval", "step": 3, "val_loss": "low"}\n'
                                              '{"type": "eval", "step": 4, "val_loss": NaN}\n{"type": "ev')
    assert best_check(run, "pretrain") == (top.step, top.val_loss)


def test_a_stage_without_a_check_shows_no_best_val_loss(project, capsys):
    run = fake_run(project, "r", [(1, 100, 4.0), (2, 200, 3.5)], [])
    assert best_check(run, "pretrain") is None
    fake_run(project, "r", [(1, 100, 4.0)], [(1, 3.9)], stage="finetune")
    (Paths.stage(run, "pretrain") / "status.json").write_text('{"state": "done", "pid": 1, "step": 2}')
    (Paths.stage(run, "finetune") / "status.json").write_text('{"state": "done", "pid": 1, "step": 1}')
    stages = summary(run)["stages"]
    assert stages["pretrain"]["best_val_loss"] is None and stages["pretrain"]["best_checkpoint"] is None
    assert stages["finetune"]["best_val_loss"] == 3.9  # no checkpoint: nothing else to name
    rows = listed(capsys, project).splitlines()
    assert next(line for line in rows if "finetune" in line).count("3.9000") == 1


def test_checks_are_read_as_appended_and_anew_when_the_file_is_rewritten(tmp_path):
    from core.runs import appended_checks

    path = tmp_path / "metrics.jsonl"
    line = '{{"type": "eval", "step": {}, "val_loss": {}}}\n'.format
    report = '{"type": "metrics", "step": 1, "loss": 5.0}\n'
    path.write_text(line(10, 4.5) + report + line(20, 4.25) + '{"type": "eval", "st')
    assert appended_checks(path) == {10: 4.5, 20: 4.25}  # the line being written waits
    with path.open("a") as f:
        f.write('ep": 30, "val_loss": 4.0}\n')
    assert appended_checks(path) == {10: 4.5, 20: 4.25, 30: 4.0}
    text = path.read_text()
    path.write_text(text.replace('"val_loss": 4.5', '"val_loss": 9.5'))  # before what was read last: not read again
    assert appended_checks(path)[10] == 4.5
    path.write_text(line(10, 3.5) + report * 3)  # rewritten: the bytes read last are gone, so all is read anew
    assert appended_checks(path) == {10: 3.5}
    path.unlink()
    assert appended_checks(path) == {}
    path.write_text(line(40, 2.0))  # a new file of another length and identity
    assert appended_checks(path) == {40: 2.0}
    path.unlink()
    path.mkdir()  # unreadable: no checks, never an error that hides every other run
    assert appended_checks(path) == {}
