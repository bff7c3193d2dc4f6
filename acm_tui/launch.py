"""`acm-tui`'s entry: the app's modules (Textual, MLX, acm) are loaded here, inside main, so that a
Ctrl-C while they load is the one line every acm command ends with, not a traceback."""
from __future__ import annotations

import sys

from core.errors import INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    try:
        from acm_tui.app import main as run
    except KeyboardInterrupt:
        print("acm: interrupted", file=sys.stderr)
        return INTERRUPTED
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
