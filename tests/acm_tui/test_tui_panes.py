from __future__ import annotations

import pytest
import tomlkit
from textual.widgets import DataTable, Input, TabbedContent

from acm_tui.app import AcmApp
from acm_tui.panes.runs import RunsPane
from acm_tui.panes.settings import SettingsPane
from acm_tui.panes.setup import SetupPane
from core import cli, config
from core.errors import ConfigError
from tests.helpers import check_between_checkpoints, fake_run, notified, shown_in_full, text_of, wait_until
from tests.pane_host import PaneHost


def select_row(table: DataTable, key: str) -> None:
    table.move_cursor(row=table.get_row_index(key))


async def select_in_pane(app, pilot, pane_key: str, table_id: str, rows: int, key: str) -> None:
    """Show a pane, wait for its table to hold `rows` rows and put the cursor on `key`."""
    await pilot.press(pane_key)
    table = app.query_one(table_id, DataTable)
    await wait_until(pilot, lambda: table.row_count == rows)
    table.focus()
    select_row(table, key)


async def test_settings_pane_validates_as_you_type_and_saves(project):
    app = PaneHost(SettingsPane, project / "acm.toml")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("7")
        table = app.query_one("#settings-table", DataTable)
        assert table.row_count == len(config.describe())
        table.focus()
        select_row(table, "generate.temperature")
        await pilot.press("enter")
        box = app.query_one("#settings-input", Input)
        assert box.has_focus and box.value == "0.8"
        box.value = "9"
        await pilot.pause()
        assert "generate.temperature = 9.0 is out of range; allowed: 0.0 to 5.0" in text_of(app, "#settings-error")
        await pilot.press("enter")  # refused: nothing saved
        assert config.load(project / "acm.toml").generate.temperature == 0.8
        box.value = "0.5"
        await pilot.pause()
        assert text_of(app, "#settings-error") == "ok"
        await pilot.press("enter")
        await pilot.pause()
        assert config.load(project / "acm.toml").generate.temperature == 0.5 and app.cfg.generate.temperature == 0.5
        assert str(table.get_row_at(table.get_row_index("generate.temperature"))[1]) == "0.5"


async def test_the_settings_pane_saves_its_change_into_the_file_as_it_is_now(project):
    """A setting saved in the app keeps what `acm config set` (or an editor) wrote since the app read
    acm.toml, and the app then holds the file's settings."""
    path = project / "acm.toml"
    app = PaneHost(SettingsPane, path)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("7")
        table = app.query_one("#settings-table", DataTable)
        table.focus()
        select_row(table, "generate.temperature")
        doc = tomlkit.parse(path.read_text())  # an editor, meanwhile
        doc["train"]["finetune"]["pairs_share"] = 0.6
        doc["train"]["finetune"]["pairs_share"].comment("my recipe")
        path.write_text(tomlkit.dumps(doc))
        assert cli.main(["-c", str(path), "config", "set", "generate.top_k", "7"]) == 0
        await pilot.press("enter")
        app.query_one("#settings-input", Input).value = "0.5"
        await pilot.press("enter")
        await pilot.pause()
        saved = config.load(path)
        assert (saved.generate.temperature, saved.generate.top_k, saved.train.finetune.pairs_share) == (0.5, 7, 0.6)
        assert "# my recipe" in path.read_text() and app.cfg.generate.top_k == 7
        assert str(table.get_row_at(table.get_row_index("generate.top_k"))[1]) == "7"


async def test_a_seq_len_the_settings_pane_cut_for_a_preset_follows_the_next_one(tmp_path):
    path = tmp_path / "acm.toml"
    path.write_text("[model]\npreset = 'tiny'\n[train.pretrain]\nseq_len = 1024\n")
    app = PaneHost(SettingsPane, path)
    async with app.run_test(size=(100, 40)) as pilot:
        await save_in_settings_pane(app, pilot, "model.preset", "nano")
        assert app.cfg.train.pretrain.seq_len == 128
        await save_in_settings_pane(app, pilot, "model.preset", "tiny")
        assert app.cfg.train.pretrain.seq_len == config.load(path).train.pretrain.seq_len == 1024
    assert "seq_len" not in path.read_text()


