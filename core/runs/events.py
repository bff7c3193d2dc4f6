"""What a training stage reports, and who hears it.

The trainer never opens a file: it hands each event, a typed record (`Metrics`, `Eval`,
`Checkpoint`, `State`, `Log`, `Sample`), to its callbacks (as mlx-lm's TrainingCallback). `Recorder`
turns events into the stage's files (metrics.jsonl, train.log, status.json, samples.jsonl); `StageFollower` reads those
files back as the same events, so the app follows a stage trained in the app, in a background
process or from the CLI in one way. On disk and on a rank's --json output an event is the JSON
object `to_json()` gives, {"type": "metrics" | "eval" | "checkpoint" | "state" | "log" | "sample", "stage": ...};
`event_from_json` reads one back as leniently as files written by older versions need.
"""
from __future__ import annotations

import functools
import json
import os
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from core.atomic import open_regular, read_regular, writing
from core.errors import AcmError
from core.paths import Paths
from core.runs import RECORDS_LIMIT, parse_records, read_status, stage_state, write_status


@dataclass(frozen=True, kw_only=True)
class Event:
    """One report of a stage. Read back from a file, a key the writer did not write is None."""
    type: ClassVar[str]
    OPTIONAL: ClassVar[tuple[str, ...]] = ()  # keys left out of the JSON while None
    stage: str | None = None

    def to_json(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"type": self.type} | {k: v for k, v in values.items() if v is not None or k not in self.OPTIONAL}

    ESSENTIAL: ClassVar[tuple[str, ...]] = ()  # keys without which a record read back is no event of its type

    @classmethod
    def from_json(cls, record: dict) -> Event | None:
        """The event of a JSON object of its type: a key it lacks, or one holding a value of another
        type than the field's (a file edited by hand), reads as None, others are left out; None where
        an ESSENTIAL key does."""
        hints = _hints(cls)
        values = {f.name: record.get(f.name) for f in fields(cls)}
        values = {k: v if v is None or _fits(v, hints[k]) else None for k, v in values.items()}
        return None if any(values[k] is None for k in cls.ESSENTIAL) else cls(**values)


@functools.cache
def _hints(cls: type) -> dict[str, tuple[type, ...]]:
    """Each field's JSON types, read from its annotation (`float | None` -> (int, float))."""
    json_types = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        names = [a.__name__ if isinstance(a, type) else typing.get_origin(a).__name__
                 for a in typing.get_args(hint) or (hint,) if a is not type(None)]
        out[name] = tuple(t for n in names for t in json_types.get(n, (list,) if n == "list" else (object,)))
    return out


def _fits(value, types: tuple[type, ...]) -> bool:
    """`value` is one of `types`, a bool counting as a number only where bool is named."""
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


@dataclass(frozen=True, kw_only=True)
class Metrics(Event):
    """A training report, every log_every steps: what metrics.jsonl keeps and the curves show."""
    type: ClassVar[str] = "metrics"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("devices",)
    ESSENTIAL: ClassVar[tuple[str, ...]] = ("step", "loss")
    step: int
    total: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    tokens_seen: int
    epoch: float
    mfu: float | None  # None where the device's peak is unknown
    ranks: int
    memory_active: int
    memory_peak: int
    memory_cache: int
    memory_limit: int | None
    eta_s: float
    time: float
    devices: list[dict] | None = None  # each rank's memory, tokens/s and MFU (core.devices), with several


@dataclass(frozen=True, kw_only=True)
class Eval(Event):
    """A validation check."""
    type: ClassVar[str] = "eval"
    ESSENTIAL: ClassVar[tuple[str, ...]] = ("step", "val_loss")
    step: int
    val_loss: float
    val_ppl: float
    best_val_loss: float


@dataclass(frozen=True, kw_only=True)
class Checkpoint(Event):
    """A checkpoint written (val_loss: the check made at its step, if any)."""
    type: ClassVar[str] = "checkpoint"
    ESSENTIAL: ClassVar[tuple[str, ...]] = ("step", "path")
    step: int
    path: str
    val_loss: float | None = None


@dataclass(frozen=True, kw_only=True)
class State(Event):
    """What the stage is doing ("running", "paused", "done", "stopped", "failed"...); read back from
    status.json it carries who writes it (pid, host) and when."""
    type: ClassVar[str] = "state"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("run", "error", "pid", "host", "time")
    ESSENTIAL: ClassVar[tuple[str, ...]] = ("state",)
    state: str
    step: int | None = None
    total: int | None = None
    run: str | None = None  # the run's name, when the stage starts
    error: str | None = None  # why it failed
    pid: int | None = None
    host: str | None = None
    time: float | None = None


@dataclass(frozen=True, kw_only=True)
class Log(Event):
    """A line for the stage's log."""
    type: ClassVar[str] = "log"
    ESSENTIAL: ClassVar[tuple[str, ...]] = ("text",)
    OPTIONAL: ClassVar[tuple[str, ...]] = ("stage",)
    text: str


