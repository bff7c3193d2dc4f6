"""Comparing runs: the settings that differ, curves lined up by step or by tokens seen, and
`acm runs compare`, on small run folders written here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import cli, config
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
    rows = settings_diff([a, b])
    assert ("train.pretrain.learning_rate", str(config.load(a / "config.toml").train.pretrain.learning_rate),
            "0.01") in rows
    assert [r[0] for r in rows] == ["train.pretrain.batch_size", "train.pretrain.learning_rate"]
    text = (b / "config.toml").read_text().replace("[generate]", "[generate]\nlegacy_key = 1", 1)
    (b / "config.toml").write_text(text)
    assert ("generate.legacy_key", MISSING, "1") in settings_diff([a, b])
    assert settings_diff([a, a]) == []


def test_a_run_with_damaged_settings_reads_as_having_none(two_runs):
    a, b = two_runs
    (b / "config.toml").write_bytes(b"\xff[[[")
    rows = settings_diff([a, b])
    assert rows and all(values[1] == MISSING for _, *values in rows)


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


def test_acm_runs_compare_reads_damaged_files_as_missing(two_runs, project, capsys):
    a, b = two_runs
    (b / "config.toml").write_bytes(b"\xff\x00 not toml")
    (b / "pretrain" / "metrics.jsonl").write_text('{"type": "metrics", "step": [1], "loss": {}}\n"text"\n'
                                                   '{"type": "eval", "step": 2, "val_loss": "low"}\n{"type": 5}\n')
    for by in AXES:
        rc, out, err = run_cli(capsys, project, "a", "b", "--by", by)
        assert rc == 0 and err == "" and "Traceback" not in out
        assert "train.pretrain.learning_rate" in out and "–" in out
    report = json.loads(run_cli(capsys, project, "a", "b", "--json")[1])
    assert report["stages"]["pretrain"]["runs"]["b"] == {"last_x": None, "last_train_loss": None, "best_val_loss": None}
