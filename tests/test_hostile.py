"""Every command given hostile values: a refusal is one `acm: error:` line on stderr, never a traceback."""
from __future__ import annotations

import pytest

from core import cli

BAD_SETTINGS = {
    "unparsable.toml": '[model]\npreset = "nano\n',
    "paths-are-numbers.toml": "[data.language]\nlocal_paths = [1, 2]\n",
    "nan.toml": "[generate]\ntemperature = nan\n",
    "huge.toml": "[train.pretrain]\nsteps = 99999999999999999999\n",
    "top-p-zero.toml": "[generate]\ntop_p = 0.0\n",
    "unknown.toml": "[train.pretrain]\nstepz = 3\n",
    "not-a-table.toml": "model = 3\n",
}

NOT_UTF8 = [  # a byte a Latin-1 terminal sent (kept by Python as a lone surrogate), half a surrogate pair
    ["generate", "caf\udce9"],
    ["generate", "\\ud800", "-e"],
    ["generate", "x", "--stop", "\udcff"],
    ["tokenizer", "probe", "-e", "\\ud800"],
    ["tokenizer", "probe", "caf\udce9"],
    ["config", "set", "data.language.text_field", "caf\udce9"],
]

def _shown(argv: list[str]) -> str:
    """A case's test id: its words, with what is not ASCII escaped (lone surrogates among it)."""
    return " ".join(argv).encode("ascii", "backslashreplace").decode()


CASES = [
    ["-c", "{tmp}/missing.toml", "presets"],
    ["-c", "{tmp}/folder.toml", "presets"],
    *[["-c", "{tmp}/" + name, "config", "check"] for name in BAD_SETTINGS],
    ["presets", "--bogus"],
    ["model", "info", "huge"],
    ["model", "test", "--batch", "0"],
    ["model", "test", "--seq", "-3"],
    ["model", "test", "--dtype", "int8"],
    ["generate", "x", "--temp", "-1"],
    ["generate", "x", "--temp", "nan"],
    ["generate", "x", "--top-p", "0"],
    ["generate", "x", "--top-p", "1.5"],
    ["generate", "x", "--min-p", "2"],
    ["generate", "x", "--repetition-penalty", "0"],
    ["generate", "x", "--max-tokens", "-1"],
    ["generate", "x", "--top-k", "lots"],
    ["generate", "x", "--dtype", "int8"],
    ["generate", "x\\", "-e"],
    ["generate", "x"],
    ["chat", "--temp", "-1"],
    ["eval", "--samples", "0"],
    ["eval"],
    ["export", "--to", "{tmp}/a-file"],
    ["tokenizer", "probe", "-e", "ab\\x4"],
    *NOT_UTF8,
    ["tokenizer", "info"],
    ["prepare"],
    ["train", "pretrain", "--steps", "0"],
    ["train", "pretrain", "--max-steps", "-1"],
    ["train", "finetune"],
    ["train", "pretrain", "--run", "../escape"],
    ["train", "pretrain", "--ranks", "0"],
    ["train", "pretrain", "--ranks", "2"],  # no token shards: refused before any rank starts
    ["export", "--to", "{tmp}/x", "--format", "onnx"],
    ["export", "--to", "{tmp}/x", "--format", "gguf"],  # no checkpoint
    ["runs", "metrics", "nope", "--csv"],
    ["config", "set", "train.ranks", "0"],
    ["config", "set", "train.report_to", "mlflow"],
    ["runs", "stop", "nope"],
    ["runs", "rename", "nope", "../x"],
    ["runs", "delete", "nope", "--yes"],
    ["data", "show", "code", "99999"],
    ["data", "fetch", "nope"],
    ["config", "set", "nope", "1"],
    ["config", "set", "generate.temperature", "nan"],
    ["config", "set", "generate.top_p", "0"],
    ["config", "set", "data.language.local_paths", "[1, 2]"],
    ["config", "set", "train.pretrain.steps", "99999999999"],
    ["config", "set", "paths.data", ""],
    ["config", "set", "paths.runs", " "],
    ["config", "set", "eval.tasks", '[{"prompt": "x", "expect": "("}]'],
]


@pytest.fixture
def hostile(project):
    for name, text in BAD_SETTINGS.items():
        (project / name).write_text(text)
    (project / "folder.toml").mkdir()
    (project / "a-file").write_text("keep me\n")
    return project