@dataclass(frozen=True, kw_only=True)
class Sample(Event):
    """A script generated at a validation check (train.samples), with its verdicts: parses (bash -n),
    shellcheck errors (None: not installed), complete (ended by the model) and relevant (matches its
    task's `expect`; None: its prompt has none). `seconds`: the whole check's sampling and judging."""
    type: ClassVar[str] = "sample"
    ESSENTIAL: ClassVar[tuple[str, ...]] = ("step",)
    step: int
    prompt: str
    text: str
    parses: bool
    shellcheck_errors: int | None
    complete: bool
    relevant: bool | None
    seconds: float

    def marks(self) -> str:
        """Its verdicts, readable without colour: "✓ parses  ✗ shellcheck (2)  ✓ complete  ✗ relevant"
        (shellcheck left out where it is not installed, relevance where the prompt expects nothing)."""
        errors = self.shellcheck_errors
        verdicts = [(self.parses, "parses")]
        if errors is not None:
            verdicts.append((not errors, f"shellcheck ({errors})" if errors else "shellcheck"))
        verdicts.append((self.complete, "complete"))
        if self.relevant is not None:
            verdicts.append((self.relevant, "relevant"))
        return "  ".join(f"{'✓' if ok else '✗'} {name}" for ok, name in verdicts)


TYPES: dict[str, type[Event]] = {kind.type: kind for kind in (Metrics, Eval, Checkpoint, State, Log, Sample)}
RECORDED = (Metrics, Eval)  # what metrics.jsonl keeps
Callback = Callable[[Event], None]


def event_from_json(record) -> Event | None:
    """The event a JSON value holds; None for anything else (not an object, no known type)."""
    kind = record.get("type") if isinstance(record, dict) else None
    return TYPES[kind].from_json(record) if isinstance(kind, str) and kind in TYPES else None


def read_samples(run: Path, stage: str) -> list[Sample]:
    """Every sample recorded in a stage's samples.jsonl, oldest first (a line being written is skipped)."""
    try:
        records = parse_records(read_regular(Paths.samples(run, stage), RECORDS_LIMIT).splitlines())
    except OSError:
        return []
    return [e for e in map(event_from_json, records) if isinstance(e, Sample)]


def _appending(path: Path):
    """A stage's record file opened to append lines: one that ends inside a line (cut by a crash or
    by hand) gets its newline first, so the next record is not glued onto the damaged one and lost.
    One that is no regular file is refused in one line: a FIFO would hold the stage before its first
    step, a device would swallow its records."""
    cut = False
    if path.exists():
        try:
            with open_regular(path) as existing:
                if existing.seek(0, os.SEEK_END):
                    existing.seek(-1, os.SEEK_END)
                    cut = existing.read(1) != b"\n"
        except OSError as e:
            raise AcmError(f"{path}: cannot record into it ({e.strerror or e}); move it away to train") from None
    f = open(path, "a", buffering=1, encoding="utf-8")
    if cut:
        f.write("\n")
    return f


class Recorder:
    """Writes a stage's events to its files, each line flushed as it is written."""

    def __init__(self, run: Path, stage: str, total_steps: int):
        self.run, self.stage, self.total = run, stage, total_steps
        Paths.stage(run, stage).mkdir(parents=True, exist_ok=True)
        self._metrics, self._log, self._samples = (
            _appending(path(run, stage)) for path in (Paths.metrics, Paths.train_log, Paths.samples))

    def __call__(self, event: Event) -> None:
        with writing(f"the {self.stage} records of run {self.run.name}"):
            self._record(event)

    def _record(self, event: Event) -> None:
        if isinstance(event, RECORDED):
            self._metrics.write(json.dumps(event.to_json()) + "\n")
        elif isinstance(event, Sample):
            self._samples.write(json.dumps(event.to_json()) + "\n")
        if isinstance(event, Metrics):
            write_status(self.run, self.stage, "running", step=event.step, total=self.total)
        elif isinstance(event, State):
            extra = {"error": event.error} if event.error is not None else {}
            write_status(self.run, self.stage, event.state, step=event.step, total=self.total, **extra)
        elif isinstance(event, Log):
            self._line(event.text)
        elif isinstance(event, Checkpoint):
            loss = event.val_loss
            self._line(f"checkpoint {Path(event.path).name}"
                       + (f" (val loss {loss:.4f})" if loss is not None else ""))

    def _line(self, text: str) -> None:
        self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def close(self) -> None:
        self._metrics.close()
        self._log.close()
        self._samples.close()


class StageFollower:
    """A stage's events read back from its files, whichever process writes them.

    Each `poll()` gives what arrived since the last one (the first: everything, so a resumed run
    shows its whole history): metrics and eval records, log lines, and a "state" event when the
    stage's state changed (interrupted when its process died).
    """

    def __init__(self, run: Path, stage: str):
        self.run, self.stage = run, stage
        self._offsets = {"metrics": 0, "log": 0, "samples": 0}
        self.state: str | None = None

    def poll(self) -> list[Event]:
        records = parse_records(self._new_lines("metrics", Paths.metrics(self.run, self.stage)))
        records += parse_records(self._new_lines("samples", Paths.samples(self.run, self.stage)))
        events = [e for e in map(event_from_json, records) if e is not None]
        events += [Log(stage=self.stage, text=line.decode("utf-8", "replace").split(" ", 2)[-1])
                   for line in self._new_lines("log", Paths.train_log(self.run, self.stage))]
        state = stage_state(self.run, self.stage)
        if state != self.state:
            self.state = state
            events.append(State.from_json({**(read_status(self.run, self.stage) or {}), "stage": self.stage,
                                           "state": state}))
        return events

    def _new_lines(self, which: str, path: Path) -> list[bytes]:
        """Complete lines added since the last read (a line still being written waits), at most
        RECORDS_LIMIT bytes of them a poll (the rest comes with the next)."""
        try:
            with open_regular(path) as f:
                f.seek(self._offsets[which])
                data = f.read(RECORDS_LIMIT)
        except OSError:  # missing, a folder, a FIFO, a device: nothing yet
            return []
        end = data.rfind(b"\n") + 1
        self._offsets[which] += end
        return data[:end].splitlines()

