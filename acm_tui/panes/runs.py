"""The Runs pane: every run with its stages' states; open a run's curves, overlay two runs' loss
curves in one chart, export a run (mlx, hf, gguf), rename or delete a run (with confirmation)."""
from __future__ import annotations

import time
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, Select, Static
from textual_plotext import PlotextPlot

from core import runs
from core.errors import AcmError, one_line
from core.generate.export import FORMATS, export_checkpoint

from ..charts import draw, ema, stage_series
from ..confirm import Confirm
from ..messages import EngineResult
from .base import Pane


class AskName(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, value: str):
        super().__init__()
        self.question, self.value = question, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, markup=False)
            yield Input(self.value, id="name")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class AskExport(ModalScreen[tuple[str, str] | None]):
    """Where and in which format to export a run: (format, folder), or None (escape)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, run: str, folder: str):
        super().__init__()
        self.run, self.folder = run, folder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Export run {self.run}'s best checkpoint, with a model card. Format "
                        "(mlx: mlx-lm, hf: transformers, gguf: llama.cpp), then the new folder (enter):")
            yield Select([(f, f) for f in FORMATS], value="mlx", allow_blank=False, id="export-format")
            yield Input(self.folder, id="export-folder")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        folder = event.value.strip()
        self.dismiss((str(self.query_one("#export-format", Select).value), folder) if folder else None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class RunsPane(Pane):
    TITLE = "Runs"
    BINDINGS = [
        Binding("enter", "open", "Open", tooltip="Show the selected run's loss curves"),
        Binding("o", "overlay", "Overlay", tooltip="Add the selected run to the chart (two runs at most)"),
        Binding("x", "export", "Export", tooltip="Write the run as mlx-lm, transformers or GGUF, with a model card"),
        Binding("n", "rename", "Rename"),
        Binding("d", "delete", "Delete"),
        Binding("ctrl+r", "reload", "Reload"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.shown: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("[b]enter[/b] open a run's curves  [b]o[/b] overlay it on the chart (two at most)  "
                     "[b]x[/b] export  [b]n[/b] rename  [b]d[/b] delete", classes="hint")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield PlotextPlot(id="runs-chart")

    def disk_changed(self) -> None:
        self.action_reload()

    def on_mount(self) -> None:
        self.query_one("#runs-table", DataTable).add_columns("run", "preset", "pretrain", "fine-tune",
                                                             "best val loss", "modified")
        self.action_reload()

    def on_show(self) -> None:
        self.action_reload()

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False)
    def action_reload(self) -> None:
        rows = [runs.summary(r) for r in runs.list_runs(self.cfg)]
        self.app.call_from_thread(self._fill, rows)

    def _fill(self, rows: list[dict]) -> None:
        table = self.query_one("#runs-table", DataTable)
        row = table.cursor_row
        table.clear()
        for r in rows:
            cells = []
            for stage in runs.TRAINING_STAGES:
                st = r["stages"].get(stage)
                cells.append(f"{st['state']} {st['step']}" if st else "–")
            vals = [st["best_val_loss"] for st in r["stages"].values() if st.get("best_val_loss") is not None]
            table.add_row(r["name"], r["preset"], *cells, f"{min(vals):.4f}" if vals else "",
                          time.strftime("%Y-%m-%d %H:%M", time.localtime(r["modified"])), key=r["name"])
        if rows:
            table.move_cursor(row=min(row, len(rows) - 1))
        self.shown = [name for name in self.shown if name in {r["name"] for r in rows}]
        self.plot()

    def selected(self) -> str | None:
        table = self.query_one("#runs-table", DataTable)
        if table.row_count == 0:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    @on(DataTable.RowSelected, "#runs-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_open(self) -> None:
        name = self.selected()
        if name:
            self.shown = [name]
            self.plot()

    def action_overlay(self) -> None:
        name = self.selected()
        if name and name not in self.shown:
            self.shown = (self.shown + [name])[-2:]
            self.plot()

    def plot(self) -> None:
        chart = self.query_one("#runs-chart", PlotextPlot)
        series, smoothing = [], self.cfg.ui.smoothing  # as the Train pane's m last set it
        for name in self.shown:
            run = self.cfg.locations.run(name)
            records = {stage: runs.read_metrics(run, stage) for stage in runs.TRAINING_STAGES}
            prefix = f"{name} " if len(self.shown) > 1 else ""
            series += [(xs, ema(ys, smoothing), prefix + label) for xs, ys, label in stage_series(
                {s: [r for r in rs if r["type"] == "metrics"] for s, rs in records.items()}, "loss")]
            series += [(xs, ys, prefix + label) for xs, ys, label in stage_series(
                {s: [r for r in rs if r["type"] == "eval"] for s, rs in records.items()}, "val_loss", " val")]
        title = f"loss{f' (smoothed {smoothing:g})' if smoothing else ''}: " + " vs ".join(self.shown)
        draw(chart.plt, title if self.shown else "select a run and press enter", series)
        chart.refresh()

    def action_delete(self) -> None:
        name = self.selected()
        if not name:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                try:
                    runs.delete_run(self.cfg.locations.run(name))
                    self.notify(f"deleted run {name}")
                except AcmError as e:
                    self.notify(str(e), severity="error")
                self.action_reload()

        self.app.push_screen(Confirm(f"Delete run {name} and all its checkpoints?"), answered)

    def action_rename(self) -> None:
        name = self.selected()
        if not name:
            return

        def answered(new: str | None) -> None:
            if new and new != name:
                try:
                    runs.rename_run(self.cfg.locations.run(name), new)
                    self.notify(f"renamed {name} to {new}")
                except AcmError as e:
                    self.notify(str(e), severity="error")
                self.action_reload()

        self.app.push_screen(AskName(f"New name for run {name}:", name), answered)

    def action_export(self) -> None:
        name = self.selected()
        if not name or not self.settings_usable():
            return

        def answered(choice: tuple[str, str] | None) -> None:
            if choice:
                fmt, folder = choice
                target = Path(folder) if Path(folder).is_absolute() else self.app.config_path.parent / folder
                self.notify(f"exporting run {name} as {fmt} to {target}…")
                self.run_on_engine("export", export_checkpoint, self.cfg, target, name, None, "best", "float32", fmt)

        self.app.push_screen(AskExport(name, f"exports/{name}"), answered)

    @on(EngineResult)
    def _exported(self, message: EngineResult) -> None:
        if message.job != "export":
            return
        try:
            info = message.future.result()
        except Exception as e:  # an AcmError or the system's words: one line, the app stays up
            self.notify(one_line(e), title="Export failed", severity="error", timeout=10)
            return
        self.notify(f"exported {info['preset']} ({info['model_type']}) as {info['format']} to {info['folder']}",
                    title="Exported", timeout=10)
