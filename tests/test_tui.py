from __future__ import annotations

from textual.widgets import DataTable, Static, TabbedContent

from acm_tui.app import AcmApp


async def wait_until(pilot, predicate, timeout=30.0):
    import time
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        await pilot.pause(0.05)


async def test_starts_on_setup_with_doctor_report(project):
    app = AcmApp(project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.query_one("#panes", TabbedContent).active == "setup"
        doctor = app.query_one("#doctor", DataTable)
        await wait_until(pilot, lambda: doctor.row_count > 0)
        names = [doctor.get_row_at(i)[0] for i in range(doctor.row_count)]
        assert "mlx" in names and "device" in names
        assert app.query_one("#presets", DataTable).row_count == 4


async def test_number_keys_switch_panes(project):
    app = AcmApp(project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        tabs = app.query_one("#panes", TabbedContent)
        for key, pane in zip("23451", ["data", "tokenizer", "train", "generate", "setup"]):
            await pilot.press(key)
            await pilot.pause()
            assert tabs.active == pane
            assert app.focused is not None and app.focused.id == f"{pane}-pane"


async def test_model_test_runs_on_engine(project):
    app = AcmApp(project / "acm.toml")
    async with app.run_test(size=(100, 40)) as pilot:
        presets = app.query_one("#presets", DataTable)
        assert presets.cursor_row == 0  # the configured preset (nano) is selected
        presets.focus()
        await pilot.press("t")
        out = app.query_one("#model-test", Static)
        await wait_until(pilot, lambda: "tokens/s" in str(out.render()))
        assert "(2, 128, 1024)" in str(out.render())


async def test_broken_config_opens_on_defaults_and_says_why(tmp_path):
    (tmp_path / "acm.toml").write_text("[model]\npreset = 'huge'\n")
    app = AcmApp(tmp_path / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        banner = app.query_one("#config-error", Static)
        assert banner.display and "choose one of: nano" in str(banner.render())
        assert app.cfg.model.preset == "medium"


async def test_help_panel_toggles(project):
    app = AcmApp(project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert app.screen.query("HelpPanel")
        await pilot.press("question_mark")
        await pilot.pause()
        assert not app.screen.query("HelpPanel")
