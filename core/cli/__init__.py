"""`acm`: every stage from the command line, one module per command group."""
from core.cli.main import main

__all__ = ["main"]
