"""The Data pane: fetch each corpus with live progress, see its statistics, browse samples."""
from __future__ import annotations

import re

from rich.syntax import Syntax
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.markup import escape
from textual.widgets import DataTable, Static

from core.data.code import fetch_code
from core.data.corpus import Corpus, corpus_stats
from core.data.language import fetch_language
from core.errors import READ_BACK_ERRORS, AcmError
from core.escapes import visible
from core.pipeline.tables import CORPUS_COLUMNS, code_report_line, corpus_row, plain, sources_line

from ..confirm import Ask
from ..messages import FetchCorpus
from .base import CANCEL_BINDING, Pane

FETCHERS = {"language": fetch_language, "code": fetch_code}


def document_index(typed: str) -> int:
    """The index `acm data show` takes for a document numbered as the pane's title counts them (1:
    the first; -1: the last); anything else is one line."""
    text = typed.strip()
    if re.fullmatch(r"-?[0-9]{19,}", text):
        raise AcmError(f"document {text[:20]}…: a number of {len(text.lstrip('-'))} digits is too long to count by")
    if not re.fullmatch(r"-?[0-9]{1,18}", text) or int(text) == 0:
        raise AcmError(f"document '{visible(text[:20])}': give its number, 1 for the first, -1 for the last")
    number = int(text)
    return number - 1 if number > 0 else number


