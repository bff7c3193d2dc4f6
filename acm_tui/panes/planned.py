"""Panes for stages that are not built yet: they say so plainly instead of pretending."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from .base import Pane


class PlannedPane(Pane):
    """A stage that does not exist yet, with what it will do and its CLI counterpart."""

    PLAN = ""

    def compose(self) -> ComposeResult:
        yield Static(f"[b]{self.TITLE}: not built yet[/b]\n\n{self.PLAN}", classes="planned")


class GeneratePane(PlannedPane):
    TITLE = "Generate"
    PLAN = ("This stage will stream text from a checkpoint with sampling controls, and evaluate "
            "validation loss, perplexity and the share of generated scripts that parse.")
