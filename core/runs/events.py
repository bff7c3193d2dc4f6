"""What a training stage reports, and who hears it.

The trainer never opens a file: it hands each event, a plain dict such as
{"type": "metrics" | "eval" | "checkpoint" | "state" | "log", "stage": ..., ...}, to its callbacks
(as mlx-lm's TrainingCallback). `Recorder` turns events into the stage's files (metrics.jsonl,
train.log, status.json); `StageFollower` reads those files back as the same events, so the app
follows a stage trained in the app, in a background process or from the CLI in one way.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from core.atomic import writing
from core.paths import Paths
from core.runs import parse_records, read_status, stage_state, write_status

Callback = Callable[[dict], None]
RECORDED = ("metrics", "eval")  # the types metrics.jsonl keeps


class Recorder:
    """Writes a stage's events to its files, each line flushed as it is written."""

    def __init__(self, run: Path, stage: str, total_steps: int):
        self.run, self.stage, self.total = run, stage, total_steps
        Paths.stage(run, stage).mkdir(parents=True, exist_ok=True)
        self._metrics = open(Paths.metrics(run, stage), "a", buffering=1, encoding="utf-8")
        self._log = open(Paths.train_log(run, stage), "a", buffering=1, encoding="utf-8")

    def __call__(self, event: dict) -> None:
        with writing(f"the {self.stage} records of run {self.run.name}"):
            self._record(event)

    def _record(self, event: dict) -> None:
        kind = event["type"]
        if kind in RECORDED:
            self._metrics.write(json.dumps(event) + "\n")
        if kind == "metrics":
            write_status(self.run, self.stage, "running", step=event["step"], total=self.total)
        elif kind == "state":
            extra = {"error": event["error"]} if "error" in event else {}
            write_status(self.run, self.stage, event["state"], step=event.get("step"), total=self.total, **extra)
        elif kind == "log":
            self._line(event["text"])
        elif kind == "checkpoint":
            loss = event.get("val_loss")
            self._line(f"checkpoint {Path(event['path']).name}"
                       + (f" (val loss {loss:.4f})" if loss is not None else ""))

    def _line(self, text: str) -> None:
        self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def close(self) -> None:
        self._metrics.close()
        self._log.close()


class StageFollower:
    """A stage's events read back from its files, whichever process writes them.

    Each `poll()` gives what arrived since the last one (the first: everything, so a resumed run
    shows its whole history): metrics and eval records, log lines, and a "state" event when the
    stage's state changed (interrupted when its process died).
    """

    def __init__(self, run: Path, stage: str):
        self.run, self.stage = run, stage
        self._offsets = {"metrics": 0, "log": 0}
        self.state: str | None = None

    def poll(self) -> list[dict]:
        events = parse_records(self._new_lines("metrics", Paths.metrics(self.run, self.stage)))
        events += [{"type": "log", "stage": self.stage, "text": line.decode("utf-8", "replace").split(" ", 2)[-1]}
                   for line in self._new_lines("log", Paths.train_log(self.run, self.stage))]
        state = stage_state(self.run, self.stage)
        if state != self.state:
            self.state = state
            events.append({"type": "state", "stage": self.stage, **(read_status(self.run, self.stage) or {}),
                           "state": state})
        return events

    def _new_lines(self, which: str, path: Path) -> list[bytes]:
        """Complete lines added since the last read (a line still being written waits)."""
        try:
            with open(path, "rb") as f:
                f.seek(self._offsets[which])
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self._offsets[which] += end
        return data[:end].splitlines()

