"""What the command groups share in reading their arguments: a parser whose every complaint is one
`acm: error:` line, argument types that refuse bad numbers, and `-e` escapes."""
from __future__ import annotations

import argparse

from core.config import parse_duration
from core.errors import AcmError, ConfigError


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument prints one line, `acm: error: ...`, and exits with 2."""

    def error(self, message: str):
        self.exit(2, f"acm: error: {self.prog}: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def duration(text: str) -> str:
    """A wall-clock budget as written (90s, 10m, 1h30m), refused in one line when it is not one."""
    try:
        parse_duration(text, "--time")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def unescape(text: str) -> str:
    """TEXT with its backslash escapes (\\n, \\t, \\", \\x41, \\u00e9) read; a bad escape is one line."""
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise AcmError(f"invalid escape in {text!r}: {e.reason}") from None
