"""The Tokenizer pane: train the tokenizer, probe it as you type, write the token shards."""
from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Static

from acm_tui.text_input import TextInput
from core.errors import AcmError
from core.escapes import unescape
from core.paths import CORPORA
from core.pipeline.tables import (
    SHARD_COLUMNS,
    TOKENIZER_COLUMNS,
    coloured_tokens,
    shard_row,
    tokenizer_rows,
)
from core.tokenizer.bpe import load_meta, load_tokenizer, train_tokenizer
from core.tokenizer.shards import prepare, read_manifest

from ..messages import PrepareShards, TrainTokenizer
from .base import CANCEL_BINDING, Pane

IDS_SHOWN = 100  # ids and byte offsets listed: a few lines, the count above them
PROBE_HEADINGS = {False: "Probe ([b]acm tokenizer probe[/b]; [b]e[/b]: read \\n-style escapes)",
                  True: "Probe ([b]acm tokenizer probe -e[/b]: \\n-style escapes read; [b]e[/b]: as typed)"}
PROBE_SHOWN = 2000  # tokens the probe draws: far more than 80x24 shows, and quick to draw


class TokenizerPane(Pane):
    TITLE = "Tokenizer"
    BINDINGS = [
        CANCEL_BINDING,
        Binding("t", "train(False)", "Train", tooltip="Train the tokenizer on both corpora"),
        Binding("m", "train(True)", "Train+compare", tooltip="Also train one at the original's mix and compare"),
        Binding("s", "prepare(False)", "Prepare shards", tooltip="Tokenize both corpora into token shards"),
        Binding("S", "prepare(True)", "Rebuild shards", tooltip="Rebuild the token shards from scratch"),
        Binding("i", "focus_probe", "Probe", tooltip="Type text to see its tokens"),
        Binding("e", "toggle_escapes", "Escapes", tooltip="Read \\n, \\t, \\x41 in the probe as acm tokenizer probe -e "
                "does, or the text as typed"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = None
        self.escapes = False  # the probe's text as typed, as `acm tokenizer probe` without -e

    def compose(self) -> ComposeResult:
        yield Static("[b]t[/b] train  [b]m[/b] train and compare with the original mix  [b]s[/b] prepare shards  "
                     "[b]S[/b] rebuild shards  [b]i[/b] probe (escape leaves it)  [b]e[/b] escapes  [b]x[/b] cancel",
                     classes="hint")
        yield Static("Tokenizer ([b]acm tokenizer info[/b])", classes="heading")
        yield Static("", id="tokenizer-info")
        yield DataTable(id="tokenizer-eval", cursor_type="none")
        yield Static("Token shards ([b]acm prepare[/b])", classes="heading")
        yield DataTable(id="token-shards", cursor_type="none")
        yield from self.compose_step()
        yield Static(PROBE_HEADINGS[False], classes="heading", id="probe-heading")
        yield TextInput(placeholder="type text to tokenize", id="probe-input")
        yield Static("", id="probe-tokens")
        yield Static("", id="probe-ids")

    def disk_changed(self) -> None:
        self.refresh_info()

    def on_mount(self) -> None:
        self.query_one("#tokenizer-eval", DataTable).add_columns(*TOKENIZER_COLUMNS)
        self.query_one("#token-shards", DataTable).add_columns(*SHARD_COLUMNS, "state")
        self.refresh_info()

    # ------------------------------------------------------------ state on disk

    @work(thread=True, exclusive=True, group="tokenizer-info", exit_on_error=False)
    def refresh_info(self) -> None:
        meta = load_meta(self.cfg)
        try:
            tok = load_tokenizer(self.cfg)
        except AcmError:
            tok = None
        shards = {kind: read_manifest(self.cfg, kind) for kind in CORPORA}
        self.tokenizer = tok
        self.app.call_from_thread(self._show_info, meta, tok, shards)

    def _show_info(self, meta, tok, shards) -> None:
        info = self.query_one("#tokenizer-info", Static)
        table = self.query_one("#tokenizer-eval", DataTable)
        table.clear()
        if meta is None or tok is None:
            info.update("not trained yet: fetch both corpora (Data pane), then press t")
        else:
            mix = meta["mix"]
            info.update(f"vocab {meta['vocab_size']:,}, special tokens "
                        + ", ".join(f"{k}={v}" for k, v in meta["special_tokens"].items())
                        + f"; trained on {(mix['language_chars'] + mix['code_chars']) / 1e6:.1f}M characters, "
                          f"{mix['code_share']:.1%} code; held out: {meta['held_out']['language']} documents, "
                          f"{meta['held_out']['code']} scripts")
            for row in tokenizer_rows(meta):
                table.add_row(*row)
        shard_table = self.query_one("#token-shards", DataTable)
        shard_table.clear()
        for kind, m in shards.items():
            if m is None:
                shard_table.add_row(kind, "not prepared", "", "", "", "", "")
                continue
            state = "ready" if tok is not None and m["tokenizer_sha256"] == tok.sha256 else "stale: press S"
            shard_table.add_row(*shard_row(kind, m), state)
        self.probe(self.query_one("#probe-input", Input).value)

    # ------------------------------------------------------------ steps

    def action_train(self, compare: bool) -> None:
        self.start_step("training the tokenizer", train_tokenizer, compare)

    def action_prepare(self, force: bool) -> None:
        self.start_step("preparing token shards", prepare, force)

    @on(TrainTokenizer)
    def _train_requested(self, request: TrainTokenizer) -> None:
        self.action_train(request.compare)

    @on(PrepareShards)
    def _prepare_requested(self, request: PrepareShards) -> None:
        self.action_prepare(request.force)

    def step_done(self, name: str, result: dict) -> None:
        if "vocab_size" in result:
            self._status(f"[green]tokenizer trained:[/] {result['vocab_size']:,} tokens")
        else:
            total = sum(m["tokens"]["train"] + m["tokens"]["val"] for m in result.values())
            self._status(f"[green]token shards ready:[/] {total:,} tokens")
        self.step_ended()

    def step_ended(self) -> None:
        self.refresh_info()

    # ------------------------------------------------------------ probe

    def action_focus_probe(self) -> None:
        self.query_one("#probe-input", Input).focus()

    def on_key(self, event) -> None:
        if event.key == "escape" and self.query_one("#probe-input", Input).has_focus:
            self.focus()
            event.stop()

    def action_toggle_escapes(self) -> None:
        self.escapes = not self.escapes
        self.query_one("#probe-heading", Static).update(PROBE_HEADINGS[self.escapes])
        self._probe_text(self.query_one("#probe-input", Input).value)

    @on(Input.Changed, "#probe-input")
    def _probe_changed(self, event: Input.Changed) -> None:
        self._probe_text(event.value)

    def _probe_text(self, typed: str) -> None:
        """The text as typed, or with `e` as `acm tokenizer probe -e` reads it (and the Generate pane its
        prompt): `\\n` a new line, which a line of input cannot hold; an escape still being typed is
        said in place."""
        try:
            text = unescape(typed, "the text") if self.escapes else typed
        except AcmError as e:
            self.query_one("#probe-tokens", Static).update(Text(str(e), style="yellow"))
            self.query_one("#probe-ids", Static).update("")
            return
        self.probe(text)

    @work(thread=True, exclusive=True, group="probe", exit_on_error=False)
    def probe(self, text: str) -> None:
        tok = self.tokenizer
        result = tok.probe(text) if tok is not None and text else None
        self.app.call_from_thread(self._show_probe, result, tok is not None)

    def _show_probe(self, r: dict | None, trained: bool) -> None:
        tokens, ids = self.query_one("#probe-tokens", Static), self.query_one("#probe-ids", Static)
        if r is None:
            tokens.update("" if trained else Text("train the tokenizer first (t)", style="yellow"))
            ids.update("")
            return
        shown = r["tokens"][:PROBE_SHOWN]  # a long paste: what a screen holds, drawn without holding the UI up
        more = f" (the first {PROBE_SHOWN:,} shown)" if len(r["tokens"]) > PROBE_SHOWN else ""
        tokens.update(coloured_tokens(shown))
        cut = f" (the first {IDS_SHOWN} of {r['count']:,})" if r["count"] > IDS_SHOWN else ""
        ids.update(Text(f"{r['count']:,} tokens{more}, {r['chars_per_token']} chars/token\n"  # the count in view first
                        f"ids{cut} {r['ids'][:IDS_SHOWN]}\nbytes {r['byte_offsets'][:IDS_SHOWN]}"))
        if self.query_one("#probe-input", Input).has_focus:  # the ids sit below the fold at 80x24
            ids.call_after_refresh(ids.scroll_visible, animate=False)
