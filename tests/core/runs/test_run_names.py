"""Run names: a new or renamed run takes letters, digits, '-' and '_' (what acm's own names are
made of); a run an older acm made under another name is still listed and found by that name."""
from __future__ import annotations

import os

import pytest

from core import cli, config, runs
from core.errors import AcmError
from core.paths import check_run_name

ODD = ["a b", "a\nb", "a\tb", "x\x01", "\x1b[2J", "café", "a:b", "a.b", "a*", "", ".hidden", "..", "../x", "-dash"]


def test_a_new_name_is_letters_digits_dashes_and_underscores_as_acm_s_own(project):
    for name in (runs.new_run_name(config.load(project / "acm.toml")), "nano-20260101-120000", "A_b-9"):
        check_run_name(name)
    for name in ODD:
        with pytest.raises(AcmError, match="use letters, digits, '-' and '_'"):
            check_run_name(name)


@pytest.mark.parametrize("name", ["a b", "x\ny", "café", "a:b", "-dash", ""])
def test_training_a_new_run_under_an_odd_name_is_refused_before_anything_is_written(project, capsys, name):
    assert cli.main(["-c", str(project / "acm.toml"), "train", "pretrain", f"--run={name}"]) == 2
    err = capsys.readouterr().err
    assert err == f"acm: error: invalid run name {name!r}: use letters, digits, '-' and '_' (not a '-' first)\n"
    assert not (project / "runs").exists()


def test_a_rename_takes_the_same_names(with_model, capsys):
    c = str(with_model / "acm.toml")
    for name in ("a b", "m.2", "ünï"):
        assert cli.main(["-c", c, "runs", "rename", "m", name]) == 2
        assert f"invalid run name {name!r}" in capsys.readouterr().err
    assert [p.name for p in (with_model / "runs").iterdir()] == ["m"]


def test_a_run_an_older_acm_named_oddly_is_listed_found_and_renamed(with_model, capsys):
    old = "old run:1"
    (with_model / "runs" / "m").rename(with_model / "runs" / old)
    c = str(with_model / "acm.toml")
    assert cli.main(["-c", c, "runs", "--json"]) == 0
    assert old in capsys.readouterr().out
    assert cli.main(["-c", c, "runs", "metrics", old]) == 0
    assert capsys.readouterr().out.startswith(f"finetune of run {old}: ")
    assert cli.main(["-c", c, "train", "finetune", "--run", old, "--resume"]) == 0  # its plan is done: nothing to do
    assert f"finetune of run {old}: its 10 steps are done" in capsys.readouterr().out
    assert cli.main(["-c", c, "runs", "rename", old, "renamed"]) == 0
    assert (with_model / "runs" / "renamed" / "config.toml").exists()


def test_a_name_too_long_for_a_folder_is_refused_in_one_line(with_model, capsys):
    c = str(with_model / "acm.toml")
    assert cli.main(["-c", c, "runs", "rename", "m", "x" * 300]) == 2
    assert "(300 characters): at most 100" in capsys.readouterr().err
    assert cli.main(["-c", c, "runs", "metrics", "y" * 300]) == 2  # a lookup: no file system has it
    assert "no run is named 'yyyy" in capsys.readouterr().err
    assert [p.name for p in (with_model / "runs").iterdir()] == ["m"]


def test_a_runs_folder_that_became_a_file_is_one_line_everywhere(with_model, capsys):
    import shutil

    cfg = config.load(with_model / "acm.toml")  # read while runs/ was a folder
    shutil.rmtree(with_model / "runs")
    (with_model / "runs").write_text("")
    with pytest.raises(AcmError, match="cannot read the runs folder .*runs \\(paths.runs\\): Not a directory"):
        runs.list_runs(cfg)
    assert cli.main(["-c", str(with_model / "acm.toml"), "runs"]) == 2
    assert "paths.runs = 'runs' is a file, not a folder" in capsys.readouterr().err


def test_deleting_a_run_that_is_a_link_removes_the_link_and_leaves_its_folder(with_model, tmp_path, capsys):
    cfg = config.load(with_model / "acm.toml")
    kept = tmp_path / "elsewhere"
    (cfg.runs_dir / "m").rename(kept)
    (cfg.runs_dir / "m").symlink_to(kept)
    assert cli.main(["-c", str(with_model / "acm.toml"), "runs", "delete", "m", "--yes"]) == 0
    assert capsys.readouterr().out == f"deleted run m, a link: the folder it pointed to ({kept}) is left as it was\n"
    assert not (cfg.runs_dir / "m").is_symlink() and (kept / "config.toml").is_file()


