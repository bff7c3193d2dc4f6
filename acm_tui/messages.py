"""Messages from worker and engine threads to the UI (sent with the thread-safe post_message)."""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

from textual.message import Message


class EngineResult(Message):
    """A job submitted to the engine finished; `future` holds its result or its exception."""

    def __init__(self, job: str, future: Future):
        super().__init__()
        self.job = job
        self.future = future


class RunInPane(Message):
    """Show a pane and run one of its actions (the Setup pane's stage list, the palette)."""

    def __init__(self, pane_id: str, action: str):
        super().__init__()
        self.pane_id = pane_id
        self.action = action


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
