"""Control characters in files on disk (a run folder's name, a script, a model's recorded output)
never reach a terminal raw: one-line fields are always shown escaped, multi-line text is escaped on
a terminal and written as it is into a pipe or a file."""
from __future__ import annotations

import json
import os

from core import cli
from core.paths import Paths
from core.runs import write_status
from core.runs.writer import RunLock
from tests.helpers import fake_run, with_pairs
from tests.stand_ins import script, write_tree
from tests.terminal import run_acm

NAME = "x\x1b]0;PWN\x07[b]y"  # retitles the window; brackets that rich would read as markup
SCRIPT = script("backup") + "echo '\x1b]0;PWN\x07\x1b[2J'\n"  # retitles the window, clears the screen
SHOWN = "echo '\\x1b]0;PWN\\x07\\x1b[2J'"


def test_the_runs_table_shows_a_run_name_s_control_characters_escaped(project, capsys):
    write_status(fake_run(project, NAME, [(10, 640, 5.0)], [(10, 4.0)]), "pretrain", "done", step=10, total=10)
    c = str(project / "acm.toml")
    assert cli.main(["-c", c, "runs"]) == 0
    out = capsys.readouterr().out
    assert "x\\x1b]0;PWN\\x07[b]y" in out and "\x1b" not in out  # a table is for reading, piped or not
    assert cli.main(["-c", c, "runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == NAME  # JSON keeps the name as it is


def test_every_command_naming_a_run_shows_its_control_characters_escaped(project, capsys):
    """The compared runs' columns, a stage's metrics line and the pipeline's rows name the run too."""
    for name in ("plain", NAME):
        write_status(fake_run(project, name, [(10, 640, 5.0)], [(10, 4.0)]), "pretrain", "done", step=10, total=10)
    newest = Paths.run_config(project / "runs" / NAME)  # the pipeline follows the newest run
    os.utime(newest, (newest.stat().st_mtime + 10,) * 2)
    c = str(project / "acm.toml")
    for command in (["runs", "compare", "plain", NAME], ["runs", "metrics", NAME], ["pipeline"],
                    ["runs", "samples", NAME]):
        assert cli.main(["-c", c, *command]) == 0, command
        out = capsys.readouterr().out
        assert "x\\x1b]0;PWN\\x07[b]y" in out and "\x1b" not in out, (command, out)
    writer = RunLock(project / "runs" / NAME).acquire("pretrain")  # this process stands for a trainer
    write_status(project / "runs" / NAME, "pretrain", "running", step=5, total=10)
    try:
        assert cli.main(["-c", c, "runs", "stop", NAME]) == 0
    finally:
        writer.release()
    assert capsys.readouterr().out == "stop sent to pretrain of run x\\x1b]0;PWN\\x07[b]y\n"


def test_generate_and_its_errors_show_a_run_name_s_control_characters_escaped(with_model, capsys):
    """The line naming the model generate loaded, and an error naming the run, on stderr."""
    import shutil

    shutil.copytree(with_model / "runs" / "m", with_model / "runs" / NAME)
    c = str(with_model / "acm.toml")
    assert cli.main(["-c", c, "generate", "x", "--run", NAME, "--max-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert "x\\x1b]0;PWN\\x07[b]y / finetune / step 10" in err and "\x1b" not in err
    shutil.rmtree(Paths.checkpoints(with_model / "runs" / NAME, "finetune"))
    shutil.rmtree(Paths.checkpoints(with_model / "runs" / NAME, "pretrain"))
    assert cli.main(["-c", c, "generate", "x", "--run", NAME]) == 2
    err = capsys.readouterr().err
    assert err.startswith("acm: error: ") and "x\\x1b]0;PWN\\x07[b]y" in err and "\x1b" not in err


def test_an_error_line_is_cut_at_a_newline_only(capsys):
    """A carriage return or a form feed in a run's name is escaped: splitlines() cut the line there."""
    from core.errors import fail

    assert fail("run x\ry\x0cz has no checkpoint\nmore") == 2
    assert capsys.readouterr().err == "acm: error: run x\\ry\\x0cz has no checkpoint\n"


def test_a_bad_escape_is_said_as_it_was_typed(project, capsys):
    assert cli.main(["-c", str(project / "acm.toml"), "generate", "-e", "abc\\x"]) == 2
    assert capsys.readouterr().err == "acm: error: the prompt: invalid escape in 'abc\\x': truncated \\xXX escape\n"


def test_data_show_escapes_on_a_terminal_and_writes_the_script_as_it_is_elsewhere(project, tmp_path, capsys):
    scripts = write_tree(tmp_path / "hostile", {"evil\nname.sh": SCRIPT})
    cfg = with_pairs(project, tmp_path, local_paths=[str(scripts)])
    c = str(project / "acm.toml")
    assert cli.main(["-c", c, "data", "fetch", "code"]) == 0
    capsys.readouterr()
    assert cli.main(["-c", c, "data", "show", "code", "0"]) == 0
    header, text = capsys.readouterr().out.split("\n", 1)
    assert header.startswith("# document 1 of 1") and header.endswith("evil\\nname.sh")  # the header is one line
    assert text == SCRIPT + "\n"  # redirected: byte for byte
    assert cli.main(["-c", c, "data", "show", "code", "-1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["index"], shown["documents"], shown["text"]) == (0, 1, SCRIPT)  # where it stands, as the line says
    code, written, _ = run_acm(["-c", str(cfg.root / "acm.toml"), "data", "show", "code", "0"], cols=200)
    assert code == 0 and "evil\\nname.sh" in written and SHOWN in written and "\x1b" not in written


def test_runs_samples_escapes_the_model_s_words_on_a_terminal_only(project, capsys):
    run = fake_run(project, "r", [(10, 640, 5.0)], [(10, 4.0)])
    written = "echo \x1b[2J\x00\r\n\tok\x9b\nrm -rf \u202e/ #\u200b"  # a reordered line, a hidden space
    sample = {"type": "sample", "stage": "pretrain", "step": 10, "prompt": "#!/bin/bash\n", "text": written,
              "parses": True, "shellcheck_errors": None, "complete": True, "relevant": None, "seconds": 1.0}
    (run / "pretrain" / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    argv = ["-c", str(project / "acm.toml"), "runs", "samples", "r", "--stage", "pretrain"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.endswith("#!/bin/bash\n" + written + "\n")  # redirected: as recorded
    code, shown, _ = run_acm(argv, cols=120)
    assert code == 0 and "echo \\x1b[2J\\x00\\r\r\n\tok\\x9b\r\nrm -rf \\u202e/ #\\u200b" in shown
    assert "\x00" not in shown and "\u202e" not in shown


def test_every_format_character_is_shown_as_an_escape_that_reads_back_as_itself():
    """Unicode's format characters (category Cf: bidirectional overrides, zero-width spaces, tag
    characters) would make a script on screen read otherwise than the bytes that run."""
    import sys
    import unicodedata

    from core.escapes import unescape, visible

    hidden = "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf")
    for lines in (False, True):
        shown = visible(hidden, lines)
        assert shown.isascii() and unescape(shown) == hidden
    assert visible("é ü 中 ok", lines=True) == "é ü 中 ok"  # letters stay letters


def test_a_console_is_made_for_its_stream_as_it_is_at_each_use(monkeypatch, capsys):
    """A console made while an app held standard error (which says it is a terminal) kept colouring
    every later line written to a pipe: the command line makes its consoles at each use."""
    import io
    import sys

    from core.cli.output import err_console

    class HeldByAnApp(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    with monkeypatch.context() as held:
        held.setattr(sys, "stderr", HeldByAnApp())
        assert err_console().color_system is not None
    err_console().print("[dim]a line[/dim]")
    assert capsys.readouterr().err == "a line\n"