def test_a_refused_delete_leaves_the_run_whole_and_a_half_deleted_one_is_no_run(with_model, capsys, monkeypatch):
    """The run is renamed out of the list before anything in it is removed: where the system refuses
    (a runs folder acm may not change: EACCES for a user, EPERM under `chattr +i`), the run keeps
    every checkpoint; a delete whose removal stopped half-way leaves no run behind in the list."""
    from pathlib import Path

    cfg = config.load(with_model / "acm.toml")
    run, c = cfg.runs_dir / "m", str(with_model / "acm.toml")
    before = sorted(p.relative_to(run) for p in run.rglob("*") if p.suffix != ".lock")
    real_rename = Path.rename

    def refused(path, target):
        if path == run:
            raise PermissionError(1, "Operation not permitted", str(run))
        return real_rename(path, target)

    monkeypatch.setattr(Path, "rename", refused)
    assert cli.main(["-c", c, "runs", "delete", "m", "--yes"]) == 2
    assert capsys.readouterr().err == f"acm: error: cannot delete run m: Operation not permitted: {run}\n"
    assert sorted(p.relative_to(run) for p in run.rglob("*") if p.suffix != ".lock") == before
    assert runs.list_runs(cfg) == [run]
    monkeypatch.setattr(Path, "rename", real_rename)

    def stops_half_way(path):
        (path / "finetune").rename(path.parent / "kept")  # some of it removed
        raise PermissionError(13, "Permission denied", str(path / "pretrain"))

    monkeypatch.setattr(runs.shutil, "rmtree", stops_half_way)
    assert cli.main(["-c", c, "runs", "delete", "m", "--yes"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("acm: error: run m is deleted, but not all of its files could be removed from ")
    left = [p for p in cfg.runs_dir.iterdir() if p.name.startswith(".acm-deleting-")]
    assert len(left) == 1 and (left[0] / "config.toml").is_file() and runs.list_runs(cfg) == []
    assert cli.main(["-c", c, "runs"]) == 0 and "deleting" not in capsys.readouterr().out


def test_a_run_whose_background_stage_has_not_begun_is_said_to_be_starting(project, capsys, monkeypatch):
    """Straight after `--detach` the run folder holds only what its process reads: `acm runs stop`
    waits for it, and once its wait is over (here at once) says it is starting, not that its
    settings must be restored."""
    import core.cli.runs as cli_runs

    monkeypatch.setattr(cli_runs, "STARTING_WAIT_S", 0.0)
    cfg = config.load(project / "acm.toml")
    (cfg.runs_dir / "d1" / "pretrain").mkdir(parents=True)
    (cfg.runs_dir / "d1" / "pretrain" / "launch.toml").write_text("[launch]\n")
    runs.write_status(cfg.runs_dir / "d1", "pretrain", "starting", pid=os.getpid())  # as `--detach` leaves it
    assert cli.main(["-c", str(project / "acm.toml"), "runs", "stop", "d1"]) == 2
    said = capsys.readouterr()
    assert said.out == "run d1 is starting: stop waits for it (Ctrl-C to leave it)\n"
    assert said.err == ("acm: error: run 'd1' is starting in the background (its settings are written "
                                       "once its stage has begun): try again shortly; `acm runs` lists the runs\n")


def test_a_rename_onto_a_taken_name_says_what_holds_it_and_a_deleted_odd_name_is_shown_escaped(with_model, capsys):
    cfg = config.load(with_model / "acm.toml")
    c = str(with_model / "acm.toml")
    (cfg.runs_dir / "empty").mkdir()
    assert cli.main(["-c", c, "runs", "rename", "m", "empty"]) == 2
    assert capsys.readouterr().err == (f"acm: error: a folder that is no run named empty exists in {cfg.runs_dir} "
                                       "already: choose another name\n")
    (cfg.runs_dir / "m").rename(cfg.runs_dir / "n\x1b[2Jl")  # a run an older acm (or a hand) named so
    assert cli.main(["-c", c, "runs", "delete", "n\x1b[2Jl", "--yes"]) == 0
    assert capsys.readouterr().out == "deleted run n\\x1b[2Jl\n"
