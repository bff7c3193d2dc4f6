"""The Train pane's devices block: one line a device while a stage trains (memory, utilisation,
power, each rank's tokens/s and MFU), read every few seconds off the UI thread.

nvidia-smi can take seconds on a busy host, so a worker thread reads the devices and hands the
reading back to the UI; the block reads nothing while no stage is live. Rank figures come from the
stage's latest report, whichever process trains it; MLX's own counters are this app's process
only, so where nvidia-smi is absent the block shows the ranks' reported memory instead, with the
note of what the platform cannot report.
"""
from __future__ import annotations

from rich.text import Text
from textual import work
from textual.widgets import Static

from core.devices import Reading, capped, device_lines, ranks_of, read_devices
from core.runs.events import Metrics

POLL_S = 2.0
MOST_LINES = 4  # the rest as "+N more": 80x24 keeps its charts


class DevicesBlock(Static):
    """Hidden until a live stage's devices have been read."""

    def __init__(self, **kwargs):
        super().__init__("", **kwargs)
        self.live = False
        self.report: Metrics | None = None
        self.reading: Reading | None = None
        self.readings = 0  # devices read so far
        self.display = False

    def on_mount(self) -> None:
        self.set_interval(POLL_S, self.poll)

    def follow(self, live: bool, report: Metrics | None) -> None:
        """The followed stage's state and latest report: the block reads devices only while live."""
        was, self.live, self.report = self.live, live, report
        if live and not was:
            self.poll()
        elif not live:
            self.reading = None
        self.redraw()

    def poll(self) -> None:
        if self.live:
            self.read()

    @work(thread=True, exclusive=True, group="devices", exit_on_error=False)
    def read(self) -> None:
        reading = read_devices()  # never raises; its child process ends within its timeout
        self.app.call_from_thread(self._take, reading)

    def _take(self, reading: Reading) -> None:
        self.readings += 1
        if self.live:
            self.reading = reading
            self.redraw()

    def redraw(self) -> None:
        reading = self.reading if self.live else None
        if reading is None:
            self.display = False
            return
        ranks = ranks_of(self.report) if self.report is not None else []
        devices = reading.devices if reading.source == "nvidia-smi" else []
        lines = capped(device_lines(devices, ranks), MOST_LINES - (reading.note is not None))
        text = Text("\n".join(lines))
        if reading.note:
            text.append(("\n" if lines else "") + reading.note, "dim")
        self.update(text)
        self.display = True
