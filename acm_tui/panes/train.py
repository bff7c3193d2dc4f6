"""The Train pane: start, pause, resume, stop and checkpoint training, with live charts.

The pane follows a stage through the files its recorder writes (core/runs/events.py), whether it
trains in this app, in a background process or from the CLI: a 10 Hz timer reads what arrived and
redraws only when something did, so a fast trainer never floods the UI. Pause, stop and checkpoint
go through the stage's control file, the same way for every process. Charts: train and val loss
(raw reports and a smoothed curve, m cycling the smoothing; log scale with g), learning rate,
tokens/s, memory, against steps, tokens seen or time (x cycles); sparklines of the gradient norm
and the learning rate; the trainer's health alerts (core/runs/health.py) in a highlighted line;
while a stage trains, one line a device (acm_tui/devices.py). v swaps the charts for the latest
validation check's live samples (train.samples), with their verdicts.
"""
from __future__ import annotations

import math
import os
import time
from functools import partial
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.markup import escape
from textual.widgets import Static
from textual_plotext import PlotextPlot

from core import config, runs
from core.errors import AcmError, one_line
from core.escapes import visible
from core.paths import MANIFEST, Paths
from core.runs import checkpoint, figure
from core.runs.events import Eval, Log, Metrics, Sample, StageFollower, State
from core.runs.health import is_alert
from core.train.detach import launch_detached
from core.train.target import NoRun, training_target
from core.train.trainer import Control, train_stage

from ..charts import AXES, STAGE_NAMES, Series, at_steps, axis_values, draw, ema, next_smoothing, sparkline
from ..confirm import Ask, Confirm
from ..devices import DevicesBlock
from ..messages import EngineResult, StartTraining, TrainRun
from ..samples import samples_text
from .base import Pane

REDRAW_S = 0.1  # how often the followed stage's files are read
# While a stage trains, what arrived is shown at most this often: in the app the trainer shares
# Python with the UI, and drawing every report (one each 165 ms on an H200) cost it 11% of its
# tokens/s (bench/monitor_overhead.py, bench/RESULTS.md). A state change, a finished stage or a key
# shows at once.
STATUS_S = 1.0  # the status line and the sparklines
CHARTS_S = 2.0  # the charts, most of the cost
CHARTS = ("loss", "lr", "speed", "memory")  # the grid's charts, in the order z shows them alone
FIND_S = 1.0  # how often an idle pane looks for a stage that started elsewhere
LIVE = runs.LIVE
SPARK = 24  # reports a sparkline shows
SMOOTHING_KEY = "ui.smoothing"


def in_gib(n: float | None) -> float | None:
    return n / 2**30 if runs.is_number(n) else None  # None: left out of the chart


def gib(n: float | None) -> str:
    return figure(in_gib(n), ".2f")


