from __future__ import annotations

from textual.widgets import DataTable, Input

from acm_tui.app import AcmApp
from acm_tui.panes.data import DataPane
from core import config
from tests.helpers import ROOT, notified, text_of, wait_until
from tests.pane_host import PaneHost
from tests.stand_ins import DEPLOY, script


def use_local_scripts(project, tmp_path, files: dict[str, str]) -> None:
    """Point the project's bash corpus at a folder holding `files`."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name, text in files.items():
        (scripts / name).write_text(text)
    cfg = config.load(project / "acm.toml")
    cfg.data.code.source, cfg.data.code.local_paths = "local", [str(scripts)]
    config.save(cfg, project / "acm.toml")


async def test_fetch_code_shows_stats_and_samples(project, tmp_path):
    use_local_scripts(project, tmp_path, {"deploy.sh": DEPLOY, "backup.sh": script("backup"),
                                          "bad.sh": "#!/bin/bash\nfi\n"})

    app = PaneHost(DataPane, project / "acm.toml")
    async with app.run_test(size=(100, 40), notifications=True) as pilot:
        await pilot.press("2")
        table = app.query_one("#corpus-stats", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2)
        assert table.get_row_at(1)[1] == "not fetched"
        await pilot.press("c")
        await wait_until(pilot, lambda: "code corpus ready" in text_of(app, "#data-pane .step-status"))
        await wait_until(pilot, lambda: str(table.get_row_at(1)[1]) == "2")
        assert "3 raw → 2 valid → 2 unique" in text_of(app, "#code-report")
        await wait_until(pilot, lambda: "code sample 1 of 2" in text_of(app, "#sample-title"))
        await pilot.press("n")
        await wait_until(pilot, lambda: "code sample 2 of 2" in text_of(app, "#sample-title"))
        for typed, shown in (("1", "1 of 2"), ("-1", "2 of 2"), ("3", "1 of 2"), ("0", None), ("two", None),
                             ("9" * 19, "too long"), ("", "nothing typed")):
            await pilot.press("g")  # a document by its number, as `acm data show code INDEX`
            await wait_until(pilot, lambda: app.screen.__class__.__name__ == "Ask")
            app.screen.query_one("#answer", Input).value = typed
            await pilot.press("enter")
            if shown is None:
                await notified(pilot, f"document '{typed}': give its number, 1 for the first, -1 for the last")
            elif shown == "too long":
                await notified(pilot, "a number of 19 digits is too long to count by")
            elif shown == "nothing typed":  # a blank answer is said, never a silent close
                await notified(pilot, "nothing typed: type an answer, or escape to leave")
                assert app.screen.__class__.__name__ == "Ask"
                await pilot.press("escape")
            else:
                await wait_until(pilot, lambda shown=shown: f"code sample {shown}" in text_of(app, "#sample-title"))
        assert "code sample 1 of 2" in text_of(app, "#sample-title")
        await pilot.press("x")  # nothing running: a notice, no crash
        await pilot.pause()


async def test_a_damaged_code_report_is_said_in_the_pane(project, tmp_path):
    """A manifest whose report reads in the wrong shape left the report empty and said nothing (the
    worker's error was dropped)."""
    import json

    use_local_scripts(project, tmp_path, {"deploy.sh": DEPLOY})
    cfg = config.load(project / "acm.toml")
    from core.data.code import fetch_code
    fetch_code(cfg)
    manifest = cfg.locations.corpus_manifest("code")
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"report": {}}))
    app = PaneHost(DataPane, project / "acm.toml")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: "is damaged" in text_of(app, "#code-report"))
        assert "fetch the code corpus again" in text_of(app, "#code-report")
        await wait_until(pilot, lambda: "code sample 1 of 1" in text_of(app, "#sample-title"))  # the pane goes on


async def test_failed_fetch_is_shown_not_raised(project, tmp_path):
    cfg = config.load(project / "acm.toml")
    cfg.data.language.source, cfg.data.language.local_paths = "local", [str(tmp_path / "absent")]
    config.save(cfg, project / "acm.toml")
    app = AcmApp(project / "acm.toml")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("2", "l")
        await wait_until(pilot, lambda: "failed: " in text_of(app, "#data-pane .step-status"))
        assert "does not exist" in text_of(app, "#data-pane .step-status")
        await pilot.press("1")  # the app is still alive and responsive
        await pilot.pause()
        assert app.query_one("#panes").active == "setup"


