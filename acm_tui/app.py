"""The acm-tui application: one screen, a tab per pipeline stage, keyboard first."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from core import config
from core.engine import Engine
from core.errors import AcmError

from .panes.data import DataPane
from .panes.generate import GeneratePane
from .panes.train import TrainPane
from .panes.tokenizer import TokenizerPane
from .panes.runs import RunsPane
from .panes.settings import SettingsPane
from .panes.setup import SetupPane

PANES = [SetupPane, DataPane, TokenizerPane, TrainPane, GeneratePane, RunsPane, SettingsPane]


class AcmApp(App):
    """Drives the pipeline: Setup, Data, Tokenizer, Train, Generate; Runs and Settings beside them."""

    CSS_PATH = "app.tcss"
    TITLE = "acm"
    SUB_TITLE = "train a code model with MLX"
    BINDINGS = [
        *(Binding(str(i), f"show_pane('{p.TITLE.lower()}')", p.TITLE, id=f"pane-{p.TITLE.lower()}")
          for i, p in enumerate(PANES, start=1)),
        Binding("question_mark", "toggle_help", "Keys", key_display="?", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, config_path: Path | str = config.CONFIG_NAME):
        super().__init__()
        self.config_path = Path(config_path)
        self.config_error: str | None = None
        try:
            self.cfg = config.load(self.config_path)
        except AcmError as e:
            # the app still opens, on defaults, and says why
            self.config_error = str(e)
            self.cfg = config.from_dict({}, root=self.config_path.parent)
        self.engine = Engine()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"settings not loaded, using defaults: {self.config_error}", id="config-error",
                     classes="shown" if self.config_error else "")
        with TabbedContent(id="panes"):
            for pane in PANES:
                with TabPane(pane.TITLE, id=pane.TITLE.lower()):
                    yield pane(id=f"{pane.TITLE.lower()}-pane")
        yield Footer()

    def on_mount(self) -> None:
        self.action_show_pane("setup")
        if self.config_error:
            self.notify(self.config_error, title="acm.toml", severity="error", timeout=10)

    def action_show_pane(self, pane_id: str) -> None:
        self.query_one("#panes", TabbedContent).active = pane_id
        self.query_one(f"#{pane_id}-pane").focus()

    def action_toggle_help(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def on_unmount(self) -> None:
        # Running engine jobs were asked to stop by their panes; wait for them (a training stage
        # writes its checkpoint first), so no MLX work outlives the app.
        self.engine.shutdown(wait=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="acm-tui", description="The acm terminal UI.")
    p.add_argument("-c", "--config", type=Path, default=Path(os.environ.get("ACM_CONFIG", config.CONFIG_NAME)),
                   help="settings file (default: ./acm.toml, or $ACM_CONFIG)")
    args = p.parse_args(argv)
    AcmApp(args.config).run()


if __name__ == "__main__":
    main()
