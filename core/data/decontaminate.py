"""Decontamination: training scripts that share a span with an evaluation prompt's comment are
dropped, so `acm eval` does not reward a model for reciting its training data. Only comments count:
every prompt and most scripts start with the same shebang."""
from __future__ import annotations

from core.config import EvalConfig

SPAN_CHARS = 50  # BigCode's span for its decontamination (after whitespace normalisation)
SPAN_WORDS = 10
MIN_WORDS = 5  # a comment shorter than both spans is matched whole when it has this many words


def flatten(text: str) -> str:
    """Lower case, comment marks dropped from line starts, whitespace runs as one space."""
    return " ".join(" ".join(line.strip().lstrip("#") for line in text.lower().splitlines()).split())


def prompt_comments(ev: EvalConfig) -> list[str]:
    """The comment of each evaluation prompt (eval.tasks, then eval.prompts), flattened; not the shebang."""
    out = []
    for prompt in [t.prompt for t in ev.tasks] + list(ev.prompts):
        lines = [line for line in prompt.splitlines() if line.strip().startswith("#")
                 and not line.strip().startswith("#!")]
        comment = flatten("\n".join(lines))
        if comment:
            out.append(comment)
    return out


def spans(comment: str) -> set[str]:
    """Every 50-character and every 10-word window of `comment`; the whole of a shorter one."""
    words = comment.split()
    out = {comment[i:i + SPAN_CHARS] for i in range(len(comment) - SPAN_CHARS + 1)}
    out |= {" ".join(words[i:i + SPAN_WORDS]) for i in range(len(words) - SPAN_WORDS + 1)}
    if not out and len(words) >= MIN_WORDS:
        out.add(comment)
    return out


class EvalSpans:
    """`matches(text)`: does a script share a span with an evaluation prompt's comment?

    Each span is looked for only in scripts holding its longest inner word, so a corpus is checked
    with set look-ups per script and a few substring searches."""

    def __init__(self, comments: list[str]):
        self.by_anchor: dict[str, list[str]] = {}
        for comment in comments:
            for span in spans(comment):
                self.by_anchor.setdefault(anchor(span), []).append(span)

    def matches(self, text: str) -> bool:
        flat = flatten(text)
        words = set(flat.split())
        return any(span in flat for word, found in self.by_anchor.items()
                   if not word or word in words for span in found)


def anchor(span: str) -> str:
    """The span's longest word bounded by spaces inside it (a script may hold its first and last
    words inside longer ones); "" when it has none, and the span is looked for in every script."""
    words = span.split()
    safe = words[1 if span[0] != " " else 0:len(words) - 1 if span[-1] != " " else len(words)]
    return max(safe, key=len, default="")
