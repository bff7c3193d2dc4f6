"""Messages to the UI: from worker and engine threads (sent with the thread-safe post_message), and
requests from one pane to another, each its own type so a handler is named by the class it takes."""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import ClassVar

from textual.message import Message


class EngineResult(Message):
    """A job submitted to the engine finished; `future` holds its result or its exception."""

    def __init__(self, job: str, future: Future):
        super().__init__()
        self.job = job
        self.future = future


class DeviceFound(Message):
    """The engine has named its device (the header shows it)."""

    def __init__(self, label: str):
        super().__init__()
        self.label = label


class EngineReadying(Message):
    """The engine goes ahead with readying the training step (at the app's start, beside a pipeline's shards)."""


class EngineReadied(Message):
    """The engine's readying ended: `future` holds its `Readied`, or its error."""

    def __init__(self, future: Future):
        super().__init__()
        self.future = future


class PaneRequest(Message, bubble=False):
    """Asks one pane to act (the Setup pane's stage list): posted to the app, which shows and focuses
    the pane named in the class line (`pane=`) and hands the request on to it; the pane acts in its
    `@on` handler."""

    pane: ClassVar[str]  # the id of the pane that acts on it

    def __init_subclass__(cls, pane: str, **kwargs):
        super().__init_subclass__(bubble=False, **kwargs)  # one bubbling from its pane would come back
        cls.pane = pane


@dataclass
class FetchCorpus(PaneRequest, pane="data"):
    kind: str  # language or code


@dataclass
class TrainTokenizer(PaneRequest, pane="tokenizer"):
    """Train the tokenizer on both corpora; with `compare`, also one at the original's mix, to
    compare the two."""

    compare: bool = False


@dataclass
class PrepareShards(PaneRequest, pane="tokenizer"):
    force: bool = False  # rebuild the token shards from scratch


@dataclass
class StartTraining(PaneRequest, pane="train"):
    """Pretrain a new run, or fine-tune the latest run's best pretrain checkpoint."""

    stage: str  # pretrain or finetune


@dataclass
class TrainRun(PaneRequest, pane="train"):
    """Go on training one run (the Runs pane's selected): its fine-tune (started from its best
    pretrain checkpoint, or resumed where it has one), or whichever stage it last trained, resumed."""

    run: str
    finetune: bool  # False: resume its latest stage


class EvaluateRun(PaneRequest, pane="generate"):
    """Evaluate the run chosen in the Generate pane."""


@dataclass
class ConfigChanged(Message):
    """acm.toml was reloaded or saved."""


class StageProgress(Message):
    """A long step advanced. Bursts coalesce: a newer message replaces an unprocessed older one."""

    def __init__(self, stage: str, progress):
        super().__init__()
        self.stage = stage
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StageProgress) and message.stage == self.stage \
            and message.progress.task == self.progress.task
