"""`acm`: every stage from the command line, one module per command group.

Its modules are imported with Ctrl-C, SIGTERM and SIGHUP kept for the main thread: one taken by a
thread an import started (NumPy's BLAS pool) only sets Python's flag, and a main thread asleep in
a read (a chat at its prompt) would not hear it until its next line. A command that trains here
starts its engine first, readying the stage while the modules load (core/cli/early.py).
"""
from __future__ import annotations

import sys

from core.errors import INTERRUPTED, ending_with_the_command, exit_status, signals_for_the_main_thread


def main(argv: list[str] | None = None) -> int:
    early, status = None, 1
    try:
        try:
            with signals_for_the_main_thread():
                from core.cli.early import begin

                early = begin(argv)
                from core.cli.commands import main as run
        except KeyboardInterrupt:  # a Ctrl-C while acm loads: the line every command says it with
            print("acm: interrupted", file=sys.stderr)
            status = INTERRUPTED
            return status
        status = run(argv, early)
        return status
    except BaseException as e:  # a Ctrl-C, a bad argument or a failure outside the command's own handling
        status = exit_status(e)
        raise
    finally:
        if early is not None:
            early.end(status)  # ends the process here if a readying is left running


def program() -> None:
    """The `acm` program (and `python -m core.cli`): `main`, whose status the process ends with; a
    polite kill that comes once the command has done its work and said so does not change it."""
    ending_with_the_command()
    sys.exit(main())


__all__ = ["main", "program"]
