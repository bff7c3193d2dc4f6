from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from core import cli, config
from core.errors import run_command
from tests.helpers import ROOT, eventually, sigint_at_default
from tests.terminal import run_acm


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_doctor_json(project, capsys):
    rc, out, _ = run(capsys, "-c", str(project / "acm.toml"), "doctor", "--json")
    report = json.loads(out)
    names = {c["name"] for c in report["checks"]}
    assert {"mlx", "device", "device name", "device memory", "python", "numpy", "tokenizers", "textual",
            "free disk (data)", "free disk (runs)"} <= names
    assert rc == 0 and report["ok"] is True


def test_doctor_shows_mlx_environment_settings(project, capsys, monkeypatch):
    for key in [k for k in os.environ if k.startswith("MLX_")]:
        monkeypatch.delenv(key)
    rc, out, _ = run(capsys, "-c", str(project / "acm.toml"), "doctor")
    assert rc == 0 and "MLX environment" not in out
    monkeypatch.setenv("MLX_MAX_MB_PER_BUFFER", "400")
    rc, out, _ = run(capsys, "-c", str(project / "acm.toml"), "doctor")
    assert rc == 0 and "MLX_MAX_MB_PER_BUFFER=400" in out


def test_doctor_fails_with_one_line_fix_when_required_tool_missing(project, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(project))  # no bash, no git on PATH
    rc, out, _ = run(capsys, "-c", str(project / "acm.toml"), "doctor")
    assert rc == 1
    assert "bash: install bash" in out and "not ready" in out


def test_presets_json_and_table(capsys):
    rc, out, _ = run(capsys, "presets", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rc == 0 and rows["tiny"]["parameters"] == 98_916_864 and rows["medium"]["n_ctx"] == 4096
    rc, out, _ = run(capsys, "presets")
    assert "98.9M" in out and "372.0M" in out


def test_presets_star_says_who_chose_the_preset(project, tmp_path, capsys):
    rc, out, _ = run(capsys, "-c", str(project / "acm.toml"), "presets")
    assert "* the preset acm.toml selects (model.preset)" in out
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "acm.toml").write_text("[train.pretrain]\nseq_len = 64\n")
    rc, out, _ = run(capsys, "-c", str(tmp_path / "bare" / "acm.toml"), "presets")
    assert "* the preset that suits this machine (acm.toml sets no model.preset)" in out


def test_model_info(capsys):
    rc, out, _ = run(capsys, "model", "info", "medium")
    assert rc == 0
    assert "Parameters: 372.0M" in out and "Layers: 24" in out and "FFN dim: 4096" in out


def test_model_info_unknown_preset(capsys):
    rc, _, err = run(capsys, "model", "info", "huge")
    assert rc == 2
    assert err.strip() == "acm: error: unknown model preset 'huge'; valid presets: nano, micro, tiny, medium"


def test_model_test_nano(capsys):
    rc, out, _ = run(capsys, "model", "test", "--preset", "nano")
    assert rc == 0
    assert "Output shape: (2, 128, 1024)" in out and "Tokens/sec" in out and "passed" in out
    rc, out, err = run(capsys, "model", "test", "--preset", "nano", "--seq", "129")
    assert rc == 2 and out == "" and err == "acm: error: --seq 129 is longer than preset nano's context of 128 tokens\n"


def test_without_a_terminal_a_step_prints_plain_lines_with_its_eta():
    """A pipe or a log file gets no redraws: a running task's line now and then (with its ETA, from
    the clock given), a line when it ends, and one at the step's end for a task never said over."""
    from rich.console import Console

    from core.cli.progress import StepDisplay
    from core.progress import Progress
    from core.runs.events import Eval

    written, now = io.StringIO(), [0.0]
    with StepDisplay(Console(file=written, width=1000), clock=lambda: now[0], plain_every_s=30) as shown:
        shown.report(Progress("documents", 0, 100))
        now[0] = 10.0
        shown.report(Progress("documents", 10, 100, note="a"))  # within 30 s of the start: no line
        now[0] = 40.0
        shown.report(Progress("documents", 40, 100, note="b"))  # 1 a second: 60 s to go
        now[0] = 100.0
        shown.report(Progress("documents", 100, 100, finished=True))
        shown.report(Progress("scanning", 5, note="c"))  # unknown total, never said over
        now[0] = 130.0
        shown.train_event(Eval.from_json({"step": 4, "val_loss": 2.0, "val_ppl": 7.39}))
    assert written.getvalue().splitlines() == [
        "  documents: 40/100 eta 0:01:00 (b)", "  documents: 100/100 in 0:01:40", "step 4 val loss 2.0000 (ppl 7.4)",
        "  scanning: 5 in 0:00:30"]


