"""Comparing runs: the settings that differ, curves lined up by step or by tokens seen, and
`acm runs compare`, on small run folders written here."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from core import cli, config
from core.cli.output import natural_width
from core.cli.runs import settings_table
from core.runs.compare import AXES, MISSING, run_curves, settings_diff, shared_val, stage_curve
from tests.helpers import fake_run


@pytest.fixture
def two_runs(project) -> tuple[Path, Path]:
    """a: 4 steps of 100 tokens; b: 2 steps of 200 tokens and a larger learning rate."""
    a = fake_run(project, "a", [(1, 100, 4.0), (2, 200, 3.5), (3, 300, 3.0), (4, 400, 2.5)], [(2, 3.6), (4, 2.7)])
    b = fake_run(project, "b", [(1, 200, 3.8), (2, 400, 2.4)], [(1, 3.7), (2, 2.6)],
                 train__pretrain__learning_rate=0.01, train__pretrain__batch_size=16)
    return a, b


def test_settings_diff_lists_only_the_keys_that_differ_a_missing_one_as_a_dash(two_runs, project):
    a, b = two_runs
    diff = settings_diff([a, b])
    assert ("train.pretrain.learning_rate", str(config.load(a / "config.toml").train.pretrain.learning_rate),
            "0.01") in diff.cells()
    assert [r[0] for r in diff.rows] == ["train.pretrain.batch_size", "train.pretrain.learning_rate"]
    assert diff.notes() == []
    text = (b / "config.toml").read_text().replace("[generate]", "[generate]\nlegacy_key = 1", 1)
    (b / "config.toml").write_text(text)
    diff = settings_diff([a, b])
    assert ("generate.legacy_key", MISSING, "1") in diff.cells()
    assert diff.notes() == [f"run b: its settings do not load ({b / 'config.toml'}: unknown setting "
                            "generate.legacy_key; valid keys: temperature, top_k, top_p, min_p, repetition_penalty, "
                            "max_tokens, seed, syntax_check, candidates); they are compared as written"]
    assert settings_diff([a, a]).rows == []


def unreadable(path: Path, how: str) -> str:
    """Damage a run's config.toml as a hand might; what its note says is wrong."""
    if how == "directory":
        path.unlink()
        path.mkdir()
        return "cannot read it (Is a directory)"
    if how == "no permission":
        path.chmod(0)
        return "cannot read it (Permission denied)"
    path.write_bytes({"not TOML": b"learning_rate = [[[", "not UTF-8": b"\xff[[[", "empty": b""}[how])
    return {"not TOML": "TOML syntax error: ", "not UTF-8": "not UTF-8 text", "empty": "it is empty"}[how]