async def test_panes_follow_a_stage_that_ends_elsewhere(project, tmp_path):
    """A corpus fetched by another process (here: the CLI's code, outside the app) shows up in the
    Data pane, and the header names the preset, the run and the device, without a restart."""
    import os
    import subprocess
    import sys

    use_local_scripts(project, tmp_path, {"deploy.sh": DEPLOY})
    app = AcmApp(project / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        table = app.query_one("#corpus-stats", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2 and table.get_row_at(1)[1] == "not fetched")
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-m", "core.cli", "-c", str(project / "acm.toml"), "data", "fetch", "code"],
                       check=True, capture_output=True, env=env, timeout=120)
        await wait_until(pilot, lambda: str(table.get_row_at(1)[1]) == "1", timeout=15)
        await wait_until(pilot, lambda: "preset nano" in app.sub_title and "run (none yet)" in app.sub_title)


async def test_the_code_report_counts_documents_per_source(project, tmp_path):
    from core.data.code import fetch_code
    from tests.helpers import with_pairs
    from tests.stand_ins import TLDR, write_tree

    fetch_code(with_pairs(project, tmp_path, pairs=["tldr"], tldr_path=str(write_tree(tmp_path / "tldr", TLDR))))
    app = PaneHost(DataPane, project / "acm.toml")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: "by source: tldr 4, local 1" in text_of(app, "#code-report"))
        assert "5 raw → 5 valid → 5 unique" in text_of(app, "#code-report")
        assert "\nby licence: CC-BY-4.0 4, " in text_of(app, "#code-report")  # as `acm data stats` counts them
        await wait_until(pilot, lambda: "source: local" in text_of(app, "#sample-title"))
        await pilot.press("n")
        await wait_until(pilot, lambda: "source: tldr  licence: CC-BY-4.0" in text_of(app, "#sample-title"))


async def test_a_hugging_face_source_is_counted_and_shown(project):
    from core.data.code import fetch_code
    from tests.helpers import HF_SOURCE as SOURCE
    from tests.helpers import hf_project

    fetch_code(hf_project(project, licences="permissive"))
    app = PaneHost(DataPane, project / "acm.toml")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: f"by source: {SOURCE} 2" in text_of(app, "#code-report"))
        assert "4 raw → 3 valid → 2 unique" in text_of(app, "#code-report")
        await wait_until(pilot, lambda: f"source: {SOURCE}  licence: MIT" in text_of(app, "#sample-title"))
        assert "origin: acme/tools/deploy.sh" in text_of(app, "#sample-title")


async def test_a_sample_s_control_characters_and_its_origin_s_newline_are_shown_escaped(project, tmp_path):
    """A script that would retitle the terminal and clear it, in a file whose name holds a newline:
    the title stays on one line and neither sequence is drawn raw."""
    use_local_scripts(project, tmp_path, {"evil\nname.sh": script("backup") + "echo '\x1b]0;PWN\x07\x1b[2J'\n"})
    app = PaneHost(DataPane, project / "acm.toml")
    async with app.run_test(size=(120, 60)) as pilot:
        await pilot.press("2", "c")
        await wait_until(pilot, lambda: "code sample 1 of 1" in text_of(app, "#sample-title"))
        assert text_of(app, "#sample-title").endswith("evil\\nname.sh")
        sample = app.query_one("#sample")
        drawn = [sample.render_line(y).text for y in range(sample.size.height)]
        assert any("echo '\\x1b]0;PWN\\x07\\x1b[2J'" in line for line in drawn), drawn
        assert not any("\x1b" in line for line in drawn)


def test_the_code_report_names_the_largest_counts_and_sums_the_rest():
    from acm_tui.panes.data import _largest

    counts = {"MIT": 5, "GPL-3.0": 5, "[b]odd": 3} | {f"L{i}": 1 for i in range(7)}
    assert _largest(counts) == "GPL-3.0 5, MIT 5, \\[b]odd 3, L0 1, L1 1, L2 1, L3 1, L4 1, 2 more 2"
    assert _largest({"MIT": 1200}) == "MIT 1,200"
