"""bench/command_wall.py's JSON lines (as bench/command_ab.sh tags them) as one line each: the stage,
the code, the command's wall, its steps, the share around them, and the parts around them.

usage: python bench/wall_table.py FILE.jsonl ..."""
from __future__ import annotations

import json
import sys


def row(r: dict) -> str:
    parts, before = r["timings"]["parts_s"], r["before_trainer_s"]
    around, share, inside = r["command_s"] - parts["steps"], r["around_step_share"], r["around_step_share_in_trainer"]
    return (f'{r["stage"]:8} {r.get("code", "-"):6} command {r["command_s"]:6.2f} s, steps {parts["steps"]:6.2f} s, '
            f'around {around:4.2f} s = {100 * share:5.2f}% (trainer {100 * inside:4.2f}%); '
            f'start {before["python_start"]:.2f} imports {before["imports"]:.2f} to trainer {before["to_trainer"]:.2f} '
            f'setup {parts["setup"]:.2f} compile {parts["compile"]:.3f} validation {parts["validation"]:.2f} '
            f'samples {parts["samples"]:.2f} checkpoints {parts["checkpoints"]:.2f} after {r["after_trainer_s"]:.2f}; '
            f'validation each {r["timings"]["each_s"]["validation"]}')


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            for line in f:
                if line.strip():
                    print(row(json.loads(line)))
