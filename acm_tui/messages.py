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


@dataclass
class ConfigChanged(Message):
    """acm.toml was reloaded or saved."""
