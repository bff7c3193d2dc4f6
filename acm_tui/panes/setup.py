"""The Setup pane: the doctor report, the preset table and the architecture test."""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from core import doctor
from core.model_check import architecture_test
from core.presets import PRESETS, human_count

from ..messages import EngineResult
from .base import Pane


class SetupPane(Pane):
    TITLE = "Setup"
    BINDINGS = [
        Binding("r", "refresh_doctor", "Re-check", tooltip="Run the environment checks again"),
        Binding("t", "model_test", "Test model", tooltip="Forward a (2, 128) batch through the selected preset"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("Environment ([b]acm doctor[/b])", classes="heading")
        yield DataTable(id="doctor", cursor_type="row", zebra_stripes=True)
        yield Static("", id="doctor-summary")
        yield Static("Model presets ([b]acm presets[/b]); select one and press [b]t[/b] to test it",
                     classes="heading")
        yield DataTable(id="presets", cursor_type="row", zebra_stripes=True)
        yield Static("", id="model-test")

    def on_mount(self) -> None:
        self.query_one("#doctor", DataTable).add_columns("check", "found", "status")
        presets = self.query_one("#presets", DataTable)
        presets.add_columns("preset", "params", "layers", "hidden", "heads", "FFN", "context", "vocab", "embeddings")
        for p in PRESETS.values():
            presets.add_row(p.name, human_count(p.param_count()), p.n_layer, p.n_embd, p.n_head, p.n_ffn,
                            p.n_ctx, p.vocab_size, "tied" if p.tie_embeddings else "untied", key=p.name)
        presets.move_cursor(row=list(PRESETS).index(self.cfg.model.preset))
        self.action_refresh_doctor()

    def action_refresh_doctor(self) -> None:
        self.query_one("#doctor-summary", Static).update("checking…")
        self.run_on_engine("doctor", doctor.run_checks, self.cfg)

    def action_model_test(self) -> None:
        presets = self.query_one("#presets", DataTable)
        name = presets.coordinate_to_cell_key(presets.cursor_coordinate).row_key.value
        self.query_one("#model-test", Static).update(f"testing {name}: building and running a forward pass…")
        self.run_on_engine("model-test", architecture_test, PRESETS[name])

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
            style = "green" if c.ok else ("red" if c.required else "yellow")
            table.add_row(c.name, c.value, f"[{style}]{c.status}[/]")
        summary = self.query_one("#doctor-summary", Static)
        if error is not None:
            summary.update(f"[red]checks failed: {error}[/]")
        elif doctor.healthy(checks):
            summary.update("[green]ready[/]")
        else:
            summary.update("[red]not ready:[/] " + "; ".join(f"{c.name}: {c.fix}" for c in checks if not c.ok))

    def _show_model_test(self, r: dict | None, error: BaseException | None) -> None:
        out = self.query_one("#model-test", Static)
        if error is not None:
            out.update(f"[red]model test failed: {error}[/]")
            self.notify(str(error), title="Model test failed", severity="error")
            return
        out.update(
            f"[b]{r['preset']}[/b] on {r['device']}: input {tuple(r['input_shape'])} -> output "
            f"{tuple(r['output_shape'])}, {human_count(r['parameters'])} parameters, "
            f"~{r['memory_bytes'] / 2**30:.2f} GB (FP32), forward {r['forward_ms']:.1f} ms, "
            f"~{r['tokens_per_s']:,.0f} tokens/s"
        )