@pytest.mark.parametrize("how", [
    "not TOML", "not UTF-8", "empty", "directory",
    pytest.param("no permission", marks=pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file"))])
def test_a_run_whose_settings_cannot_be_read_is_left_out_of_the_settings_compared_and_says_why(project, how):
    a = fake_run(project, "a", [], [])
    b = fake_run(project, "b", [], [], train__pretrain__learning_rate=0.01)
    c = fake_run(project, "c", [], [], train__pretrain__batch_size=16)
    says = unreadable(b / "config.toml", how)
    diff = settings_diff([a, b, c])
    assert [s.run.name for s in diff.read] == ["a", "c"]
    assert [r[0] for r in diff.rows] == ["train.pretrain.batch_size"]  # nothing invented from b's
    note, = diff.notes()
    assert note.startswith(f"run b: its settings could not be read ({b / 'config.toml'}: {says}")
    assert note.endswith("; they are not compared") and "\n" not in note
    assert settings_diff([a, b]).rows == []  # not "the same": one run's settings alone compare with nothing


@pytest.mark.parametrize("damage, says", [
    (("learning_rate = 0.01", 'learning_rate = "fast"'), "train.pretrain.learning_rate must be a number, got 'fast'"),
    (("samples = 64", "samples = true"), "eval.samples must be an integer, got True"),
])
def test_a_run_whose_settings_have_a_wrong_type_is_compared_as_written_and_says_why(project, damage, says):
    a = fake_run(project, "a", [], [])
    b = fake_run(project, "b", [], [], train__pretrain__learning_rate=0.01)
    text = (b / "config.toml").read_text()
    assert damage[0] in text
    (b / "config.toml").write_text(text.replace(damage[0], damage[1], 1))
    diff = settings_diff([a, b])
    assert [s.run.name for s in diff.read] == ["a", "b"]
    assert diff.notes() == [f"run b: its settings do not load ({b / 'config.toml'}: {says}); they are compared as "
                            "written"]


def test_a_long_list_shows_as_its_count_and_digest_so_the_table_fits_80_columns(project):
    a = fake_run(project, "a", [], [])
    tasks = config.load(a / "config.toml").eval.tasks
    b = fake_run(project, "b", [], [], eval__tasks=[{"prompt": t.prompt, "expect": t.expect} for t in tasks[:-1]])
    c = fake_run(project, "c", [], [], eval__tasks=[{"prompt": t.prompt, "expect": t.expect} for t in tasks],
                 eval__prompts=["#!/bin/bash\n# x"])
    diff = settings_diff([a, b, c])
    cells = dict((key, values) for key, *values in diff.cells())
    n = len(tasks)
    counts = [cell.split(", digest ")[0] for cell in cells["eval.tasks"]]
    assert counts == [f"{n} items", f"{n - 1} items", f"{n} items"]
    digests = [cell.split(", digest ")[1] for cell in cells["eval.tasks"]]
    assert digests[0] == digests[2] != digests[1] and len(digests[0]) == 8  # the same list, the same digest
    assert cells["eval.prompts"] == ["[]", "[]", '["#!/bin/bash\\n# x"]']  # a short one as acm.toml writes it
    assert natural_width(settings_table(settings_diff([a, b]))) <= 80


def test_curves_line_up_by_tokens_with_checks_at_the_nearest_report(two_runs):
    a, b = two_runs
    by_step, by_tokens = stage_curve(a, "pretrain", "step"), stage_curve(a, "pretrain", "tokens")
    assert by_step.xs == [1, 2, 3, 4] and by_step.val_xs == [2, 4]
    assert by_tokens.xs == [100, 200, 300, 400] and by_tokens.val_xs == [200, 400]
    assert by_tokens.losses == [4.0, 3.5, 3.0, 2.5] and by_tokens.val_losses == [3.6, 2.7]
    b_tokens = stage_curve(b, "pretrain", "tokens")
    assert b_tokens.val_xs == [200, 400]
    assert shared_val([by_tokens, b_tokens]) == [(200, [3.6, 3.7]), (400, [2.7, 2.6])]  # same tokens seen
    assert shared_val([by_step, stage_curve(b, "pretrain")]) == [(2, [3.6, 2.6])]  # same step


def test_a_fine_tune_is_placed_after_its_pretrain_and_damaged_lines_are_skipped(project):
    run = fake_run(project, "r", [(1, 100, 3.0), (2, 200, 2.0)], [(2, 2.1)])
    fake_run(project, "r", [(1, 50, 1.5), (2, 100, 1.2)], [(2, 1.3), (9, 1.25)], stage="finetune")
    with (run / "finetune" / "metrics.jsonl").open("a") as f:
        f.write('[1, 2]\n{"type": "metrics", "step": "x", "loss": 1}\n{"type": "metrics", "step": 3, "loss": null}\n'
                '{"type": "eval", "step": 4}\n{"type": "metrics", "step": 3, "tokens_seen": 150, "loss": 1.1}\n{"ty')
    pre, ft = run_curves(run, by="tokens")
    assert pre.xs == [100, 200] and ft.xs == [250, 300, 350]  # the fine-tune's tokens count from zero again
    assert ft.val_xs == [300, 350] and ft.val_losses == [1.3, 1.25]  # step 9: the nearest report is step 3
    (run / "pretrain" / "metrics.jsonl").unlink()
    assert [c.stage for c in run_curves(run)] == ["finetune"]
    assert stage_curve(run, "pretrain", "tokens").xs == []


def run_cli(capsys, project: Path, *argv) -> tuple[int, str, str]:
    rc = cli.main(["-c", str(project / "acm.toml"), "runs", "compare", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_acm_runs_compare_prints_the_differing_settings_and_the_aligned_losses(two_runs, project, capsys):
    rc, out, _ = run_cli(capsys, project, "a", "b", "--by", "tokens")
    assert rc == 0
    assert "Settings that differ" in out and "train.pretrain.learning_rate" in out and "0.01" in out
    assert "pretrain: loss by tokens" in out and "finetune" not in out
    assert "val loss at 200 tokens" in out and "val loss at 400 tokens" in out
    rc, out, _ = run_cli(capsys, project, "a", "b", "--json", "--stage", "pretrain")
    report = json.loads(out)
    assert report["by"] == "step" and report["runs"] == ["a", "b"]
    assert [s["key"] for s in report["settings"]] == ["train.pretrain.batch_size", "train.pretrain.learning_rate"]
    assert report["settings"][0]["values"]["b"] == "16"
    pretrain = report["stages"]["pretrain"]
    assert pretrain["runs"]["a"] == {"last_x": 4, "last_train_loss": 2.5, "best_val_loss": 2.7}
    assert pretrain["shared_val"] == [{"x": 2, "val_loss": {"a": 3.6, "b": 2.6}}]


@pytest.mark.parametrize("argv, says", [(["a", "nosuchrun"], "run 'nosuchrun' does not exist in "),
                                        (["a"], "compare needs two runs or more"),
                                        (["a", "a"], "compare needs two runs or more"),
                                        ([], "the following arguments are required: RUN"),
                                        (["a", "b", "--by", "time"], "invalid choice: 'time'")])
def test_acm_runs_compare_refuses_in_one_line(two_runs, project, capsys, argv, says):
    try:
        rc, out, err = run_cli(capsys, project, *argv)
    except SystemExit as e:  # argparse's refusals exit
        rc, (out, err) = e.code, capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.startswith("acm: error: ") and says in err and len(err.strip().splitlines()) == 1, err


def test_acm_runs_compare_leaves_out_damaged_settings_and_skips_damaged_metrics_lines(two_runs, project, capsys):
    a, b = two_runs
    (b / "config.toml").write_bytes(b"\xff\x00 not toml")
    (b / "pretrain" / "metrics.jsonl").write_text('{"type": "metrics", "step": [1], "loss": {}}\n"text"\n'
                                                   '{"type": "eval", "step": 2, "val_loss": "low"}\n{"type": 5}\n'
                                                   f'{{"type": "metrics", "step": 1{"0" * 400}, "loss": 6.8}}\n'
                                                   f'{{"type": "eval", "step": 2{"0" * 30}, "val_loss": 6.9}}\n')
    fake_run(project, "c", [(1, 100, 4.0)], [])
    for by in AXES:
        rc, out, err = run_cli(capsys, project, "a", "b", "c", "--by", by)
        assert rc == 0 and err == "" and "Traceback" not in out
        assert "train.pretrain.learning_rate" not in out and "The settings of a and c are the same." in out
        assert "pretrain: loss by " in out and "–" in out
    report = json.loads(run_cli(capsys, project, "a", "b", "--json")[1])
    assert report["stages"]["pretrain"]["runs"]["b"] == {"last_x": None, "last_train_loss": None, "best_val_loss": None}


def test_acm_runs_compare_says_in_one_line_why_a_runs_settings_are_not_compared(two_runs, project, capsys):
    a, b = two_runs
    (b / "config.toml").write_text("learning_rate = [[[")
    rc, out, err = run_cli(capsys, project, "a", "b")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"run b: its settings could not be read ({b / 'config.toml'}: TOML syntax error: ")
    assert lines[0].endswith("; they are not compared")
    assert not any("setting" in line for line in lines[1:])  # no table of a's settings against nothing, no "the same"
    assert re.search(r"best val loss +│ 2.7000 │ 2.6000 │", out)  # the losses still compare
    report = json.loads(run_cli(capsys, project, "a", "b", "--json")[1])
    assert report["settings"] == [] and report["settings_problems"]["b"]["read"] is False
    assert "TOML syntax error" in report["settings_problems"]["b"]["problem"]


def test_acm_runs_compare_with_nothing_to_compare_is_one_error_line(project, capsys):
    fake_run(project, "a", [], [])
    b = fake_run(project, "b", [], [])
    (b / "config.toml").write_text("")
    rc, out, err = run_cli(capsys, project, "a", "b")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("acm: error: nothing to compare: no run has reported a loss, and run b's settings could "
                          f"not be read ({b / 'config.toml'}: it is empty)"), err
