"""Where the command line prints: rich consoles that never cut a table when the output is not a
terminal (a pipe, a file, a CI log), where rich would otherwise assume 80 columns."""
from __future__ import annotations

import sys

from rich.console import Console

PLAIN_WIDTH = 1000  # wide enough for any of acm's tables: rows are never folded or cut


def console_for(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PLAIN_WIDTH
    return Console(highlight=False, stderr=stderr, width=width)
