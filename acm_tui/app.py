"""The acm-tui application: one screen, a tab per pipeline stage, keyboard first."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterable
from concurrent.futures import Future
from functools import partial
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from core import config, runs
from core.engine import Engine, exit_past_abandoned_work
from core.errors import INTERRUPTED, AcmError, Parser, fail, internal_error, one_line
from core.hardware import device_label
from core.pipeline.overview import disk_stamp
from core.train.ready import submit_readying
from core.train.ready_step import READY_JOB

from .confirm import Confirm
from .messages import DeviceFound, EngineReadied, EngineReadying, PaneRequest
from .panes.base import Pane
from .panes.data import DataPane
from .panes.generate import GeneratePane
from .panes.runs import RunsPane
from .panes.settings import SettingsPane
from .panes.setup import SetupPane
from .panes.tokenizer import TokenizerPane
from .panes.train import TrainPane

PANES = [SetupPane, DataPane, TokenizerPane, TrainPane, GeneratePane, RunsPane, SettingsPane]


DISK_POLL_S = 2.0  # how often the app looks for stages that ended or moved on elsewhere


EXIT_GRACE_S = 5.0  # how long a signal's exit may take, its stages ended, before the process just ends
# a Ctrl-C typed into the app is a key (the terminal is raw); SIGINT is `kill -INT`, or a Ctrl-C as it starts
ENDING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, name))


def what_a_quit_does(running: list[str]) -> str:
    """What becomes of the work of each busy pane (by title) if the app quits."""
    said = ["training stops at the next step and writes a checkpoint"] if "Train" in running else []
    if "Setup" in running:
        said.append("the pipeline stops (a training stage in it with a checkpoint)")
    if "Runs" in running:  # what runs there is an export's upload
        said.append("the upload to the Hugging Face Hub is abandoned (the Hub commits nothing; the exported folder "
                    "stays)")
    if others := [title for title in running if title not in ("Train", "Setup", "Runs")]:
        said.append(f"{' and '.join(others)}: cancelled, what was finished is kept")
    return "; ".join(said)


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
            # the app still opens, on the defaults a project without acm.toml gets here, and says why
            self.config_error = str(e)
            self.cfg = config.from_dict({}, root=self.config_path.parent, preset=config.machine_preset({}))
        self.engine = Engine()
        self.device, self.stamp = "", None
        self.readying = False  # the engine readies the training step (at the start, beside a pipeline's shards)
        self.readied = None  # what the latest did (core.train.ready.Readied), once it has ended
        self._ready_future: Future | None = None  # the engine's latest readying
        self._ready_lock = threading.Lock()
        self.failure: str | None = None  # the bug that ended the app, in one line

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
        self.end_on_signals()
        self.action_show_pane("setup")
        # posted, never called from the engine's thread: a quit waits for the engine, which would
        # wait here for the UI in turn
        self.engine.submit(device_label).add_done_callback(
            lambda f: self.post_message(DeviceFound(f.result())) if not f.exception() else None)
        if self.cfg.ui.ready_at_start and not self.config_error:
            self.ready_the_engine()
        self.set_interval(DISK_POLL_S, self.watch_disk)
        self.watch_disk()
        if self.config_error:
            self.notify(self.config_error, title="acm.toml", severity="error", timeout=10, markup=False)

    def ready_the_engine(self, cfg: config.Config | None = None, shards_due: bool = False) -> None:
        """Have the engine ready the training step (`core.train.ready`) for `cfg` (default: the
        app's), its start and end posted to the header; from any thread; not while one is under
        way. Once more in a pipeline that makes new shards: its tokenizer or settings may have
        changed the shapes, and steps the engine has already run cost it little."""
        begun = lambda stages: self.post_message(EngineReadying())  # noqa: E731 (from the engine's thread)
        with self._ready_lock:
            if self._ready_future is not None and not self._ready_future.done():
                return
            fut = self._ready_future = submit_readying(self.engine, cfg or self.cfg, begun, shards_due)
        fut.add_done_callback(lambda f: self.post_message(EngineReadied(f)))

    def show_config_error(self, error: str | None) -> None:
        """acm.toml read again: its error (None: it loads) held, so no stage starts and nothing is
        saved on settings the file no longer says, and shown in the red line under the title."""
        self.config_error = error
        line = self.query_one("#config-error", Static)
        line.update(Text(f"settings not loaded, using the last good ones: {error}" if error else ""))
        line.set_class(bool(error), "shown")

    @on(DeviceFound)
    def _set_device(self, message: DeviceFound) -> None:
        self.device = message.label
        self.show_where()

    def show_where(self, run: str | None = None) -> None:
        """The preset, the run and the device, in the header of every screen (and, while the engine
        readies the training step, that it does)."""
        self.current_run = run if run is not None else getattr(self, "current_run", "")
        parts = [f"preset {self.cfg.model.preset}", f"run {self.current_run or '(none yet)'}"]
        parts += [self.device] if self.device else []
        self.sub_title = "  ·  ".join(parts + (["readying the training step…"] if self.readying else []))

    @on(EngineReadying)
    def _readying(self) -> None:
        self.readying = True
        self.show_where()

    @on(EngineReadied)
    def _readied(self, message: EngineReadied) -> None:
        """Readying ended: the header says no more; a failure is said once (the stage would meet it)."""
        self.readying = False
        self.show_where()
        error = message.future.exception()
        self.readied = None if error else message.future.result()
        if error is not None:
            self.notify(f"the training step could not be readied: {one_line(error)}", title="Engine",
                        severity="warning", timeout=10, markup=False)

    @work(thread=True, exclusive=True, group="disk", exit_on_error=False)
    def watch_disk(self) -> None:
        """Every pane reads the disk again when a stage ends or moves on, wherever it ran."""
        try:
            all_runs = runs.list_runs(self.cfg)  # newest first
        except AcmError:  # paths.runs unreadable: the Runs pane says why
            all_runs = []
        stamp = disk_stamp(self.cfg, all_runs)
        run = all_runs[0].name if all_runs else ""
        changed, self.stamp = stamp != self.stamp, stamp
        self.call_from_thread(self._disk_changed if changed else self.show_where, run)

    def _disk_changed(self, run: str) -> None:
        self.show_where(run)
        for pane in self.query(Pane):
            pane.disk_changed()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The command palette (ctrl+p) offers every pane's actions, not only the focused pane's."""
        yield from super().get_system_commands(screen)
        for pane in PANES:
            pane_id = pane.TITLE.lower()
            yield SystemCommand(f"Show {pane.TITLE}", f"switch to the {pane.TITLE} pane",
                                partial(self.action_show_pane, pane_id))
            for binding in pane.BINDINGS:
                if isinstance(binding, Binding) and binding.description and binding.show:
                    yield SystemCommand(f"{pane.TITLE}: {binding.description}",
                                        binding.tooltip or f"key {binding.key}",
                                        partial(self.run_in_pane, pane_id, binding.action), discover=False)

    @on(PaneRequest)
    def hand_on(self, request: PaneRequest) -> None:
        """Show the pane a request is for, then hand it the request."""
        self.action_show_pane(request.pane)
        self.query_one(f"#{request.pane}-pane").post_message(request)

    def run_in_pane(self, pane_id: str, action: str) -> None:
        """Show a pane and run one of its key bindings' actions (the command palette)."""
        self.action_show_pane(pane_id)
        self.call_later(self.query_one(f"#{pane_id}-pane").run_action, action)

    def action_show_pane(self, pane_id: str) -> None:
        """The pane shown and focused at once: keys typed right behind the pane's number (typeahead
        over SSH) go to it, not to the pane just left (Widget.focus waits for the next idle)."""
        self.query_one("#panes", TabbedContent).active = pane_id
        self.screen.set_focus(self.query_one(f"#{pane_id}-pane"))

    def action_toggle_help(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    async def action_quit(self) -> None:
        """Quit; while a stage runs in the app, ask first (it would stop, with a checkpoint)."""
        running = [pane.TITLE for pane in self.query(Pane) if pane.busy()]
        if not running:
            self.exit()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit()

        self.push_screen(Confirm(f"{', '.join(running)}: a stage is running in this app. Quit anyway? "
                                 f"({what_a_quit_does(running)})"), answered)

    def notify(self, message: str | Text, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = True) -> None:
        """Every notification reaches Textual as a str: a rich Text, which Textual cannot draw in a
        toast (the app would end), is shown as its plain text."""
        if not isinstance(message, str):
            message, markup = message.plain if isinstance(message, Text) else str(message), False
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def _fatal_error(self) -> None:
        """A bug (an exception nothing handled) ends the app with exit status 1 (Textual's return code)
        and, through main, one line as the CLI prints it; ACM_DEBUG=1 keeps Textual's traceback."""
        if os.environ.get("ACM_DEBUG"):
            super()._fatal_error()
            return
        self.failure = internal_error(self._exception)  # the first error: what followed it adds nothing
        self._close_messages_no_wait()

    def end_on_signals(self) -> None:
        """A polite kill (SIGTERM) or a hang-up (SIGHUP: the SSH connection dropped) quits as `q`
        then `y` does: a stage training in the app stops at its next step and writes a checkpoint,
        then the app ends, with the signal's status as the shell reports one (143, 129, 130), as `acm`
        does. Stages in the background are processes of their own and go on."""
        loop = asyncio.get_running_loop()
        for sig in ENDING_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # no such signal here
                loop.add_signal_handler(sig, partial(self.exit, return_code=128 + sig))

    def on_unmount(self) -> None:
        # Running engine jobs were asked to stop by their panes; wait for them (a training stage
        # writes its checkpoint first), so no MLX work outlives the app. A second SIGTERM or SIGHUP
        # meanwhile only asks to quit again: the handlers go once the wait is over. A readying (at
        # the start, beside a pipeline's shards) is not waited for (it writes nothing of the
        # project; on a fresh NVIDIA machine it may compile MLX's kernels for a minute), and what
        # was queued behind it never starts.
        self.engine.shutdown(wait=True, abandon=READY_JOB)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            for sig in ENDING_SIGNALS:
                asyncio.get_running_loop().remove_signal_handler(sig)
        if not self.is_headless:
            # The terminal may be gone (a hang-up, now or while the stages ended): Textual's writer
            # thread, failing on a vanished terminal, can block the exit for ever. The stages have
            # ended and their files are written, so the process ends regardless, once Textual has
            # had its time (a test's headless app shares the test's process: never there).
            watchdog = threading.Timer(EXIT_GRACE_S, os._exit, args=(self.return_code or 0,))
            watchdog.daemon = True  # a normal exit does not wait for it
            watchdog.start()


def read_stray_bytes_as_text() -> None:
    """A byte the terminal sends that is not UTF-8 (a Latin-1 terminal's é, an 8-bit Alt) reads as
    U+FFFD. Textual's terminal drivers decode their input strictly, and one such byte ends the input
    thread and the app with a traceback (Textual issue 6456, open): they are handed a decoder that
    replaces what it cannot read."""
    from codecs import getincrementaldecoder

    from textual.drivers import linux_driver, linux_inline_driver

    def replacing(encoding: str):
        return partial(getincrementaldecoder(encoding), errors="replace")

    linux_driver.getincrementaldecoder = linux_inline_driver.getincrementaldecoder = replacing


def main(argv: list[str] | None = None) -> int:
    """Run the app; a bad argument or a missing settings file is one line with exit status 2, as in
    `acm`, and a bug that ends the app one line with exit status 1."""
    p = Parser(prog="acm-tui", description="The acm terminal UI.")
    p.add_argument("-c", "--config", type=Path, default=None,
                   help="settings file (default: ./acm.toml, or $ACM_CONFIG)")
    args = p.parse_args(argv)
    named = config.named_file(args.config)
    if named is not None and not named.exists():  # only the default may be missing (every default)
        if named.is_symlink():
            return fail(f"settings file {named} is a link to {os.readlink(named)}, which leads to no file")
        return fail(f"settings file {named} does not exist")
    app = AcmApp(named or Path(config.CONFIG_NAME))
    read_stray_bytes_as_text()
    try:
        app.run()
    except KeyboardInterrupt:  # before the app took its signals: nothing of a stage had started
        # the half-mounted widgets' coroutines, never run, each said so at the exit
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        print("acm: interrupted", file=sys.stderr)
        app.engine.abandon()  # a readying under way writes nothing; the process need not wait for it
        exit_past_abandoned_work(INTERRUPTED, [app.engine])
        return INTERRUPTED
    if app.failure:
        print(f"acm: error: {app.failure}", file=sys.stderr)
    exit_past_abandoned_work(app.return_code or 0, [app.engine])  # quit while the engine readied the step
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
