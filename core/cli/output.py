"""Where the command line prints: rich consoles that never cut a table when the output is not a
terminal (a pipe, a file, a CI log), where rich would otherwise assume 80 columns; text from disk or
a model with its control characters shown escaped on a terminal."""
from __future__ import annotations

import io
import sys
from typing import TextIO

from rich.console import Console
from rich.measure import Measurement

from core.atomic import strict_json
from core.escapes import visible

PLAIN_WIDTH = 1000  # wide enough for any of acm's tables: rows are never folded or cut


def console_for(stderr: bool = False) -> Console:
    """A console for standard output (or error) as the stream is now: made at each use, since rich
    fixes a console's colours when it is made, and one made while an app held the stream would colour
    every later line."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PLAIN_WIDTH
    return Console(highlight=False, stderr=stderr, width=width)


def err_console() -> Console:
    """`console_for(stderr=True)`: where a command says how it goes, beside what it prints."""
    return console_for(stderr=True)


def natural_width(renderable) -> int:
    """The width a table needs to show every cell without breaking a word (rich measures against
    the console it is given, so this measures against a wide one)."""
    wide = Console(width=PLAIN_WIDTH, file=io.StringIO())
    return Measurement.get(wide, wide.options, renderable).minimum


def for_stream(text: str, stream: TextIO | None = None) -> str:
    """Multi-line TEXT (a document, a sample, a model's output) as written to STREAM (stdout): on a
    terminal its control characters escaped, where they would act (clear the screen, retitle the
    window); in a pipe or a file as it is, so `acm data show code 3 > x.sh` keeps the script's bytes."""
    stream = stream or sys.stdout
    return visible(text, lines=True) if stream.isatty() else text


def print_json(value, indent: int | None = 2, **options) -> None:
    """VALUE as strict JSON on stdout (`strict_json`: a diverged loss read back from a run's files
    as null)."""
    print(strict_json(value, indent=indent, **options))
