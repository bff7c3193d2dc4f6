"""Fail when a function is more complex than the project allows (radon's cyclomatic complexity).

Usage: python .ci/max_complexity.py LIMIT PATH...
"""
import sys
from pathlib import Path

from radon.complexity import cc_visit


def main() -> int:
    limit, roots = int(sys.argv[1]), sys.argv[2:]
    over = []
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            for block in cc_visit(path.read_text(encoding="utf-8")):
                if block.complexity > limit:
                    over.append(f"{path}:{block.lineno}: {block.fullname} has complexity {block.complexity} > {limit}")
    print("\n".join(over) or f"complexity: every function is at most {limit}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