def test_a_task_done_in_one_unit_is_timed_from_its_start():
    """A one-chunk task reports only when it is done; its Ticker says it began, so its line counts
    the seconds from there."""
    from rich.console import Console

    from core.cli.progress import StepDisplay
    from core.progress import Ticker

    written, now = io.StringIO(), [0.0]
    with StepDisplay(Console(file=written, width=1000), clock=lambda: now[0], plain_every_s=30) as shown:
        now[0] = 2.0
        ticker = Ticker(shown.report, "language", 3060)
        now[0] = 9.0
        ticker.advance(3060)
        ticker.finish()
    assert written.getvalue().splitlines()[-1] == "  language: 3,060/3,060 in 0:00:07"


def test_a_training_bar_shows_its_steps_eta_loss_and_speed_while_it_runs():
    """On a terminal, a training stage's bar (drawn here once, as a refresh would draw it) carries
    the trainer's ETA, the loss and tokens/s; a time budget's total shows as unknown until planned."""
    from rich.console import Console

    from core.cli.progress import StepDisplay
    from core.runs.events import Metrics, State
    from core.train.budget import UNPLANNED

    def drawn(display) -> str:
        out = io.StringIO()
        Console(file=out, width=160, color_system=None).print(display.bars.get_renderable())
        return out.getvalue()

    terminal = Console(file=io.StringIO(), width=160, force_terminal=True)
    with StepDisplay(terminal, label="finetune", clock=lambda: 0.0) as shown:
        shown.train_event(State(stage="finetune", state="running", step=0, total=UNPLANNED))
        assert re.search(r"finetune +\S* +0/\? ", drawn(shown))
        shown.train_event(Metrics.from_json({"stage": "finetune", "step": 2, "total": 4, "loss": 1.5,
                                             "tokens_per_s": 1234.0, "eta_s": 65.0, "lr": 1e-3, "epoch": 0.1,
                                             "memory_active": 0, "memory_peak": 0}))
        assert re.search(r"finetune +[━╸╺ ]+ 2/4 eta 0:01:05 .*loss 1\.500  1,234 tok/s", drawn(shown))


def test_a_tasks_note_is_shown_as_written_never_read_as_markup_or_control():
    """A note is data (a script's path): one holding `[/bold]` stopped a fetch on a terminal with an
    internal error (rich read it as a closing tag), an escape sequence in one reached the terminal,
    and a name that is not UTF-8 could not be written."""
    from rich.console import Console

    from core.cli.progress import StepDisplay
    from core.progress import Ticker

    written = io.StringIO()
    with StepDisplay(Console(file=written, width=160, force_terminal=True, color_system=None),
                     clock=lambda: 0.0) as shown:
        ticker = Ticker(shown.report, "scanning", 3, interval=0)
        ticker.advance(note="s/zz[/bold].sh")
        out = io.StringIO()
        Console(file=out, width=160, color_system=None).print(shown.bars.get_renderable())
        assert "s/zz[/bold].sh" in out.getvalue()
        ticker.advance(note="s/\x1b[2J" + os.fsdecode(b"caf\xe9") + ".sh")
        ticker.finish()
    assert "\x1b[2J" not in written.getvalue().replace("\x1b[2K", "")
    plain, now = io.StringIO(), [0.0]
    with StepDisplay(Console(file=plain, width=1000), clock=lambda: now[0], plain_every_s=30) as shown:
        ticker = Ticker(shown.report, "scanning", 2, interval=0)
        now[0] = 40.0
        ticker.advance(note="s/\x1b[2J" + os.fsdecode(b"caf\xe9") + ".sh")
    assert plain.getvalue().splitlines()[0] == "  scanning: 1/2 eta 0:00:40 (s/\\x1b[2Jcaf\\xe9.sh)"


def test_run_names_are_never_cut_at_any_terminal_width(with_model):
    from core.runs import rename_run

    name = "micro-20261202-061657"  # a default run name
    rename_run(with_model / "runs" / "m", name)
    for cols in (120, 60, 16):
        code, written, shown = run_acm(["-c", str(with_model / "acm.toml"), "runs"], cols=cols)
        assert code == 0 and name in written, written  # written whole: the terminal may wrap it, never cut it
        if cols >= len(name):
            assert any(name in line for line in shown.splitlines()), shown  # on one line of the screen
        assert "…" not in written
    assert "┃ run " in run_acm(["-c", str(with_model / "acm.toml"), "runs"], cols=120)[2]  # wide: the table


