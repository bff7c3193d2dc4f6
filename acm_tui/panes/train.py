"""The Train pane: start, pause, resume, stop and checkpoint training, with live charts.

The trainer runs on the engine thread and appends its events to a thread-safe buffer; a 10 Hz
timer on the UI thread drains it and redraws only when something arrived, so a fast trainer never
floods the UI. Charts: train and val loss (log scale with g), learning rate, tokens/s, memory.
"""
from __future__ import annotations

import collections
import time
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual.widgets import Static
from textual_plotext import PlotextPlot

from core import runs
from core.errors import AcmError
from core.trainer import Control, run_stage

from ..messages import EngineResult
from .base import Pane

REDRAW_S = 0.1


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def duration(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class TrainPane(Pane):
    TITLE = "Train"
    BINDINGS = [
        Binding("p", "start('pretrain')", "Pretrain", tooltip="Pretrain a new run on the language shards"),
        Binding("f", "start('finetune')", "Fine-tune", tooltip="Fine-tune the latest run's best pretrain checkpoint"),
        Binding("R", "resume_run", "Resume run", tooltip="Continue the latest run's latest checkpoint"),
        Binding("space", "pause", "Pause/resume"),
        Binding("s", "stop", "Stop", tooltip="Stop at the next step and write a checkpoint"),
        Binding("c", "save_now", "Checkpoint", tooltip="Write a checkpoint at the next step"),
        Binding("g", "log_scale", "Log scale"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.events: collections.deque = collections.deque()  # appended by the engine thread
        self.control: Control | None = None
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self.state = "idle"
        self.stage = ""
        self.run_name = ""
        self.log_scale = False
        self.redraws = 0

    def compose(self) -> ComposeResult:
        yield Static("[b]p[/b] pretrain  [b]f[/b] fine-tune  [b]R[/b] resume latest run  [b]space[/b] pause/resume  "
                     "[b]s[/b] stop  [b]c[/b] checkpoint now  [b]g[/b] log scale", classes="hint")
        yield Static("", id="train-status")
        with Grid(id="train-charts"):
            yield PlotextPlot(id="chart-loss")
            yield PlotextPlot(id="chart-lr")
            yield PlotextPlot(id="chart-speed")
            yield PlotextPlot(id="chart-memory")
        yield Static("", id="train-log")

    def on_mount(self) -> None:
        self.set_interval(REDRAW_S, self.drain)
        latest = runs.list_runs(self.cfg)
        if latest:
            self.show_history(latest[0])
        else:
            self._status_idle("no runs yet: prepare the token shards (Tokenizer pane), then press p")
        self.replot()

    def on_unmount(self) -> None:
        if self.control is not None:  # quitting mid-run: stop at the next step, with a checkpoint
            self.control.stop()

    # ------------------------------------------------------------ history on disk

    def show_history(self, run: Path) -> None:
        for stage in reversed(runs.STAGES):
            records = runs.read_metrics(run, stage)
            if records:
                self.run_name, self.stage = run.name, stage
                self.history = [r for r in records if r["type"] == "metrics"]
                self.evals = [r for r in records if r["type"] == "eval"]
                self._status_idle(f"run {run.name}, {stage}: {len(self.history)} reports on disk; "
                                  "p starts a new run, R resumes this one")
                return
        self._status_idle(f"run {run.name} has no metrics yet")

    def _status_idle(self, text: str) -> None:
        self.query_one("#train-status", Static).update(Text(text))

    # ------------------------------------------------------------ commands

    def _launch(self, stage: str, run: Path, resume: bool) -> None:
        if self.control is not None:
            self.notify("training is already running: stop it with s first", severity="warning")
            return
        self.control = Control()
        self.events.clear()
        self.history, self.evals = [], []
        self.stage, self.run_name, self.state = stage, run.name, "starting"
        self._status_idle(f"starting {stage} in run {run.name}…")
        self.run_on_engine("train", run_stage, self.cfg, stage, run, self.events.append, self.control, resume)

    def action_start(self, stage: str) -> None:
        try:
            if stage == "pretrain":
                run = runs.run_dir(self.cfg, runs.new_run_name(self.cfg))
            else:
                run = runs.latest_run_with(self.cfg, "pretrain")
                if run is None:
                    raise AcmError("no run has a pretrain checkpoint yet: press p to pretrain first")
        except AcmError as e:
            self.notify(str(e), severity="error")
            return
        self._launch(stage, run, resume=False)

    def action_resume_run(self) -> None:
        for run in runs.list_runs(self.cfg):
            for stage in reversed(runs.STAGES):
                if runs.latest_run_with(self.cfg, stage) == run:
                    self._launch(stage, run, resume=True)
                    return
        self.notify("no run has a checkpoint to resume", severity="warning")

    def action_pause(self) -> None:
        if self.control is None:
            self.notify("nothing is training")
        elif self.control.paused:
            self.control.resume()
        else:
            self.control.pause()

    def action_stop(self) -> None:
        if self.control is None:
            self.notify("nothing is training")
            return
        self.control.stop()
        self.state = "stopping"
        self.refresh_status()

    def action_save_now(self) -> None:
        if self.control is None:
            self.notify("nothing is training")
            return
        self.control.save_now()
        self.notify("a checkpoint will be written after the current step")

    def action_log_scale(self) -> None:
        self.log_scale = not self.log_scale
        self.replot()

    @on(EngineResult)
    def training_ended(self, message: EngineResult) -> None:
        if message.job != "train":
            return
        self.drain()
        self.control = None
        error = message.future.exception()
        if error is None:
            r = message.future.result()
            self.state = "stopped" if r.stopped_early else "done"
            self.notify(f"{r.stage} {self.state} at step {r.step} (run {r.run.name})")
        else:
            self.state = "failed"
            text = str(error) if isinstance(error, AcmError) else f"{type(error).__name__}: {error}"
            self.query_one("#train-log", Static).update(Text(f"failed: {text}", style="red"))
            self.notify(text, title="Training failed", severity="error", timeout=15)
        self.refresh_status()

    # ------------------------------------------------------------ live view

    def drain(self) -> None:
        """Take what the trainer appended since the last tick; redraw if anything came."""
        if not self.events:
            return
        logs = []
        while self.events:
            e = self.events.popleft()
            if e["type"] == "metrics":
                self.history.append(e)
            elif e["type"] == "eval":
                self.evals.append(e)
            elif e["type"] == "state":
                self.state = e["state"]
            elif e["type"] == "log":
                logs.append(e["text"])
        if logs:
            self.query_one("#train-log", Static).update(Text(logs[-1], style="dim"))
        self.refresh_status()
        self.replot()

    def refresh_status(self) -> None:
        m = self.history[-1] if self.history else None
        parts = [f"[b]{self.stage or '–'}[/b] run {self.run_name or '–'}: [b]{self.state}[/b]"]
        if m:
            mfu = f"  MFU {m['mfu']:.1%}" if m.get("mfu") is not None else ""
            parts.append(f"step {m['step']:,}/{m['total']:,}  epoch {m['epoch']:.3f}  ETA {duration(m['eta_s'])}  "
                         f"loss {m['loss']:.4f}  lr {m['lr']:.2e}  {m['tokens_per_s']:,.0f} tok/s{mfu}")
            parts.append(f"memory active {gib(m['memory_active'])} / peak {gib(m['memory_peak'])} / cache "
                         f"{gib(m['memory_cache'])} / limit {gib(m['memory_limit'])} GiB")
        if self.evals:
            parts.append(f"val loss {self.evals[-1]['val_loss']:.4f} (best {self.evals[-1]['best_val_loss']:.4f})")
        self.query_one("#train-status", Static).update("\n".join(parts))

    def replot(self) -> None:
        self.redraws += 1
        steps = [m["step"] for m in self.history]
        self._chart("#chart-loss", "loss" + (" (log)" if self.log_scale else ""),
                    [(steps, [m["loss"] for m in self.history], "train"),
                     ([e["step"] for e in self.evals], [e["val_loss"] for e in self.evals], "val")],
                    log=self.log_scale)
        self._chart("#chart-lr", "learning rate", [(steps, [m["lr"] for m in self.history], "lr")])
        self._chart("#chart-speed", "tokens/s", [(steps, [m["tokens_per_s"] for m in self.history], "tok/s")])
        self._chart("#chart-memory", "memory (GiB)",
                    [(steps, [m["memory_active"] / 2**30 for m in self.history], "active"),
                     (steps, [m["memory_peak"] / 2**30 for m in self.history], "peak")])

    def _chart(self, selector: str, title: str, series: list, log: bool = False) -> None:
        widget = self.query_one(selector, PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(title)
        for xs, ys, label in series:
            if xs:
                plt.plot(xs, ys, label=label, marker="braille")
        if log and any(xs for xs, _, _ in series):
            plt.yscale("log")
        widget.refresh()
