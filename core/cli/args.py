"""What the command groups share in reading their arguments: a parser whose every complaint is one
`acm: error:` line, and argument types that refuse bad numbers."""
from __future__ import annotations

import argparse

from core import config
from core.config import parse_duration
from core.errors import ConfigError


def bounded_int(lo: int, hi: int, setting: str | None = None):
    """An argument type taking integers from `lo` to `hi` (a setting's flag: the setting's own range,
    named in the refusal), anything else refused in one line."""
    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_shown(text)!r} is not an integer") from None
        if not lo <= value <= hi:
            same = f", as {setting}" if setting else ""
            raise argparse.ArgumentTypeError(f"{_shown(text)} is out of range; allowed: {lo} to {hi}{same}")
        return value
    return integer


def setting_int(key: str):
    """The type of a flag that stands for integer setting `key`: the setting's bounds."""
    return bounded_int(*config.int_range(key), setting=key)


def _shown(text: str) -> str:
    return text if len(text) <= 24 else text[:20] + "..."


positive_int = bounded_int(1, config.INT_LIMIT)


def duration(text: str) -> str:
    """A wall-clock budget as written (90s, 10m, 1h30m), refused in one line when it is not one."""
    try:
        parse_duration(text, "--time")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text

