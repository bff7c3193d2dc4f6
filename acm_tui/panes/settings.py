"""The Settings pane: every acm.toml setting, grouped, edited from the keyboard, validated as you
type with the same messages as the CLI, and saved as `acm config set` saves: only the settings the
file sets change, its comments, order, mode and owner are kept.

The value column is capped (VALUE_WIDTH) so the allowed values stay in view at 80 columns; the
input under the table shows a long value whole.
"""
from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Static

from acm_tui.text_input import TextInput
from core import config
from core.errors import AcmError
from core.pipeline.tables import plain

from .base import Pane

VALUE_WIDTH = 16


class SettingTable(DataTable):
    """The settings, which have the focus: the footer names what their enter does."""

    BINDINGS = [Binding("enter", "select_cursor", "Edit", tooltip="Edit the selected setting")]


class SettingsPane(Pane):
    TITLE = "Settings"
    FOCUS = "#settings-table"
    BINDINGS = [
        Binding("enter", "edit", "Edit", tooltip="Edit the selected setting"),
        Binding("ctrl+r", "reload", "Reload", tooltip="Read acm.toml again"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("[b]enter[/b] edits the selected setting; [b]enter[/b] again saves acm.toml, [b]escape[/b] "
                     "cancels. Saving keeps acm.toml's other values and its comments.", classes="hint")
        yield SettingTable(id="settings-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="settings-help")
        yield TextInput(id="settings-input", placeholder="select a setting and press enter", disabled=True)
        yield Static("", id="settings-error")

    def on_mount(self) -> None:
        table = self.query_one("#settings-table", DataTable)
        table.add_column("setting")
        table.add_column("value", width=VALUE_WIDTH)
        table.add_column("allowed")
        self.fill()

    def fill(self) -> None:
        table = self.query_one("#settings-table", DataTable)
        row = table.cursor_row
        table.clear()
        for key, _default, allowed, _help in config.describe():
            # a value as typed, never read as markup (a path such as "r[/]s")
            table.add_row(key, plain(config.format_value(config.get_value(self.cfg, key))), allowed, key=key)
        table.move_cursor(row=row)

    def selected_key(self) -> str:
        table = self.query_one("#settings-table", DataTable)
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    @on(DataTable.RowHighlighted, "#settings-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value
        allowed, help = {k: (a, h) for k, _, a, h in config.describe()}[key]
        # the description wraps under the table, so the allowed values are never cut off at 80 columns
        self.query_one("#settings-help", Static).update(Text(f"{key}: {help} (allowed: {allowed})", style="dim"))

    @on(DataTable.RowSelected, "#settings-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.action_edit()

    def action_edit(self) -> None:
        box = self.query_one("#settings-input", Input)
        if box.has_focus:
            return
        key = self.selected_key()
        box.disabled = False
        box.value = config.format_value(config.get_value(self.cfg, key)).strip('"')
        box.border_title = key
        box.focus()

    def candidate(self, key: str, text: str) -> tuple[config.Config, list[str]]:
        """The settings with `key` set to `text`, validated (raises ConfigError)."""
        return config.with_value(self.cfg, key, text, source=str(self.app.config_path))

    @on(Input.Changed, "#settings-input")
    def _validate(self, event: Input.Changed) -> None:
        if event.input.disabled:
            return
        error = self.query_one("#settings-error", Static)
        try:
            self.candidate(self.selected_key(), event.value)
            error.update(Text("ok", style="green"))
        except AcmError as e:
            error.update(Text(str(e), style="red"))

    @on(Input.Submitted, "#settings-input")
    def _save(self, event: Input.Submitted) -> None:
        try:
            new, notes = self.candidate(self.selected_key(), event.value)
            new = config.save_settings(new, self.app.config_path, since=self.cfg, key=self.selected_key())
        except AcmError as e:
            self.notify(str(e), title=None if str(e).startswith("not saved") else "Not saved", severity="error")
            return
        self.app.cfg = new
        self.notify(f"{self.selected_key()} saved to {self.app.config_path}"
                    + "".join(f"; also {note}" for note in notes))
        self._close_editor()
        self.fill()

    def on_key(self, event) -> None:
        box = self.query_one("#settings-input", Input)
        if event.key == "escape" and box.has_focus:
            self._close_editor()
            event.stop()

    def _close_editor(self) -> None:
        box = self.query_one("#settings-input", Input)
        box.value, box.disabled = "", True
        self.query_one("#settings-error", Static).update("")
        self.query_one("#settings-table", DataTable).focus()

    def action_reload(self) -> None:
        try:
            self.app.cfg = config.load(self.app.config_path)
        except AcmError as e:
            self.app.show_config_error(str(e))
            self.notify(str(e), title="acm.toml", severity="error")
            return
        self.app.show_config_error(None)
        self.fill()
        self.notify("acm.toml reloaded")
