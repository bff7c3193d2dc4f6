"""The Runs pane: every run with its stages' states; open a run's curves, mark runs and compare
them (their loss curves in one chart, by step or by tokens seen, over a table of the settings that
differ), export a run (mlx, hf, gguf), rename or delete a run (with confirmation)."""
from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Checkbox, DataTable, Input, Label, Select, Static
from textual_plotext import PlotextPlot

from acm_tui.text_input import TextInput
from core import runs
from core.errors import AcmError, one_line
from core.escapes import visible
from core.generate.export import DTYPES as EXPORT_DTYPES
from core.generate.export import FORMATS, export_checkpoint
from core.generate.export.upload import check_repo_id, upload_folder
from core.paths import home_expanded
from core.pipeline.tables import plain
from core.runs import compare
from core.runs.events import read_samples

from ..charts import AXES, STAGE_NAMES, Series, draw, ema
from ..confirm import Ask, Confirm
from ..messages import EngineResult, TrainRun
from ..samples import checks_text
from .base import Pane


class AskExport(ModalScreen[dict | None]):
    """Where, in which format, from which of the run's checkpoints and in which dtype to export a run
    (`acm export`'s choices): the folder is focused, so enter exports as offered; tab reaches the rest."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    CHOICES = (("format", FORMATS, "mlx"), ("stage", ("default", *runs.TRAINING_STAGES), "default"),
               ("checkpoint", ("best", "latest"), "best"), ("dtype", EXPORT_DTYPES, "float32"))

    def __init__(self, run: str, folder: str):
        super().__init__()
        self.run, self.folder = run, folder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog export-dialog"):
            yield Label(f"Export run {visible(self.run)} with a model card: the new folder, then enter. Tab: the "
                        "format (mlx: mlx-lm, hf: transformers, gguf: llama.cpp), the stage (default: its "
                        "fine-tune once it has one), the checkpoint and the dtype:", markup=False)
            yield TextInput(self.folder, id="export-folder")
            with Horizontal(classes="export-choices"):
                for name, options, value in self.CHOICES:
                    yield Select([(o, o) for o in options], value=value, allow_blank=False, id=f"export-{name}")
            with Horizontal(classes="export-upload"):
                yield TextInput(placeholder="upload to a Hub repo: owner/name (empty: none)",
                                id="export-upload")
                yield Checkbox("private", id="export-private")

    def on_mount(self) -> None:
        self.query_one("#export-folder", Input).focus()

    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _chosen(self) -> None:
        """Back to the folder once a choice is made, so that enter exports (on a list it opens the list)."""
        self.query_one("#export-folder", Input).focus()

    @on(Input.Submitted)
    def _submitted(self) -> None:
        folder = self.query_one("#export-folder", Input).value.strip()
        if not folder:  # never a silent close: escape is the way out
            self.notify("name the new folder to export to, or escape to leave", severity="warning")
            return
        chosen = {name: str(self.query_one(f"#export-{name}", Select).value) for name, _, _ in self.CHOICES}
        upload = {"upload": self.query_one("#export-upload", Input).value.strip(),
                  "private": self.query_one("#export-private", Checkbox).value}
        if upload["private"] and not upload["upload"]:
            self.notify("private makes the repository the upload creates private: name the repository too",
                        severity="warning")
            return
        try:
            if upload["upload"]:
                check_repo_id(upload["upload"])
        except AcmError as e:
            self.notify(str(e), severity="error")
            return
        self.dismiss(chosen | upload | {"folder": folder})

    def action_cancel(self) -> None:
        self.dismiss(None)


MARK = "● "  # before a marked run's name: it reads without colour
RUN_COLUMNS = ("run", "preset", "pretrain", "fine-tune", "best val loss", "modified")


class RunTable(DataTable):
    """The run list, which has the focus: the footer names what its enter does."""

    BINDINGS = [Binding("enter", "select_cursor", "Open", tooltip="Show the selected run's loss curves")]

    def action_select_cursor(self) -> None:
        if self.row_count == 0:  # no row to select: the pane says why
            next(a for a in self.ancestors if isinstance(a, RunsPane)).action_open()
            return
        super().action_select_cursor()


RUN_MARKS = (("braille", "x"), ("dot", "o"), ("+", "#"), ("*", "@"), ("-", "%"), ("=", "&"))  # (train, val) a run


class RunsPane(Pane):
    TITLE = "Runs"
    FOCUS = "#runs-table"
    BINDINGS = [
        Binding("enter", "open", "Open", tooltip="Show the selected run's loss curves"),
        Binding("space", "mark", "Mark", tooltip="Mark or unmark the selected run for comparison"),
        Binding("c", "compare", "Compare", tooltip="Overlay the marked runs' curves, with the settings that differ"),
        Binding("o", "overlay", "Overlay", tooltip="Mark the selected run and add it to the chart's runs"),
        Binding("a", "axis", "Axis", tooltip="x axis: step or tokens seen"),
        Binding("v", "samples", "Samples",
                tooltip="The selected run's live samples (train.samples), every check, in place of the chart (toggle)"),
        Binding("l", "toggle_losses", "Losses",
                tooltip="Under compared runs: the losses at aligned points, or the settings that differ (toggle)"),
        Binding("f", "train_run(True)", "Fine-tune", tooltip="Fine-tune the selected run, or go on with its fine-tune"),
        Binding("R", "train_run(False)", "Resume", tooltip="Resume the selected run's latest stage"),
        Binding("x", "export", "Export", tooltip="Write the run as mlx-lm, transformers or GGUF, with a model card"),
        Binding("n", "rename", "Rename"),
        Binding("d", "delete", "Delete"),
        Binding("ctrl+r", "reload", "Reload"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.shown: list[str] = []  # the runs on the chart
        self.marked: list[str] = []  # the runs `c` compares, in the order they were marked
        self.axis = "step"
        self.noted: set[str] = set()  # the notes on the compared runs' settings already notified
        self.upload_to: dict[Future, tuple[str, bool]] = {}  # an export job's Hub repo, and whether private
        self.uploading: list[str] = []  # the Hub repos uploads are sending to
        self.losses_shown = False  # l: the table under compared runs holds their losses, not their settings

    def compose(self) -> ComposeResult:
        yield Static("[b]enter[/b] open a run's curves  [b]space[/b] mark  [b]c[/b] compare the marked  "
                     "[b]o[/b] mark and add to the chart  [b]a[/b] step/tokens  [b]l[/b] losses/settings  "
                     "[b]v[/b] samples  [b]f[/b] fine-tune  [b]R[/b] resume  [b]x[/b] export  [b]n[/b] rename  "
                     "[b]d[/b] delete",
                     classes="hint")
        yield RunTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield PlotextPlot(id="runs-chart")
        with VerticalScroll(id="runs-samples"):
            yield Static("", id="runs-samples-text")
        yield DataTable(id="runs-diff", cursor_type="row", zebra_stripes=True)

    def disk_changed(self) -> None:
        self.action_reload()

    def on_mount(self) -> None:
        self.action_reload()

    def on_show(self) -> None:
        self.action_reload()

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False)
    def action_reload(self) -> None:
        try:
            rows = [runs.summary(r) for r in runs.list_runs(self.cfg)]
        except AcmError as e:
            self.app.call_from_thread(self.notify, str(e), severity="error")
            rows = []
        self.app.call_from_thread(self._fill, rows)

    def _fill(self, rows: list[dict]) -> None:
        table = self.query_one("#runs-table", DataTable)
        row = table.cursor_row
        table.clear(columns=True)  # the widths the rows need now: a long name gone leaves no wide column
        self.run_column = table.add_columns(*RUN_COLUMNS)[0]
        names = {r["name"] for r in rows}
        self.marked = [name for name in self.marked if name in names]
        for r in rows:
            cells = []
            for stage in runs.TRAINING_STAGES:
                st = r["stages"].get(stage)
                cells.append(f"{st['state']} {st['step']}{runs.resumes_from(st)}" if st else "–")
            cells = [r["preset"], *cells, runs.best_val_cell(latest_checked(r)),
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(r["modified"]))]
            table.add_row(self._run_cell(r["name"]), *map(plain, cells), key=r["name"])
        if rows:
            table.move_cursor(row=min(row, len(rows) - 1))
        self.shown = [name for name in self.shown if name in names]
        self.plot()
        if rows and self.query_one("#runs-samples").display:
            self._read_samples(self.selected())

    def _run_cell(self, name: str) -> Text:
        return plain(MARK + name if name in self.marked else name)

    def selected(self) -> str | None:
        """The run under the cursor; None, said, where the list is empty."""
        table = self.query_one("#runs-table", DataTable)
        if table.row_count == 0:
            self.notify("no run yet: train one (p in the Train pane), or a from the Setup pane", severity="warning")
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    @on(DataTable.RowSelected, "#runs-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_samples(self) -> None:
        """The selected run's samples, every check of the stage it is on (`acm runs samples RUN`), in
        place of the chart; the chart again. They follow the cursor while shown."""
        view, chart = self.query_one("#runs-samples"), self.query_one("#runs-chart")
        name = None if view.display else self.selected()
        view.display = name is not None
        chart.display = not view.display
        if name:
            self._read_samples(name)

    @on(DataTable.RowHighlighted, "#runs-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.query_one("#runs-samples").display and event.row_key.value:
            self._read_samples(event.row_key.value)

    @work(thread=True, exclusive=True, group="runs-samples", exit_on_error=False)
    def _read_samples(self, name: str) -> None:
        run = self.cfg.locations.run(name)
        stage = runs.active_stage(run)
        heading = f"run {visible(name)}" + (f", {STAGE_NAMES[stage]}" if stage else ": not trained yet")
        shown = checks_text(read_samples(run, stage) if stage else [], heading)
        self.app.call_from_thread(self.query_one("#runs-samples-text", Static).update, shown)

    def action_train_run(self, finetune: bool) -> None:
        """The selected run trained on, in the Train pane: its fine-tune, or its latest stage resumed."""
        name = self.selected()
        if name:
            self.app.post_message(TrainRun(name, finetune))

    def action_open(self) -> None:
        name = self.selected()
        if name:
            self.shown = [name]
            self._chart_in_view()
            self.plot()

    def _chart_in_view(self) -> None:
        """Curves asked for (enter, c, o): the chart back where `v`'s samples stood."""
        self.query_one("#runs-samples").display = False
        self.query_one("#runs-chart").display = True

    def _set_mark(self, name: str, marked: bool) -> None:
        if marked != (name in self.marked):
            self.marked = self.marked + [name] if marked else [n for n in self.marked if n != name]
            self.query_one("#runs-table", DataTable).update_cell(name, self.run_column, self._run_cell(name),
                                                                 update_width=True)  # the mark fits beside the name

    def action_mark(self) -> None:
        name = self.selected()
        if name:
            self._set_mark(name, name not in self.marked)

    def action_compare(self) -> None:
        if len(self.marked) < 2:
            self.notify(f"mark two runs or more with space to compare them ({len(self.marked)} marked)",
                        severity="warning")
            return
        self.shown = list(self.marked)
        self._chart_in_view()
        self.plot()

    def action_overlay(self) -> None:
        """Mark the selected run and the chart's, and show them all (one run: its curves)."""
        name = self.selected()
        if name:
            for run in dict.fromkeys(self.shown + [name]):
                self._set_mark(run, True)
            self.shown = list(dict.fromkeys(self.shown + [name]))
            self._chart_in_view()
            self.plot()

    def action_axis(self) -> None:
        self.axis = "tokens" if self.axis == "step" else "step"
        self.notify(f"x axis: {AXES[self.axis][0]}")
        self.plot()

    def action_toggle_losses(self) -> None:
        self.losses_shown = not self.losses_shown
        self.notify("under compared runs: " + ("their losses at aligned points (acm runs compare)"
                                               if self.losses_shown else "the settings that differ")
                    + ("" if len(self.shown) > 1 else "; mark two runs or more (space) and compare them (c)"))
        self.plot()

    def plot(self) -> None:
        """Read the shown runs' curves and settings in a thread, then draw them."""
        self._read_curves(list(self.shown), self.axis, self.cfg.ui.smoothing,  # as the Train pane's m last set it
                          self.losses_shown)

    @work(thread=True, exclusive=True, group="runs-chart", exit_on_error=False)
    def _read_curves(self, names: list[str], axis: str, smoothing: float, losses_shown: bool) -> None:
        folders = [self.cfg.locations.run(name) for name in names]
        by_stage = compare.stage_curves(folders, by=axis)  # each run's metrics read once, for the chart and the losses
        series, points = [], []
        for i, name in enumerate(names):
            line, cross = RUN_MARKS[i % len(RUN_MARKS)]
            prefix = f"{visible(name)} " if len(names) > 1 else ""
            for c in compare.placed([curves[i] for curves in by_stage.values()]):
                label = prefix + STAGE_NAMES[c.stage]
                series.append(Series(c.xs, ema(c.losses, smoothing), label, marker=line))
                points.append(Series(c.val_xs, c.val_losses, f"{label} val", marker=cross, points=True))
        diff = compare.settings_diff(folders) if len(names) > 1 else None
        losses = [(f"{STAGE_NAMES[stage]}: {label.strip()}", *cells)
                  for stage, curves in by_stage.items()
                  for label, *cells in compare.loss_rows(curves, axis)] if len(names) > 1 and losses_shown else []
        self.app.call_from_thread(self._draw, names, axis, smoothing, series + points, diff, losses)

    def _draw(self, names: list[str], axis: str, smoothing: float, series: list[Series],
              diff: compare.SettingsDiff | None, losses: list[tuple[str, ...]]) -> None:
        if (names, axis) != (self.shown, self.axis):
            return  # read for a chart since replaced: a newer read draws
        chart = self.query_one("#runs-chart", PlotextPlot)
        title = f"loss{f' (smoothed {smoothing:g})' if smoothing else ''}: " + " vs ".join(map(visible, names))
        draw(chart.plt, title if names else "select a run and press enter, or mark runs and press c", series,
             axis=axis)
        chart.refresh()
        self._show_diff(names, diff)
        if diff is not None and self.losses_shown:
            self._show_losses(names, losses)

    def _show_losses(self, names: list[str], rows: list[tuple[str, ...]]) -> None:
        """In place of the settings: each stage's losses at aligned points, a column a run, as
        `acm runs compare` prints them."""
        table = self.query_one("#runs-diff", DataTable)
        table.clear(columns=True)
        table.add_columns("loss", *map(plain, names))
        table.add_rows([list(map(plain, row)) for row in rows]
                       or [["no run has reported a loss", *("" for _ in names)]])

    def _show_diff(self, names: list[str], diff: compare.SettingsDiff | None) -> None:
        """The settings that differ between the compared runs, a column a run whose settings could be
        read (hidden for one run); what is wrong with a run's config.toml, notified once."""
        table = self.query_one("#runs-diff", DataTable)
        table.clear(columns=True)
        self.set_class(diff is not None, "comparing")
        notes = diff.notes() if diff is not None else []
        for note in notes:
            if note not in self.noted:
                self.notify(note, title="Settings", severity="warning", timeout=10)
        self.noted = set(notes)
        if diff is None:
            return
        read = [s.run.name for s in diff.read]
        table.add_columns("setting", *map(plain, read))
        if diff.rows:
            table.add_rows([list(map(plain, row)) for row in diff.cells()])
        elif len(read) == len(names):
            table.add_row("no setting differs", *("" for _ in read))
        elif len(read) > 1:
            table.add_row("no setting differs between the runs read", *("" for _ in read))
        else:
            table.add_row("settings not compared: unreadable", *("" for _ in read))

    def action_delete(self) -> None:
        name = self.selected()
        if not name:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._delete(name)

        self.app.push_screen(Confirm(f"Delete run {name} and all its checkpoints?"), answered)

    @work(thread=True, group="runs-delete", exit_on_error=False)
    def _delete(self, name: str) -> None:
        """Off the UI thread: removing a run's checkpoints can take seconds."""
        try:
            said = (runs.delete_run(self.cfg.locations.run(name)), "information")
        except AcmError as e:
            said = (str(e), "error")
        self.app.call_from_thread(self._deleted, *said)

    def _deleted(self, said: str, severity: str) -> None:
        self.notify(said, severity=severity)
        self.action_reload()

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

        self.app.push_screen(Ask(f"New name for run {name}:", name), answered)

    def action_export(self) -> None:
        name = self.selected()
        if not name or not self.settings_usable():
            return

        def answered(choice: dict | None) -> None:
            if choice:
                folder = home_expanded(Path(choice["folder"]))  # ~/exports as a shell would read it
                target = folder if folder.is_absolute() else self.app.config_path.parent / folder
                stage = None if choice["stage"] == "default" else choice["stage"]
                self.notify(f"exporting run {name} as {choice['format']} to {target}…")
                job = self.run_on_engine("export", export_checkpoint, self.cfg, target, name, stage,
                                         choice["checkpoint"], choice["dtype"], choice["format"])
                if choice["upload"]:  # its result comes in a message, handled after this returns
                    self.upload_to[job] = (choice["upload"], choice["private"])

        self.app.push_screen(AskExport(name, f"exports/{name}"), answered)

    @on(EngineResult)
    def _exported(self, message: EngineResult) -> None:
        if message.job != "export":
            return
        upload = self.upload_to.pop(message.future, None)  # this export's own, never another's
        try:
            info = message.future.result()
        except Exception as e:  # an AcmError or the system's words: one line, the app stays up
            self.notify(one_line(e), title="Export failed", severity="error", timeout=10)
            return
        self.notify(f"exported {info['preset']} ({info['model_type']}) as {info['format']} to {info['folder']}"
                    + (f"; {info['notice']}" if info.get("notice") else ""), timeout=10)
        if upload is not None:
            self._upload(Path(info["folder"]), *upload)

    def _upload(self, folder: Path, repo: str, private: bool) -> None:
        """The exported folder to the Hub, as `acm export --upload` sends it, on a thread of its own that
        a quit abandons (no commit is made until every file is sent; the folder stays either way)."""
        self.uploading.append(repo)
        self.notify(f"uploading {folder} to {repo}…")

        def send() -> None:
            try:
                said = (f"uploaded {folder} to {upload_folder(folder, repo, private=private)}", "information")
            except AcmError as e:
                said = (str(e), "error")
            with contextlib.suppress(RuntimeError):  # the app has ended meanwhile
                self.app.call_from_thread(self._uploaded, repo, *said)

        threading.Thread(target=send, name="acm-upload", daemon=True).start()

    def _uploaded(self, repo: str, said: str, severity: str) -> None:
        self.uploading.remove(repo)
        self.notify(said, title="Upload" if severity == "information" else "Upload failed", severity=severity,
                    timeout=10)

    def busy(self) -> bool:
        return bool(self.uploading) or super().busy()


def latest_checked(summary: dict) -> dict:
    """The run's latest stage with a validation check (the fine-tune's once it has one): a pretrain's
    language loss and a fine-tune's code loss do not compare, so the lower of the two says nothing."""
    checked = [summary["stages"][s] for s in runs.TRAINING_STAGES
               if (summary["stages"].get(s) or {}).get("best_val_loss") is not None]
    return checked[-1] if checked else {}
