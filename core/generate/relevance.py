"""Task relevance: does a generated script use what a script doing its task would?

Parse rate alone rewards bash-shaped noise (a PostgreSQL backup prompt answered with ansible calls
parses). Each `[[eval.tasks]]` table pairs a prompt with `expect`, a regular expression searched in
the generated text: never in the prompt, whose comment often names the very command. Samples of
prompts without an expectation (eval.prompts, tasks without `expect`) are left out of the shares.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from core.config import EvalConfig

if TYPE_CHECKING:
    from core.generate.checked import Judged


def expectations(ev: EvalConfig) -> dict[str, re.Pattern]:
    """Each task prompt that carries an expectation, with its pattern compiled (settings checked it)."""
    return {task.prompt: re.compile(task.expect) for task in ev.tasks if task.expect}


def eval_prompts(ev: EvalConfig, samples: int) -> list[str]:
    """The prompt of each of `samples` scripts: the tasks' prompts, then eval.prompts, cycled."""
    pool = [task.prompt for task in ev.tasks] + ev.prompts
    return [pool[i % len(pool)] for i in range(samples)]


def uses(prompt: str, text: str, expected: dict[str, re.Pattern]) -> bool | None:
    """Whether `text` matches its prompt's expectation; None for a prompt without one."""
    pattern = expected.get(prompt)
    return None if pattern is None else pattern.search(text) is not None


def relevance(judged: list[Judged], expected: dict[str, re.Pattern]) -> dict:
    """The relevance columns: of the samples whose prompt has an expectation, the share matching
    it, and the share matching it that also parse (None where no sample has one)."""
    counted = [(j, uses(j.sample.prompt, j.sample.text, expected)) for j in judged if j.sample.prompt in expected]
    if not counted:
        return {"relevant": None, "relevant_and_parses": None, "with_expectation": 0}
    n = len(counted)
    return {"relevant": round(sum(hit for _, hit in counted) / n, 4),
            "relevant_and_parses": round(sum(hit and j.verdict.parses for j, hit in counted) / n, 4),
            "with_expectation": n}


def task_verdict(prompt: str, text: str, expected: dict[str, re.Pattern]) -> str:
    """'; uses what the task expects: yes (pg_dump)' after a script's verdicts when its prompt is a
    task's (exactly, as generated), else ''."""
    hit = uses(prompt, text, expected)
    if hit is None:
        return ""
    return f"; uses what the task expects: {'yes' if hit else 'no'} ({expected[prompt].pattern})"
