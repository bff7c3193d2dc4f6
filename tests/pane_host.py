"""One pane in a small app: acm-tui's settings, engine, disk watch, keys and layout (header, tab
bar, footer) around a single pane, without the six other panes and the device probe. Starting the
whole app reads every pane's state from disk and runs the Setup pane's checks on the engine; tests
about what one pane does need none of it."""
from __future__ import annotations

from pathlib import Path

from textual import events
from textual.app import ComposeResult
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

import acm_tui.app
from acm_tui.app import DISK_POLL_S, AcmApp
from acm_tui.panes.base import Pane


class PaneHost(AcmApp):
    CSS_PATH = Path(acm_tui.app.__file__).parent / AcmApp.CSS_PATH  # relative to the app's own module

    def __init__(self, pane: type[Pane], config_path: Path | str):
        super().__init__(config_path)
        self.pane_class = pane
        self.pane_id = pane.TITLE.lower()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"settings not loaded, using defaults: {self.config_error}", id="config-error",
                     classes="shown" if self.config_error else "")
        with TabbedContent(id="panes"), TabPane(self.pane_class.TITLE, id=self.pane_id):
            yield self.pane_class(id=f"{self.pane_id}-pane")
        yield Footer()

    def on_mount(self, event: events.Mount) -> None:
        event.prevent_default()  # not the app's own start, which shows Setup and probes the device
        self.end_on_signals()
        self.action_show_pane(self.pane_id)
        self.set_interval(DISK_POLL_S, self.watch_disk)
        self.watch_disk()
