"""A run's files replaced by something that is no regular file (a FIFO, a link to /dev/zero) or by
one larger than acm ever writes: each reads as a damaged file does, never waiting for a writer nor
filling the memory, on a real run `m`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core import atomic, cli, config, runs
from core.errors import AcmError
from core.paths import Paths
from core.runs import appended_checks, checkpoint, last_report, read_metrics, read_status, summary
from core.runs.compare import read_settings
from core.runs.events import Recorder, StageFollower, read_samples
from core.tokenizer.shards import open_tokens
from tests.helpers import unless_stuck

IRREGULAR = {"FIFO": os.mkfifo, "link to /dev/zero": lambda path: path.symlink_to("/dev/zero")}


def replace_with(path: Path, how: str) -> None:
    path.unlink(missing_ok=True)
    IRREGULAR[how](path)


@pytest.mark.parametrize("how", IRREGULAR)
def test_run_files_that_are_no_regular_files_read_as_damaged_ones(with_model, how, capsys):
    run = with_model / "runs" / "m"
    folder = Paths.checkpoints(run, "pretrain")
    newest, older = sorted(folder.glob("step-*"))[::-1]
    for path in (Paths.run_config(run), Paths.status(run, "pretrain"), Paths.metrics(run, "pretrain"),
                 Paths.samples(run, "pretrain"), Paths.train_log(run, "pretrain"), newest / checkpoint.STATE):
        replace_with(path, how)
    with unless_stuck():
        assert read_status(run, "pretrain") is None
        assert read_metrics(run, "pretrain") == [] and last_report(run, "pretrain") is None
        assert appended_checks(Paths.metrics(run, "pretrain")) == {} and read_samples(run, "pretrain") == []
        assert [e.type for e in StageFollower(run, "pretrain").poll()] == ["state"]
        assert checkpoint.damaged(folder) == [newest] and checkpoint.latest(folder).path == older
        assert summary(run)["preset"] == "?"  # the run is still listed, its settings unread
        assert cli.main(["-c", str(with_model / "acm.toml"), "runs"]) == 0
        settings = read_settings(run)
        kind = "a FIFO" if how == "FIFO" else "a device"
        assert settings.values is None and f"cannot read it ({kind}, not a regular file)" in settings.problem
        with pytest.raises(AcmError, match=f"run m: its config.toml is unreadable .*{kind}, not a regular file"):
            runs.prepare_run(config.load(with_model / "acm.toml"), run, "pretrain")
    assert "m" in capsys.readouterr().out


@pytest.mark.parametrize("how", IRREGULAR)
def test_a_stage_will_not_record_into_a_file_that_is_no_regular_one(with_model, how):
    """Training appends to metrics.jsonl: a FIFO there would hold the stage before its first step,
    a device swallow its records; either is one line naming it."""
    run = with_model / "runs" / "m"
    replace_with(Paths.metrics(run, "pretrain"), how)
    with unless_stuck(), pytest.raises(AcmError, match=f"{Paths.metrics(run, 'pretrain')}: cannot record into it"):
        Recorder(run, "pretrain", 30)


@pytest.mark.parametrize("how", IRREGULAR)
@pytest.mark.parametrize("name", ["model.safetensors", checkpoint.OPTIMIZER])
def test_a_checkpoints_arrays_that_are_no_regular_file_are_one_line_naming_them(with_model, how, name, capsys):
    """Generating, evaluating, exporting and resuming read a checkpoint's arrays: a FIFO there held
    the command forever (deaf to a TERM), a device link read as a header of zeros."""
    newest = checkpoint.latest(Paths.checkpoints(with_model / "runs" / "m", "pretrain"))
    replace_with(newest.path / name, how)
    kind = "a FIFO" if how == "FIFO" else "a device"
    load = checkpoint.load_weights if name == "model.safetensors" else checkpoint.load_optimizer
    with unless_stuck(), pytest.raises(AcmError, match=f"{newest.path}: its {name} is damaged .*{kind}, not a "
                                                       f"regular file" if name == checkpoint.OPTIMIZER else
                                       f"{newest.path} is damaged .*{kind}, not a regular file"):
        load(newest)
    if name == "model.safetensors":
        with unless_stuck():
            assert cli.main(["-c", str(with_model / "acm.toml"), "generate", "x", "--run", "m", "--stage", "pretrain",
                             "--max-tokens", "2"]) == 2
        assert "not a regular file" in capsys.readouterr().err


def test_a_token_shard_that_is_no_regular_file_is_never_waited_on(with_model):
    """Every stage reads its shards: NumPy's open of a FIFO in a shard's place held it forever."""
    cfg = config.load(with_model / "acm.toml")
    shard = next((cfg.data_dir / "tokens" / "code").glob("*/*.npy"))
    replace_with(shard, "FIFO")  # a link to /dev/zero leads out of the folder, refused as such
    with unless_stuck():
        with pytest.raises(AcmError, match=f"code token shard {shard} is a FIFO, not a file"):
            for split in ("train", "val"):
                open_tokens(cfg, "code", split)
    shard.unlink()
    shard.mkdir()
    with pytest.raises(AcmError, match=f"code token shard {shard} is a folder, not a file"):
        for split in ("train", "val"):
            open_tokens(cfg, "code", split)


def test_run_files_larger_than_acm_writes_read_as_damaged_ones(with_model, monkeypatch):
    """The size caps, made small so that a real run's files pass them: JSON (a state, a status)
    and a stage's records over theirs read as absent; the validation checks, read as appended, at
    most the cap a call (the rest at the next)."""
    run = with_model / "runs" / "m"
    status = Paths.status(run, "pretrain").read_bytes()
    monkeypatch.setattr(atomic, "JSON_LIMIT", len(status))
    assert read_status(run, "pretrain") is not None
    Paths.status(run, "pretrain").write_bytes(status.rstrip() + b" \n")
    assert read_status(run, "pretrain") is None

    metrics = Paths.metrics(run, "pretrain")
    lines = metrics.read_bytes().splitlines(keepends=True)
    checks = appended_checks(metrics)
    first_check = next(i for i, line in enumerate(lines) if b'"eval"' in line)
    monkeypatch.setattr(runs, "RECORDS_LIMIT", len(b"".join(lines[:first_check + 1])))
    runs._CHECKS.clear()
    assert read_metrics(run, "pretrain") == []
    calls = [appended_checks(metrics) for _ in lines]  # enough calls to read it all, a cap at a time
    assert len(calls[0]) == 1 and calls[-1] == checks and len(checks) > 1


def test_a_pruned_checkpoint_leaves_the_list_at_once_and_a_kill_meanwhile_is_swept(with_model, monkeypatch):
    """Deleting a folder file by file left a checkpoint half there for a reader (an evaluation) to find
    and call damaged: it is renamed out of `step-*` first, and what a kill leaves is swept."""
    import shutil

    folder = with_model / "runs" / "m" / "pretrain" / "checkpoints"
    kept = {checkpoint.latest(folder).path.name, checkpoint.best(folder).path.name}
    real, seen = shutil.rmtree, []

    def watched(path, **kw):
        seen.append((Path(path).name, sorted(p.name for p in folder.glob("step-*"))))
        real(path, **kw)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", watched)
    names = [c.path.name for c in checkpoint.list_checkpoints(folder)]
    checkpoint.prune(folder, keep_last=1)
    gone = [n for n in names if n not in kept]
    assert gone and seen == [(f".pruned-{n}", sorted(kept)) for n in gone]
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept)
    (folder / ".pruned-step-0000001").mkdir()  # a kill between the rename and the deletion
    checkpoint.sweep_partial(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept)


GOOD_STATE = {"step": 20, "val_loss": 3.5, "best_val_loss": 3.5, "tokens_seen": 81920, "checks_without_best": 0,
              "planned_steps": 40, "planned_warmup": 4, "planned_eval_batches": 2, "planned_most": None,
              "ranks": 1, "global_batch": 8, "config": {}, "tokenizer_sha256": "0" * 64}


@pytest.mark.parametrize(("key", "value"), [
    ("tokens_seen", -1), ("tokens_seen", True), ("tokens_seen", 2**70), ("checks_without_best", -1),
    ("planned_warmup", -10), ("planned_eval_batches", -1), ("planned_most", -3), ("ranks", 0), ("ranks", -2),
    ("global_batch", 0), ("best_val_loss", float("nan")), ("val_loss", float("nan")), ("val_loss", float("inf")),
    ("val_loss", False), ("best_val_loss", 10**400), ("ranks", 10**400)])
def test_a_state_json_with_a_number_no_stage_writes_reads_as_damaged(tmp_path, key, value):
    folder = tmp_path / "step-0000020"
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps(GOOD_STATE))
    assert checkpoint.read_state(folder) == GOOD_STATE  # as a stage writes it
    (folder / "state.json").write_text(json.dumps(GOOD_STATE | {key: value}))
    assert checkpoint.read_state(folder) is None
    assert checkpoint.damaged(tmp_path) == [folder]


@pytest.mark.parametrize("how", IRREGULAR)
@pytest.mark.parametrize("which", ["corpus manifest", "tokenizer"])
def test_project_data_that_is_no_regular_file_is_one_line(with_model, how, which, capsys):
    """The code corpus's manifest or the tokenizer replaced by a FIFO or a device: each command that
    needs it says so in one line, the overview shows its stage as not done, none waits for a writer."""
    cfg = config.load(with_model / "acm.toml")
    corpus = which == "corpus manifest"
    replace_with(cfg.locations.corpus_manifest("code") if corpus else cfg.locations.tokenizer_file, how)
    c = str(with_model / "acm.toml")
    needing = [["data", "show", "code", "0"], ["prepare"]] if corpus else [["prepare"], ["tokenizer", "probe", "hi"]]
    with unless_stuck():
        for command in needing:
            assert cli.main(["-c", c, *command]) == 2, command
            err = capsys.readouterr().err
            lines = err.strip().splitlines()
            assert lines[-1].startswith("acm: error: ") and "not a regular file" in lines[-1], (command, err)
            assert sum(line.startswith("acm: error: ") for line in lines) == 1, (command, err)
        assert cli.main(["-c", c, "pipeline"]) == 0
    stage = "data: bash scripts" if corpus else "tokenizer"
    row = next(line for line in capsys.readouterr().out.splitlines() if stage in line)
    assert "done" not in row, row


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a folder where no folder can be made")
def test_a_runs_folder_that_cannot_be_made_is_said_so(project, capsys):
    """paths.runs where no folder can be made: the run was said "renamed or deleted as its pretrain was
    to start"."""
    (project / "acm.toml").write_text('[paths]\nruns = "/proc/acm-runs"\n')
    assert cli.main(["-c", str(project / "acm.toml"), "train", "pretrain", "--run", "r1", "--steps", "1"]) == 2
    assert capsys.readouterr().err == ("acm: error: cannot make the runs folder /proc/acm-runs (paths.runs): "
                                       "No such file or directory: /proc/acm-runs\n")


