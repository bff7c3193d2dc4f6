"""SIGTERM while a training process starts (the ranks' launcher, a rank, a background stage):
kept, not the process's death.

Its imports take a second or more (MLX), and the system's default for SIGTERM would end it
meanwhile, before it could stop with a checkpoint. `keep`, the first thing its entry module does,
holds any that come; `hand_to` gives them, and every later one, to what stops it.
"""
from __future__ import annotations

import signal
from collections.abc import Callable

_SEEN: list[int] = []


def keep() -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: _SEEN.append(signum))


def hand_to(stop: Callable[[], None]) -> None:
    """From now on SIGTERM calls `stop`; one that came while the process started, at once."""
    signal.signal(signal.SIGTERM, lambda *_: stop())
    if _SEEN:
        stop()