async def test_runs_pane_opens_overlays_renames_and_deletes(with_model):
    from core.train.trainer import train_stage

    cfg = config.load(with_model / "acm.toml")
    train_stage(cfg, "pretrain", cfg.runs_dir / "other", max_steps=4)
    app = PaneHost(RunsPane, with_model / "acm.toml")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("6")
        pane = app.query_one("#runs-pane")
        table = app.query_one("#runs-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2)
        table.focus()
        select_row(table, "m")
        await pilot.press("enter")
        select_row(table, "other")
        await pilot.press("o")
        assert pane.shown == ["m", "other"] and pane.marked == ["m", "other"]
        await wait_until(pilot, lambda: "m pretrain" in str(app.query_one("#runs-chart").render()))
        assert "loss (smoothed 0.6): m vs other" in str(app.query_one("#runs-chart").render())  # ui.smoothing
        await pilot.press("n")
        await pilot.pause()
        name_box = app.screen.query_one("#answer", Input)
        name_box.value = "renamed"
        await pilot.press("enter")
        await wait_until(pilot, lambda: (cfg.runs_dir / "renamed").exists())
        await wait_until(pilot, lambda: table.row_count == 2 and "renamed" in
                         [str(table.get_row_at(i)[0]) for i in range(2)])
        select_row(table, "renamed")
        await pilot.press("d")
        await pilot.pause()
        await pilot.press("n")  # no: kept
        await pilot.pause()
        assert (cfg.runs_dir / "renamed").exists()
        await pilot.press("d")
        await pilot.pause()
        await pilot.press("y")
        await wait_until(pilot, lambda: not (cfg.runs_dir / "renamed").exists())


async def test_runs_pane_notifies_renames_deletes_and_refusals_in_plain_words_at_80x24(with_model):
    runs_dir = with_model / "runs"
    (runs_dir / "m").rename(runs_dir / "[old]")  # a name an older acm took: brackets are a name, not markup
    app = PaneHost(RunsPane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await select_in_pane(app, pilot, "6", "#runs-table", 1, "[old]")
        table = app.query_one("#runs-table", DataTable)
        for refused in (".hidden", "a b", "[baseline]"):
            await pilot.press("n")
            await pilot.pause()
            app.screen.query_one("#answer", Input).value = refused
            await pilot.press("enter")
            await notified(pilot, f"invalid run name '{refused}'")
        await pilot.press("n")
        await pilot.pause()
        app.screen.query_one("#answer", Input).value = "baseline"
        await pilot.press("enter")
        await notified(pilot, "renamed [old] to baseline")
        await wait_until(pilot, lambda: table.row_count == 1 and str(table.get_row_at(0)[0]) == "baseline")
        await pilot.press("d")
        await pilot.pause()
        await pilot.press("y")
        await notified(pilot, "deleted run baseline")
        assert app.is_running and not (runs_dir / "baseline").exists()


async def test_runs_pane_keys_on_an_empty_list_say_there_is_no_run(project):
    app = PaneHost(RunsPane, project / "acm.toml")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("6")
        for key in ("enter", "space", "o", "x", "n", "d"):
            app.clear_notifications()
            await pilot.press(key)
            await notified(pilot, "no run yet: train one")
            assert app.screen is app.screen_stack[0]  # no question asked
        app.clear_notifications()
        await pilot.press("a")  # the axis it switches to is said, the chart maybe out of view
        await notified(pilot, "x axis: tokens seen")


async def test_runs_pane_best_val_loss_is_the_latest_checked_stage_s(project):
    """A fine-tune's code loss, not the lower of it and the pretrain's language loss: the two do not compare."""
    reports = [(10, 640, 5.0), (20, 1280, 4.0)]
    from core.runs import write_status

    for name, stage, checks in (("both", "pretrain", [(10, 3.9), (20, 3.5)]),
                                ("both", "finetune", [(10, 4.6), (20, 4.2)]), ("only", "pretrain", [(10, 3.7)])):
        write_status(fake_run(project, name, reports, checks, stage=stage), stage, "done", step=20, total=20)
    app = PaneHost(RunsPane, project / "acm.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("6")
        table = app.query_one("#runs-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2)
        best = {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[4]) for i in range(2)}
        assert best == {"both": "4.2000", "only": "3.7000"}


async def test_runs_pane_takes_the_arrows_at_once_and_a_marked_name_shows_whole(project):
    """Shown by its key, the run table has the focus (down moves to the next run, as on the Setup
    pane), and the mark widens the name's column rather than cutting the name."""
    for name in ("nano-20261205-002906", "nano-20261205-002407"):
        fake_run(project, name, [(10, 640, 5.0)], [(10, 4.0)])
    app = PaneHost(RunsPane, project / "acm.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("6")
        pane, table = app.query_one("#runs-pane", RunsPane), app.query_one("#runs-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2)
        await pilot.press("space", "down", "space")
        assert sorted(pane.marked) == ["nano-20261205-002407", "nano-20261205-002906"]
        shown = [table.render_line(y).text for y in range(1, 3)]  # the rows under the header
        assert all(any(f"● {name} " in line for line in shown) for name in pane.marked), shown


async def test_runs_pane_shows_a_run_name_s_control_characters_escaped(project):
    """A run folder named with an escape sequence (one that retitles the terminal) and brackets: the
    table, the chart and the compared settings show it escaped, as text, and no ESC is drawn."""
    for name in ("x\x1b]0;PWN\x07[b]y", "plain"):
        fake_run(project, name, [(10, 640, 5.0)], [(10, 4.0)])
    app = PaneHost(RunsPane, project / "acm.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("6")
        table = app.query_one("#runs-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2)
        await pilot.press("space", "down", "space", "c")
        await wait_until(pilot, lambda: app.query_one("#runs-diff", DataTable).columns)
        drawn = [app.query_one(w).render_line(y).text for w in ("#runs-table", "#runs-diff") for y in range(3)]
        drawn.append(str(app.query_one("#runs-chart").render()))
        assert any("● x\\x1b]0;PWN\\x07[b]y" in line for line in drawn), drawn
        assert not any("\x1b" in line for line in drawn), drawn


async def test_setup_pane_shows_the_followed_run_s_control_characters_escaped(project):
    """The pipeline's rows name the run it follows (the newest): escaped, and no ESC drawn."""
    from core.runs import write_status

    write_status(fake_run(project, "x\x1b]0;PWN\x07[b]y", [(10, 640, 5.0)], [(10, 4.0)]), "pretrain", "done",
                 step=10, total=10)
    app = PaneHost(SetupPane, project / "acm.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one("#pipeline", DataTable)
        await wait_until(pilot, lambda: table.row_count >= 7)
        cells = [str(cell) for i in range(table.row_count) for cell in table.get_row_at(i)]
        drawn = [table.render_line(y).text for y in range(table.row_count + 1)]  # a long cell may be cut
        assert any("x\\x1b]0;PWN\\x07[b]y" in cell for cell in cells), cells
        assert not any("\x1b" in line for line in cells + drawn), drawn


async def open_export(app, pilot) -> None:
    """The Runs pane, its one run listed and selected, the export dialog open (x)."""
    await pilot.press("6")
    table = app.query_one("#runs-table", DataTable)
    await wait_until(pilot, lambda: table.row_count == 1)
    table.focus()
    await pilot.press("x")
    await pilot.pause()


async def test_runs_pane_exports_a_run_in_the_chosen_format(with_model):
    from textual.widgets import Select

    app = PaneHost(RunsPane, with_model / "acm.toml")
    async with app.run_test(size=(100, 40), notifications=True) as pilot:
        await open_export(app, pilot)
        app.screen.query_one("#export-format", Select).value = "gguf"
        folder = app.screen.query_one("#export-folder", Input)
        assert folder.value == "exports/m"
        folder.focus()
        await pilot.press("enter")
        target = with_model / "exports" / "m"
        await wait_until(pilot, lambda: (target / "README.md").exists(), timeout=60)
        assert sorted(p.name for p in target.iterdir()) == ["README.md", "model.gguf"]
        await notified(pilot, f"as gguf to {target}")
        await pilot.press("x")  # the same folder again: refused in one line, the app stays up
        await pilot.pause()
        app.screen.query_one("#export-folder", Input).focus()
        await pilot.press("enter")
        await notified(pilot, "exists and is not empty")
        assert app.is_running
        (with_model / "afile").write_text("in the way")
        for folder, says in (("afile/sub", "a file stands where acm keeps a folder"),
                             ("a\0b", "holds a NUL character")):
            await pilot.press("x")
            await pilot.pause()
            app.screen.query_one("#export-folder", Input).value = folder
            app.screen.query_one("#export-folder", Input).focus()
            await pilot.press("enter")
            await notified(pilot, says)
            assert app.is_running
        await pilot.press("x")  # ~user of no user here: kept as written, as a shell keeps it
        await pilot.pause()
        app.screen.query_one("#export-folder", Input).value = "~nosuchuser-acm/m"
        app.screen.query_one("#export-folder", Input).focus()
        await pilot.press("enter")
        kept = with_model / "~nosuchuser-acm" / "m"
        await wait_until(pilot, lambda: (kept / "README.md").exists(), timeout=60)
        assert app.is_running


async def test_runs_pane_uploads_the_export_to_the_hub_as_export_upload_does(with_model, monkeypatch):
    """The dialog's Hub repo: the exported folder sent after the export (here to a stand-in of the
    Hub's HTTP API), said when done; a failed upload is one notice and the folder stays; private
    without a repository is refused in the dialog."""
    import httpx2 as httpx
    from textual.widgets import Checkbox

    from tests.stand_ins import stand_in_hub

    app = PaneHost(RunsPane, with_model / "acm.toml")
    async with app.run_test(size=(100, 40), notifications=True) as pilot:
        pane = app.query_one("#runs-pane", RunsPane)
        with stand_in_hub(monkeypatch) as (seen, committed):
            await open_export(app, pilot)
            app.screen.query_one("#export-private", Checkbox).value = True
            app.screen.query_one("#export-folder", Input).focus()
            await pilot.press("enter")
            await notified(pilot, "private makes the repository the upload creates private: name the repository")
            app.screen.query_one("#export-folder", Input).value = " "
            await pilot.press("enter")
            await notified(pilot, "name the new folder to export to, or escape to leave")
            app.screen.query_one("#export-folder", Input).value = "exports/m"
            app.screen.query_one("#export-upload", Input).value = "bad repo id!!"
            await pilot.press("enter")
            await notified(pilot, "'bad repo id!!' is no Hugging Face Hub repository id")
            assert not (with_model / "exports" / "m").exists()
            app.screen.query_one("#export-upload", Input).value = "me/acm-nano"
            app.screen.query_one("#export-upload", Input).focus()
            await pilot.press("enter")  # enter in the repository's box exports too
            await notified(pilot, "uploaded " + str(with_model / "exports" / "m")
                           + " to https://huggingface.co/me/acm-nano/commit/abc")
            assert pane.uploading == [] and not pane.busy() and pane.upload_to == {}
        assert ("POST", "/api/repos/create") in seen
        assert set(committed) == {p.name for p in (with_model / "exports" / "m").iterdir()}
        refused = httpx.Response(401, json={"error": "Invalid credentials"})
        with stand_in_hub(monkeypatch, lambda request: refused):
            await open_export(app, pilot)
            app.screen.query_one("#export-folder", Input).value = "exports/again"
            app.screen.query_one("#export-upload", Input).value = "me/acm-nano"
            app.screen.query_one("#export-folder", Input).focus()
            await pilot.press("enter")
            await notified(pilot, "upload of " + str(with_model / "exports" / "again") + " to me/acm-nano failed")
        assert (with_model / "exports" / "again" / "README.md").exists() and app.is_running


async def test_two_exports_in_flight_each_upload_to_their_own_repository_or_none(with_model, monkeypatch):
    """The repository belongs to its export: a second export asked for while the first waits for the
    engine (here behind a stage) neither takes the first's upload away nor sends its folder there."""
    import threading

    from tests.stand_ins import stand_in_hub

    app = PaneHost(RunsPane, with_model / "acm.toml")
    async with app.run_test(size=(100, 40), notifications=True) as pilot:
        release = threading.Event()
        app.engine.submit_named("train", release.wait)  # the engine busy: both exports queue behind it
        with stand_in_hub(monkeypatch) as (seen, committed):
            for folder, repo in (("exports/a", "me/acm-nano"), ("exports/b", "")):
                await open_export(app, pilot)
                app.screen.query_one("#export-folder", Input).value = folder
                app.screen.query_one("#export-upload", Input).value = repo
                app.screen.query_one("#export-folder", Input).focus()
                await pilot.press("enter")
            release.set()
            await notified(pilot, f"uploaded {with_model / 'exports' / 'a'} to https://huggingface.co/me/acm-nano")
            await wait_until(pilot, lambda: (with_model / "exports" / "b" / "README.md").exists(), timeout=60)
        assert seen.count(("POST", "/api/repos/create")) == 1


async def test_the_export_dialog_shows_its_whole_instruction_at_80x24(with_model):
    from textual.widgets import Label

    app = PaneHost(RunsPane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_export(app, pilot)
        label = app.screen.query_one(Label)
        where = app.screen.find_widget(label)
        assert "the checkpoint and the dtype:" in str(label.render())
        assert where.visible_region == where.region and where.region.height >= 3  # wrapped, none of it cut
        for name in ("folder", "format", "stage", "checkpoint", "dtype"):  # all in view, none cut
            widget = app.screen.find_widget(app.screen.query_one(f"#export-{name}"))
            assert widget.visible_region == widget.region, name
        assert app.screen.query_one("#export-folder", Input).has_focus  # enter exports as offered
        for name in ("format", "stage", "checkpoint", "dtype"):  # each choice on one line: "bfloat16", not "bfloat|16"
            assert app.screen.query_one(f"#export-{name}").region.width >= len("bfloat16") + 6, name
        await pilot.press("tab", "tab", "tab", "tab", "enter", "down", "enter")  # the dtype's list: bfloat16
        await pilot.pause()
        assert str(app.screen.query_one("#export-dtype").value) == "bfloat16"
        assert app.screen.query_one("#export-folder", Input).has_focus  # back, so that enter exports
        await pilot.press("enter")
        target = with_model / "exports" / "m"
        await wait_until(pilot, lambda: (target / "README.md").exists(), timeout=60)
        assert "bfloat16" in (target / "README.md").read_text()


async def test_the_export_dialog_takes_the_stage_checkpoint_and_dtype_acm_export_takes(with_model):
    """The dialog exported the default stage's best checkpoint in float32 only, and enter on its first
    field, the format list, opened the list: `acm export --stage --checkpoint --dtype` had no match."""
    from textual.widgets import Select

    app = PaneHost(RunsPane, with_model / "acm.toml")
    async with app.run_test(size=(100, 40), notifications=True) as pilot:
        await open_export(app, pilot)
        for name, value in (("stage", "pretrain"), ("checkpoint", "latest"), ("dtype", "bfloat16")):
            app.screen.query_one(f"#export-{name}", Select).value = value
        app.screen.query_one("#export-folder", Input).value = "exports/pre"
        app.screen.query_one("#export-folder", Input).focus()
        await pilot.press("enter")
        target = with_model / "exports" / "pre"
        await wait_until(pilot, lambda: (target / "README.md").exists(), timeout=60)
        card = (target / "README.md").read_text()
        assert "pretrain" in card and "bfloat16" in card and "step 20" in card, card


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_every_pane_at_small_and_large_sizes_without_colour(project, monkeypatch, size):
    monkeypatch.setenv("NO_COLOR", "1")
    app = AcmApp(project / "acm.toml")
    async with app.run_test(size=size) as pilot:
        tabs = app.query_one("#panes", TabbedContent)
        for key in "1234567":
            await pilot.press(key)
            await pilot.pause()
            assert app.screen.size == size
        assert tabs.active == "settings"
        assert app.no_color


async def test_command_palette_offers_every_pane_action(project):
    app = AcmApp(project / "acm.toml")
    async with app.run_test(size=(100, 30)) as pilot:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Train: Pause/resume" in titles and "Runs: Delete" in titles and "Show Settings" in titles
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"show settings")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert app.query_one("#panes", TabbedContent).active == "settings"


PANE_KEYS = {"data": "2", "tokenizer": "3", "train": "4", "generate": "5", "runs": "6", "settings": "7"}


@pytest.mark.parametrize("pane", list(PANE_KEYS))
def test_snapshot_at_80x24(pane, snap_compare, tmp_path):
    cfg = config.from_dict({"model": {"preset": "nano"}, "tokenizer": {"vocab_size": 1024},
                            "train": {"pretrain": {"seq_len": 64}, "finetune": {"seq_len": 64}}}, root=tmp_path)
    config.save(cfg, tmp_path / "acm.toml")

    async def settle(pilot):
        await pilot.press(PANE_KEYS[pane])
        await pilot.pause(0.3)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.3)

    assert snap_compare(AcmApp(tmp_path / "acm.toml"), terminal_size=(80, 24), run_before=settle)


async def save_in_settings_pane(app, pilot, key: str, value: str) -> None:
    """7, select `key`, enter, type `value`, enter."""
    await pilot.press("7")
    table = app.query_one("#settings-table", DataTable)
    table.focus()
    select_row(table, key)
    await pilot.press("enter")
    app.query_one("#settings-input", Input).value = value
    await pilot.pause()
    await pilot.press("enter")
    await pilot.pause()


async def test_a_settings_file_with_an_error_is_never_overwritten_nor_acted_on(trained):
    path = trained / "acm.toml"
    broken = path.read_text().replace('preset = "nano"', 'preset = "nano')
    assert broken != path.read_text()
    path.write_text(broken)
    tokenizer = (trained / "data" / "tokenizer" / "tokenizer.json").read_bytes()
    app = AcmApp(path)
    async with app.run_test(size=(100, 40)) as pilot:
        await save_in_settings_pane(app, pilot, "generate.temperature", "0.5")
        assert path.read_text() == broken  # not replaced by defaults
        await pilot.press("escape", "3", "t")
        await pilot.pause(0.5)
        assert app.query_one("#tokenizer-pane").step_cancel is None  # not started on defaults
    assert path.read_text() == broken
    assert (trained / "data" / "tokenizer" / "tokenizer.json").read_bytes() == tokenizer
    with pytest.raises(ConfigError, match="not saved"):
        config.save(config.from_dict({}, root=trained), path)


async def test_a_settings_path_that_is_a_folder_keeps_the_app_up(project):
    folder = project / "acm.toml"
    folder.unlink()
    folder.mkdir()
    app = PaneHost(SettingsPane, folder)
    async with app.run_test(size=(100, 40)) as pilot:
        assert "cannot read it" in text_of(app, "#config-error")
        await save_in_settings_pane(app, pilot, "generate.temperature", "0.5")
        assert app.is_running and folder.is_dir()


async def test_a_nul_typed_into_a_path_setting_is_refused_and_the_app_stays_up(project):
    path = project / "acm.toml"
    before = path.read_bytes()
    app = PaneHost(SettingsPane, path)
    async with app.run_test(size=(100, 40)) as pilot:
        await save_in_settings_pane(app, pilot, "paths.runs", '"a\\u0000"')  # TOML's escape for NUL
        assert app.is_running and path.read_bytes() == before
        assert "holds a NUL character" in text_of(app, "#settings-error")


@pytest.mark.parametrize(("key", "value", "says"), [
    ("data.language.max_documents", "1" * 5000, "a number of thousands of digits"),
    ("paths.data", "a" * 300, "cannot be a folder here"),
    ("paths.runs", "r\ud800s", "half of a character"),
    ("data.language.local_paths", '["a", 1]', "must be a list of strings"),
])
async def test_a_value_no_setting_can_hold_is_refused_in_one_line_and_the_app_stays_up(project, key, value, says):
    path = project / "acm.toml"
    before = path.read_bytes()
    app = PaneHost(SettingsPane, path)
    async with app.run_test(size=(100, 40)) as pilot:
        await save_in_settings_pane(app, pilot, key, value)
        assert app.is_running and path.read_bytes() == before
        assert says in text_of(app, "#settings-error")


async def test_a_value_holding_markup_is_saved_and_shown_as_typed(project):
    path = project / "acm.toml"
    app = PaneHost(SettingsPane, path)
    async with app.run_test(size=(100, 40)) as pilot:
        await save_in_settings_pane(app, pilot, "paths.runs", "r[/]s")
        await save_in_settings_pane(app, pilot, "paths.data", "[old]")
        assert app.is_running and config.load(path).paths.runs == "r[/]s"
        table = app.query_one("#settings-table", DataTable)
        shown = {str(table.get_row(k)[0]): str(table.get_row(k)[1]) for k in ("paths.runs", "paths.data")}
        assert shown == {"paths.runs": '"r[/]s"', "paths.data": '"[old]"'}
    async with AcmApp(path).run_test(size=(80, 24)) as pilot:  # and the app starts with it
        await pilot.pause()
        assert pilot.app.is_running


async def test_a_file_edited_into_an_error_while_the_app_is_open_stops_stages_and_is_not_written(project):
    path = project / "acm.toml"
    app = PaneHost(SettingsPane, path)
    async with app.run_test(size=(100, 40), notifications=True) as pilot:
        await pilot.press("7")
        doc = tomlkit.parse(path.read_text())
        doc.setdefault("ui", tomlkit.table())["smoothing"] = 7  # out of range
        edited = tomlkit.dumps(doc)
        path.write_text(edited)
        await pilot.press("ctrl+r")
        assert "ui.smoothing = 7" in text_of(app, "#config-error") and app.config_error
        await save_in_settings_pane(app, pilot, "generate.temperature", "0.5")
        assert path.read_text() == edited
        doc["ui"]["smoothing"] = 0.6
        path.write_text(tomlkit.dumps(doc))
        await pilot.press("ctrl+r")
        assert not app.config_error and not text_of(app, "#config-error")


async def test_settings_pane_works_by_keyboard_alone_at_80x24(project):
    app = PaneHost(SettingsPane, project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("7")
        await pilot.pause()
        table = app.query_one("#settings-table", DataTable)
        assert table.has_focus
        for _ in range(30):
            await pilot.press("down")
        await pilot.pause()
        key = config.describe()[30][0]
        assert table.cursor_row == 30
        assert text_of(app, "#settings-help").startswith(f"{key}:")  # the description follows the cursor
        assert table.scroll_y > 0 and app.query_one("#settings-pane").scroll_y == 0  # the table scrolls, not the page
        await pilot.press("up")
        assert table.cursor_row == 29
        await pilot.press("enter")
        assert app.query_one("#settings-input", Input).has_focus


async def test_charts_tell_the_stages_apart_with_steps_on_the_x_axis_at_80x24(with_model):
    from core.runs.compare import run_curves

    app = PaneHost(RunsPane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await select_in_pane(app, pilot, "6", "#runs-table", 1, "m")
        await pilot.press("enter")
        await wait_until(pilot, lambda: "fine-tune" in str(app.query_one("#runs-chart").render()))
        drawn = str(app.query_one("#runs-chart").render())
        assert "pretrain" in drawn and "fine-tune" in drawn and "step" in drawn
    pre, ft = run_curves(app.cfg.locations.run("m"))
    assert (pre.stage, ft.stage) == ("pretrain", "finetune")
    assert min(ft.xs) > max(pre.xs)  # the fine-tune is drawn after its pretrain, not on top of it


async def test_setup_shows_the_selected_stage_in_full_at_80x24(with_model):
    app = PaneHost(SetupPane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await select_in_pane(app, pilot, "1", "#pipeline", 7, "pretrain")
        await pilot.pause()
        detail = text_of(app, "#pipeline-detail")
        assert detail.startswith("pretrain: ") and "— run m, step " in detail and "best val loss" in detail


async def test_enter_on_a_done_stage_asks_before_running_it_again_at_80x24(trained):
    from acm_tui.confirm import Confirm

    app = AcmApp(trained / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        setup, tokenizer = app.query_one("#setup-pane"), app.query_one("#tokenizer-pane")
        tabs = app.query_one("#panes", TabbedContent)
        await wait_until(pilot, lambda: "tokenizer" in setup.statuses)
        assert (setup.statuses["prepare"].state, setup.statuses["tokenizer"].state) == ("not started", "done")
        stages = app.query_one("#pipeline", DataTable)
        select_row(stages, "prepare")
        await pilot.press("enter")  # not done: runs without asking
        await wait_until(pilot, lambda: tabs.active == "tokenizer")
        assert not isinstance(app.screen, Confirm)
        await wait_until(pilot, lambda: "token shards ready" in text_of(app, "#tokenizer-pane .step-status"))
        await pilot.press("1")
        select_row(stages, "tokenizer")
        await pilot.press("enter")
        assert isinstance(app.screen, Confirm)
        await pilot.press("n")
        await pilot.pause()
        assert tabs.active == "setup" and tokenizer.step_cancel is None
        await pilot.press("enter")
        await pilot.press("y")
        await wait_until(pilot, lambda: "tokenizer trained" in text_of(app, "#tokenizer-pane .step-status"))
        assert tabs.active == "tokenizer"


async def test_runs_pane_shows_the_lowest_check_and_says_which_settings_it_could_not_read_at_80x24(with_model):
    from core.paths import Paths
    from core.runs import checkpoint

    m = with_model / "runs" / "m"
    top = checkpoint.best(Paths.checkpoints(m, "finetune"))
    check_between_checkpoints(m, "finetune", 5, top.val_loss - 0.25)  # lower than any stage's checkpoint
    fake_run(with_model, "b", [(1, 100, 4.0)], []).joinpath("config.toml").write_text("not [toml")
    tasks = [{"prompt": t.prompt, "expect": t.expect} for t in config.load(m / "config.toml").eval.tasks[:-1]]
    fake_run(with_model, "c", [(1, 100, 4.0)], [], eval__tasks=tasks)
    app = PaneHost(RunsPane, with_model / "acm.toml")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await select_in_pane(app, pilot, "6", "#runs-table", 3, "m")
        table = app.query_one("#runs-table", DataTable)
        assert str(table.get_row("m")[4]) == f"{top.val_loss - 0.25:.4f} (checkpoint {top.val_loss:.4f})"
        for name in ("m", "b", "c"):
            select_row(table, name)
            await pilot.press("space")
        await pilot.press("c")
        await notified(pilot, "run b: its settings could not be read (")
        diff = app.query_one("#runs-diff", DataTable)
        await wait_until(pilot, lambda: diff.row_count > 0)
        assert [str(c.label) for c in diff.columns.values()] == ["setting", "m", "c"]
        rows = {row[0]: row[1:] for row in (list(map(str, diff.get_row_at(i))) for i in range(diff.row_count))}
        assert [cell.split(", digest ")[0] for cell in rows["eval.tasks"]] == [f"{len(tasks) + 1} items",
                                                                               f"{len(tasks)} items"]


async def test_runs_pane_compares_marked_runs_by_step_or_tokens_over_their_settings_at_80x24(project):
    fake_run(project, "a", [(1, 100, 4.0), (2, 200, 3.5), (3, 300, 3.0), (4, 400, 2.5)], [(2, 3.6), (4, 2.7)])
    fake_run(project, "b", [(1, 200, 3.8), (2, 400, 2.4)], [(1, 3.7), (2, 2.6)], train__pretrain__learning_rate=0.01)
    app = PaneHost(RunsPane, project / "acm.toml")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await select_in_pane(app, pilot, "6", "#runs-table", 2, "a")
        pane, table = app.query_one("#runs-pane", RunsPane), app.query_one("#runs-table", DataTable)
        await pilot.press("space", "c")
        await notified(pilot, "mark two runs or more with space to compare them (1 marked)")
        select_row(table, "b")
        await pilot.press("space")
        assert pane.marked == ["a", "b"] and str(table.get_row("b")[0]) == "● b"
        await pilot.press("c")
        chart = app.query_one("#runs-chart")
        await wait_until(pilot, lambda: "a pretrain" in str(chart.render()) and "b pretrain" in str(chart.render()))
        assert "loss (smoothed 0.6): a vs b" in str(chart.render()) and "step" in str(chart.render())
        diff = app.query_one("#runs-diff", DataTable)
        assert [str(c.label) for c in diff.columns.values()] == ["setting", "a", "b"]
        rows = [list(map(str, diff.get_row_at(i))) for i in range(diff.row_count)]
        assert rows == [["train.pretrain.learning_rate", "0.001", "0.01"]]
        assert shown_in_full(app, "#runs-diff")
        await pilot.press("l")  # the losses at aligned points instead, as `acm runs compare` prints them
        await wait_until(pilot, lambda: [str(c.label) for c in diff.columns.values()] == ["loss", "a", "b"])
        rows = [list(map(str, diff.get_row_at(i))) for i in range(diff.row_count)]
        assert rows == [["pretrain: last train loss", "2.5000", "2.4000"], ["pretrain: at step", "4", "2"],
                        ["pretrain: best val loss", "2.7000", "2.6000"], ["pretrain: val loss at step 2", "3.6000",
                                                                          "2.6000"]]
        await pilot.press("a")
        await wait_until(pilot, lambda: "tokens seen" in str(chart.render()))
        await wait_until(pilot, lambda: str(diff.get_row_at(1)[0]) == "pretrain: at tokens seen")
        assert [str(c) for c in diff.get_row_at(1)] == ["pretrain: at tokens seen", "400", "400"]
        await pilot.press("l")
        await wait_until(pilot, lambda: [str(c.label) for c in diff.columns.values()] == ["setting", "a", "b"])
        select_row(table, "a")
        await pilot.press("space")  # unmarked: c refuses again, the chart stays
        assert pane.marked == ["b"] and str(table.get_row("a")[0]) == "a"


async def test_v_shows_the_selected_runs_samples_every_check_newest_first_and_follows_the_cursor(project):
    """`acm runs samples RUN` in the Runs pane: the stage the run is on, each check's scripts under
    their verdicts, the newest check first; another run's once the cursor moves; the chart again on v."""
    import json

    from core.paths import Paths
    from core.runs import write_status
    from core.runs.events import Sample

    def with_samples(name: str, checks: dict[int, str]) -> None:
        run = fake_run(project, name, [(1, 100, 4.0)], [(1, 3.9)], stage="finetune")
        write_status(run, "finetune", "done", step=10, total=10)
        lines = [Sample(stage="finetune", step=step, prompt="#!/bin/bash\n# Back up /etc\n", text=text,
                        parses=True, shellcheck_errors=None, complete=True, relevant=False, seconds=0.5).to_json()
                 for step, text in checks.items()]
        Paths.samples(run, "finetune").write_text("".join(json.dumps(line) + "\n" for line in lines))

    with_samples("a", {5: "echo early\n", 10: "tar czf /tmp/etc.tgz /etc\n"})
    with_samples("b", {3: "cp -r /etc /backup\n"})
    fake_run(project, "c", [], [])  # no stage begun
    app = PaneHost(RunsPane, project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await select_in_pane(app, pilot, "6", "#runs-table", 3, "a")
        await pilot.press("v")
        await wait_until(pilot, lambda: "tar czf" in text_of(app, "#runs-samples-text"))
        shown = text_of(app, "#runs-samples-text")
        assert shown.startswith("run a, fine-tune") and shown.index("step 10") < shown.index("step 5")
        assert "echo early" in shown and "✓ parses  ✓ complete  ✗ relevant" in shown
        assert not app.query_one("#runs-chart").display
        select_row(app.query_one("#runs-table", DataTable), "b")
        await wait_until(pilot, lambda: "cp -r /etc /backup" in text_of(app, "#runs-samples-text"))
        assert "tar czf" not in text_of(app, "#runs-samples-text")
        select_row(app.query_one("#runs-table", DataTable), "c")
        await wait_until(pilot, lambda: text_of(app, "#runs-samples-text").startswith("run c: not trained yet"))
        await pilot.press("v")
        assert app.query_one("#runs-chart").display and not app.query_one("#runs-samples").display
        await pilot.press("v")
        select_row(app.query_one("#runs-table", DataTable), "a")
        await pilot.press("enter")  # curves asked for: the chart comes back where the samples stood
        assert app.query_one("#runs-chart").display and not app.query_one("#runs-samples").display


async def test_a_long_run_name_gone_leaves_the_run_list_as_narrow_as_its_names(project):
    """The run list's columns only grew: one 100-character name, renamed since, kept every other
    column off an 80-column screen until the app restarted."""
    from core import runs

    fake_run(project, "a", [(1, 100, 4.0)], [(1, 3.9)])
    app = PaneHost(RunsPane, project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await select_in_pane(app, pilot, "6", "#runs-table", 1, "a")
        pane, table = app.query_one("#runs-pane", RunsPane), app.query_one("#runs-table", DataTable)
        runs.rename_run(project / "runs" / "a", "x" * 100)
        pane.action_reload()
        await wait_until(pilot, lambda: table.row_count == 1 and table.get_row_at(0)[0].plain == "x" * 100)
        runs.rename_run(project / "runs" / ("x" * 100), "ok_name-1")
        pane.action_reload()
        await wait_until(pilot, lambda: table.get_row_at(0)[0].plain == "ok_name-1")
        await pilot.pause()
        assert max(column.get_render_width(table) for column in table.columns.values()) < 30
        assert "modified" in table.render_line(0).text  # the last column in view again