def _largest(counts: dict, shown: int = 8) -> str:
    """The largest counts as markup (`GPL-3.0 40, MIT 12`), the rest summed: `acm data stats` lists them all."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{escape(visible(k))} {v:,}" for k, v in ranked[:shown])
    rest = sum(v for _, v in ranked[shown:])
    return text + (f", {len(ranked) - shown} more {rest:,}" if rest else "")


class DataPane(Pane):
    TITLE = "Data"
    BINDINGS = [
        CANCEL_BINDING,
        Binding("l", "fetch('language')", "Fetch language", tooltip="Fetch the language corpus (data.language)"),
        Binding("c", "fetch('code')", "Fetch code", tooltip="Fetch the bash corpus (data.code)"),
        Binding("v", "switch_sample", "Language/code", tooltip="Browse the other corpus"),
        Binding("n", "sample(1)", "Next sample"),
        Binding("p", "sample(-1)", "Prev sample"),
        Binding("g", "go_to", "Go to", tooltip="Show a document by its number as the title counts (acm data show "
                                                "KIND INDEX counts from 0)"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sample_kind = "code"
        self.sample_index = 0

    def compose(self) -> ComposeResult:
        yield Static("[b]l[/b] fetch language  [b]c[/b] fetch code  [b]x[/b] cancel  "
                     "[b]v[/b] language/code sample  [b]n[/b]/[b]p[/b] next/previous  [b]g[/b] go to", classes="hint")
        yield Static("Corpora ([b]acm data stats[/b])", classes="heading")
        yield DataTable(id="corpus-stats", cursor_type="none", zebra_stripes=True)
        yield Static("", id="code-report")
        yield from self.compose_step()
        yield Static("Sample", id="sample-title", classes="heading")
        yield Static("", id="sample")

    def disk_changed(self) -> None:
        self.refresh_stats()

    def on_mount(self) -> None:
        self.query_one("#corpus-stats", DataTable).add_columns(*CORPUS_COLUMNS)
        self.refresh_stats()

    # ------------------------------------------------------------ statistics

    @work(thread=True, exclusive=True, group="data-stats", exit_on_error=False)
    def refresh_stats(self) -> None:
        stats = corpus_stats(self.cfg)
        self.app.call_from_thread(self._show_stats, stats)

    def _show_stats(self, stats: dict) -> None:
        table = self.query_one("#corpus-stats", DataTable)
        table.clear()
        for kind in ("language", "code"):
            s = stats.get(kind)
            if s is None:
                table.add_row(kind, "not fetched", "", "", "", "", "")
                continue
            table.add_row(*map(plain, corpus_row(kind, s)))
        report = self.query_one("#code-report", Static)
        try:
            report.update(self._code_report(stats["code"]) if "code" in stats else "")
        except READ_BACK_ERRORS as e:  # a manifest damaged by hand: said here, the pane goes on
            path = self.cfg.locations.corpus_manifest("code")
            report.update(f"[red]{escape(visible(f'{path} is damaged ({e}): fetch the code corpus again'))}[/]")
        if self.sample_kind in stats:
            self.load_sample()
        elif stats:
            self.sample_kind = next(iter(stats))
            self.load_sample()

    @staticmethod
    def _code_report(code: dict) -> str:
        """The code corpus's report as markup: what was kept, by source and category, what failed."""
        r = code["report"]
        failed = [escape(visible(f["name"])) for f in code.get("repos_failed") or []]
        licences = f"\nby licence: {_largest(r['by_licence'])}" if r.get("by_licence") else ""  # recorded since
        return (f"{escape(code_report_line(r))}\n{escape(sources_line(r))}\n"
                f"by category: {_largest(r['by_category'])}{licences}" + (f"\n[red]{len(failed)} repositories failed: "
                                                                        + ", ".join(failed) + "[/]" if failed else ""))

    # ------------------------------------------------------------ fetching

    def action_fetch(self, kind: str) -> None:
        self.start_step(f"fetching {kind}", FETCHERS[kind])

    @on(FetchCorpus)
    def _fetch_requested(self, request: FetchCorpus) -> None:
        self.action_fetch(request.kind)

    def step_done(self, name: str, manifest: dict) -> None:
        s = manifest["stats"]
        self._status(f"[green]{manifest['kind']} corpus ready:[/] {s['documents']:,} documents, "
                     f"{s['bytes'] / 2**20:.2f} MB")
        self.sample_kind, self.sample_index = manifest["kind"], 0
        self.step_ended()

    def step_ended(self) -> None:
        self.refresh_stats()

    # ------------------------------------------------------------ samples

    def action_switch_sample(self) -> None:
        self.sample_kind = "language" if self.sample_kind == "code" else "code"
        self.sample_index = 0
        self.load_sample()

    def action_sample(self, step: int) -> None:
        self.sample_index += step
        self.load_sample()

    def action_go_to(self) -> None:
        def answered(text: str | None) -> None:
            if text is None:
                return
            try:
                self.sample_index = document_index(text)
            except AcmError as e:
                self.notify(str(e), severity="error")
                return
            self.load_sample()

        self.app.push_screen(Ask(f"Show the {self.sample_kind} document numbered (1: the first, -1: the last; "
                                 "past the end, counted round again):"), answered)

    @work(thread=True, exclusive=True, group="data-sample", exit_on_error=False)
    def load_sample(self) -> None:
        kind, index = self.sample_kind, self.sample_index
        try:
            corpus = Corpus.open(self.cfg.locations.corpus(kind), kind)
            row = corpus.row(index)
            n = len(corpus)
        except AcmError as e:
            self.app.call_from_thread(self._show_sample, kind, str(e), None)
            return
        where = "  ".join(f"{k}: {row[k]}" for k in ("source", "licence", "repo", "commit", "category", "origin")
                          if row[k])
        title = f"{kind} sample {index % n + 1:,} of {n:,} — {where}"
        self.app.call_from_thread(self._show_sample, kind, title, row["text"])

    def _show_sample(self, kind: str, title: str, text: str | None) -> None:
        self.query_one("#sample-title", Static).update(Text(visible(title)))
        sample = self.query_one("#sample", Static)
        if text is None:
            sample.update("")
        elif kind == "code":
            sample.update(Syntax(visible(text[:20000], lines=True), "bash", line_numbers=True, word_wrap=True))
        else:
            sample.update(Text(visible(text[:20000], lines=True)))
