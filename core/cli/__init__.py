"""`acm`: every stage from the command line, one module per command group.

Its modules are imported with Ctrl-C, SIGTERM and SIGHUP kept for the main thread: one taken by a
thread an import started (NumPy's BLAS pool) only sets Python's flag, and a main thread asleep in
a read (a chat at its prompt) would not hear it until its next line. A command that trains here
starts its engine first, readying the stage while the modules load (core/cli/early.py).
"""
from __future__ import annotations

from core.errors import INTERRUPTED, signals_for_the_main_thread


def main(argv: list[str] | None = None) -> int:
    early = None
    try:
        with signals_for_the_main_thread():
            from core.cli.early import begin

            early = begin(argv)
            from core.cli.commands import main as run
    except KeyboardInterrupt:  # Ctrl-C while acm loads: nothing to keep, no readying to wait for
        if early is not None:
            early.end(INTERRUPTED)
        raise
    return run(argv, early)


__all__ = ["main"]
