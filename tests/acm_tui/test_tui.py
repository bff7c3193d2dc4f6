from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.binding import Binding
from textual.widgets import DataTable, Static, TabbedContent

import acm_tui.app
from acm_tui.app import AcmApp
from acm_tui.panes.settings import SettingsPane
from acm_tui.panes.setup import SetupPane
from core import config
from core.devices import read_devices
from tests.helpers import ROOT, notified, shown_in_full, text_of, wait_until
from tests.pane_host import PaneHost
from tests.terminal import AppOnATerminal


async def test_starts_on_setup_with_doctor_report(project):
    app = AcmApp(project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.query_one("#panes", TabbedContent).active == "setup"
        doctor = app.query_one("#doctor", DataTable)
        await wait_until(pilot, lambda: doctor.row_count > 0)
        names = [str(doctor.get_row_at(i)[0]) for i in range(doctor.row_count)]
        assert "mlx" in names and "device" in names
        assert app.query_one("#presets", DataTable).row_count == 4
        devices, reading = app.query_one("#devices", DataTable), read_devices()  # as `acm devices` reads them
        await wait_until(pilot, lambda: devices.row_count == len(reading.devices) > 0)
        assert [str(devices.get_row_at(i)[0]) for i in range(devices.row_count)] == [d.label for d in reading.devices]
        assert text_of(app, "#devices-note") == (reading.note or "")
        devices.clear()
        await pilot.press("r")  # re-checked with the environment
        await wait_until(pilot, lambda: devices.row_count == len(reading.devices))


async def test_number_keys_switch_panes(project):
    app = AcmApp(project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        tabs = app.query_one("#panes", TabbedContent)
        for key, pane, focus in zip("23451", ["data", "tokenizer", "train", "generate", "setup"],
                                    ["data-pane", "tokenizer-pane", "train-pane", "generate-pane", "pipeline"]):
            await pilot.press(key)
            await pilot.pause()
            assert tabs.active == pane
            assert app.focused is not None and app.focused.id == focus


def test_every_pane_request_names_a_pane_of_the_app():
    from acm_tui.messages import PaneRequest, TrainRun
    from acm_tui.panes.setup import STAGE_REQUESTS

    panes = {pane.TITLE.lower() for pane in acm_tui.app.PANES}
    assert {request.pane for request in PaneRequest.__subclasses__()} <= panes
    stages = set(PaneRequest.__subclasses__()) - {TrainRun}  # the Runs pane's request for one run
    assert {type(make()) for make in STAGE_REQUESTS.values()} == stages


def test_every_key_of_every_pane_is_in_the_readme_s_table_of_keys():
    """A key a pane binds, and the README's table does not give for that pane, is a key a user
    never learns of (the footer cuts most of them at 80 columns)."""
    import re

    readme = (ROOT / "README.md").read_text()
    documented = {(key, where.strip())
                  for keys, wheres in re.findall(r"^\| (`.*?) \| ([A-Z][\w ,]*) \| ", readme, re.M)
                  for key in re.findall(r"`([^`]+)`", keys) for where in wheres.split(",")}
    panes = [pane for pane in acm_tui.app.PANES if pane.BINDINGS]
    bound = {(key, pane.TITLE) for pane in panes for b in pane.BINDINGS for key in b.key.split(",")}
    assert len(panes) == 7 and len(bound) > 50
    assert {(key, where) for key, where in bound if (key, "everywhere") not in documented} <= documented


async def test_model_test_runs_on_engine_and_its_result_shows_at_80x24(project):
    app = PaneHost(SetupPane, project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        presets = app.query_one("#presets", DataTable)
        assert presets.cursor_row == 0  # the configured preset (nano) is selected
        await wait_until(pilot, lambda: app.query_one("#pipeline", DataTable).row_count == 7)  # what sits above
        presets.focus()
        await pilot.press("t")
        out = app.query_one("#model-test", Static)
        await wait_until(pilot, lambda: "tokens/s" in str(out.render()))
        assert "(2, 128, 1024)" in str(out.render())
        await wait_until(pilot, lambda: shown_in_full(app, "#model-test"))  # below the presets: scrolled to


async def test_setup_opens_in_the_stage_list_with_the_doctor_status_in_view_at_80x24(project):
    app = PaneHost(SetupPane, project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        stages = app.query_one("#pipeline", DataTable)
        assert stages.has_focus  # the arrows move in the stage list, not the page
        assert app.screen.active_bindings["enter"].binding.description == "Run stage"  # shown in the footer
        await wait_until(pilot, lambda: stages.row_count == 7)
        await pilot.press("down", "down")
        assert stages.cursor_row == 2 and app.query_one("#setup-pane").scroll_y == 0
        doctor = app.query_one("#doctor", DataTable)
        await wait_until(pilot, lambda: doctor.row_count > 0)
        columns = list(doctor.columns.values())
        assert [str(c.label) for c in columns][:2] == ["check", "status"]
        status_ends = sum(c.get_render_width(doctor) for c in columns[:2])
        assert status_ends <= doctor.scrollable_content_region.width  # however wide a found value runs


class Crashing(AcmApp):
    """The app with a key that raises: a bug, as a handler would hit one."""

    BINDINGS = [Binding("b", "crash")]
    CSS_PATH = Path(acm_tui.app.__file__).parent / AcmApp.CSS_PATH  # relative to the class's own module

    def action_crash(self) -> None:
        raise RuntimeError("boom")


async def test_a_bug_ends_the_app_in_one_line_with_exit_status_1(project, capsys, monkeypatch):
    monkeypatch.delenv("ACM_DEBUG", raising=False)
    app = Crashing(project / "acm.toml")
    with pytest.raises(RuntimeError, match="boom"):  # the pilot raises it again, for tests
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("b")
            await wait_until(pilot, lambda: app.return_code is not None)
    assert app.return_code == 1
    assert app.failure == "internal error (RuntimeError: boom); ACM_DEBUG=1 shows the traceback"
    assert "Traceback" not in capsys.readouterr().err


# acm-tui's own main() on the crashing app; Textual's headless driver, and it presses b (TEXTUAL_PRESS)
CRASHING_MAIN = """
import sys
from tests.acm_tui.test_tui import Crashing
from acm_tui import app
app.AcmApp = Crashing
sys.exit(app.main(["-c", sys.argv[1]]))
"""


@pytest.mark.parametrize("debug", ["", "1"])
def test_acm_tui_tells_a_bug_in_one_line_and_exits_1(project, debug):
    env = {**os.environ, "TEXTUAL_DRIVER": "textual.drivers.headless_driver:HeadlessDriver",
           "TEXTUAL_PRESS": "b", "ACM_DEBUG": debug, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CRASHING_MAIN, str(project / "acm.toml")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    if debug:
        assert "Traceback" in done.stderr and "boom" in done.stderr
    else:
        assert done.stderr == "acm: error: internal error (RuntimeError: boom); ACM_DEBUG=1 shows the traceback\n"


async def test_broken_config_opens_on_defaults_and_says_why(tmp_path):
    (tmp_path / "acm.toml").write_text("[model]\npreset = 'huge'\n")
    app = AcmApp(tmp_path / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        banner = app.query_one("#config-error", Static)
        assert banner.display and "choose one of: nano" in str(banner.render())
        assert app.cfg.model.preset == config.load(tmp_path / "missing.toml").model.preset  # the machine's


async def test_help_panel_toggles(project):
    app = PaneHost(SettingsPane, project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert app.screen.query("HelpPanel")
        await pilot.press("question_mark")
        await pilot.pause()
        assert not app.screen.query("HelpPanel")


def test_a_quit_says_what_becomes_of_each_busy_pane_s_work():
    from acm_tui.app import what_a_quit_does

    assert what_a_quit_does(["Train"]) == "training stops at the next step and writes a checkpoint"
    assert what_a_quit_does(["Setup"]) == "the pipeline stops (a training stage in it with a checkpoint)"
    assert what_a_quit_does(["Tokenizer", "Train", "Generate"]) == (
        "training stops at the next step and writes a checkpoint; Tokenizer and Generate: cancelled, what was "
        "finished is kept")
    assert what_a_quit_does(["Runs"]) == ("the upload to the Hugging Face Hub is abandoned (the Hub commits nothing; "
                                          "the exported folder stays)")


def test_a_byte_the_terminal_sends_that_is_not_utf8_leaves_the_app_up(project):
    """A Latin-1 terminal's é (or an 8-bit Alt) reaches the app as a byte that is not UTF-8: it reads
    as a replacement character, and the app goes on until it is quit."""
    app = AppOnATerminal(project)
    try:
        deadline = time.monotonic() + 60
        while b"Setup" not in app.seen:
            assert time.monotonic() < deadline, "the app never drew"
            time.sleep(0.1)
        os.write(app.fd, b"5\xe9\x1b")
        time.sleep(1.5)
        assert app.running(), bytes(app.seen)[-2000:]
        os.write(app.fd, b"\x11")  # ctrl+q
        assert app.exit_code(60) == 0 and b"UnicodeDecodeError" not in app.seen
    finally:
        app.close()


async def test_a_quit_while_the_chain_trains_stops_its_stage_with_a_checkpoint_and_runs_nothing_after(prepared):
    """Quitting ends the app's workers before its panes: the Setup pane's chain is stopped either
    way, its training stage at its next step with a checkpoint, and the stages after it never start."""
    from core.paths import Paths
    from core.runs import checkpoint, last_report, list_runs, read_status

    cfg = config.load(prepared / "acm.toml")
    cfg.train.pretrain.steps, cfg.train.pretrain.save_every = 400, 400
    config.save(cfg, prepared / "acm.toml")
    app = AcmApp(prepared / "acm.toml")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("1", "a")
        await wait_until(pilot, lambda: list_runs(cfg) and last_report(list_runs(cfg)[0], "pretrain"), timeout=120)
        await wait_until(pilot, lambda: ": running" in text_of(app, "#train-status"), timeout=30)
        assert "background process" not in text_of(app, "#train-status")  # it trains in the app, and stops with it
        await pilot.press("q")
        await wait_until(pilot, lambda: app.screen.__class__.__name__ == "Confirm")
        await pilot.press("y")
    run = list_runs(cfg)[0]
    assert read_status(run, "pretrain")["state"] == "stopped"
    assert checkpoint.latest(Paths.checkpoints(run, "pretrain")).step < 400
    assert read_status(run, "finetune") is None and not (run / "eval.json").exists()


async def test_A_runs_the_rest_within_a_time_budget_shared_as_pipeline_run_time_shares_it(prepared):
    """The training stages of a chain started with A take their share of the budget typed (the
    pretrain 60% of what the data stages left), as `acm pipeline run --time` gives it; a budget that
    is no duration is one line and runs nothing."""
    from textual.widgets import Input

    from core.paths import Paths
    from core.runs import list_runs

    cfg = config.load(prepared / "acm.toml")
    app = AcmApp(prepared / "acm.toml")
    async with app.run_test(size=(100, 40), notifications=True) as pilot:
        await pilot.press("1", "A")
        await wait_until(pilot, lambda: app.screen.__class__.__name__ == "Ask")
        app.screen.query_one("#answer", Input).value = "soon"
        await pilot.press("enter")
        await notified(pilot, "the time budget = 'soon' is not a duration")
        assert app.query_one("#setup-pane").step_cancel is None and not list_runs(cfg)
        await pilot.press("A")
        await wait_until(pilot, lambda: app.screen.__class__.__name__ == "Ask")
        app.screen.query_one("#answer", Input).value = "10m"
        await pilot.press("enter")
        await wait_until(pilot, lambda: list_runs(cfg) and Paths.run_config(list_runs(cfg)[0]).exists(), timeout=120)
        planned = config.load(Paths.run_config(list_runs(cfg)[0]), written=True).train.pretrain.time
        assert 300 <= config.parse_duration(planned) <= 360  # 60% of the 10 minutes the data stages (done) left
        await pilot.press("x")
        await wait_until(pilot, lambda: app.query_one("#setup-pane").step_cancel is None, timeout=120)


async def test_keys_typed_right_behind_a_pane_s_number_go_to_that_pane(project):
    """`3c` in one burst from the Data pane (typeahead over SSH): the Tokenizer pane shows, and the
    `c` is not the Data pane's (a code fetch)."""
    from textual import events

    app = AcmApp(project / "acm.toml")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("2")
        await pilot.pause(0.5)
        for key in "3c":
            app.post_message(events.Key(key, key))
        await pilot.pause(1)
        assert app.query_one("#panes", TabbedContent).active == "tokenizer"
        assert app.focused is app.query_one("#tokenizer-pane")
        assert not app.query_one("#data-pane").busy()


async def test_control_characters_pasted_into_an_input_are_taken_as_escapes(project):
    """SO, SI, ENQ or a right-to-left override pasted into the tokenizer's probe (any of the app's
    inputs) never reach the terminal raw: the input holds the escapes `-e` reads."""
    from textual import events
    from textual.widgets import Input

    app = AcmApp(project / "acm.toml")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("3")
        box = app.query_one("#probe-input", Input)
        box.focus()
        await pilot.pause()
        box.post_message(events.Paste("A\x0eB\x0fC\x05D\u202eE\tF\u200dG"))
        await pilot.pause()
        assert box.value == "A\\x0eB\\x0fC\\x05D\\u202eE\tF\u200dG"  # a tab and a joiner are text
        await pilot.press("G")
        assert box.value.endswith("GG")