@pytest.mark.parametrize("text", ["", "# notes\n", "[train]\n", "[model]\nn_layer = 2\n"])
def test_a_run_whose_config_records_no_preset_lists_it_as_unknown_not_as_the_default(with_model, text, capsys):
    """acm writes every setting: a config.toml without model.preset has lost it, and the machine's
    default preset would be a guess shown as a fact."""
    Paths.run_config(with_model / "runs" / "m").write_text(text)
    assert summary(with_model / "runs" / "m")["preset"] == "?"
    assert cli.main(["-c", str(with_model / "acm.toml"), "runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["preset"] == "?"


def test_a_stage_that_ended_past_its_latest_checkpoint_says_where_a_resume_goes_on(with_model, capsys):
    """Killed between two checkpoints, a stage's status is past the step a resume continues from."""
    run = with_model / "runs" / "m"
    latest = checkpoint.latest(Paths.checkpoints(run, "finetune")).step
    runs.write_status(run, "finetune", "stopped", step=latest + 4, total=40)
    assert cli.main(["-c", str(with_model / "acm.toml"), "runs"]) == 0
    assert f"{latest + 4}/40 (resumes at {latest})" in capsys.readouterr().out
    assert summary(run)["stages"]["finetune"]["latest_checkpoint"] == latest
    runs.write_status(run, "finetune", "done", step=latest, total=latest)
    assert cli.main(["-c", str(with_model / "acm.toml"), "runs"]) == 0
    assert "resumes at" not in capsys.readouterr().out