@pytest.mark.parametrize("argv", CASES, ids=lambda argv: _shown(argv).replace("{tmp}/", ""))
def test_a_refusal_is_one_line_and_never_a_traceback(hostile, capsys, argv):
    before = (hostile / "acm.toml").read_text()
    with _no_exit():
        rc = cli.main(["-c", str(hostile / "acm.toml"), *[a.replace("{tmp}", str(hostile)) for a in argv]]
                      if argv[0] != "-c" else [a.replace("{tmp}", str(hostile)) for a in argv])
        assert rc == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("acm: error: "), err
    assert "Traceback" not in err
    assert (hostile / "acm.toml").read_text() == before
    assert (hostile / "a-file").read_text() == "keep me\n"


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is SystemExit:  # argparse's refusals exit; they must still say one line
            assert value.code == 2
            return True
        return False


def test_a_fresh_project_has_a_pipeline_overview(project, capsys):
    assert cli.main(["-c", str(project / "acm.toml"), "pipeline"]) == 0
    assert "not started" in capsys.readouterr().out


def test_any_integer_seed_and_escaped_prompts_generate(with_model, capsys):
    c = str(with_model / "acm.toml")
    for seed in ("-1", "99999999999999999999999"):
        assert cli.main(["-c", c, "generate", "#!/bin/bash\\n", "-e", "--seed", seed, "--max-tokens", "4"]) == 0
    assert "tok/s" in capsys.readouterr().err


def test_export_onto_an_existing_file_is_refused(with_model, capsys):
    target = with_model / "model.bin"
    target.write_text("keep me\n")
    assert cli.main(["-c", str(with_model / "acm.toml"), "export", "--to", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is a file" in err[0]
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize("argv", NOT_UTF8, ids=_shown)
def test_typed_text_that_is_not_utf8_is_named(project, capsys, argv):
    assert cli.main(["-c", str(project / "acm.toml"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("acm: error: "), err
    assert " is not UTF-8: the byte 0x" in err or ": the escape \\ud800 is half a surrogate pair" in err, err


def test_the_app_refuses_a_settings_file_that_does_not_exist_and_a_bad_flag_in_one_line(tmp_path, capsys):
    from acm_tui.app import main

    assert main(["-c", str(tmp_path / "missing.toml")]) == 2
    assert capsys.readouterr().err == f"acm: error: settings file {tmp_path / 'missing.toml'} does not exist\n"
    with pytest.raises(SystemExit) as exited:
        main(["--bogus"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("acm: error: acm-tui: unrecognized arguments: --bogus"), err


HUGE = "99999999999999999999"
FLAG_BOUNDS = [  # an integer flag takes what its setting does (or, without one, a documented cap)
    (["train", "pretrain", "--steps", HUGE], "allowed: 1 to 2147483647, as train.pretrain.steps"),
    (["train", "finetune", "--steps", "0"], "allowed: 1 to 2147483647, as train.finetune.steps"),
    (["train", "pretrain", "--max-steps", HUGE], "allowed: 1 to 2147483647"),
    (["train", "pretrain", "--ranks", "65"], "allowed: 1 to 64, as train.ranks"),
    (["generate", "x", "--n", "100000"], "allowed: 1 to 256"),
    (["generate", "x", "--candidates", "257"], "allowed: 1 to 256, as generate.candidates"),
    (["generate", "x", "--top-k", HUGE], "allowed: 0 to 2147483647, as generate.top_k"),
    (["eval", "--samples", "4097"], "allowed: 1 to 4096, as eval.samples"),
    (["eval", "--max-tokens", HUGE], "allowed: 1 to 2147483647, as eval.max_tokens"),
    (["model", "test", "--batch", "100000"], "allowed: 1 to 1024"),
    (["data", "show", "code", HUGE], "allowed: -2147483647 to 2147483647"),
    (["generate", "x", "--n", "9" * 5000], "'99999999999999999999...' is not an integer"),
]


@pytest.mark.parametrize("argv,says", FLAG_BOUNDS, ids=lambda v: " ".join(v)[:40] if isinstance(v, list) else "")
def test_an_integer_flag_has_its_settings_bounds(project, capsys, argv, says):
    with pytest.raises(SystemExit) as e:  # refused as the arguments are read, before anything runs
        cli.main(["-c", str(project / "acm.toml"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("acm: error: ") and says in err[0], err
