"""The Setup pane: the doctor report, the preset table and the architecture test."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from core import runs
from core.config import parse_duration
from core.devices import Reading, read_devices
from core.errors import AcmError
from core.escapes import visible
from core.model.check import architecture_test
from core.pipeline import doctor
from core.pipeline.overview import StageStatus, pipeline_status, run_remaining, training_progress
from core.pipeline.tables import (
    DEVICE_COLUMNS,
    DOCTOR_COLUMNS,
    PRESET_COLUMNS,
    STATE_STYLES,
    device_cells,
    devices_source,
    doctor_row,
    plain,
    preset_row,
)
from core.presets import PRESETS, human_count
from core.train.trainer import Control

from ..confirm import Ask, Confirm
from ..messages import (
    EngineResult,
    EvaluateRun,
    FetchCorpus,
    PaneRequest,
    PrepareShards,
    StartTraining,
    TrainTokenizer,
)
from .base import CANCEL_BINDING, Pane

# each stage's request to the pane that runs it (a fresh one each time: a message is posted once)
STAGE_REQUESTS: dict[str, Callable[[], PaneRequest]] = {
    "data-language": partial(FetchCorpus, "language"), "data-code": partial(FetchCorpus, "code"),
    "tokenizer": TrainTokenizer, "prepare": PrepareShards,
    "pretrain": partial(StartTraining, "pretrain"), "finetune": partial(StartTraining, "finetune"),
    "evaluate": EvaluateRun,
}
DOCTOR_ORDER = (0, 2, 1)  # check, status, found: the found value can run past 80 columns, the status must not


class StageTable(DataTable):
    """The stage list, which has the focus: the footer names what its enter does."""

    BINDINGS = [Binding("enter", "select_cursor", "Run stage", tooltip="Run the pipeline stage under the cursor")]


def run_chain(cfg, report, cancel, on_engine, control, ready, time_s=None):
    """Every remaining stage; the bar follows the running one, training stages included; the
    engine readied while the shards are made (`ready`); `time_s`, a budget the training stages
    share as `acm pipeline run --time` shares it."""
    return run_remaining(cfg, report, cancel, on_engine, training_progress(report), control, time_s, ready=ready)


class SetupPane(Pane):
    TITLE = "Setup"
    FOCUS = "#pipeline"
    BINDINGS = [
        CANCEL_BINDING,
        Binding("enter", "run_selected", "Run stage", tooltip="Run the pipeline stage under the cursor"),
        Binding("a", "run_all", "Run the rest", tooltip="Run every stage that is not done, in order"),
        Binding("A", "run_all_within", "Timed",
                tooltip="Run every stage that is not done within a wall-clock budget (acm pipeline run --time)"),
        Binding("r", "refresh_doctor", "Re-check", tooltip="Run the environment checks and read the devices again"),
        Binding("t", "model_test", "Test model", tooltip="Forward a (2, 128) batch through the selected preset"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.chain_control: Control | None = None  # the training stage of a running chain
        self.statuses: dict[str, StageStatus] = {}

    def compose(self) -> ComposeResult:
        yield Static("Pipeline: [b]enter[/b] runs a stage, [b]a[/b] the rest ([b]A[/b]: timed), [b]x[/b] cancels, "
                     "[b]?[/b] keys", classes="heading")
        yield StageTable(id="pipeline", cursor_type="row", zebra_stripes=True)
        yield Static("", id="pipeline-detail")
        yield from self.compose_step()
        yield Static("Environment ([b]acm doctor[/b])", classes="heading")
        yield DataTable(id="doctor", cursor_type="row", zebra_stripes=True)
        yield Static("", id="doctor-summary")
        yield Static("Devices ([b]acm devices[/b])", id="devices-heading", classes="heading")
        yield DataTable(id="devices", cursor_type="none", zebra_stripes=True)
        yield Static("", id="devices-note")
        yield Static("Model presets ([b]acm presets[/b]); select one and press [b]t[/b] to test it",
                     classes="heading")
        yield DataTable(id="presets", cursor_type="row", zebra_stripes=True)
        yield Static("", id="model-test")

    def disk_changed(self) -> None:
        self.refresh_pipeline()

    def on_mount(self) -> None:
        self.query_one("#pipeline", DataTable).add_columns("stage", "state", "details")
        self.refresh_pipeline()
        self.set_interval(2.0, self.refresh_pipeline)
        self.query_one("#doctor", DataTable).add_columns(*(DOCTOR_COLUMNS[i] for i in DOCTOR_ORDER))
        self.query_one("#devices", DataTable).add_columns(*DEVICE_COLUMNS)
        presets = self.query_one("#presets", DataTable)
        presets.add_columns(*PRESET_COLUMNS)
        for p in PRESETS.values():
            presets.add_row(*preset_row(p), key=p.name)
        presets.move_cursor(row=list(PRESETS).index(self.cfg.model.preset))
        self.action_refresh_doctor()

    # ------------------------------------------------------------ pipeline

    @work(thread=True, exclusive=True, group="pipeline-status", exit_on_error=False)
    def refresh_pipeline(self) -> None:
        self.app.call_from_thread(self._show_pipeline, pipeline_status(self.cfg))

    def _show_pipeline(self, statuses: list[StageStatus]) -> None:
        table = self.query_one("#pipeline", DataTable)
        row = table.cursor_row
        table.clear()
        for st in statuses:
            table.add_row(st.label, Text(st.state, style=STATE_STYLES.get(st.state, "")), plain(st.detail),
                          key=st.name)
        self.statuses = {st.name: st for st in statuses}
        if statuses:
            table.move_cursor(row=min(row, len(statuses) - 1))
            self._show_detail(table)

    @on(DataTable.RowHighlighted, "#pipeline")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail(event.data_table)

    def _show_detail(self, table: DataTable) -> None:
        """The selected stage's details in full, wrapped: the table's column is cut at 80 columns."""
        st = self.statuses.get(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        if st is not None:
            self.query_one("#pipeline-detail", Static).update(
                Text(visible(f"{st.label}: {st.state}" + (f" — {st.detail}" if st.detail else "")), style="dim"))

    @on(DataTable.RowSelected, "#pipeline")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.action_run_selected()

    def action_run_selected(self) -> None:
        """Run the stage under the cursor in its pane; a done stage asks first, since running it again
        makes the stages after it stale."""
        table = self.query_one("#pipeline", DataTable)
        if table.row_count == 0:
            return
        if self.chain_control is not None:  # one stage at a time: the chain's own run each in turn
            self.notify("the remaining stages are running (a): wait for them, or stop them with x", severity="warning")
            return
        name = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        request = STAGE_REQUESTS[name]()
        st = self.statuses.get(name)
        if st is None or st.state != "done":
            self.app.post_message(request)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.post_message(request)

        self.app.push_screen(Confirm(f"{st.label} is done. Run it again? The stages after it become stale."),
                             answered)

    def action_run_all(self, time_s: float | None = None) -> None:
        if not self._chain_may_start():
            return
        # the Train pane finds the chain's training stages on disk and follows them
        self.chain_control = Control()
        within = f" within {time_s:g} s" if time_s else ""
        if not self.start_step(f"running the remaining stages{within}", run_chain,
                               partial(self.app.engine.call_named, "stages"), self.chain_control,
                               partial(self.app.ready_the_engine, shards_due=True), time_s):
            self.chain_control = None

    def _chain_may_start(self) -> bool:
        if self.chain_control is not None:
            self.notify("the remaining stages are running already: stop them with x", severity="warning")
            return False
        if runs.live_stage(self.cfg) is not None:
            self.notify("training is running: stop it first", severity="warning")
            return False
        return True

    def action_run_all_within(self) -> None:
        """A: the remaining stages within a wall-clock budget asked for here, the training stages
        sharing what the data stages leave of it, evaluation keeping its share."""
        if not self._chain_may_start():
            return

        def answered(text: str | None) -> None:
            if text is None:
                return
            try:
                seconds = parse_duration(text, "the time budget")
            except AcmError as e:
                self.notify(str(e), severity="error")
                return
            self.action_run_all(seconds)

        self.app.push_screen(Ask("Run every remaining stage within (90s, 10m, 1h30m; the training stages share "
                                 "what the data stages leave, evaluation keeps its share):"), answered)

    def step_done(self, name: str, done: list[str]) -> None:
        self._status(f"[green]ran: {', '.join(done) or 'nothing (every stage is done)'}[/]")
        self.step_ended()

    def step_ended(self) -> None:
        self.chain_control = None
        self.refresh_pipeline()

    def action_cancel_step(self) -> None:
        if self.step_cancel is not None and self.chain_control is not None:
            self.chain_control.stop()  # a chain inside training stops it with a checkpoint
        super().action_cancel_step()

    def stop_work(self) -> None:
        if self.chain_control is not None:  # quitting mid-chain: a training stage stops with a checkpoint
            self.chain_control.stop()
        super().stop_work()

    # ------------------------------------------------------------ environment

    def action_refresh_doctor(self) -> None:
        self.query_one("#doctor-summary", Static).update("checking…")
        self.run_on_engine("doctor", doctor.run_checks, self.cfg)
        self.read_devices()

    @work(thread=True, exclusive=True, group="setup-devices", exit_on_error=False)
    def read_devices(self) -> None:
        """The devices as `acm devices` reads them, off the UI thread: nvidia-smi can take seconds."""
        self.app.call_from_thread(self._show_devices, read_devices())

    def _show_devices(self, reading: Reading) -> None:
        self.query_one("#devices-heading", Static).update(f"Devices ([b]acm devices[/b]: {devices_source(reading)})")
        table = self.query_one("#devices", DataTable)
        table.clear()
        for device in reading.devices:
            table.add_row(*map(plain, device_cells(device)))
        self.query_one("#devices-note", Static).update(Text(reading.note or "", style="dim"))

    def action_model_test(self) -> None:
        presets = self.query_one("#presets", DataTable)
        name = presets.coordinate_to_cell_key(presets.cursor_coordinate).row_key.value
        self._model_test(f"testing {name}: building and running a forward pass…")
        self.run_on_engine("model-test", architecture_test, PRESETS[name])

    def _model_test(self, text: str | Text) -> None:
        """The result sits under the presets, below the fold at 80x24: the page scrolls to it."""
        out = self.query_one("#model-test", Static)
        out.update(text)
        out.call_after_refresh(out.scroll_visible, animate=False)  # at its new height

    @on(EngineResult)
    def show_result(self, message: EngineResult) -> None:
        error = message.future.exception()
        if message.job == "doctor":
            self._show_doctor(message.future.result() if error is None else [], error)
        elif message.job == "model-test":
            self._show_model_test(message.future.result() if error is None else None, error)

    def _show_doctor(self, checks: list[doctor.Check], error: BaseException | None) -> None:
        table = self.query_one("#doctor", DataTable)
        table.clear()
        for c in checks:
            cells = doctor_row(c)
            table.add_row(*(cells[i] for i in DOCTOR_ORDER))
        summary = self.query_one("#doctor-summary", Static)
        if error is not None:
            summary.update(Text(f"checks failed: {error}", style="red"))
        elif doctor.healthy(checks):
            summary.update(Text("ready", style="green"))
        else:  # a fix such as pip install -e '.[shellcheck]': text, not markup
            summary.update(Text.assemble(("not ready: ", "red"),
                                         visible("; ".join(f"{c.name}: {c.fix}" for c in checks if not c.ok))))

    def _show_model_test(self, r: dict | None, error: BaseException | None) -> None:
        if error is not None:
            self._model_test(Text(f"model test failed: {error}", style="red"))
            self.notify(str(error), title="Model test failed", severity="error")
            return
        self._model_test(
            f"[b]{r['preset']}[/b] on {r['device']}: input {tuple(r['input_shape'])} -> output "
            f"{tuple(r['output_shape'])}, {human_count(r['parameters'])} parameters, "
            f"~{r['memory_bytes'] / 2**30:.2f} GB (FP32), forward {r['forward_ms']:.1f} ms, "
            f"~{r['tokens_per_s']:,.0f} tokens/s"
        )
