"""A validation check's live samples (train.samples) as the Train and Runs panes show them."""
from __future__ import annotations

from itertools import groupby

from rich.text import Text

from core.escapes import visible
from core.runs import figure
from core.runs.events import Sample


def samples_text(samples: list[Sample]) -> Text:
    """A check's samples: each one's verdicts (marks that read without colour), its prompt dimmed,
    then what the model wrote (its control characters escaped)."""
    if not samples:
        return Text("no samples yet: validation checks generate train.samples scripts (0: none) within "
                    "train.sample_share of the stage's time, and its last check always does", style="dim")
    first = samples[0]
    text = Text(f"samples at step {figure(first.step, ',')} ({figure(first.seconds, '.2f')} s)\n", style="bold")
    for s in samples:
        text.append("\n").append(s.marks(), "bold green" if s.parses and s.complete else "bold yellow").append("\n")
        prompt, written = (visible(v, lines=True) if isinstance(v, str) else ""  # as read back
                           for v in (s.prompt, s.text))
        text.append(prompt, "dim").append(written or "(nothing)")
        text.append("\n" if not written.endswith("\n") else "")
    return text


def checks_text(samples: list[Sample], heading: str) -> Text:
    """Every check's samples under HEADING, the newest check first."""
    text = Text(heading + "\n", style="bold")
    if not samples:
        return text.append(samples_text([]))
    checks = [list(group) for _, group in groupby(samples, key=lambda s: s.step)]
    return text.append(Text("\n").join(samples_text(check) for check in reversed(checks)))