def test_a_missing_run_is_named_as_missing(with_model, tmp_path, capsys):
    for argv in (["export", "nosuchrun", "--to", str(tmp_path / "x")], ["generate", "x", "--run", "nosuchrun"],
                 ["eval", "--run", "nosuchrun"]):
        rc, _, err = run(capsys, "-c", str(with_model / "acm.toml"), *argv)
        assert rc == 2 and err.startswith("acm: error: run 'nosuchrun' does not exist in "), err
        assert len(err.strip().splitlines()) == 1 and "train a model first" not in err
    assert not (tmp_path / "x").exists()
    (with_model / "runs" / "m" / "config.toml").unlink()  # a run folder whose settings went
    rc, _, err = run(capsys, "-c", str(with_model / "acm.toml"), "generate", "x", "--run", "m")
    assert rc == 2 and " ".join(err.split()).startswith(
        f"acm: error: run 'm' has no {with_model / 'runs' / 'm' / 'config.toml'} (its settings"), err


def test_the_readme_double_quotes_no_prompt_but_in_toml():
    readme = (ROOT / "README.md").read_text()
    assert [line for line in readme.splitlines() if '"#!' in line and not line.startswith("prompt = ")] == []


def test_prompts_in_pasteable_commands_survive_bash_history_expansion(with_model, tmp_path, capsys):
    """A prompt holding `#!` in double quotes, pasted into an interactive bash, is history expansion
    (`event not found`): the model card's commands, `acm generate --help` and the README quote it
    singly. Each shell command is run by bash with history expansion on, its program replaced by
    one that prints what it was given."""
    from core.generate.decode import load_model
    from core.generate.export import card

    lm = load_model(config.load(with_model / "acm.toml"))
    commands = [line for fmt in ("mlx", "gguf") for line in card.render(lm, fmt, "float32", {}, {}).splitlines()
                if line.startswith(("mlx_lm.generate", "curl", "llama-completion"))]
    assert '"#!' not in card.render(lm, "hf", "float32", {}, {})
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    examples = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("acm ")]
    assert len(commands) == 3 and len(examples) >= 1
    for line in commands + examples:
        script = "set -o history -o histexpand\nshow() { printf '<%s>' \"$@\"; }\nshow " + line.split(" ", 1)[1]
        done = subprocess.run(["bash"], input=script, capture_output=True, text=True)
        assert done.returncode == 0 and not done.stderr, (line, done.stderr)
        # the prompt, whole: an argument of its own, or a JSON string in curl's
        assert re.search(r'[<"]#!/(bin/bash|usr/bin/env bash)\\n# [^>"]+\\n[>"]', done.stdout), (line, done.stdout)
    for example in examples:  # and each example of --help works as written
        argv = shlex.split(example)[1:] + ["--max-tokens", "4", "--candidates", "2"]
        assert cli.main(["-c", str(with_model / "acm.toml"), *argv]) == 0, example


