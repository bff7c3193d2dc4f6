from __future__ import annotations

from textual.widgets import DataTable

from acm_tui.panes.tokenizer import TokenizerPane
from tests.helpers import shown_in_full, text_of, wait_until
from tests.pane_host import PaneHost


async def test_probe_updates_as_you_type_in_view_at_80x24_and_prepare_runs(trained):
    app = PaneHost(TokenizerPane, trained / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        pane = app.query_one("#tokenizer-pane")
        await wait_until(pilot, lambda: pane.tokenizer is not None)
        assert "vocab 1,024" in text_of(app, "#tokenizer-info")
        await pilot.press("i")
        await pilot.press(*"echo hi")
        await wait_until(pilot, lambda: "chars/token" in text_of(app, "#probe-ids"))
        assert text_of(app, "#probe-tokens").replace("·", "") == "echo hi"
        await wait_until(pilot, lambda: shown_in_full(app, "#probe-ids"))  # below the fold: scrolled to
        assert shown_in_full(app, "#probe-input")
        await pilot.press("escape", "s")  # leave the input; prepare the shards
        shards = app.query_one("#token-shards", DataTable)
        await wait_until(pilot, lambda: "token shards ready" in text_of(app, "#tokenizer-pane .step-status"))
        await wait_until(pilot, lambda: shards.row_count == 2 and shards.get_row_at(1)[6] == "ready")


async def test_train_from_the_pane(trained):
    (trained / "data" / "tokenizer" / "tokenizer.json").unlink()
    app = PaneHost(TokenizerPane, trained / "acm.toml")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("3")
        await wait_until(pilot, lambda: "not trained yet" in text_of(app, "#tokenizer-info"))
        await pilot.press("t")
        await wait_until(pilot, lambda: "tokenizer trained" in text_of(app, "#tokenizer-pane .step-status"))
        await wait_until(pilot, lambda: "vocab 1,024" in text_of(app, "#tokenizer-info"))