def duration(s: float | None) -> str:
    if not runs.is_finite(s):
        return "–"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class TrainPane(Pane):
    TITLE = "Train"
    BINDINGS = [
        Binding("p", "start('pretrain')", "Pretrain", tooltip="Pretrain a new run on the language shards"),
        Binding("N", "start_named", "Pretrain named…",
                tooltip="Pretrain a new run under a name you give (acm train pretrain --run NAME)"),
        Binding("f", "start('finetune')", "Fine-tune", tooltip="Fine-tune the latest run's best pretrain checkpoint"),
        Binding("R", "resume_run", "Resume run", tooltip="Continue the latest run's latest checkpoint"),
        Binding("P", "start('pretrain', True)", "Pretrain (background)",
                tooltip="Pretrain a new run as a background process that survives a dropped connection"),
        Binding("F", "start('finetune', True)", "Fine-tune (background)"),
        Binding("D", "resume_run(True)", "Resume (background)",
                tooltip="Continue the latest run's latest checkpoint as a background process"),
        Binding("space", "pause", "Pause/resume"),
        Binding("s", "stop", "Stop", tooltip="Stop at the next step and write a checkpoint"),
        Binding("c", "save_now", "Checkpoint", tooltip="Write a checkpoint at the next step"),
        Binding("g", "log_scale", "Log scale"),
        Binding("m", "smoothing", "Smoothing", tooltip="Cycle the loss curve's smoothing (saved as ui.smoothing)"),
        Binding("x", "x_axis", "X axis", tooltip="Plot against steps, tokens seen or time"),
        Binding("z", "zoom", "Zoom chart", tooltip="One chart over the whole grid, then the next, then all four"),
        Binding("v", "samples", "Samples", tooltip="The latest validation check's sampled scripts, with their "
                                                   "verdicts, instead of the charts (v again: the charts)"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.follower: StageFollower | None = None
        self.control: Control | None = None  # a stage this pane started in the app
        self.history: list[Metrics] = []
        self.evals: list[Eval] = []
        self.samples: list[Sample] = []  # the latest validation check's
        self.state = "idle"
        self.stage = ""
        self.run_name = ""
        self.log_scale = False
        self.smoothing = 0.0  # ui.smoothing, read on mount
        self.axis = "step"
        self.zoomed: str | None = None  # the one chart shown over the whole grid (z)
        self.caught_up = False  # the followed stage's history has been read: alerts from now on are new
        self.redraws = 0
        self.attached: Path | None = None  # the run followed
        self.trained_here = False  # the stage followed trains in this process (set as it is attached)
        self.clock = time.monotonic  # what STATUS_S and CHARTS_S are measured with
        self.shown_at = self.plotted_at = -math.inf
        self.unshown = self.unplotted = False  # arrived since the status / the charts were drawn

    def compose(self) -> ComposeResult:
        yield Static("[b]p[/b]/[b]f[/b] pretrain/fine-tune here  [b]P[/b]/[b]F[/b] in the background  "
                     "[b]R[/b]/[b]D[/b] "
                     "resume here/in the background  [b]space[/b] pause  [b]s[/b] stop  [b]c[/b] checkpoint  "
                     "[b]g[/b] log  [b]m[/b] smooth  [b]x[/b] x-axis  [b]z[/b] zoom  [b]v[/b] samples", classes="hint")
        yield Static("", id="train-status")
        yield Static("", id="train-log")  # the plan and ETA: above the charts, so 24 lines show it
        yield Static("", id="train-alert")  # shown once the trainer raises an alert
        yield Static("", id="train-health")
        yield DevicesBlock(id="train-devices")
        with Grid(id="train-charts"):
            for name in CHARTS:
                yield PlotextPlot(id=f"chart-{name}")
        with VerticalScroll(id="train-samples"):
            yield Static(samples_text([]), id="train-samples-text")

    def on_mount(self) -> None:
        self.smoothing = self.cfg.ui.smoothing
        self.set_interval(REDRAW_S, self.drain)
        self.set_interval(FIND_S, self.find_stage)
        try:
            found = runs.live_stage(self.cfg) or runs.newest_stage(self.cfg)
        except AcmError:  # paths.runs unreadable: the Runs pane says why
            return
        if found is None:
            self._say_no_run()
        else:
            self.attach(*found)
            if self.state == "interrupted":
                self.notify(f"{self.stage} of run {self.run_name} was interrupted: R resumes it here, "
                            "D in the background", title="Interrupted run", timeout=15)
        self.replot()

    # ------------------------------------------------------------ following a stage on disk

    def attach(self, run: Path, stage: str) -> None:
        """Follow a stage through its files, whichever process trains it (this app, a background
        process, the CLI): the whole history first, then what arrives."""
        self.follower = StageFollower(run, stage)
        self.attached, self.stage, self.run_name = run, stage, run.name
        status = runs.read_status(run, stage)  # the Setup pane's chain trains in this process: a quit stops it
        self.trained_here = status is not None and status["pid"] == os.getpid()
        self.history, self.evals, self.samples = [], [], []
        self.query_one("#train-samples-text", Static).update(samples_text([]))
        self.caught_up = False
        self._show_alert("")
        self.shown_at = self.plotted_at = -math.inf
        self.drain()
        self.caught_up = True
        if self.state in LIVE and self.control is None:
            self.notify(f"attached to {stage} of run {run.name} ({self.state}); space pauses, s stops it")

    def find_stage(self) -> None:
        """While nothing live is followed: follow a stage that starts training anywhere, or the
        newest run's stage once training ends (a chain run from the Setup pane, the CLI)."""
        if self.control is not None or self.state in LIVE:
            return
        try:
            found = runs.live_stage(self.cfg) or runs.newest_stage(self.cfg)
        except AcmError:  # paths.runs unreadable: the Runs pane says why
            return
        if found is not None and found != (self.attached, self.stage):
            self.attach(*found)
        elif found is None and self.attached is None:
            self._say_no_run()

    def _say_no_run(self) -> None:
        """What to do with no run yet: make the shards, or, once they are made, press p."""
        manifest = self.cfg.locations.shards("language") / MANIFEST
        self._status_idle("no runs yet: press p to pretrain" if manifest.exists()
                          else "no runs yet: prepare the token shards (Tokenizer pane), then press p")

    def _send(self, command: str) -> bool:
        """Send `command` to the stage this pane follows (one this app trains through its Control,
        others through their control file, which a stage still starting cannot take yet); whether it
        was sent (if not, said why)."""
        if self.attached is None:
            self.notify("nothing is training")
            return False
        if self.control is not None:  # the stage runs in this app: told at once, while it starts too
            {"stop": self.control.stop, "pause": self.control.pause, "resume": self.control.resume,
             "save": self.control.save_now}[command]()
            return True
        try:
            runs.send_command(self.attached, self.stage, command)
        except AcmError as e:
            self.notify(str(e), severity="warning")
            return False
        return True

    def stop_work(self) -> None:
        if self.control is not None:  # quitting mid-run: stop at the next step, with a checkpoint
            self.control.stop()
        super().stop_work()

    def busy(self) -> bool:
        return self.control is not None or super().busy()

    def _status_idle(self, text: str) -> None:
        self.query_one("#train-status", Static).update(Text(text))

    # ------------------------------------------------------------ commands

    def _busy(self) -> bool:
        if not self.settings_usable():
            return True
        if self.control is not None or self.state in LIVE or runs.live_stage(self.cfg) is not None:
            self.notify("training is already running: stop it with s first", severity="warning")
            return True
        return False

    def _launch(self, stage: str, run: Path, resume: bool, extend_to: int | None = None) -> None:
        if self.cfg.train.ranks > 1:  # the ranks are processes of their own; the pane attaches to rank 0
            self._start_in_background(stage, run, resume, extend_to)
            return
        if self._busy():
            return
        self.control = Control()
        self.run_on_engine("train", partial(train_stage, named_steps=extend_to), self.cfg, stage, run, None,
                           self.control, resume)
        self.attach(run, stage)
        self.state = "starting"
        self._status_idle(f"starting {stage} in run {run.name}…")

    def _new_run_for(self, stage: str) -> Path | None:
        try:
            return training_target(self.cfg, stage).run
        except NoRun:
            self.notify("no run has a pretrain checkpoint yet: press p to pretrain first", severity="error")
            return None

    def _resumable(self) -> tuple[Path, str] | None:
        try:
            target = training_target(self.cfg, resume=True)
        except NoRun:
            self.notify("no run has a checkpoint to resume", severity="warning")
            return None
        return target.run, target.stage

    def action_start(self, stage: str, background: bool = False) -> None:
        run = self._new_run_for(stage)
        if run is not None:
            (self._start_in_background if background else self._launch)(stage, run, resume=False)

    def action_start_named(self) -> None:
        """N: a new run's pretrain under the name typed, as `acm train pretrain --run NAME` (the same
        names allowed; a folder that is no run and holds files refused)."""
        if self._busy():
            return

        def answered(name: str | None) -> None:
            if name is None:
                return
            try:
                run = runs.run_to_train(self.cfg, name)
            except AcmError as e:
                self.notify(str(e), severity="error")
                return
            self._launch("pretrain", run, resume=False)

        self.app.push_screen(Ask("Pretrain a new run named (letters, digits, '-' and '_'):"), answered)

    @on(StartTraining)
    def _start_requested(self, request: StartTraining) -> None:
        self.action_start(request.stage)

    def action_resume_run(self, background: bool = False) -> None:
        if self._busy():  # said before any question a refusal would follow
            return
        found = self._resumable()
        if found:
            self._resume(*found, background)

    @on(TrainRun)
    def _train_run(self, request: TrainRun) -> None:
        """The Runs pane's f and R on its selected run."""
        if self._busy():
            return
        run = self.cfg.locations.run(request.run)
        has = {stage: checkpoint.latest(Paths.checkpoints(run, stage)) is not None for stage in runs.TRAINING_STAGES}
        if request.finetune and not has["finetune"]:
            if checkpoint.best(Paths.checkpoints(run, "pretrain")) is None:
                self.notify(f"run {run.name} has no pretrain checkpoint to fine-tune", severity="error")
                return
            self._launch("finetune", run, resume=False)
            return
        stage = "finetune" if request.finetune else runs.active_stage(run)
        if stage is None or not has[stage]:
            self.notify(f"run {run.name} has no checkpoint to resume", severity="warning")
            return
        self._resume(run, stage)

    def _resume(self, run: Path, stage: str, background: bool = False) -> None:
        """Resume `stage` of `run`; one that finished its plan is trained on only when the user says so."""
        start = self._start_in_background if background else self._launch
        planned = runs.finished_plan(run, stage)
        if planned is None:
            start(stage, run, resume=True)
            return

        def answered(extend: bool | None) -> None:
            if extend:
                start(stage, run, resume=True, extend_to=2 * planned)

        self.app.push_screen(Confirm(f"{stage} of run {run.name} already finished its {planned:,} steps. Train it "
                                     f"on to {2 * planned:,} steps (its schedule stretched to the new end)?"),
                             answered)

    def _start_in_background(self, stage: str, run: Path, resume: bool, extend_to: int | None = None) -> None:
        if self._busy():
            return
        try:
            launch_detached(self.app.config_path, stage, run, resume, steps=extend_to)
        except (AcmError, OSError) as e:
            self.notify(str(e), severity="error")
            return
        self.attach(run, stage)

    def action_pause(self) -> None:
        self._send("resume" if self.state == "paused" else "pause")

    def action_stop(self) -> None:
        self._send("stop")

    def action_save_now(self) -> None:
        if self._send("save"):
            self.notify("a checkpoint will be written after the current step")

    def action_log_scale(self) -> None:
        self.log_scale = not self.log_scale
        self.notify(f"loss chart: {'log' if self.log_scale else 'linear'} scale")
        self.replot()

    def action_zoom(self) -> None:
        """One chart over the whole grid, then the next, then all four again."""
        order = (None, *CHARTS)
        self.zoomed = order[(order.index(self.zoomed) + 1) % len(order)]
        self.query_one("#train-charts").set_class(self.zoomed is not None, "zoomed")
        for name in CHARTS:
            self.query_one(f"#chart-{name}").display = self.zoomed in (None, name)

    def action_samples(self) -> None:
        """The latest check's samples in place of the charts, or the charts again."""
        view = self.query_one("#train-samples")
        view.display = not view.display
        self.query_one("#train-charts").display = not view.display

    def action_smoothing(self) -> None:
        """The next smoothing, drawn at once and saved to acm.toml as ui.smoothing (kept for this
        session if the file cannot take it)."""
        self.smoothing = next_smoothing(self.smoothing)
        self.replot()
        try:
            new, _ = config.with_value(self.cfg, SMOOTHING_KEY, str(self.smoothing),
                                       source=str(self.app.config_path))
            new = config.save_settings(new, self.app.config_path, since=self.cfg, key=SMOOTHING_KEY)
        except AcmError as e:
            self.notify(str(e), severity="warning")
            return
        self.app.cfg = new
        self.notify(f"smoothing {self.smoothing:g} (saved as {SMOOTHING_KEY})")

    def action_x_axis(self) -> None:
        names = list(AXES)
        self.axis = names[(names.index(self.axis) + 1) % len(names)]
        self.notify(f"x axis: {AXES[self.axis][0]}")
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
            self.state = "done" if r.done else "stopped"
            self.notify(f"{r.stage} {self.state} at step {r.step} (run {r.run.name})")
        else:
            self.state = "failed"
            text = one_line(error)
            self.query_one("#train-log", Static).update(Text(f"failed: {text}", style="red"))
            self.notify(text, title="Training failed", severity="error", timeout=15)
        self.refresh_status()

    # ------------------------------------------------------------ live view

    def drain(self) -> None:
        """Take what the followed stage recorded since the last tick; show it (log lines, alerts and
        samples at once, the status and charts at most every STATUS_S / CHARTS_S while training)."""
        events = self.follower.poll() if self.follower is not None else []
        if events:
            was = self.state
            logs, alerts = self._take(events)
            if logs:
                self.query_one("#train-log", Static).update(Text(logs[-1], style="dim"))
            if alerts:
                self._show_alert(alerts[-1])
            for alert in alerts if self.caught_up else []:
                self.notify(alert, title="Training health", severity="warning", timeout=10)
            if any(isinstance(e, Sample) for e in events):
                self.query_one("#train-samples-text", Static).update(samples_text(self.samples))
            self.unshown = self.unplotted = True
            if self.state != was:
                self.shown_at = self.plotted_at = -math.inf
        self._show_due()

    def _show_due(self) -> None:
        now, live = self.clock(), self.state in LIVE
        if self.unshown and (not live or now - self.shown_at >= STATUS_S):
            self.unshown, self.shown_at = False, now
            self.refresh_status()
        if self.unplotted and (not live or now - self.plotted_at >= CHARTS_S):
            self.unplotted, self.plotted_at = False, now
            self.replot()

    def _take(self, events: list) -> tuple[list[str], list[str]]:
        """Events into the pane's history; the log lines and the alerts among them."""
        logs, alerts = [], []
        for e in events:
            if isinstance(e, Metrics):
                self.history.append(e)
            elif isinstance(e, Eval):
                self.evals.append(e)
            elif isinstance(e, Sample):  # the latest check's only
                self.samples = [*(s for s in self.samples if s.step == e.step), e]
            elif isinstance(e, State) and e.state != "not started":
                self.state = e.state
            elif isinstance(e, Log):
                (alerts if is_alert(e.text) else logs).append(e.text)
        return logs, alerts

    def refresh_status(self) -> None:
        m = self.history[-1] if self.history else None
        away = self.control is None and self.state in LIVE and not self.trained_here
        where = " (background process)" if away else ""
        # read from disk: text, not markup, and no control characters
        name, state = escape(visible(self.run_name or "–")), escape(visible(self.state))
        parts = [f"[b]{self.stage or '–'}[/b] run {name}{where}: [b]{state}[/b]"]
        if m:
            mfu = f"  MFU {figure(m.mfu, '.1%')}" if m.mfu is not None else ""
            eta = f"  ETA {duration(m.eta_s)}" if self.state in LIVE else ""  # a stage that ended has none
            parts.append(f"step {figure(m.step, ',')}/{figure(m.total, ',')}  epoch {figure(m.epoch, '.3f')}{eta}  "
                         f"loss {figure(m.loss, '.4f')}  lr {figure(m.lr, '.2e')}  "
                         f"{figure(m.tokens_per_s, ',.0f')} tok/s{ranks_words(m)}{mfu}")
            parts.append(f"memory active {gib(m.memory_active)} / peak {gib(m.memory_peak)} / cache "
                         f"{gib(m.memory_cache)} / limit {gib(m.memory_limit)} GiB")
        if self.evals:
            last = self.evals[-1]
            parts.append(f"val loss {figure(last.val_loss, '.4f')} (best {figure(last.best_val_loss, '.4f')})")
        self.query_one("#train-status", Static).update("\n".join(parts))
        self.query_one(DevicesBlock).follow(self.state in LIVE or self.control is not None, m)

    def _show_alert(self, text: str) -> None:
        line = self.query_one("#train-alert", Static)
        line.update(Text(text))
        line.set_class(bool(text), "shown")

    def replot(self) -> None:
        self.redraws += 1
        hist = self.history
        steps = [m.step for m in hist]
        xs = axis_values([(m.step, m.tokens_seen, m.time) for m in hist], self.axis)
        stage = STAGE_NAMES.get(self.stage or "", "")
        how = ", ".join(["log"] * self.log_scale + [f"smoothed {self.smoothing:g}"] * bool(self.smoothing))
        self._chart("#chart-loss", f"{stage} loss".strip() + (f" ({how})" if how else ""),
                    self._loss_series(steps, xs), log=self.log_scale)
        self._chart("#chart-lr", "learning rate", [(xs, [m.lr for m in hist], "lr")])
        self._chart("#chart-speed", "tokens/s", [(xs, [m.tokens_per_s for m in hist], "tok/s")])
        self._chart("#chart-memory", "memory (GiB)",
                    [(xs, [in_gib(m.memory_active) for m in hist], "active"),
                     Series(xs, [in_gib(m.memory_peak) for m in hist], "peak", marker="dot")])
        self._health()

    def _loss_series(self, steps: list[int], xs: list[float]) -> list[Series]:
        """Raw reports as dots under the smoothed curve (one fine line when smoothing is off), then
        the validation checks as crosses, on top."""
        losses = [m.loss for m in self.history]
        train = [Series(xs, ema(losses, self.smoothing), "train")]
        if self.smoothing:
            train.insert(0, Series(xs, losses, "train (raw)", marker="dot", points=True))
        val_xs = at_steps(steps, xs, [e.step for e in self.evals]) if steps else []
        return train + [Series(val_xs, [e.val_loss for e in self.evals], "val", marker="x", points=True)]

    def _health(self) -> None:
        """Sparklines of the gradient norm and the learning rate over the latest reports."""
        m = self.history[-1] if self.history else None
        text = Text()
        if m is not None:
            text.append("grad norm ", "bold").append(sparkline([r.grad_norm for r in self.history], SPARK))
            text.append(f" {figure(m.grad_norm, '.3g')}   ").append("lr ", "bold")
            text.append(sparkline([r.lr for r in self.history], SPARK)).append(f" {figure(m.lr, '.2e')}")
        line = self.query_one("#train-health", Static)
        line.update(text)
        line.set_class(m is not None, "shown")

    def _chart(self, selector: str, title: str, series: list, log: bool = False) -> None:
        """Draw a chart, its title cut to the chart's width (plotext leaves out one that is wider)."""
        widget = self.query_one(selector, PlotextPlot)
        width = widget.size.width - 2
        if 0 < width < len(title):
            title = title[:width - 1] + "…"
        draw(widget.plt, title, series, log=log, axis=self.axis)
        widget.refresh()


def ranks_words(metrics: Metrics) -> str:
    """" in total over N ranks" for a data-parallel run (MFU is then per GPU)."""
    ranks = metrics.ranks if isinstance(metrics.ranks, int) else 1
    return f" in total over {ranks} ranks" if ranks > 1 else ""