def _writing_into_a_closed_pipe(quiet_pipe: bool) -> tuple[int, bytes]:
    """A command writing 10 MB (more than any pipe holds) whose output's reader has gone."""
    code = ("import sys; from core.errors import run_command; "
            f"sys.exit(run_command(lambda: [print('x' * 999) for _ in range(10_000)] and 0, quiet_pipe={quiet_pipe}))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(timeout=60), err


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`acm ... | head`: status 1 and not a word, as a closed pipe is not acm's error; a process that
    does not ask for it (a training rank, whose output is its launcher's pipe) still says it."""
    assert _writing_into_a_closed_pipe(quiet_pipe=True) == (1, b"")
    rc, err = _writing_into_a_closed_pipe(quiet_pipe=False)
    assert rc == 2 and err.decode().startswith("acm: error: Broken pipe") and err.count(b"\n") == 1


def test_a_broken_pipe_that_is_not_the_output_s_is_one_line(capsys):
    """A broken pipe elsewhere (a socket, a child) while the output is fine is the system's words."""
    def body():
        raise BrokenPipeError(32, "Broken pipe")
    assert run_command(body, quiet_pipe=True) == 2  # capsys's output has no file: not a closed pipe
    assert capsys.readouterr().err == "acm: error: Broken pipe\n"


@pytest.mark.parametrize("argv, said", [
    (["status"], "acm: error: argument COMMAND: invalid choice: 'status' "),
    (["export"], "acm: error: acm export: the following arguments are required: --to (see acm export --help)"),
    # an unknown option, refused by the command it was given to (its --help lists what it takes)
    (["chat", "--n", "3"], "acm: error: acm chat: unrecognized arguments: --n 3 (see acm chat --help)"),
    (["runs", "metrics", "r", "--bad"],
     "acm: error: acm runs metrics: unrecognized arguments: --bad (see acm runs metrics --help)"),
    (["runs", "list", "-c", "acm.toml"], "acm: error: -c goes before the command: acm -c ... COMMAND (see acm --help)"),
    (["doctor", "--config=x.toml"], "acm: error: --config goes before the command: acm --config ... COMMAND"),
    # a value that starts with '-' reads as an option, and argparse says only what is then missing
    (["generate", "-foo"], "acm: error: acm generate: the following arguments are required: prompt; '-foo' reads "
                           "as an option: give the options first, then -- and the value (acm generate [OPTIONS] -- "
                           "-foo)"),
    (["config", "set", "data.code.hf_dataset", "-foo"], "acm: error: acm config set: the following arguments are "
     "required: value; '-foo' reads as an option: give the options first, then -- and the value (acm config set "
     "[OPTIONS] -- -foo)"),
    (["export", "--", "-dash", "--to", "D"], "acm: error: acm export: the following arguments are "
     "required: --to; '-dash' reads as an option: give the options first, then -- and the value (acm export "
     "[OPTIONS] -- -dash)"),
    (["export", "-dash", "--to", "D"], "acm: error: acm export: unrecognized arguments: -dash (see acm export"),
    (["export", "--to", "D", "-private"], "acm: error: acm export: unrecognized arguments: -private (see acm"),
    (["doctor", "-dash"], "acm: error: acm doctor: unrecognized arguments: -dash (see acm doctor --help)"),
    (["eval", "--time", "-5m"], "acm: error: acm eval: argument --time: expected one argument; '-5m' reads as an "
                                "option: give it as --time=-5m (see acm eval --help)"),
    (["generate", "--bogus"], "acm: error: acm generate: the following arguments are required: prompt (see"),
    (["eval", "-x", "--time", "-5m"], "acm: error: acm eval: argument --time: expected one argument; '-5m' reads "),
    (["-cacm.toml"], "acm: error: the following arguments are required: COMMAND (see acm --help)"),
    (["runs", "metrics", "r", "-\x1b[2J"], "acm: error: acm runs metrics: unrecognized arguments: -\\x1b[2J (see"),
])
def test_a_bad_command_line_is_one_line_naming_acm_once(argv, said, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and err.startswith(said)


INTERRUPTED_WHILE_LOADING = """
import importlib.abc, os, signal, sys

class Interrupting(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == sys.argv[1]:  # a Ctrl-C as that module starts loading
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Interrupting())
from {entry} import main
sys.exit(main({argv}))
"""


@pytest.mark.parametrize("entry, argv, module", [("core.cli", "['presets']", "core.cli.commands"),
                                                 ("acm_tui.launch", "[]", "acm_tui.app")])
def test_a_ctrl_c_while_acm_loads_is_one_line_not_a_traceback(tmp_path, entry, argv, module):
    code = INTERRUPTED_WHILE_LOADING.format(entry=entry, argv=argv)
    r = subprocess.run([sys.executable, "-c", code, module], cwd=tmp_path, capture_output=True, text=True,
                       env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=120, preexec_fn=sigint_at_default)
    assert (r.returncode, r.stderr) == (130, "acm: interrupted\n")


HELD_WHILE_LOADING = """
import os, sys
from core.cli import generate

def held(*args, **kwargs):  # a read that never returns (a slow disk; a FIFO, before reads were checked)
    open("loading", "w").close()
    os.open("never-written", os.O_RDONLY)

generate.load_model = held
from core.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", [["generate", "x"], ["chat"]])
def test_a_term_while_the_model_loads_ends_the_command_whatever_holds_the_load(tmp_path, command):
    """The load ran on the engine, waited for in one block, and the shutdown waited for it: a TERM
    was acted on only once the load returned."""
    os.mkfifo(tmp_path / "never-written")
    proc = subprocess.Popen([sys.executable, "-c", HELD_WHILE_LOADING, *command], cwd=tmp_path, text=True,
                            env=os.environ | {"PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert eventually(lambda: (tmp_path / "loading").exists())
        proc.terminate()
        out, err = proc.communicate(timeout=60)  # a guard against a hang, not a measure of speed
    finally:
        proc.kill()
    assert (proc.returncode, err) == (143, "acm: interrupted\n")


INTERRUPTED_WHILE_MOUNTING = """
import sys
from acm_tui import app

async def set_title():  # what Textual's half-mounted widgets leave: coroutines made and never run
    pass

def run(self, *args, **kwargs):
    self.left = [set_title() for _ in range(3)]
    raise KeyboardInterrupt  # a Ctrl-C as the app draws itself, before it takes its signals

app.AcmApp.run = run
from acm_tui.launch import main
sys.exit(main([]))
"""


def test_a_ctrl_c_while_the_app_mounts_is_its_one_line(tmp_path):
    """Textual's widgets, half mounted, leave coroutines that never ran: each said so at the exit."""
    r = subprocess.run([sys.executable, "-c", INTERRUPTED_WHILE_MOUNTING], cwd=tmp_path, capture_output=True,
                       text=True, env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=120)
    assert (r.returncode, r.stderr) == (130, "acm: interrupted\n")
