from __future__ import annotations

from textual.widgets import DataTable

from acm_tui.panes.tokenizer import TokenizerPane
from tests.helpers import eventually, shown_in_full, text_of, wait_until
from tests.pane_host import PaneHost


async def open_probe(app, pilot) -> None:
    """The Tokenizer pane, its tokenizer loaded, the probe's input focused (i)."""
    await pilot.press("3")
    pane = app.query_one("#tokenizer-pane")
    await wait_until(pilot, lambda: pane.tokenizer is not None)
    await pilot.press("i")


async def test_probe_updates_as_you_type_in_view_at_80x24_and_prepare_runs(trained):
    app = PaneHost(TokenizerPane, trained / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_probe(app, pilot)
        assert "vocab 1,024" in text_of(app, "#tokenizer-info")
        await pilot.press(*"echo hi")
        await wait_until(pilot, lambda: "chars/token" in text_of(app, "#probe-ids"))
        assert text_of(app, "#probe-tokens").replace("·", "") == "echo hi"
        await wait_until(pilot, lambda: shown_in_full(app, "#probe-ids"))  # below the fold: scrolled to
        assert shown_in_full(app, "#probe-input")
        await pilot.press("escape", "s")  # leave the input; prepare the shards
        shards = app.query_one("#token-shards", DataTable)
        await wait_until(pilot, lambda: "token shards ready" in text_of(app, "#tokenizer-pane .step-status"))
        await wait_until(pilot, lambda: shards.row_count == 2 and shards.get_row_at(1)[6] == "ready")


async def test_a_long_paste_into_the_probe_draws_its_first_tokens_and_counts_them_all(trained):
    from textual.widgets import Input

    from acm_tui.panes.tokenizer import IDS_SHOWN, PROBE_SHOWN

    app = PaneHost(TokenizerPane, trained / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_probe(app, pilot)
        app.query_one("#probe-input", Input).value = "é" * 20000  # a paste: one token a byte or more
        await wait_until(pilot, lambda: f"(the first {PROBE_SHOWN:,} shown)" in text_of(app, "#probe-ids"))
        count = int(text_of(app, "#probe-ids").split(" tokens (the first")[0].split()[-1].replace(",", ""))
        assert count > PROBE_SHOWN and len(text_of(app, "#probe-tokens").replace("·", "")) < 3 * PROBE_SHOWN
        assert text_of(app, "#probe-ids").startswith(f"{count:,} tokens")  # the count before the ids, in view
        assert f"ids (the first {IDS_SHOWN} of {count:,})" in text_of(app, "#probe-ids")
        assert shown_in_full(app, "#probe-input")  # the input stays where the user types


async def test_e_makes_the_probe_read_escapes_as_the_command_lines_e_does(trained):
    """A line of input holds no new line, the one character bash cannot do without: `\\n` could only
    be a backslash and an n, where `acm tokenizer probe -e` reads a new line. As typed by default
    (bash's own backslashes, `grep '\\bfoo'`, stay), with e as -e reads them."""
    from core import config
    from core.tokenizer.bpe import load_tokenizer

    app = PaneHost(TokenizerPane, trained / "acm.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_probe(app, pilot)
        await pilot.press(*"ls -la\\nwc")
        tok = load_tokenizer(config.load(trained / "acm.toml"))
        typed, read = (tok.probe(text)["count"] for text in ("ls -la\\nwc", "ls -la\nwc"))
        assert typed != read
        await wait_until(pilot, lambda: text_of(app, "#probe-ids").startswith(f"{typed} tokens"))
        await pilot.press("escape", "e")
        await wait_until(pilot, lambda: text_of(app, "#probe-ids").startswith(f"{read} tokens"))
        assert "acm tokenizer probe -e" in text_of(app, "#probe-heading")
        await pilot.press("i", "backspace", "backspace", "backspace", "backspace", "\\")  # an escape half typed
        await wait_until(pilot, lambda: "invalid escape" in text_of(app, "#probe-tokens"))
        await pilot.press("escape", "e")  # as typed again: a backslash is a backslash
        await wait_until(pilot, lambda: "chars/token" in text_of(app, "#probe-ids"))
        assert app.is_running


async def test_train_from_the_pane(trained):
    (trained / "data" / "tokenizer" / "tokenizer.json").unlink()
    app = PaneHost(TokenizerPane, trained / "acm.toml")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("3")
        await wait_until(pilot, lambda: "not trained yet" in text_of(app, "#tokenizer-info"))
        await pilot.press("t")
        await wait_until(pilot, lambda: "tokenizer trained" in text_of(app, "#tokenizer-pane .step-status"))
        await wait_until(pilot, lambda: "vocab 1,024" in text_of(app, "#tokenizer-info"))


class MergingUntilReleased:
    """The Rust trainer's merges, which see no cancel (minutes on a large corpus): here they last
    until the test releases them."""

    def __init__(self, tok, merging, release):
        self.tok, self.merging, self.release = tok, merging, release

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def train_from_iterator(self, texts, trainer):
        list(texts)  # every text read: the merges begin
        self.merging.set()
        self.release.wait(60)
        self.tok.train_from_iterator([], trainer)


async def test_x_cancels_the_tokenizer_at_once_while_it_merges_and_keeps_the_one_in_force(trained, monkeypatch):
    import threading

    from core.tokenizer import bpe

    merging, release = threading.Event(), threading.Event()
    real = bpe.new_bpe

    def merges_until_released(*args):
        tok, trainer = real(*args)
        return MergingUntilReleased(tok, merging, release), trainer

    monkeypatch.setattr(bpe, "new_bpe", merges_until_released)
    before = (trained / "data" / "tokenizer" / "tokenizer.json").read_bytes()
    app = PaneHost(TokenizerPane, trained / "acm.toml")
    try:
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.press("3")
            pane = app.query_one("#tokenizer-pane")
            await pilot.press("t")
            await wait_until(pilot, merging.is_set)
            await pilot.press("q")  # a quit asks first, and says what becomes of a step that is not training
            await wait_until(pilot, lambda: app.screen.__class__.__name__ == "Confirm")
            assert "Tokenizer: a stage is running in this app. Quit anyway? (Tokenizer: cancelled, what was finished " \
                   "is kept)" in text_of(app.screen, "Static")
            await pilot.press("n")
            await wait_until(pilot, lambda: app.screen.__class__.__name__ != "Confirm")
            await pilot.press("x")
            await wait_until(pilot, lambda: "cancelled" in text_of(app, "#tokenizer-pane .step-status"), timeout=5)
            assert not pane.busy() and not release.is_set()  # the merges still run, left to end on their own
            await pilot.press("t")  # a new training waits for nothing, and is told why it cannot start yet
            await wait_until(pilot, lambda: "can't be rebuilt now" in text_of(app, "#tokenizer-pane .step-status"))
    finally:
        release.set()
    assert eventually(lambda: not any(t.name == "acm-step" for t in threading.enumerate()), 30)  # the merges end
    assert (trained / "data" / "tokenizer" / "tokenizer.json").read_bytes() == before  # and wrote nothing
