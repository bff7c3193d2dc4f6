"""`acm`: every stage from the command line, one module per command group.

Its modules are imported with Ctrl-C, SIGTERM and SIGHUP kept for the main thread: one taken by a
thread an import started (NumPy's BLAS pool) only sets Python's flag, and a main thread asleep in
a read (a chat at its prompt) would not hear it until its next line.
"""
from core.errors import signals_for_the_main_thread

with signals_for_the_main_thread():
    from core.cli.main import main

__all__ = ["main"]
